//! rmcp's Streamable HTTP client (session mode, `X-Client-ID` as a custom header) as the
//! caller, server-everything as the child. [`Recorder`] answers sampling and elicitation and
//! reports every request and notification its handlers see.
#![allow(
    deprecated,
    reason = "sampling, logging and resources/subscribe are deprecated by 2026-07-28, \
              and are exactly what a session-era caller uses"
)]

use std::collections::HashMap;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, CompletionContext,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ElicitationAction, ErrorData, GetPromptRequestParams, Implementation, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
    ReadResourceRequestParams, ResourceUpdatedNotificationParam, SamplingMessage,
    SetLevelRequestParams, SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::{
    NOTIFICATION_WAIT, RMCP_TIMEOUT, SAMPLED_TEXT, SUBSCRIBED_URI, TEXT_TEMPLATE, ask_outcome,
    cancellations_of, interop_daemon, only_call, texts_of,
};
use crate::util::{ChildLog, Daemon};

/// What the client's handler saw, in the order its handlers ran.
#[derive(Debug)]
enum Seen {
    Progress(Value),
    Log(Value),
    Updated(String),
    Sampling(Value),
    Elicitation(Value),
}

/// A caller declaring sampling and elicitation, answering both, reporting everything.
struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
}

impl Recorder {
    fn report(&self, seen: Seen) {
        let _ = self.seen.send(seen); // the test may have stopped listening
    }
}

impl ClientHandler for Recorder {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.report(Seen::Sampling(serde_json::to_value(&params).unwrap()));
        let message = SamplingMessage::assistant_text(SAMPLED_TEXT);
        Ok(CreateMessageResult::new(message, "fidelity-model".into()))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.report(Seen::Elicitation(serde_json::to_value(&request).unwrap()));
        let content = json!({"name": "Ada Lovelace", "check": true});
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.report(Seen::Progress(serde_json::to_value(&params).unwrap()));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.report(Seen::Log(serde_json::to_value(&params).unwrap()));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.report(Seen::Updated(params.uri));
    }

    fn get_info(&self) -> ClientConfig {
        let caps = ClientCapabilities::builder()
            .enable_sampling()
            .enable_elicitation()
            .build();
        ClientConfig::new(caps, Implementation::new("mcpmux-fidelity", "0.0.0"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }
}

type Client = RunningService<RoleClient, Recorder>;

/// Connects in session mode (initialize) with `X-Client-ID: client_id`.
async fn connect(daemon: &Daemon, client_id: &str) -> (Client, mpsc::UnboundedReceiver<Seen>) {
    let headers = HashMap::from([(
        http::HeaderName::from_static("x-client-id"),
        http::HeaderValue::from_str(client_id).unwrap(),
    )]);
    let config =
        StreamableHttpClientTransportConfig::with_uri(daemon.url()).custom_headers(headers);
    let transport = StreamableHttpClientTransport::from_config(config);
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = Recorder { seen: tx };
    let client = timeout(
        RMCP_TIMEOUT,
        recorder.serve_with_lifecycle(transport, ClientLifecycleMode::Initialize),
    )
    .await
    .expect("the rmcp client's handshake through mcpmux must finish")
    .expect("the rmcp client must connect through mcpmux");
    (client, rx)
}

fn tool(name: &'static str, arguments: Value) -> CallToolRequestParams {
    let arguments = arguments.as_object().cloned().unwrap();
    CallToolRequestParams::new(name).with_arguments(arguments)
}

/// `tools/call`, bounded; the result as JSON.
async fn call(client: &Client, name: &'static str, arguments: Value) -> Value {
    let result = timeout(RMCP_TIMEOUT, client.call_tool(tool(name, arguments)))
        .await
        .unwrap_or_else(|_| panic!("tools/call {name} must be answered"))
        .unwrap_or_else(|e| panic!("tools/call {name} must succeed: {e}"));
    serde_json::to_value(result).unwrap()
}

fn ping() -> ClientRequest {
    ClientRequest::PingRequest(rmcp::model::PingRequest {
        method: Default::default(),
        extensions: Default::default(),
    })
}

fn read(uri: &str) -> ReadResourceRequestParams {
    ReadResourceRequestParams::new(uri)
}

fn prompt(name: &str, arguments: Value) -> GetPromptRequestParams {
    GetPromptRequestParams::new(name).with_arguments(arguments.as_object().cloned().unwrap())
}

fn context(pairs: &[(&str, &str)]) -> CompletionContext {
    let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    CompletionContext::with_arguments(map.collect())
}

/// `logging/setLevel debug`, bounded.
async fn set_debug_level(client: &Client) {
    let set = client.set_level(SetLevelRequestParams::new(LoggingLevel::Debug));
    timeout(RMCP_TIMEOUT, set)
        .await
        .expect("logging/setLevel must be answered")
        .expect("logging/setLevel must succeed");
}

/// `resources/subscribe`, bounded.
async fn subscribe(client: &Client, uri: &str) {
    let subscribed = client.subscribe(SubscribeRequestParams::new(uri));
    timeout(RMCP_TIMEOUT, subscribed)
        .await
        .expect("resources/subscribe must be answered")
        .expect("resources/subscribe must succeed");
}

/// Ends the client, bounded (its DELETE ends the session).
async fn close(client: Client) {
    let _ = timeout(RMCP_TIMEOUT, client.cancel()).await;
}

/// The next thing the rmcp client's handler saw that `pick` accepts, skipping others.
async fn next_seen<T>(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    within: Duration,
    contract: &str,
    mut pick: impl FnMut(Seen) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = timeout(left, rx.recv()).await;
        let seen = seen.unwrap_or_else(|_| panic!("{contract}"));
        let seen = seen.unwrap_or_else(|| panic!("client handler gone: {contract}"));
        if let Some(hit) = pick(seen) {
            return hit;
        }
    }
}

/// Everything the handler saw so far, without waiting.
fn drain_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Ok(seen) = rx.try_recv() {
        out.push(seen);
    }
    out
}

#[tokio::test]
async fn rmcp_client_lists_tools_and_gets_a_long_tools_progress_before_its_result() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    let tools = timeout(RMCP_TIMEOUT, client.list_all_tools())
        .await
        .expect("tools/list must be answered")
        .expect("tools/list must succeed");
    for name in [
        "echo",
        "trigger-long-running-operation",
        "trigger-elicitation-request",
    ] {
        assert!(tools.iter().any(|t| t.name == name), "{name} in {tools:?}");
    }
    let args = json!({"duration": 2, "steps": 4});
    let result = call(&client, "trigger-long-running-operation", args).await;
    // rmcp runs each notification handler on a task of its own, so only the progress sent
    // well before the result (steps 1-3, 0.5 s apart) is ordered against it at this API;
    // the wire order itself is checked on raw HTTP in `mux.rs`.
    let before: Vec<f64> = drain_seen(&mut rx)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Progress(p) => p["progress"].as_f64(),
            _ => None,
        })
        .collect();
    assert!(
        before.len() >= 3 && before[..3] == [1.0, 2.0, 3.0],
        "progress 1-3 must reach the caller before the result: {before:?}"
    );
    let mut all = before;
    while all.len() < 4 {
        let contract = "all four progress notifications must reach the rmcp client";
        let p = next_seen(&mut rx, RMCP_TIMEOUT, contract, |s| match s {
            Seen::Progress(p) => p["progress"].as_f64(),
            _ => None,
        })
        .await;
        all.push(p);
    }
    assert_eq!(all, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        result["content"][0]["text"],
        "Long running operation completed. Duration: 2 seconds, Steps: 4."
    );
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_answers_the_childs_sampling_request() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    let args = json!({"prompt": "fidelity prompt", "maxTokens": 20});
    let result = call(&client, "trigger-sampling-request", args).await;

    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(SAMPLED_TEXT),
        "the tool must return what the caller sampled: {result:#}"
    );
    let asked: Vec<Value> = drain_seen(&mut rx)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Sampling(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "one sampling request, once: {asked:#?}");
    assert_eq!(
        asked[0]["messages"][0]["content"]["text"],
        "Resource trigger-sampling-request context: fidelity prompt"
    );
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_answers_the_childs_elicitation_request() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    let result = call(&client, "trigger-elicitation-request", json!({})).await;

    let texts = texts_of(&result);
    assert!(
        texts.iter().any(|t| t.contains("- Name: Ada Lovelace")),
        "the tool must return what the caller entered: {result:#}"
    );
    let asked: Vec<Value> = drain_seen(&mut rx)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Elicitation(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "one elicitation request, once: {asked:#?}");
    assert_eq!(
        asked[0]["message"],
        "Please provide inputs for the following fields:"
    );
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_lists_reads_and_subscribes_to_resources_and_gets_the_update() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    let listed = timeout(RMCP_TIMEOUT, client.list_all_resources())
        .await
        .expect("resources/list must be answered")
        .expect("resources/list must succeed");
    let uri = "demo://resource/static/document/instructions.md";
    assert!(listed.iter().any(|r| r.uri == uri), "{listed:?}");
    let templates = timeout(RMCP_TIMEOUT, client.list_all_resource_templates())
        .await
        .expect("resources/templates/list must be answered")
        .expect("resources/templates/list must succeed");
    assert!(
        templates.iter().any(|t| t.uri_template == TEXT_TEMPLATE),
        "{templates:?}"
    );
    let read = timeout(RMCP_TIMEOUT, client.read_resource(read(SUBSCRIBED_URI)))
        .await
        .expect("resources/read must be answered")
        .expect("resources/read must succeed");
    let read = serde_json::to_value(read).unwrap();
    let text = read["contents"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Resource 1: This is a plaintext resource"),
        "{read:#}"
    );
    subscribe(&client, SUBSCRIBED_URI).await;
    call(&client, "toggle-subscriber-updates", json!({})).await;

    let contract = "the subscriber must get notifications/resources/updated for its URI";
    let updated = next_seen(&mut rx, NOTIFICATION_WAIT, contract, |s| match s {
        Seen::Updated(uri) => Some(uri),
        _ => None,
    })
    .await;
    assert_eq!(updated, SUBSCRIBED_URI);
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_lists_and_gets_prompts() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, _rx) = connect(&daemon, "everything").await;

    let prompts = timeout(RMCP_TIMEOUT, client.list_all_prompts())
        .await
        .expect("prompts/list must be answered")
        .expect("prompts/list must succeed");
    let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "args-prompt",
            "completable-prompt",
            "resource-prompt",
            "simple-prompt"
        ]
    );
    let args = json!({"city": "Lisbon", "state": "Lisboa"});
    let got = timeout(RMCP_TIMEOUT, client.get_prompt(prompt("args-prompt", args)))
        .await
        .expect("prompts/get must be answered")
        .expect("prompts/get must succeed");
    let got = serde_json::to_value(got).unwrap();
    assert_eq!(
        got["messages"][0]["content"]["text"], "What's weather in Lisbon, Lisboa?",
        "prompts/get arguments must reach the child: {got:#}"
    );
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_gets_completions_for_prompt_and_template_arguments() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, _rx) = connect(&daemon, "everything").await;

    let values = |c: rmcp::model::CompletionInfo| c.values;
    let department =
        client.complete_prompt_argument("completable-prompt", "department", "Eng", None);
    let department = timeout(RMCP_TIMEOUT, department).await.unwrap().unwrap();
    assert_eq!(values(department), ["Engineering"]);
    let context = context(&[("department", "Sales")]);
    let member = client.complete_prompt_argument("completable-prompt", "name", "", Some(context));
    let member = timeout(RMCP_TIMEOUT, member).await.unwrap().unwrap();
    assert_eq!(
        values(member),
        ["David", "Eve", "Frank"],
        "completion context must reach the child"
    );
    let resource_id = client.complete_resource_argument(TEXT_TEMPLATE, "resourceId", "7", None);
    let resource_id = timeout(RMCP_TIMEOUT, resource_id).await.unwrap().unwrap();
    assert_eq!(values(resource_id), ["7"]);
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_sets_its_log_level_and_receives_log_messages() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    set_debug_level(&client).await;
    call(&client, "toggle-simulated-logging", json!({})).await;

    let contract = "a notifications/message must reach the caller that set a log level";
    let log = next_seen(&mut rx, NOTIFICATION_WAIT, contract, |s| match s {
        Seen::Log(params) => Some(params),
        _ => None,
    })
    .await;
    let data = log["data"].as_str().unwrap_or_default();
    assert!(data.contains("message"), "{log:#}");
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_pings_the_child_and_answers_the_childs_ping() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;

    let (client, _rx) = connect(&daemon, "everything").await;
    let pong = timeout(RMCP_TIMEOUT, client.send_request(ping()))
        .await
        .expect("ping must be answered")
        .expect("ping must succeed");
    assert_eq!(serde_json::to_value(pong).unwrap(), json!({}));
    assert_eq!(
        tap.with_method("ping").len(),
        1,
        "the child must get the ping"
    );
    close(client).await;

    // server-everything never pings; the fake child's `ask` does, mid-call.
    let (client, _rx) = connect(&daemon, "fake").await;
    let result = call(&client, "ask", json!({"method": "ping"})).await;
    assert_eq!(
        ask_outcome(&result)["answer"],
        json!({"jsonrpc": "2.0", "id": "ask-1", "result": {}}),
        "the caller's pong must reach the child under the child's own id: {result:#}"
    );
    close(client).await;
}

#[tokio::test]
async fn rmcp_client_cancelling_a_running_tool_cancels_it_at_the_child_once() {
    let (tap, fake) = (ChildLog::new(), ChildLog::new());
    let (_clients, daemon) = interop_daemon(&tap, &fake).await;
    let (client, mut rx) = connect(&daemon, "everything").await;

    let params = tool(
        "trigger-long-running-operation",
        json!({"duration": 600, "steps": 600}),
    );
    let request =
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
    let options = rmcp::service::PeerRequestOptions::no_options();
    let handle = timeout(
        RMCP_TIMEOUT,
        client.send_cancellable_request(request, options),
    )
    .await
    .expect("the long call must be sent")
    .expect("the long call must be accepted");
    let contract = "the long operation's first progress must reach the caller";
    next_seen(&mut rx, RMCP_TIMEOUT, contract, |s| match s {
        Seen::Progress(_) => Some(()),
        _ => None,
    })
    .await;
    timeout(
        RMCP_TIMEOUT,
        handle.cancel(Some("fidelity test cancels".into())),
    )
    .await
    .expect("the cancellation must be sent")
    .expect("the cancellation must be accepted");
    // The echo is sent after the cancellation was accepted, and the tap logs a line before the
    // child reads it: once echo is answered, the log holds every cancellation sent before it.
    let after = call(&client, "echo", json!({"message": "after cancel"})).await;
    assert_eq!(after["content"][0]["text"], "Echo: after cancel");

    let call = only_call(&tap, "trigger-long-running-operation");
    let (mine, all) = cancellations_of(&tap, &call["id"]);
    assert_eq!(
        (mine, all.len()),
        (1, 1),
        "the child must get one notifications/cancelled, for the call's child-side id {}: {all:#?}",
        call["id"]
    );
    close(client).await;
}
