//! Server-to-client requests: a child's `sampling/createMessage`, `elicitation/create`,
//! `roots/list` or `ping`, sent to exactly one session under a fresh id, and the
//! caller's answer mapped back to the child's id.
//!
//! Ids given to callers come from one counter per child, so two sessions' answers can
//! never be confused; an answer is accepted only from the session that was asked. Who may
//! be asked is [`ClientCaps::can_answer`]'s call.
//!
//! [`ClientCaps::can_answer`]: super::caps::ClientCaps::can_answer

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::sync::lock;

struct Outstanding {
    child_id: Bytes,
    session: Arc<str>,
}

/// Child requests waiting for a caller's answer.
#[derive(Default)]
pub struct ReverseRequests {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Outstanding>>,
}

impl ReverseRequests {
    /// Records a child request sent to `session`; returns the id the caller sees.
    pub fn register(&self, child_id: &str, session: Arc<str>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Outstanding {
            child_id: Bytes::copy_from_slice(child_id.as_bytes()),
            session,
        };
        lock(&self.map).insert(id, entry);
        id
    }

    /// The child's id for `session`'s answer to `caller_id`, consuming the entry.
    pub fn answer(&self, session: &str, caller_id: &str) -> Option<Bytes> {
        let id = caller_id.parse::<u64>().ok()?;
        let mut map = lock(&self.map);
        // Only the session that was asked may answer.
        if map.get(&id)?.session.as_ref() != session {
            return None;
        }
        map.remove(&id).map(|o| o.child_id)
    }

    /// Forgets `caller_id` (delivery failed).
    pub fn forget(&self, caller_id: u64) {
        lock(&self.map).remove(&caller_id);
    }

    /// For a child's cancellation of its own request: the session and caller-side id.
    pub fn cancel(&self, child_id: &str) -> Option<(Arc<str>, u64)> {
        let mut map = lock(&self.map);
        let id = *map
            .iter()
            .find(|(_, o)| o.child_id == child_id.as_bytes())?
            .0;
        map.remove(&id).map(|o| (o.session, id))
    }

    /// Number of child requests waiting for an answer.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_asked_session_can_answer_once() {
        let r = ReverseRequests::default();
        let id = r.register("\"c-7\"", Arc::from("s1"));
        assert_eq!(
            r.answer("s2", &id.to_string()),
            None,
            "another session must not answer"
        );
        assert_eq!(r.answer("s1", "999"), None, "unknown id");
        assert_eq!(
            r.answer("s1", &id.to_string()).as_deref(),
            Some(&b"\"c-7\""[..])
        );
        assert_eq!(r.answer("s1", &id.to_string()), None, "answered twice");
    }

    #[test]
    fn child_cancellation_finds_the_session() {
        let r = ReverseRequests::default();
        let id = r.register("5", Arc::from("s1"));
        assert_eq!(r.cancel("5"), Some((Arc::from("s1"), id)));
        assert!(r.is_empty());
    }
}
