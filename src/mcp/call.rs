//! A request in flight on a relay, as its HTTP handler holds it.
//!
//! Invariant: dropping a [`Call`] before its final response abandons the request at the
//! relay (which tells the child `notifications/cancelled`), and the `InflightGuard` it
//! holds keeps the relay from being reaped while it lives.

use std::sync::Arc;
use std::time::Duration;

use super::envelope::{self, INTERNAL_ERROR, span_of, splice};
use super::relay::{REQUEST_TIMEOUT, Relay};
use super::slot::{Answers, Next};
use bytes::Bytes;
use tokio::time::Instant;

/// What a pending call yields.
#[derive(Debug)]
pub enum CallEvent {
    /// A message related to the request (progress), caller's token restored.
    Related(Bytes),
    /// The final response, caller's id restored; nothing follows.
    Final(Bytes),
    /// The caller cancelled the request; nothing follows, and no response is due.
    Cancelled,
}

/// A request in flight. Dropping it before its final response cancels it at the child.
pub struct Call {
    relay: Arc<Relay>,
    child_id: u64,
    orig_id: Bytes,
    answers: Answers,
    finished: bool,
    cancellable: bool,
    /// Resumed by a retry of an `input_required` round (see [`Call::resume`]).
    resumed: bool,
    /// When the current wait times out: set by the wait's first [`Call::next_until`], kept
    /// when that returns at its switch, cleared by any message.
    deadline: Option<Instant>,
    _guard: InflightGuard,
    /// Whatever must live exactly as long as the call (a log-level wish).
    held: Option<Box<dyn Send + Sync>>,
    /// The JSON-RPC code the caller gets when the child does not answer in time.
    timeout_code: i64,
}

impl Call {
    pub(super) fn new(
        relay: Arc<Relay>,
        child_id: u64,
        orig_id: Bytes,
        answers: Answers,
        guard: InflightGuard,
    ) -> Self {
        Self {
            relay,
            child_id,
            orig_id,
            answers,
            finished: false,
            cancellable: true,
            resumed: false,
            deadline: None,
            _guard: guard,
            held: None,
            timeout_code: REQUEST_TIMEOUT,
        }
    }

    /// Answers a timeout with `code` instead of [`REQUEST_TIMEOUT`] (stateless callers:
    /// 2026-07-28 retires that code's range).
    pub fn time_out_with(&mut self, code: i64) {
        self.timeout_code = code;
    }

    /// Marks the request as one that must never be cancelled (`initialize`).
    pub(super) fn uncancellable(&mut self) {
        self.cancellable = false;
    }

    /// The next event; `timeout` restarts with every related message.
    pub async fn next(&mut self, timeout: Duration) -> CallEvent {
        loop {
            // Without a switch the wait always ends with an event: this loops once.
            if let Some(event) = self.next_until(timeout, None).await {
                return event;
            }
        }
    }

    /// The next event, or `None` at `switch` if none came by then. The request's `timeout`
    /// runs on across the switch: the next wait ends at the same instant. One timer serves
    /// both (the earlier of the two), so a switch costs a call nothing until it fires.
    pub async fn next_until(
        &mut self,
        timeout: Duration,
        switch: Option<Instant>,
    ) -> Option<CallEvent> {
        if self.finished {
            return Some(self.failure(INTERNAL_ERROR, "request already answered"));
        }
        let deadline = *self.deadline.get_or_insert_with(|| after(timeout));
        let wake = switch.map_or(deadline, |switch| switch.min(deadline));
        let event = tokio::select! {
            // Related messages come out before the final one the child sent after them.
            next = self.answers.next() => match next {
                Next::Related(message) => CallEvent::Related(message),
                Next::Reply(bytes) => {
                    self.finished = true;
                    CallEvent::Final(self.labelled(bytes))
                }
                // Only `cancel_for_caller` drops a pending entry without answering it.
                Next::Dropped => {
                    self.finished = true;
                    CallEvent::Cancelled
                }
            },
            () = tokio::time::sleep_until(wake) => {
                if wake < deadline {
                    return None; // the switch
                }
                self.finished = true;
                self.relay.abandon(self.child_id, self.cancellable, "request timed out");
                let message = format!("request timed out after {} s without progress", timeout.as_secs_f64());
                self.failure(self.timeout_code, &message)
            }
        };
        self.deadline = None;
        Some(event)
    }

    /// A resumed call's response may have been labelled for an earlier round's caller
    /// while it waited between rounds: it goes out under the current caller's id.
    fn labelled(&self, reply: Bytes) -> Bytes {
        if !self.resumed {
            return reply;
        }
        let Some(id) = envelope::parse(&reply).ok().and_then(|env| env.id) else {
            return reply;
        };
        if id.get().as_bytes() == &self.orig_id[..] {
            return reply;
        }
        match span_of(&reply, id.get()) {
            Some(span) => splice(&reply, &mut [(span, &self.orig_id[..])]).into(),
            None => reply,
        }
    }

    fn failure(&self, code: i64, message: &str) -> CallEvent {
        let id = String::from_utf8_lossy(self.orig_id()).into_owned();
        CallEvent::Final(envelope::error_response(&id, code, message, None).into())
    }

    /// The caller's id for this request, exactly as it was sent.
    pub fn orig_id(&self) -> &[u8] {
        &self.orig_id
    }

    /// Keeps `value` alive as long as the call.
    pub fn hold<T: Send + Sync + 'static>(&mut self, value: Option<T>) {
        self.held = value.map(|v| Box::new(v) as Box<dyn Send + Sync>);
    }

    /// The relay the call runs on.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// A related message already queued, without waiting.
    pub fn try_next(&mut self) -> Option<CallEvent> {
        let message = self.answers.try_related()?;
        self.deadline = None; // progress restarts the timeout
        Some(CallEvent::Related(message))
    }

    /// The name under which the child's requests to this (stateless) call's caller are
    /// registered (see [`input_owner`]).
    pub fn input_owner(&self) -> Arc<str> {
        input_owner(self.child_id)
    }

    /// Parks the call between rounds (no reply open): its progress reaches nobody.
    pub fn park(&mut self) {
        self.relay.reassign(self.child_id, None);
    }

    /// Resumes a parked call for a retry: its response and progress go out under the
    /// retry's `id` and progress token.
    pub fn resume(&mut self, id: Bytes, token: Option<Bytes>) {
        self.resumed = true;
        self.deadline = None; // a new round, a new wait
        self.orig_id = id.clone();
        self.relay.reassign(self.child_id, Some((id, token)));
    }
}

/// `wait` from now; a wait too long for the clock is one that never ends (as tokio's own
/// `sleep` treats it).
pub fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// The owner of a stateless call's child requests in the relay's reverse map; never a
/// session id (those are hex).
pub fn input_owner(child_id: u64) -> Arc<str> {
    Arc::from(format!("call-{child_id}"))
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.relay
                .abandon(self.child_id, self.cancellable, "caller went away");
        }
    }
}

/// Counts a request in flight on a relay; the last one out marks the relay idle.
pub(super) struct InflightGuard {
    relay: Arc<Relay>,
}

impl InflightGuard {
    pub(super) fn new(relay: Arc<Relay>) -> Self {
        relay.enter();
        Self { relay }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.relay.leave();
    }
}
