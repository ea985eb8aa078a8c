//! `/mcp`, session era (DESIGN §3): POST carries one JSON-RPC message, GET opens the
//! session's stream, DELETE ends the session. Sessionless stateless-era POSTs are handed
//! to the `stateless` module before the session rules apply.
//!
//! Requests are answered as `application/json` when the caller accepts it and the child
//! sends nothing before its response; otherwise as `text/event-stream`.
//!
//! Session-era SSE replies are resumable: each is a reply stream of the session (see
//! [`crate::mcp::stream`]), opened with a priming event, and a GET with `Last-Event-ID`
//! resumes it or the GET stream. A caller whose reply connection breaks has the resume grace
//! (`--resume-grace`) to come back; after it the request is cancelled at the child (a
//! disconnect alone is not a cancellation, as the spec says; a caller that never returns is).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::debug;

use super::body::{Body, SseBody};
use super::error::{ApiError, empty, json_response, rpc_error};
use super::reply::{self, Replying};
use super::{App, Observed};
use crate::clients::ClientSpec;
use crate::mcp::call::{Call, CallEvent};
use crate::mcp::control;
use crate::mcp::envelope::{
    self, Envelope, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Kind, span_of, splice,
};
use crate::mcp::relay::Relay;
use crate::mcp::session::{CallerCaps, Session, new_session_id};
use crate::pool::{StartError, Tenant};
use crate::settings::MAX_SESSIONS_PER_TENANT;

/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// Initialize-era protocol versions mcpmux serves; a caller asking for one gets it.
pub use crate::mcp::stateless::SESSION_ERA_VERSIONS;
/// Messages queued on a POST's SSE reply before related ones are dropped.
const REPLY_QUEUE: usize = 64;
/// The request header naming the last SSE event a resuming caller saw.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// What the caller's `Accept` allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accept {
    pub(super) json: bool,
    pub(super) sse: bool,
}

/// A request that reached MCP processing: tenant known and authorized.
pub struct Ctx {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// Its spec in force.
    pub spec: Arc<ClientSpec>,
}

/// Dispatches by HTTP method.
pub async fn handle(app: &Arc<App>, ctx: Ctx, req: http::Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::POST => post(app, ctx, req).await,
        Method::GET => get(app, ctx, req.headers()),
        Method::DELETE => delete(ctx, req.headers()),
        _ => {
            let mut response = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                "method not allowed; use POST, GET or DELETE",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            response
        }
    }
}

fn accept(headers: &HeaderMap) -> Accept {
    let mut out = Accept {
        json: false,
        sse: false,
    };
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Accept {
            json: true,
            sse: true,
        }; // no Accept header accepts anything (RFC 9110)
    }
    for range in values.iter().flat_map(|v| v.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        // `q=0` means "not acceptable" (RFC 9110 §12.4.2).
        let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        if refused {
            continue;
        }
        match media.as_str() {
            "*/*" => {
                out = Accept {
                    json: true,
                    sse: true,
                }
            }
            "application/*" | "application/json" => out.json = true,
            "text/*" | "text/event-stream" => out.sse = true,
            _ => {}
        }
    }
    out
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        let msg = format!("request body exceeds {limit} bytes");
        let mut response = rpc_error(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, &msg);
        // The rest of the body is never read, so this connection cannot carry another
        // request: tell the caller not to reuse it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large()); // refuse before reading a byte of it
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            &format!("could not read request body: {e}"),
        )),
    }
}

async fn post(app: &Arc<App>, ctx: Ctx, req: http::Request<Incoming>) -> Response<Body> {
    let accept = accept(req.headers());
    if !accept.json && !accept.sse {
        let msg = "Accept must allow application/json or text/event-stream";
        return rpc_error(StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST, msg);
    }
    if !is_json(req.headers()) {
        let msg = "Content-Type must be application/json";
        return rpc_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST, msg);
    }
    // Split, not clone: the headers are needed after the body is consumed.
    let (parts, incoming) = req.into_parts();
    let headers = parts.headers;
    let body = match read_body(&headers, incoming, app.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let body = envelope::one_line(body); // the child reads one message per line
    let env = match envelope::parse(&body) {
        Ok(env) => env,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let method = match env.kind {
        Kind::Result | Kind::Error => "response",
        _ => crate::metrics::method_label(env.method.as_deref().unwrap_or_default()),
    };
    let mut response = dispatch(app, &ctx, &headers, &body, &env, accept).await;
    let pid = ctx.tenant.current_relay().map(|r| r.pid());
    response.extensions_mut().insert(Observed {
        method,
        child_pid: pid,
    });
    response
}

async fn dispatch(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
    env: &Envelope<'_>,
    accept: Accept,
) -> Response<Body> {
    if env.kind == Kind::Request && env.method.as_deref() == Some("initialize") {
        return initialize(app, ctx, env, accept).await;
    }
    // Sessionless 2026-07-28 traffic is bridged; anything else keeps the rules below.
    if let Some(response) = super::stateless::serve(app, ctx, headers, body, env, accept).await {
        return response;
    }
    let session = match session_of(ctx, headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    session.touch();
    match env.kind {
        Kind::Request => request(app, ctx, &session, body, env, accept).await,
        Kind::Notification => notification(ctx, &session, body, env).await,
        Kind::Result | Kind::Error => {
            let relay = ctx.tenant.current_relay();
            let delivered = match relay {
                Some(relay) => relay.answer(&session.id, body, env).await,
                None => false,
            };
            if !delivered {
                debug!(client_id = %ctx.tenant.id, "caller response matches no child request; dropped");
            }
            empty(StatusCode::ACCEPTED)
        }
    }
}

fn session_of(ctx: &Ctx, headers: &HeaderMap) -> Result<Arc<Session>, Response<Body>> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        let msg = "Mcp-Session-Id header is required (send initialize first)";
        return Err(rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, msg));
    };
    let Some(session) = ctx.tenant.sessions.get(id) else {
        return Err(rpc_error(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "session not found; initialize a new session",
        ));
    };
    if let Some(version) = headers.get(VERSION_HEADER)
        && version.as_bytes() != session.protocol_version.as_bytes()
    {
        let msg = format!(
            "MCP-Protocol-Version does not match the session's version {}",
            session.protocol_version
        );
        return Err(rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, &msg));
    }
    Ok(session)
}

#[derive(Deserialize)]
struct InitParams<'a> {
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    capabilities: Caps,
}

#[derive(Deserialize, Default)]
struct Caps {
    sampling: Option<serde::de::IgnoredAny>,
    elicitation: Option<serde::de::IgnoredAny>,
    roots: Option<serde::de::IgnoredAny>,
}

async fn initialize(
    app: &Arc<App>,
    ctx: &Ctx,
    env: &Envelope<'_>,
    accept: Accept,
) -> Response<Body> {
    let id = env.id.map_or("null", |id| id.get());
    let Some(params) = env.params else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            "initialize needs params",
        );
    };
    let Ok(parsed) = serde_json::from_str::<InitParams<'_>>(params.get()) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            "initialize params are malformed",
        );
    };
    let (_relay, cache) = match app
        .pool
        .relay(&ctx.tenant, &ctx.spec, Some(params.get()))
        .await
    {
        Ok(ready) => ready,
        Err(e) => return start_failed(id, e),
    };
    let child_version = result_version(&cache.result).unwrap_or_default();
    let wanted = parsed.protocol_version.as_deref().unwrap_or_default();
    let version = if SESSION_ERA_VERSIONS.contains(&wanted) {
        wanted.to_string()
    } else {
        child_version
    };
    let caps = CallerCaps {
        sampling: parsed.capabilities.sampling.is_some(),
        elicitation: parsed.capabilities.elicitation.is_some(),
        roots: parsed.capabilities.roots.is_some(),
    };
    let session_id = match new_session_id() {
        Ok(sid) => sid,
        Err(e) => {
            return rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                INTERNAL_ERROR,
                &format!("no randomness for a session id: {e}"),
            );
        }
    };
    let inserted = ctx.tenant.sessions.insert(
        session_id.clone(),
        version.clone(),
        caps,
        MAX_SESSIONS_PER_TENANT,
    );
    let Some(session) = inserted else {
        return ApiError::unavailable(
            "TOO_MANY_SESSIONS",
            "This client has too many open sessions; end some with DELETE.",
            5,
        )
        .into_response();
    };
    let result = with_version(&cache.result, &version);
    let mut message = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"#).into_bytes();
    message.extend_from_slice(&result);
    message.push(b'}');
    let to = replying(app, ctx, &session);
    let mut response = single(message.into(), accept, Some(&to));
    if let Ok(value) = HeaderValue::from_str(&session_id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

#[derive(Deserialize)]
struct VersionOnly<'a> {
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<&'a serde_json::value::RawValue>,
}

fn result_version(result: &[u8]) -> Option<String> {
    let parsed: VersionOnly<'_> = serde_json::from_slice(result).ok()?;
    serde_json::from_str(parsed.protocol_version?.get()).ok()
}

/// The cached result with `protocolVersion` set to the session's version, byte-exact otherwise.
fn with_version(result: &Bytes, version: &str) -> Bytes {
    let Ok(parsed) = serde_json::from_slice::<VersionOnly<'_>>(result) else {
        return result.clone();
    };
    let Some(raw) = parsed.protocol_version else {
        return result.clone();
    };
    let Some(span) = span_of(result, raw.get()) else {
        return result.clone();
    };
    let quoted = serde_json::Value::from(version).to_string();
    splice(result, &mut [(span, quoted.as_bytes())]).into()
}

/// A failure to get a child, as the caller sees it.
pub(super) fn start_failed(id: &str, err: StartError) -> Response<Body> {
    match err {
        StartError::Backoff(wait) => {
            let msg = format!(
                "This client's MCP server keeps crashing; retrying in {} s.",
                wait.as_secs().max(1)
            );
            ApiError::unavailable("CHILD_BACKOFF", msg, wait.as_secs_f64().ceil() as u64)
                .into_response()
        }
        StartError::Busy(max) => {
            let msg = format!("All {max} MCP server processes are busy; retry shortly.");
            ApiError::unavailable("TOO_MANY_CHILDREN", msg, 1).into_response()
        }
        StartError::Failed { message, data } => {
            let data = (!data.is_null()).then_some(&data);
            json_response(
                StatusCode::OK,
                envelope::error_response(id, INTERNAL_ERROR, &message, data).into(),
            )
        }
    }
}

/// The session's reply streams, for answers that must be resumable.
fn replying(app: &App, ctx: &Ctx, session: &Arc<Session>) -> Replying {
    let sessions = ctx.tenant.sessions.clone();
    Replying::new(sessions, session.clone(), app.settings.resume_grace)
}

/// One complete message, as JSON when accepted, else as a one-event SSE stream (recorded
/// on a reply stream of the session `to`, when given).
pub(super) fn single(message: Bytes, accept: Accept, to: Option<&Replying>) -> Response<Body> {
    if accept.json {
        return json_response(StatusCode::OK, message);
    }
    if let Some(to) = to {
        return to.single(&message);
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(message); // capacity 1, fresh channel: cannot fail
    sse_response(SseBody::new(rx, None, Box::new(())))
}

pub(super) fn sse_response(body: SseBody) -> Response<Body> {
    let mut response = Response::new(Body::Sse(Box::new(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn request(
    app: &Arc<App>,
    ctx: &Ctx,
    session: &Arc<Session>,
    body: &[u8],
    env: &Envelope<'_>,
    accept: Accept,
) -> Response<Body> {
    let id = env.id.map_or("null", |id| id.get());
    let timeout = app.settings.request_timeout;
    // A relay handed out just as the reaper or a reload stopped it refuses the send; the
    // request was never seen by any child, so it goes to the replacement once.
    let mut attempts = 2;
    loop {
        attempts -= 1;
        let relay = match app.pool.relay(&ctx.tenant, &ctx.spec, None).await {
            Ok((relay, _)) => relay,
            Err(e) => return start_failed(id, e),
        };
        if relay.inflight() >= app.settings.max_inflight_per_tenant {
            let msg = format!(
                "This client has {} requests in flight; retry shortly.",
                relay.inflight()
            );
            return ApiError::unavailable("TOO_MANY_REQUESTS", msg, 1).into_response();
        }
        let to = replying(app, ctx, session);
        if let Some(reply) = control::answer(&relay, session, body, env, timeout).await {
            return single(reply, accept, Some(&to));
        }
        match relay
            .call(body, env, Some(session.id.clone()), accept.sse)
            .await
        {
            Ok(call) => return respond(call, accept, timeout, Some(to)).await,
            Err(_) if attempts > 0 && !relay.usable() => continue,
            Err(e) => {
                let reply = envelope::error_response(id, INTERNAL_ERROR, &e.to_string(), None);
                return json_response(StatusCode::OK, reply.into());
            }
        }
    }
}

/// Answers with JSON if the first thing the child sends is the response; else streams,
/// resumably when the reply belongs to a session (`to`).
async fn respond(
    mut call: Call,
    accept: Accept,
    timeout: Duration,
    to: Option<Replying>,
) -> Response<Body> {
    loop {
        match call.next(timeout).await {
            CallEvent::Final(message) => return single(message, accept, to.as_ref()),
            CallEvent::Related(_) if !accept.sse => continue, // JSON-only caller: nowhere to put it
            CallEvent::Related(first) => {
                return match to {
                    Some(to) => to.stream(call, first, timeout),
                    None => stream_call(call, first, timeout, |reply| reply),
                };
            }
            CallEvent::Cancelled => return cancelled(&call, accept),
        }
    }
}

/// A reply that is not resumable: progress and the child's requests, then the final reply
/// passed through `finish`, as SSE.
pub(super) fn stream_call(
    mut call: Call,
    first: Bytes,
    timeout: Duration,
    finish: impl FnOnce(Bytes) -> Bytes + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let _ = tx.try_send(first); // fresh channel with room: cannot fail
    // Owned by the response body: ends at the final message, or when the body is dropped
    // (caller gone), which drops the call and so cancels it at the child.
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                event = call.next(timeout) => event,
            };
            match event {
                // The child waits for an answer to its own request: wait for room, never drop it.
                CallEvent::Related(message) if is_request(&message) => {
                    if tx.send(message).await.is_err() {
                        return; // the caller went away
                    }
                }
                CallEvent::Related(message) => {
                    if tx.try_send(message).is_err() {
                        debug!("progress dropped: caller is not keeping up");
                    }
                }
                CallEvent::Final(message) => {
                    // A gone caller has nothing left to receive.
                    let _ = tx.send(finish(message)).await;
                    return;
                }
                CallEvent::Cancelled => return, // the reply ends with no response
            }
        }
    });
    sse_response(SseBody::new(rx, None, Box::new(())))
}

/// True for a child's request (sampling, elicitation, ...) relayed on a caller's reply, as
/// opposed to a progress notification.
pub(super) fn is_request(message: &[u8]) -> bool {
    envelope::parse(message).is_ok_and(|env| env.kind == Kind::Request)
}

/// The reply to a request its caller cancelled before anything was sent: an SSE stream that
/// ends at once (no response is due), or, for a caller that takes only JSON, an error.
pub(super) fn cancelled(call: &Call, accept: Accept) -> Response<Body> {
    if accept.sse {
        let (_, rx) = mpsc::channel(1);
        return sse_response(SseBody::new(rx, None, Box::new(())));
    }
    let id = String::from_utf8_lossy(call.orig_id()).into_owned();
    let reply = envelope::error_response(&id, INTERNAL_ERROR, "request was cancelled", None);
    json_response(StatusCode::OK, reply.into())
}

async fn notification(
    ctx: &Ctx,
    session: &Arc<Session>,
    body: &[u8],
    env: &Envelope<'_>,
) -> Response<Body> {
    let relay = ctx.tenant.current_relay().filter(|r| r.usable());
    let line = match env.method.as_deref() {
        // The child was initialized by mcpmux; later sessions' handshakes end here.
        Some("notifications/initialized") => None,
        Some("notifications/cancelled") => relay
            .as_ref()
            .and_then(|r| cancelled_for_child(r, session, body, env)),
        _ => Some(Bytes::copy_from_slice(body)),
    };
    if let (Some(relay), Some(line)) = (relay, line)
        && let Err(e) = relay.notify(line).await
    {
        debug!(client_id = %ctx.tenant.id, error = %e, "notification not delivered");
    }
    empty(StatusCode::ACCEPTED)
}

/// Rewrites a caller's cancellation into the child's id space, ending the request on our
/// side; `None` for ids the session has not in flight (dropped, as MCP allows).
fn cancelled_for_child(
    relay: &Relay,
    session: &Session,
    body: &[u8],
    env: &Envelope<'_>,
) -> Option<Bytes> {
    let request_id = envelope::cancelled_request_id(env.params)?;
    let child_id = relay.cancel_for_caller(&session.id, request_id.get())?;
    let span = span_of(body, request_id.get())?;
    Some(splice(body, &mut [(span, child_id.to_string().as_bytes())]).into())
}

fn get(app: &Arc<App>, ctx: Ctx, headers: &HeaderMap) -> Response<Body> {
    if !accept(headers).sse {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "Accept must allow text/event-stream",
        );
    }
    let session = match session_of(&ctx, headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    session.touch();
    let last_event_id = match headers.get(LAST_EVENT_ID_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(_)) => {
            let msg = "Last-Event-ID must be visible ASCII; open the stream without it";
            return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, msg);
        }
    };
    let attached = match ctx.tenant.sessions.connect(&session, last_event_id) {
        Ok(attached) => attached,
        // Unknown or expired ids are refused rather than answered with a silent gap.
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, &e.to_string()),
    };
    let shutdown = app.shutdown.clone().cancelled_owned();
    reply::framed_response(attached, Some(shutdown))
}

fn delete(ctx: Ctx, headers: &HeaderMap) -> Response<Body> {
    let session = match session_of(&ctx, headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    ctx.tenant.sessions.remove(&session.id);
    empty(StatusCode::NO_CONTENT)
}
