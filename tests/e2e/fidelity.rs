//! Fidelity (DESIGN §3): what real MCP callers and children can do through mcpmux, and what
//! hostile ones cannot.
//!
//! - Interop: the `mcp` Python SDK (`tests/interop/fidelity_client.py`) and rmcp's Streamable
//!   HTTP client, each with `X-Client-ID`, against `@modelcontextprotocol/server-everything`
//!   run behind `tests/fixtures/stdin_tap.py`, so a test also sees what the child received:
//!   progress, sampling, elicitation, resources, prompts, logging, completion, ping both ways
//!   and cancellation.
//! - Isolation: two sessions of one tenant with calls in flight at once each see only their own
//!   progress and server-to-client requests; a notification for all reaches each session once.
//! - Hostile input: stray answers and cancellations from callers, junk lines and floods from
//!   the child, child requests no session can take: each is answered or dropped as the spec
//!   says, and no other session notices.
//!
//! Waits on the child use its own signals (a fixture `wait`, or a later request whose answer
//! proves every earlier line was read), never sleeps.

mod hostile;
mod python_sdk;
mod rmcp_client;
mod sessions;
mod ts_sdk;

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use crate::interop::{ensure_setup, everything_entry};
use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, SseStream, TempClients, call_tool, initialize_params,
    initialize_with, logged_fake_child_spec, post, repo_root, sampled_result, sampling_params,
};

/// Bound for one Python SDK run (spawn, handshake, scenario, teardown); it enforces 10 s less.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for one rmcp exchange (a call that may include a child start).
const RMCP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for something server-everything sends by itself (a log message, a resource update):
/// one at once, then one every 5 s, so this spans several.
const NOTIFICATION_WAIT: Duration = Duration::from_secs(20);
/// How long the fixture's `ask` waits for an answer: far longer than any test waits for it, so
/// an answer that comes "at once" cannot be confused with the fixture giving up.
const ASK_MS: u64 = 30_000;
/// Bound for a fixture `wait` call (the state it waits for is one hop away).
const FIXTURE_WAIT_MS: u64 = 15_000;
/// What the callers answer to `sampling/createMessage`.
const SAMPLED_TEXT: &str = "sampled through mcpmux";
/// server-everything's text resource template, and the resource the callers subscribe to.
const TEXT_TEMPLATE: &str = "demo://resource/dynamic/text/{resourceId}";
const SUBSCRIBED_URI: &str = "demo://resource/dynamic/text/1";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// server-everything on stdio, its stdin tapped into `log`; sandboxed, with the tap, the
/// package tree and the log's directory granted.
fn tapped_everything_spec(log: &ChildLog) -> Value {
    let tap = repo_root().join("tests/fixtures/stdin_tap.py");
    let entry = everything_entry();
    let modules = repo_root().join("tests/interop/node_modules");
    let fixtures = crate::util::fixtures_dir();
    json!({
        "command": crate::util::system_python(),
        "args": [tap.to_str().unwrap(), log.path(), "node", entry.to_str().unwrap(), "stdio"],
        "sandbox": {
            "read": [fixtures.to_str().unwrap(), modules.to_str().unwrap()],
            "write": [log.dir()],
        },
    })
}

/// A daemon with tenant `everything` (tapped into `tap`) and tenant `fake` (a fake child
/// logging into `fake`).
async fn interop_daemon(tap: &ChildLog, fake: &ChildLog) -> (TempClients, Daemon) {
    ensure_setup();
    let clients = TempClients::new();
    clients.write("everything", &tapped_everything_spec(tap));
    clients.write("fake", &logged_fake_child_spec(fake, &[]));
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

/// Every message in `log` that is a response (no `method`) with a `result`.
fn responses_in(log: &ChildLog) -> Vec<Value> {
    let messages = log.messages().into_iter();
    messages
        .filter(|m| m.get("method").is_none() && m.get("result").is_some())
        .collect()
}

/// The one `tools/call` of `tool` the child received.
fn only_call(log: &ChildLog, tool: &str) -> Value {
    let calls = log.tool_calls(tool);
    assert_eq!(
        calls.len(),
        1,
        "the child must get one {tool} call: {calls:#?}"
    );
    calls.into_iter().next().unwrap()
}

/// The `notifications/cancelled` the child received for request `child_id`, and all of them.
fn cancellations_of(log: &ChildLog, child_id: &Value) -> (usize, Vec<Value>) {
    let all = log.with_method("notifications/cancelled");
    let mine = all
        .iter()
        .filter(|m| &m["params"]["requestId"] == child_id)
        .count();
    (mine, all)
}

/// The `text` of each text block of a `CallToolResult` (as JSON).
fn texts_of(result: &Value) -> Vec<String> {
    let blocks = result["content"].as_array();
    let blocks = blocks.unwrap_or_else(|| panic!("a tool result has content: {result:#}"));
    blocks
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

/// The `{"asked_id", "answer"}` the fixture's `ask` reports in its second text block.
fn ask_outcome(result: &Value) -> Value {
    let texts = texts_of(result);
    let json = texts.get(1);
    let json = json.unwrap_or_else(|| panic!("ask reports its outcome as text: {result:#}"));
    serde_json::from_str(json).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Raw callers: helpers
// ---------------------------------------------------------------------------------------------

/// A daemon serving tenant `mux` from a logged fake child, with `env` for the daemon.
async fn fake_daemon(log: &ChildLog, env: &[(&str, &str)]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("mux", &logged_fake_child_spec(log, &[]));
    let daemon = Daemon::start_with_env(&clients, &[], env).await;
    (clients, daemon)
}

/// A `mux` session declaring `capabilities`.
async fn session_with(daemon: &Daemon, capabilities: Value) -> String {
    let mut params = initialize_params();
    params["capabilities"] = capabilities;
    initialize_with(daemon, "mux", params).await.0
}

/// POSTs `body` in `session` and returns its reply as an open SSE stream.
async fn open_call(daemon: &Daemon, session: &str, body: &Value) -> SseStream {
    SseStream::new(post(daemon, Some("mux"), Some(session), body).await)
}

/// A `tools/call` of the fixture's `ask` with id `id` and progress token `"tok"`.
fn ask_call(id: u64, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "ask", "arguments": arguments, "_meta": {"progressToken": "tok"}}
    })
}

/// POSTs a caller's answer (a response message) and checks it is accepted with 202.
async fn answer(daemon: &Daemon, session: &str, message: &Value) {
    let resp = post(daemon, Some("mux"), Some(session), message).await;
    let status = resp.status();
    let body = timeout(HTTP_TIMEOUT, resp.bytes()).await.unwrap().unwrap();
    assert_eq!(
        (status.as_u16(), &body[..]),
        (202, &b""[..]),
        "a caller's response must be accepted with an empty 202: {message}"
    );
}

/// A sampling answer whose text is `text`.
fn sampled(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": sampled_result(text)})
}

/// Everything one call's SSE reply carried, in order, with the caller's answers given as the
/// server-to-client requests arrived.
#[derive(Debug, Default)]
struct Reply {
    progress: Vec<Value>,
    requests: Vec<Value>,
    order: Vec<&'static str>,
    last: Value,
}

/// Reads `stream` to its final response, answering each server-to-client request with
/// `respond(request)` POSTed in `session`.
async fn drive(
    daemon: &Daemon,
    session: &str,
    mut stream: SseStream,
    respond: impl Fn(&Value) -> Value,
) -> Reply {
    let mut reply = Reply::default();
    loop {
        let contract = "a call whose server-to-client requests are answered must finish";
        let message = stream.next_message(HTTP_TIMEOUT, contract).await;
        let kind = match (message.get("method"), message.get("id")) {
            (Some(_), Some(_)) => "request",
            (Some(m), None) if m == "notifications/progress" => "progress",
            (Some(_), None) => "notification",
            (None, _) => "final",
        };
        reply.order.push(kind);
        match kind {
            "request" => {
                answer(daemon, session, &respond(&message)).await;
                reply.requests.push(message);
            }
            "progress" => reply.progress.push(message),
            "final" => {
                reply.last = message;
                return reply;
            }
            _ => {}
        }
    }
}

/// Calls the fixture's `wait` with `args` (plus its bound) and returns its result.
async fn fixture_wait(daemon: &Daemon, session: &str, args: Value, contract: &str) -> Value {
    let mut args = args;
    args["ms"] = json!(FIXTURE_WAIT_MS);
    let called = timeout(
        HTTP_TIMEOUT,
        call_tool(daemon, "mux", session, "wait", args),
    )
    .await
    .unwrap_or_else(|_| panic!("{contract} (the fixture's wait call did not return)"));
    called["result"].clone()
}

/// An `echo` call whose answer proves the child read every line sent before it.
async fn barrier(daemon: &Daemon, session: &str) {
    let called = call_tool(daemon, "mux", session, "echo", json!({"barrier": true})).await;
    assert_eq!(
        called["result"]["content"][0]["text"], "ok",
        "the child must keep serving: {called:#}"
    );
}

/// The tenant's entry in the admin `/status`.
async fn tenant_status(daemon: &Daemon, client_id: &str) -> Value {
    let url = format!("http://{}/status", daemon.admin_addr().await);
    let resp = daemon.http().get(url).send().await;
    let status: Value = resp.unwrap().json().await.expect("/status must be JSON");
    let tenants = status["tenants"].as_array().expect("/status lists tenants");
    let tenant = tenants.iter().find(|t| t["client_id"] == client_id);
    tenant.cloned().unwrap()
}
