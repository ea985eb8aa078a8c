//! The way back from the relay to one pending call: its related messages (progress, the
//! child's requests) and its final reply, in one allocation per call.
//!
//! A channel pair (an `mpsc` for related messages and a `oneshot` for the reply) cost three
//! allocations per call, most of them for a queue that almost no call uses; here the queue
//! is allocated on its first message. Invariants: related messages come out before the
//! reply, in order; at most [`RELATED_QUEUE`](super::relay::RELATED_QUEUE) wait; once the
//! receiver is gone nothing more is queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use super::relay::RELATED_QUEUE;

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    related: VecDeque<Bytes>,
    reply: Option<Bytes>,
    /// The reply was given (it may have been taken since).
    answered: bool,
    /// The pending entry was dropped unanswered (the caller cancelled).
    dropped: bool,
    /// The receiver is gone.
    gone: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a push or a field assignment: consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offer(&self, message: Bytes) -> bool {
        {
            let mut state = self.lock();
            if state.gone || state.answered || state.related.len() >= RELATED_QUEUE {
                return false;
            }
            state.related.push_back(message);
        }
        self.ready.notify_one();
        true
    }
}

/// A new call's two ends.
pub(super) fn slot() -> (Answer, Answers) {
    let slot = Arc::new(Slot::default());
    (Answer(slot.clone()), Answers(slot))
}

/// The relay's end, kept in the pending entry: answered once, or dropped unanswered.
pub(super) struct Answer(Arc<Slot>);

impl Answer {
    /// Queues a related message; false when the queue is full or the caller is gone.
    pub(super) fn offer(&self, message: Bytes) -> bool {
        self.0.offer(message)
    }

    /// Another way to queue related messages, for use outside the pending map's lock.
    pub(super) fn related(&self) -> Related {
        Related(self.0.clone())
    }

    /// The final reply; nothing is queued after it.
    pub(super) fn finish(self, reply: Bytes) {
        {
            let mut state = self.0.lock();
            state.reply = Some(reply);
            state.answered = true;
        }
        self.0.ready.notify_one();
        // `Drop` runs next and sees the reply: not a cancellation.
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            if state.answered {
                return;
            }
            state.dropped = true;
        }
        self.0.ready.notify_one();
    }
}

/// Queues related messages of one call (a clone taken out of the pending map).
#[derive(Clone)]
pub(super) struct Related(Arc<Slot>);

impl Related {
    /// Queues a related message; false when the queue is full or the caller is gone.
    pub(super) fn offer(&self, message: Bytes) -> bool {
        self.0.offer(message)
    }
}

/// What the call's end yields.
#[derive(Debug)]
pub(super) enum Next {
    Related(Bytes),
    Reply(Bytes),
    /// The pending entry was dropped unanswered.
    Dropped,
}

/// The call's end.
pub(super) struct Answers(Arc<Slot>);

impl Answers {
    /// The next message: related ones first, then the reply. Cancel-safe.
    pub(super) async fn next(&self) -> Next {
        loop {
            // A notification between the check and the wait leaves a permit: none is lost.
            let notified = self.0.ready.notified();
            if let Some(next) = self.try_next() {
                return next;
            }
            notified.await;
        }
    }

    /// The next message if one is there.
    pub(super) fn try_next(&self) -> Option<Next> {
        let mut state = self.0.lock();
        if let Some(message) = state.related.pop_front() {
            return Some(Next::Related(message));
        }
        if let Some(reply) = state.reply.take() {
            return Some(Next::Reply(reply));
        }
        state.dropped.then_some(Next::Dropped)
    }

    /// A related message already queued, without waiting.
    pub(super) fn try_related(&self) -> Option<Bytes> {
        self.0.lock().related.pop_front()
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.gone = true;
        state.related.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn related_messages_come_before_the_reply_in_order() {
        let (answer, answers) = slot();
        assert!(answer.offer(Bytes::from_static(b"1")));
        assert!(answer.related().offer(Bytes::from_static(b"2")));
        answer.finish(Bytes::from_static(b"reply"));
        assert!(matches!(answers.next().await, Next::Related(m) if m == "1"));
        assert!(matches!(answers.next().await, Next::Related(m) if m == "2"));
        assert!(matches!(answers.next().await, Next::Reply(m) if m == "reply"));
        assert!(answers.try_next().is_none(), "nothing follows the reply");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_from_another_task() {
        let (answer, answers) = slot();
        let waiter = tokio::spawn(async move { answers.next().await });
        tokio::task::yield_now().await;
        answer.finish(Bytes::from_static(b"reply"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the reply must wake the waiter")
            .unwrap();
        assert!(matches!(got, Next::Reply(m) if m == "reply"));
    }

    #[tokio::test]
    async fn dropping_the_answer_unanswered_is_seen_as_dropped() {
        let (answer, answers) = slot();
        assert!(answer.offer(Bytes::from_static(b"p")));
        drop(answer);
        assert!(matches!(answers.next().await, Next::Related(_)));
        assert!(matches!(answers.next().await, Next::Dropped));
    }

    #[test]
    fn the_queue_is_bounded_and_closed_once_the_receiver_is_gone() {
        let (answer, answers) = slot();
        let accepted = (0..RELATED_QUEUE + 5)
            .filter(|_| answer.offer(Bytes::from_static(b"p")))
            .count();
        assert_eq!(accepted, RELATED_QUEUE);
        assert!(answers.try_related().is_some());
        assert!(answer.offer(Bytes::from_static(b"room again")));
        let related = answer.related();
        drop(answers);
        assert!(!related.offer(Bytes::from_static(b"x")));
        assert!(!answer.offer(Bytes::from_static(b"x")));
    }
}
