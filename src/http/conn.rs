//! One connection, from accept to close, with a deadline on every stage.
//!
//! - **Head.** From accept until the first request head has been parsed, within
//!   `--header-read-timeout`. This covers the first bytes, which tell HTTP/1 from HTTP/2
//!   ([`Served`]), and HTTP/2's preface, SETTINGS and first HEADERS, none of which hyper
//!   times.
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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
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

/// The hyper builders every connection is served with.
pub struct Builders {
    /// HTTP/1, served on the socket itself.
    h1: http1::Builder,
    /// HTTP/2, and a connection whose first bytes could still be either.
    auto: auto::Builder<TokioExecutor>,
}

/// The builders of a listener's connections.
pub fn builders(deadlines: Deadlines) -> Arc<Builders> {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(deadlines.header);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header);
    auto.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES);
    Arc::new(Builders { h1, auto })
}

/// What a connection ends with.
pub type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One accepted connection, served as HTTP/1 or HTTP/2.
///
/// The protocol is told by peeking at the first bytes, so that hyper's HTTP/1 reader gets
/// the request head in one read. hyper-util's auto builder consumes up to 24 bytes to
/// decide and hands them to hyper as a read of their own; the next read of the head then
/// grows hyper's 8 KiB read buffer to 16 KiB, kept for the connection's life: most of an
/// idle HTTP/1.1 GET stream's memory. HTTP/2, and first bytes that are still a prefix of
/// its preface, go through the auto builder as before. Each protocol's connection is
/// boxed, so the connection's task holds a pointer rather than hyper's whole state.
pub struct Served<S: ConnService> {
    proto: Proto<S>,
}

/// The service a connection is served with ([`service`]).
pub trait ConnService:
    hyper::service::Service<
        Request<Incoming>,
        Response = ConnResponse,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = ConnResponse,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

// The service is never pinned: it is moved into hyper's connection, which is boxed.
impl<S: ConnService> Unpin for Served<S> {}

enum Proto<S: ConnService> {
    Peeking {
        stream: TcpStream,
        service: S,
        builders: Arc<Builders>,
    },
    H1(Pin<Box<http1::Connection<TokioIo<TcpStream>, S>>>),
    Auto(Pin<Box<auto::Connection<'static, TokioIo<TcpStream>, S, TokioExecutor>>>),
    Closed,
}

impl<S: ConnService> Served<S> {
    /// `stream`, to be served with `service` once its protocol is known.
    pub fn new(stream: TcpStream, service: S, builders: Arc<Builders>) -> Self {
        Self {
            proto: Proto::Peeking {
                stream,
                service,
                builders,
            },
        }
    }

    /// Finishes what is in flight and closes; a connection still being told apart is
    /// closed at once.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.proto {
            Proto::Peeking { .. } => self.proto = Proto::Closed,
            Proto::H1(conn) => conn.as_mut().graceful_shutdown(),
            Proto::Auto(conn) => conn.as_mut().graceful_shutdown(),
            Proto::Closed => {}
        }
    }

    /// `stream`'s protocol from the bytes it has sent so far: HTTP/1 unless they could
    /// still be HTTP/2's preface (then hyper-util reads on until it is sure).
    fn poll_peek(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut seen = ReadBuf::new(&mut buf);
        ready!(stream.poll_peek(cx, &mut seen))?;
        let seen = seen.filled();
        // At EOF too: hyper's HTTP/1 reader sees it and ends the connection.
        Poll::Ready(Ok(seen.is_empty() || !H2_PREFACE.starts_with(seen)))
    }
}

impl<S: ConnService> Future for Served<S> {
    type Output = Result<(), ConnError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Proto::Peeking { stream, .. } = &this.proto {
            let h1 = ready!(Self::poll_peek(stream, cx))?;
            let peeked = std::mem::replace(&mut this.proto, Proto::Closed);
            if let Proto::Peeking {
                stream,
                service,
                builders,
            } = peeked
            {
                let io = TokioIo::new(stream);
                this.proto = if h1 {
                    Proto::H1(Box::pin(builders.h1.serve_connection(io, service)))
                } else {
                    let conn = builders.auto.serve_connection(io, service).into_owned();
                    Proto::Auto(Box::pin(conn))
                };
            }
        }
        match &mut this.proto {
            Proto::H1(conn) => conn.as_mut().poll(cx).map_err(Into::into),
            Proto::Auto(conn) => conn.as_mut().poll(cx),
            Proto::Peeking { .. } | Proto::Closed => Poll::Ready(Ok(())),
        }
    }
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
pub async fn run<S>(
    conn: Served<S>,
    state: Arc<ConnState>,
    budget: Arc<Budget>,
    header: Duration,
    shutdown: CancellationToken,
) where
    S: ConnService,
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

async fn drive<S>(
    mut conn: Served<S>,
    state: &ConnState,
    header: Duration,
    shutdown: CancellationToken,
) -> Option<Closed>
where
    S: ConnService,
{
    let mut draining = false;
    loop {
        // Created before the check: a change in between leaves a permit, so none is lost.
        let changed = state.changed.notified();
        let deadline = match state.deadline(header) {
            Ok(deadline) => deadline,
            Err(Closed::Idle) => {
                // Politely: HTTP/2 peers get GOAWAY rather than a reset. Bounded, since
                // the peer may be the reason it is idle.
                conn.graceful_shutdown();
                let _ = tokio::time::timeout(header, &mut conn).await;
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
            ended = &mut conn => {
                if let Err(e) = ended {
                    debug!(error = %e, "connection ended with an error");
                }
                return None;
            }
            () = changed => {}
            () = expired => {}
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
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
