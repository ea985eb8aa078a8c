//! Per-tenant state directories and the Landlock sandbox, proved with a hostile child
//! (`tests/fixtures/probe_child.py`) that tries accesses and reports the errno of each.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::util::{Daemon, TempClients, call_tool, initialize, repo_root};

/// The hostile probe child, run as its own command (so its directory is the command's).
pub fn probe_spec() -> Value {
    let script = repo_root().join("tests/fixtures/probe_child.py");
    json!({"command": script.to_str().unwrap()})
}

/// The JSON a probe tool answered with.
async fn probe_tool(daemon: &Daemon, id: &str, session: &str, tool: &str, args: Value) -> Value {
    let called = call_tool(daemon, id, session, tool, args).await;
    let text = called["result"]["content"][0]["text"].as_str();
    let text = text.unwrap_or_else(|| panic!("{tool} must answer with text: {called:#}"));
    serde_json::from_str(text).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `roundtrip` attempts on a file in each of `dirs`: the errno of each.
async fn roundtrips(daemon: &Daemon, id: &str, session: &str, dirs: &[&Path]) -> Vec<Value> {
    let attempts: Vec<Value> = dirs
        .iter()
        .map(|d| json!({"op": "roundtrip", "path": s(&d.join("probe.txt"))}))
        .collect();
    let results = probe_tool(daemon, id, session, "probe", json!({"attempts": attempts})).await;
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["errno"].clone())
        .collect()
}

#[tokio::test]
async fn each_child_gets_its_own_0700_state_directory_as_cwd_home_and_tmpdir() {
    let clients = TempClients::new();
    clients.write("alpha", &probe_spec());
    let elsewhere: PathBuf = clients.root().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut beta = probe_spec();
    beta["cwd"] = json!(s(&elsewhere));
    beta["env"] = json!({"HOME": s(&elsewhere)});
    clients.write("beta", &beta);
    let daemon = Daemon::start(&clients, &[]).await;
    assert_eq!(mode(clients.state_dir()), 0o700, "the state root");

    let session = initialize(&daemon, "alpha").await;
    let got = probe_tool(&daemon, "alpha", &session, "whereami", json!({})).await;
    let own = clients.tenant_state("alpha");
    for key in ["cwd", "home", "tmpdir"] {
        assert_eq!(got[key], s(&own), "{key}: {got:#}");
    }
    assert_eq!(mode(&own), 0o700, "a tenant's state directory");
    let errnos = roundtrips(&daemon, "alpha", &session, &[&own]).await;
    assert_eq!(
        errnos,
        [json!(0)],
        "the child can write and read back at home"
    );

    // The client file's `cwd` and `env` override the defaults one by one.
    let session = initialize(&daemon, "beta").await;
    let got = probe_tool(&daemon, "beta", &session, "whereami", json!({})).await;
    assert_eq!(got["cwd"], s(&elsewhere), "{got:#}");
    assert_eq!(got["home"], s(&elsewhere), "{got:#}");
    assert_eq!(got["tmpdir"], s(&clients.tenant_state("beta")), "{got:#}");
    assert_ne!(
        clients.tenant_state("alpha"),
        clients.tenant_state("beta"),
        "no two tenants share a directory"
    );
}
