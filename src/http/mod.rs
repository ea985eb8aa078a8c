//! The tenant-facing HTTP listener: accept loop, per-connection hyper service with
//! graceful shutdown, and the request pipeline of DESIGN §1 (path, tenant header,
//! authentication, Origin, then MCP).

mod body;
mod error;
mod mcp;
mod tenant;

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
use tracing::{debug, warn};

pub use body::Body;
pub use error::{ApiError, MSG_DUPLICATE_CLIENT_ID, MSG_INVALID_CLIENT_ID, MSG_MISSING_CLIENT_ID};

use crate::pool::Pool;
use crate::settings::Settings;

/// Time a client gets to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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

impl App {
    /// Routes one request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() != MCP_PATH {
            let msg = format!("Not found. The MCP endpoint is {MCP_PATH}.");
            return ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", msg).into_response();
        }
        match self.admit(&req) {
            Ok(ctx) => mcp::handle(self, ctx, req).await,
            Err(e) => e.into_response(),
        }
    }

    /// DESIGN §1 steps 1–2 plus the Origin check, on headers alone.
    fn admit(&self, req: &Request<Incoming>) -> Result<mcp::Ctx, ApiError> {
        let id = tenant::client_id(req.headers())?;
        let (tenant, spec) = self
            .pool
            .tenant(&id)
            .ok_or_else(|| ApiError::unknown_client(id.as_str()))?;
        tenant::authorize(req.headers(), &spec)?;
        if let Some(origin) = req.headers().get(http::header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|o| self.settings.allowed_origins.iter().any(|a| a == o));
            if !allowed {
                let msg = "Origin not allowed. Add it with --allowed-origins.";
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN_ORIGIN",
                    msg,
                ));
            }
        }
        Ok(mcp::Ctx { tenant, spec })
    }
}

/// Serves `listener` until `shutdown`, then lets open connections finish for `grace`.
pub async fn serve(listener: TcpListener, app: Arc<App>, grace: Duration) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let shutdown = app.shutdown.clone();
    loop {
        // Match the whole Result: an Err arm in select! would disable accepting forever.
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
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
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
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
