//! `--sse-after` (DESIGN §3, README "Several nodes"): a request still unanswered after the
//! threshold is answered as SSE when its caller accepts it (headers and, in a session, the
//! priming event at once; the result as an event later), so a client behind a load balancer
//! holds the headers before its node can die mid-call. Calls answered in time stay JSON, a
//! JSON-only caller is never switched, and the switch does not extend `--request-timeout`.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use crate::stateless::Probe;
use crate::util::{
    Daemon, HTTP_TIMEOUT, SseEvent, SseParser, TempClients, assert_session_works, echo_spec,
    initialize, post, post_json_only,
};

fn clients() -> TempClients {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    clients
}

fn call(id: u64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}})
}

/// A response's content type, lower case.
fn content_type(resp: &reqwest::Response) -> String {
    let value = resp.headers().get("content-type");
    value
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Reads an SSE response's events as they come: the first one (its arrival time after `sent`
/// too), then every other one to the end of the body.
async fn read_events(resp: reqwest::Response, sent: Instant) -> (Duration, Vec<SseEvent>) {
    let mut resp = resp;
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut first_at = None;
    loop {
        let chunk = timeout(HTTP_TIMEOUT, resp.chunk())
            .await
            .expect("an SSE reply must end after its response")
            .expect("the SSE body must be readable");
        let Some(chunk) = chunk else { break };
        events.extend(parser.push(&chunk));
        if !events.is_empty() && first_at.is_none() {
            first_at = Some(sent.elapsed());
        }
    }
    events.extend(parser.push(b"\n\n"));
    (first_at.expect("the SSE reply must carry an event"), events)
}

/// The one JSON-RPC message among `events` (the others are priming events, without data).
fn only_message(events: &[SseEvent]) -> Value {
    let messages: Vec<Value> = events
        .iter()
        .filter(|e| !e.data.is_empty())
        .map(|e| serde_json::from_str(&e.data).expect("SSE data is one JSON message"))
        .collect();
    assert_eq!(messages.len(), 1, "one message, the response: {events:#?}");
    messages[0].clone()
}

#[tokio::test]
async fn a_call_silent_past_the_threshold_arrives_as_sse_and_a_prompt_one_as_json() {
    let clients = clients();
    let daemon = Daemon::start(&clients, &[]).await; // the default: 1 s
    let session = initialize(&daemon, "demo").await;

    // Answered at once: the JSON fast path.
    let resp = post(
        &daemon,
        Some("demo"),
        Some(&session),
        &call(1, "echo", json!({"message": "quick"})),
    )
    .await;
    assert_eq!(content_type(&resp), "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], 1);
    assert_eq!(body["result"]["content"][0]["text"], "quick", "{body:#}");

    // Silent for 2.5 s (no progress token, so no progress): SSE after 1 s, the result later.
    let sent = Instant::now();
    let resp = post(
        &daemon,
        Some("demo"),
        Some(&session),
        &call(2, "slow", json!({"ms": 2500})),
    )
    .await;
    let headers_at = sent.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(content_type(&resp), "text/event-stream");
    assert!(
        headers_at < Duration::from_millis(2500),
        "the headers must come before the result (after {headers_at:?})"
    );
    let (first_at, events) = read_events(resp, sent).await;
    assert!(
        events[0].data.is_empty() && events[0].id.is_some(),
        "a session's SSE reply opens with its priming event: {events:#?}"
    );
    assert!(
        first_at < Duration::from_millis(2500),
        "the priming event must come before the result (after {first_at:?})"
    );
    let reply = only_message(&events);
    assert_eq!(reply["id"], 2, "{reply:#}");
    assert_eq!(
        reply["result"]["content"][0]["text"], "done after 2500 ms",
        "{reply:#}"
    );

    // A caller that takes only JSON waits for JSON, however long.
    let slow = call(3, "slow", json!({"ms": 1500}));
    let resp = post_json_only(&daemon, "demo", Some(&session), &slow).await;
    assert_eq!(content_type(&resp), "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["result"]["content"][0]["text"], "done after 1500 ms",
        "{body:#}"
    );

    // The stateless era switches too, with its final-result fields.
    let probe = Probe::valid(
        json!(4),
        "tools/call",
        json!({"name": "slow", "arguments": {"ms": 1500}}),
    );
    let resp = probe.send(&daemon, "demo").await;
    assert_eq!(content_type(&resp), "text/event-stream");
    let (_, events) = read_events(resp, Instant::now()).await;
    let reply = only_message(&events);
    assert_eq!(reply["id"], 4, "{reply:#}");
    assert_eq!(reply["result"]["resultType"], "complete", "{reply:#}");
    assert_eq!(
        reply["result"]["content"][0]["text"], "done after 1500 ms",
        "{reply:#}"
    );
}

#[tokio::test]
async fn sse_after_zero_answers_every_sse_caller_with_sse_and_json_callers_with_json() {
    let clients = clients();
    let daemon = Daemon::start(&clients, &["--sse-after", "0"]).await;
    let session = initialize(&daemon, "demo").await;
    let resp = post(
        &daemon,
        Some("demo"),
        Some(&session),
        &call(1, "echo", json!({"message": "streamed"})),
    )
    .await;
    assert_eq!(content_type(&resp), "text/event-stream");
    let (_, events) = read_events(resp, Instant::now()).await;
    let reply = only_message(&events);
    assert_eq!(
        reply["result"]["content"][0]["text"], "streamed",
        "{reply:#}"
    );

    let echo = call(2, "echo", json!({"message": "plain"}));
    let resp = post_json_only(&daemon, "demo", Some(&session), &echo).await;
    assert_eq!(content_type(&resp), "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "plain", "{body:#}");
}

#[tokio::test]
async fn the_switch_to_sse_does_not_extend_the_request_timeout() {
    let clients = clients();
    // Were the timeout restarted at the switch, the call would end after 3 + 4 s, not 4 s.
    let flags = ["--sse-after", "3", "--request-timeout", "4"];
    let daemon = Daemon::start(&clients, &flags).await;
    let session = initialize(&daemon, "demo").await;
    let sent = Instant::now();
    let resp = post(
        &daemon,
        Some("demo"),
        Some(&session),
        &call(1, "slow", json!({"ms": 20000})),
    )
    .await;
    assert_eq!(content_type(&resp), "text/event-stream");
    let (_, events) = read_events(resp, sent).await;
    let took = sent.elapsed();
    let reply = only_message(&events);
    assert_eq!(reply["error"]["code"], -32001, "{reply:#}");
    assert_eq!(
        reply["error"]["message"], "request timed out after 4 s without progress",
        "{reply:#}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_millis(6500),
        "the request timeout runs from the request, across the switch: {took:?}"
    );
    assert_session_works(&daemon, "demo", &session, "after the timeout").await;
}
