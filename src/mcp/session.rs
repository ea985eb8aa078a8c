//! MCP sessions of one tenant: ids, negotiated version, declared capabilities, GET stream.
//!
//! A session belongs to exactly one tenant (its id is only looked up in that tenant's
//! [`Sessions`]), so a session id presented with another tenant's header is unknown: 404.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Messages queued for one GET stream before further ones are dropped (slow reader).
pub const STREAM_QUEUE: usize = 256;

/// What a caller declared it can answer, from its `initialize` capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerCaps {
    /// `sampling/createMessage`.
    pub sampling: bool,
    /// `elicitation/create`.
    pub elicitation: bool,
    /// `roots/list`.
    pub roots: bool,
}

/// One MCP session.
#[derive(Debug)]
pub struct Session {
    /// The `Mcp-Session-Id`.
    pub id: Arc<str>,
    /// The protocol version negotiated with this caller.
    pub protocol_version: String,
    /// What this caller can answer.
    pub caps: CallerCaps,
    /// The open GET stream, tagged so an older stream's guard cannot close a newer one.
    stream: Mutex<Option<(u64, mpsc::Sender<Bytes>)>>,
    last_seen: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge every later request: the data stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// Records use, postponing expiry.
    pub fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Sends a message on the session's GET stream; false when none is open or it is full.
    pub fn push(&self, message: Bytes) -> bool {
        let guard = lock(&self.stream);
        guard
            .as_ref()
            .is_some_and(|(_, tx)| tx.try_send(message).is_ok())
    }
}

/// All sessions of one tenant.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    open_streams: AtomicUsize,
}

/// A fresh session id: 256 bits from the OS CSPRNG, hex (visible ASCII).
pub fn new_session_id() -> Result<Arc<str>, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes).into())
}

impl Sessions {
    /// Adds a session; `None` when the tenant already has `max` sessions.
    pub fn insert(
        &self,
        id: Arc<str>,
        protocol_version: String,
        caps: CallerCaps,
        max: usize,
    ) -> Option<Arc<Session>> {
        let mut map = lock(&self.map);
        if map.len() >= max {
            return None;
        }
        let session = Arc::new(Session {
            id: id.clone(),
            protocol_version,
            caps,
            stream: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
        });
        map.insert(id, session.clone());
        Some(session)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    /// Ends a session; false when it did not exist.
    pub fn remove(&self, id: &str) -> bool {
        let removed = lock(&self.map).remove(id);
        if let Some(session) = &removed {
            lock(&session.stream).take(); // ends its GET stream
        }
        removed.is_some()
    }

    /// Ends every session (the tenant was removed).
    pub fn clear(&self) {
        let drained: Vec<_> = lock(&self.map).drain().collect();
        for (_, session) in drained {
            lock(&session.stream).take();
        }
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// GET streams open now; an open stream keeps the tenant's child alive.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    /// Sends `message` once to every session with an open GET stream.
    pub fn broadcast(&self, message: &Bytes) -> usize {
        let sessions: Vec<_> = lock(&self.map).values().cloned().collect();
        sessions.iter().filter(|s| s.push(message.clone())).count()
    }

    /// Sessions with an open GET stream that satisfy `pred`.
    pub fn with_stream(&self, pred: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        let map = lock(&self.map);
        map.values()
            .filter(|s| lock(&s.stream).is_some() && pred(s))
            .cloned()
            .collect()
    }

    /// Forgets sessions unused for `ttl` and without an open stream; returns how many.
    pub fn expire(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, s| {
            lock(&s.stream).is_some() || now.duration_since(*lock(&s.last_seen)) < ttl
        });
        before - map.len()
    }

    /// Opens (or replaces) the GET stream of `session`; the guard closes it on drop.
    pub fn open_stream(
        self: &Arc<Self>,
        session: &Arc<Session>,
    ) -> (mpsc::Receiver<Bytes>, StreamGuard) {
        static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);
        let tag = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        *lock(&session.stream) = Some((tag, tx));
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        let guard = StreamGuard {
            sessions: self.clone(),
            session: session.clone(),
            tag,
        };
        (rx, guard)
    }
}

/// Held by an open GET stream; dropping it closes the stream's registration.
#[derive(Debug)]
pub struct StreamGuard {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    tag: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut slot = lock(&self.session.stream);
        // Only unregister our own sender: a newer GET may have replaced it.
        if slot.as_ref().is_some_and(|(tag, _)| *tag == self.tag) {
            slot.take();
        }
        drop(slot);
        self.session.touch();
        self.sessions.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}
