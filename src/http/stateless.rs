//! `/mcp` POSTs of the stateless era (2026-07-28): no session, no `initialize`; each
//! request carries its version and capabilities in `_meta`, mirrored into headers.
//!
//! Owns the HTTP side of the bridge: reading the routing headers, answering the
//! validation ladder's refusals with 400, `server/discover` from the tenant's cached
//! `initialize` result, and relaying every other request to the tenant's session-era
//! child without a session. Its replies are never resumable (the era has no
//! `Last-Event-ID`), and closing one cancels the request at the child. The MCP rules
//! themselves live in [`crate::mcp::stateless`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use tracing::debug;

use super::App;
use super::body::Body;
use super::error::{ApiError, empty, json_response};
use super::mcp::{Accept, Ctx, SESSION_HEADER, VERSION_HEADER, single, start_failed};
use crate::mcp::call::{Call, CallEvent};
use crate::mcp::envelope::{self, Envelope, INTERNAL_ERROR, Kind, METHOD_NOT_FOUND};
use crate::mcp::stateless::{self as rules, Admitted, Header, Headers, Rejection, RequestMeta};

/// The method header of 2026-07-28.
pub const METHOD_HEADER: &str = "mcp-method";
/// The name header of 2026-07-28.
pub const NAME_HEADER: &str = "mcp-name";

/// Serves `env` if it is a stateless-era message; `None` leaves it to the session era.
pub(super) async fn serve(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
    env: &Envelope<'_>,
    accept: Accept,
) -> Option<Response<Body>> {
    if headers.contains_key(SESSION_HEADER) {
        return None; // a session names the session era, whatever else the request says
    }
    let version = header(headers, VERSION_HEADER);
    let meta = rules::request_meta(env.params);
    if !rules::is_stateless(env, version, &meta) {
        return None;
    }
    if env.kind == Kind::Notification {
        // 2026-07-28 defines no client notifications over HTTP, and there is no session
        // whose state one could change: accepted and dropped.
        debug!(client_id = %ctx.tenant.id, method = ?env.method, "stateless notification dropped");
        return Some(empty(StatusCode::ACCEPTED));
    }
    Some(request(app, ctx, headers, body, env, &meta, accept).await)
}

/// One routing header; repeated or non-ASCII values can match nothing.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Header<'h> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Header::Absent;
    };
    if values.next().is_some() {
        return Header::Malformed("is given more than once");
    }
    match first.to_str() {
        Ok(value) => Header::Value(value),
        Err(_) => Header::Malformed("is not visible ASCII"),
    }
}

async fn request(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
    env: &Envelope<'_>,
    meta: &RequestMeta<'_>,
    accept: Accept,
) -> Response<Body> {
    let id = env.id.map_or("null", |id| id.get());
    let method = env.method.as_deref().unwrap_or_default();
    let routing = Headers {
        version: header(headers, VERSION_HEADER),
        method: header(headers, METHOD_HEADER),
        name: header(headers, NAME_HEADER),
    };
    let admitted = match rules::validate(method, &routing, meta) {
        Ok(admitted) => admitted,
        Err(rejection) => return refuse(id, &rejection),
    };
    if let Some(why) = rules::not_in_this_era(method) {
        return not_found(id, &why);
    }
    bridge(app, ctx, body, env, &admitted, accept).await
}

/// An admitted request: `server/discover` answered here, anything else relayed.
async fn bridge(
    app: &Arc<App>,
    ctx: &Ctx,
    body: &[u8],
    env: &Envelope<'_>,
    admitted: &Admitted<'_>,
    accept: Accept,
) -> Response<Body> {
    let id = env.id.map_or("null", |id| id.get());
    let method = env.method.as_deref().unwrap_or_default();
    // The child was perhaps never initialized: then mcpmux does it, for this caller.
    let params = rules::init_params(admitted);
    let (relay, cache) = match app.pool.relay(&ctx.tenant, &ctx.spec, Some(&params)).await {
        Ok(ready) => ready,
        Err(e) => return start_failed(id, e),
    };
    if method == "server/discover" {
        return discover(id, &cache.result, accept);
    }
    if relay.inflight() >= app.settings.max_inflight_per_tenant {
        let msg = format!(
            "This client has {} requests in flight; retry shortly.",
            relay.inflight()
        );
        return ApiError::unavailable("TOO_MANY_REQUESTS", msg, 1).into_response();
    }
    log_admitted(ctx, method, admitted);
    match relay.call(body, env, None, accept.sse).await {
        Ok(call) => respond(call, method, accept, app.settings.request_timeout).await,
        Err(e) => json_response(
            StatusCode::OK,
            envelope::error_response(id, INTERNAL_ERROR, &e.to_string(), None).into(),
        ),
    }
}

fn log_admitted(ctx: &Ctx, method: &str, admitted: &Admitted<'_>) {
    debug!(
        client_id = %ctx.tenant.id,
        method,
        client_info = admitted.client_info.map(|i| i.get()),
        "stateless request relayed"
    );
}

/// A ladder refusal: 400 with the JSON-RPC error, under the request's id.
fn refuse(id: &str, rejection: &Rejection) -> Response<Body> {
    let message = envelope::error_response(
        id,
        rejection.code,
        &rejection.message,
        rejection.data.as_ref(),
    );
    json_response(StatusCode::BAD_REQUEST, message.into())
}

/// 404 with "method not found", as 2026-07-28 answers a method it does not serve.
fn not_found(id: &str, why: &str) -> Response<Body> {
    let message = envelope::error_response(id, METHOD_NOT_FOUND, why, None);
    json_response(StatusCode::NOT_FOUND, message.into())
}

fn discover(id: &str, init_result: &[u8], accept: Accept) -> Response<Body> {
    let mut message = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"#).into_bytes();
    message.extend_from_slice(&rules::discover_result(init_result));
    message.push(b'}');
    single(message.into(), accept, None)
}

/// Answers with JSON if the first thing the child sends is the response; else streams.
async fn respond(
    mut call: Call,
    method: &str,
    accept: Accept,
    timeout: Duration,
) -> Response<Body> {
    loop {
        match call.next(timeout).await {
            CallEvent::Final(reply) => {
                return final_reply(rules::complete_reply(method, reply), accept);
            }
            CallEvent::Related(_) if !accept.sse => continue, // JSON-only caller: nowhere to put it
            CallEvent::Related(first) => return stream(call, first, method.to_owned(), timeout),
            CallEvent::Cancelled => return super::mcp::cancelled(&call, accept),
        }
    }
}

/// The whole answer in one message; a child's "method not found" becomes a 404, as
/// 2026-07-28 requires of a server that does not implement a method.
fn final_reply(reply: Bytes, accept: Accept) -> Response<Body> {
    if rules::is_method_not_found(&reply) {
        return json_response(StatusCode::NOT_FOUND, reply);
    }
    single(reply, accept, None)
}

/// Progress, then the final reply, as SSE. Closing the stream is cancellation in this
/// era: dropping the call tells the child `notifications/cancelled`.
fn stream(call: Call, first: Bytes, method: String, timeout: Duration) -> Response<Body> {
    super::mcp::stream_call(call, first, timeout, move |reply| {
        rules::complete_reply(&method, reply)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn routing_headers_are_single_visible_ascii_values() {
        let mut headers = HeaderMap::new();
        assert_eq!(header(&headers, METHOD_HEADER), Header::Absent);
        headers.insert("Mcp-Method", HeaderValue::from_static("tools/call"));
        assert_eq!(header(&headers, METHOD_HEADER), Header::Value("tools/call"));
        headers.append("mcp-method", HeaderValue::from_static("tools/call"));
        assert!(matches!(
            header(&headers, METHOD_HEADER),
            Header::Malformed(_)
        ));
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        headers.insert(NAME_HEADER, latin1);
        assert!(matches!(
            header(&headers, NAME_HEADER),
            Header::Malformed(_)
        ));
    }
}
