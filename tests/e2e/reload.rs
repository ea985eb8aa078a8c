//! Live reload of the clients directory (DESIGN §2): files added, edited (by rename, `sed -i`,
//! truncate-and-write), rewritten unchanged, broken, deleted, rescanned on SIGHUP, editor temp
//! files, a swapped directory symlink, and an edit that lands while the child is starting.
//!
//! Each test proves the effect through the real child: `env` shows which version of the file a
//! child was started from (a marker in the file's `env`), `pid` whether the child was replaced.
//! Reload progress is observed through the daemon's log: the `clients reloaded` summary (one
//! line per rescan that changed something), `client file rejected`, `retiring child ...` and
//! `child stopped`. To show that something did *not* happen, a test writes a sentinel tenant
//! after the change and waits for the rescan that adds it: rescans run one at a time over the
//! whole directory, so that rescan saw the change too, and every earlier rescan (and its
//! effect on children) has finished.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::util::{
    Daemon, HTTP_TIMEOUT, Signal, SseStream, TempClients, call_tool, echo_spec, initialize,
    mcp_request, post, proc_stat, unique_marker,
};

/// Quiet time before a rescan: short, so each test takes well under a few seconds.
const DEBOUNCE_MS: &str = "50";
/// How long a replaced child gets after its stdin closes.
const STOP_GRACE: &str = "0.5";
/// DESIGN §2's promise for a new file, which these tests also use for every reload wait.
const RELOAD_WITHIN: Duration = Duration::from_secs(2);
/// Bound for a retired child to be stopped (its `slow` call done, then the stop sequence),
/// with slack for a loaded machine.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// The environment variable whose value tells which file version a child was started from.
const MARK_VAR: &str = "MCPMUX_RELOAD_MARK";
/// Length of the `slow` call that is in flight while a file is edited. Long enough that the
/// edit (50 ms debounce plus a rescan) lands before it ends, even on a busy machine.
const SLOW_MS: u64 = 2000;

/// `mcp-echo` with `MARK_VAR` set to `mark`.
fn marked_spec(mark: &str) -> Value {
    json!({"command": "mcp-echo", "env": {MARK_VAR: mark}})
}

/// A fresh marker that cannot be mistaken for another test's.
fn new_mark(label: &str) -> String {
    format!("{label}-{}", unique_marker())
}

/// The daemon's log filter for these tests, set explicitly because the tests read the log
/// (a developer's `RUST_LOG=warn` must not hide the lines they wait for).
const LOG_FILTER: (&str, &str) = ("RUST_LOG", "info");

async fn start(clients: &TempClients) -> Daemon {
    Daemon::start_with_env(
        clients,
        &[
            "--reload-debounce-ms",
            DEBOUNCE_MS,
            "--stop-grace",
            STOP_GRACE,
        ],
        &[LOG_FILTER],
    )
    .await
}

/// The text of a successful `tools/call` of `tool`.
async fn tool_text(daemon: &Daemon, id: &str, session: &str, tool: &str, args: Value) -> String {
    let resp = call_tool(daemon, id, session, tool, args).await;
    assert_ne!(
        resp["result"]["isError"], true,
        "tool {tool} of {id} must succeed: {resp:#}"
    );
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("tool {tool} of {id} must return text: {resp:#}"))
        .to_owned()
}

/// The pid of the child now serving `id`.
async fn child_pid(daemon: &Daemon, id: &str, session: &str) -> u32 {
    let text = tool_text(daemon, id, session, "pid", json!({})).await;
    text.parse()
        .unwrap_or_else(|e| panic!("pid tool must return a number ({e}): {text:?}"))
}

/// The marker of the file version the child now serving `id` was started from.
async fn child_mark(daemon: &Daemon, id: &str, session: &str) -> String {
    tool_text(daemon, id, session, "env", json!({"name": MARK_VAR})).await
}

/// Waits for a log line after `mark` containing every one of `needles`; panics with `contract`.
async fn expect_log(
    daemon: &Daemon,
    mark: usize,
    needles: &[&str],
    within: Duration,
    contract: &str,
) -> String {
    let deadline = Instant::now() + within;
    let mut from = mark;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = daemon.wait_for_log_after(from, needles[0], left).await else {
            panic!("{contract} (no log line with {needles:?} within {within:?})");
        };
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
        // Skip past this line: find its index among the lines after `from`.
        let logs = daemon.logs();
        from += logs[from..].iter().position(|l| *l == line).unwrap() + 1;
    }
}

/// Log lines after `mark` containing `needle`.
fn logs_after(daemon: &Daemon, mark: usize, needle: &str) -> Vec<String> {
    daemon.logs()[mark..]
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Adds a sentinel tenant and waits for the rescan that adds it (see the module doc). Returns
/// the `clients reloaded` summaries logged since `mark`.
async fn reload_barrier(daemon: &Daemon, clients: &TempClients, mark: usize) -> Vec<String> {
    let sentinel = format!("sentinel{}", unique_marker());
    clients.write(&sentinel, &marked_spec("sentinel"));
    expect_log(
        daemon,
        mark,
        &["clients reloaded", "added=1"],
        RELOAD_WITHIN,
        "a new client file must be picked up within 2 s",
    )
    .await;
    logs_after(daemon, mark, "clients reloaded")
}

/// Asserts that no reload since `mark` changed or removed a tenant, and no child was retired.
fn assert_nothing_restarted(daemon: &Daemon, mark: usize, what: &str) {
    for line in logs_after(daemon, mark, "clients reloaded") {
        assert!(
            line.contains("changed=0") && line.contains("removed=0"),
            "{what} must change no tenant: {line}"
        );
    }
    let retired = logs_after(daemon, mark, "retiring child");
    assert!(
        retired.is_empty(),
        "{what} must retire no child: {retired:#?}"
    );
}

/// Asserts `resp` is DESIGN §1's 403 `UNKNOWN_CLIENT` for `id`, body and content type exact.
async fn assert_unknown_client(resp: reqwest::Response, id: &str, context: &str) {
    assert_eq!(resp.status(), 403, "{context}: must be 403 UNKNOWN_CLIENT");
    let ctype = resp.headers().get("content-type").cloned();
    assert_eq!(
        ctype.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{context}: a tenant error is JSON"
    );
    let body: Value = resp.json().await.expect("403 body must be JSON");
    let want = json!({
        "error": format!("Unknown client ID: {id}. Check X-Client-ID header value."),
        "code": "UNKNOWN_CLIENT",
    });
    assert_eq!(body, want, "{context}: exact DESIGN §1 body");
}

/// An `initialize` request (id 0) for `id`, sent without checking the answer.
async fn post_initialize(daemon: &Daemon, id: &str) -> reqwest::Response {
    let req = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": crate::util::initialize_params(),
    });
    post(daemon, Some(id), None, &req).await
}

/// A `tools/list` request in `session` for `id`, sent without checking the answer.
async fn post_tools_list(daemon: &Daemon, id: &str, session: &str) -> reqwest::Response {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    post(daemon, Some(id), Some(session), &req).await
}

/// Replaces `file` with `bytes` in one step (a temp file renamed over it), so the daemon
/// never sees a half-written state.
fn replace_file(file: &Path, bytes: &[u8]) {
    let tmp = file.with_extension(format!("json.{}.tmp", unique_marker()));
    std::fs::write(&tmp, bytes).expect("temp file must be writable");
    std::fs::rename(&tmp, file).expect("temp file must rename over the client file");
}

/// Starts a `slow` call (`SLOW_MS`, with a progress token) in `session` and returns its open
/// answer stream once the first progress notification shows the call is on the child.
async fn start_slow_call(daemon: &Daemon, id: &str, session: &str) -> SseStream {
    let slow = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {
            "name": "slow",
            "arguments": {"ms": SLOW_MS, "steps": 20},
            "_meta": {"progressToken": "reload-slow"},
        },
    });
    let resp = post(daemon, Some(id), Some(session), &slow).await;
    let mut stream = SseStream::new(resp);
    let first = stream
        .next_message(
            HTTP_TIMEOUT,
            "a slow call with a progressToken must stream progress",
        )
        .await;
    assert_eq!(
        first["method"], "notifications/progress",
        "the slow call must now be in flight on the child: {first:#}"
    );
    stream
}

/// Reads the rest of a [`start_slow_call`] stream and asserts the call succeeded.
async fn finish_slow_call(stream: &mut SseStream, contract: &str) {
    let response = loop {
        let msg = stream.next_message(HTTP_TIMEOUT, contract).await;
        if msg.get("id") == Some(&json!(7)) {
            break msg;
        }
    };
    assert_eq!(
        response["result"]["content"][0]["text"],
        format!("done after {SLOW_MS} ms"),
        "{contract}: {response:#}"
    );
    assert_ne!(
        response["result"]["isError"], true,
        "{contract}: {response:#}"
    );
}

/// True while `pid` exists and has not exited (not a zombie).
fn is_running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

// ---------------------------------------------------------------------------------------------
// New files
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn new_client_file_is_served_within_two_seconds_without_restart() {
    let clients = TempClients::new();
    clients.write("first", &marked_spec("first"));
    let daemon = start(&clients).await;

    let resp = post_initialize(&daemon, "late").await;
    assert_unknown_client(resp, "late", "before its file exists").await;

    let mark = daemon.log_mark();
    let late = new_mark("late");
    clients.write("late", &marked_spec(&late));
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1"],
        RELOAD_WITHIN,
        "a new client file must be loaded within 2 s, without a restart",
    )
    .await;
    let session = initialize(&daemon, "late").await;
    assert_eq!(
        child_mark(&daemon, "late", &session).await,
        late,
        "the new tenant's child must run from the new file"
    );
}

// ---------------------------------------------------------------------------------------------
// Edits
// ---------------------------------------------------------------------------------------------

/// Writes the new content to `<file>.tmp` and renames it over the file, as many editors do.
fn edit_by_rename(file: &Path, old: &str, new: &str) {
    let body = std::fs::read_to_string(file).expect("client file must be readable");
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, body.replace(old, new)).expect("temp file must be writable");
    std::fs::rename(&tmp, file).expect("temp file must rename over the client file");
}

/// The real `sed -i` (it writes `sedXXXXXX` beside the file, then renames it over).
fn edit_by_sed(file: &Path, old: &str, new: &str) {
    let status = std::process::Command::new("sed")
        .arg("-i")
        .arg(format!("s/{old}/{new}/"))
        .arg(file)
        .status()
        .expect("sed must be runnable");
    assert!(status.success(), "sed -i must succeed: {status}");
}

/// Opens the file with truncation and writes the new content in place (same inode).
fn edit_by_truncate(file: &Path, old: &str, new: &str) {
    use std::io::Write;
    let body = std::fs::read_to_string(file).expect("client file must be readable");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .expect("client file must open for writing");
    f.write_all(body.replace(old, new).as_bytes())
        .expect("client file must be writable");
}

/// The shared scenario: a session has a `slow` call in flight on the child when `edit` swaps
/// the file's marker. The call must complete on the old child, which is stopped only after
/// it; the session then runs on a new child started from the new file.
async fn edit_replaces_child_after_in_flight_request(edit: fn(&Path, &str, &str)) {
    let clients = TempClients::new();
    let (old, new) = (new_mark("old"), new_mark("new"));
    clients.write("demo", &marked_spec(&old));
    let daemon = start(&clients).await;
    let session = initialize(&daemon, "demo").await;
    assert_eq!(child_mark(&daemon, "demo", &session).await, old);
    let old_pid = child_pid(&daemon, "demo", &session).await;

    let mut slow = start_slow_call(&daemon, "demo", &session).await;

    let mark = daemon.log_mark();
    edit(&clients.file("demo"), &old, &new);
    let retiring = expect_log(
        &daemon,
        mark,
        &["retiring child", &format!("pid={old_pid}")],
        RELOAD_WITHIN,
        "an edited client file must retire the tenant's child within 2 s",
    )
    .await;
    assert!(
        is_running(old_pid),
        "a retired child must keep running while its request is in flight: {retiring}"
    );

    finish_slow_call(
        &mut slow,
        "the in-flight call must complete on the old child after the edit",
    )
    .await;

    expect_log(
        &daemon,
        mark,
        &["child stopped", &format!("pid={old_pid}")],
        STOP_WITHIN,
        "the old child must be stopped once its in-flight request is done",
    )
    .await;
    assert!(
        proc_stat(old_pid).is_none(),
        "a stopped child must be reaped (pid {old_pid} still in /proc)"
    );

    assert_eq!(
        child_mark(&daemon, "demo", &session).await,
        new,
        "the same session must now be served by a child started from the edited file"
    );
    let new_pid = child_pid(&daemon, "demo", &session).await;
    assert_ne!(new_pid, old_pid, "the edit must replace the child");
}

#[tokio::test]
async fn edit_by_rename_over_replaces_child_after_in_flight_request_and_session_survives() {
    edit_replaces_child_after_in_flight_request(edit_by_rename).await;
}

#[tokio::test]
async fn edit_by_sed_in_place_replaces_child_after_in_flight_request_and_session_survives() {
    edit_replaces_child_after_in_flight_request(edit_by_sed).await;
}

#[tokio::test]
async fn edit_by_truncate_and_write_replaces_child_after_in_flight_request_and_session_survives() {
    edit_replaces_child_after_in_flight_request(edit_by_truncate).await;
}

#[tokio::test]
async fn touch_or_rewriting_identical_bytes_restarts_nothing() {
    let clients = TempClients::new();
    let mark_value = new_mark("same");
    clients.write("demo", &marked_spec(&mark_value));
    let daemon = start(&clients).await;
    let session = initialize(&daemon, "demo").await;
    let pid = child_pid(&daemon, "demo", &session).await;

    let mark = daemon.log_mark();
    let file = clients.file("demo");
    let status = std::process::Command::new("touch")
        .arg(&file)
        .status()
        .expect("touch must be runnable");
    assert!(status.success(), "touch must succeed: {status}");
    let bytes = std::fs::read(&file).expect("client file must be readable");
    clients.write_raw("demo.json", &bytes);
    clients.write("demo", &marked_spec(&mark_value));
    reload_barrier(&daemon, &clients, mark).await;

    assert_nothing_restarted(&daemon, mark, "an unchanged client file");
    assert_eq!(
        child_pid(&daemon, "demo", &session).await,
        pid,
        "an unchanged client file must keep the same child"
    );
}

#[tokio::test]
async fn invalid_edit_keeps_last_good_config_and_logs_file_and_reason() {
    let clients = TempClients::new();
    let good = new_mark("good");
    clients.write("demo", &marked_spec(&good));
    let daemon = start(&clients).await;
    let session = initialize(&daemon, "demo").await;
    let pid = child_pid(&daemon, "demo", &session).await;
    let path = clients.file("demo").display().to_string();

    let cases = [
        (
            "a syntax error",
            format!(r#"{{"command": "mcp-echo", "env": {{"{MARK_VAR}": "broken""#),
            "invalid json",
        ),
        (
            "an unknown field",
            format!(r#"{{"comand": "mcp-echo", "env": {{"{MARK_VAR}": "broken"}}}}"#),
            "unknown field `comand`",
        ),
    ];
    for (what, body, reason) in cases {
        let mark = daemon.log_mark();
        replace_file(&clients.file("demo"), body.as_bytes());
        let line = expect_log(
            &daemon,
            mark,
            &["client file rejected", reason],
            RELOAD_WITHIN,
            &format!("{what} in a live edit must be logged with its reason"),
        )
        .await;
        assert!(
            line.contains(&path),
            "the rejection must name the file {path}: {line}"
        );
        reload_barrier(&daemon, &clients, mark).await;
        assert_nothing_restarted(&daemon, mark, what);
        assert_eq!(
            child_pid(&daemon, "demo", &session).await,
            pid,
            "{what} must keep the child of the last good file"
        );
        assert_eq!(
            child_mark(&daemon, "demo", &session).await,
            good,
            "{what} must keep serving the last good config"
        );
    }

    // The last good config stays in force for new sessions and new children too: a fixed
    // file is then picked up as an ordinary change.
    let second = initialize(&daemon, "demo").await;
    assert_eq!(child_mark(&daemon, "demo", &second).await, good);
    let mark = daemon.log_mark();
    let fixed = new_mark("fixed");
    clients.write("demo", &marked_spec(&fixed));
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "changed=1"],
        RELOAD_WITHIN,
        "a repaired client file must take effect as a change",
    )
    .await;
    assert_eq!(child_mark(&daemon, "demo", &session).await, fixed);
}

// ---------------------------------------------------------------------------------------------
// Deletion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deleted_client_file_makes_tenant_unknown_stops_its_child_and_ends_its_sessions() {
    let clients = TempClients::new();
    clients.write("demo", &marked_spec("demo"));
    clients.write("other", &marked_spec("other"));
    let daemon = start(&clients).await;
    let session = initialize(&daemon, "demo").await;
    let pid = child_pid(&daemon, "demo", &session).await;
    let other = initialize(&daemon, "other").await;
    let other_pid = child_pid(&daemon, "other", &other).await;
    let get = mcp_request(&daemon, reqwest::Method::GET, Some("demo"), Some(&session));
    let mut stream = SseStream::new(get.send().await.expect("GET must open the session stream"));
    let mut slow = start_slow_call(&daemon, "demo", &session).await;

    let mark = daemon.log_mark();
    clients.remove("demo");
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "removed=1"],
        RELOAD_WITHIN,
        "a deleted client file must be unloaded within 2 s",
    )
    .await;
    let resp = post_tools_list(&daemon, "demo", &session).await;
    assert_unknown_client(resp, "demo", "a session of a deleted tenant").await;
    let resp = post_initialize(&daemon, "demo").await;
    assert_unknown_client(resp, "demo", "a new session of a deleted tenant").await;
    let deadline = Instant::now() + STOP_WITHIN;
    let contract = "a deleted tenant's open session stream must end";
    while let Some(event) = stream
        .next_event(deadline.saturating_duration_since(Instant::now()), contract)
        .await
    {
        assert!(event.data.is_empty(), "{contract}, not carry {event:?}");
    }
    assert!(
        is_running(pid),
        "a deleted tenant's child must be drained: kept while its request is in flight"
    );
    finish_slow_call(
        &mut slow,
        "a request in flight when the file is deleted must complete",
    )
    .await;

    expect_log(
        &daemon,
        mark,
        &["child stopped", &format!("pid={pid}")],
        STOP_WITHIN,
        "a deleted tenant's child must be stopped",
    )
    .await;
    assert!(
        proc_stat(pid).is_none(),
        "a deleted tenant's child must be gone from /proc (pid {pid})"
    );
    assert_eq!(
        child_pid(&daemon, "other", &other).await,
        other_pid,
        "deleting one tenant must not touch another"
    );

    // The file comes back: the tenant is known again, but the old session died with it.
    let mark = daemon.log_mark();
    clients.write("demo", &marked_spec("demo"));
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1"],
        RELOAD_WITHIN,
        "a re-created client file must be loaded within 2 s",
    )
    .await;
    let resp = post_tools_list(&daemon, "demo", &session).await;
    assert_eq!(
        resp.status(),
        404,
        "a session of a deleted tenant must stay ended when the file returns"
    );
    let fresh = initialize(&daemon, "demo").await;
    assert_ne!(
        child_pid(&daemon, "demo", &fresh).await,
        pid,
        "the returned tenant must get a new child"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sighup_rescans_when_events_alone_would_not_reload_yet() {
    let clients = TempClients::new();
    clients.write("first", &marked_spec("first"));
    // A debounce far longer than the test (the daemon caps it at 60 s, still longer): file
    // events alone do not reload, so only the SIGHUP can. The watcher's debug lines show
    // when its own first rescan (run once at start, after the watch is in place) is done.
    let daemon = Daemon::start_with_env(
        &clients,
        &["--reload-debounce-ms", "600000", "--stop-grace", STOP_GRACE],
        &[("RUST_LOG", "info,mcpmux::clients::watch=debug")],
    )
    .await;
    expect_log(
        &daemon,
        0,
        &["clients rescanned"],
        RELOAD_WITHIN,
        "the watcher must run its first rescan at start",
    )
    .await;

    let hup = new_mark("hup");
    clients.write("hup", &marked_spec(&hup));
    let resp = post_initialize(&daemon, "hup").await;
    assert_unknown_client(resp, "hup", "before SIGHUP, inside the long debounce").await;

    let mark = daemon.log_mark();
    daemon.signal(Signal::SIGHUP);
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1"],
        RELOAD_WITHIN,
        "SIGHUP must rescan the clients directory at once, not after the debounce",
    )
    .await;
    let session = initialize(&daemon, "hup").await;
    assert_eq!(child_mark(&daemon, "hup", &session).await, hup);
}

// ---------------------------------------------------------------------------------------------
// Editor temp files
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn editor_temp_files_create_no_tenant_and_restart_nothing() {
    let clients = TempClients::new();
    let real = new_mark("real");
    clients.write("demo", &marked_spec(&real));
    let daemon = start(&clients).await;
    let session = initialize(&daemon, "demo").await;
    let pid = child_pid(&daemon, "demo", &session).await;

    // Valid client files under editor names, with a different marker: read as `demo`, any of
    // them would change the tenant (or clash with `demo.json`).
    let mark = daemon.log_mark();
    let impostor = serde_json::to_vec(&marked_spec("impostor")).unwrap();
    let names = [
        ".demo.json.swp",
        "demo.json~",
        ".#demo.json",
        "#demo.json#",
        "4913",
    ];
    for name in names {
        clients.write_raw(name, &impostor);
    }
    let summaries = reload_barrier(&daemon, &clients, mark).await;

    assert_nothing_restarted(&daemon, mark, "editor temp files");
    for line in &summaries {
        assert!(
            line.contains("added=1") && line.contains("errors=0"),
            "only the sentinel may be added, and temp files are not errors: {line}"
        );
    }
    let rejected = logs_after(&daemon, mark, "client file rejected");
    assert!(
        rejected.is_empty(),
        "editor temp files must be ignored, not parsed: {rejected:#?}"
    );
    assert_eq!(child_pid(&daemon, "demo", &session).await, pid);
    assert_eq!(child_mark(&daemon, "demo", &session).await, real);
    let resp = post_initialize(&daemon, "4913").await;
    assert_unknown_client(resp, "4913", "a file named `4913` is no tenant").await;
}

// ---------------------------------------------------------------------------------------------
// Directory symlink swap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn swapped_clients_directory_symlink_is_followed() {
    let root = TempClients::new();
    let (v1, v2) = (root.path().join("v1"), root.path().join("v2"));
    let (both_v1, both_v2) = (new_mark("both-v1"), new_mark("both-v2"));
    for (dir, only, both) in [(&v1, "onlyv1", &both_v1), (&v2, "onlyv2", &both_v2)] {
        std::fs::create_dir(dir).unwrap();
        let only_spec = serde_json::to_vec(&marked_spec(only)).unwrap();
        std::fs::write(dir.join(format!("{only}.json")), only_spec).unwrap();
        let both_spec = serde_json::to_vec(&marked_spec(both)).unwrap();
        std::fs::write(dir.join("both.json"), both_spec).unwrap();
    }
    let link = root.path().join("clients");
    std::os::unix::fs::symlink("v1", &link).unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--reload-debounce-ms",
        DEBOUNCE_MS,
        "--stop-grace",
        STOP_GRACE,
        "--allow-open-tenants",
        "--clients",
        link.to_str().unwrap(),
    ];
    let daemon = Daemon::spawn(&args, &[LOG_FILTER]).await;
    let both = initialize(&daemon, "both").await;
    assert_eq!(child_mark(&daemon, "both", &both).await, both_v1);
    let v1_pid = child_pid(&daemon, "both", &both).await;
    let only1 = initialize(&daemon, "onlyv1").await;
    let resp = post_initialize(&daemon, "onlyv2").await;
    assert_unknown_client(resp, "onlyv2", "a tenant of the directory not linked yet").await;

    // Swap with the real `ln -sfn`.
    let mark = daemon.log_mark();
    let status = std::process::Command::new("ln")
        .args(["-sfn", "v2", "clients"])
        .current_dir(root.path())
        .status()
        .expect("ln must be runnable");
    assert!(status.success(), "ln -sfn must succeed: {status}");
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1 changed=1 removed=1"],
        RELOAD_WITHIN,
        "`ln -sfn v2 clients` must switch the daemon to v2's files within 2 s",
    )
    .await;
    let resp = post_tools_list(&daemon, "onlyv1", &only1).await;
    assert_unknown_client(resp, "onlyv1", "a v1-only tenant after the swap to v2").await;
    let only2 = initialize(&daemon, "onlyv2").await;
    assert_eq!(child_mark(&daemon, "onlyv2", &only2).await, "onlyv2");
    assert_eq!(
        child_mark(&daemon, "both", &both).await,
        both_v2,
        "a tenant in both directories must run from v2's file after the swap"
    );
    assert_ne!(child_pid(&daemon, "both", &both).await, v1_pid);

    // The watch followed the link: a file added inside v2 is seen (no event from the old
    // directory or the link's parent would announce it).
    let mark = daemon.log_mark();
    std::fs::write(
        v2.join("newinv2.json"),
        serde_json::to_vec(&echo_spec()).unwrap(),
    )
    .unwrap();
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1 changed=0 removed=0"],
        RELOAD_WITHIN,
        "after a symlink swap, files added to the new directory must be loaded within 2 s",
    )
    .await;
    initialize(&daemon, "newinv2").await;

    // Swap back atomically: a new symlink renamed over the old one (v2's two own tenants go).
    let mark = daemon.log_mark();
    let next = root.path().join("clients.next");
    std::os::unix::fs::symlink("v1", &next).unwrap();
    std::fs::rename(&next, &link).unwrap();
    expect_log(
        &daemon,
        mark,
        &["clients reloaded", "added=1 changed=1 removed=2"],
        RELOAD_WITHIN,
        "a symlink renamed over `clients` must switch the daemon back to v1 within 2 s",
    )
    .await;
    let resp = post_tools_list(&daemon, "onlyv2", &only2).await;
    assert_unknown_client(resp, "onlyv2", "a v2-only tenant after the swap back").await;
    let again = initialize(&daemon, "onlyv1").await;
    assert_eq!(child_mark(&daemon, "onlyv1", &again).await, "onlyv1");
    assert_eq!(child_mark(&daemon, "both", &both).await, both_v1);
}

// ---------------------------------------------------------------------------------------------
// An edit while the tenant's child is still starting
// ---------------------------------------------------------------------------------------------

/// A child held at a gate: `sh` waits for a line on the FIFO `gate`, then becomes `mcp-echo`.
/// The daemon has spawned it (and sent `initialize`), but it answers nothing until the test
/// opens the gate, so the test decides exactly when its start completes. The gate lies beside
/// the clients directory (which the sandbox never grants) and is granted by the file.
fn gated_spec(gate: &Path, mark: &str) -> Value {
    let script = format!(
        "read go < '{}' && exec '{}'",
        gate.display(),
        env!("CARGO_BIN_EXE_mcp-echo")
    );
    let gate = gate.to_str().expect("temp path must be UTF-8");
    json!({
        "command": "sh",
        "args": ["-c", script],
        "env": {MARK_VAR: mark},
        "sandbox": {"read": [gate]},
    })
}

#[tokio::test]
async fn child_started_from_the_old_file_during_an_edit_is_stopped_not_leaked() {
    let clients = TempClients::new();
    let gate = clients.root().join("gate.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .expect("mkfifo must be runnable");
    assert!(status.success(), "mkfifo must succeed: {status}");
    // Read-write: opening does not wait for the child, and the line written below waits in
    // the pipe until the child reads it.
    let mut gate_writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .expect("the gate FIFO must open read-write");
    let (old, new) = (new_mark("old"), new_mark("new"));
    clients.write("demo", &gated_spec(&gate, &old));
    let daemon = start(&clients).await;

    let mark = daemon.log_mark();
    let first = initialize(&daemon, "demo");
    let edit_during_start = async {
        let started = expect_log(
            &daemon,
            mark,
            &["child started", "client_id=demo"],
            STOP_WITHIN,
            "the first request must start the tenant's child",
        )
        .await;
        let old_pid = pid_in(&started);
        let reload_mark = daemon.log_mark();
        clients.write("demo", &marked_spec(&new));
        expect_log(
            &daemon,
            reload_mark,
            &["clients reloaded", "changed=1"],
            RELOAD_WITHIN,
            "an edited client file must be reloaded within 2 s",
        )
        .await;
        use std::io::Write;
        gate_writer
            .write_all(b"go\n")
            .expect("the gate FIFO must be writable");
        old_pid
    };
    let (session, old_pid) = tokio::join!(first, edit_during_start);

    // The file changed before the old child was ready: it must not serve new requests, and
    // must be stopped, not left running beside its replacement.
    assert_eq!(
        child_mark(&daemon, "demo", &session).await,
        new,
        "a request after the edit must be served by a child of the new file"
    );
    assert_ne!(child_pid(&daemon, "demo", &session).await, old_pid);
    expect_log(
        &daemon,
        mark,
        &["child stopped", &format!("pid={old_pid}")],
        STOP_WITHIN,
        "a child started from a superseded file must be stopped once it has nothing in flight",
    )
    .await;
    assert!(
        proc_stat(old_pid).is_none(),
        "the superseded child must be gone from /proc (pid {old_pid})"
    );
}

/// The `pid=N` field of a daemon log line.
fn pid_in(line: &str) -> u32 {
    let rest = &line[line
        .find(" pid=")
        .unwrap_or_else(|| panic!("no pid in {line}"))
        + 5..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad pid in {line}: {e}"))
}
