//! Hostile input on each path: stray answers and cancellations from callers, junk lines,
//! stray responses and floods from the child, and child requests no session can take. Each is
//! answered or dropped as the spec says, and no other session notices.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use super::{
    ASK_MS, answer, ask_call, ask_outcome, barrier, fake_daemon, fixture_wait, open_call, sampled,
    sampling_params, session_with, tenant_status,
};
use crate::util::{
    ACCEPT_BOTH, ChildLog, Daemon, HTTP_TIMEOUT, SseStream, call_tool, initialize, mcp_request,
    messages, parse_sse, post,
};

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn caller_responses_to_ids_never_issued_are_accepted_and_dropped() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let session = session_with(&daemon, json!({"sampling": {}})).await;

    for id in [
        json!(999),
        json!("never-issued"),
        json!(1),
        json!(0),
        json!(-4),
    ] {
        answer(&daemon, &session, &sampled(&id, "stray answer")).await;
        let error = json!({"jsonrpc": "2.0", "id": id,
                           "error": {"code": -1, "message": "stray error"}});
        answer(&daemon, &session, &error).await;
    }
    let null_error = json!({"jsonrpc": "2.0", "id": null,
                            "error": {"code": -32700, "message": "stray error"}});
    answer(&daemon, &session, &null_error).await;
    for (case, bad) in [
        (
            "float id",
            json!({"jsonrpc": "2.0", "id": 1.5, "result": {}}),
        ),
        (
            "object id",
            json!({"jsonrpc": "2.0", "id": {"n": 1}, "result": {}}),
        ),
        (
            "boolean id",
            json!({"jsonrpc": "2.0", "id": true, "result": {}}),
        ),
        ("no jsonrpc", json!({"id": 999, "result": {}})),
    ] {
        let resp = post(&daemon, Some("mux"), Some(&session), &bad).await;
        assert_eq!(
            resp.status(),
            400,
            "{case}: {bad} is not a JSON-RPC response"
        );
    }

    barrier(&daemon, &session).await;
    let leaked: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("stray"))
        .collect();
    assert!(
        leaked.is_empty(),
        "answers to requests never issued must not reach the child: {leaked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_from_another_session_is_dropped_and_the_asked_session_still_answers_once() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let a = session_with(&daemon, json!({"sampling": {}})).await;
    let b = session_with(&daemon, json!({"sampling": {}})).await;

    // Only `a` has a call in flight (and nobody a GET stream): the request goes to `a`.
    let body = ask_call(
        1,
        json!({"method": "sampling/createMessage", "params": sampling_params("for a"), "ms": ASK_MS}),
    );
    let mut stream = open_call(&daemon, &a, &body).await;
    let mut request = Value::Null;
    while request.is_null() {
        let message = stream
            .next_message(HTTP_TIMEOUT, "the sampling request must reach session a")
            .await;
        if message["method"] == "sampling/createMessage" {
            request = message;
        }
    }
    let id = request["id"].clone();
    answer(&daemon, &b, &sampled(&id, "hijacked by b")).await;
    answer(
        &daemon,
        &b,
        &sampled(&json!(id.to_string()), "hijacked by b as a string"),
    )
    .await;
    answer(&daemon, &a, &sampled(&id, "a answers")).await;
    answer(&daemon, &a, &sampled(&id, "a answers twice")).await;

    let mut last = Value::Null;
    while last.is_null() {
        let message = stream
            .next_message(HTTP_TIMEOUT, "the answered call must finish")
            .await;
        if message.get("result").is_some() && message.get("method").is_none() {
            last = message;
        }
    }
    let outcome = ask_outcome(&last["result"]);
    assert_eq!(
        outcome["answer"]["result"]["content"]["text"], "a answers",
        "the asked session's answer must reach the child: {outcome:#}"
    );
    barrier(&daemon, &b).await;
    let answers: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains(r#""id":"ask-1""#))
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "the child must get exactly one answer, the asked session's first: {answers:#?}"
    );
    assert!(answers[0].contains("a answers"), "{answers:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_for_unknown_or_foreign_ids_are_dropped_without_reaching_the_child() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let (a, b) = (
        initialize(&daemon, "mux").await,
        initialize(&daemon, "mux").await,
    );

    let slow = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {"ms": 1500, "steps": 5},
                                 "_meta": {"progressToken": "p"}}});
    let mut stream = open_call(&daemon, &a, &slow).await;
    stream
        .next_message(HTTP_TIMEOUT, "the slow call must report progress")
        .await;
    let cancel = |params: Value| json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params});
    let cases = [
        (&b, cancel(json!({"requestId": 5}))),   // a's request, from b
        (&a, cancel(json!({"requestId": 6}))),   // never sent
        (&a, cancel(json!({"requestId": "5"}))), // a string is another id than 5
        (&a, cancel(json!({"requestId": {"id": 5}}))),
        (&a, cancel(json!({"requestId": null}))),
        (&a, cancel(json!({"reason": "no id"}))),
        (
            &a,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled"}),
        ),
    ];
    for (session, note) in &cases {
        let resp = post(&daemon, Some("mux"), Some(session), note).await;
        assert_eq!(resp.status(), 202, "a notification is accepted: {note}");
    }

    barrier(&daemon, &b).await;
    let seen = log.with_method("notifications/cancelled");
    assert!(
        seen.is_empty(),
        "no cancellation may reach the child for an id the sender never had in flight: {seen:#?}"
    );
    let mut last = Value::Null;
    while last.is_null() {
        let message = stream
            .next_message(HTTP_TIMEOUT, "the slow call must still finish")
            .await;
        if message.get("result").is_some() {
            last = message;
        }
    }
    assert_eq!(
        last["result"]["content"][0]["text"], "done after 1500 ms",
        "{last:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancellation_reaches_the_child_once_and_ends_the_cancelled_request() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let (a, b) = (
        initialize(&daemon, "mux").await,
        initialize(&daemon, "mux").await,
    );
    let slow = |id: u64, meta: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "slow", "arguments": {"ms": 60000, "steps": 600}, "_meta": meta}})
    };

    // Call 5 is already streaming progress; call 6 (no progress asked) has no reply yet.
    let mut streaming = open_call(&daemon, &a, &slow(5, json!({"progressToken": "p"}))).await;
    streaming
        .next_message(HTTP_TIMEOUT, "the slow call must report progress")
        .await;
    let waiting = mcp_request(&daemon, reqwest::Method::POST, Some("mux"), Some(&a))
        .header("Content-Type", "application/json")
        .body(slow(6, json!({})).to_string());
    let waiting = tokio::spawn(waiting.send()); // ends with the reply, bounded by HTTP_TIMEOUT
    let waited = fixture_wait(
        &daemon,
        &b,
        json!({"slow": 2}),
        "both slow calls must reach the child",
    )
    .await;
    assert_eq!(
        waited["in_flight"].as_array().unwrap().len(),
        2,
        "{waited:#}"
    );
    for id in [5, 6] {
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": id, "reason": "test cancels"}});
        let resp = post(&daemon, Some("mux"), Some(&a), &cancel).await;
        assert_eq!(resp.status(), 202, "a cancellation is a notification: 202");
    }

    // Nothing will ever answer a cancelled request, so each reply must end without a response
    // (the streaming one may still carry progress sent before the cancellation).
    loop {
        let contract = "the cancelled request's reply stream must end";
        let Some(event) = streaming.next_event(HTTP_TIMEOUT, contract).await else {
            break;
        };
        if !event.data.is_empty() {
            let message: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(
                message["method"], "notifications/progress",
                "a cancelled request gets no response: {message}"
            );
        }
    }
    let waiting = timeout(HTTP_TIMEOUT, waiting)
        .await
        .expect("a request cancelled before its first message must still be answered at once")
        .unwrap()
        .expect("daemon must answer the POST");
    assert_eq!(
        messages(waiting).await,
        Vec::<Value>::new(),
        "a request cancelled before any message gets a reply with no message in it"
    );

    let waited = fixture_wait(
        &daemon,
        &b,
        json!({"cancelled": 2}),
        "both cancellations must reach the child",
    )
    .await;
    let calls = log.tool_calls("slow");
    let mut want: Vec<Value> = calls.iter().map(|c| c["id"].clone()).collect();
    let mut got = waited["cancelled"].as_array().unwrap().clone();
    want.sort_by_key(Value::to_string);
    got.sort_by_key(Value::to_string);
    assert_eq!(
        got, want,
        "the child must get one cancellation per call, under its own id for it"
    );
    assert_eq!(
        tenant_status(&daemon, "mux").await["inflight"],
        0,
        "cancelled requests must no longer count as in flight"
    );
}

// ---------------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------------

/// Notifications in a flood: about 18 MB, more than loopback socket buffers hold, so a caller
/// that does not read backs its reply up into mcpmux.
const FLOOD: u64 = 200_000;
/// Bound for reading a whole flood back (a debug build on a loaded 2-core machine).
const FLOOD_READ: Duration = Duration::from_secs(90);

/// An HTTP client whose requests have no overall deadline (the shared one allows
/// `HTTP_TIMEOUT` for everything, body included): waits around a flood are bounded by
/// `FLOOD_READ` instead.
fn patient_http() -> reqwest::Client {
    let builder = reqwest::Client::builder().connect_timeout(HTTP_TIMEOUT);
    builder.build().unwrap()
}

/// POSTs `body` in `session` with [`patient_http`]; returns once the reply's head is in.
async fn post_patiently(daemon: &Daemon, session: &str, body: &Value) -> reqwest::Response {
    let send = patient_http()
        .post(daemon.url())
        .header("X-Client-ID", "mux")
        .header("Mcp-Session-Id", session)
        .header("Accept", ACCEPT_BOTH)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send();
    timeout(FLOOD_READ, send)
        .await
        .expect("a call around a flood must get its reply's head")
        .unwrap()
}

/// Waits until the fixture has written a whole flood (its `wait` tool, bounded by
/// `FLOOD_READ`: a flood takes a while on a loaded machine).
async fn wait_for_flood(daemon: &Daemon, session: &str) {
    let ms = FLOOD_READ.as_millis() as u64;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "wait", "arguments": {"floods": 1, "ms": ms}}});
    let got = messages(post_patiently(daemon, session, &body).await).await;
    assert_eq!(
        got[0]["result"]["floods"], 1,
        "the child must finish its flood within {FLOOD_READ:?}: {got:#?}"
    );
}

/// Resident set size of `pid`, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_flood_keeps_memory_bounded_and_the_caller_still_gets_its_result() {
    const COUNT: u64 = FLOOD;
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let (a, b) = (
        initialize(&daemon, "mux").await,
        initialize(&daemon, "mux").await,
    );
    barrier(&daemon, &b).await; // the child runs; its start is not part of the measurement
    let before = rss_kib(daemon.pid());

    // `a` asks for the flood and reads nothing until the child has written all of it.
    let flood = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "progress_flood", "arguments": {"count": COUNT},
                                  "_meta": {"progressToken": "flood"}}});
    let resp = post_patiently(&daemon, &a, &flood).await;
    wait_for_flood(&daemon, &b).await;
    // `b`'s answer was written after the whole flood, so mcpmux has read all of it by now.
    let grown = rss_kib(daemon.pid()).saturating_sub(before);
    let flood_kib = COUNT * 90 / 1024; // each notification is about 90 bytes
    assert!(
        grown < flood_kib / 2,
        "a caller that does not read must not make mcpmux keep a flood of {flood_kib} KiB: \
         it grew by {grown} KiB"
    );
    barrier(&daemon, &b).await;

    let body = timeout(FLOOD_READ, resp.text())
        .await
        .expect("the flooded reply must be readable to its end")
        .unwrap();
    let events = parse_sse(&body).into_iter().filter(|e| !e.data.is_empty());
    let got: Vec<Value> = events
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let last = got.last().unwrap();
    assert_eq!(
        (&last["id"], &last["result"]["content"][0]["text"]),
        (&json!(9), &json!(format!("flooded {COUNT}"))),
        "the flooded caller must still get its result, last"
    );
    let progress: Vec<u64> = got
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(m["params"]["progressToken"], "flood", "token restored: {m}");
            m["params"]["progress"].as_u64().unwrap()
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "what is kept of a flood stays in order ({} of {COUNT} kept)",
        progress.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_request_on_a_reply_backed_up_by_a_flood_waits_for_room_and_is_not_lost() {
    const COUNT: u64 = FLOOD;
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let a = session_with(&daemon, json!({"sampling": {}})).await;
    let b = initialize(&daemon, "mux").await;

    // `a`'s flood call stays in flight with its reply backed up: `a` reads nothing yet.
    let flood = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "progress_flood",
                                  "arguments": {"count": COUNT, "hold_ms": ASK_MS},
                                  "_meta": {"progressToken": "flood"}}});
    let mut flooded = SseStream::new(post_patiently(&daemon, &a, &flood).await);
    wait_for_flood(&daemon, &b).await;
    // `a` asks on a JSON-only reply, so the one reply that can carry the child's request is the
    // backed-up one.
    let ask = ask_call(
        2,
        json!({"method": "sampling/createMessage", "params": sampling_params("behind"),
               "ms": ASK_MS}),
    );
    let json_only = patient_http()
        .post(daemon.url())
        .header("X-Client-ID", "mux")
        .header("Mcp-Session-Id", &a)
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(ask.to_string());
    let pending = tokio::spawn(json_only.send()); // awaited below, bounded there

    let contract = "the child's request must come after the flood, not be dropped with it";
    let request = timeout(FLOOD_READ, async {
        loop {
            let event = flooded.next_event(FLOOD_READ, contract).await;
            let event = event.unwrap_or_else(|| panic!("stream ended: {contract}"));
            if event.data.contains("sampling/createMessage") {
                return serde_json::from_str::<Value>(&event.data).unwrap();
            }
        }
    })
    .await
    .expect(contract);
    answer(&daemon, &a, &sampled(&request["id"], "found it")).await;
    let resp = timeout(HTTP_TIMEOUT, pending)
        .await
        .expect("the asking call must be answered once its request is")
        .unwrap()
        .unwrap();
    let outcome = ask_outcome(&messages(resp).await[0]["result"]);
    assert_eq!(
        outcome["answer"]["result"]["content"]["text"], "found it",
        "{outcome:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_junk_lines_and_stray_responses_are_dropped_and_logged_and_others_unaffected() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[("RUST_LOG", "info,mcpmux::mcp=debug")]).await;
    let (a, b) = (
        initialize(&daemon, "mux").await,
        initialize(&daemon, "mux").await,
    );
    let get = mcp_request(&daemon, reqwest::Method::GET, Some("mux"), Some(&b));
    let mut b_stream = SseStream::new(get.send().await.unwrap());
    // `b` has a call in flight through the junk.
    let slow = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {"ms": 1000, "steps": 2}}});
    let b_slow = post(&daemon, Some("mux"), Some(&b), &slow);
    let mark = daemon.log_mark();

    let junk = async {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "garbage", "arguments": {}}});
        messages(post(&daemon, Some("mux"), Some(&a), &body).await).await
    };
    let (junk, b_slow) = tokio::join!(junk, async { messages(b_slow.await).await });

    assert_eq!(
        junk.len(),
        1,
        "the junk caller gets only its own response: {junk:#?}"
    );
    assert_eq!(junk[0]["result"]["content"][0]["text"], "garbage sent");
    assert_eq!(
        b_slow.last().unwrap()["result"]["content"][0]["text"],
        "done after 1000 ms",
        "another session's call must finish untouched: {b_slow:#?}"
    );
    // Nothing of the junk reaches b's stream: the next broadcast is the first thing it sees.
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "notify", "arguments": {"marker": "after junk"}}});
    messages(post(&daemon, Some("mux"), Some(&a), &body).await).await;
    let first = b_stream
        .next_message(HTTP_TIMEOUT, "b's stream must get the later broadcast")
        .await;
    assert_eq!(
        first["params"]["_meta"]["marker"], "after junk",
        "no junk line may reach another session's stream: {first}"
    );

    let count = |needle: &str| {
        let logs = daemon.logs();
        logs[mark..].iter().filter(|l| l.contains(needle)).count()
    };
    assert_eq!(
        count("child wrote an invalid message; dropped"),
        7,
        "each line that is not a JSON-RPC message is dropped with a warning"
    );
    assert_eq!(count("child sent an error without id"), 1);
    assert_eq!(
        count("response for no pending request; dropped"),
        2,
        "responses with unknown ids are dropped and logged"
    );
}

/// How soon a child request no session can take must be refused (the fixture's `ask` would
/// wait `ASK_MS` for an answer that never comes).
const AT_ONCE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_request_no_session_can_take_is_answered_with_an_error_at_once() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let plain = initialize(&daemon, "mux").await;
    // Capable, but with neither a call in flight nor a GET stream: it cannot be asked.
    let _idle = session_with(
        &daemon,
        json!({"sampling": {}, "elicitation": {}, "roots": {}}),
    )
    .await;

    let methods = ["sampling/createMessage", "elicitation/create", "roots/list"];
    for (n, method) in methods.iter().enumerate() {
        let ask = json!({"method": method, "ms": ASK_MS});
        let called = timeout(AT_ONCE, call_tool(&daemon, "mux", &plain, "ask", ask))
            .await
            .unwrap_or_else(|_| {
                panic!("the child's {method} must be refused at once, not left waiting")
            });
        let outcome = ask_outcome(&called["result"]);
        let asked_id = format!("ask-{}", n + 1);
        assert_eq!(
            outcome["answer"]["id"], asked_id,
            "the error must answer the child's own id: {outcome:#}"
        );
        assert_eq!(outcome["answer"]["error"]["code"], -32601, "{outcome:#}");
        let message = outcome["answer"]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains(method),
            "the error must name the method: {message}"
        );
        let in_log = log
            .lines()
            .into_iter()
            .filter(|l| l.contains(&format!(r#""id":"{asked_id}""#)))
            .count();
        assert_eq!(in_log, 1, "the child's log must show the error reply once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_request_is_never_offered_on_a_reply_that_can_only_be_json() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let session = session_with(&daemon, json!({"sampling": {}})).await;
    let ask = ask_call(
        1,
        json!({"method": "sampling/createMessage", "params": sampling_params("json"), "ms": ASK_MS}),
    );
    // A caller that accepts only JSON: its reply cannot carry anything before the response.
    let json_only = daemon
        .http()
        .post(daemon.url())
        .header("X-Client-ID", "mux")
        .header("Mcp-Session-Id", &session)
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(ask.to_string());

    // With no GET stream either, nobody can be asked: the child gets an error at once.
    let resp = timeout(AT_ONCE, json_only.try_clone().unwrap().send())
        .await
        .expect("the child's request must be refused at once, not lost on a JSON reply")
        .unwrap();
    let got = messages(resp).await;
    let answer_got = &ask_outcome(&got[0]["result"])["answer"];
    assert_eq!(answer_got["error"]["code"], -32601, "{got:#?}");

    // With a GET stream, the request goes there, and the answer back to the child.
    let get = mcp_request(&daemon, reqwest::Method::GET, Some("mux"), Some(&session));
    let mut stream = SseStream::new(get.send().await.unwrap());
    let pending = tokio::spawn(json_only.send()); // bounded by HTTP_TIMEOUT
    let request = stream
        .next_message(HTTP_TIMEOUT, "the request must come on the GET stream")
        .await;
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    answer(
        &daemon,
        &session,
        &sampled(&request["id"], "on the GET stream"),
    )
    .await;
    let resp = pending
        .await
        .unwrap()
        .expect("the JSON call must be answered");
    let got = messages(resp).await;
    let outcome = ask_outcome(&got[0]["result"]);
    assert_eq!(
        outcome["answer"]["result"]["content"]["text"], "on the GET stream",
        "{outcome:#}"
    );
}
