//! The accept loop of a listener (tenant or admin port): budget at accept, one task per
//! connection under its deadlines (`conn.rs`), graceful shutdown, and back-off when the
//! process runs out of descriptors.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Body;
use super::budget::Budget;
use super::conn::{self, ConnState, Deadlines};
use super::request_body::RequestBody;
use crate::metrics::ConnMetrics;
use crate::systemd::{HEARTBEAT, Heartbeat};

/// Connections the kernel may queue for accept. tokio's `TcpListener::bind` asks for 128,
/// which a burst of a few hundred connections overflows: the kernel then drops SYNs and
/// every client, good or bad, waits a second or more for its retransmission.
pub const LISTEN_BACKLOG: u32 = 1024;

/// First pause after EMFILE/ENFILE; it doubles up to [`FD_LIMIT_BACKOFF_MAX`].
const FD_LIMIT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest pause between accepts while descriptors are exhausted.
const FD_LIMIT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Pause after an unexpected accept error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?; // as std and tokio do: restart without waiting out TIME_WAIT
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How a listener serves its connections.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    /// `tenant` or `admin` (the metrics label).
    pub name: &'static str,
    /// Connections open at once.
    pub max_connections: usize,
    /// Per-stage deadlines.
    pub deadlines: Deadlines,
    /// On shutdown, how long open connections may finish.
    pub grace: Duration,
}

/// Serves `listener` with `handler` until `shutdown`, then lets open connections finish
/// for `port.grace`. `heartbeat` beats at least every [`HEARTBEAT`] while the loop is alive.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    port: Port,
    shutdown: CancellationToken,
    heartbeat: Heartbeat,
) where
    F: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let builders = conn::builders(port.deadlines);
    let budget = Arc::new(Budget::new(
        port.max_connections,
        ConnMetrics::new(port.name, port.max_connections),
    ));
    let connections = TaskTracker::new();
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let mut backoff = FD_LIMIT_BACKOFF_MIN;
    let mut seq = 0u64;
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
                backoff = accept_failed(&e, &budget, backoff).await;
                continue;
            }
        };
        backoff = FD_LIMIT_BACKOFF_MIN;
        budget.metrics.accepted.increment(1);
        let Some(slot) = budget.admit().await else {
            debug!(
                port = port.name,
                "connection budget full; closing a new connection"
            );
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true); // small JSON-RPC replies must not wait for Nagle
        seq += 1;
        let state = ConnState::new(seq);
        budget.waiting(&state);
        let service = conn::service(
            handler.clone(),
            state.clone(),
            budget.clone(),
            port.deadlines.body,
        );
        let served = conn::Served::new(stream, service, builders.clone());
        let budget = budget.clone();
        let header = port.deadlines.header;
        let shutdown = shutdown.clone();
        // Ends with the connection: closed by the peer, a deadline, the budget or shutdown.
        connections.spawn(async move {
            conn::run(served, state, budget, header, shutdown).await;
            drop(slot);
        });
    }
    drop(listener); // stop accepting: new connections are refused from here on
    info!(addr = %local, "stopped accepting connections");
    connections.close();
    if tokio::time::timeout(port.grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            grace_secs = port.grace.as_secs_f64(),
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// Per-connection errors are skipped. Out of descriptors (EMFILE/ENFILE), the loop frees
/// one by evicting a connection that has not sent a head yet, and backs off exponentially;
/// connections already served keep working. Returns the next back-off.
async fn accept_failed(err: &std::io::Error, budget: &Budget, backoff: Duration) -> Duration {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) {
        return backoff;
    }
    let fd_limit = matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    );
    if !fd_limit {
        budget.metrics.accept_errors.increment(1);
        warn!(error = %err, "accept failed; backing off");
        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
        return backoff;
    }
    budget.metrics.fd_limit_errors.increment(1);
    budget.evict_oldest();
    warn!(
        error = %err,
        backoff_ms = backoff.as_millis() as u64,
        "out of file descriptors at accept; backing off (lower --max-connections or raise the open-file limit)"
    );
    tokio::time::sleep(backoff).await;
    (backoff * 2).min(FD_LIMIT_BACKOFF_MAX)
}
