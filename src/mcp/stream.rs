//! The SSE streams of one session: event ids, bounded replay buffers, and the one live
//! connection each stream may have (spec 2025-11-25 "Resumability and Redelivery").
//!
//! A session has one GET stream, number 0, that lives as long as the session, and one reply
//! stream per POST answered with SSE, numbered 1, 2, ... Every event carries the id
//! `<stream>-<seq>`: unique within the session and naming its stream, so a `Last-Event-ID`
//! says which stream to resume and from where. An event is rendered once, kept in its
//! stream's replay buffer and handed to the stream's live connection, if one is attached.
//! Resuming (always a GET, whatever began the stream) attaches a new connection that first
//! gets exactly the buffered events after the id, then the live ones; never another stream's.
//!
//! Not owned here: what goes on which stream (the relay and `http::mcp` decide) and HTTP.
//! Invariant: within a stream, sequence numbers are consecutive from 1 and a connection sees
//! them in order; a connection that cannot keep up is closed rather than given a gap, so its
//! caller resumes from the last id it saw.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

/// The number of a session's GET stream.
pub const GET_STREAM: u64 = 0;
/// Events kept for replay per stream; older ones are forgotten.
pub const REPLAY_EVENTS: usize = 256;
/// Bytes of rendered events kept for replay per stream (the newest event is always kept).
pub const REPLAY_BYTES: usize = 256 * 1024;
/// Finished reply streams kept per session for late resumption; older ones are forgotten.
pub const RETAINED_REPLIES: usize = 4;
/// Events queued on a live connection beyond its replay; a reader this far behind is cut off.
pub const LIVE_QUEUE: usize = 256;
/// The SSE `retry` sent with each priming event: how soon a cut-off caller should come back.
pub const RECONNECT_HINT_MS: u64 = 1000;

/// An SSE event id, `<stream>-<seq>`. Seq 0 is the position before a stream's first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    /// The stream within the session.
    pub stream: u64,
    /// The event within the stream.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stream, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ResumeError;

    fn from_str(text: &str) -> Result<Self, ResumeError> {
        let malformed = || ResumeError::Malformed(text.chars().take(64).collect());
        let (stream, seq) = text.split_once('-').ok_or_else(malformed)?;
        Ok(Self {
            stream: decimal(stream).ok_or_else(malformed)?,
            seq: decimal(seq).ok_or_else(malformed)?,
        })
    }
}

/// Plain ASCII digits only: `u64::from_str` would also take `+7`, which we never issue.
fn decimal(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Why a `Last-Event-ID` cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Not of the form mcpmux issues.
    #[error(
        "Last-Event-ID {0:?} is not an event id issued by this server (expected <stream>-<seq>); open the stream without it"
    )]
    Malformed(String),
    /// Names a stream this session does not have (any more), or an event not yet sent.
    #[error(
        "Last-Event-ID {0} names no stream or event of this session; open the stream without it"
    )]
    Unknown(EventId),
    /// Some events after it were already dropped from the bounded replay buffer.
    #[error(
        "Last-Event-ID {0} is too old: events after it are no longer buffered; open the stream without it"
    )]
    Expired(EventId),
}

/// One event as written on the wire: `id`, optional `retry`, one `data` line.
fn render(id: EventId, retry_ms: Option<u64>, data: &[u8]) -> Bytes {
    let mut head = format!("id: {id}\n");
    if let Some(ms) = retry_ms {
        head.push_str(&format!("retry: {ms}\n"));
    }
    let mut out = Vec::with_capacity(head.len() + data.len() + 8);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data); // compact JSON from the child has no raw newlines
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// The event that opens a stream: an id and empty data, so the caller can resume from it
/// even if the connection breaks before the first message (spec 2025-11-25, SHOULD).
fn priming(id: EventId) -> Bytes {
    render(id, Some(RECONNECT_HINT_MS), b"")
}

/// Rendered events of one stream, oldest first, bounded by count and bytes.
#[derive(Debug)]
struct Replay {
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Replay {
    fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    fn push(&mut self, seq: u64, frame: Bytes) {
        self.bytes += frame.len();
        self.events.push_back((seq, frame));
        // The newest event stays even alone over the byte bound: it may be a final response.
        while self.events.len() > 1
            && (self.events.len() > self.max_events || self.bytes > self.max_bytes)
        {
            if let Some((_, old)) = self.events.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Every buffered event after `seq`, or `None` when some of them were already dropped.
    fn after(&self, seq: u64, next_seq: u64) -> Option<Vec<Bytes>> {
        let wanted_from = seq + 1;
        if wanted_from < next_seq && self.events.front().is_none_or(|(s, _)| *s > wanted_from) {
            return None;
        }
        Some(self.since(seq))
    }

    /// The buffered events after `seq`, whatever was dropped before them.
    fn since(&self, seq: u64) -> Vec<Bytes> {
        let events = self.events.iter().filter(|(s, _)| *s > seq);
        events.map(|(_, frame)| frame.clone()).collect()
    }
}

/// The connection attached to a stream now.
#[derive(Debug)]
struct Live {
    tag: u64,
    tx: mpsc::Sender<Bytes>,
}

/// One stream of a session.
#[derive(Debug)]
struct Stream {
    next_seq: u64,
    replay: Replay,
    live: Option<Live>,
    /// The last seq handed to any connection; a fresh GET starts after it.
    sent: u64,
    /// A reply stream whose final response is recorded: connections end after replay.
    finished: bool,
    connected: watch::Sender<bool>,
}

impl Stream {
    fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            next_seq: 1,
            replay: Replay::new(max_events, max_bytes),
            live: None,
            sent: 0,
            finished: false,
            connected: watch::Sender::new(false),
        }
    }

    fn record(&mut self, number: u64, message: &[u8]) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = render(
            EventId {
                stream: number,
                seq,
            },
            None,
            message,
        );
        self.replay.push(seq, frame.clone());
        let Some(live) = &self.live else {
            return false;
        };
        if live.tx.try_send(frame).is_ok() {
            self.sent = seq;
            return true;
        }
        // Full (a reader too slow) or closed: either way this connection is done. Closing it,
        // instead of skipping the event, lets the caller resume from the last id it saw.
        self.detach();
        false
    }

    fn detach(&mut self) {
        self.live = None;
        self.connected.send_replace(false);
    }

    /// The events a new connection gets before the live ones: all after `after` (exactly,
    /// or an error), or for a fresh connection a priming event and what was never sent.
    fn backlog(&self, number: u64, after: Option<u64>) -> Result<Vec<Bytes>, ResumeError> {
        let Some(seq) = after else {
            let from = EventId {
                stream: number,
                seq: self.sent,
            };
            let mut frames = vec![priming(from)];
            frames.extend(self.replay.since(self.sent));
            return Ok(frames);
        };
        let id = EventId {
            stream: number,
            seq,
        };
        if seq >= self.next_seq {
            return Err(ResumeError::Unknown(id)); // an event we never sent
        }
        self.replay
            .after(seq, self.next_seq)
            .ok_or(ResumeError::Expired(id))
    }

    fn attach(&mut self, backlog: Vec<Bytes>) -> Connection {
        let (tx, rx) = mpsc::channel(backlog.len() + LIVE_QUEUE);
        for frame in backlog {
            let _ = tx.try_send(frame); // the channel was sized for the backlog: cannot fail
        }
        self.sent = self.next_seq - 1;
        let tag = next_tag();
        if !self.finished {
            // Replaces any earlier connection: its sender drops, so its body ends.
            self.live = Some(Live { tag, tx });
            self.connected.send_replace(true);
        } // a finished stream's connection ends once the backlog is written
        Connection { rx, tag }
    }
}

fn next_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A connection attached to a stream: its rendered events, and the tag that detaches it.
#[derive(Debug)]
pub struct Connection {
    /// Rendered SSE events, in order; closed when the stream is done with this connection.
    pub rx: mpsc::Receiver<Bytes>,
    /// Identifies this connection, so a replaced one cannot detach its successor.
    pub tag: u64,
}

/// Every stream of one session.
#[derive(Debug)]
pub struct Streams {
    get: Stream,
    replies: BTreeMap<u64, Stream>,
    next_reply: u64,
    max_events: usize,
    max_bytes: usize,
    max_retained: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Self::with_bounds(REPLAY_EVENTS, REPLAY_BYTES, RETAINED_REPLIES)
    }
}

impl Streams {
    /// Streams with the given replay bounds (per stream) and finished replies kept.
    pub fn with_bounds(max_events: usize, max_bytes: usize, max_retained: usize) -> Self {
        Self {
            get: Stream::new(max_events, max_bytes),
            replies: BTreeMap::new(),
            next_reply: 1,
            max_events,
            max_bytes,
            max_retained,
        }
    }

    fn stream(&mut self, number: u64) -> Option<&mut Stream> {
        match number {
            GET_STREAM => Some(&mut self.get),
            n => self.replies.get_mut(&n),
        }
    }

    /// Opens a reply stream with its POST's connection attached (primed); returns its number.
    pub fn open_reply(&mut self) -> (u64, Connection) {
        self.forget_old_replies();
        let number = self.next_reply;
        self.next_reply += 1;
        let mut stream = Stream::new(self.max_events, self.max_bytes);
        let backlog = vec![priming(EventId {
            stream: number,
            seq: 0,
        })];
        let connection = stream.attach(backlog);
        self.replies.insert(number, stream);
        (number, connection)
    }

    /// Finished replies beyond the retained number go, oldest first; unfinished ones stay
    /// (their count is bounded by the requests a tenant may have in flight).
    fn forget_old_replies(&mut self) {
        let finished: Vec<u64> = self
            .replies
            .iter()
            .filter(|(_, s)| s.finished)
            .map(|(n, _)| *n)
            .collect();
        let excess = (finished.len() + 1).saturating_sub(self.max_retained);
        for number in finished.into_iter().take(excess) {
            self.replies.remove(&number);
        }
    }

    /// The sender of stream `number`'s live connection, to wait for room on it.
    pub fn live_sender(&mut self, number: u64) -> Option<mpsc::Sender<Bytes>> {
        Some(self.stream(number)?.live.as_ref()?.tx.clone())
    }

    /// True when stream `number` has a live connection whose queue is full: the reader is
    /// behind, and recording another event would cut it off.
    pub fn live_is_full(&mut self, number: u64) -> bool {
        let live = self.stream(number).and_then(|s| s.live.as_ref());
        live.is_some_and(|live| live.tx.capacity() == 0)
    }

    /// Records `message` as the next event of stream `number`; true when a live connection
    /// took it (false: buffered only, or no such stream).
    pub fn record(&mut self, number: u64, message: &[u8]) -> bool {
        self.stream(number)
            .is_some_and(|stream| stream.record(number, message))
    }

    /// Marks reply stream `number` complete: its connection ends after what it was sent.
    pub fn finish(&mut self, number: u64) {
        if let Some(stream) = self.stream(number) {
            stream.finished = true;
            stream.detach();
        }
    }

    /// Attaches a connection to stream `number`: after event `after` (resumption), or fresh.
    pub fn connect(&mut self, number: u64, after: Option<u64>) -> Result<Connection, ResumeError> {
        let id = EventId {
            stream: number,
            seq: after.unwrap_or(0),
        };
        let stream = self.stream(number).ok_or(ResumeError::Unknown(id))?;
        let backlog = stream.backlog(number, after)?;
        Ok(stream.attach(backlog))
    }

    /// Detaches connection `tag` from stream `number`, unless a newer one replaced it.
    pub fn disconnect(&mut self, number: u64, tag: u64) {
        if let Some(stream) = self.stream(number)
            && stream.live.as_ref().is_some_and(|live| live.tag == tag)
        {
            stream.detach();
        }
    }

    /// Follows whether stream `number` has a live connection.
    pub fn watch_connected(&mut self, number: u64) -> Option<watch::Receiver<bool>> {
        self.stream(number).map(|s| s.connected.subscribe())
    }

    /// True when the GET stream has a live connection.
    pub fn get_is_live(&self) -> bool {
        self.get.live.is_some()
    }

    /// True when any stream has a live connection.
    pub fn any_live(&self) -> bool {
        self.get_is_live() || self.replies.values().any(|s| s.live.is_some())
    }

    /// Ends the GET stream's connection, leaving reply streams to finish with their calls.
    pub fn close_get(&mut self) {
        self.get.detach();
    }

    /// Ends every connection (the session ended).
    pub fn close_all(&mut self) {
        self.get.detach();
        for stream in self.replies.values_mut() {
            stream.finished = true;
            stream.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&frame).into_owned());
        }
        out
    }

    fn ids(frames: &[String]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                f.lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("id: ")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn event_ids_round_trip_and_reject_what_we_never_issue() {
        let id: EventId = "3-17".parse().unwrap();
        assert_eq!(id, EventId { stream: 3, seq: 17 });
        assert_eq!(id.to_string(), "3-17");
        for bad in [
            "",
            "3",
            "3-",
            "-3",
            "a-1",
            "1-b",
            "+1-2",
            "1-+2",
            "1-2-3",
            " 1-2",
            "99999999999999999999-1",
        ] {
            assert!(
                matches!(bad.parse::<EventId>(), Err(ResumeError::Malformed(_))),
                "{bad:?} must be malformed"
            );
        }
    }

    #[test]
    fn replay_keeps_the_newest_events_within_both_bounds() {
        let mut replay = Replay::new(3, 10);
        for seq in 1..=5 {
            replay.push(seq, Bytes::from_static(b"ab"));
        }
        assert_eq!(replay.events.len(), 3, "count bound");
        assert_eq!(
            replay.after(2, 6).map(|v| v.len()),
            Some(3),
            "3..=5 still held"
        );
        assert_eq!(
            replay.after(1, 6),
            None,
            "2 was dropped: a gap, not a partial replay"
        );
        replay.push(6, Bytes::from(vec![b'x'; 50]));
        assert_eq!(
            replay.events.len(),
            1,
            "byte bound drops all but the newest"
        );
        assert_eq!(replay.bytes, 50);
        assert_eq!(replay.after(6, 7), Some(vec![]), "nothing after the newest");
    }

    #[test]
    fn a_reply_stream_is_primed_and_resumes_exactly_after_the_id() {
        let mut streams = Streams::default();
        let (number, mut first) = streams.open_reply();
        for n in 1..=4 {
            streams.record(number, format!("{{\"n\":{n}}}").as_bytes());
        }
        let got = drain(&mut first.rx);
        assert_eq!(ids(&got), ["1-0", "1-1", "1-2", "1-3", "1-4"]);
        assert!(
            got[0].contains("retry: 1000\ndata: \n\n"),
            "priming: {:?}",
            got[0]
        );
        assert_eq!(got[2], "id: 1-2\ndata: {\"n\":2}\n\n");

        let mut resumed = streams.connect(number, Some(2)).unwrap();
        assert_eq!(
            ids(&drain(&mut resumed.rx)),
            ["1-3", "1-4"],
            "exactly the missed ones"
        );
        streams.record(number, b"{}");
        assert_eq!(ids(&drain(&mut resumed.rx)), ["1-5"], "then live");
        assert!(
            first.rx.try_recv().is_err(),
            "the replaced connection gets nothing more"
        );
    }

    #[test]
    fn resuming_names_only_its_own_stream() {
        let mut streams = Streams::default();
        streams.record(GET_STREAM, b"{\"get\":1}");
        let (a, _ca) = streams.open_reply();
        let (b, _cb) = streams.open_reply();
        streams.record(a, b"{\"a\":1}");
        streams.record(b, b"{\"b\":1}");
        let mut resumed = streams.connect(a, Some(0)).unwrap();
        let got = drain(&mut resumed.rx);
        assert_eq!(got, ["id: 1-1\ndata: {\"a\":1}\n\n"]);
    }

    #[test]
    fn unknown_future_and_expired_ids_are_refused() {
        let mut streams = Streams::with_bounds(2, 1 << 20, 4);
        let (number, _c) = streams.open_reply();
        for _ in 0..4 {
            streams.record(number, b"{}");
        }
        let err = |s: &mut Streams, n, seq| s.connect(n, Some(seq)).err();
        assert!(matches!(
            err(&mut streams, 9, 0),
            Some(ResumeError::Unknown(_))
        ));
        assert!(matches!(
            err(&mut streams, number, 5),
            Some(ResumeError::Unknown(_))
        ));
        assert!(matches!(
            err(&mut streams, number, 1),
            Some(ResumeError::Expired(_))
        ));
        assert!(
            err(&mut streams, number, 2).is_none(),
            "3 and 4 are still held"
        );
    }

    #[test]
    fn a_fresh_get_gets_what_was_buffered_while_none_was_open() {
        let mut streams = Streams::default();
        streams.record(GET_STREAM, b"{\"n\":1}");
        streams.record(GET_STREAM, b"{\"n\":2}");
        let mut conn = streams.connect(GET_STREAM, None).unwrap();
        assert_eq!(ids(&drain(&mut conn.rx)), ["0-0", "0-1", "0-2"]);
        streams.disconnect(GET_STREAM, conn.tag);
        streams.record(GET_STREAM, b"{\"n\":3}");
        let mut again = streams.connect(GET_STREAM, None).unwrap();
        assert_eq!(
            ids(&drain(&mut again.rx)),
            ["0-2", "0-3"],
            "only the unsent one"
        );
    }

    #[test]
    fn a_reader_that_falls_behind_is_cut_off_and_can_resume() {
        let mut streams = Streams::default();
        let mut conn = streams.connect(GET_STREAM, None).unwrap();
        for _ in 0..LIVE_QUEUE + 5 {
            streams.record(GET_STREAM, b"{}");
        }
        assert!(
            !streams.get_is_live(),
            "the slow connection must be detached"
        );
        let got = drain(&mut conn.rx);
        assert_eq!(
            got.len(),
            LIVE_QUEUE + 1,
            "priming plus a full queue, no gap"
        );
        assert!(conn.rx.try_recv().is_err(), "and then it ends");
        let last_seen = LIVE_QUEUE as u64;
        let mut resumed = streams.connect(GET_STREAM, Some(last_seen)).unwrap();
        assert_eq!(drain(&mut resumed.rx).len(), 5, "the rest, from the buffer");
    }

    #[test]
    fn finished_replies_end_after_replay_and_old_ones_are_forgotten() {
        let mut streams = Streams::with_bounds(8, 1 << 20, 2);
        let (first, _c) = streams.open_reply();
        streams.record(first, b"{\"final\":1}");
        streams.finish(first);
        let mut resumed = streams.connect(first, Some(0)).unwrap();
        assert_eq!(drain(&mut resumed.rx).len(), 1);
        assert!(
            resumed.rx.is_closed(),
            "a finished stream's connection ends after replay"
        );
        for _ in 0..2 {
            let (n, _c) = streams.open_reply();
            streams.finish(n);
        }
        assert!(
            matches!(
                streams.connect(first, Some(0)),
                Err(ResumeError::Unknown(_))
            ),
            "the oldest finished reply was forgotten"
        );
    }
}
