//! DESIGN §1 through the real binary: every row of the tenant-header table with its exact
//! status, `Content-Type` and body; the header judged before the body is read; trimming and
//! lowercasing; bearer tokens for tenants that declare one.
//!
//! Every refusal is followed by proof that nothing was lost: the valid tenant still starts a
//! session and calls a tool on the same daemon.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{
    Daemon, TempClients, call_tool, echo_spec, error_parts, initialize, initialize_params,
    mcp_request, messages, raw_http, response_to,
};

const MISSING: &str = "Missing X-Client-ID header. Provide client identifier.";
const DUPLICATE: &str = "Multiple X-Client-ID headers detected. Provide exactly one.";
const INVALID: &str = "Client ID must contain only alphanumeric characters (a-z, 0-9).";

fn unknown(id: &str) -> String {
    format!("Unknown client ID: {id}. Check X-Client-ID header value.")
}

/// Status, `Content-Type` and body of an error answer (as [`error_parts`] returns them).
type Answer = (u16, String, Value);

/// The full expected answer of a DESIGN §1 error.
fn tenant_error(status: u16, code: &str, message: &str) -> Answer {
    let body = json!({"error": message, "code": code});
    (status, "application/json".to_owned(), body)
}

fn initialize_body() -> Vec<u8> {
    let req =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    serde_json::to_vec(&req).unwrap()
}

/// A daemon serving the echo child as `demo`.
async fn demo_daemon() -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

/// POSTs a valid `initialize` with one `X-Client-ID` line per entry of `ids`.
async fn post_with_ids(daemon: &Daemon, ids: &[&str]) -> reqwest::Response {
    let mut req = mcp_request(daemon, reqwest::Method::POST, None, None)
        .header("Content-Type", "application/json");
    for id in ids {
        req = req.header("X-Client-ID", *id);
    }
    req.body(initialize_body())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

/// Nothing was lost: `client_id` still gets a session and a tool answer.
async fn assert_tenant_still_works(daemon: &Daemon, client_id: &str) {
    let session = initialize(daemon, client_id).await;
    let called = call_tool(
        daemon,
        client_id,
        &session,
        "echo",
        json!({"message": "still"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "still",
        "after refusals, tenant {client_id} must still serve tool calls: {called:#}"
    );
}

#[tokio::test]
async fn absent_empty_or_blank_client_id_is_403_missing_client_id() {
    let (_clients, daemon) = demo_daemon().await;
    let cases: &[&[&str]] = &[&[], &[""], &["   "], &["\t \t"]];
    for ids in cases {
        let got = error_parts(post_with_ids(&daemon, ids).await).await;
        assert_eq!(
            got,
            tenant_error(403, "MISSING_CLIENT_ID", MISSING),
            "X-Client-ID lines {ids:?} must be refused as missing"
        );
    }
    assert_tenant_still_works(&daemon, "demo").await;
}

#[tokio::test]
async fn repeated_client_id_or_one_with_a_comma_is_400_duplicate_client_id() {
    let (_clients, daemon) = demo_daemon().await;
    let cases: &[&[&str]] = &[
        &["demo", "demo"],
        &["demo", "other"],
        &["demo", ""],
        &["demo,demo"],
        &["demo, other"],
        &[","],
    ];
    for ids in cases {
        let got = error_parts(post_with_ids(&daemon, ids).await).await;
        assert_eq!(
            got,
            tenant_error(400, "DUPLICATE_CLIENT_ID", DUPLICATE),
            "X-Client-ID lines {ids:?} must be refused as duplicate, even when all name demo"
        );
    }
    assert_tenant_still_works(&daemon, "demo").await;
}

#[tokio::test]
async fn non_alphanumeric_or_overlong_client_id_is_403_invalid_client_id() {
    let (_clients, daemon) = demo_daemon().await;
    let long = "a".repeat(65);
    let cases = ["a-b", "a b", "ü", "demo_", "de.mo", long.as_str()];
    for id in cases {
        let got = error_parts(post_with_ids(&daemon, &[id]).await).await;
        assert_eq!(
            got,
            tenant_error(403, "INVALID_CLIENT_ID", INVALID),
            "X-Client-ID {id:?} must be refused as invalid"
        );
    }
    // The boundary: 64 characters is a well-formed id, merely not a known one.
    let max = "a".repeat(64);
    let got = error_parts(post_with_ids(&daemon, &[&max]).await).await;
    assert_eq!(
        got,
        tenant_error(403, "UNKNOWN_CLIENT", &unknown(&max)),
        "a 64-character id is well formed, so it must reach the unknown-client check"
    );
    assert_tenant_still_works(&daemon, "demo").await;
}

#[tokio::test]
async fn unknown_client_is_403_naming_the_trimmed_lowercased_id() {
    let (_clients, daemon) = demo_daemon().await;
    let cases = [
        ("nosuch", "nosuch"),
        (" Foo ", "foo"),
        ("FOO", "foo"),
        ("demo2", "demo2"),
    ];
    for (sent, reported) in cases {
        let got = error_parts(post_with_ids(&daemon, &[sent]).await).await;
        assert_eq!(
            got,
            tenant_error(403, "UNKNOWN_CLIENT", &unknown(reported)),
            "X-Client-ID {sent:?} names no client file; the message must name {reported:?}"
        );
    }
    assert_tenant_still_works(&daemon, "demo").await;
}

#[tokio::test]
async fn client_id_is_trimmed_and_lowercased_before_routing() {
    let (_clients, daemon) = demo_daemon().await;
    let session = initialize(&daemon, " DEMO ").await;
    // The session belongs to `demo`, whichever spelling of it the caller uses.
    for spelling in ["Demo", "demo", "  dEmO"] {
        let called = call_tool(
            &daemon,
            spelling,
            &session,
            "echo",
            json!({"message": spelling}),
        )
        .await;
        assert_eq!(
            called["result"]["content"][0]["text"], spelling,
            "X-Client-ID {spelling:?} must route to demo and find its session: {called:#}"
        );
    }
}

/// A bad tenant header, each with the error it must produce.
fn bad_headers() -> Vec<(Vec<&'static str>, Answer)> {
    vec![
        (vec![], tenant_error(403, "MISSING_CLIENT_ID", MISSING)),
        (
            vec!["demo", "demo"],
            tenant_error(400, "DUPLICATE_CLIENT_ID", DUPLICATE),
        ),
        (vec!["a-b"], tenant_error(403, "INVALID_CLIENT_ID", INVALID)),
        (
            vec!["ghost"],
            tenant_error(403, "UNKNOWN_CLIENT", &unknown("ghost")),
        ),
    ]
}

#[tokio::test]
async fn bad_client_id_is_refused_before_content_type_accept_or_body_are_judged() {
    let (_clients, daemon) = demo_daemon().await;
    // Each of these alone would be 400, 415 or 406 for a valid tenant.
    let bodies: &[(&str, &str, &[u8])] = &[
        ("application/json", "application/json", b"{not json"),
        (
            "application/json",
            "application/json",
            b"[{\"jsonrpc\":\"2.0\"}]",
        ),
        ("text/plain", "application/json", b"hello"),
        ("application/json", "text/html", b"{}"),
    ];
    for (ids, want) in bad_headers() {
        for (ctype, accept, body) in bodies {
            let mut req = daemon
                .http()
                .post(daemon.url())
                .header("Accept", *accept)
                .header("Content-Type", *ctype);
            for id in &ids {
                req = req.header("X-Client-ID", *id);
            }
            let resp = req.body(body.to_vec()).send().await.unwrap();
            assert_eq!(
                error_parts(resp).await,
                want,
                "X-Client-ID {ids:?} must be judged before Content-Type {ctype}, Accept {accept} \
                 and body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
    assert_tenant_still_works(&daemon, "demo").await;
}

#[tokio::test]
async fn bad_client_id_is_answered_before_a_huge_body_is_sent() {
    let (_clients, daemon) = demo_daemon().await;
    // 1 GiB declared, beyond the default 4 MiB limit, and never sent: an answer at all proves
    // the daemon judged the header without waiting for (or sizing up) the body.
    for (ids, (status, ctype, body)) in bad_headers() {
        let mut head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 1073741824",
            daemon.addr()
        );
        for id in &ids {
            head.push_str(&format!("\r\nX-Client-ID: {id}"));
        }
        let resp = raw_http(daemon.addr(), &head, b"{\"jsonrpc\":").await;
        assert_eq!(
            (
                resp.status,
                resp.header("content-type").unwrap_or_default().to_owned(),
                resp.json()
            ),
            (status, ctype, body),
            "X-Client-ID {ids:?} with a 1 GiB body still to come must get the header error, not 413"
        );
    }
    assert_tenant_still_works(&daemon, "demo").await;
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens (DESIGN §1 step 2)
// ---------------------------------------------------------------------------------------------

const ALPHA_TOKEN: &str = "alpha-secret-token";
const BETA_TOKEN: &str = "beta-secret-token";

fn with_token(token: &str) -> Value {
    let mut spec = echo_spec();
    spec["token_sha256"] = hex::encode(Sha256::digest(token.as_bytes())).into();
    spec
}

/// `alpha` and `beta` each with a token; `open` without one.
async fn token_daemon() -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("alpha", &with_token(ALPHA_TOKEN));
    clients.write("beta", &with_token(BETA_TOKEN));
    clients.write("open", &echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

/// POSTs `body` for `client_id` with `Authorization: <auth>` when given.
async fn post_auth(
    daemon: &Daemon,
    client_id: &str,
    session: Option<&str>,
    auth: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = mcp_request(daemon, reqwest::Method::POST, Some(client_id), session)
        .header("Content-Type", "application/json");
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    req.body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

/// Asserts a 401 with `WWW-Authenticate: Bearer` and a `{"error","code":"UNAUTHORIZED"}` body.
async fn assert_unauthorized(resp: reqwest::Response, case: &str) {
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "{case}: a 401 must carry WWW-Authenticate: Bearer"
    );
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str(), &body["code"]),
        (401, "application/json", &json!("UNAUTHORIZED")),
        "{case}: must be 401 UNAUTHORIZED: {body}"
    );
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("Bearer") && body.as_object().is_some_and(|o| o.len() == 2),
        "{case}: body must be exactly {{error, code}}, the message naming the Bearer fix: {body}"
    );
}

/// Runs the handshake for `client_id` presenting `token`; returns the session id.
async fn initialize_with_token(daemon: &Daemon, client_id: &str, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let req =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let resp = post_auth(daemon, client_id, None, Some(&auth), &req).await;
    assert_eq!(
        resp.status(),
        200,
        "{client_id} with its own token must initialize"
    );
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = post_auth(daemon, client_id, Some(&session), Some(&auth), &note).await;
    assert_eq!(
        resp.status(),
        202,
        "{client_id}: notifications/initialized must be 202"
    );
    session
}

async fn echo_with_token(daemon: &Daemon, client_id: &str, session: &str, token: &str) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": client_id}}});
    let resp = post_auth(
        daemon,
        client_id,
        Some(session),
        Some(&format!("Bearer {token}")),
        &req,
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "{client_id}: tools/call with its token must be 200"
    );
    response_to(&messages(resp).await, &json!(1)).clone()
}

#[tokio::test]
async fn token_tenant_refuses_missing_wrong_or_foreign_bearer_with_401() {
    let (_clients, daemon) = token_daemon().await;
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let hash_as_token = format!(
        "Bearer {}",
        with_token(ALPHA_TOKEN)["token_sha256"].as_str().unwrap()
    );
    let cases: &[(&str, Option<&str>)] = &[
        ("no Authorization", None),
        ("empty Authorization", Some("")),
        ("wrong token", Some("Bearer alpha-secret-tokeN")),
        ("another tenant's token", Some("Bearer beta-secret-token")),
        ("the hash instead of the token", Some(&hash_as_token)),
        (
            "Basic scheme",
            Some("Basic YWxwaGE6YWxwaGEtc2VjcmV0LXRva2Vu"),
        ),
        ("bare token without scheme", Some(ALPHA_TOKEN)),
    ];
    for (case, auth) in cases {
        assert_unauthorized(post_auth(&daemon, "alpha", None, *auth, &init).await, case).await;
    }
    // Authentication, like the tenant header, comes before the body.
    let resp = daemon
        .http()
        .post(daemon.url())
        .header("X-Client-ID", "alpha")
        .header("Content-Type", "text/plain")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_unauthorized(resp, "no token, wrong Content-Type, garbage body").await;

    // Nothing lost: each tenant with its own token, and the open one without any, still work.
    for (id, token) in [("alpha", ALPHA_TOKEN), ("beta", BETA_TOKEN)] {
        let session = initialize_with_token(&daemon, id, token).await;
        let called = echo_with_token(&daemon, id, &session, token).await;
        assert_eq!(called["result"]["content"][0]["text"], id, "{called:#}");
    }
    assert_tenant_still_works(&daemon, "open").await;
}

#[tokio::test]
async fn session_of_a_token_tenant_needs_the_token_on_every_request() {
    let (_clients, daemon) = token_daemon().await;
    let session = initialize_with_token(&daemon, "alpha", ALPHA_TOKEN).await;
    // The session id is routing, not authentication: without the token it opens nothing.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x"}}});
    for (case, auth) in [
        ("session without token", None),
        (
            "session with beta's token",
            Some("Bearer beta-secret-token"),
        ),
    ] {
        let resp = post_auth(&daemon, "alpha", Some(&session), auth, &call).await;
        assert_unauthorized(resp, case).await;
    }
    // The lowercase scheme is accepted (RFC 9110: auth schemes are case-insensitive).
    let resp = post_auth(
        &daemon,
        "alpha",
        Some(&session),
        Some("bearer alpha-secret-token"),
        &call,
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "`bearer` (lowercase) with the right token must pass"
    );
    // And the session survived the refusals.
    let called = echo_with_token(&daemon, "alpha", &session, ALPHA_TOKEN).await;
    assert_eq!(
        called["result"]["content"][0]["text"], "alpha",
        "{called:#}"
    );
}
