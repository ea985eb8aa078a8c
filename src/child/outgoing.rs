//! The batch of messages the actor is writing to a child's stdin.
//!
//! Every message the actor finds queued is taken into one batch, each line followed by its
//! newline, and the batch goes out as one `writev`: under load a child is woken once per
//! batch instead of once per message, and the daemon makes one system call for all of them
//! (README, Performance). Lines are never copied; the batch holds their `Bytes`.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Most messages in one batch: tokio passes at most 64 slices to one `writev`, and each
/// message is two (its line and its newline).
pub const MAX_BATCH_MESSAGES: usize = 32;
/// A batch takes no further message once it holds this many bytes (a pipe's capacity), so
/// it holds at most this plus one message.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Lines with their newlines, in order, partly written.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// What is left to write: lines and the newline after each, front first.
    parts: VecDeque<Bytes>,
    /// Bytes left in `parts`.
    remaining: usize,
    /// Messages taken into this batch (reset once it is written).
    messages: usize,
}

impl Outgoing {
    /// Appends `line` and its newline.
    pub fn push(&mut self, line: Bytes) {
        self.remaining += line.len() + 1;
        self.messages += 1;
        // No empty part: `chunk` must not be empty while anything remains.
        if !line.is_empty() {
            self.parts.push_back(line);
        }
        self.parts.push_back(Bytes::from_static(b"\n"));
    }

    /// Whether another message may join this batch.
    pub fn has_room(&self) -> bool {
        self.messages < MAX_BATCH_MESSAGES && self.remaining < MAX_BATCH_BYTES
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Drops what is left (stdin is closed); keeps the allocation for the next batch.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.remaining = 0;
        self.messages = 0;
    }
}

impl Buf for Outgoing {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |part| part.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        cnt = cnt.min(self.remaining);
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
        debug_assert!(self.parts.front().is_none_or(|p| !p.is_empty()));
        if self.remaining == 0 {
            self.messages = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(out: &mut Outgoing, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while out.has_remaining() {
            assert!(!out.chunk().is_empty(), "a chunk while bytes remain");
            let n = step.min(out.chunk().len());
            got.extend_from_slice(&out.chunk()[..n]);
            out.advance(n);
        }
        got
    }

    #[test]
    fn each_line_is_followed_by_its_newline_whatever_the_write_sizes() {
        for step in [1, 2, 3, 7, 100] {
            let mut out = Outgoing::default();
            for line in ["{\"a\":1}", "", "{\"b\":22}"] {
                out.push(Bytes::from(line));
            }
            assert_eq!(out.remaining(), "{\"a\":1}\n\n{\"b\":22}\n".len());
            assert_eq!(written(&mut out, step), b"{\"a\":1}\n\n{\"b\":22}\n");
            assert!(out.is_empty());
            assert!(out.has_room(), "an emptied batch starts over");
        }
    }

    #[test]
    fn vectored_chunks_cover_every_part_in_order() {
        let mut out = Outgoing::default();
        out.push(Bytes::from_static(b"one"));
        out.push(Bytes::from_static(b"two"));
        out.advance(2);
        let mut slices = [IoSlice::new(&[]); 8];
        let n = out.chunks_vectored(&mut slices);
        let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(joined, b"e\ntwo\n");
        let mut two = [IoSlice::new(&[]); 2];
        assert_eq!(
            out.chunks_vectored(&mut two),
            2,
            "never more than dst holds"
        );
    }

    #[test]
    fn a_batch_is_bounded_in_messages_and_bytes() {
        let mut out = Outgoing::default();
        while out.has_room() {
            out.push(Bytes::from_static(b"x"));
        }
        assert_eq!(out.messages, MAX_BATCH_MESSAGES);
        let mut big = Outgoing::default();
        big.push(Bytes::from(vec![b'y'; MAX_BATCH_BYTES]));
        assert!(!big.has_room(), "a full pipe's worth takes nothing more");
        big.clear();
        assert!(big.is_empty() && big.has_room());
    }
}
