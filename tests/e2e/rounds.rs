//! Child requests as `input_required` rounds (2026-07-28, SEP-2322): a stateless call whose
//! child asks for sampling, elicitation or roots is answered with the child's request and a
//! `requestState`; the caller's retry carries the answer to the child under the child's id
//! and gets what the call does next. Hostile retries are refused with 400 and the reason,
//! and disturb nothing. Routing follows "the request that reached the child most recently".

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use crate::stateless::{Probe, refusal};
use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, SseStream, initialize_params, initialize_with, logged_daemon,
    sampled_result, sampling_params, sampling_text,
};

const CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
/// JSON-RPC "invalid params", the code of every refused `requestState`.
const INVALID_PARAMS: i64 = -32602;
/// 2026-07-28 "missing required client capability".
const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// Bound for the child to see something mcpmux sent it.
const CHILD_WAIT: Duration = Duration::from_secs(10);

/// A stateless `tools/call` of the fake child's `ask` tool, from a caller that can sample.
fn ask(id: Value, arguments: Value) -> Probe {
    let params = json!({"name": "ask", "arguments": arguments});
    Probe::valid(id, "tools/call", params).meta(CAPS, Some(json!({"sampling": {}})))
}

/// The retry of `probe` under `id`, carrying `responses` and `state`.
fn retry(probe: &Probe, id: Value, responses: Value, state: &Value) -> Probe {
    let mut again = Probe::valid(id, "tools/call", probe.body["params"].clone());
    again.body["params"]["inputResponses"] = responses;
    again.body["params"]["requestState"] = state.clone();
    again
}

/// The single input request of an `input_required` response: its key and the request.
fn only_input(response: &Value) -> (String, Value) {
    let result = &response["result"];
    assert_eq!(
        result["resultType"], "input_required",
        "the call must be answered with an input_required round: {response:#}"
    );
    assert!(
        result["requestState"].is_string(),
        "a round must carry mcpmux's requestState: {response:#}"
    );
    let inputs = result["inputRequests"].as_object().unwrap();
    assert_eq!(
        inputs.len(),
        1,
        "one child request, one input request: {response:#}"
    );
    let (key, request) = inputs.iter().next().unwrap();
    (key.clone(), request.clone())
}

/// The `answer` the fake child's `ask` tool reports: the response message it received.
fn child_got(response: &Value) -> &Value {
    assert_eq!(
        response["result"]["content"][0]["text"], "answered",
        "the child must have received the caller's answer: {response:#}"
    );
    &response["result"]["answer"]
}

/// The GET stream of a session of tenant `acme` that declared sampling: a caller that could
/// answer a child's request, but is unrelated to any stateless call.
async fn sampling_session_stream(daemon: &Daemon) -> SseStream {
    let mut params = initialize_params();
    params["capabilities"] = json!({"sampling": {}});
    let (session, _) = initialize_with(daemon, "acme", params).await;
    let get = daemon
        .http()
        .get(daemon.url())
        .header("Accept", "text/event-stream")
        .header("X-Client-ID", "acme")
        .header("Mcp-Session-Id", &session)
        .send()
        .await
        .unwrap();
    SseStream::new(get)
}

/// The session's GET stream got nothing but what every session gets: a list change the
/// child sends now comes right after the priming event.
async fn assert_session_never_asked(daemon: &Daemon, mut get: SseStream) {
    let notify = Probe::valid(
        json!("n"),
        "tools/call",
        json!({"name": "notify", "arguments": {}}),
    );
    notify.answer(daemon, "acme").await;
    let primed = get
        .next_event(HTTP_TIMEOUT, "the GET stream opens with a priming event")
        .await;
    assert!(primed.is_some_and(|e| e.data.is_empty()));
    let next = get
        .next_message(HTTP_TIMEOUT, "the list change on the GET stream")
        .await;
    assert_eq!(
        next["method"], "notifications/tools/list_changed",
        "no child request may reach an unrelated session: {next:#}"
    );
}

#[tokio::test]
async fn a_childs_sampling_request_is_a_round_and_the_retry_carries_the_answer_to_it() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;
    let first = ask(
        json!("call-1"),
        json!({"method": "sampling/createMessage", "params": sampling_params("2+2?")}),
    );

    let round = first.answer(&daemon, "acme").await;
    assert_eq!(
        round["id"], "call-1",
        "the round answers the call: {round:#}"
    );
    let (key, request) = only_input(&round);
    assert_eq!(
        request,
        json!({"method": "sampling/createMessage", "params": sampling_params("2+2?")}),
        "the input request is the child's request, params as it wrote them"
    );

    // Unknown keys in inputResponses are ignored, as the spec says.
    let responses = json!({ key.clone(): sampled_result("4"), "no-such-key": {"x": 1} });
    let state = round["result"]["requestState"].clone();
    let done = retry(&first, json!(2), responses, &state)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(done["id"], 2, "the result answers the retry: {done:#}");
    assert_eq!(done["result"]["resultType"], "complete", "{done:#}");
    let answer = child_got(&done);
    assert_eq!(
        answer["result"],
        sampled_result("4"),
        "the caller's answer, byte for byte: {done:#}"
    );
    let asked_id = done["result"]["asked_id"].clone();
    assert_eq!(answer["id"], asked_id, "under the child's own id: {done:#}");
    assert_eq!(
        log.tool_calls("ask").len(),
        1,
        "the retry resumes the call: the child ran it once"
    );
}

#[tokio::test]
async fn a_retry_without_the_answer_is_asked_again_with_a_new_state() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;
    let first =
        ask(json!(1), json!({"method": "roots/list"})).meta(CAPS, Some(json!({"roots": {}})));
    let round = first.answer(&daemon, "acme").await;
    let (key, request) = only_input(&round);
    assert_eq!(request, json!({"method": "roots/list"}));
    let state = round["result"]["requestState"].clone();

    let again = retry(&first, json!(2), json!({}), &state)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(again["id"], 2);
    let (key_again, request_again) = only_input(&again);
    assert_eq!(
        (&key_again, &request_again),
        (&key, &request),
        "the same question again"
    );
    let new_state = again["result"]["requestState"].clone();
    assert_ne!(new_state, state, "each round has its own state");

    let roots = json!({"roots": [{"uri": "file:///e2e", "name": "e2e"}]});
    let done = retry(&first, json!(3), json!({ key: roots.clone() }), &new_state)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(child_got(&done)["result"], roots, "{done:#}");
}

#[tokio::test]
async fn hostile_request_states_get_400_saying_which_and_disturb_nothing() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme", "beta"], &[]).await;
    let first = ask(
        json!(1),
        json!({"method": "sampling/createMessage", "params": sampling_params("q")}),
    );
    let round = first.answer(&daemon, "acme").await;
    let (key, _) = only_input(&round);
    let state = round["result"]["requestState"].clone();
    let text = state.as_str().unwrap().to_owned();
    let answer = json!({ key.clone(): sampled_result("a") });

    let mut tampered = text.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = Value::from(String::from_utf8(tampered).unwrap());
    let mut changed = retry(&first, json!(10), answer.clone(), &state);
    changed.body["params"]["arguments"]["note"] = json!("changed");
    let cases: Vec<(&str, &str, Probe)> = vec![
        (
            "acme",
            "not one this server issued",
            retry(&first, json!(11), answer.clone(), &tampered),
        ),
        (
            "acme",
            "not one this server issued",
            retry(&first, json!(12), answer.clone(), &json!("forged.state")),
        ),
        (
            "acme",
            "must be a string",
            retry(&first, json!(13), answer.clone(), &json!(7)),
        ),
        (
            "beta",
            "another client",
            retry(&first, json!(14), answer.clone(), &state),
        ),
        ("acme", "different request", changed),
    ];
    for (tenant, says, probe) in cases {
        let id = probe.body["id"].clone();
        let (status, error) = refusal(probe.send(&daemon, tenant).await, &id).await;
        assert_eq!(status, 400, "{says}: {error:#}");
        assert_eq!(error["code"], INVALID_PARAMS, "{says}: {error:#}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} must say {says:?}");
    }

    // None of that disturbed the parked call: the real retry still completes it, once.
    let done = retry(&first, json!(20), answer.clone(), &state)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(child_got(&done)["result"], sampled_result("a"), "{done:#}");

    // A state is good for one retry.
    let replay = retry(&first, json!(21), answer, &state);
    let (status, error) = refusal(replay.send(&daemon, "acme").await, &json!(21)).await;
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!(INVALID_PARAMS)),
        "{error:#}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("already used"),
        "{error:#}"
    );
    assert_eq!(
        log.tool_calls("ask").len(),
        1,
        "no refused retry reached the child"
    );
}

#[tokio::test]
async fn a_caller_that_never_retries_fails_the_childs_request_and_cancels_the_call() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &["--request-timeout", "2"]).await;
    let first = ask(
        json!(1),
        json!({"method": "sampling/createMessage", "params": sampling_params("q")}),
    );
    let round = first.answer(&daemon, "acme").await;
    let (key, _) = only_input(&round);
    let state = round["result"]["requestState"].clone();

    // After the wait (--request-timeout) the child's request gets an error and the call a
    // cancellation: poll the child's log for both, bounded.
    let call_id = log.tool_calls("ask")[0]["id"].clone();
    let contract = "the child must get an error and a cancellation";
    let (refused, cancelled) = log
        .wait_for(CHILD_WAIT, contract, |lines| {
            let refused = lines
                .iter()
                .find(|m| m["id"] == "ask-1" && m["error"].is_object());
            let cancelled = lines.iter().find(|m| {
                m["method"] == "notifications/cancelled" && m["params"]["requestId"] == call_id
            });
            Some((refused?.clone(), cancelled?.clone()))
        })
        .await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{refused}"
    );
    assert_eq!(cancelled["params"]["requestId"], call_id);

    let late = retry(
        &first,
        json!(2),
        json!({ key: sampled_result("late") }),
        &state,
    );
    let (status, error) = refusal(late.send(&daemon, "acme").await, &json!(2)).await;
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!(INVALID_PARAMS)),
        "{error:#}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("expired"),
        "{error:#}"
    );
}

#[tokio::test]
async fn sequential_callers_each_get_only_their_own_round_and_no_session_is_asked() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;
    let get = sampling_session_stream(&daemon).await;

    let a = ask(
        json!("a"),
        json!({"method": "sampling/createMessage", "params": sampling_params("for a")}),
    );
    let b = ask(
        json!("b"),
        json!({"method": "sampling/createMessage", "params": sampling_params("for b")}),
    );
    let round_a = a.answer(&daemon, "acme").await;
    let round_b = b.answer(&daemon, "acme").await;
    let (key_a, req_a) = only_input(&round_a);
    let (key_b, req_b) = only_input(&round_b);
    assert_eq!(
        req_a["params"],
        sampling_params("for a"),
        "a is asked a's question"
    );
    assert_eq!(
        req_b["params"],
        sampling_params("for b"),
        "b is asked b's question"
    );

    // Both in flight; b answers first, then a.
    let state_b = round_b["result"]["requestState"].clone();
    let done_b = retry(
        &b,
        json!("b2"),
        json!({ key_b: sampled_result("from b") }),
        &state_b,
    )
    .answer(&daemon, "acme")
    .await;
    let state_a = round_a["result"]["requestState"].clone();
    let done_a = retry(
        &a,
        json!("a2"),
        json!({ key_a: sampled_result("from a") }),
        &state_a,
    )
    .answer(&daemon, "acme")
    .await;
    assert_eq!(
        child_got(&done_a)["result"],
        sampled_result("from a"),
        "{done_a:#}"
    );
    assert_eq!(
        child_got(&done_b)["result"],
        sampled_result("from b"),
        "{done_b:#}"
    );

    assert_session_never_asked(&daemon, get).await;
}

#[tokio::test]
async fn overlapping_calls_rounds_go_to_the_call_that_reached_the_child_last() {
    // README: a stdio child does not say which call caused its request; with several
    // candidates mcpmux asks the caller whose request reached the child most recently.
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;
    let args = |who: &str| json!({"method": "sampling/createMessage", "params": sampling_params(who), "peers": 2, "note": who});
    let a = ask(json!("a"), args("a"));
    let b = ask(json!("b"), args("b"));
    // a reaches the child first (the child logs it), then b.
    let a_task = a.send(&daemon, "acme");
    let b_task = async {
        let a_reached = |logged: &[Value]| {
            let is_ask = |m: &Value| m["method"] == "tools/call" && m["params"]["name"] == "ask";
            logged.iter().any(is_ask).then_some(())
        };
        log.wait_for(CHILD_WAIT, "a's call must reach the child", a_reached)
            .await;
        let round = b.answer(&daemon, "acme").await;
        // b is asked both questions, one round after the other.
        let (key1, req1) = only_input(&round);
        let state = round["result"]["requestState"].clone();
        let round2 = retry(
            &b,
            json!("b2"),
            json!({ key1: sampled_result("first") }),
            &state,
        )
        .answer(&daemon, "acme")
        .await;
        let (key2, req2) = only_input(&round2);
        let state2 = round2["result"]["requestState"].clone();
        let done = retry(
            &b,
            json!("b3"),
            json!({ key2: sampled_result("second") }),
            &state2,
        )
        .answer(&daemon, "acme")
        .await;
        let mut asked: Vec<String> = [&req1, &req2].into_iter().map(sampling_text).collect();
        asked.sort();
        assert_eq!(asked, ["a", "b"], "both questions go to b");
        done
    };
    let (a_resp, done_b) = tokio::join!(a_task, b_task);
    assert_eq!(
        done_b["result"]["content"][0]["text"], "answered",
        "{done_b:#}"
    );
    let a_done: Value = timeout(HTTP_TIMEOUT, a_resp.json()).await.unwrap().unwrap();
    assert_eq!(a_done["id"], "a");
    assert_eq!(
        a_done["result"]["resultType"], "complete",
        "a is never asked; its call completes with b's answer: {a_done:#}"
    );
    assert_eq!(child_got(&a_done)["result"]["model"], "e2e", "{a_done:#}");
}

#[tokio::test]
async fn a_caller_lacking_the_capability_gets_32021_and_the_child_an_error_and_a_cancellation() {
    // 2026-07-28: a server that needs a client capability the request did not declare
    // answers -32021 naming it (HTTP 400). Here the child's request is what needs it.
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;
    let get = sampling_session_stream(&daemon).await;
    let url_mode = json!({"mode": "url", "message": "sign in", "url": "https://example.com/a",
                          "elicitationId": "e-1"});
    let cases = [
        (
            "sampling/createMessage",
            sampling_params("q"),
            json!({"elicitation": {}}),
            json!({"sampling": {}}),
        ),
        (
            "elicitation/create",
            url_mode,
            json!({"elicitation": {}}), // form mode only
            json!({"elicitation": {"url": {}}}),
        ),
    ];
    for (n, (method, params, declared, required)) in cases.into_iter().enumerate() {
        let id = json!(format!("lacking-{n}"));
        let probe = ask(id.clone(), json!({"method": method, "params": params}));
        let probe = probe.meta(CAPS, Some(declared));
        let (status, error) = refusal(probe.send(&daemon, "acme").await, &id).await;
        assert_eq!(
            (status, &error["code"]),
            (400, &json!(MISSING_REQUIRED_CLIENT_CAPABILITY)),
            "{method}: {error:#}"
        );
        assert_eq!(
            error["data"],
            json!({ "requiredCapabilities": required }),
            "{method}: the data names exactly what is missing"
        );
        assert!(
            error["message"].as_str().unwrap().contains(method),
            "{method}: {error:#}"
        );

        // The child's request is refused at once, and its call (whose caller is done with
        // it) cancelled.
        let call_id = log.tool_calls("ask")[n]["id"].clone();
        let ask_id = format!("ask-{}", n + 1);
        let contract = format!("{method}: the child must get an error and a cancellation");
        let refused = log
            .wait_for(CHILD_WAIT, &contract, |lines| {
                let refused = lines.iter().find(|m| m["id"] == ask_id.as_str())?;
                lines.iter().find(|m| {
                    m["method"] == "notifications/cancelled" && m["params"]["requestId"] == call_id
                })?;
                Some(refused.clone())
            })
            .await;
        assert_eq!(refused["error"]["code"], -32601, "{refused}");
    }

    // Children ask for roots unprompted (server-everything does as it starts): the call
    // goes on, the child alone is refused, and the call's result tells what it got.
    let roots = ask(json!("roots"), json!({"method": "roots/list"}));
    let done = roots
        .meta(CAPS, Some(json!({"sampling": {}})))
        .answer(&daemon, "acme")
        .await;
    assert_eq!(child_got(&done)["error"]["code"], -32601, "{done:#}");

    // Nothing else was disturbed: a caller that can sample gets its round.
    let capable = ask(
        json!("capable"),
        json!({"method": "sampling/createMessage", "params": sampling_params("after")}),
    );
    let round = capable.answer(&daemon, "acme").await;
    let (_, request) = only_input(&round);
    assert_eq!(request["params"], sampling_params("after"), "{round:#}");
    assert_session_never_asked(&daemon, get).await;
}
