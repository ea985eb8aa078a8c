//! Full MCP fidelity through the multiplexer (DESIGN §3): SSE streams and resumability,
//! notifications fanned out to the sessions concerned (each once, on one stream), resource
//! subscriptions reference-counted per tenant, logging levels per session.
//!
//! The child is the raw fixture `tests/fixtures/fake_child.py`: its `received` tool reports
//! what mcpmux really sent it (and waits for it, without polling), so the tests check the
//! child's side of every rule. Ordering is the synchronisation: the child writes in order and
//! each stream delivers in order, so a sentinel event sent last bounds "nothing else came".

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{
    Daemon, SseEvent, SseStream, TempClients, call_tool, fake_child_spec, initialize,
    initialize_params, initialize_with, mcp_request, messages, post,
};

const TENANT: &str = "streams";
/// Bound for one event on an open stream (the child sends it within milliseconds).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon serving one tenant backed by the fake child.
async fn fake_tenant(daemon_args: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write(TENANT, &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, daemon_args).await;
    (clients, daemon)
}

/// A session whose `initialize` declared `capabilities`.
async fn session_with(daemon: &Daemon, capabilities: Value) -> String {
    let mut params = initialize_params();
    params["capabilities"] = capabilities;
    initialize_with(daemon, TENANT, params).await.0
}

/// Opens a GET stream, resuming after `last_event_id` when given.
async fn get_stream(daemon: &Daemon, session: &str, last_event_id: Option<&str>) -> SseStream {
    SseStream::new(get_response(daemon, session, last_event_id).await)
}

async fn get_response(
    daemon: &Daemon,
    session: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut req = mcp_request(daemon, reqwest::Method::GET, Some(TENANT), Some(session));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.expect("daemon must answer a GET to /mcp")
}

/// POSTs a request whose answer streams (the child sends something before its response).
async fn post_stream(daemon: &Daemon, session: &str, body: Value) -> SseStream {
    SseStream::new(post(daemon, Some(TENANT), Some(session), &body).await)
}

fn tools_call(id: Value, name: &str, arguments: Value, token: Option<&str>) -> Value {
    let mut params = json!({"name": name, "arguments": arguments});
    if let Some(token) = token {
        params["_meta"] = json!({"progressToken": token});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// The next event that carries a message (priming events skipped), with its id.
async fn next_message(stream: &mut SseStream, contract: &str) -> (String, Value) {
    loop {
        let event = stream.next_event(EVENT_TIMEOUT, contract).await;
        let SseEvent { id, data, .. } = event.unwrap_or_else(|| panic!("stream ended: {contract}"));
        if !data.is_empty() {
            let id = id.unwrap_or_else(|| panic!("every event must carry an id: {data}"));
            return (
                id,
                serde_json::from_str(&data).expect("SSE data must be JSON"),
            );
        }
    }
}

/// Every message until the stream ends.
async fn rest_of(stream: &mut SseStream, contract: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(event) = stream.next_event(EVENT_TIMEOUT, contract).await {
        if !event.data.is_empty() {
            let id = event.id.unwrap_or_default();
            out.push((
                id,
                serde_json::from_str(&event.data).expect("SSE data must be JSON"),
            ));
        }
    }
    out
}

/// Messages up to and including the first one `is_last` accepts.
async fn messages_until(
    stream: &mut SseStream,
    is_last: impl Fn(&Value) -> bool,
    contract: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (_, message) = next_message(stream, contract).await;
        let last = is_last(&message);
        out.push(message);
        if last {
            return out;
        }
    }
}

/// A short label per notification: `method` plus the URI or level it is about.
fn label(message: &Value) -> String {
    let method = message["method"].as_str().unwrap_or("response");
    let params = &message["params"];
    match (params["uri"].as_str(), params["level"].as_str()) {
        (Some(uri), _) => format!("{method} {uri}"),
        (_, Some(level)) => format!("{method} {level}"),
        _ => method.to_owned(),
    }
}

fn labels(messages: &[Value]) -> Vec<String> {
    messages.iter().map(label).collect()
}

fn is_sentinel(message: &Value) -> bool {
    message["params"]["data"] == "emergency message"
}

/// Sends a log message of level `emergency`, which every session admits: the last event of
/// a sequence, after which nothing else may have been delivered.
async fn sentinel(daemon: &Daemon, session: &str) {
    let done = call_tool(
        daemon,
        TENANT,
        session,
        "log",
        json!({"levels": ["emergency"]}),
    )
    .await;
    assert!(done.get("result").is_some(), "log must succeed: {done}");
}

/// The params of every `method` message the current child has received, once at least
/// `count` have (the fixture waits for them; its reply bounds the wait).
async fn child_received(daemon: &Daemon, session: &str, method: &str, count: usize) -> Vec<Value> {
    let args = json!({"method": method, "count": count, "ms": 10_000});
    let reply = call_tool(daemon, TENANT, session, "received", args).await;
    let seen = reply["result"]["received"].as_array().cloned();
    seen.unwrap_or_else(|| panic!("received must list what the child got: {reply}"))
}

fn progress_values(events: &[(String, Value)]) -> Vec<u64> {
    let progress = events
        .iter()
        .filter(|(_, m)| m["method"] == "notifications/progress");
    progress
        .map(|(_, m)| m["params"]["progress"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_running_long_tools_each_stream_only_their_own_progress() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let (a, b) = tokio::join!(initialize(&daemon, TENANT), initialize(&daemon, TENANT));
    let (mut get_a, mut get_b) =
        tokio::join!(get_stream(&daemon, &a, None), get_stream(&daemon, &b, None));

    // Equal ids and equal tokens: only mcpmux's rewriting keeps them apart.
    let slow = |steps: u64| {
        tools_call(
            json!(7),
            "slow",
            json!({"ms": 600, "steps": steps}),
            Some("p"),
        )
    };
    let (mut reply_a, mut reply_b) = tokio::join!(
        post_stream(&daemon, &a, slow(3)),
        post_stream(&daemon, &b, slow(6))
    );
    let contract = "a streamed call must end after its final response";
    let (got_a, got_b) = tokio::join!(
        rest_of(&mut reply_a, contract),
        rest_of(&mut reply_b, contract)
    );
    assert_eq!(
        progress_values(&got_a),
        [1, 2, 3],
        "a sees its 3 steps only: {got_a:#?}"
    );
    assert_eq!(
        progress_values(&got_b),
        [1, 2, 3, 4, 5, 6],
        "b sees its 6 steps only: {got_b:#?}"
    );
    for (got, who) in [(&got_a, "a"), (&got_b, "b")] {
        let (_, last) = got.last().unwrap_or_else(|| panic!("{who} got nothing"));
        assert_eq!(
            last["id"], 7,
            "{who}'s final response comes last, id restored: {last}"
        );
        assert!(
            got.iter()
                .all(|(_, m)| m["params"]["progressToken"] == "p" || m.get("result").is_some())
        );
    }

    // A notification for everyone reaches each session once, on its GET stream; no
    // progress leaked there.
    let notified = call_tool(&daemon, TENANT, &a, "notify", json!({})).await;
    assert!(notified.get("result").is_some(), "{notified}");
    sentinel(&daemon, &a).await;
    let want = [
        "notifications/tools/list_changed",
        "notifications/message info",
        "notifications/message emergency",
    ];
    for (stream, who) in [(&mut get_a, "a"), (&mut get_b, "b")] {
        let contract = format!("{who}'s GET stream must carry the tenant's notifications");
        let got = messages_until(stream, is_sentinel, &contract).await;
        assert_eq!(
            labels(&got),
            want,
            "{who}: each notification once, nothing else"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_requests_during_concurrent_calls_reach_only_the_session_that_can_answer_them() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let (a, b) = tokio::join!(
        session_with(&daemon, json!({"sampling": {}})),
        session_with(&daemon, json!({"elicitation": {}}))
    );
    let ask = |method: &str| {
        tools_call(
            json!(1),
            "ask",
            json!({"method": method, "params": {"q": method}}),
            None,
        )
    };
    let (mut reply_a, mut reply_b) = tokio::join!(
        post_stream(&daemon, &a, ask("sampling/createMessage")),
        post_stream(&daemon, &b, ask("elicitation/create"))
    );
    for (stream, session, method) in [
        (&mut reply_a, &a, "sampling/createMessage"),
        (&mut reply_b, &b, "elicitation/create"),
    ] {
        let contract = format!("the child's {method} must arrive on the asking call's stream");
        let (_, request) = next_message(stream, &contract).await;
        assert_eq!(
            request["method"], method,
            "only this session's request: {request}"
        );
        let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {"from": session}});
        let resp = post(&daemon, Some(TENANT), Some(session), &answer).await;
        assert_eq!(resp.status(), 202, "the caller's answer must be accepted");
        let rest = rest_of(stream, "the call must end with its result").await;
        assert_eq!(
            rest.len(),
            1,
            "nothing but the final response follows: {rest:#?}"
        );
        let answer_seen = &rest[0].1["result"]["answer"];
        assert_eq!(
            answer_seen["result"]["from"],
            session.as_str(),
            "{answer_seen}"
        );
        assert!(
            answer_seen["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("ask-")),
            "child id restored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reply_stream_resumes_with_exactly_the_missed_events_and_nothing_else() {
    let (_clients, daemon) = fake_tenant(&["--resume-grace", "60"]).await;
    let session = initialize(&daemon, TENANT).await;
    let _get = get_stream(&daemon, &session, None).await; // events of another stream

    let call = tools_call(
        json!("r"),
        "slow",
        json!({"ms": 1200, "steps": 6}),
        Some("t"),
    );
    let mut reply = post_stream(&daemon, &session, call).await;
    let first = reply
        .next_event(EVENT_TIMEOUT, "a POST SSE reply must start")
        .await;
    let first = first.expect("the reply must not end before its priming event");
    assert_eq!(first.data, "", "the first event primes: an id, empty data");
    let primed = first.id.expect("the priming event must carry an id");
    let (seen, progress) = next_message(&mut reply, "progress must stream").await;
    assert_eq!(progress["params"]["progress"], 1, "{progress}");
    let stream_no = primed.split('-').next().unwrap_or_default().to_owned();
    assert_eq!(
        seen,
        format!("{stream_no}-1"),
        "ids are <stream>-<seq>, the priming seq 0"
    );
    drop(reply); // the connection breaks mid-way

    // Meanwhile the session's GET stream gets events; the resumed stream must not.
    call_tool(&daemon, TENANT, &session, "notify", json!({})).await;
    let mut resumed = get_stream(&daemon, &session, Some(&seen)).await;
    let rest = rest_of(
        &mut resumed,
        "a resumed reply must end after its final response",
    )
    .await;
    assert_eq!(
        progress_values(&rest),
        [2, 3, 4, 5, 6],
        "exactly the missed progress: {rest:#?}"
    );
    let (last_id, last) = rest.last().expect("the final response must be replayed");
    assert_eq!(
        (&last["id"], last_id),
        (&json!("r"), &format!("{stream_no}-7")),
        "{last}"
    );
    assert_eq!(rest.len(), 6, "nothing from other streams: {rest:#?}");
    let cancels = child_received(&daemon, &session, "notifications/cancelled", 0).await;
    assert!(
        cancels.is_empty(),
        "a disconnect within the grace is no cancellation: {cancels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_stream_resumes_after_its_last_event_and_a_fresh_one_gets_what_was_buffered() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let session = initialize(&daemon, TENANT).await;
    let log =
        |levels: Value| call_tool(&daemon, TENANT, &session, "log", json!({"levels": levels}));

    // Sent while no GET stream is open: buffered, delivered when one opens.
    log(json!(["debug"])).await;
    let mut get = get_stream(&daemon, &session, None).await;
    let (_, buffered) = next_message(&mut get, "a fresh GET must get what was buffered").await;
    assert_eq!(label(&buffered), "notifications/message debug");

    log(json!(["info", "notice"])).await;
    let (seen, info) = next_message(&mut get, "live notifications must follow").await;
    assert_eq!(label(&info), "notifications/message info");
    drop(get);
    log(json!(["warning"])).await;
    // A streamed call in between: its progress belongs to its own stream, not the GET one.
    let call = tools_call(json!(2), "slow", json!({"ms": 50, "steps": 2}), Some("x"));
    rest_of(
        &mut post_stream(&daemon, &session, call).await,
        "the call must finish",
    )
    .await;
    sentinel(&daemon, &session).await;

    let mut resumed = get_stream(&daemon, &session, Some(&seen)).await;
    let got = messages_until(&mut resumed, is_sentinel, "the GET stream must resume").await;
    let want = ["notice", "warning", "emergency"].map(|l| format!("notifications/message {l}"));
    assert_eq!(
        labels(&got),
        want,
        "exactly what followed {seen}, from the GET stream only"
    );
}

#[tokio::test]
async fn unresumable_last_event_ids_are_refused_with_400() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let session = initialize(&daemon, TENANT).await;
    for (id, why) in [
        ("garbage", "is not an event id issued by this server"),
        ("42-0", "names no stream or event of this session"),
        ("0-99", "names no stream or event of this session"),
    ] {
        let resp = get_response(&daemon, &session, Some(id)).await;
        assert_eq!(resp.status(), 400, "Last-Event-ID {id} must be refused");
        let body = messages(resp).await;
        let message = body[0]["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "Last-Event-ID {id}: {message}");
        assert!(
            message.contains("open the stream without it"),
            "the fix is named: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_updates_reach_only_subscribers_and_the_child_sees_one_subscribe_per_uri() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(initialize(&daemon, TENANT).await);
    }
    let [a, b, c] = [&sessions[0], &sessions[1], &sessions[2]];
    let mut gets = Vec::new();
    for s in &sessions {
        gets.push(get_stream(&daemon, s, None).await);
    }
    let subscribe = |s: &str, method: &str, uri: &str| {
        let (s, method, uri) = (s.to_owned(), method.to_owned(), uri.to_owned());
        let daemon = &daemon;
        async move {
            let reply = crate::util::rpc(daemon, TENANT, &s, &method, json!({"uri": uri})).await;
            assert_eq!(
                reply["result"],
                json!({}),
                "{method} {uri} must succeed: {reply}"
            );
        }
    };
    subscribe(a, "resources/subscribe", "file:///x").await;
    subscribe(b, "resources/subscribe", "file:///x").await;
    subscribe(b, "resources/subscribe", "file:///x").await; // twice from one session
    subscribe(c, "resources/subscribe", "file:///y").await;
    let seen = child_received(&daemon, a, "resources/subscribe", 0).await;
    assert_eq!(
        seen,
        [json!({"uri": "file:///x"}), json!({"uri": "file:///y"})],
        "one per URI"
    );

    for uri in ["file:///x", "file:///y", "file:///z"] {
        call_tool(&daemon, TENANT, a, "updated", json!({"uri": uri})).await;
    }
    sentinel(&daemon, a).await;
    let updated = |uri: &str| format!("notifications/resources/updated {uri}");
    let emergency = "notifications/message emergency".to_owned();
    let want = [
        vec![updated("file:///x"), emergency.clone()],
        vec![updated("file:///x"), emergency.clone()],
        vec![updated("file:///y"), emergency.clone()],
    ];
    for (n, get) in gets.iter_mut().enumerate() {
        let got = messages_until(get, is_sentinel, "updates must reach subscribers").await;
        assert_eq!(
            labels(&got),
            want[n],
            "session {n}: only its subscriptions, once"
        );
    }

    // The first of two subscribers leaving is answered locally; the last one's end (here a
    // DELETE) unsubscribes the child.
    subscribe(a, "resources/unsubscribe", "file:///x").await;
    let delete = mcp_request(&daemon, reqwest::Method::DELETE, Some(TENANT), Some(b));
    let deleted = delete.send().await.expect("daemon must answer DELETE");
    assert_eq!(deleted.status(), 204);
    let seen = child_received(&daemon, a, "resources/unsubscribe", 1).await;
    assert_eq!(
        seen,
        [json!({"uri": "file:///x"})],
        "one unsubscribe, after the last subscriber"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_unsubscribes_the_child() {
    let (_clients, daemon) = fake_tenant(&["--session-ttl", "1"]).await;
    let (leaving, staying) = tokio::join!(initialize(&daemon, TENANT), initialize(&daemon, TENANT));
    let _open = get_stream(&daemon, &staying, None).await; // an open stream keeps it alive
    let reply = crate::util::rpc(
        &daemon,
        TENANT,
        &leaving,
        "resources/subscribe",
        json!({"uri": "u"}),
    )
    .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let seen = child_received(&daemon, &staying, "resources/unsubscribe", 1).await;
    assert_eq!(
        seen,
        [json!({"uri": "u"})],
        "the expired session's subscription must be undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_child_gets_the_active_subscriptions_and_level_replayed() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let session = initialize(&daemon, TENANT).await;
    let mut get = get_stream(&daemon, &session, None).await;
    for (method, params) in [
        ("resources/subscribe", json!({"uri": "file:///kept"})),
        ("logging/setLevel", json!({"level": "warning"})),
    ] {
        let reply = crate::util::rpc(&daemon, TENANT, &session, method, params).await;
        assert_eq!(reply["result"], json!({}), "{method}: {reply}");
    }

    let crashed = call_tool(&daemon, TENANT, &session, "crash", json!({})).await;
    assert!(
        crashed.get("error").is_some(),
        "the crash fails the call: {crashed}"
    );
    // The next request starts a new child; it must have been told before serving it.
    let subscribes = child_received(&daemon, &session, "resources/subscribe", 0).await;
    assert_eq!(subscribes, [json!({"uri": "file:///kept"})]);
    let levels = child_received(&daemon, &session, "logging/setLevel", 0).await;
    assert_eq!(levels, [json!({"level": "warning"})]);

    call_tool(
        &daemon,
        TENANT,
        &session,
        "updated",
        json!({"uri": "file:///kept"}),
    )
    .await;
    sentinel(&daemon, &session).await;
    let got = messages_until(&mut get, is_sentinel, "the session survives the restart").await;
    let want = [
        "notifications/resources/updated file:///kept",
        "notifications/message emergency",
    ];
    assert_eq!(labels(&got), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_gets_logs_at_its_own_level_and_the_child_the_most_verbose() {
    let (_clients, daemon) = fake_tenant(&[]).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(initialize(&daemon, TENANT).await);
    }
    let [verbose, quiet, unset] = [&sessions[0], &sessions[1], &sessions[2]];
    let mut gets = Vec::new();
    for s in &sessions {
        gets.push(get_stream(&daemon, s, None).await);
    }
    let set = |s: &str, level: &str| {
        let (s, level) = (s.to_owned(), level.to_owned());
        let daemon = &daemon;
        async move {
            let params = json!({"level": level});
            let reply = crate::util::rpc(daemon, TENANT, &s, "logging/setLevel", params).await;
            assert_eq!(reply["result"], json!({}), "setLevel {level}: {reply}");
        }
    };
    set(verbose, "debug").await;
    set(quiet, "error").await; // must not silence the verbose session
    let told = child_received(&daemon, unset, "logging/setLevel", 0).await;
    assert_eq!(
        told,
        [json!({"level": "debug"})],
        "the child gets the most verbose level only"
    );

    let levels = json!({"levels": ["debug", "info", "warning", "error", "emergency"]});
    call_tool(&daemon, TENANT, unset, "log", levels).await;
    let all = ["debug", "info", "warning", "error", "emergency"];
    let want: [&[&str]; 3] = [&all, &["error", "emergency"], &all];
    for (n, get) in gets.iter_mut().enumerate() {
        let got = messages_until(get, is_sentinel, "log messages must reach the session").await;
        let want: Vec<String> = want[n]
            .iter()
            .map(|l| format!("notifications/message {l}"))
            .collect();
        assert_eq!(labels(&got), want, "session {n} filters by its own level");
    }

    // When the verbose session leaves, the child drops to the most verbose level left.
    let delete = mcp_request(
        &daemon,
        reqwest::Method::DELETE,
        Some(TENANT),
        Some(verbose),
    );
    assert_eq!(delete.send().await.expect("DELETE answered").status(), 204);
    let told = child_received(&daemon, unset, "logging/setLevel", 2).await;
    assert_eq!(told, [json!({"level": "debug"}), json!({"level": "error"})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_not_resumed_within_the_grace_is_cancelled_at_the_child() {
    let (_clients, daemon) = fake_tenant(&["--resume-grace", "0.2"]).await;
    let (caller, observer) = tokio::join!(initialize(&daemon, TENANT), initialize(&daemon, TENANT));
    let call = tools_call(
        json!("gone"),
        "slow",
        json!({"ms": 60_000, "steps": 600}),
        Some("t"),
    );
    let mut reply = post_stream(&daemon, &caller, call).await;
    next_message(&mut reply, "progress must stream").await;
    drop(reply);
    let cancels = child_received(&daemon, &observer, "notifications/cancelled", 1).await;
    assert_eq!(
        cancels.len(),
        1,
        "one cancellation after the grace: {cancels:?}"
    );
}
