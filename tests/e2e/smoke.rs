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

#[tokio::test]
async fn check_reports_every_bad_file_by_path_and_exits_1() {
    let dir = repo_root().join("tests/fixtures/clients/invalid");
    let out = run_mcpmux(&["check", dir.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad files must fail `check`:\n{stderr}"
    );
    let mut bad: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let stem = name.strip_suffix(".json").unwrap_or_default();
            !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .collect();
    bad.sort();
    assert!(
        bad.len() > 10,
        "the fixture must hold many bad files: {bad:?}"
    );
    for name in &bad {
        let lines = stderr
            .lines()
            .filter(|l| l.contains(&format!("/{name}: ")))
            .count();
        assert_eq!(
            lines, 1,
            "`check` must report {name} exactly once as `<path>: <reason>`:\n{stderr}"
        );
    }
    let unknown = stderr
        .lines()
        .find(|l| l.contains("/unknownfield.json: "))
        .unwrap();
    assert!(
        unknown.contains("comand"),
        "the reason must name the unknown field: {unknown}"
    );
    // Ignored names (temp files, names outside the id rule) are not errors.
    for ignored in ["a.json~", "4913", "sedAb12Cd", "a-b.json", "#a.json#"] {
        assert!(
            !stderr.contains(&format!("/{ignored}:")),
            "{ignored} must be ignored:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn check_accepts_a_directory_of_valid_files_and_names_them() {
    let dir = repo_root().join("tests/fixtures/clients/valid");
    let out = run_mcpmux(&["check", dir.to_str().unwrap()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "valid files must pass: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("client(s) valid"), "{stdout}");
}
