//! The bounded record of signed session ids this node ended (DELETE, idle expiry, eviction
//! at a cap), so it never resumes one of them before its absolute expiry.
//!
//! Entries are (expiry, nonce) pairs: a hash set answers "was this one ended", and buckets
//! of nonces per expiry second, in expiry order, let expired ones drop off the front. Every
//! DELETE records one, so recording is a hash insert and a push onto the newest bucket, not a
//! walk down an ordered tree of all of them. At the cap an entry of the soonest expiry makes
//! room, and the record then refuses every token expiring no later than it (the `floor`): a
//! full record may refuse some resumable tokens, never resume an ended one. Every token of a
//! node has the same lifetime, so expiry order is issue order and the floor only catches the
//! oldest sessions.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::NONCE_BYTES;

/// Ended ids remembered at most (about 60 bytes each).
pub const MAX_ENDED: usize = 100_000;

/// One ended id: its nonce and absolute expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    nonce: [u8; NONCE_BYTES],
    expires: u64,
}

impl Hash for Entry {
    /// The nonce's first eight bytes: 64 of its CSPRNG bits, and only verified tokens (made
    /// with a key of the ring) are ever looked up, so no caller picks them.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.nonce[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

/// Passes [`Entry`]'s one `u64` through as the hash.
#[derive(Default)]
struct NonceHasher(u64);

impl Hasher for NonceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Entry`; folded in so the hasher stays correct for any key.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Ended {
    entries: HashSet<Entry, BuildHasherDefault<NonceHasher>>,
    /// The same entries' nonces by expiry second, soonest first.
    by_expiry: BTreeMap<u64, Vec<[u8; NONCE_BYTES]>>,
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
            entries: HashSet::default(),
            by_expiry: BTreeMap::new(),
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
        let entry = Entry { nonce, expires };
        if self.entries.contains(&entry) {
            return;
        }
        while self.entries.len() >= self.cap && self.evict_soonest() {}
        self.entries.insert(entry);
        // Ids end in issue order, give or take: this is nearly always the last bucket.
        match self.by_expiry.last_entry() {
            Some(mut last) if *last.key() == expires => last.get_mut().push(nonce),
            _ => self.by_expiry.entry(expires).or_default().push(nonce),
        }
    }

    /// True when this node ended the session, or may have (see the floor in the module doc).
    pub fn was_ended(&self, nonce: &[u8; NONCE_BYTES], expires: u64) -> bool {
        expires <= self.floor
            || self.entries.contains(&Entry {
                nonce: *nonce,
                expires,
            })
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops one entry of the soonest expiry and raises the floor to it; false when empty.
    fn evict_soonest(&mut self) -> bool {
        let Some(mut first) = self.by_expiry.first_entry() else {
            return false;
        };
        let expires = *first.key();
        if let Some(nonce) = first.get_mut().pop() {
            self.entries.remove(&Entry { nonce, expires });
        }
        if first.get().is_empty() {
            first.remove();
        }
        self.floor = self.floor.max(expires);
        true
    }

    fn prune(&mut self, now: u64) {
        while let Some(first) = self.by_expiry.first_entry() {
            if *first.key() > now {
                break;
            }
            let (expires, nonces) = first.remove_entry();
            for nonce in nonces {
                self.entries.remove(&Entry { nonce, expires });
            }
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

    #[test]
    fn ids_ending_out_of_expiry_order_or_twice_are_each_held_once_until_they_expire() {
        let mut ended = Ended::with_cap(4);
        ended.end(nonce(1), 2000, 10);
        ended.end(nonce(2), 1500, 10); // issued earlier, ended later
        ended.end(nonce(3), 2000, 11);
        ended.end(nonce(3), 2000, 12);
        assert_eq!(ended.len(), 3, "ended twice, held once");
        ended.end(nonce(4), 2500, 1600);
        assert_eq!(ended.len(), 3, "the one expiring at 1500 was pruned");
        assert!(!ended.was_ended(&nonce(2), 1500));
        ended.end(nonce(5), 2500, 1601);
        ended.end(nonce(6), 2500, 1602);
        assert_eq!(
            ended.len(),
            4,
            "at the cap one of the soonest expiry made room"
        );
        for (n, expires) in [(1, 2000), (3, 2000), (4, 2500), (5, 2500), (6, 2500)] {
            assert!(ended.was_ended(&nonce(n), expires), "session {n}");
        }
        assert!(
            !ended.was_ended(&nonce(9), 2001),
            "the floor is the evicted entry's expiry, no later"
        );
    }
}
