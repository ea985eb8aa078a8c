//! Child lifecycle (DESIGN §4): idle reaping with handshake replay, crashes mid-request and
//! at start (with backoff), no process of a child's group outliving it, and children that
//! misbehave on stderr or stdout without stalling the daemon or other tenants.
//!
//! The fake child's `--log-file` name carries a decimal marker, so `/proc` scans find the
//! child (and a `sleep 3000.<marker>` grandchild) without knowing their pids.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, TempClients, call_tool, child_pid, echo_spec, fake_child_spec,
    initialize, initialize_params, logged_fake_child_spec, post, processes_with_marker,
    wait_no_process_with_marker, zombie_children_of,
};

/// Bound for the daemon noticing an idle child (TTL 1 s) or a crash and logging it.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for a stopped child's whole process group to disappear (stop grace is 0.5 s).
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// `JSON-RPC` internal error: what a caller gets when the child fails under its request.
const INTERNAL_ERROR: i64 = -32603;

/// A spec with `idle_ttl_secs: 1`.
fn with_ttl_1s(mut spec: Value) -> Value {
    spec["idle_ttl_secs"] = json!(1);
    spec
}

/// A child that starts a grandchild holding its stdout/stderr (as `npx` → `node` does):
/// `sh -c 'sleep 3000.<marker> & exec python3 fake_child.py --log-file <log>'`, sandboxed
/// with the fixtures readable and the log's directory writable.
pub(crate) fn grandchild_spec(log: &ChildLog) -> Value {
    let fixtures = crate::util::fixtures_dir();
    let script = fixtures.join("fake_child.py");
    let script = script.to_str().expect("repo path must be UTF-8");
    let line = format!(
        "sleep 3000.{} & exec {} '{script}' --log-file '{}'",
        log.marker(),
        crate::util::system_python(),
        log.path()
    );
    let read = fixtures.to_str().expect("repo path must be UTF-8");
    json!({
        "command": "sh",
        "args": ["-c", line],
        "sandbox": {"read": [read], "write": [log.dir()]},
    })
}

/// Asserts `called` is the JSON-RPC error of a child that exited with `code`, with `stderr`
/// in its stderr tail.
fn assert_exit_error(called: &Value, code: i64, stderr: &str) {
    let error = &called["error"];
    assert_eq!(error["code"], INTERNAL_ERROR, "{called:#}");
    let status = format!("exit status {code}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&status),
        "the message must name the exit ({status}): {called:#}"
    );
    assert_eq!(error["data"]["exit_code"], code, "{called:#}");
    assert_eq!(error["data"]["exit_status"], status, "{called:#}");
    let tail = error["data"]["stderr_tail"].as_array();
    let tail = tail.unwrap_or_else(|| panic!("error.data.stderr_tail must be a list: {called:#}"));
    assert!(
        tail.iter().any(|l| l == stderr),
        "the stderr tail must hold the child's last words {stderr:?}: {called:#}"
    );
}

/// Waits for the daemon to log `needle` after `mark`, panicking with `contract`.
async fn expect_log(daemon: &Daemon, mark: usize, needle: &str, contract: &str) -> String {
    let line = daemon
        .wait_for_log_after(mark, needle, LIFECYCLE_TIMEOUT)
        .await;
    line.unwrap_or_else(|| panic!("{contract} (no log line with {needle:?})"))
}

#[tokio::test]
async fn idle_child_is_reaped_after_its_ttl_and_the_same_session_gets_a_new_child() {
    let clients = TempClients::new();
    let log = ChildLog::new();
    clients.write("ttl", &with_ttl_1s(logged_fake_child_spec(&log, &[])));
    let daemon = Daemon::start(&clients, &["--stop-grace", "0.5"]).await;
    let session = initialize(&daemon, "ttl").await;

    let first = child_pid(&daemon, "ttl", &session).await;
    assert_eq!(
        child_pid(&daemon, "ttl", &session).await,
        first,
        "a child in use must not be reaped"
    );
    let slow = call_tool(&daemon, "ttl", &session, "slow", json!({"ms": 2500})).await;
    assert_eq!(
        slow["result"]["content"][0]["text"], "done after 2500 ms",
        "a request longer than the TTL must complete: {slow:#}"
    );
    assert_eq!(
        child_pid(&daemon, "ttl", &session).await,
        first,
        "a child must not be reaped while a request is in flight"
    );

    let reaped = expect_log(
        &daemon,
        0,
        "reaping idle child",
        "a child idle past its 1 s TTL must be reaped",
    )
    .await;
    assert!(reaped.contains(&format!("pid={first}")), "{reaped}");
    wait_no_process_with_marker(log.marker(), GROUP_GONE_TIMEOUT)
        .await
        .expect("the reaped child must exit");

    let second = child_pid(&daemon, "ttl", &session).await;
    assert_ne!(
        second, first,
        "the next request on the same session must start a new child"
    );
    let inits = log.with_method("initialize");
    assert_eq!(
        inits.len(),
        2,
        "the new child must be initialized: {inits:#?}"
    );
    assert_eq!(
        inits[1]["params"], inits[0]["params"],
        "the handshake is replayed with the first child's params"
    );
    // The first caller's identity, the newest revision and every capability mcpmux routes.
    let first = &inits[0]["params"];
    assert_eq!(
        first["clientInfo"],
        initialize_params()["clientInfo"],
        "{first}"
    );
    assert_eq!(first["protocolVersion"], "2025-11-25", "{first}");
    assert!(first["capabilities"]["sampling"].is_object(), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_crashing_mid_request_fails_in_flight_requests_at_once_and_is_replaced() {
    let clients = TempClients::new();
    let log = ChildLog::new();
    clients.write("crash", &logged_fake_child_spec(&log, &[]));
    let daemon = Daemon::start(&clients, &["--stop-grace", "0.5"]).await;
    let (session, other) = tokio::join!(initialize(&daemon, "crash"), initialize(&daemon, "crash"));
    let first = child_pid(&daemon, "crash", &session).await;

    // A long call in another session must fail with the crash too, not wait out its 60 s.
    let pending = call_tool(&daemon, "crash", &other, "slow", json!({"ms": 60_000}));
    let crash = async {
        let state = call_tool(
            &daemon,
            "crash",
            &session,
            "wait",
            json!({"slow": 1, "ms": 15_000}),
        )
        .await;
        assert_eq!(
            state["result"]["in_flight"].as_array().map(Vec::len),
            Some(1)
        );
        call_tool(&daemon, "crash", &session, "crash", json!({})).await
    };
    let (pending, crashed) = timeout(HTTP_TIMEOUT, async { tokio::join!(pending, crash) })
        .await
        .expect("a crashed child must fail its in-flight requests at once, not hang");
    let words = "fake child crashing on purpose with code 3";
    assert_exit_error(&crashed, 3, words);
    assert_exit_error(&pending, 3, words);

    let second = child_pid(&daemon, "crash", &session).await;
    assert_ne!(second, first, "the next request must get a new child");
    assert_eq!(
        child_pid(&daemon, "crash", &other).await,
        second,
        "every session of the tenant survives the crash and shares the new child"
    );
}

#[tokio::test]
async fn child_crashing_at_start_reports_its_exit_then_backs_off_without_hurting_others() {
    let clients = TempClients::new();
    clients.write("crashy", &fake_child_spec(&["--crash-on-start"]));
    clients.write("steady", &echo_spec());
    let daemon = Daemon::start(&clients, &["--stop-grace", "0.5"]).await;
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});

    let resp = post(&daemon, Some("crashy"), None, &init).await;
    assert_eq!(
        resp.status(),
        200,
        "a child failing to start is a JSON-RPC error"
    );
    let first: Value = resp.json().await.expect("a JSON-RPC error body");
    assert_exit_error(&first, 7, "fake child failing on purpose");
    assert_eq!(first["id"], 0, "{first:#}");

    // No wait after the first crash: the retry starts a child at once (and it crashes too).
    let resp = post(&daemon, Some("crashy"), None, &init).await;
    assert_eq!(resp.status(), 200, "the first crash must not impose a wait");
    let second: Value = resp.json().await.expect("a JSON-RPC error body");
    assert_exit_error(&second, 7, "fake child failing on purpose");

    // Then 1 s, 2 s, ...: quick retries must hit the backoff (a retry that still gets through
    // on a slow machine is one more crash and a longer wait).
    let mut backoff = None;
    for _ in 0..5 {
        let resp = post(&daemon, Some("crashy"), None, &init).await;
        if resp.status() == 503 {
            backoff = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200, "before backoff, a retry crashes again");
        let again: Value = resp.json().await.expect("a JSON-RPC error body");
        assert_exit_error(&again, 7, "fake child failing on purpose");
    }
    let resp = backoff.expect("repeated crashes at start must lead to 503 CHILD_BACKOFF");
    let retry_after = resp.headers().get("retry-after").cloned();
    let retry_after = retry_after.expect("a backoff 503 must carry Retry-After");
    let secs: u64 = retry_after
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    assert!(secs >= 1, "Retry-After must be at least 1 s, got {secs}");
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "CHILD_BACKOFF", "{body:#}");
    assert!(body["error"].is_string(), "{body:#}");

    let session = initialize(&daemon, "steady").await;
    let called = call_tool(
        &daemon,
        "steady",
        &session,
        "echo",
        json!({"message": "fine"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "fine",
        "another tenant must keep working while one crash-loops: {called:#}"
    );
}

/// Starts `spec` for tenant `g`, checks the child and its grandchild run, and returns the
/// daemon and a session.
async fn with_grandchild(clients: &TempClients, log: &ChildLog, spec: Value) -> (Daemon, String) {
    clients.write("g", &spec);
    let daemon = Daemon::start(clients, &["--stop-grace", "0.5"]).await;
    let session = initialize(&daemon, "g").await;
    child_pid(&daemon, "g", &session).await;
    let running = processes_with_marker(log.marker());
    assert_eq!(
        running.len(),
        2,
        "test premise: the child and its `sleep` grandchild run: {running:?}"
    );
    (daemon, session)
}

/// After the daemon logged the child's end: no process of its group, no zombie.
async fn assert_group_gone(daemon: &Daemon, log: &ChildLog, after: &str) {
    let left = wait_no_process_with_marker(log.marker(), GROUP_GONE_TIMEOUT).await;
    assert_eq!(
        left,
        Ok(()),
        "no process of the child's group may outlive {after}"
    );
    assert_eq!(
        zombie_children_of(daemon.pid()),
        Vec::<u32>::new(),
        "the daemon must reap its child after {after}"
    );
}

#[tokio::test]
async fn reaping_an_idle_child_ends_its_grandchildren() {
    let (clients, log) = (TempClients::new(), ChildLog::new());
    let (daemon, _session) =
        with_grandchild(&clients, &log, with_ttl_1s(grandchild_spec(&log))).await;
    expect_log(
        &daemon,
        0,
        "child stopped",
        "an idle child must be reaped and stopped",
    )
    .await;
    assert_group_gone(&daemon, &log, "an idle reap").await;
}

#[tokio::test]
async fn a_crashed_childs_grandchildren_are_ended() {
    let (clients, log) = (TempClients::new(), ChildLog::new());
    let (daemon, session) = with_grandchild(&clients, &log, grandchild_spec(&log)).await;
    let crashed = call_tool(&daemon, "g", &session, "crash", json!({})).await;
    assert_exit_error(&crashed, 3, "fake child crashing on purpose with code 3");
    expect_log(
        &daemon,
        0,
        "child exited unexpectedly",
        "the crash must be noticed",
    )
    .await;
    assert_group_gone(&daemon, &log, "a crash").await;
}

#[tokio::test]
async fn daemon_shutdown_ends_children_and_grandchildren_and_exits_0() {
    let (clients, log) = (TempClients::new(), ChildLog::new());
    let (mut daemon, _session) = with_grandchild(&clients, &log, grandchild_spec(&log)).await;
    let status = daemon.stop().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must drain and exit 0: {status}"
    );
    let left = wait_no_process_with_marker(log.marker(), GROUP_GONE_TIMEOUT).await;
    assert_eq!(
        left,
        Ok(()),
        "no child or grandchild may outlive the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_flood_stalls_neither_the_daemon_nor_the_flooding_child() {
    let clients = TempClients::new();
    clients.write("flood", &fake_child_spec(&[]));
    clients.write("other", &echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    let (flooding, other) =
        tokio::join!(initialize(&daemon, "flood"), initialize(&daemon, "other"));
    let pid = child_pid(&daemon, "flood", &flooding).await;

    let flood = call_tool(
        &daemon,
        "flood",
        &flooding,
        "flood",
        json!({"bytes": 32 << 20}),
    );
    let echo = call_tool(
        &daemon,
        "other",
        &other,
        "echo",
        json!({"message": "meanwhile"}),
    );
    let (flooded, echoed) = timeout(Duration::from_secs(60), async { tokio::join!(flood, echo) })
        .await
        .expect("a 32 MB stderr flood must be drained, not block the child or the daemon");
    assert_eq!(
        flooded["result"]["content"][0]["text"], "flooded",
        "{flooded:#}"
    );
    assert_eq!(
        echoed["result"]["content"][0]["text"], "meanwhile",
        "{echoed:#}"
    );
    assert_eq!(
        child_pid(&daemon, "flood", &flooding).await,
        pid,
        "the flooding child keeps working, and is not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_stdout_line_restarts_the_child_and_fails_its_request_only() {
    let clients = TempClients::new();
    clients.write("long", &fake_child_spec(&[]));
    clients.write("other", &fake_child_spec(&[]));
    let args = ["--max-line-bytes", "65536", "--stop-grace", "0.5"];
    let daemon = Daemon::start(&clients, &args).await;
    let (long, other) = tokio::join!(initialize(&daemon, "long"), initialize(&daemon, "other"));
    let (first, other_pid) = tokio::join!(
        child_pid(&daemon, "long", &long),
        child_pid(&daemon, "other", &other)
    );

    let called = timeout(
        HTTP_TIMEOUT,
        call_tool(
            &daemon,
            "long",
            &long,
            "longline",
            json!({"bytes": 200_000}),
        ),
    )
    .await
    .expect("a child writing an over-long line must fail the request, not hang");
    assert_eq!(called["error"]["code"], INTERNAL_ERROR, "{called:#}");
    let message = called["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("over-long line"), "{called:#}");

    let second = child_pid(&daemon, "long", &long).await;
    assert_ne!(second, first, "the next request must get a new child");
    let echoed = call_tool(&daemon, "long", &long, "echo", json!({"k": 1})).await;
    assert_eq!(echoed["result"]["echo"]["arguments"]["k"], 1, "{echoed:#}");
    assert_eq!(
        child_pid(&daemon, "other", &other).await,
        other_pid,
        "another tenant's child is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_killed_between_calls_is_replaced_and_the_session_needs_no_new_initialize() {
    let clients = TempClients::new();
    let log = ChildLog::new();
    clients.write("killed", &logged_fake_child_spec(&log, &[]));
    let daemon = Daemon::start(&clients, &["--stop-grace", "0.5"]).await;
    let session = initialize(&daemon, "killed").await;
    let first = child_pid(&daemon, "killed", &session).await;

    let mark = daemon.log_mark();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    // The next call must not race the daemon's noticing: wait for its exit report.
    expect_log(
        &daemon,
        mark,
        "child exited unexpectedly",
        "a child killed from outside must be noticed",
    )
    .await;

    let echoed = call_tool(
        &daemon,
        "killed",
        &session,
        "echo",
        json!({"after": "kill"}),
    )
    .await;
    assert_eq!(
        echoed["result"]["echo"]["arguments"]["after"], "kill",
        "the call after the kill must succeed on the same session: {echoed:#}"
    );
    let second = child_pid(&daemon, "killed", &session).await;
    assert_ne!(second, first, "a new child must serve the session");
    let inits = log.with_method("initialize");
    assert_eq!(
        inits.len(),
        2,
        "mcpmux, not the caller, initializes the new child (the handshake is replayed): {inits:#?}"
    );
    assert_eq!(inits[1]["params"], inits[0]["params"]);
}
