//! The tenant-facing HTTP listener: accept loop, per-connection hyper service with
//! graceful shutdown, and the request pipeline of DESIGN §1 (path, tenant header,
//! authentication, Origin and Host, then MCP).

mod batch;
mod body;
mod endpoint;
mod error;
mod exchange;
pub mod mcp;
mod origin;
mod reply;
mod resume;
mod stateless;
pub mod tenant;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use body::{Body, SseBody};
pub use error::{
    ApiError, MSG_DUPLICATE_CLIENT_ID, MSG_INVALID_CLIENT_ID, MSG_MISSING_CLIENT_ID, empty,
    json_response,
};
pub use exchange::Ctx;

use crate::pool::Pool;
use crate::settings::Settings;
use crate::systemd::{HEARTBEAT, Heartbeat};

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
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = tokio::time::Instant::now();
        let session = req
            .headers()
            .get(mcp::SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
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
            session = session.as_deref().unwrap_or("-"),
            method,
            status = response.status().as_u16(),
            duration_ms = took.as_secs_f64() * 1000.0,
            child_pid = observed.child_pid,
            "request"
        );
        response
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> (Response<Body>, Option<String>) {
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
    fn admit(&self, req: &Request<Incoming>) -> Result<Ctx, ApiError> {
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

/// Serves `listener` with `handler` until `shutdown`, then lets open connections finish
/// for `grace`. `heartbeat` beats at least every [`HEARTBEAT`] while the loop is alive.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
    heartbeat: Heartbeat,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    loop {
        heartbeat.beat();
        // Match the whole Result: an Err arm in select! would disable accepting forever.
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(HEARTBEAT) => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                accept_backoff(&e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true); // small JSON-RPC replies must not wait for Nagle
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let reply = handler(req);
            async move { Ok::<_, Infallible>(reply.await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        // Owned by the graceful-shutdown watcher: ends with the connection.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener); // stop accepting: new connections are refused from here on
    info!(addr = %local, "stopped accepting connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_secs = grace.as_secs_f64(),
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// Per-connection errors are skipped; running out of descriptors backs off briefly.
async fn accept_backoff(err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) {
        return;
    }
    warn!(error = %err, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
