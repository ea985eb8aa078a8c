//! Third-party MCP parts through mcpmux: the official Python SDK as the caller and the
//! reference `@modelcontextprotocol/server-everything` (Node) as the child, both pinned in
//! `tests/interop/`. Installed on first use by `tests/interop/setup.sh` (needs the npm
//! registry and PyPI once; fast afterwards), so plain `cargo test` works on a fresh machine.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::timeout;

use crate::util::{Daemon, TempClients, repo_root};

/// Bound for the one-time install (npm ci + a venv with pip) on a slow network.
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound for one SDK client run: spawn of node, handshake, list, call, teardown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `tests/interop/setup.sh` once per test binary; every caller waits for that one run.
pub(crate) fn ensure_setup() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = SETUP.get_or_init(|| {
        let child = std::process::Command::new("bash")
            .arg(repo_root().join("tests/interop/setup.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tests/interop/setup.sh: {e}"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // The blocking wait runs on a helper thread so that this one can bound it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        let Ok(out) = rx.recv_timeout(SETUP_TIMEOUT) else {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!("it must finish within {SETUP_TIMEOUT:?}"));
        };
        let out = out.map_err(|e| format!("waiting on it failed: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        Err(format!("it failed ({}):\n{stdout}\n{stderr}", out.status))
    });
    if let Err(e) = outcome {
        panic!("interop parts must install with tests/interop/setup.sh: {e}");
    }
}

/// Runs `node tests/interop/<script> args...`, bounded by `within` (the script enforces a
/// deadline of its own); it must exit 0 and print one JSON summary, which is returned.
pub(crate) async fn node_summary(script: &str, args: &[&str], within: Duration) -> Value {
    ensure_setup();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/interop").join(script))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} must finish within {within:?}"))
        .expect("node must start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the TS SDK client {script} {args:?} must complete ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the summary of {script} must be JSON ({e}): {stdout}"))
}

pub(crate) fn venv_python() -> PathBuf {
    repo_root().join("target/interop-venv/bin/python")
}

pub fn everything_entry() -> PathBuf {
    repo_root()
        .join("tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
}

/// A client file running server-everything on stdio under node, sandboxed: its package tree
/// (outside the system trees) is granted read access.
pub(crate) fn everything_spec() -> Value {
    let modules = repo_root().join("tests/interop/node_modules");
    json!({
        "command": "node",
        "args": [everything_entry().to_str().unwrap(), "stdio"],
        "sandbox": {"read": [modules.to_str().unwrap()]},
    })
}

/// Runs `sdk_client.py http <url> --client-id <id> --mode <mode>` and returns its JSON summary.
async fn run_sdk_client(daemon: &Daemon, client_id: &str, mode: &str, message: &str) -> Value {
    let script = repo_root().join("tests/interop/sdk_client.py");
    let arguments = json!({"message": message}).to_string();
    let url = daemon.url();
    let mut cmd = Command::new(venv_python());
    cmd.arg(script)
        .args([
            "http",
            &url,
            "--client-id",
            client_id,
            "--mode",
            mode,
            "--arguments",
            &arguments,
        ])
        .args(["--timeout", &(CLIENT_TIMEOUT.as_secs() - 10).to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("the SDK client must finish (it enforces its own deadline)")
        .expect("the venv python must start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the mcp Python SDK must complete its exchange through mcpmux ({}):\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("SDK client summary must be JSON ({e}): {stdout}"))
}

async fn everything_daemon() -> (TempClients, Daemon) {
    ensure_setup();
    let clients = TempClients::new();
    clients.write("everything", &everything_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

#[tokio::test]
async fn python_sdk_session_client_reaches_server_everything() {
    let (_clients, daemon) = everything_daemon().await;

    let summary = run_sdk_client(&daemon, "everything", "legacy", "hello through mcpmux").await;

    assert_eq!(summary["protocol_version"], "2025-11-25", "{summary:#}");
    assert_eq!(
        summary["server_name"], "mcp-servers/everything",
        "{summary:#}"
    );
    let tools = summary["tools"].as_array().unwrap();
    assert!(
        tools.iter().any(|t| t == "echo"),
        "tools/list must carry the child's tools: {summary:#}"
    );
    assert_eq!(summary["call"]["is_error"], false, "{summary:#}");
    assert_eq!(
        summary["call"]["text"],
        json!(["Echo: hello through mcpmux"]),
        "{summary:#}"
    );
    // The default `--sandbox auto` sandboxed the child on this kernel (ABI 6+ here).
    let status = crate::util::admin_status(&daemon).await;
    let entry = crate::util::tenant_status(&status, "everything");
    assert!(entry["sandbox"]["abi"].as_i64() >= Some(6), "{entry:#}");
}

#[tokio::test]
async fn python_sdk_auto_mode_is_served_in_the_stateless_era() {
    let (_clients, daemon) = everything_daemon().await;

    let summary = run_sdk_client(&daemon, "everything", "auto", "stateless hello").await;

    assert_eq!(
        summary["protocol_version"], "2026-07-28",
        "a dual-era caller's server/discover probe must be answered, bridged onto the session-era child: {summary:#}"
    );
    assert_eq!(
        summary["call"]["text"],
        json!(["Echo: stateless hello"]),
        "{summary:#}"
    );
}
