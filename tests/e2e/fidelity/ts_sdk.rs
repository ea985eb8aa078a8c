//! The TypeScript SDK 2.x client (`tests/interop/ts_client.mjs`, `@modelcontextprotocol/client`
//! pinned in `tests/interop/package.json`) in the 2026-07-28 era, server-everything as the
//! child: tools/list, tools/call, and one sampling round trip as an `input_required` round.

use serde_json::Value;

use super::{CLIENT_TIMEOUT, interop_daemon, responses_in};
use crate::interop::node_summary;
use crate::util::ChildLog;

/// What the script's sampling handler answers (`SAMPLED_TEXT` in ts_client.mjs).
const TS_SAMPLED_TEXT: &str = "sampled through mcpmux by the TS SDK";

#[tokio::test]
async fn ts_sdk_2_lists_calls_and_answers_a_sampling_round_in_the_modern_era() {
    for mode in ["auto", "2026-07-28"] {
        let (tap, fake) = (ChildLog::new(), ChildLog::new());
        let (_clients, daemon) = interop_daemon(&tap, &fake).await;
        let deadline = (CLIENT_TIMEOUT.as_secs() - 10).to_string();
        let url = daemon.url();
        let args = [url.as_str(), "everything", mode, deadline.as_str()];
        let summary = node_summary("ts_client.mjs", &args, CLIENT_TIMEOUT).await;

        assert_eq!(summary["protocol_version"], "2026-07-28", "{summary:#}");
        let tools = summary["tools"].as_array().unwrap();
        assert!(
            tools.iter().any(|t| t == "trigger-sampling-request"),
            "{summary:#}"
        );
        assert_eq!(
            summary["echo"],
            serde_json::json!(["Echo: hello from ts"]),
            "{summary:#}"
        );
        let asked = summary["sampling_requests"].as_array().unwrap();
        assert_eq!(asked.len(), 1, "one sampling request: {summary:#}");
        assert_eq!(
            asked[0]["messages"][0]["content"]["text"],
            "Resource trigger-sampling-request context: ts prompt",
            "{summary:#}"
        );
        let sampled = summary["sampled"]["text"].to_string();
        assert!(
            summary["sampled"]["is_error"] == false && sampled.contains(TS_SAMPLED_TEXT),
            "the tool must return what the TS client sampled: {summary:#}"
        );
        let answers: Vec<Value> = responses_in(&tap)
            .into_iter()
            .filter(|r| r["result"]["content"]["text"] == TS_SAMPLED_TEXT)
            .collect();
        assert_eq!(
            answers.len(),
            1,
            "the child gets the answer once: {answers:#?}"
        );
    }
}
