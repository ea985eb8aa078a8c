//! `/mcp` POSTs of the stateless era (2026-07-28): no session, no `initialize`; each
//! request carries its version and capabilities in `_meta`, mirrored into headers.
//!
//! Owns this era's glue: whether a POST belongs to it ([`claim`]), reading the routing
//! headers, answering the validation ladder's refusals with 400, `server/discover` from
//! the tenant's cached `initialize` result, and how a relayed request's reply is shaped
//! ([`StatelessEra`]). Relaying itself is the exchange's (`super::exchange`). Replies are
//! never resumable (the era has no `Last-Event-ID`), and closing one cancels the request
//! at the child. The MCP rules themselves live in [`crate::mcp::stateless`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::debug;

use super::body::Body;
use super::body::SseBody;
use super::error::{empty, json_response};
use super::exchange::{self, Accept, Era, Parker, Post, single, sse_response, start_failed};
use super::mcp::{SESSION_HEADER, VERSION_HEADER};
use crate::mcp::call::Call;
use crate::mcp::caps::ClientCaps;
use crate::mcp::control;
use crate::mcp::envelope::{
    self, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Kind, METHOD_NOT_FOUND,
};
use crate::mcp::interest::Level;
use crate::mcp::listen;
use crate::mcp::relay::Relay;
use crate::mcp::rounds::{self, Rounds};
use crate::mcp::session::Listening;
use crate::mcp::stateless::{self as rules, Admitted, Header, Headers, Rejection, RequestMeta};

/// The method header of 2026-07-28.
pub const METHOD_HEADER: &str = "mcp-method";
/// The name header of 2026-07-28.
pub const NAME_HEADER: &str = "mcp-name";

/// The stateless-era parts of `post` if it belongs to that era; `None` leaves it to the
/// session era.
pub(super) fn claim<'a>(post: &Post<'a>) -> Option<RequestMeta<'a>> {
    if post.headers.contains_key(SESSION_HEADER) {
        return None; // a session names the session era, whatever else the request says
    }
    let version = header(post.headers, VERSION_HEADER);
    let meta = rules::request_meta(post.env.params);
    rules::is_stateless(post.env, version, &meta).then_some(meta)
}

/// Serves a POST that [`claim`] gave to this era.
pub(super) async fn serve(post: &Post<'_>, meta: &RequestMeta<'_>) -> Response<Body> {
    if post.env.kind == Kind::Notification {
        // 2026-07-28 defines no client notifications over HTTP, and there is no session
        // whose state one could change: accepted and dropped.
        debug!(client_id = %post.ctx.tenant.id, method = ?post.env.method, "stateless notification dropped");
        return empty(StatusCode::ACCEPTED);
    }
    let routing = Headers {
        version: header(post.headers, VERSION_HEADER),
        method: header(post.headers, METHOD_HEADER),
        name: header(post.headers, NAME_HEADER),
    };
    let method = post.method();
    let admitted = match rules::validate(method, &routing, meta) {
        Ok(admitted) => admitted,
        Err(rejection) => return refuse(post.id(), &rejection),
    };
    if let Some(why) = rules::not_in_this_era(method) {
        return not_found(post.id(), &why);
    }
    let log_level = match rules::log_level(meta) {
        Ok(level) => level,
        Err(why) => return invalid(post.id(), &why),
    };
    // The child was perhaps never initialized: then mcpmux does it, for this caller.
    let init_params = rules::init_params(&admitted);
    if method == "server/discover" {
        return discover(post, &init_params).await;
    }
    if method == "subscriptions/listen" {
        return listen(post, &init_params).await;
    }
    if method == "tools/call"
        && let Some(refused) = param_headers(post, meta, &init_params).await
    {
        return refused;
    }
    log_admitted(post, &admitted);
    let era = StatelessEra {
        method: method.to_owned(),
        init_params,
        asks: rules::asks(method, &admitted),
        log_level,
        rounds: post.ctx.tenant.rounds.clone(),
        digest: rounds::request_digest(method, post.env.params),
        server_info: None,
    };
    let fields = rounds::round_fields(post.env.params);
    match fields.request_state {
        Some(state) if era.asks.is_some() => retry(post, era, state, fields.input_responses).await,
        _ => exchange::relay(post, era).await,
    }
}

/// Checks a `tools/call`'s `Mcp-Param-*` headers against what the child's schema of that
/// tool declares: `None` when they match (or nothing is declared), else the refusal
/// (400/-32020, or -32603 when the child's tool list cannot be read).
async fn param_headers(
    post: &Post<'_>,
    meta: &RequestMeta<'_>,
    init_params: &str,
) -> Option<Response<Body>> {
    let tool = meta
        .name
        .and_then(|n| serde_json::from_str::<Cow<'_, str>>(n.get()).ok())?;
    let (pool, ctx) = (&post.app.pool, post.ctx);
    let relay = match pool.relay(&ctx.tenant, &ctx.spec, Some(init_params)).await {
        Ok((relay, _)) => relay,
        Err(e) => return Some(start_failed(post.id(), e)),
    };
    let declared = match relay
        .tool_declarations(post.app.settings.request_timeout)
        .await
    {
        Ok(declared) => declared,
        Err(why) => {
            let why = format!("cannot check Mcp-Param headers: {why}");
            let message = envelope::error_response(post.id(), INTERNAL_ERROR, &why, None);
            return Some(json_response(StatusCode::OK, message.into()));
        }
    };
    let declarations = declared.of(&tool)?;
    // Parsed only for tools that declare headers.
    let arguments: Option<serde_json::Value> = meta
        .arguments
        .and_then(|a| serde_json::from_str(a.get()).ok());
    let checked = rules::check_param_headers(&tool, declarations, arguments.as_ref(), |name| {
        header(post.headers, name)
    });
    checked.err().map(|rejection| refuse(post.id(), &rejection))
}

/// A retry of an `input_required` round: the parked call resumes, the caller's answer goes
/// to the child, and this reply carries what the call does next.
async fn retry(
    post: &Post<'_>,
    mut era: StatelessEra,
    state: &RawValue,
    responses: Option<&RawValue>,
) -> Response<Body> {
    let Ok(state) = serde_json::from_str::<Cow<'_, str>>(state.get()) else {
        return invalid(post.id(), "requestState must be a string");
    };
    let mut resumed = match era.rounds.resume(&state, &era.digest) {
        Ok(resumed) => resumed,
        Err(e) => return invalid(post.id(), &e.to_string()),
    };
    let id = Bytes::copy_from_slice(post.id().as_bytes());
    let token = envelope::progress_token(post.env.params);
    let token = token.map(|t| Bytes::copy_from_slice(t.get().as_bytes()));
    resumed.call.resume(id, token);
    era.served_by(&mut resumed.call);
    let Some(answer) = rounds::response_for(responses, &resumed.key) else {
        // Asked, not answered: ask again rather than fail (SEP-2322 error handling).
        return match era.rounds.ask_again(resumed) {
            Ok(reply) => era.answer(reply, post.accept),
            Err(call) => refused(call, "too many calls wait for input"),
        };
    };
    let (relay, owner) = (resumed.call.relay().clone(), resumed.call.input_owner());
    if !relay.answer_input(&owner, &resumed.key, answer).await {
        debug!(client_id = %post.ctx.tenant.id, key = %resumed.key, "input response for a request the child no longer waits for");
    }
    let timeout = post.app.settings.request_timeout;
    exchange::respond(resumed.call, era, post, timeout).await
}

/// 400 with "invalid params", under the request's id.
fn invalid(id: &str, why: &str) -> Response<Body> {
    let message = envelope::error_response(id, INVALID_PARAMS, why, None);
    json_response(StatusCode::BAD_REQUEST, message.into())
}

/// The error for a call that cannot go on (dropping it cancels it at the child).
fn refused(call: Call, why: &str) -> Response<Body> {
    let id = String::from_utf8_lossy(call.orig_id()).into_owned();
    let message = envelope::error_response(&id, INTERNAL_ERROR, why, None);
    json_response(StatusCode::OK, message.into())
}

/// Parks `call` on the child's `request` and gives the `input_required` reply, or, when it
/// cannot, refuses the child's request at once and gives the call back.
fn park(rounds: &Arc<Rounds>, digest: [u8; 32], call: Call, request: Bytes) -> Result<Bytes, Call> {
    match rounds.park(call, &request, digest) {
        Ok(reply) => Ok(reply),
        Err(call) => {
            let key = envelope::parse(&request)
                .ok()
                .and_then(|env| env.id.map(|id| id.get().to_owned()));
            if let Some(key) = key {
                let why = "mcpmux cannot ask the caller now";
                call.relay().refuse_input(&call.input_owner(), &key, why);
            }
            Err(call)
        }
    }
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

/// A request without a session: its replies are never resumable, and its final result
/// gets the fields 2026-07-28 requires.
struct StatelessEra {
    method: String,
    init_params: String,
    /// What the caller declared it can be asked (for the methods that allow rounds).
    asks: Option<ClientCaps>,
    /// The least severe child log message the caller wants on its reply.
    log_level: Option<Level>,
    rounds: Arc<Rounds>,
    /// Of the request's method and params, binding its `requestState`s to it.
    digest: [u8; 32],
    /// The `serverInfo` of the child that serves the call, for the result's `_meta`.
    server_info: Option<Bytes>,
}

impl Era for StatelessEra {
    fn owner(&self) -> Option<Arc<str>> {
        None
    }

    fn first_params(&self) -> Option<&str> {
        Some(&self.init_params)
    }

    /// A timeout is an internal error here: 2026-07-28 retires -32000..-32019 (the SDKs
    /// raise their own -32001 / `REQUEST_TIMEOUT` locally, and a peer's must not look
    /// like one).
    fn served_by(&mut self, call: &mut Call) {
        self.server_info = call.relay().server_info().cloned();
        call.time_out_with(INTERNAL_ERROR);
    }

    fn asks(&self) -> Option<ClientCaps> {
        self.asks
    }

    fn log_level(&self) -> Option<Level> {
        self.log_level
    }

    fn child_request(&self, call: Call, request: Bytes) -> Result<Bytes, Call> {
        park(&self.rounds, self.digest, call, request)
    }

    fn local<'a>(
        &'a self,
        _relay: &'a Arc<Relay>,
        _post: &'a Post<'a>,
    ) -> impl Future<Output = Option<Bytes>> + Send + 'a {
        std::future::ready(None)
    }

    /// The whole answer in one message; a child's "method not found" becomes a 404, as
    /// 2026-07-28 requires of a server that does not implement a method, and a missing
    /// client capability (the relay's -32021) a 400.
    fn answer(&self, message: Bytes, accept: Accept) -> Response<Body> {
        let reply = rules::complete_reply(&self.method, message, self.server_info.as_deref());
        match rules::error_code(&reply) {
            Some(METHOD_NOT_FOUND) => json_response(StatusCode::NOT_FOUND, reply),
            Some(rules::MISSING_REQUIRED_CLIENT_CAPABILITY) => {
                json_response(StatusCode::BAD_REQUEST, reply)
            }
            _ => single(reply, accept),
        }
    }

    /// Progress, then the final reply, as SSE. Closing the stream is cancellation in this
    /// era: dropping the call tells the child `notifications/cancelled`.
    fn stream(self, call: Call, first: Option<Bytes>, timeout: Duration) -> Response<Body> {
        let (rounds, digest) = (self.rounds, self.digest);
        let (method, info) = (Arc::<str>::from(self.method), self.server_info);
        let (round_method, round_info) = (method.clone(), info.clone());
        let parker: Option<Parker> = self.asks.map(|_| -> Parker {
            Box::new(move |call, request| {
                let reply = park(&rounds, digest, call, request)?;
                Ok(rules::complete_reply(
                    &round_method,
                    reply,
                    round_info.as_deref(),
                ))
            })
        });
        let finish = move |reply| rules::complete_reply(&method, reply, info.as_deref());
        exchange::stream_plain(call, first, timeout, finish, parker)
    }
}

fn log_admitted(post: &Post<'_>, admitted: &Admitted<'_>) {
    debug!(
        client_id = %post.ctx.tenant.id,
        method = post.method(),
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

/// `subscriptions/listen`: the acknowledgment with the honored filter, then the child's
/// change notifications the caller asked for, tagged, until the caller closes the stream;
/// on shutdown or the tenant's removal the stream ends with the listen request's response.
async fn listen(post: &Post<'_>, init_params: &str) -> Response<Body> {
    if !post.accept.sse {
        let msg = "subscriptions/listen answers with a stream: Accept must allow text/event-stream";
        let message = envelope::error_response(post.id(), INVALID_REQUEST, msg, None);
        return json_response(StatusCode::NOT_ACCEPTABLE, message.into());
    }
    let (pool, ctx) = (&post.app.pool, post.ctx);
    let (relay, cache) = match pool.relay(&ctx.tenant, &ctx.spec, Some(init_params)).await {
        Ok(ready) => ready,
        Err(e) => return start_failed(post.id(), e),
    };
    let can_subscribe = listen::child_can_subscribe(&cache.result);
    let honored = match listen::honor(post.env.params, can_subscribe) {
        Ok(honored) => honored,
        Err(why) => return invalid(post.id(), &why),
    };
    let id = Bytes::copy_from_slice(post.id().as_bytes());
    let listening = ctx.tenant.sessions.listen(honored.clone(), &id);
    control::listen_to(&relay, &listening.key, honored.uris()).await;
    let (tx, body) = mpsc::channel(listen::LISTEN_QUEUE);
    let _ = tx.try_send(listen::acknowledged(&id, &honored)); // fresh channel with room
    let shutdown = post.app.shutdown.clone();
    let Listening { mut rx, guard, .. } = listening;
    let server_info = relay.server_info().cloned();
    // Owned by the response body: ends when the caller closes it, or (gracefully) on
    // shutdown or when the tenant goes; the guard then unsubscribes.
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => None,
                () = tx.closed() => return,
                message = rx.recv() => message,
            };
            let Some(message) = message else { break };
            if tx.send(message).await.is_err() {
                return;
            }
        }
        let _ = tx.send(listen::ended(&id, server_info.as_deref())).await;
    });
    sse_response(SseBody::new(body, None, Box::new(())))
}

/// `server/discover`, answered from the child's cached `initialize` result.
async fn discover(post: &Post<'_>, init_params: &str) -> Response<Body> {
    let (pool, ctx) = (&post.app.pool, post.ctx);
    let cache = match pool.relay(&ctx.tenant, &ctx.spec, Some(init_params)).await {
        Ok((_, cache)) => cache,
        Err(e) => return start_failed(post.id(), e),
    };
    let mut message = format!(r#"{{"jsonrpc":"2.0","id":{},"result":"#, post.id()).into_bytes();
    message.extend_from_slice(&rules::discover_result(&cache.result));
    message.push(b'}');
    single(message.into(), post.accept)
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
