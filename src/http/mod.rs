//! The tenant-facing HTTP endpoint: the request pipeline of DESIGN §1 (path, tenant
//! header, authentication, Origin and Host, then MCP). Listeners and connections (accept
//! loop, budget, deadlines) live in `listener.rs`, `budget.rs` and `conn.rs`.

mod batch;
mod body;
pub mod budget;
pub mod conn;
mod endpoint;
mod error;
mod exchange;
mod listener;
pub mod mcp;
mod origin;
mod reply;
mod request_body;
mod resume;
mod stateless;
pub mod tenant;

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use body::{Body, SseBody};
pub use error::{
    ApiError, MSG_DUPLICATE_CLIENT_ID, MSG_INVALID_CLIENT_ID, MSG_MISSING_CLIENT_ID, empty,
    json_response,
};
pub use exchange::Ctx;
pub use listener::{LISTEN_BACKLOG, Port, bind, serve};
pub use request_body::{BodyTimeout, RequestBody};

use crate::pool::Pool;
use crate::settings::Settings;

/// The MCP endpoint path.
pub const MCP_PATH: &str = "/mcp";

/// Shared state of the tenant listener.
#[derive(Debug)]
pub struct App {
    /// Tenants and children.
    pub pool: Arc<Pool>,
    /// Daemon settings.
    pub settings: Arc<Settings>,
    /// Cancelled when the daemon starts draining (ends GET streams).
    pub shutdown: CancellationToken,
}

/// What a handler learned about a request, for metrics and the access log; attached to
/// the response as an extension.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// Bounded method label ([`crate::metrics::method_label`]).
    pub method: &'static str,
    /// The child that served it, when one did.
    pub child_pid: Option<u32>,
}

impl App {
    /// Routes one request, then records it (metrics, access log).
    pub async fn handle(self: &Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        let started = tokio::time::Instant::now();
        // A reference to the header's bytes, not a copy: a signed id is some 200–300 of
        // them, and the access log that reads it is usually off.
        let session = req.headers().get(mcp::SESSION_HEADER).cloned();
        let (response, client_id) = self.route(req).await;
        let observed = response
            .extensions()
            .get::<Observed>()
            .copied()
            .unwrap_or_default();
        let method = if observed.method.is_empty() {
            "-"
        } else {
            observed.method
        };
        let took = started.elapsed();
        let client_label = client_id.as_deref().unwrap_or("-");
        crate::metrics::request(client_label, method, response.status().as_u16(), took);
        debug!(
            client_id = client_label,
            session = session
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            method,
            status = response.status().as_u16(),
            duration_ms = took.as_secs_f64() * 1000.0,
            child_pid = observed.child_pid,
            "request"
        );
        response
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> (Response<Body>, Option<String>) {
        if req.uri().path() != MCP_PATH {
            let msg = format!("Not found. The MCP endpoint is {MCP_PATH}.");
            let response = ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", msg).into_response();
            return (response, None);
        }
        match self.admit(&req) {
            Ok(ctx) => {
                let id = ctx.tenant.id.as_str().to_owned();
                (endpoint::handle(self, ctx, req).await, Some(id))
            }
            Err(e) => (e.into_response(), None),
        }
    }

    /// DESIGN §1 steps 1–2 plus the Origin and Host checks, on headers alone.
    fn admit(&self, req: &Request<RequestBody>) -> Result<Ctx, ApiError> {
        let id = tenant::client_id(req.headers())?;
        let (tenant, spec) = self
            .pool
            .tenant(&id)
            .ok_or_else(|| ApiError::unknown_client(id.as_str()))?;
        tenant::authorize(req.headers(), &spec, self.settings.allow_open_tenants)?;
        origin::check(
            req.headers(),
            &self.settings.allowed_origins,
            self.settings.allowed_hosts.as_deref(),
        )?;
        Ok(Ctx { tenant, spec })
    }
}
