//! A child's stderr: drained into the log line by line, rate-limited, with a short tail
//! kept for error messages and `/status`.
//!
//! Owns the stderr pipe (via its drain task) and the tail ring. Invariants: the pipe is
//! read until EOF however fast the child writes, so a flood never blocks the child;
//! memory is bounded by one read buffer plus [`STDERR_TAIL_LINES`] short strings.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::framing::{Frame, LineDecoder};
use crate::clients::ClientId;

/// Longest stderr line logged, in bytes; the rest of a longer line is dropped.
pub const STDERR_MAX_LINE_BYTES: usize = 8 * 1024;
/// Number of stderr lines kept for [`ExitInfo::stderr_tail`](super::ExitInfo).
pub const STDERR_TAIL_LINES: usize = 20;
/// Longest line kept in the tail, in bytes.
pub const STDERR_TAIL_LINE_BYTES: usize = 512;
/// Stderr lines logged per child per `RATE_WINDOW`; the rest are counted, then summarised.
pub const STDERR_LINES_PER_SEC: u32 = 100;
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Bytes asked of each stderr read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The last [`STDERR_TAIL_LINES`] stderr lines, shared with every handle.
#[derive(Debug, Default)]
pub(super) struct StderrTail {
    lines: Mutex<VecDeque<String>>,
}

impl StderrTail {
    /// The tail, oldest first.
    pub(super) fn snapshot(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    /// Appends lines, dropping the oldest beyond the limit. One lock per read, not per line.
    fn extend<'a>(&self, batch: impl Iterator<Item = &'a Bytes>) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        for line in batch {
            if lines.len() == STDERR_TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(lossy_prefix(line, STDERR_TAIL_LINE_BYTES));
        }
    }
}

/// The first `max` bytes of `line` as text, not ending in a cut character.
fn lossy_prefix(line: &[u8], max: usize) -> String {
    let mut head = &line[..line.len().min(max)];
    if let Err(e) = std::str::from_utf8(head)
        && e.error_len().is_none()
    {
        head = &head[..e.valid_up_to()];
    }
    String::from_utf8_lossy(head).into_owned()
}

/// Whether to log a line: a fixed window of [`STDERR_LINES_PER_SEC`] lines per second.
#[derive(Debug)]
struct RateLimit {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log the line, after a summary of `suppressed_before` lines when non-zero.
    Log {
        suppressed_before: u64,
    },
    Suppress,
}

impl RateLimit {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let mut suppressed_before = 0;
        if now.saturating_duration_since(self.window_start) >= RATE_WINDOW {
            suppressed_before = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged >= STDERR_LINES_PER_SEC {
            self.suppressed += 1;
            return Admit::Suppress;
        }
        self.logged += 1;
        Admit::Log { suppressed_before }
    }
}

/// Starts draining `stderr`; the returned handle owns the task (dropping it aborts).
pub(super) fn spawn_drain(
    stderr: ChildStderr,
    id: ClientId,
    pid: u32,
    tail: Arc<StderrTail>,
) -> AbortOnDropHandle<()> {
    let drain = StderrDrain {
        id,
        pid,
        tail,
        limit: RateLimit::new(Instant::now()),
        batch: VecDeque::with_capacity(STDERR_TAIL_LINES),
    };
    AbortOnDropHandle::new(tokio::spawn(drain.run(stderr)))
}

struct StderrDrain {
    id: ClientId,
    pid: u32,
    tail: Arc<StderrTail>,
    limit: RateLimit,
    /// The last lines of the current read, published to `tail` once per read.
    batch: VecDeque<Bytes>,
}

impl StderrDrain {
    async fn run(mut self, mut stderr: ChildStderr) {
        let mut buf = BytesMut::new();
        let mut decoder = LineDecoder::new(STDERR_MAX_LINE_BYTES);
        loop {
            buf.reserve(READ_CHUNK_BYTES);
            match stderr.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(client_id = %self.id, pid = self.pid, %e, "reading child stderr failed");
                    break;
                }
            }
            let now = Instant::now();
            while let Some(frame) = decoder.next_frame(&mut buf) {
                self.on_frame(frame, now);
            }
            self.publish();
        }
        self.on_eof(&mut decoder, &mut buf);
    }

    fn on_eof(&mut self, decoder: &mut LineDecoder, buf: &mut BytesMut) {
        let now = Instant::now();
        while let Some(frame) = decoder.last_frame(buf) {
            self.on_frame(frame, now);
        }
        self.publish();
        let suppressed = std::mem::take(&mut self.limit.suppressed);
        self.report_suppressed(suppressed);
    }

    fn on_frame(&mut self, frame: Frame, now: Instant) {
        let (line, truncated) = match frame {
            Frame::Line(line) => (line, false),
            Frame::TooLong(head) => (head, true),
        };
        if let Admit::Log { suppressed_before } = self.limit.admit(now) {
            self.report_suppressed(suppressed_before);
            self.log(&line, truncated);
        }
        if self.batch.len() == STDERR_TAIL_LINES {
            self.batch.pop_front();
        }
        self.batch.push_back(line);
    }

    fn log(&self, line: &[u8], truncated: bool) {
        let (id, pid, line) = (&self.id, self.pid, String::from_utf8_lossy(line));
        if truncated {
            tracing::info!(client_id = %id, pid, line = %line, truncated, "child stderr");
        } else {
            tracing::info!(client_id = %id, pid, line = %line, "child stderr");
        }
    }

    fn report_suppressed(&self, count: u64) {
        if count > 0 {
            tracing::info!(
                client_id = %self.id,
                pid = self.pid,
                suppressed = count,
                "child stderr lines not logged (rate limit)"
            );
        }
    }

    fn publish(&mut self) {
        if !self.batch.is_empty() {
            self.tail.extend(self.batch.iter());
            self.batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_logs_a_window_then_summarises_the_rest() {
        let start = Instant::now();
        let mut limit = RateLimit::new(start);
        for _ in 0..STDERR_LINES_PER_SEC {
            assert_eq!(
                limit.admit(start),
                Admit::Log {
                    suppressed_before: 0
                }
            );
        }
        for _ in 0..7 {
            assert_eq!(
                limit.admit(start + Duration::from_millis(999)),
                Admit::Suppress
            );
        }
        let next = start + RATE_WINDOW;
        assert_eq!(
            limit.admit(next),
            Admit::Log {
                suppressed_before: 7
            }
        );
        assert_eq!(
            limit.admit(next),
            Admit::Log {
                suppressed_before: 0
            }
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_truncated() {
        let tail = StderrTail::default();
        let lines: Vec<Bytes> = (0..25).map(|i| Bytes::from(format!("line {i}"))).collect();
        tail.extend(lines.iter());
        let long = Bytes::from(vec![b'x'; STDERR_TAIL_LINE_BYTES * 2]);
        tail.extend(std::iter::once(&long));
        let got = tail.snapshot();
        assert_eq!(got.len(), STDERR_TAIL_LINES);
        assert_eq!(got[0], "line 6");
        assert_eq!(got[18], "line 24");
        assert_eq!(got[19].len(), STDERR_TAIL_LINE_BYTES);
    }

    #[test]
    fn tail_truncation_does_not_cut_a_character() {
        // "é" is two bytes; a cut after one byte must drop it, not show U+FFFD.
        assert_eq!(lossy_prefix("aé".as_bytes(), 2), "a");
        assert_eq!(lossy_prefix(b"a\xffb", 3), "a\u{fffd}b");
    }
}
