//! Per-tenant state directories and the Landlock sandbox, proved with a hostile child
//! (`tests/fixtures/probe_child.py`) that tries accesses and reports the errno of each.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{
    Daemon, HTTP_TIMEOUT, TempClients, admin_get, admin_status, call_tool, initialize, repo_root,
    tenant_status,
};

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

/// The `errno` of each attempt, by target, from a `probe` call.
async fn probe(daemon: &Daemon, id: &str, session: &str, attempts: Value) -> Vec<(String, i64)> {
    let got = probe_tool(daemon, id, session, "probe", json!({"attempts": attempts})).await;
    let rows = got
        .as_array()
        .unwrap_or_else(|| panic!("probe answers a list: {got:#}"));
    rows.iter()
        .map(|r| {
            let what = format!("{} {}", r["op"].as_str().unwrap(), r["target"]);
            (what, r["errno"].as_i64().unwrap())
        })
        .collect()
}

const EACCES: i64 = 13;
const EPERM: i64 = 1;

fn op(op: &str, path: &Path) -> Value {
    json!({"op": op, "path": s(path)})
}

#[tokio::test]
async fn a_hostile_child_reaches_nothing_of_other_tenants_or_the_daemon() {
    let clients = TempClients::new();
    let root = clients.root().canonicalize().unwrap();
    // A sibling of clients/ and state/ that alpha's `sandbox.read` grants by granting the
    // whole root: the protected directories must stay out all the same.
    std::fs::create_dir(root.join("shared")).unwrap();
    std::fs::write(root.join("shared/readable.txt"), "shared\n").unwrap();
    let mut alpha = probe_spec();
    alpha["sandbox"] = json!({"read": [s(&root)]});
    clients.write("alpha", &alpha);
    let mut beta = probe_spec();
    beta["env"] = json!({"BETA_SECRET": "hunter2"});
    clients.write("beta", &beta);
    let mut control = probe_spec();
    control["sandbox"] = json!(false);
    clients.write("control", &control);
    let daemon = Daemon::start(&clients, &[]).await;

    let beta_session = initialize(&daemon, "beta").await;
    let beta_home = clients.tenant_state("beta").canonicalize().unwrap();
    let beta_file = beta_home.join("probe.txt");
    let errnos = roundtrips(&daemon, "beta", &beta_session, &[&beta_home]).await;
    assert_eq!(errnos, [json!(0)], "beta writes a file at home");
    let beta_pid = probe_tool(&daemon, "beta", &beta_session, "whereami", json!({})).await["pid"]
        .as_i64()
        .unwrap();

    let session = initialize(&daemon, "alpha").await;
    let own = clients.tenant_state("alpha").canonicalize().unwrap();
    let place = probe_tool(&daemon, "alpha", &session, "whereami", json!({})).await;
    for key in ["cwd", "home", "tmpdir"] {
        assert_eq!(place[key], s(&own), "{key} is alpha's own state directory");
    }
    let outside =
        std::env::temp_dir().join(format!("mcpmux-probe-{}", crate::util::unique_marker()));
    let denied = json!([
        op("read", &clients.file("beta")),
        op("list", clients.path()),
        op("read", &beta_file),
        op("list", &beta_home),
        op("list", clients.state_dir()),
        op("read", &PathBuf::from(format!("/proc/{beta_pid}/environ"))),
        op("read", &PathBuf::from(format!("/proc/{}/environ", daemon.pid()))),
        op("write", &outside),
        op("write", &root.join("shared/written.txt")),
        op("write", &beta_home.join("planted.txt")),
        {"op": "kill0", "pid": beta_pid},
        {"op": "kill0", "pid": daemon.pid()},
    ]);
    let got = probe(&daemon, "alpha", &session, denied).await;
    let want_errno = |what: &str| {
        if what.starts_with("kill0") {
            EPERM
        } else {
            EACCES
        }
    };
    for (what, errno) in &got {
        assert_eq!(*errno, want_errno(what), "alpha must be denied: {what}");
    }
    assert_eq!(got.len(), 12);
    assert!(!outside.exists() && !beta_home.join("planted.txt").exists());

    let allowed = json!([
        op("read", Path::new("/etc/os-release")),
        op("list", Path::new("/usr/lib")),
        op("read", &root.join("shared/readable.txt")),
        op("read", Path::new("/dev/urandom")),
        op("write", Path::new("/dev/null")),
        op("roundtrip", &own.join("cwd.txt")),
        op(
            "roundtrip",
            &PathBuf::from(place["home"].as_str().unwrap()).join("home.txt")
        ),
        op(
            "roundtrip",
            &PathBuf::from(place["tmpdir"].as_str().unwrap()).join("tmp.txt")
        ),
    ]);
    for (what, errno) in probe(&daemon, "alpha", &session, allowed).await {
        assert_eq!(errno, 0, "alpha must be allowed: {what}");
    }

    // The same child unsandboxed reads what alpha could not: the denials are the sandbox's.
    let session = initialize(&daemon, "control").await;
    let got = probe(
        &daemon,
        "control",
        &session,
        json!([
            op("read", &clients.file("beta")),
            op("read", &beta_file),
            {"op": "kill0", "pid": beta_pid},
        ]),
    )
    .await;
    for (what, errno) in got {
        assert_eq!(errno, 0, "the unsandboxed control child reaches {what}");
    }

    let status = admin_status(&daemon).await;
    let alpha = tenant_status(&status, "alpha");
    let applied = alpha["sandbox"]["applied"].as_array().unwrap();
    assert!(alpha["sandbox"]["abi"].as_i64().unwrap() >= 6, "{alpha:#}");
    for feature in [
        "filesystem",
        "scoped_signals",
        "scoped_abstract_unix_sockets",
        "no_new_privs",
        "capabilities_dropped",
    ] {
        assert!(applied.contains(&json!(feature)), "{feature}: {alpha:#}");
    }
    assert_eq!(alpha["unsandboxed_because"], Value::Null);
    let control = tenant_status(&status, "control");
    assert_eq!(control["sandbox"], json!(false), "{control:#}");
    assert_eq!(
        control["unsandboxed_because"],
        "the client file sets \"sandbox\": false"
    );

    let started = daemon
        .wait_for_log("child started", HTTP_TIMEOUT)
        .await
        .unwrap();
    assert!(
        daemon.logs().iter().any(|l| l.contains("child started")
            && l.contains("client_id=alpha")
            && l.contains("sandbox=landlock abi")),
        "{started}"
    );
    assert!(daemon.logs().iter().any(|l| l.contains("client_id=control")
        && l.contains("child runs unsandboxed: the client file sets \"sandbox\": false")));
    let (_, metrics) = admin_get(&daemon, "/metrics").await;
    assert!(
        metrics.contains("mcpmux_child_sandboxed_spawns_total{client_id=\"alpha\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("mcpmux_child_sandboxed_spawns_total{client_id=\"control\"}"),
        "{metrics}"
    );
}

/// `<root>/bin/tool`, a script whose interpreter is a copy of `/bin/sh` in `<root>/interp`:
/// a tree the default policy does not grant. The script then runs the probe child.
fn script_with_private_interpreter(root: &Path) -> (PathBuf, PathBuf) {
    let (bin, interp) = (root.join("bin"), root.join("interp"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&interp).unwrap();
    std::fs::copy("/bin/sh", interp.join("sh")).unwrap();
    let probe = repo_root().join("tests/fixtures/probe_child.py");
    let script = bin.join("tool");
    let body = format!("#!{}\nexec {}\n", s(&interp.join("sh")), s(&probe));
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, interp)
}

#[tokio::test]
async fn a_child_denied_its_interpreter_gets_an_error_naming_the_sandbox_and_the_fix() {
    let clients = TempClients::new();
    let root = clients.root().canonicalize().unwrap();
    let (script, interp) = script_with_private_interpreter(&root);
    clients.write("denied", &json!({"command": s(&script)}));
    let mut granted = json!({"command": s(&script)});
    granted["sandbox"] = json!({"read": [s(&interp), s(&repo_root().join("tests/fixtures"))]});
    clients.write("granted", &granted);
    let daemon = Daemon::start(&clients, &[]).await;

    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": crate::util::initialize_params()});
    let resp = crate::util::post(&daemon, Some("denied"), None, &init).await;
    assert_eq!(resp.status(), 200);
    let answer = crate::util::response_to(&crate::util::messages(resp).await, &json!(0)).clone();
    let error = &answer["error"];
    assert_eq!(error["code"], -32603, "{answer:#}");
    assert_eq!(
        error["message"],
        format!(
            "child failed to start: failed to start {} under the sandbox: Permission denied (os error 13)",
            s(&script)
        ),
    );
    assert!(
        error["data"]["sandbox"]["abi"].as_i64().unwrap() >= 6,
        "{answer:#}"
    );
    let fix = error["data"]["fix"].as_str().unwrap();
    assert!(
        fix.contains("\"sandbox\": {\"read\": [...]}") && fix.contains("client file"),
        "{fix}"
    );

    // Granting the interpreter's tree (and the script it runs) in the client file fixes it.
    let session = initialize(&daemon, "granted").await;
    let place = probe_tool(&daemon, "granted", &session, "whereami", json!({})).await;
    assert_eq!(place["home"], s(&clients.tenant_state("granted")));
}

#[tokio::test]
async fn mcp_echo_runs_sandboxed_under_the_default_policy() {
    let clients = TempClients::new();
    clients.write("echo", &crate::util::echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    let session = initialize(&daemon, "echo").await;
    let called = call_tool(
        &daemon,
        "echo",
        &session,
        "echo",
        json!({"message": "boxed"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "boxed",
        "{called:#}"
    );
    let home = call_tool(&daemon, "echo", &session, "env", json!({"name": "HOME"})).await;
    assert_eq!(
        home["result"]["content"][0]["text"],
        s(&clients.tenant_state("echo"))
    );
    let status = admin_status(&daemon).await;
    assert!(
        tenant_status(&status, "echo")["sandbox"]["abi"]
            .as_i64()
            .unwrap()
            >= 6
    );
}

/// The version the interop tests pin (tests/interop/package.json).
const EVERYTHING: &str = "@modelcontextprotocol/server-everything@2026.8.31";

/// Bound for the first `initialize` of the npx tenant: npx downloads the package first (the
/// daemon's own start bound, 60 s, applies within it).
const NPX_START_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn server_everything_through_npx_downloads_into_its_own_home_under_the_sandbox() {
    let clients = TempClients::new();
    let spec = json!({"command": "npx", "args": ["-y", EVERYTHING, "stdio"]});
    clients.write("everything", &spec);
    let daemon = Daemon::start(&clients, &[]).await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": crate::util::initialize_params()});
    let resp = crate::util::mcp_request(&daemon, reqwest::Method::POST, Some("everything"), None)
        .timeout(NPX_START_TIMEOUT)
        .header("Content-Type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .expect("the first initialize must be answered once npx has downloaded the server");
    let session = resp.headers().get("mcp-session-id").cloned();
    let answer = crate::util::messages(resp).await;
    let session = session.unwrap_or_else(|| panic!("initialize must succeed: {answer:#?}"));
    let session = session.to_str().unwrap().to_owned();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = crate::util::post(&daemon, Some("everything"), Some(&session), &note).await;
    assert_eq!(resp.status(), 202);

    let called = call_tool(
        &daemon,
        "everything",
        &session,
        "echo",
        json!({"message": "npx"}),
    )
    .await;
    let text = called["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("npx"), "{called:#}");
    let status = admin_status(&daemon).await;
    let sandbox = &tenant_status(&status, "everything")["sandbox"];
    assert!(sandbox["abi"].as_i64().unwrap() >= 6, "{status:#}");
    let npm = clients.tenant_state("everything").join(".npm");
    assert!(npm.is_dir(), "npm's cache is in the tenant's own HOME");
}

#[tokio::test]
async fn a_child_cannot_read_the_session_key_file_even_inside_a_granted_tree() {
    let clients = TempClients::new();
    let root = clients.root().canonicalize().unwrap();
    std::fs::create_dir(root.join("shared")).unwrap();
    let key = root.join("shared/session.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(root.join("shared/readable.txt"), "shared\n").unwrap();
    let mut alpha = probe_spec();
    alpha["sandbox"] = json!({"read": [s(&root.join("shared"))]});
    clients.write("alpha", &alpha);
    let daemon = Daemon::start(&clients, &["--session-key-file", s(&key)]).await;

    let session = initialize(&daemon, "alpha").await;
    let attempts = json!([
        op("read", &key),
        op("read", &root.join("shared/readable.txt")),
    ]);
    let got = probe(&daemon, "alpha", &session, attempts).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, EACCES, "the key file is denied: {}", got[0].0);
    assert_eq!(
        got[1].1, 0,
        "its sibling in the granted tree is readable: {}",
        got[1].0
    );
}

/// The paths `pid`'s open descriptors point at.
fn open_paths(pid: u32) -> Vec<PathBuf> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .collect()
}

#[tokio::test]
async fn a_descriptor_the_daemon_inherited_never_reaches_a_child() {
    let clients = TempClients::new();
    clients.write("fds", &crate::util::fake_child_spec(&[]));
    let held = tempfile::NamedTempFile::new().unwrap();
    let held_path = held.path().canonicalize().unwrap();
    // A parent that leaves a descriptor open without close-on-exec, as a shell or a
    // supervisor's lock (flock(1)) does: fd 7, then exec the daemon.
    let mut shell = crate::util::isolated_command("sh");
    shell
        .arg("-c")
        .arg(r#"exec 7<"$0"; exec "$@""#)
        .arg(&held_path);
    let daemon = Daemon::start_behind(shell, &clients, &[]).await;
    assert!(
        open_paths(daemon.pid()).contains(&held_path),
        "the daemon itself must have inherited the descriptor (else this test proves nothing)"
    );

    let session = initialize(&daemon, "fds").await;
    let child = crate::util::child_pid(&daemon, "fds", &session).await;
    let leaked = open_paths(child);
    assert!(
        !leaked.contains(&held_path),
        "the child must not get the daemon's inherited descriptor: {leaked:?}"
    );
    assert!(
        daemon
            .wait_for_log("marked inherited descriptors close-on-exec", HTTP_TIMEOUT)
            .await
            .is_some(),
        "the daemon says it sealed them"
    );
    assert!(
        open_paths(daemon.pid()).contains(&held_path),
        "the daemon keeps its inherited descriptor open"
    );
}
