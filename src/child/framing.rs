//! Newline-delimited framing of a child's output, bounded by a maximum line length.
//!
//! Owns byte-level framing only: no UTF-8, no JSON. Lines come out as [`Bytes`] without
//! their `\n` (and without a trailing `\r`); empty lines are skipped. Invariant: at most
//! `max + 1` bytes of an unfinished line are buffered. An over-long line is reported once
//! as [`Frame::TooLong`] and the rest of it, up to its newline, is discarded; the decoder
//! never returns `Err`, so a `FramedRead` never hits its "`None` once after an error" quirk.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One unit of a child's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    /// A complete line within the limit.
    Line(Bytes),
    /// A line over the limit: its first `max` bytes; the rest is dropped.
    TooLong(Bytes),
}

/// Splits a byte stream at `\n`, bounded by `max` bytes per line.
#[derive(Debug)]
pub(super) struct LineDecoder {
    max: usize,
    /// Bytes of the buffer already searched for `\n`, so long lines are not rescanned.
    scanned: usize,
    /// Inside an over-long line already reported: drop bytes up to the next `\n`.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder accepting lines of at most `max` bytes (not counting `\r\n`).
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            scanned: 0,
            discarding: false,
        }
    }

    /// The next frame from `buf`, or `None` when more input is needed.
    pub(super) fn next_frame(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            let Some(at) = self.find_newline(buf) else {
                return self.on_partial(buf);
            };
            self.scanned = 0;
            let line = buf.split_to(at + 1);
            if let Some(frame) = self.on_line(line) {
                return Some(frame);
            }
        }
    }

    /// Like [`next_frame`](Self::next_frame) at end of input: an unterminated last line
    /// is still a line (a child may exit without writing the final newline).
    pub(super) fn last_frame(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if let Some(frame) = self.next_frame(buf) {
            return Some(frame);
        }
        self.scanned = 0;
        let rest = buf.split();
        if rest.is_empty() {
            return None;
        }
        self.on_line(rest)
    }

    fn find_newline(&mut self, buf: &BytesMut) -> Option<usize> {
        let found = buf[self.scanned..].iter().position(|&b| b == b'\n');
        match found {
            Some(i) => Some(self.scanned + i),
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }

    /// No newline yet: keep waiting, or give up on a line that is already too long.
    fn on_partial(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if self.discarding {
            buf.clear();
            self.scanned = 0;
            return None;
        }
        // `max + 1`: the line may still end in `\r\n` and fit.
        if buf.len() <= self.max + 1 {
            return None;
        }
        self.discarding = true;
        let head = buf.split_to(self.max).freeze();
        buf.clear();
        self.scanned = 0;
        Some(Frame::TooLong(head))
    }

    /// A complete line, newline included.
    fn on_line(&mut self, mut line: BytesMut) -> Option<Frame> {
        if std::mem::take(&mut self.discarding) {
            return None;
        }
        if line.last() == Some(&b'\n') {
            line.truncate(line.len() - 1);
        }
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.is_empty() {
            return None;
        }
        if line.len() > self.max {
            line.truncate(self.max);
            return Some(Frame::TooLong(line.freeze()));
        }
        Some(Frame::Line(line.freeze()))
    }
}

impl Decoder for LineDecoder {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        Ok(self.next_frame(buf))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        Ok(self.last_frame(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn too_long(s: &str) -> Frame {
        Frame::TooLong(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Feeds `chunks` one by one, then ends the input; returns every frame.
    fn decode_all(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut decoder = LineDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = decoder.next_frame(&mut buf) {
                frames.push(frame);
            }
        }
        while let Some(frame) = decoder.last_frame(&mut buf) {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn splits_lines_and_strips_cr_and_skips_empty() {
        let frames = decode_all(100, &[b"a\nb\r\n\n\r\nc", b"d\n"]);
        assert_eq!(frames, vec![line("a"), line("b"), line("cd")]);
    }

    #[test]
    fn unterminated_last_line_is_a_line() {
        assert_eq!(
            decode_all(100, &[b"a\nlast\r"]),
            vec![line("a"), line("last")]
        );
    }

    #[test]
    fn line_at_the_limit_passes_even_with_crlf_split_across_reads() {
        let frames = decode_all(4, &[b"abcd\r", b"\nxy\n"]);
        assert_eq!(frames, vec![line("abcd"), line("xy")]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_the_stream_resyncs() {
        let frames = decode_all(4, &[b"ok\nabcdefgh", b"ijkl", b"mn\nnext\n"]);
        assert_eq!(frames, vec![line("ok"), too_long("abcd"), line("next")]);
    }

    #[test]
    fn over_long_line_within_one_read_is_reported() {
        let frames = decode_all(4, &[b"abcde\nnext\n"]);
        assert_eq!(frames, vec![too_long("abcd"), line("next")]);
    }

    #[test]
    fn buffer_stays_bounded_while_discarding() {
        let mut decoder = LineDecoder::new(4);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(decoder.next_frame(&mut buf), Some(too_long("0123")));
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(decoder.next_frame(&mut buf), None);
            assert!(buf.is_empty(), "discarded bytes must not accumulate");
        }
    }
}
