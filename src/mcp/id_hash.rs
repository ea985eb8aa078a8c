//! Hashing of session ids by their tail, for the maps keyed by them.
//!
//! A signed id (`--session-key-file`) is some 200–300 bytes and a node-local one 64, and a
//! request hashes its id several times (the session map, the interest maps, each on lookup,
//! insert and removal); hashing all of it made a signed session measurably dearer than a
//! node-local one. Every id such a map holds was minted here or verified with a key of the ring, and
//! ends in at least 128 unpredictable bits: the random hex of a node-local id, the HMAC tag
//! of a signed one. So the last [`TAIL`] bytes, under the standard keyed SipHash, spread
//! them as well as the whole id would; equal tails of different ids only share a bucket, and
//! equality is still decided on the whole id. Shorter keys (`listen-N`) are hashed whole.

use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::{BuildHasher, Hasher};

/// Bytes of an id that are hashed: 128 bits of a hex id, a signed id's whole 128-bit tag.
pub const TAIL: usize = 32;

/// A map keyed by session ids (or other keys with a unique tail).
pub type IdMap<K, V> = HashMap<K, V, IdHash>;

/// [`RandomState`] over the last [`TAIL`] bytes of each write.
#[derive(Debug, Clone, Default)]
pub struct IdHash(RandomState);

impl BuildHasher for IdHash {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

/// See [`IdHash`].
#[derive(Debug)]
pub struct TailHasher(DefaultHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let from = bytes.len().saturating_sub(TAIL);
        self.0.write(&bytes[from..]);
    }

    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ids_sharing_a_tail_are_still_different_keys() {
        let mut map: IdMap<Arc<str>, u8> = IdMap::default();
        let tail = "x".repeat(TAIL);
        let (a, b) = (format!("a{tail}"), format!("b{tail}"));
        map.insert(a.as_str().into(), 1);
        map.insert(b.as_str().into(), 2);
        assert_eq!(
            (map.get(a.as_str()), map.get(b.as_str())),
            (Some(&1), Some(&2))
        );
        assert_eq!(map.get(tail.as_str()), None);
        assert_eq!(map.remove("listen-1"), None);
    }
}
