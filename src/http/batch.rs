//! JSON-RPC batches of a 2025-03-26 session (DESIGN §3): one POST holding an array of
//! messages, answered with one array of the responses, or 202 when it held no request.
//!
//! The elements are handled one after the other, each as if it had come alone: requests
//! are relayed (or answered by mcpmux), notifications and responses delivered. A batch's
//! reply is one JSON array, so what the child sends before a response (progress, its own
//! requests) has nowhere to go: its requests are never offered to a batch (they go to
//! another stream or get an error), and progress is dropped.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use super::App;
use super::body::Body;
use super::error::{empty, json_response, rpc_error};
use super::exchange::{Accept, Ctx, single};
use super::mcp::{notification, session_of};
use crate::mcp::batch::{self, BatchError, Element};
use crate::mcp::call::CallEvent;
use crate::mcp::control;
use crate::mcp::envelope::{self, Envelope, INTERNAL_ERROR, Kind};
use crate::mcp::relay::CallFor;
use crate::mcp::session::Session;

/// Answers a POST whose body is a JSON array.
pub(super) async fn serve(
    app: &Arc<App>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
    accept: Accept,
) -> Response<Body> {
    // Malformed JSON is a parse error before anything else, as for a single message.
    let elements = match batch::split(body) {
        Ok(elements) => elements,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let in_use = match session_of(app, ctx, headers).await {
        Ok(in_use) => in_use,
        Err(response) => return response,
    };
    let session = in_use.session().clone();
    if !session.revision.has_batches() {
        let e = BatchError::NotThisRevision(session.protocol_version.clone());
        return rpc_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string());
    }
    let mut responses = Vec::new();
    for element in elements {
        let (range, kind) = match element {
            Element::Message(range, kind) => (range, kind),
            Element::Invalid(e) => {
                let error = envelope::error_response("null", e.code(), &e.to_string(), None);
                responses.push(Bytes::from(error));
                continue;
            }
        };
        let message = body.slice(range);
        let Ok(env) = envelope::parse(&message) else {
            continue; // split parsed it already
        };
        match kind {
            Kind::Request => responses.push(request(app, ctx, &session, &message, &env).await),
            Kind::Notification => {
                notification(ctx, &session, &message, &env).await;
            }
            Kind::Result | Kind::Error => {
                if let Some(relay) = ctx.tenant.current_relay() {
                    relay.answer(&session.id, &message, &env).await;
                }
            }
        }
    }
    match batch::join(&responses) {
        None => empty(StatusCode::ACCEPTED),
        Some(array) if accept.json => json_response(StatusCode::OK, array.into()),
        Some(array) => single(array.into(), accept),
    }
}

/// One request of a batch, to its final response (the caller's id restored).
async fn request(
    app: &Arc<App>,
    ctx: &Ctx,
    session: &Arc<Session>,
    message: &[u8],
    env: &Envelope<'_>,
) -> Bytes {
    let id = env.id.map_or("null", |id| id.get());
    let error =
        |message: &str| Bytes::from(envelope::error_response(id, INTERNAL_ERROR, message, None));
    let timeout = app.settings.request_timeout;
    let relay = match app.pool.relay(&ctx.tenant, &ctx.spec, None).await {
        Ok((relay, _)) => relay,
        Err(e) => return error(&e.to_string()),
    };
    if relay.inflight() >= app.settings.max_inflight_per_tenant {
        return error("this client has too many requests in flight; retry shortly");
    }
    if let Some(reply) = control::answer(&relay, session, message, env, timeout).await {
        return reply;
    }
    let mut call = match relay
        .call(
            message,
            env,
            CallFor {
                session: Some(session.id.clone()),
                ..CallFor::default()
            },
        )
        .await
    {
        Ok(call) => call,
        Err(e) => return Bytes::from(envelope::error_response(id, e.code(), &e.to_string(), None)),
    };
    loop {
        match call.next(timeout).await {
            CallEvent::Final(reply) => return reply,
            CallEvent::Related(_) => continue, // no stream to put it on
            CallEvent::Cancelled => return error("request was cancelled"),
        }
    }
}
