//! `/mcp`: dispatch by HTTP method, and for a POST the one choice of era — a sessionless
//! message claiming 2026-07-28 goes to `super::stateless`, everything else to the session
//! era (`super::mcp`).

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::RequestBody;
use super::body::Body;
use super::error::rpc_error;
use super::exchange::{self, Ctx, Post};
use super::{App, Observed, mcp, stateless};
use crate::mcp::envelope::{self, INVALID_REQUEST, Kind};

/// Dispatches by HTTP method.
pub async fn handle(app: &Arc<App>, ctx: Ctx, req: http::Request<RequestBody>) -> Response<Body> {
    match *req.method() {
        Method::POST => post(app, ctx, req).await,
        Method::GET => mcp::get(app, ctx, req.headers()).await,
        Method::DELETE => mcp::delete(app, ctx, req.headers()).await,
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

async fn post(app: &Arc<App>, ctx: Ctx, req: http::Request<RequestBody>) -> Response<Body> {
    let (accept, headers, body) = match exchange::read_post(app, req).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    if crate::mcp::batch::is_batch(&body) {
        let mut response = super::batch::serve(app, &ctx, &headers, &body, accept).await;
        let pid = ctx.tenant.current_relay().map(|r| r.pid());
        response.extensions_mut().insert(Observed {
            method: "batch",
            child_pid: pid,
        });
        return response;
    }
    let env = match envelope::parse(&body) {
        Ok(env) => env,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let method = match env.kind {
        Kind::Result | Kind::Error => "response",
        _ => crate::metrics::method_label(env.method.as_deref().unwrap_or_default()),
    };
    let post = Post {
        app,
        ctx: &ctx,
        headers: &headers,
        body: &body,
        env: &env,
        accept,
    };
    let mut response = match stateless::claim(&post) {
        Some(meta) => stateless::serve(&post, &meta).await,
        None => mcp::post(&post).await,
    };
    let pid = ctx.tenant.current_relay().map(|r| r.pid());
    response.extensions_mut().insert(Observed {
        method,
        child_pid: pid,
    });
    response
}
