//! Sessions at the caps (issue 10, acceptance 4): at `--max-sessions-per-tenant` and at
//! `--max-sessions` a new `initialize` is admitted by ending the least recently used session
//! that has no open stream and nothing in flight (its next request gets the 404 of an
//! expired session); sessions with an open GET stream or a call in flight are kept; only
//! with every session in use is `initialize` refused, 503 `TOO_MANY_SESSIONS` with a
//! `Retry-After` that says when room is expected. A signed session id ended this way is
//! never resumed by the node that ended it.

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::scaleout::{KeyFile, Node};
use crate::util::{
    Daemon, HTTP_TIMEOUT, SseStream, TempClients, admin_get, admin_status, call_tool, echo_spec,
    error_parts, fake_child_spec, initialize, initialize_params, mcp_request, post, slow_args,
    tenant_status,
};

const KEY: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Bound for the daemon to notice a closed GET connection (hyper's mid-message EOF check,
/// at the latest the next 15 s keep-alive comment).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);
/// Pause between two polls of a condition (each poll is bounded by its deadline).
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn tools_list() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
}

/// The status of `tools/list` in `session` (200 for a live session, 404 for an ended one).
async fn status_of(daemon: &Daemon, tenant: &str, session: &str) -> u16 {
    let resp = post(daemon, Some(tenant), Some(session), &tools_list()).await;
    resp.status().as_u16()
}

/// Asserts the exact 404 of an ended session (the same as after idle expiry).
async fn assert_ended(daemon: &Daemon, tenant: &str, session: &str, what: &str) {
    let resp = post(daemon, Some(tenant), Some(session), &tools_list()).await;
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str(), body),
        (
            404,
            "application/json",
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
                "message": "session not found; initialize a new session"}})
        ),
        "{what}"
    );
}

/// Opens the GET stream of `session`; it stays open while the returned stream lives.
async fn open_get(daemon: &Daemon, tenant: &str, session: &str) -> SseStream {
    let req = mcp_request(daemon, reqwest::Method::GET, Some(tenant), Some(session));
    let resp = req.send().await.expect("daemon must answer a GET to /mcp");
    assert_eq!(resp.status(), 200, "the GET stream of a live session opens");
    SseStream::new(resp)
}

/// Starts a 60 s `slow` call (id 7) in `session` from a caller that accepts JSON only (no
/// SSE reply stream: a call in flight and nothing else), and waits until the tenant has it in
/// flight at its child.
async fn call_in_flight(daemon: &Daemon, tenant: &str, session: &str) -> JoinHandle<Value> {
    let before = inflight(daemon, tenant).await;
    let req = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "slow", "arguments": slow_args(60_000)}});
    let call = daemon
        .http()
        .post(daemon.url())
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .header("X-Client-ID", tenant)
        .header("Mcp-Session-Id", session)
        .body(req.to_string())
        .send();
    let handle = tokio::spawn(async move {
        let resp = call.await.expect("the slow call is answered");
        resp.json::<Value>().await.expect("a JSON answer")
    });
    let deadline = Instant::now() + HTTP_TIMEOUT;
    while inflight(daemon, tenant).await <= before {
        assert!(
            Instant::now() < deadline,
            "the slow call never got in flight"
        );
        sleep(POLL).await;
    }
    handle
}

/// Cancels the call started by [`call_in_flight`] and returns its answer: once it is in, the
/// session has nothing in flight any more.
async fn cancel(daemon: &Daemon, tenant: &str, session: &str, call: JoinHandle<Value>) -> Value {
    let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 7, "reason": "test"}});
    let resp = post(daemon, Some(tenant), Some(session), &note).await;
    assert_eq!(resp.status(), 202);
    timeout(HTTP_TIMEOUT, call)
        .await
        .expect("a cancelled call is answered at once")
        .expect("the call task")
}

async fn inflight(daemon: &Daemon, tenant: &str) -> u64 {
    let status = admin_status(daemon).await;
    tenant_status(&status, tenant)["inflight"]
        .as_u64()
        .unwrap_or(0)
}

/// A new `initialize` of `tenant`, unread.
async fn try_initialize(daemon: &Daemon, tenant: &str) -> reqwest::Response {
    let req =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    post(daemon, Some(tenant), None, &req).await
}

/// Asserts the refusal with every session in use: 503, `Retry-After`, the exact body.
async fn assert_refused(daemon: &Daemon, tenant: &str, retry_after: &str, message: &str) {
    let resp = try_initialize(daemon, tenant).await;
    let retry = resp.headers().get("retry-after").cloned();
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str(), body),
        (
            503,
            "application/json",
            json!({"error": message, "code": "TOO_MANY_SESSIONS"})
        ),
        "every session in use: initialize is refused"
    );
    assert_eq!(
        retry.as_ref().and_then(|v| v.to_str().ok()),
        Some(retry_after),
        "Retry-After"
    );
}

/// The value of counter `name` with exactly these labels on `/metrics` (0 when absent).
async fn counter(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = admin_get(daemon, "/metrics").await;
    assert_eq!(status, 200);
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            let (set, _) = l.split_once('}').unwrap_or_default();
            let have: Vec<&str> = set[name.len() + 1..].split(',').collect();
            have.len() == wanted.len() && wanted.iter().all(|w| have.contains(&w.as_str()))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

const TENANT_FULL: &str = "This client has 3 sessions open, each with an open stream or a request in flight; end one with DELETE or retry later.";
const GLOBAL_FULL: &str = "The server has its maximum number of sessions open, each with an open stream or a request in flight; retry later.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_tenant_cap_the_least_recently_used_idle_session_is_evicted_and_busy_ones_are_kept()
{
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    clients.write("other", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--max-sessions-per-tenant", "3"]).await;

    // Three idle sessions; using `first` again leaves `second` the least recently used.
    let first = initialize(&daemon, "acme").await;
    let second = initialize(&daemon, "acme").await;
    let third = initialize(&daemon, "acme").await;
    assert_eq!(status_of(&daemon, "acme", &first).await, 200);
    let fourth = initialize(&daemon, "acme").await;
    assert_ended(&daemon, "acme", &second, "the LRU idle session is evicted").await;
    // Another tenant's sessions do not count against acme's cap.
    let theirs = initialize(&daemon, "other").await;

    // `first` holds a GET stream, `third` a call in flight; `fourth` is the only idle one.
    let mut get = open_get(&daemon, "acme", &first).await;
    let call = call_in_flight(&daemon, "acme", &third).await;
    let fifth = initialize(&daemon, "acme").await;
    assert_ended(&daemon, "acme", &fourth, "the only idle session is evicted").await;
    assert_eq!(
        status_of(&daemon, "acme", &first).await,
        200,
        "open stream: kept"
    );
    assert_eq!(
        status_of(&daemon, "acme", &third).await,
        200,
        "call in flight: kept"
    );
    assert_eq!(
        inflight(&daemon, "acme").await,
        1,
        "the call is still running"
    );
    assert_eq!(status_of(&daemon, "other", &theirs).await, 200);

    // Every session in use; one of them only by a call, which ends soon: retry in 1 s.
    let get_fifth = open_get(&daemon, "acme", &fifth).await;
    assert_refused(&daemon, "acme", "1", TENANT_FULL).await;
    // Nothing was lost to the refusal.
    for session in [&first, &third, &fifth] {
        assert_eq!(status_of(&daemon, "acme", session).await, 200);
    }
    assert_eq!(
        inflight(&daemon, "acme").await,
        1,
        "the call is still running"
    );
    let status = admin_status(&daemon).await;
    assert_eq!(tenant_status(&status, "acme")["sessions"], 3);

    // Only open streams: no end is known, retry in a minute.
    let answer = cancel(&daemon, "acme", &third, call).await;
    assert_eq!(answer["id"], 7, "{answer:#}");
    let _get_third = open_get(&daemon, "acme", &third).await;
    assert_refused(&daemon, "acme", "60", TENANT_FULL).await;
    // The kept GET stream is intact: it still delivers what the session is sent.
    let logged = call_tool(&daemon, "acme", &first, "log", json!({"levels": ["info"]})).await;
    assert!(logged.get("result").is_some(), "{logged:#}");
    let note = get
        .next_message(HTTP_TIMEOUT, "the GET stream of a kept session stays open")
        .await;
    assert_eq!(note["method"], "notifications/message", "{note:#}");

    // A stream that closes frees its session for eviction.
    drop(get_fifth);
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let sixth = loop {
        let resp = try_initialize(&daemon, "acme").await;
        if resp.status() == 200 {
            break resp.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned();
        }
        assert_eq!(resp.status(), 503);
        assert!(Instant::now() < deadline, "a closed stream must make room");
        sleep(POLL).await;
    };
    assert_ended(&daemon, "acme", &fifth, "its stream closed, it was idle").await;
    assert_eq!(status_of(&daemon, "acme", &sixth).await, 200);

    let labels = [("client_id", "acme"), ("cap", "tenant")];
    let evicted = counter(&daemon, "mcpmux_sessions_evicted_total", &labels).await;
    assert_eq!(evicted, 3.0, "second, fourth, fifth");
    let refused = counter(&daemon, "mcpmux_sessions_refused_total", &labels).await;
    assert!(refused >= 2.0, "two refusals at least, counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_global_cap_the_least_recently_used_idle_session_of_any_tenant_is_evicted() {
    let clients = TempClients::new();
    clients.write("alpha", &fake_child_spec(&[]));
    clients.write("bravo", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--max-sessions", "3"]).await;

    let b1 = initialize(&daemon, "bravo").await;
    let a1 = initialize(&daemon, "alpha").await;
    let a2 = initialize(&daemon, "alpha").await;
    assert_eq!(status_of(&daemon, "bravo", &b1).await, 200); // a1 is now the LRU
    let b2 = initialize(&daemon, "bravo").await;
    assert_ended(&daemon, "alpha", &a1, "another tenant's LRU idle session").await;

    // a2 streams, b1 has a call in flight; b2 is the only idle one.
    let _get = open_get(&daemon, "alpha", &a2).await;
    let call = call_in_flight(&daemon, "bravo", &b1).await;
    let a3 = initialize(&daemon, "alpha").await;
    assert_ended(&daemon, "bravo", &b2, "the only idle session").await;
    assert_eq!(
        status_of(&daemon, "alpha", &a2).await,
        200,
        "open stream: kept"
    );
    assert_eq!(
        status_of(&daemon, "bravo", &b1).await,
        200,
        "call in flight: kept"
    );
    assert_eq!(inflight(&daemon, "bravo").await, 1);

    let _get_a3 = open_get(&daemon, "alpha", &a3).await;
    assert_refused(&daemon, "bravo", "1", GLOBAL_FULL).await;
    assert_refused(&daemon, "alpha", "1", GLOBAL_FULL).await;
    for (tenant, session) in [("alpha", &a2), ("bravo", &b1), ("alpha", &a3)] {
        assert_eq!(status_of(&daemon, tenant, session).await, 200);
    }
    let answer = cancel(&daemon, "bravo", &b1, call).await;
    assert_eq!(
        answer["id"], 7,
        "the call ran to its cancellation: {answer:#}"
    );

    for (tenant, n) in [("alpha", 1.0), ("bravo", 1.0)] {
        let labels = [("client_id", tenant), ("cap", "global")];
        let evicted = counter(&daemon, "mcpmux_sessions_evicted_total", &labels).await;
        assert_eq!(evicted, n, "evictions of {tenant}'s sessions");
        let refused = counter(&daemon, "mcpmux_sessions_refused_total", &labels).await;
        assert_eq!(refused, 1.0, "refusals of {tenant}");
    }
    let (_, metrics) = admin_get(&daemon, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "mcpmux_sessions_max 3"),
        "the cap is exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_session_evicted_at_the_cap_is_never_resumed_by_the_node_that_evicted_it() {
    let clients = TempClients::new();
    clients.write("alpha", &echo_spec());
    let keys = KeyFile::new(KEY);
    let evicting = Node::start(&clients, &keys, None, &["--max-sessions-per-tenant", "1"]).await;
    let other = Node::start(&clients, &keys, None, &[]).await;

    let evicted = initialize(&evicting.daemon, "alpha").await;
    let newer = initialize(&evicting.daemon, "alpha").await;
    assert_ended(&evicting.daemon, "alpha", &evicted, "evicted, not resumed").await;
    assert_eq!(status_of(&evicting.daemon, "alpha", &newer).await, 200);
    // The id itself is good: a node that never ended it resumes it ...
    assert_eq!(status_of(&other.daemon, "alpha", &evicted).await, 200);
    // ... and the evicting node still refuses it, without a resume or another eviction.
    assert_ended(&evicting.daemon, "alpha", &evicted, "still ended here").await;
    assert_eq!(status_of(&evicting.daemon, "alpha", &newer).await, 200);
    let resumed = counter(
        &evicting.daemon,
        "mcpmux_sessions_resumed_total",
        &[("client_id", "alpha")],
    )
    .await;
    assert_eq!(resumed, 0.0);
    let labels = [("client_id", "alpha"), ("cap", "tenant")];
    let evictions = counter(&evicting.daemon, "mcpmux_sessions_evicted_total", &labels).await;
    assert_eq!(evictions, 1.0);
}
