//! Stateless-era (2026-07-28) callers bridged onto the session-era child (DESIGN §3): the
//! validation ladder's exact statuses and codes, `server/discover` from the child's
//! `initialize` result, sessionless relaying with progress and cancellation, rmcp's client
//! in its auto lifecycle, and dual-era callers falling back to `initialize` where they must.

use std::collections::HashMap;
use std::time::Duration;

use rmcp::ClientServiceExt;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::util::{
    ACCEPT_BOTH, Daemon, HTTP_TIMEOUT, SseStream, TempClients, call_tool, echo_spec, initialize,
    messages, post, response_to,
};

/// The stateless protocol version.
const STATELESS: &str = "2026-07-28";
/// The stateless-era error codes, which only a real stateless-era error may carry.
const MODERN_CODES: std::ops::RangeInclusive<i64> = -32022..=-32020;
/// Bound for an rmcp client's whole exchange (child start, discover, list, call).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `_meta` a 2026-07-28 caller puts on every request.
pub(crate) fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "mcpmux-e2e-stateless", "version": "0.0.0"},
    })
}

/// One stateless POST: a body and the headers sent with it, valid until a test edits them.
pub(crate) struct Probe {
    pub(crate) body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Probe {
    /// A conforming request: `_meta` in the params, `MCP-Protocol-Version`, `Mcp-Method`, and
    /// `Mcp-Name` where the spec requires it.
    pub(crate) fn valid(id: Value, method: &str, mut params: Value) -> Probe {
        params["_meta"] = modern_meta();
        let mut headers = vec![
            ("MCP-Protocol-Version", STATELESS.to_owned()),
            ("Mcp-Method", method.to_owned()),
        ];
        let name = match method {
            "tools/call" | "prompts/get" => params.get("name"),
            "resources/read" => params.get("uri"),
            _ => None,
        };
        if let Some(name) = name.and_then(Value::as_str) {
            headers.push(("Mcp-Name", name.to_owned()));
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        Probe { body, headers }
    }

    fn without(mut self, name: &str) -> Probe {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn header(self, name: &'static str, value: &str) -> Probe {
        let mut probe = self.without(name);
        probe.headers.push((name, value.to_owned()));
        probe
    }

    /// Sends `name` a second time, after the first.
    pub(crate) fn again(mut self, name: &'static str, value: &str) -> Probe {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Sets (`Some`) or removes (`None`) one `_meta` key.
    pub(crate) fn meta(mut self, key: &str, value: Option<Value>) -> Probe {
        let meta = self.body["params"]["_meta"].as_object_mut().unwrap();
        match value {
            Some(value) => meta.insert(key.to_owned(), value),
            None => meta.remove(key),
        };
        self
    }

    fn no_meta(mut self) -> Probe {
        self.body["params"].as_object_mut().unwrap().remove("_meta");
        self
    }

    pub(crate) async fn send(&self, daemon: &Daemon, client_id: &str) -> reqwest::Response {
        self.send_with(daemon, client_id, &[]).await
    }

    /// Sends with `raw` headers added, whose values need not be text.
    pub(crate) async fn send_with(
        &self,
        daemon: &Daemon,
        client_id: &str,
        raw: &[(&str, &[u8])],
    ) -> reqwest::Response {
        let mut req = daemon
            .http()
            .post(daemon.url())
            .header("Accept", ACCEPT_BOTH)
            .header("Content-Type", "application/json")
            .header("X-Client-ID", client_id);
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        for (name, value) in raw {
            let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            req = req.header(*name, value);
        }
        req.body(self.body.to_string())
            .send()
            .await
            .expect("daemon must answer a POST to /mcp")
    }

    /// This POST as an `http::Request`, for a client other than reqwest (an HTTP/2 one).
    pub(crate) fn request(
        &self,
        daemon: &Daemon,
        client_id: &str,
    ) -> http::Request<http_body_util::Full<bytes::Bytes>> {
        let mut req = http::Request::post(daemon.url())
            .header("Accept", ACCEPT_BOTH)
            .header("Content-Type", "application/json")
            .header("X-Client-ID", client_id);
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        let body = http_body_util::Full::new(bytes::Bytes::from(self.body.to_string()));
        req.body(body).expect("a probe's headers are valid")
    }

    /// Sends, asserts 200 without a session id, and returns the response to this request.
    pub(crate) async fn answer(&self, daemon: &Daemon, client_id: &str) -> Value {
        let resp = self.send(daemon, client_id).await;
        assert_eq!(
            resp.status(),
            200,
            "a valid stateless request must get 200: {:#}",
            self.body
        );
        assert!(
            resp.headers().get("mcp-session-id").is_none(),
            "the stateless era has no sessions: no Mcp-Session-Id may be minted"
        );
        response_to(&messages(resp).await, &self.body["id"]).clone()
    }
}

/// Reads a refusal: its status and its JSON-RPC error object, checking the id is echoed.
pub(crate) async fn refusal(resp: reqwest::Response, id: &Value) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").cloned();
    let body: Value = timeout(HTTP_TIMEOUT, resp.json())
        .await
        .expect("a refusal body must arrive")
        .unwrap_or_else(|e| {
            panic!("a {status} refusal must be JSON ({e}), content type {ctype:?}")
        });
    assert_eq!(
        &body["id"], id,
        "a refusal must answer the request's id: {body:#}"
    );
    (status, body["error"].clone())
}

async fn echo_daemon() -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("acme", &echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

/// The tenant's entry in the admin `/status`.
async fn tenant_status(daemon: &Daemon, client_id: &str) -> Value {
    let url = format!("http://{}/status", daemon.admin_addr().await);
    let status: Value = daemon
        .http()
        .get(url)
        .send()
        .await
        .expect("admin /status must answer")
        .json()
        .await
        .expect("/status must be JSON");
    let tenants = status["tenants"].as_array().expect("/status lists tenants");
    let tenant = tenants.iter().find(|t| t["client_id"] == client_id);
    tenant
        .cloned()
        .unwrap_or_else(|| panic!("{client_id} must be in /status: {status:#}"))
}

#[tokio::test]
async fn discover_is_answered_from_the_childs_initialize_result() {
    let (_clients, daemon) = echo_daemon().await;

    let probe = Probe::valid(json!("d-1"), "server/discover", json!({}));
    let reply = probe.answer(&daemon, "acme").await;

    let result = &reply["result"];
    assert_eq!(result["resultType"], "complete", "{reply:#}");
    let versions = result["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    assert_eq!(
        versions[0], STATELESS,
        "the stateless version comes first: {reply:#}"
    );
    assert!(
        versions.iter().any(|v| v == "2025-11-25"),
        "session-era versions are served too (through initialize): {reply:#}"
    );
    assert!(
        result["capabilities"]["tools"].is_object(),
        "capabilities are the child's own: {reply:#}"
    );
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "mcp-echo",
        "serverInfo is the child's, under _meta: {reply:#}"
    );
    assert!(
        result["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("mcpmux")),
        "instructions are the child's: {reply:#}"
    );
    assert_eq!(
        (&result["ttlMs"], &result["cacheScope"]),
        (&json!(0), &json!("private"))
    );
    assert_eq!(
        tenant_status(&daemon, "acme").await["sessions"],
        0,
        "answering a stateless caller must not open a session"
    );
}

#[tokio::test]
async fn requests_are_relayed_to_the_child_without_a_session() {
    let (_clients, daemon) = echo_daemon().await;

    let listed = Probe::valid(json!(1), "tools/list", json!({}))
        .answer(&daemon, "acme")
        .await;
    let result = &listed["result"];
    assert!(
        result["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "echo")),
        "tools/list must carry the child's tools: {listed:#}"
    );
    // mcp-echo (rmcp) sets some of these itself when it sees 2026-07-28 in `_meta`; mcpmux
    // adds whichever a child leaves out (the Python interop test has a child that sets none).
    assert_eq!(result["resultType"], "complete", "{listed:#}");
    assert!(
        result["ttlMs"].as_u64().is_some()
            && ["public", "private"].contains(&result["cacheScope"].as_str().unwrap_or("")),
        "2026-07-28 list results carry cache hints: {listed:#}"
    );

    let params = json!({"name": "echo", "arguments": {"message": "stateless hi"}});
    let called = Probe::valid(json!("c"), "tools/call", params)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "stateless hi",
        "{called:#}"
    );
    assert_eq!(called["result"]["resultType"], "complete", "{called:#}");
    assert!(
        called["result"].get("ttlMs").is_none(),
        "tools/call results are not cacheable: {called:#}"
    );

    // A name outside the header-safe set travels base64-encoded and still matches.
    let params = json!({"name": "echo", "arguments": {"message": "b64"}});
    let encoded =
        Probe::valid(json!(2), "tools/call", params).header("Mcp-Name", "=?base64?ZWNobw==?=");
    let called = encoded.answer(&daemon, "acme").await;
    assert_eq!(called["result"]["content"][0]["text"], "b64", "{called:#}");
    assert_eq!(tenant_status(&daemon, "acme").await["sessions"], 0);
}

#[tokio::test]
async fn invalid_stateless_requests_get_400_with_exactly_their_code() {
    let (_clients, daemon) = echo_daemon().await;
    let call = || {
        let params = json!({"name": "echo", "arguments": {"message": "x"}});
        Probe::valid(json!(7), "tools/call", params)
    };
    let version_key = "io.modelcontextprotocol/protocolVersion";
    let caps_key = "io.modelcontextprotocol/clientCapabilities";
    let cases: Vec<(&str, Probe, i64)> = vec![
        (
            "Mcp-Method differs from the body",
            call().header("Mcp-Method", "tools/list"),
            -32020,
        ),
        ("Mcp-Method missing", call().without("Mcp-Method"), -32020),
        (
            "Mcp-Method given twice",
            call().again("Mcp-Method", "tools/call"),
            -32020,
        ),
        (
            "Mcp-Name differs from params.name",
            call().header("Mcp-Name", "add"),
            -32020,
        ),
        (
            "Mcp-Name missing on tools/call",
            call().without("Mcp-Name"),
            -32020,
        ),
        (
            "Mcp-Name not canonical base64",
            call().header("Mcp-Name", "=?base64?ZWNobx==?="),
            -32020,
        ),
        (
            "MCP-Protocol-Version missing",
            call().without("MCP-Protocol-Version"),
            -32020,
        ),
        (
            "MCP-Protocol-Version differs from _meta",
            call().header("MCP-Protocol-Version", "2025-11-25"),
            -32020,
        ),
        (
            "version not served",
            call()
                .header("MCP-Protocol-Version", "2099-01-01")
                .meta(version_key, Some(json!("2099-01-01"))),
            -32022,
        ),
        ("_meta missing", call().no_meta(), -32602),
        (
            "clientCapabilities missing",
            call().meta(caps_key, None),
            -32602,
        ),
        (
            "clientCapabilities not an object",
            call().meta(caps_key, Some(json!([]))),
            -32602,
        ),
    ];
    for (what, probe, want) in cases {
        let (status, error) = refusal(probe.send(&daemon, "acme").await, &json!(7)).await;
        assert_eq!(
            (status, error["code"].as_i64()),
            (400, Some(want)),
            "{what}: must be 400 with {want}: {error:#}"
        );
        if want == -32022 {
            assert_eq!(error["data"]["requested"], "2099-01-01", "{error:#}");
            let supported = error["data"]["supported"]
                .as_array()
                .expect("data.supported");
            for version in [STATELESS, "2025-11-25"] {
                assert!(supported.iter().any(|v| v == version), "{what}: {error:#}");
            }
        }
    }
    assert_eq!(
        tenant_status(&daemon, "acme").await["state"],
        "stopped",
        "refused requests must never start the tenant's child"
    );
}

#[tokio::test]
async fn sessionless_requests_without_a_stateless_version_keep_the_session_era_400() {
    let (_clients, daemon) = echo_daemon().await;
    // No version anywhere, or a session-era one: not served statelessly, so the answer must
    // carry no stateless-era code and a dual-era caller falls back to `initialize`.
    let bare = json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {}});
    let legacy_meta = Probe::valid(json!(3), "server/discover", json!({}))
        .header("MCP-Protocol-Version", "2025-11-25")
        .meta(
            "io.modelcontextprotocol/protocolVersion",
            Some(json!("2025-11-25")),
        );
    let responses = [
        (
            "no version at all",
            post(&daemon, Some("acme"), None, &bare).await,
        ),
        (
            "a session-era version",
            legacy_meta.send(&daemon, "acme").await,
        ),
    ];
    for (what, resp) in responses {
        let (status, error) = refusal(resp, &json!(null)).await;
        assert_eq!(status, 400, "{what}: {error:#}");
        let code = error["code"].as_i64().expect("a JSON-RPC error code");
        assert!(
            !MODERN_CODES.contains(&code),
            "{what}: the refusal must not look stateless-era (code {code}), or dual-era callers cannot fall back"
        );
    }

    let session = initialize(&daemon, "acme").await;
    let called = call_tool(
        &daemon,
        "acme",
        &session,
        "echo",
        json!({"message": "fell back"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "fell back",
        "{called:#}"
    );
}

#[tokio::test]
async fn methods_the_stateless_era_lacks_are_404_method_not_found() {
    let (_clients, daemon) = echo_daemon().await;
    // `ping` was removed in 2026-07-28 (answered by mcpmux); `x/unknown` is unknown to the
    // child, whose "method not found" becomes the 404 the era requires.
    for (method, id) in [("ping", json!("p")), ("x/unknown", json!("u"))] {
        let resp = Probe::valid(id.clone(), method, json!({}))
            .send(&daemon, "acme")
            .await;
        let (status, error) = refusal(resp, &id).await;
        assert_eq!(
            (status, error["code"].as_i64()),
            (404, Some(-32601)),
            "{method}: {error:#}"
        );
    }
}

#[tokio::test]
async fn progress_streams_and_closing_the_stream_cancels_at_the_child() {
    let clients = TempClients::new();
    // rmcp logs each cancellation it receives at info; the daemon logs the child's stderr.
    let spec = json!({"command": "mcp-echo", "env": {"RUST_LOG": "mcp_echo=info,rmcp=info"}});
    clients.write("acme", &spec);
    let daemon = Daemon::start(&clients, &[]).await;

    let params = json!({"name": "slow", "arguments": {"ms": 60000, "steps": 600}});
    let mut probe = Probe::valid(json!(9), "tools/call", params);
    probe.body["params"]["_meta"]["progressToken"] = json!("tok");
    let mut stream = SseStream::new(probe.send(&daemon, "acme").await);
    let progress = stream
        .next_message(
            HTTP_TIMEOUT,
            "a stateless call with a progressToken must stream progress",
        )
        .await;
    assert_eq!(progress["method"], "notifications/progress", "{progress:#}");
    assert_eq!(
        progress["params"]["progressToken"], "tok",
        "the caller's token is restored"
    );

    drop(stream); // closing the reply is the cancellation of this era
    let cancelled = daemon.wait_for_log("caller went away", HTTP_TIMEOUT).await;
    assert!(
        cancelled.is_some(),
        "closing a stateless SSE reply must send the child notifications/cancelled"
    );
}

/// An rmcp client over Streamable HTTP with the tenant header, in `lifecycle` mode.
async fn rmcp_client(
    daemon: &Daemon,
    client_id: &str,
    lifecycle: rmcp::ClientLifecycleMode,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let headers = HashMap::from([(
        http::HeaderName::from_static("x-client-id"),
        http::HeaderValue::from_str(client_id).unwrap(),
    )]);
    let config =
        StreamableHttpClientTransportConfig::with_uri(daemon.url()).custom_headers(headers);
    let transport = StreamableHttpClientTransport::from_config(config);
    timeout(
        CLIENT_TIMEOUT,
        ().serve_with_lifecycle(transport, lifecycle),
    )
    .await
    .expect("the rmcp client's startup must finish")
    .expect("the rmcp client must connect through mcpmux")
}

async fn rmcp_echo(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    text: &str,
) -> Value {
    let args = json!({"message": text}).as_object().cloned().unwrap();
    let call = client.call_tool(CallToolRequestParams::new("echo").with_arguments(args));
    let result = timeout(CLIENT_TIMEOUT, call)
        .await
        .expect("tools/call must be answered")
        .expect("tools/call must succeed");
    serde_json::to_value(result).unwrap()
}

#[tokio::test]
async fn rmcp_client_in_auto_mode_completes_discover_and_tools_call_statelessly() {
    let (_clients, daemon) = echo_daemon().await;
    let lifecycle = rmcp::ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: None,
    };
    let client = rmcp_client(&daemon, "acme", lifecycle).await;

    let info = client
        .peer_info()
        .expect("a connected client knows its server");
    assert_eq!(
        info.protocol_version,
        ProtocolVersion::V_2026_07_28,
        "{info:?}"
    );
    let name = info.server_info.as_ref().map(|s| s.name.as_str());
    assert_eq!(
        name,
        Some("mcp-echo"),
        "serverInfo comes from the child: {info:?}"
    );
    let tools = timeout(CLIENT_TIMEOUT, client.list_all_tools())
        .await
        .expect("tools/list must be answered")
        .expect("tools/list must succeed");
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let result = rmcp_echo(&client, "via rmcp, statelessly").await;
    assert_eq!(
        result["content"][0]["text"], "via rmcp, statelessly",
        "{result:#}"
    );
    assert_eq!(
        tenant_status(&daemon, "acme").await["sessions"],
        0,
        "a stateless rmcp client must never have initialized a session"
    );
    let _ = timeout(CLIENT_TIMEOUT, client.cancel()).await;
}

#[tokio::test]
async fn dual_era_rmcp_client_preferring_a_session_era_version_falls_back_to_initialize() {
    let (_clients, daemon) = echo_daemon().await;
    // Its probe names 2025-11-25, which mcpmux serves only through initialize: the refusal
    // must be one it recognises as legacy, and the handshake that follows must work.
    let lifecycle = rmcp::ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2025_11_25],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    let client = rmcp_client(&daemon, "acme", lifecycle).await;

    let info = client
        .peer_info()
        .expect("a connected client knows its server");
    assert_eq!(
        info.protocol_version,
        ProtocolVersion::V_2025_11_25,
        "{info:?}"
    );
    let result = rmcp_echo(&client, "after fallback").await;
    assert_eq!(result["content"][0]["text"], "after fallback", "{result:#}");
    assert_eq!(
        tenant_status(&daemon, "acme").await["sessions"],
        1,
        "the fallback must have gone through initialize, opening a session"
    );
    let _ = timeout(CLIENT_TIMEOUT, client.cancel()).await;
}

#[tokio::test]
async fn a_childs_retired_resource_not_found_code_reaches_stateless_callers_as_invalid_params() {
    // 2026-07-28 forbids -32002; a session-era caller still gets the child's bytes.
    let clients = TempClients::new();
    clients.write("acme", &crate::util::fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &[]).await;
    let uri = json!("test://missing");
    let probe = Probe::valid(json!(1), "resources/read", json!({"uri": uri}));
    let answer = probe.answer(&daemon, "acme").await;
    assert_eq!(
        answer["error"],
        json!({"code": -32602, "message": "Resource not found", "data": {"uri": uri}}),
        "{answer:#}"
    );
    let session = initialize(&daemon, "acme").await;
    let body =
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": uri}});
    let resp = post(&daemon, Some("acme"), Some(&session), &body).await;
    let got = response_to(&messages(resp).await, &json!(2)).clone();
    assert_eq!(got["error"]["code"], -32002, "{got:#}");
}
