//! `/mcp`, session era (DESIGN §3): `initialize`, then POSTs under `Mcp-Session-Id`, GET
//! for the session's stream, DELETE to end it. Which era a POST belongs to is decided once,
//! by `super::endpoint`; relaying is the exchange's (`super::exchange`).
//!
//! Session-era SSE replies are resumable: each is a reply stream of the session (see
//! [`crate::mcp::stream`]), opened with a priming event, and a GET with `Last-Event-ID`
//! resumes it or the GET stream. A caller whose reply connection breaks has the resume grace
//! (`--resume-grace`) to come back; after it the request is cancelled at the child (a
//! disconnect alone is not a cancellation, as the spec says; a caller that never returns is).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use super::App;
use super::body::Body;
use super::error::{ApiError, empty, json_response, rpc_error};
use super::exchange::{self, Accept, Ctx, Era, Post, start_failed};
use super::reply::{self, Replying};
use crate::mcp::admission::{Cap, Full, InUse, Use};
use crate::mcp::call::Call;
use crate::mcp::caps::ClientCaps;
use crate::mcp::control;
use crate::mcp::envelope::{
    self, Envelope, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Kind, span_of, splice,
};
use crate::mcp::relay::Relay;
use crate::mcp::session::{InsertError, Session, new_session_id};
use crate::mcp::version::{self, Revision};
use crate::token::{EndMark, IssueError, ReducedParams};

/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// Initialize-era protocol versions mcpmux serves; a caller asking for one gets it.
pub use crate::mcp::stateless::SESSION_ERA_VERSIONS;
/// The request header naming the last SSE event a resuming caller saw.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// A session-era POST: `initialize`, or a message of an existing session.
pub(super) async fn post(post: &Post<'_>) -> Response<Body> {
    let env = post.env;
    if env.kind == Kind::Request && env.method.as_deref() == Some("initialize") {
        return initialize(post).await;
    }
    let ctx = post.ctx;
    let in_use = match session_of(post.app, ctx, post.headers).await {
        Ok(in_use) => in_use,
        Err(response) => return response,
    };
    let session = in_use.session().clone();
    match env.kind {
        Kind::Request => {
            let era = SessionEra {
                to: replying(post.app, ctx, &session),
                session,
                timeout: post.app.settings.request_timeout,
            };
            exchange::relay(post, era).await
        }
        Kind::Notification => notification(ctx, &session, post.body, env).await,
        Kind::Result | Kind::Error => {
            let relay = ctx.tenant.current_relay();
            let delivered = match relay {
                Some(relay) => relay.answer(&session.id, post.body, env).await,
                None => false,
            };
            if !delivered {
                debug!(client_id = %ctx.tenant.id, "caller response matches no child request; dropped");
            }
            empty(StatusCode::ACCEPTED)
        }
    }
}

/// A request of a session: owned by it at the relay, its subscriptions and log level
/// answered by mcpmux ([`control`]), its SSE replies resumable.
struct SessionEra {
    session: Arc<Session>,
    to: Replying,
    timeout: Duration,
}

impl Era for SessionEra {
    fn owner(&self) -> Option<Arc<str>> {
        Some(self.session.id.clone())
    }

    fn first_params(&self) -> Option<&str> {
        None // a session exists, so its tenant was initialized
    }

    fn local<'a>(
        &'a self,
        relay: &'a Arc<Relay>,
        post: &'a Post<'a>,
    ) -> impl Future<Output = Option<Bytes>> + Send + 'a {
        control::answer(relay, &self.session, post.body, post.env, self.timeout)
    }

    fn answer(&self, message: Bytes, accept: Accept) -> Response<Body> {
        single(message, accept, &self.to)
    }

    fn stream(self, call: Call, first: Option<Bytes>, timeout: Duration) -> Response<Body> {
        self.to.stream(call, first, timeout)
    }
}

/// The 404 for an unknown, ended or refused session id.
pub(super) fn session_not_found() -> Response<Body> {
    rpc_error(
        StatusCode::NOT_FOUND,
        INVALID_REQUEST,
        "session not found; initialize a new session",
    )
}

fn session_id(headers: &HeaderMap) -> Result<&str, Response<Body>> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            let msg = "Mcp-Session-Id header is required (send initialize first)";
            rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, msg)
        })
}

/// The 503 at a session cap when every session under it is in use.
pub(super) fn sessions_full(full: Full) -> Response<Body> {
    let message = match full.cap {
        Cap::Tenant => format!(
            "This client has {} sessions open, each with an open stream or a request in flight; end one with DELETE or retry later.",
            full.max
        ),
        Cap::Global => "The server has its maximum number of sessions open, each with an open stream or a request in flight; retry later.".to_string(),
    };
    ApiError::unavailable("TOO_MANY_SESSIONS", message, full.retry_after).into_response()
}

/// The answer when a session could not be added.
pub(super) fn not_inserted(e: InsertError) -> Response<Body> {
    match e {
        InsertError::Full(full) => sessions_full(full),
        InsertError::Ended => session_not_found(),
    }
}

/// The request's session, in use until the answer is produced: known here, or resumed
/// from its signed id (see `resume`). A session that has just ended (evicted, expired,
/// deleted) is unknown: 404.
pub(super) async fn session_of(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<InUse, Response<Body>> {
    let id = session_id(headers)?;
    let sessions = &ctx.tenant.sessions;
    let session = match sessions.get(id) {
        Some(session) if session.signed_expired() => {
            sessions.remove(id); // its absolute expiry ends it on every node
            return Err(session_not_found());
        }
        Some(session) => sessions
            .enter(&session, Use::Call)
            .ok_or_else(session_not_found)?,
        None => super::resume::resume(app, ctx, id).await?,
    };
    // Any supported revision may be named (TS clients send their oldest); it need not be
    // the session's own.
    if let Some(value) = headers.get(VERSION_HEADER)
        && let Err(msg) = version::check_header(value.as_bytes())
    {
        return Err(rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, &msg));
    }
    Ok(session)
}

async fn initialize(post: &Post<'_>) -> Response<Body> {
    let (app, ctx, env) = (post.app, post.ctx, post.env);
    let id = post.id();
    let Some(params) = env.params else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            "initialize needs params",
        );
    };
    // One parse serves the negotiation, the capabilities and a signed id.
    let malformed = || {
        rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            "initialize params are malformed",
        )
    };
    let Some(parsed) = ReducedParams::parse(params.get()) else {
        return malformed();
    };
    let wanted = match parsed.protocol_version {
        None => String::new(),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(wanted) => wanted,
            Err(_) => return malformed(),
        },
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
    let version = version::negotiate(&wanted, &child_version);
    let revision = Revision::parse(&version).unwrap_or(Revision::R2024_11_05);
    let caps = ClientCaps::parse(parsed.capabilities, revision);
    let (session_id, mark) = match issue_id(app, ctx, &version, parsed) {
        Ok(issued) => issued,
        Err(e) => {
            return rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                INTERNAL_ERROR,
                &format!("no randomness for a session id: {e}"),
            );
        }
    };
    let inserted = (ctx.tenant.sessions).insert(session_id.clone(), version.clone(), caps);
    let in_use = match inserted {
        Ok(in_use) => in_use,
        Err(e) => return not_inserted(e),
    };
    let session = in_use.session();
    if let Some(mark) = mark {
        session.mark_signed(|| mark);
    }
    let result = with_version(&cache.result, &version);
    let mut message = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"#).into_bytes();
    message.extend_from_slice(&result);
    message.push(b'}');
    let to = replying(app, ctx, session);
    let mut response = single(message.into(), post.accept, &to);
    let shared = Bytes::from_owner(IdBytes(session_id));
    if let Ok(value) = HeaderValue::from_maybe_shared(shared) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// A session id as the bytes of its response header, shared with the session map's key
/// rather than copied (a signed id is some 200–300 bytes).
struct IdBytes(Arc<str>);

impl AsRef<[u8]> for IdBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A new session id: signed with `--session-key-file`, else node-local random. A session
/// whose params cannot be signed (over the size limit) gets a node-local id.
fn issue_id(
    app: &App,
    ctx: &Ctx,
    version: &str,
    params: ReducedParams<'_>,
) -> Result<(Arc<str>, Option<EndMark>), getrandom::Error> {
    if let Some(tokens) = &app.settings.session_tokens {
        match tokens.issue_reduced(ctx.tenant.id.as_str(), version, params) {
            Ok((token, mark)) => return Ok((token, Some(mark))),
            Err(IssueError::Random(e)) => return Err(e),
            Err(e) => {
                warn!(client_id = %ctx.tenant.id, error = %e, "session id not signed; this session cannot move between nodes");
            }
        }
    }
    Ok((new_session_id()?, None))
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

/// The session's reply streams, for answers that must be resumable.
fn replying(app: &App, ctx: &Ctx, session: &Arc<Session>) -> Replying {
    let sessions = ctx.tenant.sessions.clone();
    Replying::new(sessions, session.clone(), app.settings.resume_grace)
}

/// One complete message, as JSON when accepted, else as a reply stream of its own.
fn single(message: Bytes, accept: Accept, to: &Replying) -> Response<Body> {
    if accept.json {
        return json_response(StatusCode::OK, message);
    }
    to.single(&message)
}

pub(super) async fn notification(
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

pub(super) async fn get(app: &Arc<App>, ctx: Ctx, headers: &HeaderMap) -> Response<Body> {
    if !exchange::accept(headers).sse {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "Accept must allow text/event-stream",
        );
    }
    let in_use = match session_of(app, &ctx, headers).await {
        Ok(in_use) => in_use,
        Err(response) => return response,
    };
    let session = in_use.session();
    let last_event_id = match headers.get(LAST_EVENT_ID_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(_)) => {
            let msg = "Last-Event-ID must be visible ASCII; open the stream without it";
            return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, msg);
        }
    };
    let attached = match ctx.tenant.sessions.connect(session, last_event_id) {
        Ok(attached) => attached,
        // Unknown or expired ids are refused rather than answered with a silent gap.
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, &e.to_string()),
    };
    let shutdown = app.shutdown.clone().cancelled_owned();
    reply::framed_response(attached, Some(shutdown))
}

pub(super) async fn delete(app: &Arc<App>, ctx: Ctx, headers: &HeaderMap) -> Response<Body> {
    let id = match session_id(headers) {
        Ok(id) => id,
        Err(response) => return response,
    };
    if ctx.tenant.sessions.get(id).is_none() {
        // A signed id this node does not hold is ended without being resumed first.
        return if super::resume::end_unknown(app, &ctx, id) {
            empty(StatusCode::NO_CONTENT)
        } else {
            session_not_found()
        };
    }
    let in_use = match session_of(app, &ctx, headers).await {
        Ok(in_use) => in_use,
        Err(response) => return response,
    };
    ctx.tenant.sessions.remove(&in_use.session().id);
    empty(StatusCode::NO_CONTENT)
}
