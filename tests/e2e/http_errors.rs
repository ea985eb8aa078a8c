//! DESIGN §3 transport errors through the real binary: each bad request gets its exact status
//! and JSON-RPC error code (`{"jsonrpc":"2.0","id":null,"error":{..}}`), and afterwards the
//! session or tenant it touched still works, so a refusal loses nothing.
//!
//! Also the positive sides of the same rules: `Accept` choosing JSON or SSE, a matching
//! `MCP-Protocol-Version`, an allowed `Origin`, notifications answered with 202.

use serde_json::{Value, json};

use crate::util::{
    ACCEPT_BOTH, Daemon, PROTOCOL_VERSION, TempClients, assert_session_works, echo_spec,
    error_parts, initialize, initialize_params, mcp_request, messages, post_json_only, raw_http,
    response_to, rpc,
};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;

/// A daemon serving the echo child as each of `ids`, started with `extra` flags.
async fn daemon_with(ids: &[&str], extra: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    for id in ids {
        clients.write(id, &echo_spec());
    }
    let daemon = Daemon::start(&clients, extra).await;
    (clients, daemon)
}

/// Status and JSON-RPC error code of a transport error, after checking its whole shape:
/// `application/json`, `jsonrpc` 2.0, `id` null, a non-empty message, nothing else.
async fn transport_error(resp: reqwest::Response) -> (u16, i64) {
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        ctype, "application/json",
        "a transport error is JSON: {body}"
    );
    let shape_ok = body.as_object().is_some_and(|o| o.len() == 3)
        && body["jsonrpc"] == "2.0"
        && body["id"].is_null()
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
    assert!(
        shape_ok,
        "a transport error body must be {{jsonrpc:\"2.0\", id:null, error:{{code, message}}}}: {body}"
    );
    let code = body["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("error.code must be an integer: {body}"));
    (status, code)
}

/// POSTs raw `body` bytes as `application/json` for `client_id` in `session`.
async fn post_bytes(
    daemon: &Daemon,
    client_id: &str,
    session: Option<&str>,
    body: &[u8],
) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, Some(client_id), session)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

fn initialize_body() -> Vec<u8> {
    let req =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    serde_json::to_vec(&req).unwrap()
}

fn tools_list() -> Vec<u8> {
    br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Path and method
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_path_is_404_not_found_before_the_tenant_header() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    for path in ["/", "/mcp/", "/mcpx", "/MCP", "/sse", "/mcp/extra"] {
        for client_id in [None, Some("demo"), Some("a-b")] {
            let mut req = daemon
                .http()
                .post(format!("http://{}{path}", daemon.addr()))
                .header("Accept", ACCEPT_BOTH)
                .header("Content-Type", "application/json");
            if let Some(id) = client_id {
                req = req.header("X-Client-ID", id);
            }
            let resp = req.body(initialize_body()).send().await.unwrap();
            let (status, ctype, body) = error_parts(resp).await;
            assert_eq!(
                (status, ctype.as_str(), &body["code"]),
                (404, "application/json", &json!("NOT_FOUND")),
                "POST {path} (X-Client-ID {client_id:?}) must be 404 NOT_FOUND: {body}"
            );
            assert!(
                body.as_object().is_some_and(|o| o.len() == 2) && body["error"].is_string(),
                "the 404 body must be exactly {{error, code}}: {body}"
            );
        }
    }
    let session = initialize(&daemon, "demo").await;
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn put_and_patch_are_405_with_allow_get_post_delete() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
        let resp = mcp_request(&daemon, method.clone(), Some("demo"), Some(&session))
            .header("Content-Type", "application/json")
            .body(tools_list())
            .send()
            .await
            .unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            allow.as_deref(),
            Some("GET, POST, DELETE"),
            "{method} must name the allowed methods"
        );
        assert_eq!(
            transport_error(resp).await,
            (405, INVALID_REQUEST),
            "{method} /mcp must be 405"
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

// ---------------------------------------------------------------------------------------------
// Accept, Content-Type, body size
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accept_allowing_neither_json_nor_sse_is_406() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    for accept in ["text/html", "application/xml, text/plain", "image/*"] {
        let resp = daemon
            .http()
            .post(daemon.url())
            .header("X-Client-ID", "demo")
            .header("Mcp-Session-Id", &session)
            .header("Accept", accept)
            .header("Content-Type", "application/json")
            .body(tools_list())
            .send()
            .await
            .unwrap();
        assert_eq!(
            transport_error(resp).await,
            (406, INVALID_REQUEST),
            "Accept {accept:?} allows neither application/json nor text/event-stream"
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn missing_accept_accepts_anything_and_is_answered() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    // reqwest always adds `Accept: */*`; a raw request can leave it out.
    let body = tools_list();
    let session = initialize(&daemon, "demo").await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nX-Client-ID: demo\r\nMcp-Session-Id: {session}\r\n\
         Content-Type: application/json\r\nContent-Length: {}",
        daemon.addr(),
        body.len()
    );
    let resp = raw_http(daemon.addr(), &head, &body).await;
    assert_eq!(
        (resp.status, resp.header("content-type")),
        (200, Some("application/json")),
        "a POST without Accept accepts anything, so it gets JSON: {resp:?}"
    );
    let tools = resp.json()["result"]["tools"].clone();
    assert!(
        tools.as_array().is_some_and(|t| !t.is_empty()),
        "tools/list without Accept must still list tools: {tools}"
    );
}

#[tokio::test]
async fn content_type_other_than_json_is_415() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    for ctype in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&session));
        if let Some(ctype) = ctype {
            req = req.header("Content-Type", ctype);
        }
        let resp = req.body(tools_list()).send().await.unwrap();
        assert_eq!(
            transport_error(resp).await,
            (415, INVALID_REQUEST),
            "Content-Type {ctype:?} is not application/json"
        );
    }
    // Parameters and case do not matter.
    let resp = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&session))
        .header("Content-Type", "Application/JSON; charset=utf-8")
        .body(tools_list())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "application/json with a charset is JSON"
    );
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

const SMALL_LIMIT: &str = "2048";

#[tokio::test]
async fn body_over_the_limit_by_content_length_is_413_before_it_is_sent() {
    let (_clients, daemon) = daemon_with(&["demo"], &["--max-body-bytes", SMALL_LIMIT]).await;
    let session = initialize(&daemon, "demo").await;
    // Declared one byte over the limit; the body is never sent, so only an answer that does
    // not wait for it can arrive.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nX-Client-ID: demo\r\nMcp-Session-Id: {session}\r\n\
         Accept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\nContent-Length: 2049",
        daemon.addr()
    );
    let resp = raw_http(daemon.addr(), &head, b"").await;
    let body = resp.json();
    assert_eq!(
        (
            resp.status,
            resp.header("content-type"),
            &body["id"],
            &body["error"]["code"]
        ),
        (
            413,
            Some("application/json"),
            &Value::Null,
            &json!(INVALID_REQUEST)
        ),
        "a declared length over --max-body-bytes must be 413 at once: {body}"
    );
    // Exactly at the limit is accepted.
    let mut at_limit =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":""#.to_vec();
    let pad = 2048 - at_limit.len() - 3;
    at_limit.extend(std::iter::repeat_n(b'x', pad));
    at_limit.extend_from_slice(b"\"}}");
    assert_eq!(at_limit.len(), 2048);
    let resp = post_bytes(&daemon, "demo", Some(&session), &at_limit).await;
    assert_eq!(
        resp.status(),
        200,
        "a body of exactly --max-body-bytes is accepted"
    );
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_and_the_daemon_keeps_serving() {
    let (_clients, daemon) = daemon_with(&["demo"], &["--max-body-bytes", SMALL_LIMIT]).await;
    let session = initialize(&daemon, "demo").await;
    // No Content-Length: the limit can only be enforced while reading the stream.
    let mut first = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":""#.to_vec();
    first.extend(std::iter::repeat_n(b'x', 512));
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(first)];
    chunks.extend((0..4).map(|_| Ok(vec![b'x'; 512])));
    chunks.push(Ok(b"\"}}".to_vec()));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&session))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("daemon must answer an over-long chunked POST");
    assert_eq!(
        transport_error(resp).await,
        (413, INVALID_REQUEST),
        "a chunked body growing past --max-body-bytes must be 413"
    );
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
    let other = initialize(&daemon, "demo").await;
    assert_session_works(&daemon, "demo", &other, "nothing else was lost").await;
}

// ---------------------------------------------------------------------------------------------
// Message shape
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_parse_error() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let bodies: &[&[u8]] = &[
        b"{not json",
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list""#,
        b"",
        b"[1,",
        b"\xff\xfe",
    ];
    for body in bodies {
        let resp = post_bytes(&daemon, "demo", Some(&session), body).await;
        assert_eq!(
            transport_error(resp).await,
            (400, PARSE_ERROR),
            "{:?} is not JSON",
            String::from_utf8_lossy(body)
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn batch_array_is_400_invalid_request() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let bodies: &[&[u8]] = &[
        br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
        br#" [{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
        b"[]",
    ];
    for body in bodies {
        let resp = post_bytes(&daemon, "demo", Some(&session), body).await;
        assert_eq!(
            transport_error(resp).await,
            (400, INVALID_REQUEST),
            "a batch is unsupported: {:?}",
            String::from_utf8_lossy(body)
        );
    }
    // A batched initialize creates no session either.
    let batch = [b"[".as_slice(), &initialize_body(), b"]"].concat();
    let resp = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), None)
        .header("Content-Type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("mcp-session-id").is_none(),
        "a refused batch opens no session"
    );
    assert_eq!(transport_error(resp).await, (400, INVALID_REQUEST));
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn message_of_the_wrong_shape_is_400_invalid_request() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let bodies = [
        ("missing jsonrpc", json!({"id": 1, "method": "tools/list"})),
        (
            "jsonrpc 1.0",
            json!({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}),
        ),
        (
            "id as float",
            json!({"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"}),
        ),
        (
            "id null on a request",
            json!({"jsonrpc": "2.0", "id": null, "method": "tools/list"}),
        ),
        (
            "id as object",
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}),
        ),
        (
            "no method, result or error",
            json!({"jsonrpc": "2.0", "id": 1}),
        ),
        (
            "method and result",
            json!({"jsonrpc": "2.0", "id": 1, "method": "x", "result": {}}),
        ),
        ("a JSON string", json!("tools/list")),
    ];
    for (case, body) in bodies {
        let resp = post_bytes(
            &daemon,
            "demo",
            Some(&session),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(
            transport_error(resp).await,
            (400, INVALID_REQUEST),
            "{case}: {body} is JSON but not a JSON-RPC 2.0 message"
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_without_session_id_is_400() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let resp = post_bytes(&daemon, "demo", None, &tools_list()).await;
    assert_eq!(
        transport_error(resp).await,
        (400, INVALID_REQUEST),
        "tools/list without Mcp-Session-Id must be 400"
    );
    let resp = mcp_request(&daemon, reqwest::Method::DELETE, Some("demo"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(
        transport_error(resp).await,
        (400, INVALID_REQUEST),
        "DELETE without Mcp-Session-Id must be 400"
    );
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn unknown_session_id_is_404() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let forged = "0".repeat(64);
    let mut flipped = session.clone().into_bytes();
    flipped[63] = if flipped[63] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for sid in [forged.as_str(), flipped.as_str(), "x", &session[..63]] {
        let resp = post_bytes(&daemon, "demo", Some(sid), &tools_list()).await;
        assert_eq!(
            transport_error(resp).await,
            (404, INVALID_REQUEST),
            "Mcp-Session-Id {sid:?} was never issued"
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn session_id_used_with_another_tenants_header_is_404_and_stays_valid_for_its_own() {
    let (_clients, daemon) = daemon_with(&["alpha", "beta"], &[]).await;
    let alpha = initialize(&daemon, "alpha").await;
    let beta = initialize(&daemon, "beta").await;
    for (sid, wrong) in [(&alpha, "beta"), (&beta, "alpha")] {
        let resp = post_bytes(&daemon, wrong, Some(sid), &tools_list()).await;
        assert_eq!(
            transport_error(resp).await,
            (404, INVALID_REQUEST),
            "another tenant's session id must be unknown to {wrong}"
        );
        let resp = mcp_request(&daemon, reqwest::Method::DELETE, Some(wrong), Some(sid))
            .send()
            .await
            .unwrap();
        assert_eq!(
            transport_error(resp).await,
            (404, INVALID_REQUEST),
            "{wrong} must not be able to end another tenant's session"
        );
    }
    assert_session_works(&daemon, "alpha", &alpha, "nothing else was lost").await;
    assert_session_works(&daemon, "beta", &beta, "nothing else was lost").await;
}

#[tokio::test]
async fn protocol_version_header_must_name_a_supported_revision() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let post_with_version = |version: &'static str| {
        mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&session))
            .header("Content-Type", "application/json")
            .header("MCP-Protocol-Version", version)
            .body(tools_list())
            .send()
    };
    for version in ["2026-07-28", "garbage", "", "2025-13-01"] {
        let resp = post_with_version(version).await.unwrap();
        assert_eq!(
            transport_error(resp).await,
            (400, INVALID_REQUEST),
            "MCP-Protocol-Version {version:?} is not a supported session-era revision"
        );
    }
    // Any supported revision passes, not only the negotiated one (TS clients send theirs).
    for version in [PROTOCOL_VERSION, "2025-06-18", "2025-03-26"] {
        let resp = post_with_version(version).await.unwrap();
        assert_eq!(resp.status(), 200, "MCP-Protocol-Version {version}");
        let listed = response_to(&messages(resp).await, &json!(1)).clone();
        assert!(listed["result"]["tools"].is_array(), "{listed:#}");
    }
}

#[tokio::test]
async fn older_session_may_name_any_supported_version() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let mut params = initialize_params();
    params["protocolVersion"] = "2025-06-18".into();
    let (session, result) = crate::util::initialize_with(&daemon, "demo", params).await;
    assert_eq!(result["protocolVersion"], "2025-06-18", "{result:#}");
    for (version, status) in [
        (PROTOCOL_VERSION, 200),
        ("2025-06-18", 200),
        ("1999-01-01", 400),
    ] {
        let resp = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&session))
            .header("Content-Type", "application/json")
            .header("MCP-Protocol-Version", version)
            .body(tools_list())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            status,
            "a 2025-06-18 session sending MCP-Protocol-Version {version}"
        );
    }
}

#[tokio::test]
async fn delete_ends_only_that_session() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let ended = initialize(&daemon, "demo").await;
    let kept = initialize(&daemon, "demo").await;
    assert_ne!(ended, kept, "each initialize must issue a fresh session id");
    let resp = mcp_request(&daemon, reqwest::Method::DELETE, Some("demo"), Some(&ended))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "DELETE of a live session is 204");
    let body = resp.bytes().await.unwrap();
    assert!(body.is_empty(), "a 204 has no body: {body:?}");

    let resp = post_bytes(&daemon, "demo", Some(&ended), &tools_list()).await;
    assert_eq!(
        transport_error(resp).await,
        (404, INVALID_REQUEST),
        "an ended session is 404"
    );
    let resp = mcp_request(&daemon, reqwest::Method::DELETE, Some("demo"), Some(&ended))
        .send()
        .await
        .unwrap();
    assert_eq!(
        transport_error(resp).await,
        (404, INVALID_REQUEST),
        "a second DELETE of the same session is 404"
    );
    assert_session_works(&daemon, "demo", &kept, "nothing else was lost").await;
}

#[tokio::test]
async fn notification_is_202_with_an_empty_body() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let session = initialize(&daemon, "demo").await;
    let notes = [
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}),
    ];
    for note in notes {
        let resp = post_bytes(
            &daemon,
            "demo",
            Some(&session),
            &serde_json::to_vec(&note).unwrap(),
        )
        .await;
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            (status.as_u16(), body.as_ref()),
            (202, b"".as_slice()),
            "notification {note} must be 202 with an empty body"
        );
    }
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

// ---------------------------------------------------------------------------------------------
// Accept decides the answer's form
// ---------------------------------------------------------------------------------------------

/// POSTs `initialize` for `demo` with `Accept: accept`; checks the session id's form.
async fn initialize_accepting(daemon: &Daemon, accept: &str) -> (String, reqwest::Response) {
    let resp = daemon
        .http()
        .post(daemon.url())
        .header("X-Client-ID", "demo")
        .header("Accept", accept)
        .header("Content-Type", "application/json")
        .body(initialize_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "initialize with Accept {accept:?}");
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        sid.len() == 64 && sid.bytes().all(|b| b.is_ascii_hexdigit()),
        "Mcp-Session-Id must be 64 hex characters (256 CSPRNG bits): {sid:?}"
    );
    (sid, resp)
}

fn ctype_of(resp: &reqwest::Response) -> String {
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap());
    ctype.unwrap_or_default().to_owned()
}

#[tokio::test]
async fn initialize_accepting_only_sse_is_answered_as_sse() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let (sid, resp) = initialize_accepting(&daemon, "text/event-stream").await;
    assert!(
        ctype_of(&resp).starts_with("text/event-stream"),
        "a caller accepting only SSE must get SSE, got {:?}",
        ctype_of(&resp)
    );
    let got = messages(resp).await;
    assert_eq!(got.len(), 1, "one event, the initialize result: {got:#?}");
    assert_eq!(got[0]["id"], 0, "{got:#?}");
    assert_eq!(
        got[0]["result"]["protocolVersion"], PROTOCOL_VERSION,
        "{got:#?}"
    );
    let listed = rpc(&daemon, "demo", &sid, "tools/list", json!({})).await;
    assert!(listed["result"]["tools"].is_array(), "{listed:#}");
}

#[tokio::test]
async fn initialize_accepting_only_json_is_answered_as_json() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    let (sid, resp) = initialize_accepting(&daemon, "application/json").await;
    assert_eq!(
        ctype_of(&resp),
        "application/json",
        "a caller accepting only JSON gets JSON"
    );
    let got = messages(resp).await;
    assert_eq!(got[0]["id"], 0, "{got:#?}");
    assert_eq!(
        got[0]["result"]["protocolVersion"], PROTOCOL_VERSION,
        "{got:#?}"
    );
    // The same holds for later requests in the session.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let resp = post_json_only(&daemon, "demo", Some(&sid), &list).await;
    assert_eq!(
        (resp.status().as_u16(), ctype_of(&resp).as_str()),
        (200, "application/json")
    );
}

// ---------------------------------------------------------------------------------------------
// Origin (DNS-rebinding protection)
// ---------------------------------------------------------------------------------------------

async fn post_with_origin(daemon: &Daemon, origin: &str) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, Some("demo"), None)
        .header("Content-Type", "application/json")
        .header("Origin", origin)
        .body(initialize_body())
        .send()
        .await
        .unwrap()
}

async fn assert_forbidden_origin(resp: reqwest::Response, origin: &str) {
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str(), &body["code"]),
        (403, "application/json", &json!("FORBIDDEN_ORIGIN")),
        "Origin {origin:?} is not on the allow-list: {body}"
    );
    assert!(
        body.as_object().is_some_and(|o| o.len() == 2) && body["error"].is_string(),
        "the 403 body must be exactly {{error, code}}: {body}"
    );
}

#[tokio::test]
async fn origin_not_on_the_allow_list_is_403_forbidden_origin() {
    let (_clients, daemon) = daemon_with(&["demo"], &[]).await;
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        assert_forbidden_origin(post_with_origin(&daemon, origin).await, origin).await;
    }
    // No Origin at all (a non-browser caller) is not a cross-site request.
    let session = initialize(&daemon, "demo").await;
    assert_session_works(&daemon, "demo", &session, "nothing else was lost").await;
}

#[tokio::test]
async fn allowed_origin_passes_and_others_are_403() {
    let (_clients, daemon) =
        daemon_with(&["demo"], &["--allowed-origins", "http://ok.example"]).await;
    for origin in [
        "http://evil.example",
        "http://ok.example.evil",
        "https://ok.example",
    ] {
        assert_forbidden_origin(post_with_origin(&daemon, origin).await, origin).await;
    }
    let resp = post_with_origin(&daemon, "http://ok.example").await;
    assert_eq!(resp.status(), 200, "an allowed Origin must pass");
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "from ok"}}});
    let resp = mcp_request(&daemon, reqwest::Method::POST, Some("demo"), Some(&sid))
        .header("Content-Type", "application/json")
        .header("Origin", "http://ok.example")
        .body(serde_json::to_vec(&call).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a tool call from the allowed Origin must pass"
    );
    let called = response_to(&messages(resp).await, &json!(1)).clone();
    assert_eq!(
        called["result"]["content"][0]["text"], "from ok",
        "{called:#}"
    );
}
