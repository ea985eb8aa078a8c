//! Request-scoped logs (2026-07-28, SEP-2577): a stateless request that carries
//! `io.modelcontextprotocol/logLevel` in `_meta` gets the child's `notifications/message` at
//! or above that level on its own reply; a request without it gets none; a value that names
//! no level is refused with -32602. The child is set to the level before the request.

use serde_json::{Value, json};

use crate::stateless::{Probe, refusal};
use crate::util::{ChildLog, logged_daemon, messages};

const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

/// A stateless call of the fake child's `log` tool, which logs once per level, in order.
fn logging_call(id: Value) -> Probe {
    let levels = ["debug", "info", "warning", "error"];
    let params = json!({"name": "log", "arguments": {"levels": levels}});
    Probe::valid(id, "tools/call", params)
}

fn logged_levels(messages: &[Value]) -> Vec<String> {
    let logs = messages
        .iter()
        .filter(|m| m["method"] == "notifications/message");
    logs.map(|m| m["params"]["level"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn logs_reach_only_requests_that_opted_in_at_or_above_their_level() {
    let log = ChildLog::new();
    let (_clients, daemon) = logged_daemon(&log, &["acme"], &[]).await;

    let plain = logging_call(json!(1));
    let got = messages(plain.send(&daemon, "acme").await).await;
    assert_eq!(
        logged_levels(&got),
        Vec::<String>::new(),
        "no opt-in, no logs: {got:#?}"
    );
    assert_eq!(got.last().unwrap()["id"], 1, "{got:#?}");

    let opted = logging_call(json!(2)).meta(LOG_LEVEL, Some(json!("warning")));
    let got = messages(opted.send(&daemon, "acme").await).await;
    assert_eq!(logged_levels(&got), ["warning", "error"], "{got:#?}");
    let last = got.last().unwrap();
    assert_eq!(
        (&last["id"], &last["result"]["resultType"]),
        (&json!(2), &json!("complete")),
        "the result ends the reply: {got:#?}"
    );

    // The child was set to that level before the request reached it.
    let lines = log.messages();
    let set = lines
        .iter()
        .position(|m| m["method"] == "logging/setLevel" && m["params"]["level"] == "warning");
    let call = lines.iter().position(|m| {
        m["method"] == "tools/call"
            && m["params"]["name"] == "log"
            && m["params"]["_meta"][LOG_LEVEL] == "warning"
    });
    assert!(
        set.is_some() && set < call,
        "logging/setLevel warning must precede the call: {lines:#?}"
    );

    let bad = logging_call(json!(3)).meta(LOG_LEVEL, Some(json!("loud")));
    let (status, error) = refusal(bad.send(&daemon, "acme").await, &json!(3)).await;
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!(-32602)),
        "{error:#}"
    );
    assert!(
        error["message"].as_str().unwrap().contains(LOG_LEVEL),
        "{error:#}"
    );
    assert_eq!(
        log.tool_calls("log").len(),
        2,
        "the refused request never reached the child"
    );
}
