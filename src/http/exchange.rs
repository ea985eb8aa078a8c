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
use serde_json::json;
use tokio::sync::mpsc;
use tracing::debug;

use super::App;
use super::RequestBody;
use super::body::{Body, SseBody};
use super::error::{ApiError, json_response, rpc_error};
use crate::clients::ClientSpec;
use crate::mcp::call::{self, Call, CallEvent};
use crate::mcp::caps::ClientCaps;
use crate::mcp::control;
use crate::mcp::envelope::{self, Envelope, INTERNAL_ERROR, INVALID_REQUEST, Kind};
use crate::mcp::exit;
use crate::mcp::interest::Level;
use crate::mcp::relay::{CallFor, Relay, SendError};
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
pub(super) trait Era: Send + Sync {
    /// The caller that owns the call at the relay (its session), if any.
    fn owner(&self) -> Option<Arc<str>>;
    /// What the caller can be asked in `input_required` rounds (stateless callers only).
    fn asks(&self) -> Option<ClientCaps> {
        None
    }
    /// The least severe child log message the caller wants on its reply (stateless
    /// callers that opted in only).
    fn log_level(&self) -> Option<Level> {
        None
    }
    /// A child's request arrived before anything was sent: the reply that asks the caller
    /// in an `input_required` round (the era keeps the call), or the call back to go on.
    fn child_request(&self, call: Call, _request: Bytes) -> Result<Bytes, Call> {
        Err(call)
    }
    /// `initialize` params for a tenant whose child was never initialized.
    fn first_params(&self) -> Option<&str>;
    /// The call as it reaches the era, before anything of its reply is shaped: which child
    /// it went to, and how a timeout is answered.
    fn served_by(&mut self, _call: &mut Call) {}
    /// A reply mcpmux gives itself instead of relaying; `None` relays.
    fn local<'a>(
        &'a self,
        relay: &'a Arc<Relay>,
        post: &'a Post<'a>,
    ) -> impl Future<Output = Option<Bytes>> + Send + 'a;
    /// The answer when the whole reply is one message.
    fn answer(&self, message: Bytes, accept: Accept) -> Response<Body>;
    /// The answer as an SSE stream fed by [`pump`]: the child sent `first` before its
    /// response, or (`None`) the response is late (`--sse-after`).
    fn stream(self, call: Call, first: Option<Bytes>, timeout: Duration) -> Response<Body>;
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
    /// A child's request: delivered like any message that must not be lost, and the call
    /// goes on; `None` when the reply ends here (the caller left, or the sink kept the call).
    fn child_request(
        &mut self,
        call: Call,
        request: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Option<Call>> + Send {
        async move { self.deliver(request, timeout).await.then_some(call) }
    }
    /// The reply is complete (with or without a response).
    fn end(&mut self);
}

/// Reads the `Accept`, `Content-Type` and body of a POST; the body comes back on one line.
pub(super) async fn read_post(
    app: &App,
    req: http::Request<RequestBody>,
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
    body: RequestBody,
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
    let timeout = post.app.settings.request_timeout;
    let sent = hand_off(&mut ToChild { post, era: &era }).await;
    match sent {
        Err(response) => response,
        Ok(Ok(Sent::Local(reply))) => era.answer(reply, post.accept),
        Ok(Ok(Sent::Call(call))) => respond(call, era, post, timeout).await,
        Ok(Err(e)) => {
            let reply = envelope::error_response(post.id(), e.code(), &e.to_string(), None);
            json_response(StatusCode::OK, reply.into())
        }
    }
}

/// What the child's side made of a request.
enum Sent {
    /// mcpmux answered itself.
    Local(Bytes),
    /// The request is on its way to the child.
    Call(Call),
}

/// The two steps of handing a request to a child.
trait Handing {
    /// What [`Handing::send`] yields.
    type Sent: Send;
    /// The relay to use now, or the answer that there is none.
    fn acquire(&mut self) -> impl Future<Output = Result<Arc<Relay>, Response<Body>>> + Send;
    /// Sends the request on `relay`.
    fn send(
        &mut self,
        relay: &Arc<Relay>,
    ) -> impl Future<Output = Result<Self::Sent, SendError>> + Send;
}

/// A POST handed to the tenant's child under the in-flight cap.
struct ToChild<'a, E> {
    post: &'a Post<'a>,
    era: &'a E,
}

impl<E: Era + Sync> Handing for ToChild<'_, E> {
    type Sent = Sent;

    async fn acquire(&mut self) -> Result<Arc<Relay>, Response<Body>> {
        let (app, ctx) = (self.post.app, self.post.ctx);
        let params = self.era.first_params();
        let relay = match app.pool.relay(&ctx.tenant, &ctx.spec, params).await {
            Ok((relay, _)) => relay,
            Err(e) => return Err(start_failed(self.post.id(), e)),
        };
        if relay.inflight() >= app.settings.max_inflight_per_tenant {
            let msg = format!(
                "This client has {} requests in flight; retry shortly.",
                relay.inflight()
            );
            return Err(ApiError::unavailable("TOO_MANY_REQUESTS", msg, 1).into_response());
        }
        Ok(relay)
    }

    async fn send(&mut self, relay: &Arc<Relay>) -> Result<Sent, SendError> {
        let post = self.post;
        if let Some(reply) = self.era.local(relay, post).await {
            return Ok(Sent::Local(reply));
        }
        let to = CallFor {
            session: self.era.owner(),
            streams: post.accept.sse,
            asks: self.era.asks(),
            log_level: self.era.log_level(),
        };
        // The child must be verbose enough before the request reaches it.
        let level = match to.log_level {
            Some(level) => Some(control::hold_level(relay, level).await),
            None => None,
        };
        let mut call = relay.call(post.body, post.env, to).await?;
        call.hold(level);
        Ok(Sent::Call(call))
    }
}

/// Sends on the relay `handing` acquires. A relay stopped between the two (by the reaper, a
/// reload or `--max-children`) refuses the send; the request then reached no child, so it
/// goes once more to the relay acquired next: the replacement.
async fn hand_off<H: Handing>(
    handing: &mut H,
) -> Result<Result<H::Sent, SendError>, Response<Body>> {
    let relay = handing.acquire().await?;
    match handing.send(&relay).await {
        Err(e) if !relay.usable() => {
            debug!(pid = relay.pid(), error = %e, "child stopped while the request was handed to it; retrying with its replacement");
            let replacement = handing.acquire().await?;
            Ok(handing.send(&replacement).await)
        }
        sent => Ok(sent),
    }
}

/// Answers with JSON if the first thing the child sends is the response; else streams.
///
/// A caller that accepts SSE gets SSE also when the child is still silent after
/// `--sse-after`: the headers (and a session's priming event) go out then, the response
/// later as an event. Behind a load balancer that matters when the node dies mid-call: a
/// client that already has the headers loses that call only, one still waiting for them
/// (the Python SDK) its whole session. The switch shares the request timeout's one timer,
/// so a call answered in time pays nothing for it.
pub(super) async fn respond(
    mut call: Call,
    mut era: impl Era,
    post: &Post<'_>,
    timeout: Duration,
) -> Response<Body> {
    era.served_by(&mut call);
    let accept = post.accept;
    let sse_after = post.app.settings.sse_after;
    if accept.sse && sse_after.is_zero() {
        return era.stream(call, None, timeout);
    }
    let switch = accept.sse.then(|| call::after(sse_after));
    loop {
        let Some(event) = call.next_until(timeout, switch).await else {
            return era.stream(call, None, timeout);
        };
        match event {
            CallEvent::Final(message) => return era.answer(message, accept),
            CallEvent::Related(message) if era.asks().is_some() && is_request(&message) => {
                match era.child_request(call, message) {
                    Ok(reply) => return era.answer(reply, accept),
                    Err(back) => call = back,
                }
            }
            CallEvent::Related(_) if !accept.sse => continue, // JSON-only caller: nowhere to put it
            CallEvent::Related(first) => return era.stream(call, Some(first), timeout),
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
                match sink.child_request(call, message, timeout).await {
                    Some(back) => call = back,
                    None => return, // the caller went away, or the sink kept the call
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

/// Turns a child's request on a call into the `input_required` reply that ends the call's
/// reply, keeping the call; gives the call back when it cannot.
pub(super) type Parker = Box<dyn Fn(Call, Bytes) -> Result<Bytes, Call> + Send + Sync>;

/// A reply that is not resumable: an SSE stream of bare messages.
struct Plain {
    tx: mpsc::Sender<Bytes>,
    park: Option<Parker>,
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

    async fn child_request(
        &mut self,
        call: Call,
        request: Bytes,
        timeout: Duration,
    ) -> Option<Call> {
        let Some(park) = &self.park else {
            return self.deliver(request, timeout).await.then_some(call);
        };
        match park(call, request) {
            Ok(reply) => {
                let _ = self.tx.send(reply).await; // a gone caller can still retry
                None
            }
            Err(call) => Some(call),
        }
    }

    fn end(&mut self) {}
}

/// A non-resumable SSE reply: `first` if any, then the rest of `call` (final reply through
/// `finish`; a child's request through `park`, when given). Dropping the body (caller
/// gone) cancels the call at the child.
pub(super) fn stream_plain(
    call: Call,
    first: Option<Bytes>,
    timeout: Duration,
    finish: impl FnOnce(Bytes) -> Bytes + Send + 'static,
    park: Option<Parker>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    if let Some(first) = first {
        let _ = tx.try_send(first); // fresh channel with room: cannot fail
    }
    // Owned by the response body: ends at the final message, or when the body is dropped.
    tokio::spawn(pump(call, Plain { tx, park }, timeout, finish));
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

/// A failure to get a child, as the caller sees it: 503 for a crash loop or a full pool,
/// else a JSON-RPC error under the caller's `id` whose `error.data` has the child's exit
/// status and stderr tail (DESIGN §5).
pub(super) fn start_failed(id: &str, err: StartError) -> Response<Body> {
    let message = err.to_string();
    let data = match err {
        StartError::Backoff(wait) => {
            let msg = format!(
                "This client's MCP server keeps crashing; retrying in {} s.",
                wait.as_secs().max(1)
            );
            return ApiError::unavailable("CHILD_BACKOFF", msg, wait.as_secs_f64().ceil() as u64)
                .into_response();
        }
        StartError::Busy(max) => {
            let msg = format!("All {max} MCP server processes are busy; retry shortly.");
            return ApiError::unavailable("TOO_MANY_CHILDREN", msg, 1).into_response();
        }
        StartError::NotInitialized => None,
        StartError::Spawn { data, .. } => Some(data),
        StartError::Rejected { child_error, exit } => {
            let mut data = exit.map_or_else(|| json!({}), |e| exit::report(&e.info, &e.limits).1);
            if let Some(obj) = data.as_object_mut() {
                let parsed = serde_json::from_str(&child_error).unwrap_or(json!(child_error));
                obj.insert("child_error".into(), parsed);
            }
            Some(data)
        }
        StartError::Died { exit, .. } => {
            Some(exit.map_or_else(|| json!({}), |e| exit::report(&e.info, &e.limits).1))
        }
    };
    let reply = envelope::error_response(id, INTERNAL_ERROR, &message, data.as_ref());
    json_response(StatusCode::OK, reply.into())
}

#[cfg(test)]
mod tests {
    use tokio::sync::Notify;

    use super::*;
    use crate::child;
    use crate::mcp::session::Sessions;

    /// A relay over a real child (`cat`, which reads its stdin until it closes).
    fn relay() -> Arc<Relay> {
        let spec = child::testing::spec("cat", &[]);
        let settings = child::testing::settings(100);
        let (handle, _events) = child::spawn(&spec, &settings).unwrap();
        let sessions = Arc::new(Sessions::default());
        Relay::new(
            spec.id.clone(),
            handle,
            [0; 32],
            spec.limits,
            sessions,
            Arc::new(Notify::new()),
        )
    }

    /// Hands out `relays` (last first) and records which child each send went to.
    struct Relays {
        relays: Vec<Arc<Relay>>,
        sends: Vec<u32>,
    }

    impl Handing for Relays {
        type Sent = u32;

        async fn acquire(&mut self) -> Result<Arc<Relay>, Response<Body>> {
            let none = || super::super::error::empty(StatusCode::SERVICE_UNAVAILABLE);
            self.relays.pop().ok_or_else(none)
        }

        async fn send(&mut self, relay: &Arc<Relay>) -> Result<u32, SendError> {
            self.sends.push(relay.pid());
            let line = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#);
            relay.notify(line).await.map(|()| relay.pid())
        }
    }

    #[tokio::test]
    async fn a_child_stopped_during_the_hand_off_is_replaced_once() {
        let (reaped, replacement) = (relay(), relay());
        // The reaper stops the child after the pool handed it out, before the send.
        reaped.stop();
        let mut handing = Relays {
            relays: vec![replacement.clone(), reaped.clone()],
            sends: Vec::new(),
        };
        let sent = hand_off(&mut handing).await.ok().map(|sent| sent.ok());
        assert_eq!(
            sent,
            Some(Some(replacement.pid())),
            "the replacement took it"
        );
        assert_eq!(handing.sends, [reaped.pid(), replacement.pid()]);

        // Twice unlucky is an error, not a loop.
        replacement.stop();
        let mut handing = Relays {
            relays: vec![relay(), replacement.clone(), reaped.clone()],
            sends: Vec::new(),
        };
        let sent = hand_off(&mut handing).await.ok();
        assert!(matches!(sent, Some(Err(SendError::Gone(_)))));
        assert_eq!(handing.sends, [reaped.pid(), replacement.pid()]);
        for relay in handing.relays.iter().chain([&reaped, &replacement]) {
            relay.stop();
            relay.stopped().await;
        }
    }
}
