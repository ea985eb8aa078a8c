//! Isolation: sessions of one tenant share one child, yet each sees only its own progress and
//! server-to-client requests, and a notification for all reaches each exactly once.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use super::{
    ASK_MS, ask_call, ask_outcome, drive, fake_daemon, open_call, sampled, sampling_params,
    session_with,
};
use crate::util::{
    ChildLog, HTTP_TIMEOUT, SseStream, initialize, mcp_request, messages, post, sampling_text,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_each_see_only_their_own_progress_and_server_requests() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    // Only `a` can sample and only `b` can elicit, so each request has one right session.
    let a = session_with(&daemon, json!({"sampling": {}})).await;
    let b = session_with(&daemon, json!({"elicitation": {}})).await;
    // Same request id and progress token in both; `peers` makes each request leave the child
    // only once both calls are in flight.
    let ask_a = ask_call(
        7,
        json!({"method": "sampling/createMessage", "params": sampling_params("for a"),
               "note": "a", "peers": 2, "ms": ASK_MS}),
    );
    let elicit =
        json!({"message": "for b", "requestedSchema": {"type": "object", "properties": {}}});
    let ask_b = ask_call(
        7,
        json!({"method": "elicitation/create", "params": elicit, "note": "b", "peers": 2,
               "ms": ASK_MS}),
    );

    let run = |session: String, body: Value, respond: fn(&Value) -> Value| {
        let daemon = &daemon;
        async move {
            let stream = open_call(daemon, &session, &body).await;
            drive(daemon, &session, stream, respond).await
        }
    };
    let respond_a: fn(&Value) -> Value = |req| sampled(&req["id"], "a sampled");
    let respond_b: fn(&Value) -> Value = |req| json!({"jsonrpc": "2.0", "id": req["id"], "result": {"action": "accept", "content": {"who": "b"}}});
    let (got_a, got_b) = timeout(Duration::from_secs(30), async {
        tokio::join!(
            run(a.clone(), ask_a, respond_a),
            run(b.clone(), ask_b, respond_b)
        )
    })
    .await
    .expect("both calls, with their server-to-client requests answered, must finish");

    for (name, got, method, marker) in [
        ("a", &got_a, "sampling/createMessage", "for a"),
        ("b", &got_b, "elicitation/create", "for b"),
    ] {
        assert_eq!(
            got.order,
            ["progress", "request", "progress", "final"],
            "session {name}'s reply: its progress, its request, its progress, its result: {got:#?}"
        );
        for p in &got.progress {
            assert_eq!(
                (&p["params"]["progressToken"], &p["params"]["message"]),
                (&json!("tok"), &json!(name)),
                "session {name} must see only its own progress, under its own token: {p}"
            );
        }
        let request = &got.requests[0];
        assert_eq!(request["method"], method, "session {name}: {request}");
        let text = request["params"].to_string();
        assert!(
            text.contains(marker),
            "session {name} must get its own request: {request}"
        );
        assert_eq!(
            got.last["id"], 7,
            "the caller's id is restored: {:#}",
            got.last
        );
    }
    let (outcome_a, outcome_b) = (
        ask_outcome(&got_a.last["result"]),
        ask_outcome(&got_b.last["result"]),
    );
    assert_eq!(
        outcome_a["answer"]["result"]["content"]["text"], "a sampled",
        "{outcome_a:#}"
    );
    assert_eq!(
        outcome_b["answer"]["result"]["content"]["who"], "b",
        "{outcome_b:#}"
    );
    for outcome in [&outcome_a, &outcome_b] {
        assert_eq!(
            outcome["answer"]["id"], outcome["asked_id"],
            "each answer must reach the child under the child's own id for it: {outcome:#}"
        );
    }
    assert_ne!(
        got_a.requests[0]["id"], got_b.requests[0]["id"],
        "sessions must be asked under distinct caller-side ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_request_reaches_exactly_one_capable_session_and_its_answer_reaches_the_asker() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let a = session_with(&daemon, json!({"sampling": {}})).await;
    let b = session_with(&daemon, json!({"sampling": {}})).await;
    // Both can sample and both have a call in flight: either may be asked, but each request
    // must be asked once, and the answer must go back to the call that asked.
    let ask = |marker: &str| {
        ask_call(
            3,
            json!({"method": "sampling/createMessage", "params": sampling_params(marker),
                   "note": marker, "peers": 2, "ms": ASK_MS}),
        )
    };
    let respond = |req: &Value| {
        let marker = req["params"]["messages"][0]["content"]["text"]
            .as_str()
            .unwrap();
        sampled(&req["id"], &format!("answer to {marker}"))
    };
    let run = |session: String, body: Value| {
        let daemon = &daemon;
        async move {
            let stream = open_call(daemon, &session, &body).await;
            drive(daemon, &session, stream, respond).await
        }
    };
    let (got_a, got_b) = timeout(Duration::from_secs(30), async {
        tokio::join!(run(a.clone(), ask("from a")), run(b.clone(), ask("from b")))
    })
    .await
    .expect("both calls, with their server-to-client requests answered, must finish");

    let mut asked: Vec<String> = [&got_a, &got_b]
        .iter()
        .flat_map(|g| g.requests.iter())
        .map(sampling_text)
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        ["from a", "from b"],
        "each request must reach exactly one session: {got_a:#?} {got_b:#?}"
    );
    for (marker, got) in [("from a", &got_a), ("from b", &got_b)] {
        let outcome = ask_outcome(&got.last["result"]);
        assert_eq!(
            outcome["answer"]["result"]["content"]["text"],
            format!("answer to {marker}"),
            "the call {marker} must get the answer to its own request: {outcome:#}"
        );
        for p in &got.progress {
            assert_eq!(p["params"]["message"], marker, "own progress only: {p}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_for_all_sessions_reaches_each_session_exactly_once() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log, &[]).await;
    let (a, b) = (
        initialize(&daemon, "mux").await,
        initialize(&daemon, "mux").await,
    );
    let open_get = |session: String| {
        let daemon = &daemon;
        async move {
            let resp = mcp_request(daemon, reqwest::Method::GET, Some("mux"), Some(&session))
                .send()
                .await
                .unwrap();
            SseStream::new(resp)
        }
    };
    let mut streams = [open_get(a.clone()).await, open_get(b.clone()).await];

    // `a` triggers one, then `b` another: every session must get m1 once, then m2 once.
    let mut on_post = Vec::new();
    for (session, marker) in [(&a, "m1"), (&b, "m2")] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "notify", "arguments": {"marker": marker}}});
        on_post.push(messages(post(&daemon, Some("mux"), Some(session), &body).await).await);
    }
    for (name, stream) in ["a", "b"].iter().zip(streams.iter_mut()) {
        let mut got = Vec::new();
        while got.len() < 2 {
            let contract = format!("session {name} must get each tools/list_changed");
            let message = stream.next_message(HTTP_TIMEOUT, &contract).await;
            if message["method"] == "notifications/tools/list_changed" {
                got.push(message["params"]["_meta"]["marker"].clone());
            }
        }
        assert_eq!(
            got,
            [json!("m1"), json!("m2")],
            "session {name} must get each notification exactly once, in order"
        );
    }
    for replies in &on_post {
        assert!(
            !replies
                .iter()
                .any(|m| m["method"] == "notifications/tools/list_changed"),
            "a session gets a broadcast on one stream only, not also on its POST: {replies:#?}"
        );
    }
}
