//! Request bodies under a deadline (`--body-read-timeout`), and response bodies that keep
//! their connection counted as busy until they are finished.
//!
//! The deadline runs from the moment the request head was parsed. Its timer is armed only
//! when the body is not all there yet, so a body that arrives with its head costs nothing.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// An error from reading a request body.
pub type BodyError = Box<dyn StdError + Send + Sync>;

/// The body did not arrive within `--body-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {}s (--body-read-timeout)", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline struck, so the connection layer answers 408.
    expired: Arc<AtomicBool>,
}

impl RequestBody {
    /// `inner`, due within `timeout` from now; `expired` is set if it is not.
    pub(super) fn new(inner: Incoming, timeout: Duration, expired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
            expired,
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding `guard` until it is finished or dropped.
pub struct Tracked<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Tracked<B, G> {
    /// `body`, keeping `guard` alive as long as it.
    pub fn new(body: B, guard: G) -> Self {
        Self {
            body,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin, G: Unpin> HttpBody for Tracked<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
