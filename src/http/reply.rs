//! Session-era SSE replies: a POST answered with SSE becomes a reply stream of its session
//! (see [`crate::mcp::stream`]), opened with a priming event, every event with an id, so a
//! GET with `Last-Event-ID` can resume it.
//!
//! This module is the resumable [`Sink`] of the exchange's one pump, which moves the call's
//! messages onto the stream whether or not a connection is attached: the spec says a
//! disconnect is not a cancellation. A caller whose connection
//! broke has the resume grace (`--resume-grace`) to attach again; after it the call is
//! dropped, which cancels it at the child. Not owned here: choosing JSON or SSE
//! (`super::exchange`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::sync::watch;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

use super::body::{Body, SseBody};
use super::exchange::{Sink, pump, sse_response};
use crate::mcp::admission::{InUse, Use};
use crate::mcp::call::Call;
use crate::mcp::session::{Attached, Session, Sessions};

/// Where a session-era reply is recorded, so that it can be resumed.
#[derive(Clone)]
pub(super) struct Replying {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    /// How long a broken reply waits for its caller to resume before it is cancelled.
    grace: Duration,
}

impl Replying {
    pub(super) fn new(sessions: Arc<Sessions>, session: Arc<Session>, grace: Duration) -> Self {
        Self {
            sessions,
            session,
            grace,
        }
    }

    /// One complete message as a reply stream of its own.
    pub(super) fn single(&self, message: &[u8]) -> Response<Body> {
        let (number, attached) = self.sessions.open_reply(&self.session);
        self.session.record(number, message);
        self.session.finish(number);
        framed_response(attached, None)
    }

    /// Streams `call` (after `first`, its first related message, if any) on a new reply
    /// stream; the priming event goes out at once either way.
    pub(super) fn stream(
        self,
        call: Call,
        first: Option<Bytes>,
        timeout: Duration,
    ) -> Response<Body> {
        let (number, attached) = self.sessions.open_reply(&self.session);
        if let Some(first) = first {
            self.session.record(number, &first);
        }
        let connected = self.session.watch_connected(number);
        let in_use = self.sessions.enter(&self.session, Use::Call);
        let sink = Resumable {
            to: self,
            number,
            connected,
            _in_use: in_use,
        };
        // Owned by the reply stream: ends at the final message, or once no connection has
        // been attached for the resume grace; dropping the call then cancels it at the child.
        tokio::spawn(pump(call, sink, timeout, |reply| reply));
        framed_response(attached, None)
    }
}

/// An SSE response for a connection attached to a session's stream.
pub(super) fn framed_response(
    attached: Attached,
    shutdown: Option<WaitForCancellationFutureOwned>,
) -> Response<Body> {
    sse_response(SseBody::framed(
        attached.rx,
        shutdown,
        Box::new(attached.guard),
    ))
}

/// A reply stream of a session: recorded whether or not a connection is attached.
struct Resumable {
    to: Replying,
    number: u64,
    connected: Option<watch::Receiver<bool>>,
    /// The call is in flight until the pump ends, attached or not: the session is in use.
    _in_use: Option<InUse>,
}

impl Sink for Resumable {
    fn gone(&mut self) -> impl Future<Output = ()> + Send + 'static {
        abandoned(self.connected.take(), self.to.grace)
    }

    fn offer(&mut self, message: Bytes) {
        // A reader that is behind loses surplus progress rather than its connection.
        if self.to.session.live_is_full(self.number) {
            debug!(session = %self.to.session.id, stream = self.number, "progress dropped: caller is not keeping up");
        } else {
            self.to.session.record(self.number, &message); // buffered for resumption if nobody reads
        }
    }

    async fn deliver(&mut self, message: Bytes, timeout: Duration) -> bool {
        wait_for_room(&self.to, self.number, timeout).await;
        self.to.session.record(self.number, &message);
        true // recorded: a caller that is away can still resume and read it
    }

    fn end(&mut self) {
        self.to.session.finish(self.number);
    }
}

/// Waits, at most `timeout`, until the live reader of stream `number` has room for one
/// more event; a reader stalled past that is cut off by the next record (it can resume).
async fn wait_for_room(to: &Replying, number: u64, timeout: Duration) {
    let Some(tx) = to.session.live_sender(number) else {
        return;
    };
    let _ = tokio::time::timeout(timeout, tx.reserve()).await; // the permit is released at once
}

/// Resolves once the stream has had no connection for `grace` (or is gone).
async fn abandoned(connected: Option<watch::Receiver<bool>>, grace: Duration) {
    let Some(mut connected) = connected else {
        return;
    };
    loop {
        if connected.wait_for(|live| !*live).await.is_err() {
            return;
        }
        let resumed = tokio::time::timeout(grace, connected.wait_for(|live| *live)).await;
        if !matches!(resumed, Ok(Ok(_))) {
            return;
        }
    }
}
