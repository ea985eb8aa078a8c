//! The `mcp` Python SDK (`tests/interop/fidelity_client.py`, one scenario per run) as the
//! caller, server-everything as the child.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::timeout;

use super::{
    CLIENT_TIMEOUT, SAMPLED_TEXT, SUBSCRIBED_URI, TEXT_TEMPLATE, cancellations_of, interop_daemon,
    only_call, responses_in,
};
use crate::interop::venv_python;
use crate::util::{ChildLog, Daemon, repo_root};

/// The SDK's connect modes: `initialize`, its default (discover, then 2026-07-28 for the whole
/// connection), and 2026-07-28 outright.
const MODES: [&str; 3] = ["legacy", "auto", "2026-07-28"];
/// Bound for a cancellation to reach the child after the caller cancelled or went away.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Runs `fidelity_client.py <url> --client-id <id> --scenario <scenario>`; returns its summary.
async fn python_scenario(daemon: &Daemon, client_id: &str, scenario: &str) -> Value {
    python_scenario_in(daemon, client_id, scenario, "legacy", &[]).await
}

/// [`python_scenario`] with the SDK in connect mode `mode` and `extra` arguments; checks the
/// era it ended up in.
async fn python_scenario_in(
    daemon: &Daemon,
    client_id: &str,
    scenario: &str,
    mode: &str,
    extra: &[&str],
) -> Value {
    let script = repo_root().join("tests/interop/fidelity_client.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(script)
        .arg(daemon.url())
        .args([
            "--client-id",
            client_id,
            "--scenario",
            scenario,
            "--mode",
            mode,
        ])
        .args(extra)
        .args(["--timeout", &(CLIENT_TIMEOUT.as_secs() - 10).to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("the Python SDK client must finish (it enforces its own deadline)")
        .expect("the venv python must start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the mcp Python SDK must complete scenario {scenario} through mcpmux ({}):\n{stderr}",
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("scenario {scenario} summary must be JSON ({e}): {stdout}"));
    let modern = summary["protocol_version"] == "2026-07-28";
    assert_eq!(
        modern,
        mode != "legacy",
        "in mode {mode} the SDK must end up in the {} era: {summary:#}",
        if mode == "legacy" {
            "session"
        } else {
            "2026-07-28"
        }
    );
    summary
}

#[tokio::test]
async fn python_sdk_lists_tools_and_gets_a_long_tools_progress_before_its_result() {
    // In auto and 2026-07-28 mode the progress arrives on the stateless call's own SSE reply.
    for mode in MODES {
        progress_in(mode).await;
    }
}

async fn progress_in(mode: &str) {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario_in(&daemon, "everything", "progress", mode, &[]).await;

    let tools = summary["tools"].as_array().unwrap();
    for tool in [
        "echo",
        "trigger-long-running-operation",
        "trigger-sampling-request",
    ] {
        assert!(
            tools.iter().any(|t| t == tool),
            "mode {mode}: tools/list must carry {tool} (the sampling tool exists only because the \
             child was initialized with sampling declared): {summary:#}"
        );
    }
    let done = "Long running operation completed. Duration: 2 seconds, Steps: 4.";
    assert_eq!(
        summary["events"],
        json!([
            ["progress", 1.0, 4.0],
            ["progress", 2.0, 4.0],
            ["progress", 3.0, 4.0],
            ["progress", 4.0, 4.0],
            ["result", [done]]
        ]),
        "mode {mode}: every progress notification must reach the caller's callback before the \
         result: {summary:#}"
    );
    let call = only_call(&tap, "trigger-long-running-operation");
    assert_eq!(
        call["params"]["_meta"]["progressToken"], call["id"],
        "mode {mode}: the child must see mcpmux's own token (its child-side id), not the \
         caller's: {call}"
    );
}

#[tokio::test]
async fn python_sdk_answers_the_childs_sampling_request_in_every_mode() {
    // In auto and 2026-07-28 mode the request reaches the SDK as an input_required round.
    for mode in MODES {
        sampling_in(mode).await;
    }
}

async fn sampling_in(mode: &str) {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario_in(&daemon, "everything", "sampling", mode, &[]).await;

    let asked = summary["sampling_requests"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "one sampling request, once: {summary:#}");
    assert_eq!(
        asked[0]["messages"][0]["content"]["text"],
        "Resource trigger-sampling-request context: fidelity prompt",
        "the request's params must arrive as the child wrote them: {summary:#}"
    );
    let text = summary["call"]["text"].to_string();
    assert!(
        summary["call"]["is_error"] == false && text.contains(SAMPLED_TEXT),
        "the tool must return what the caller sampled: {summary:#}"
    );
    let answers: Vec<Value> = responses_in(&tap)
        .into_iter()
        .filter(|r| r["result"]["content"]["text"] == SAMPLED_TEXT)
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "the child must get the answer exactly once: {answers:#?}"
    );
}

#[tokio::test]
async fn python_sdk_answers_the_childs_elicitation_request_in_every_mode() {
    for mode in MODES {
        elicitation_in(mode).await;
    }
}

async fn elicitation_in(mode: &str) {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario_in(&daemon, "everything", "elicitation", mode, &[]).await;

    let asked = summary["elicitation_requests"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "one elicitation request, once: {summary:#}");
    assert_eq!(
        asked[0]["message"], "Please provide inputs for the following fields:",
        "{summary:#}"
    );
    let texts = summary["call"]["text"].as_array().unwrap();
    assert!(
        texts
            .iter()
            .any(|t| t.as_str().unwrap().contains("- Name: Ada Lovelace")),
        "the tool must return what the caller entered: {summary:#}"
    );
    let answers: Vec<Value> = responses_in(&tap)
        .into_iter()
        .filter(|r| r["result"]["action"] == "accept")
        .collect();
    assert_eq!(answers.len(), 1, "answered exactly once: {answers:#?}");
    assert_eq!(answers[0]["result"]["content"]["name"], "Ada Lovelace");
}

#[tokio::test]
async fn python_sdk_lists_reads_and_subscribes_to_resources_and_gets_the_update() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario(&daemon, "everything", "resources").await;

    let listed = summary["resources"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r == "demo://resource/static/document/instructions.md"),
        "{summary:#}"
    );
    assert!(
        summary["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == TEXT_TEMPLATE),
        "{summary:#}"
    );
    let read = summary["read"][0].as_str().unwrap_or_default();
    assert!(
        read.starts_with("Resource 1: This is a plaintext resource"),
        "{summary:#}"
    );
    assert_eq!(
        summary["updates"][0], SUBSCRIBED_URI,
        "the subscriber must get notifications/resources/updated for its URI: {summary:#}"
    );
    let subscribes = tap.with_method("resources/subscribe");
    assert_eq!(subscribes.len(), 1, "{subscribes:#?}");
    assert_eq!(subscribes[0]["params"]["uri"], SUBSCRIBED_URI);
}

#[tokio::test]
async fn python_sdk_lists_and_gets_prompts() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario(&daemon, "everything", "prompts").await;

    assert_eq!(
        summary["prompts"],
        json!([
            "args-prompt",
            "completable-prompt",
            "resource-prompt",
            "simple-prompt"
        ]),
        "{summary:#}"
    );
    assert_eq!(
        summary["messages"],
        json!(["What's weather in Lisbon, Lisboa?"]),
        "prompts/get arguments must reach the child: {summary:#}"
    );
}

#[tokio::test]
async fn python_sdk_gets_completions_for_prompt_and_template_arguments() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario(&daemon, "everything", "completion").await;

    assert_eq!(summary["department"], json!(["Engineering"]), "{summary:#}");
    assert_eq!(
        summary["member"],
        json!(["David", "Eve", "Frank"]),
        "completion context must reach the child: {summary:#}"
    );
    assert_eq!(summary["resource_id"], json!(["7"]), "{summary:#}");
}

#[tokio::test]
async fn python_sdk_sets_its_log_level_and_receives_log_messages() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario(&daemon, "everything", "logging").await;

    assert_child_logs(&summary);
}

/// The summary's `logs` are server-everything's simulated log messages, at least one.
fn assert_child_logs(summary: &Value) {
    let logs = summary["logs"].as_array().unwrap();
    assert!(!logs.is_empty(), "{summary:#}");
    for log in logs {
        let data = log["data"].as_str().unwrap_or_default();
        assert!(
            log["level"].is_string() && data.contains("message"),
            "log messages must arrive as the child wrote them: {summary:#}"
        );
    }
}

#[tokio::test]
async fn python_sdk_with_a_log_level_gets_the_childs_logs_on_its_calls_replies() {
    // 2026-07-28 has no logging/setLevel: the SDK stamps its log_level on every request.
    for mode in ["auto", "2026-07-28"] {
        let (tap, fake) = (ChildLog::new(), ChildLog::new());
        let (_clients, daemon) = interop_daemon(&tap, &fake).await;
        let extra = ["--log-level", "debug"];
        let summary = python_scenario_in(&daemon, "everything", "request-logs", mode, &extra).await;
        assert_child_logs(&summary);
        let set = tap.with_method("logging/setLevel");
        assert!(
            set.iter().any(|m| m["params"]["level"] == "debug"),
            "the child must be set to the callers' level: {set:#?}"
        );
    }
}

#[tokio::test]
async fn python_sdk_listens_for_a_resource_update_and_a_tools_list_change() {
    for mode in ["auto", "2026-07-28"] {
        let (tap, fake) = (ChildLog::new(), ChildLog::new());
        let (_clients, daemon) = interop_daemon(&tap, &fake).await;

        let summary = python_scenario_in(&daemon, "everything", "listen-resource", mode, &[]).await;
        assert_eq!(
            summary["honored"],
            json!({"resourceSubscriptions": [SUBSCRIBED_URI]}),
            "{summary:#}"
        );
        assert_eq!(
            summary["event"],
            json!({"type": "ResourceUpdated", "uri": SUBSCRIBED_URI}),
            "{summary:#}"
        );
        let subscribes = tap.with_method("resources/subscribe");
        assert_eq!(
            subscribes.len(),
            1,
            "one subscribe for the URI: {subscribes:#?}"
        );
        assert_eq!(subscribes[0]["params"]["uri"], SUBSCRIBED_URI);

        let summary = python_scenario_in(&daemon, "fake", "listen-tools", mode, &[]).await;
        assert_eq!(
            summary["honored"],
            json!({"toolsListChanged": true}),
            "{summary:#}"
        );
        assert_eq!(
            summary["event"],
            json!({"type": "ToolsListChanged"}),
            "{summary:#}"
        );
    }
}

#[tokio::test]
async fn python_sdk_pings_the_child_and_answers_the_childs_ping() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario(&daemon, "everything", "ping").await;
    assert_eq!(summary["ping"], json!({}), "{summary:#}");
    assert_eq!(
        tap.with_method("ping").len(),
        1,
        "the child must get the ping"
    );

    // server-everything never pings; the fake child's `ask` does, mid-call.
    let summary = python_scenario(&daemon, "fake", "answer-ping").await;
    assert_eq!(summary["call"]["text"][0], "answered", "{summary:#}");
    let outcome: Value =
        serde_json::from_str(summary["call"]["text"][1].as_str().unwrap()).unwrap();
    assert_eq!(
        outcome["answer"],
        json!({"jsonrpc": "2.0", "id": "ask-1", "result": {}}),
        "the caller's pong must reach the child under the child's own id: {summary:#}"
    );
}

#[tokio::test]
async fn python_sdk_cancelling_a_running_tool_cancels_it_at_the_child_once() {
    // Session era: the SDK sends notifications/cancelled. 2026-07-28 (auto included): the SDK
    // aborts the call's POST and mcpmux, seeing the caller gone, cancels at the child.
    for mode in MODES {
        cancel_in(mode).await;
    }
}

async fn cancel_in(mode: &str) {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let summary = python_scenario_in(&daemon, "everything", "cancel", mode, &[]).await;

    assert_eq!(
        summary["completed"], false,
        "mode {mode}: the call was cancelled: {summary:#}"
    );
    assert_eq!(
        summary["progress"][0],
        json!([1.0, 600.0]),
        "mode {mode}: the call's first progress reached the callback before the cancel: {summary:#}"
    );
    assert_eq!(
        summary["after"]["text"],
        json!(["Echo: after cancel"]),
        "mode {mode}: {summary:#}"
    );
    let call = only_call(&tap, "trigger-long-running-operation");
    let contract = format!(
        "mode {mode}: the child must get notifications/cancelled for the call's child-side id {}",
        call["id"]
    );
    wait_for_cancellation(&tap, &call["id"], &contract).await;

    // Another caller of the tenant is served by the same child, and the cancel was sent once.
    let other = python_scenario_in(&daemon, "everything", "prompts", mode, &[]).await;
    assert_eq!(
        other["messages"],
        json!(["What's weather in Lisbon, Lisboa?"]),
        "mode {mode}: {other:#}"
    );
    let (mine, all) = cancellations_of(&tap, &call["id"]);
    assert_eq!((mine, all.len()), (1, 1), "{contract}, once: {all:#?}");
    let inits = tap.with_method("initialize");
    assert_eq!(
        inits.len(),
        1,
        "mode {mode}: the child must not have been replaced: {inits:#?}"
    );
}

/// Waits until the child received a `notifications/cancelled` for `child_id`: a caller gone
/// is noticed when its connection closes.
async fn wait_for_cancellation(tap: &ChildLog, child_id: &Value, contract: &str) {
    tap.wait_for(CANCEL_WAIT, contract, |messages| {
        messages.iter().find(|m| {
            m["method"] == "notifications/cancelled" && &m["params"]["requestId"] == child_id
        })?;
        Some(())
    })
    .await;
}
