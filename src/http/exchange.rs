//! The exchange layer both eras share: a parsed POST, the `Accept` rules, JSON or SSE
//! framing, relaying a request to the tenant's child, and the one pump that moves a
//! streamed reply's messages to its caller.
//!
//! An era (`super::mcp` for sessions, `super::stateless` for 2026-07-28) plugs in through
//! [`Era`]: who owns the call at the relay, what mcpmux answers itself, how the final
//! message is shaped and where a streamed reply goes ([`Sink`]). Everything else — getting
//! the relay, the in-flight cap, the retry after a reap, choosing JSON or SSE, the
//! progress / child-request / final / cancel policy — is here, once.
//!
//! Dependencies run one way: `endpoint` → the eras → `reply` → this module.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tracing::debug;

use super::App;
use super::body::{Body, SseBody};
use super::error::{ApiError, json_response, rpc_error};
use crate::clients::ClientSpec;
use crate::mcp::call::{Call, CallEvent};
use crate::mcp::envelope::{self, Envelope, INTERNAL_ERROR, INVALID_REQUEST, Kind};
use crate::mcp::relay::Relay;
use crate::pool::{StartError, Tenant};

/// Messages queued on a non-resumable SSE reply before progress is dropped.
const REPLY_QUEUE: usize = 64;

/// A request that reached MCP processing: tenant known and authorized.
pub struct Ctx {
    /// The tenant.
    pub tenant: Arc<Tenant>,
    /// Its spec in force.
    pub spec: Arc<ClientSpec>,
}

/// What the caller's `Accept` allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accept {
    pub(super) json: bool,
    pub(super) sse: bool,
}

/// One parsed POST: one JSON-RPC message, its envelope and what the caller accepts.
pub(super) struct Post<'a> {
    pub(super) app: &'a Arc<App>,
    pub(super) ctx: &'a Ctx,
    pub(super) headers: &'a HeaderMap,
    /// The message, on one line (the child reads one message per line).
    pub(super) body: &'a Bytes,
    pub(super) env: &'a Envelope<'a>,
    pub(super) accept: Accept,
}

impl Post<'_> {
    /// The caller's id, as written (`null` for none).
    pub(super) fn id(&self) -> &str {
        self.env.id.map_or("null", |id| id.get())
    }

    /// The method, empty for responses.
    pub(super) fn method(&self) -> &str {
        self.env.method.as_deref().unwrap_or_default()
    }
}

/// How one era shapes a relayed request.
pub(super) trait Era: Send {
    /// The caller that owns the call at the relay (its session), if any.
    fn owner(&self) -> Option<Arc<str>>;
    /// `initialize` params for a tenant whose child was never initialized.
    fn first_params(&self) -> Option<&str>;
    /// A reply mcpmux gives itself instead of relaying; `None` relays.
    fn local<'a>(
        &'a self,
        relay: &'a Arc<Relay>,
        post: &'a Post<'a>,
    ) -> impl Future<Output = Option<Bytes>> + Send + 'a;
    /// The answer when the whole reply is one message.
    fn answer(&self, message: Bytes, accept: Accept) -> Response<Body>;
    /// The answer when the child sent `first` before its response: an SSE stream fed by
    /// [`pump`].
    fn stream(self, call: Call, first: Bytes, timeout: Duration) -> Response<Body>;
}

/// Where a streamed reply's messages go.
pub(super) trait Sink: Send + 'static {
    /// Resolves once nobody will read the reply any more (the call is then cancelled).
    fn gone(&mut self) -> impl Future<Output = ()> + Send + 'static;
    /// Progress: lossy by nature (MCP: senders should rate-limit it), dropped when the
    /// reader is behind.
    fn offer(&mut self, message: Bytes);
    /// A message that must not be lost (a child's request, the final response), waiting
    /// for room at most `timeout`; false when the reader is gone.
    fn deliver(&mut self, message: Bytes, timeout: Duration) -> impl Future<Output = bool> + Send;
    /// The reply is complete (with or without a response).
    fn end(&mut self);
}

/// Reads the `Accept`, `Content-Type` and body of a POST; the body comes back on one line.
pub(super) async fn read_post(
    app: &App,
    req: http::Request<Incoming>,
) -> Result<(Accept, HeaderMap, Bytes), Response<Body>> {
    let accept = accept(req.headers());
    if !accept.json && !accept.sse {
        let msg = "Accept must allow application/json or text/event-stream";
        return Err(rpc_error(StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST, msg));
    }
    if !is_json(req.headers()) {
        let msg = "Content-Type must be application/json";
        return Err(rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            msg,
        ));
    }
    // Split, not clone: the headers are needed after the body is consumed.
    let (parts, incoming) = req.into_parts();
    let headers = parts.headers;
    let body = read_body(&headers, incoming, app.settings.max_body_bytes).await?;
    Ok((accept, headers, envelope::one_line(body)))
}

/// What `Accept` allows; no header accepts anything (RFC 9110).
pub(super) fn accept(headers: &HeaderMap) -> Accept {
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
        };
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

/// Relays `post` to the tenant's child and answers as JSON or SSE, as `era` shapes it.
pub(super) async fn relay(post: &Post<'_>, era: impl Era) -> Response<Body> {
    let (app, ctx) = (post.app, post.ctx);
    let timeout = app.settings.request_timeout;
    // A relay handed out just as the reaper or a reload stopped it refuses the send; the
    // request was never seen by any child, so it goes to the replacement once.
    let mut attempts = 2;
    loop {
        attempts -= 1;
        let relay = match app
            .pool
            .relay(&ctx.tenant, &ctx.spec, era.first_params())
            .await
        {
            Ok((relay, _)) => relay,
            Err(e) => return start_failed(post.id(), e),
        };
        if relay.inflight() >= app.settings.max_inflight_per_tenant {
            let msg = format!(
                "This client has {} requests in flight; retry shortly.",
                relay.inflight()
            );
            return ApiError::unavailable("TOO_MANY_REQUESTS", msg, 1).into_response();
        }
        if let Some(reply) = era.local(&relay, post).await {
            return era.answer(reply, post.accept);
        }
        match relay
            .call(post.body, post.env, era.owner(), post.accept.sse)
            .await
        {
            Ok(call) => return respond(call, era, post.accept, timeout).await,
            Err(e) if attempts > 0 && !relay.usable() => {
                debug!(client_id = %ctx.tenant.id, pid = relay.pid(), error = %e, "child stopped while the request was handed to it; retrying with its replacement");
            }
            Err(e) => {
                let reply =
                    envelope::error_response(post.id(), INTERNAL_ERROR, &e.to_string(), None);
                return json_response(StatusCode::OK, reply.into());
            }
        }
    }
}

/// Answers with JSON if the first thing the child sends is the response; else streams.
async fn respond(
    mut call: Call,
    era: impl Era,
    accept: Accept,
    timeout: Duration,
) -> Response<Body> {
    loop {
        match call.next(timeout).await {
            CallEvent::Final(message) => return era.answer(message, accept),
            CallEvent::Related(_) if !accept.sse => continue, // JSON-only caller: nowhere to put it
            CallEvent::Related(first) => return era.stream(call, first, timeout),
            CallEvent::Cancelled => return cancelled(&call, accept),
        }
    }
}

/// Moves `call`'s messages to `sink` until the final response (passed through `finish`),
/// a cancellation, or the reader going away (which drops the call: the child is told
/// `notifications/cancelled`).
pub(super) async fn pump(
    mut call: Call,
    mut sink: impl Sink,
    timeout: Duration,
    finish: impl FnOnce(Bytes) -> Bytes + Send,
) {
    let gone = sink.gone();
    tokio::pin!(gone);
    loop {
        let event = tokio::select! {
            biased;
            () = &mut gone => {
                debug!(id = %String::from_utf8_lossy(call.orig_id()), "caller left its reply; cancelling the request");
                sink.end();
                return;
            }
            event = call.next(timeout) => event,
        };
        match event {
            // The child waits for an answer to its own request: wait for room, never drop it.
            CallEvent::Related(message) if is_request(&message) => {
                if !sink.deliver(message, timeout).await {
                    return; // the caller went away
                }
            }
            CallEvent::Related(message) => sink.offer(message),
            CallEvent::Final(message) => {
                // A gone caller has nothing left to receive.
                sink.deliver(finish(message), timeout).await;
                sink.end();
                return;
            }
            CallEvent::Cancelled => {
                sink.end(); // the reply ends with no response
                return;
            }
        }
    }
}

/// A reply that is not resumable: an SSE stream of bare messages.
struct Plain {
    tx: mpsc::Sender<Bytes>,
}

impl Sink for Plain {
    fn gone(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }

    fn offer(&mut self, message: Bytes) {
        if self.tx.try_send(message).is_err() {
            debug!("progress dropped: caller is not keeping up");
        }
    }

    async fn deliver(&mut self, message: Bytes, _timeout: Duration) -> bool {
        // No replay to fall back on: wait as long as the caller is there.
        self.tx.send(message).await.is_ok()
    }

    fn end(&mut self) {}
}

/// A non-resumable SSE reply: `first`, then the rest of `call` (final reply through
/// `finish`). Dropping the body (caller gone) cancels the call at the child.
pub(super) fn stream_plain(
    call: Call,
    first: Bytes,
    timeout: Duration,
    finish: impl FnOnce(Bytes) -> Bytes + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let _ = tx.try_send(first); // fresh channel with room: cannot fail
    // Owned by the response body: ends at the final message, or when the body is dropped.
    tokio::spawn(pump(call, Plain { tx }, timeout, finish));
    sse_response(SseBody::new(rx, None, Box::new(())))
}

/// True for a child's request (sampling, elicitation, ...) relayed on a caller's reply, as
/// opposed to a progress notification.
pub(super) fn is_request(message: &[u8]) -> bool {
    envelope::parse(message).is_ok_and(|env| env.kind == Kind::Request)
}

/// One complete message, as JSON when accepted, else as a one-event SSE stream.
pub(super) fn single(message: Bytes, accept: Accept) -> Response<Body> {
    if accept.json {
        return json_response(StatusCode::OK, message);
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(message); // capacity 1, fresh channel: cannot fail
    sse_response(SseBody::new(rx, None, Box::new(())))
}

/// An SSE response around `body`.
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
