//! The shortest path through mcpmux: one tenant, one session, one tool call; and the shipped
//! `clients/` directory working as the README promises.

use serde_json::json;

use crate::util::{
    Daemon, TempClients, call_tool, echo_spec, initialize, repo_root, rpc, run_mcpmux,
};

#[tokio::test]
async fn echo_tenant_lists_and_calls_tools_then_stops_cleanly() {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    let mut daemon = Daemon::start(&clients, &[]).await;

    let session = initialize(&daemon, "demo").await;
    let listed = rpc(&daemon, "demo", &session, "tools/list", json!({})).await;
    let tools = listed["result"]["tools"]
        .as_array()
        .expect("tools/list must return a tools array");
    assert!(
        tools.iter().any(|t| t["name"] == "echo"),
        "mcp-echo must offer `echo`: {listed:#}"
    );

    let called = call_tool(&daemon, "demo", &session, "echo", json!({"message": "hi"})).await;
    assert_eq!(
        called["result"]["content"][0]["text"], "hi",
        "echo must return its message: {called:#}"
    );

    let status = daemon.stop().await;
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}"
    );
}

#[tokio::test]
async fn shipped_clients_directory_passes_check() {
    let dir = repo_root().join("clients");
    let out = run_mcpmux(&["check", dir.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "`mcpmux check clients/` must accept the shipped files:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn shipped_demo_tenant_works_out_of_the_box() {
    let dir = repo_root().join("clients");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        // As in the README's run command: the shipped tenants have no token.
        "--allow-open-tenants",
    ];
    let daemon = Daemon::spawn(
        &[&args[..], &["--clients", dir.to_str().unwrap()]].concat(),
        &[],
    )
    .await;

    let session = initialize(&daemon, "demo").await;
    let called = call_tool(
        &daemon,
        "demo",
        &session,
        "echo",
        json!({"message": "out of the box"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "out of the box",
        "{called:#}"
    );
}
