//! Multiplexing (DESIGN §3): one child per tenant, shared by all of its sessions. Request ids
//! and progress tokens are rewritten so that sessions never collide and restored byte for
//! byte; params and unknown fields are relayed untouched; a caller that goes away gets its
//! request cancelled at the child; the child is spawned and initialized once.
//!
//! Most tests run the fake child with `--log-file`, so they can check what the child really
//! received (ids it saw, `initialize`s, cancellations) rather than trust the daemon's word.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, SseStream, TempClients, call_tool, child_pid, initialize,
    logged_fake_child_spec, mcp_request, messages, parse_sse, wait_no_process_with_marker,
};

/// Upper bound for a fake-child `wait`: the state it waits for is one HTTP hop away.
const FIXTURE_WAIT_MS: u64 = 15_000;
/// Bound for HTTP calls that include a fixture `wait` (longer than the wait itself).
const WAIT_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A daemon serving one tenant, `mux`, backed by a logged fake child.
async fn fake_tenant(log: &ChildLog, daemon_args: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("mux", &logged_fake_child_spec(log, &[]));
    let daemon = Daemon::start(&clients, daemon_args).await;
    (clients, daemon)
}

/// POSTs `body` exactly as given (no re-serialization) to tenant `mux` in `session`.
async fn post_raw(daemon: &Daemon, session: &str, body: &str) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, Some("mux"), Some(session))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

/// The exact text of each JSON-RPC message in a 200 response (JSON body or SSE events).
async fn raw_messages(resp: reqwest::Response) -> Vec<String> {
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = timeout(HTTP_TIMEOUT, resp.text())
        .await
        .expect("a POST response body must complete")
        .expect("response body must be readable text");
    assert_eq!(
        status, 200,
        "a request in a live session must get 200: {body}"
    );
    if ctype.starts_with("text/event-stream") {
        let events = parse_sse(&body).into_iter().filter(|e| !e.data.is_empty());
        return events.map(|e| e.data).collect();
    }
    assert!(
        ctype.starts_with("application/json"),
        "unexpected content type {ctype:?}: {body}"
    );
    vec![body]
}

/// The bytes of the top-level `id` of `message`, exactly as written.
fn raw_id(message: &str) -> String {
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_str(message)
        .unwrap_or_else(|e| panic!("a message must be a JSON object ({e}): {message}"));
    let id = fields.get("id");
    let id = id.unwrap_or_else(|| panic!("a response must carry an id: {message}"));
    id.get().to_owned()
}

/// The final response among raw messages: the one with `result` or `error`.
fn final_response(raw: &[String]) -> (String, Value) {
    raw.iter()
        .map(|m| (m.clone(), serde_json::from_str::<Value>(m).unwrap()))
        .find(|(_, v)| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no final response among {raw:#?}"))
}

/// Calls the fake child's `wait` tool and returns its result (`in_flight`, `cancelled`).
async fn fixture_wait(daemon: &Daemon, session: &str, args: Value, contract: &str) -> Value {
    let mut args = args;
    args["ms"] = json!(FIXTURE_WAIT_MS);
    let called = timeout(
        WAIT_CALL_TIMEOUT,
        call_tool(daemon, "mux", session, "wait", args),
    )
    .await
    .unwrap_or_else(|_| panic!("{contract} (the fixture's wait call did not return)"));
    called["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_ids_from_concurrent_sessions_each_get_their_own_result_with_the_id_as_sent() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_tenant(&log, &[]).await;
    let sessions = join_all((0..4).map(|_| initialize(&daemon, "mux"))).await;

    // 64 calls, all with id 1: session n % 4, number or string by (n / 4) % 2, so every
    // session has both kinds in flight at once. Each call carries its own argument `n`.
    // (Reusing an id within a session breaks an MCP rule; mcpmux must stay correct anyway,
    // since each POST has its own answer.)
    let calls = (0..64u64).map(|n| {
        let session = &sessions[(n % 4) as usize];
        let id = if (n / 4) % 2 == 0 { "1" } else { "\"1\"" };
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"n":{n}}}}}}}"#
        );
        let daemon = &daemon;
        async move {
            let raw = raw_messages(post_raw(daemon, session, &body).await).await;
            (n, id, final_response(&raw))
        }
    });
    let answers = timeout(Duration::from_secs(60), join_all(calls))
        .await
        .expect("64 concurrent echo calls must all be answered");

    let mut seen_by_child = BTreeSet::new();
    for (n, sent_id, (raw, response)) in answers {
        assert_eq!(
            raw_id(&raw),
            sent_id,
            "call {n}: the id must come back exactly as sent: {raw}"
        );
        assert_eq!(
            response["result"]["echo"]["arguments"]["n"], n,
            "call {n} must get its own result, not another caller's: {raw}"
        );
        let child_id = response["result"]["id_seen"].as_u64();
        let child_id = child_id.unwrap_or_else(|| panic!("child ids are numbers: {raw}"));
        assert!(
            seen_by_child.insert(child_id),
            "call {n}: child-side id {child_id} was used twice"
        );
    }
    assert_eq!(seen_by_child.len(), 64);

    let logged: BTreeSet<u64> = log
        .tool_calls("echo")
        .iter()
        .map(|m| m["id"].as_u64().expect("the child must see numeric ids"))
        .collect();
    assert_eq!(
        logged, seen_by_child,
        "the child must have received 64 calls, each under its own id"
    );
}

#[tokio::test]
async fn vendor_fields_and_unknown_top_level_fields_reach_the_child_byte_for_byte() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_tenant(&log, &[]).await;
    let session = initialize(&daemon, "mux").await;

    // Odd spacing, an escape, a non-canonical number and an unknown top-level field: none of
    // it may be normalised on the way to the child.
    let params = r#"{"name":"echo", "arguments":{"text":"h\u00e9llo","n":1.50},"x-vendor":{"nested":[1,"two"]},"_meta":{"x-vendor":{"nested":[1,"two"]}}}"#;
    let body = format!(
        r#"{{"jsonrpc":"2.0","x-top":{{"keep":[true,null]}},"id":"vendor-1","method":"tools/call","params":{params}}}"#
    );
    let raw = raw_messages(post_raw(&daemon, &session, &body).await).await;
    let (raw, response) = final_response(&raw);

    assert_eq!(raw_id(&raw), r#""vendor-1""#, "{raw}");
    let sent: Value = serde_json::from_str(params).unwrap();
    assert_eq!(
        response["result"]["echo"], sent,
        "the child must see the params, vendor fields and `_meta` included: {raw}"
    );
    let child_id = response["result"]["id_seen"].as_u64().expect("numeric id");
    let want = body.replace(r#""id":"vendor-1""#, &format!(r#""id":{child_id}"#));
    let got = log
        .lines()
        .into_iter()
        .find(|l| l.contains("vendor-1") || l.contains("x-top"));
    assert_eq!(
        got.as_deref(),
        Some(want.as_str()),
        "the child must receive the request byte for byte, only its id rewritten"
    );

    let after = call_tool(&daemon, "mux", &session, "echo", json!({"after": true})).await;
    assert_eq!(
        after["result"]["echo"]["arguments"]["after"], true,
        "the session must keep working after a request with unknown fields: {after:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_sharing_a_progress_token_each_get_only_their_own_progress() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_tenant(&log, &[]).await;
    let (a, b) = tokio::join!(initialize(&daemon, "mux"), initialize(&daemon, "mux"));

    // Same request id, same token; the step counts tell the two streams apart.
    let slow = |session: &str, steps: u64| {
        let body = json!({
            "jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {
                "name": "slow",
                "arguments": {"ms": 600, "steps": steps},
                "_meta": {"progressToken": "tok"}
            }
        });
        let (daemon, session) = (&daemon, session.to_owned());
        async move { messages(daemon.post(Some("mux"), Some(&session), &body).await).await }
    };
    let (got_a, got_b) = timeout(Duration::from_secs(30), async {
        tokio::join!(slow(&a, 3), slow(&b, 6))
    })
    .await
    .expect("both slow calls must finish");

    for (name, got, steps) in [("a", got_a, 3u64), ("b", got_b, 6)] {
        let progress: Vec<&Value> = got
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        let values: Vec<u64> = progress
            .iter()
            .map(|m| m["params"]["progress"].as_u64().unwrap())
            .collect();
        assert_eq!(
            values,
            (1..=steps).collect::<Vec<_>>(),
            "session {name} must get exactly its own {steps} progress notifications: {got:#?}"
        );
        for m in &progress {
            assert_eq!(m["params"]["progressToken"], "tok", "token restored: {m}");
            assert_eq!(
                m["params"]["total"], steps,
                "session {name}'s own total: {m}"
            );
        }
        let last = got.last().expect("a final response");
        assert_eq!(last["id"], 5, "the response comes last, id restored");
        assert_eq!(last["result"]["content"][0]["text"], "done after 600 ms");
    }

    let tokens: BTreeSet<String> = log
        .tool_calls("slow")
        .iter()
        .map(|m| m["params"]["_meta"]["progressToken"].to_string())
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "the child must see two distinct tokens: {tokens:?}"
    );
    assert!(
        !tokens.contains(r#""tok""#),
        "the caller's token must not reach the child: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simultaneous_first_initializes_spawn_and_initialize_one_child() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_tenant(&log, &[]).await;

    let first = timeout(
        Duration::from_secs(60),
        join_all((0..50).map(|_| initialize(&daemon, "mux"))),
    )
    .await
    .expect("50 simultaneous initializes must all be answered");
    let distinct: BTreeSet<&String> = first.iter().collect();
    assert_eq!(distinct.len(), 50, "every session gets its own id");
    let mut later = Vec::new();
    for _ in 0..10 {
        later.push(initialize(&daemon, "mux").await);
    }

    assert_eq!(
        log.with_method("initialize").len(),
        1,
        "the child must receive initialize exactly once for 60 sessions"
    );
    assert_eq!(
        log.with_method("notifications/initialized").len(),
        1,
        "later sessions' notifications/initialized must not reach the child"
    );
    let pids = join_all(
        first
            .iter()
            .chain(&later)
            .map(|s| child_pid(&daemon, "mux", s)),
    )
    .await;
    let pids: BTreeSet<u32> = pids.into_iter().collect();
    assert_eq!(pids.len(), 1, "all sessions must share one child: {pids:?}");

    daemon
        .wait_for_log("child started", HTTP_TIMEOUT)
        .await
        .expect("the daemon must log the child's start");
    let started = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("child started"))
        .count();
    assert_eq!(started, 1, "the daemon must have started one child");
}

/// Starts `slow` (60 s) in one session (streaming progress, or silent until its answer),
/// learns its child-side id from the fixture, drops the caller's connection, and returns the
/// child-side id, the `requestId`s of the cancellations the child received, and its log.
async fn cancelled_after_disconnect(with_progress: bool) -> (u64, Vec<Value>, ChildLog) {
    let log = ChildLog::new();
    let (_clients, mut daemon) = fake_tenant(&log, &["--stop-grace", "0.5"]).await;
    let (caller, observer) = tokio::join!(initialize(&daemon, "mux"), initialize(&daemon, "mux"));

    let mut params = json!({"name": "slow", "arguments": {"ms": 60_000, "steps": 600}});
    if with_progress {
        params["_meta"] = json!({"progressToken": "p"});
    }
    let body = json!({"jsonrpc": "2.0", "id": "gone-1", "method": "tools/call", "params": params});
    let send = mcp_request(&daemon, reqwest::Method::POST, Some("mux"), Some(&caller))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send();
    // The POST runs in its own task, so aborting the task drops the connection mid-request.
    let in_flight = tokio::spawn(async move {
        let resp = send.await.expect("the slow call must be accepted");
        let mut stream = SseStream::new(resp);
        let first = stream
            .next_message(HTTP_TIMEOUT, "progress must stream while slow runs")
            .await;
        assert_eq!(first["method"], "notifications/progress", "{first}");
        std::future::pending::<()>().await; // hold the stream open until aborted
    });

    let state = fixture_wait(
        &daemon,
        &observer,
        json!({"slow": 1}),
        "the slow call must reach the child",
    )
    .await;
    let child_id = state["in_flight"][0].as_u64();
    let child_id = child_id.unwrap_or_else(|| panic!("one slow call in flight: {state}"));

    in_flight.abort();
    let ended = in_flight.await;
    assert!(
        ended.as_ref().is_err_and(|e| e.is_cancelled()),
        "the caller task must have been waiting, not failed: {ended:?}"
    );

    let state = fixture_wait(
        &daemon,
        &observer,
        json!({"cancelled": 1}),
        "a caller that disconnects mid-request must cause notifications/cancelled",
    )
    .await;
    let cancelled = state["cancelled"].as_array().cloned().unwrap_or_default();

    // Stop everything, so the child's log is complete before it is counted.
    let status = daemon.stop().await;
    assert!(status.success(), "SIGTERM must drain and exit 0: {status}");
    wait_no_process_with_marker(log.marker(), HTTP_TIMEOUT)
        .await
        .expect("the child must be gone after the daemon stopped");
    (child_id, cancelled, log)
}

fn assert_one_cancellation(child_id: u64, cancelled: &[Value], log: &ChildLog) {
    assert_eq!(
        cancelled,
        [json!(child_id)],
        "the child must be told to cancel its own id for the call (not the caller's `gone-1`)"
    );
    let notes = log.with_method("notifications/cancelled");
    assert_eq!(
        notes.len(),
        1,
        "exactly one cancellation must reach the child: {notes:#?}"
    );
    assert_eq!(notes[0]["params"]["requestId"], child_id, "{notes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_disconnecting_mid_stream_cancels_its_request_at_the_child_once() {
    let (child_id, cancelled, log) = cancelled_after_disconnect(true).await;
    assert_one_cancellation(child_id, &cancelled, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_disconnecting_before_any_answer_cancels_its_request_at_the_child_once() {
    let (child_id, cancelled, log) = cancelled_after_disconnect(false).await;
    assert_one_cancellation(child_id, &cancelled, &log);
}

#[tokio::test]
async fn pretty_printed_request_reaches_the_child_as_one_message() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_tenant(&log, &[]).await;
    let session = initialize(&daemon, "mux").await;
    // Line breaks are JSON whitespace. The array element alone on its line is a complete
    // JSON-RPC request: it must stay part of the echo call, never reach the child by itself.
    let smuggled = r#"{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"pid"}}"#;
    let body = format!(
        "{{\r\n  \"jsonrpc\": \"2.0\",\n  \"id\": 3,\n  \"method\": \"tools/call\",\n  \
         \"params\": {{\n    \"name\": \"echo\",\n    \"arguments\": {{\"list\": [\n{smuggled}\n]}}\n  }}\n}}\n"
    );
    let called = timeout(HTTP_TIMEOUT, async {
        raw_messages(post_raw(&daemon, &session, &body).await).await
    })
    .await
    .expect("a pretty-printed request must be answered, not left to time out");
    let (raw, response) = final_response(&called);
    assert_eq!(raw_id(&raw), "3");
    let want: Value = serde_json::from_str(smuggled).unwrap();
    assert_eq!(
        response["result"]["echo"]["arguments"]["list"],
        json!([want]),
        "{raw}"
    );
    assert_eq!(
        log.tool_calls("pid"),
        Vec::<Value>::new(),
        "no part of a request body may reach the child as a message of its own"
    );
}
