//! Response bodies: a whole buffer, or a Server-Sent Events stream of JSON-RPC messages.
//!
//! An SSE body owns whatever keeps its source alive (a pending call's pump, a session's
//! stream guard): dropping the body — the caller went away — releases them.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Interval of SSE keep-alive comments (keeps proxies from timing out idle streams).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A response body.
pub enum Body {
    /// A complete buffer (taken on the first poll).
    Full(Option<Bytes>),
    /// An SSE stream.
    Sse(Box<SseBody>),
}

impl Body {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

/// An SSE stream: each item from `rx` becomes one event.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
    /// Items are rendered events (with ids); otherwise bare JSON messages.
    framed: bool,
    keepalive: Interval,
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _owned: Box<dyn Send + Sync>,
}

impl SseBody {
    /// A stream of the JSON messages from `rx`, each one `data:` event without an id (not
    /// resumable); `owned` lives as long as the body.
    pub fn new(
        rx: mpsc::Receiver<Bytes>,
        shutdown: Option<WaitForCancellationFutureOwned>,
        owned: Box<dyn Send + Sync>,
    ) -> Self {
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            rx,
            framed: false,
            keepalive,
            shutdown: shutdown.map(Box::pin),
            _owned: owned,
        }
    }

    /// A stream of events already rendered by a session's stream (ids, priming, replay).
    pub fn framed(
        rx: mpsc::Receiver<Bytes>,
        shutdown: Option<WaitForCancellationFutureOwned>,
        owned: Box<dyn Send + Sync>,
    ) -> Self {
        Self {
            framed: true,
            ..Self::new(rx, shutdown, owned)
        }
    }
}

/// One SSE event carrying one JSON message (compact JSON has no raw newlines).
pub fn sse_event(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(message);
    out.extend_from_slice(b"\n\n");
    out.into()
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Sse(sse) => sse.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Sse(_) => SizeHint::default(),
        }
    }
}

impl SseBody {
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(shutdown) = &mut self.shutdown
            && shutdown.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(None); // daemon draining: end the stream cleanly
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.keepalive.reset();
                let event = if self.framed { item } else { sse_event(&item) };
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.keepalive.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
        }
        Poll::Pending
    }
}
