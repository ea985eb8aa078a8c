//! The bounded record of signed session ids this node ended (DELETE, idle expiry, eviction
//! at a cap), so it never resumes one of them before its absolute expiry.
//!
//! Entries are keyed by (expiry, nonce) and kept in expiry order, so expired ones drop off
//! the front. At the cap the entry that expires soonest makes room, and the record then
//! refuses every token expiring no later than it (the `floor`): a full record may refuse
//! some resumable tokens, never resume an ended one. Every token of a node has the same
//! lifetime, so expiry order is issue order and the floor only catches the oldest sessions.

use std::collections::BTreeSet;

use super::NONCE_BYTES;

/// Ended ids remembered at most (about 40 bytes each).
pub const MAX_ENDED: usize = 100_000;

/// See the module doc.
#[derive(Debug)]
pub struct Ended {
    entries: BTreeSet<(u64, [u8; NONCE_BYTES])>,
    floor: u64,
    cap: usize,
}

impl Default for Ended {
    fn default() -> Self {
        Self::with_cap(MAX_ENDED)
    }
}

impl Ended {
    /// A record of at most `cap` entries (at least one).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            entries: BTreeSet::new(),
            floor: 0,
            cap: cap.max(1),
        }
    }

    /// Records that the session with `nonce`, expiring at `expires`, ended at `now` (Unix
    /// seconds).
    pub fn end(&mut self, nonce: [u8; NONCE_BYTES], expires: u64, now: u64) {
        if expires <= now {
            return; // no node accepts it any more
        }
        self.prune(now);
        while self.entries.len() >= self.cap {
            let Some((soonest, _)) = self.entries.pop_first() else {
                break;
            };
            self.floor = self.floor.max(soonest);
        }
        self.entries.insert((expires, nonce));
    }

    /// True when this node ended the session, or may have (see the floor in the module doc).
    pub fn was_ended(&self, nonce: &[u8; NONCE_BYTES], expires: u64) -> bool {
        expires <= self.floor || self.entries.contains(&(expires, *nonce))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn prune(&mut self, now: u64) {
        while self
            .entries
            .first()
            .is_some_and(|(expires, _)| *expires <= now)
        {
            self.entries.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(n: u8) -> [u8; NONCE_BYTES] {
        [n; NONCE_BYTES]
    }

    #[test]
    fn an_ended_id_is_refused_and_others_are_not() {
        let mut ended = Ended::default();
        ended.end(nonce(1), 1000, 10);
        assert!(ended.was_ended(&nonce(1), 1000));
        assert!(!ended.was_ended(&nonce(2), 1000));
        assert!(
            !ended.was_ended(&nonce(1), 1001),
            "the expiry is part of the key"
        );
    }

    #[test]
    fn expired_entries_are_dropped_and_already_expired_ones_never_stored() {
        let mut ended = Ended::with_cap(10);
        ended.end(nonce(1), 100, 10);
        ended.end(nonce(2), 50, 60);
        assert_eq!(ended.len(), 1, "one past its expiry is not recorded");
        ended.end(nonce(3), 500, 200);
        assert_eq!(ended.len(), 1, "the entry expired at 100 was pruned");
        assert!(ended.was_ended(&nonce(3), 500));
    }

    #[test]
    fn at_the_cap_the_soonest_expiry_makes_room_and_nothing_ended_is_resumable() {
        let mut ended = Ended::with_cap(3);
        for n in 1..=5u8 {
            ended.end(nonce(n), 1000 + u64::from(n), 10);
        }
        assert_eq!(ended.len(), 3);
        for n in 1..=5u8 {
            assert!(
                ended.was_ended(&nonce(n), 1000 + u64::from(n)),
                "session {n} was ended here and must stay refused"
            );
        }
        assert!(
            ended.was_ended(&nonce(9), 1001),
            "an unknown token no newer than the evicted ones is refused too"
        );
        assert!(
            !ended.was_ended(&nonce(9), 1003),
            "newer tokens still resume"
        );
    }
}
