//! One connection, from accept to close, with a deadline on every stage.
//!
//! - **Head.** From accept until the first request head has been parsed, within
//!   `--header-read-timeout`. This covers the bytes hyper-util reads to tell HTTP/1 from
//!   HTTP/2 and HTTP/2's preface, SETTINGS and first HEADERS, none of which hyper times.
//! - **Idle.** Whenever no request is in flight (every response finished, SSE streams
//!   included), the connection is closed after `--header-read-timeout` too. hyper 1.x
//!   restarts its own HTTP/1 header timer on an idle keep-alive connection with the same
//!   value; this clock also covers HTTP/2, which has none.
//! - **Body.** Each request body within `--body-read-timeout` (`request_body.rs`), then 408
//!   and `Connection: close`.
//!
//! A request counts as in flight from its head until its response body is finished or
//! dropped, so a long tool call or an open SSE stream is never idle.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Body;
use super::budget::Budget;
use super::error::ApiError;
use super::request_body::{BodyTimeout, RequestBody, Tracked};

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Interval of HTTP/2 keep-alive pings; a peer that does not answer within
/// [`H2_KEEPALIVE_TIMEOUT`] is dropped.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long an HTTP/2 keep-alive ping may go unanswered.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a peer may open and reset before the server accepts them (rapid reset,
/// CVE-2023-44487); beyond it the connection is closed with GOAWAY.
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for protocol errors before it closes the connection.
pub const H2_MAX_LOCAL_RESETS: usize = 256;
/// Largest HTTP/2 header list accepted, in bytes.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// The deadlines of a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Until a request head is complete; also the idle limit.
    pub header: Duration,
    /// Until a request body is complete.
    pub body: Duration,
}

/// The hyper builder every connection is served with.
pub fn builder(deadlines: Deadlines) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES);
    builder
}

/// What one connection is doing, shared between its task, its requests and the budget.
#[derive(Debug)]
pub struct ConnState {
    seq: u64,
    activity: Mutex<Activity>,
    changed: Notify,
}

#[derive(Debug)]
struct Activity {
    /// Requests whose response is not finished.
    in_flight: usize,
    /// When `in_flight` last became 0 (or the accept).
    idle_since: Instant,
    /// A request head has been received.
    headed: bool,
    /// The budget wants this connection closed.
    evicted: bool,
}

/// Why a connection was closed by mcpmux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// No complete request head within the header deadline.
    Head,
    /// Idle past the deadline after a request.
    Idle,
    /// Evicted by the budget for a newcomer.
    Evicted,
}

impl ConnState {
    /// The state of the `seq`-th accepted connection, idle from now.
    pub fn new(seq: u64) -> Arc<Self> {
        Arc::new(Self {
            seq,
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                headed: false,
                evicted: false,
            }),
            changed: Notify::new(),
        })
    }

    /// Accept order (the eviction order).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Asks the connection's task to close it, unless a request head has arrived since
    /// it was listed as waiting (then it is no longer the budget's to evict).
    pub fn evict(&self) -> bool {
        {
            let mut activity = self.lock();
            if activity.headed {
                return false;
            }
            activity.evicted = true;
        }
        self.changed.notify_one();
        true
    }

    /// A request head arrived: the connection is busy until the guard drops. The first
    /// one takes the connection off the budget's eviction list.
    fn begin(self: &Arc<Self>, budget: &Budget) -> InFlight {
        let first = {
            let mut activity = self.lock();
            activity.in_flight += 1;
            !std::mem::replace(&mut activity.headed, true)
        };
        if first {
            budget.not_waiting(self);
        }
        InFlight(self.clone())
    }

    /// When the connection must close, or `Err` why it must close now.
    fn deadline(&self, header: Duration) -> Result<Option<Instant>, Closed> {
        let activity = self.lock();
        if activity.evicted {
            return Err(Closed::Evicted);
        }
        if activity.in_flight > 0 {
            return Ok(None);
        }
        let at = activity.idle_since + header;
        if at > Instant::now() {
            Ok(Some(at))
        } else if activity.headed {
            Err(Closed::Idle)
        } else {
            Err(Closed::Head)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Activity> {
        // Every update is a field assignment: the state is consistent even after a panic.
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in flight on its connection; dropping it may start the idle clock.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let idle = {
            let mut activity = self.0.lock();
            activity.in_flight = activity.in_flight.saturating_sub(1);
            if activity.in_flight == 0 {
                activity.idle_since = Instant::now();
            }
            activity.in_flight == 0
        };
        if idle {
            self.0.changed.notify_one();
        }
    }
}

/// Drives `conn` until it ends, one of its deadlines or the budget closes it, or
/// `shutdown` asks it to finish what is in flight and close.
pub async fn run<C>(
    conn: C,
    state: Arc<ConnState>,
    budget: Arc<Budget>,
    header: Duration,
    shutdown: CancellationToken,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let closed = drive(conn, &state, header, shutdown).await;
    budget.not_waiting(&state);
    match closed {
        None => {}
        Some(Closed::Head) => budget.metrics.head_timeouts.increment(1),
        Some(Closed::Idle) => budget.metrics.idle_timeouts.increment(1),
        Some(Closed::Evicted) => {} // counted by the budget
    }
    if let Some(why) = closed {
        debug!(?why, "connection closed by mcpmux");
    }
}

async fn drive<C>(
    conn: C,
    state: &ConnState,
    header: Duration,
    shutdown: CancellationToken,
) -> Option<Closed>
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        // Created before the check: a change in between leaves a permit, so none is lost.
        let changed = state.changed.notified();
        let deadline = match state.deadline(header) {
            Ok(deadline) => deadline,
            Err(Closed::Idle) => {
                // Politely: HTTP/2 peers get GOAWAY rather than a reset. Bounded, since
                // the peer may be the reason it is idle.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(header, conn.as_mut()).await;
                return Some(Closed::Idle);
            }
            Err(why) => return Some(why),
        };
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    debug!(error = %e, "connection ended with an error");
                }
                return None;
            }
            () = changed => {}
            () = expired => {}
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A response as hyper sends it: the body keeps its request counted in flight.
pub type ConnResponse = Response<Tracked<Body, InFlight>>;

/// The hyper service of one connection: counts each request in flight, times its body,
/// and turns a body that missed its deadline into 408.
pub fn service<F, Fut>(
    handler: F,
    state: Arc<ConnState>,
    budget: Arc<Budget>,
    body_timeout: Duration,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = ConnResponse,
    Error = Infallible,
    Future = impl Future<Output = Result<ConnResponse, Infallible>> + Send,
> + Clone
where
    F: Fn(Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = state.begin(&budget);
        let version = req.version();
        let expired = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| RequestBody::new(body, body_timeout, expired.clone()));
        let reply = handler(req);
        let metrics = budget.metrics.clone();
        async move {
            let mut response = reply.await;
            if expired.load(Ordering::Relaxed) {
                metrics.body_timeouts.increment(1);
                response = body_timed_out(version, body_timeout);
            }
            Ok(response.map(|body| Tracked::new(body, in_flight)))
        }
    })
}

/// 408 for a body that missed `--body-read-timeout`; the connection closes after it (the
/// rest of the body may still be on its way and cannot be told from a next request).
fn body_timed_out(version: Version, timeout: Duration) -> Response<Body> {
    let message = BodyTimeout(timeout).to_string();
    let mut response =
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "BODY_TIMEOUT", message).into_response();
    if version < Version::HTTP_2 {
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
    }
    response
}
