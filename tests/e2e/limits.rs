//! Resource bounds and timeouts (DESIGN §3 limits, §4 resource bounds): per-tenant `rlimit_*`
//! applied to the child, `--max-children` with longest-idle eviction, `--max-inflight-per-tenant`,
//! `--request-timeout` (extended by progress, cancelling at the child) and
//! `--header-read-timeout`. Each limit is shown both biting and leaving everyone else alone.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, TempClients, admin_status, call_tool, child_pid, error_parts,
    fake_child_spec, finish_call, initialize, logged_fake_child_spec, open_slow_call, post,
    slow_args, tenant_status, wait_pid_gone,
};

/// Bound for a stopped child's process to disappear (stop grace is 0.5 s in these tests).
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// JSON-RPC error code for a request that timed out (the MCP SDKs' REQUEST_TIMEOUT).
const REQUEST_TIMEOUT: i64 = -32001;
/// `rlimit_as` of the memory-hungry tenant: 256 MiB, plenty for Python, far below 1 GiB.
const RLIMIT_AS: u64 = 256 << 20;

/// The text of a successful tool result.
fn text_of(called: &Value) -> &str {
    let text = called["result"]["content"][0]["text"].as_str();
    text.unwrap_or_else(|| panic!("the tool must answer with text: {called:#}"))
}

/// The soft limit named `what` (e.g. `Max address space`) from `/proc/<pid>/limits`.
fn proc_limit(pid: u32, what: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/limits must be readable: {e}"));
    let line = limits.lines().find(|l| l.starts_with(what));
    let line = line.unwrap_or_else(|| panic!("{what} must be listed: {limits}"));
    let rest = line[what.len()..].split_whitespace().next();
    rest.unwrap_or_default().to_owned()
}

/// An `rlimit_nproc` one below this process's hard limit (which the daemon inherits).
fn nproc_below_hard_limit() -> u64 {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NPROC).expect("getrlimit(RLIMIT_NPROC)");
    if hard == RLIM_INFINITY {
        1_000_000
    } else {
        hard - 1
    }
}

/// Asserts a 503 with an integer `Retry-After` of at least 1 and the DESIGN §1 body with `code`.
async fn assert_503(resp: reqwest::Response, code: &str, case: &str) {
    let retry_after = resp.headers().get("retry-after").cloned();
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str(), &body["code"]),
        (503, "application/json", &json!(code)),
        "{case}: {body:#}"
    );
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: a human message: {body:#}"
    );
    let secs = retry_after
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{case}: a 503 must carry Retry-After in seconds: {body:#}"));
    assert!(secs >= 1, "{case}: Retry-After must be at least 1 s");
}

#[tokio::test]
async fn child_exceeding_its_rlimit_as_fails_its_caller_with_an_error_naming_the_limit() {
    let clients = TempClients::new();
    let mut hog = fake_child_spec(&[]);
    hog["rlimit_as"] = json!(RLIMIT_AS);
    clients.write("hog", &hog);
    // Below the hard limit the daemon itself runs under (only a privileged process may raise
    // one), and unlike the inherited value, so seeing it on the child proves it was applied.
    let nproc = nproc_below_hard_limit();
    let mut capped = fake_child_spec(&[]);
    capped["rlimit_nofile"] = json!(64);
    capped["rlimit_nproc"] = json!(nproc);
    clients.write("capped", &capped);
    clients.write("other", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--stop-grace", "0.5"]).await;
    let (hog_s, capped_s, other_s) = tokio::join!(
        initialize(&daemon, "hog"),
        initialize(&daemon, "capped"),
        initialize(&daemon, "other")
    );
    let (first, other_pid) = tokio::join!(
        child_pid(&daemon, "hog", &hog_s),
        child_pid(&daemon, "other", &other_s)
    );
    assert_eq!(
        proc_limit(first, "Max address space"),
        RLIMIT_AS.to_string(),
        "rlimit_as must be set on the child"
    );
    let capped_pid = child_pid(&daemon, "capped", &capped_s).await;
    assert_eq!(proc_limit(capped_pid, "Max open files"), "64");
    assert_eq!(proc_limit(capped_pid, "Max processes"), nproc.to_string());
    assert_eq!(
        proc_limit(other_pid, "Max address space"),
        "unlimited",
        "a tenant without rlimit_as is not limited by another's"
    );

    let small = call_tool(&daemon, "hog", &hog_s, "alloc", json!({"mb": 16})).await;
    assert_eq!(text_of(&small), "allocated 16 MiB", "within the limit");
    let called = timeout(
        HTTP_TIMEOUT,
        call_tool(&daemon, "hog", &hog_s, "alloc", json!({"mb": 1024})),
    )
    .await
    .expect("a child dying of its limit must fail the request, not hang it");
    let error = &called["error"];
    let message = error["message"].as_str().unwrap_or_default();
    let limit = format!("rlimit_as={RLIMIT_AS}");
    assert!(
        message.contains("exit status 1")
            && message.contains(&format!("it ran under {limit}, which it may have exceeded")),
        "the caller's error must name the exit and the limit: {called:#}"
    );
    assert_eq!(error["data"]["rlimits"], limit, "{called:#}");
    assert_eq!(error["data"]["exit_code"], 1, "{called:#}");
    let tail = error["data"]["stderr_tail"].as_array();
    assert!(
        tail.is_some_and(|t| t
            .iter()
            .any(|l| l == "MemoryError: cannot allocate 1024 MiB")),
        "error.data.stderr_tail must hold the child's MemoryError: {called:#}"
    );

    let second = child_pid(&daemon, "hog", &hog_s).await;
    assert_ne!(second, first, "the next request must get a new child");
    assert_eq!(
        proc_limit(second, "Max address space"),
        RLIMIT_AS.to_string(),
        "the new child runs under the same limit"
    );
    let small = call_tool(&daemon, "hog", &hog_s, "alloc", json!({"mb": 16})).await;
    assert_eq!(text_of(&small), "allocated 16 MiB", "the new child works");
    assert_eq!(
        child_pid(&daemon, "other", &other_s).await,
        other_pid,
        "another tenant's child is untouched"
    );
    assert_eq!(
        child_pid(&daemon, "capped", &capped_s).await,
        capped_pid,
        "another tenant's child is untouched"
    );
}

#[tokio::test]
async fn at_max_children_the_longest_idle_child_makes_room_and_with_all_busy_the_caller_gets_503() {
    let clients = TempClients::new();
    for id in ["first", "second", "third"] {
        clients.write(id, &fake_child_spec(&[]));
    }
    let args = ["--max-children", "2", "--stop-grace", "0.5"];
    let daemon = Daemon::start(&clients, &args).await;
    let first = initialize(&daemon, "first").await;
    let first_pid = child_pid(&daemon, "first", &first).await;
    let second = initialize(&daemon, "second").await;
    let second_pid = child_pid(&daemon, "second", &second).await;

    // A third tenant at the cap: `first` has been idle longest and makes room.
    let mark = daemon.log_mark();
    let third = initialize(&daemon, "third").await;
    let third_pid = child_pid(&daemon, "third", &third).await;
    let line = daemon
        .wait_for_log_after(mark, "to make room", GONE_TIMEOUT)
        .await;
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("client_id=first") && l.contains(&first_pid.to_string())),
        "the eviction must be logged for the longest-idle child, got {line:?}"
    );
    assert!(
        wait_pid_gone(first_pid, GONE_TIMEOUT).await,
        "the longest-idle child (pid {first_pid}) must be stopped to make room"
    );
    assert_eq!(
        child_pid(&daemon, "second", &second).await,
        second_pid,
        "the more recently used child stays"
    );
    let status = admin_status(&daemon).await;
    let states: Vec<_> = ["first", "second", "third"]
        .iter()
        .map(|id| tenant_status(&status, id)["pid"].clone())
        .collect();
    assert_eq!(
        states,
        [Value::Null, json!(second_pid), json!(third_pid)],
        "{status:#}"
    );

    // Both children busy: `first` cannot get one, and is told when to retry.
    let (mut busy_second, mut busy_third) = tokio::join!(
        open_slow_call(&daemon, "second", &second, 21, 3_000),
        open_slow_call(&daemon, "third", &third, 22, 3_000)
    );
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "pid", "arguments": {}}});
    let resp = post(&daemon, Some("first"), Some(&first), &req).await;
    assert_503(resp, "TOO_MANY_CHILDREN", "every child busy").await;
    let done = tokio::join!(
        finish_call(&mut busy_second, 21, "a busy child is never evicted"),
        finish_call(&mut busy_third, 22, "a busy child is never evicted")
    );
    assert_eq!(
        (text_of(&done.0), text_of(&done.1)),
        ("done after 3000 ms", "done after 3000 ms"),
        "the calls in flight finish untouched"
    );

    // Once a child is idle again, the retry succeeds (and `first`'s session survived).
    let again = child_pid(&daemon, "first", &first).await;
    assert_ne!(again, first_pid, "a new child for the retried tenant");
}

#[tokio::test]
async fn third_concurrent_request_of_a_tenant_at_max_inflight_2_gets_503_others_are_served() {
    let clients = TempClients::new();
    clients.write("busy", &fake_child_spec(&[]));
    clients.write("other", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--max-inflight-per-tenant", "2"]).await;
    let (session, other) = tokio::join!(initialize(&daemon, "busy"), initialize(&daemon, "other"));
    let (mut one, mut two) = tokio::join!(
        open_slow_call(&daemon, "busy", &session, 1, 3_000),
        open_slow_call(&daemon, "busy", &session, 2, 3_000)
    );

    let echo = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "echo", "arguments": {}}});
    let resp = post(&daemon, Some("busy"), Some(&session), &echo).await;
    assert_503(
        resp,
        "TOO_MANY_REQUESTS",
        "a third request in the same session",
    )
    .await;
    // The cap is per tenant, not per session.
    let another = initialize(&daemon, "busy").await;
    let resp = post(&daemon, Some("busy"), Some(&another), &echo).await;
    assert_503(
        resp,
        "TOO_MANY_REQUESTS",
        "a third request in another session",
    )
    .await;
    // And only that tenant's.
    let called = call_tool(&daemon, "other", &other, "echo", json!({"n": 1})).await;
    assert_eq!(text_of(&called), "ok", "another tenant is served meanwhile");

    let done = tokio::join!(
        finish_call(&mut one, 1, "requests within the cap finish"),
        finish_call(&mut two, 2, "requests within the cap finish")
    );
    assert_eq!(
        (text_of(&done.0), text_of(&done.1)),
        ("done after 3000 ms", "done after 3000 ms")
    );
    let called = call_tool(&daemon, "busy", &session, "echo", json!({})).await;
    assert_eq!(
        text_of(&called),
        "ok",
        "below the cap again, the tenant is served"
    );
}

#[tokio::test]
async fn request_timeout_answers_32001_and_cancels_at_the_child_while_progress_extends_it() {
    let clients = TempClients::new();
    let log = ChildLog::new();
    clients.write("slowpoke", &logged_fake_child_spec(&log, &[]));
    let daemon = Daemon::start(&clients, &["--request-timeout", "1"]).await;
    let session = initialize(&daemon, "slowpoke").await;

    // No progress: the caller gets -32001 ...
    let called = timeout(
        HTTP_TIMEOUT,
        call_tool(&daemon, "slowpoke", &session, "slow", slow_args(60_000)),
    )
    .await
    .expect("a request past --request-timeout must be answered, not left hanging");
    assert_eq!(called["id"], 1, "{called:#}");
    assert_eq!(called["error"]["code"], REQUEST_TIMEOUT, "{called:#}");
    assert!(
        called["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "{called:#}"
    );
    // ... and the child a cancellation naming the request by its child-side id. The fixture's
    // `wait` tool answers once it has received one (the wait itself stays under the timeout).
    let waited = call_tool(
        &daemon,
        "slowpoke",
        &session,
        "wait",
        json!({"cancelled": 1, "ms": 500}),
    )
    .await;
    let slow = log.tool_calls("slow");
    assert_eq!(slow.len(), 1, "the child must have received the slow call");
    assert_eq!(
        waited["result"]["cancelled"],
        json!([slow[0]["id"]]),
        "the timed-out request must be cancelled at the child, by its child-side id: {waited:#}"
    );

    // Progress every 100 ms keeps a 2.5 s call alive under a 1 s timeout.
    let mut stream = open_slow_call(&daemon, "slowpoke", &session, 9, 2_500).await;
    let done = finish_call(
        &mut stream,
        9,
        "a call that reports progress must not time out",
    )
    .await;
    assert_eq!(text_of(&done), "done after 2500 ms", "{done:#}");
}

#[tokio::test]
async fn connection_that_never_finishes_its_headers_is_closed_after_header_read_timeout() {
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--header-read-timeout", "0.5"]).await;
    let mut sock = tokio::net::TcpStream::connect(daemon.addr()).await.unwrap();
    sock.write_all(b"POST /mcp HTTP/1.1\r\nHost: mcpmux\r\nX-Client-ID: acme\r\n")
        .await
        .unwrap();
    // The default is 30 s: closing well within this bound is the flag at work.
    let mut rest = Vec::new();
    let read = timeout(Duration::from_secs(20), sock.read_to_end(&mut rest)).await;
    let read = read.expect("a connection stuck in its headers must be closed by the daemon");
    assert!(
        read.is_err() || rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "the connection is closed without serving the request: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let session = initialize(&daemon, "acme").await;
    let called = call_tool(&daemon, "acme", &session, "echo", json!({})).await;
    assert_eq!(text_of(&called), "ok", "other connections are served");
}
