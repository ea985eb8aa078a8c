//! MCP sessions of one tenant: ids, negotiated version, declared capabilities, their SSE
//! streams, and what each asked to hear from the shared child.
//!
//! A session belongs to exactly one tenant (its id is only looked up in that tenant's
//! [`Sessions`]), so a session id presented with another tenant's header is unknown: 404.
//!
//! Delivery: a message for a session goes on exactly one of its streams (see [`stream`]).
//! Notifications from the child go on the session's GET stream; when no GET connection is
//! open they wait in that stream's bounded replay buffer and are sent when one opens (a
//! fresh GET gets what was never sent; a GET with `Last-Event-ID` resumes exactly).
//!
//! Lock order: the session map, then [`Interest`], then one session's streams. The seats of
//! [`admission`] are never taken while the map is held.
//!
//! [`admission`]: super::admission
//!
//! [`stream`]: super::stream

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::admission::{Admission, Full, InUse, Seat, TenantSeats, Use};
use super::caps::ClientCaps;
use super::id_hash::IdMap;
use super::interest::{Interest, Level};
use super::listen::{self, Honored, Listens};
use super::stream::{EventId, GET_STREAM, ResumeError, Streams};
use super::tasks::Tasks;
use super::version::Revision;
use crate::sync::lock;
use crate::token::EndMark;

/// One MCP session.
#[derive(Debug)]
pub struct Session {
    /// The `Mcp-Session-Id`.
    pub id: Arc<str>,
    /// The protocol version negotiated with this caller.
    pub protocol_version: String,
    /// That version as a revision mcpmux knows (the oldest when it does not: a child's
    /// unknown answer), to send the session only message types it has.
    pub revision: Revision,
    /// What this caller can answer.
    pub caps: ClientCaps,
    streams: Mutex<Streams>,
    /// Its seat under the session caps (see [`super::admission`]).
    pub(super) seat: Mutex<Seat>,
    /// For a signed id: records its end on this node when taken or dropped.
    signed: Mutex<Option<EndMark>>,
}

impl Session {
    /// Attaches the mark of a signed id unless one is attached; true when this call did.
    pub fn mark_signed(&self, make: impl FnOnce() -> EndMark) -> bool {
        let mut signed = lock(&self.signed);
        if signed.is_some() {
            return false;
        }
        *signed = Some(make());
        true
    }

    /// True when the session's signed id is past its absolute expiry.
    pub fn signed_expired(&self) -> bool {
        lock(&self.signed).as_ref().is_some_and(EndMark::is_expired)
    }

    /// Sends a message on the session's GET stream (buffered while no GET is open); true
    /// when a live connection took it.
    pub fn push(&self, message: &[u8]) -> bool {
        self.record(GET_STREAM, message)
    }

    /// Records a message on stream `number`; true when a live connection took it.
    pub fn record(&self, number: u64, message: &[u8]) -> bool {
        lock(&self.streams).record(number, message)
    }

    /// The sender of stream `number`'s live connection, to wait for room on it.
    pub fn live_sender(&self, number: u64) -> Option<mpsc::Sender<Bytes>> {
        lock(&self.streams).live_sender(number)
    }

    /// True when stream `number`'s live reader is behind (its queue is full).
    pub fn live_is_full(&self, number: u64) -> bool {
        lock(&self.streams).live_is_full(number)
    }

    /// Marks reply stream `number` complete.
    pub fn finish(&self, number: u64) {
        lock(&self.streams).finish(number);
    }

    /// Follows whether stream `number` has a live connection (`None`: no such stream).
    pub fn watch_connected(&self, number: u64) -> Option<watch::Receiver<bool>> {
        lock(&self.streams).watch_connected(number)
    }

    /// True when a GET connection is open now.
    pub fn has_live_get(&self) -> bool {
        lock(&self.streams).get_is_live()
    }
}

/// All sessions of one tenant, and what they asked to hear from its child.
#[derive(Debug)]
pub struct Sessions {
    /// The tenant's id, for logs and metrics.
    tenant: Arc<str>,
    map: Mutex<IdMap<Arc<str>, Arc<Session>>>,
    /// The caps, shared by every tenant, and this tenant's seats under them.
    admission: Arc<Admission>,
    seats: Mutex<TenantSeats>,
    open_streams: AtomicUsize,
    interest: Mutex<Interest>,
    /// Held while the child is brought in line with [`Interest`], so that deciding what
    /// to send and sending it are never interleaved with another such change.
    control: tokio::sync::Mutex<()>,
    /// Bumped when sessions ended with subscriptions or a level, so relays re-plan.
    changes: watch::Sender<u64>,
    /// Every task of the tenant, by the id its session sees (they outlive a child).
    tasks: Tasks,
    /// Stateless callers' `subscriptions/listen` streams.
    listens: Listens,
}

impl Default for Sessions {
    /// A tenant `-` under caps of its own (tests, benchmarks).
    fn default() -> Self {
        Self::new("-", Arc::default())
    }
}

/// Why no session was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// At a cap, with every session in use.
    Full(Full),
    /// The id names a session that has just ended (a resumption raced its end): 404.
    Ended,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        // Seats are daemon-wide: a tenant that goes gives its own back.
        let sessions: Vec<_> = lock(&self.map).drain().map(|(_, s)| s).collect();
        for session in sessions {
            self.admission.release(self, &session);
        }
    }
}

impl Sessions {
    /// The sessions of tenant `tenant`, under the caps of `admission`.
    pub fn new(tenant: &str, admission: Arc<Admission>) -> Self {
        Self {
            tenant: tenant.into(),
            map: Mutex::default(),
            admission,
            seats: Mutex::default(),
            open_streams: AtomicUsize::new(0),
            interest: Mutex::default(),
            control: tokio::sync::Mutex::new(()),
            changes: watch::Sender::new(0),
            tasks: Tasks::default(),
            listens: Listens::default(),
        }
    }
}

/// A fresh session id: 256 bits from the OS CSPRNG, hex (visible ASCII).
pub fn new_session_id() -> Result<Arc<str>, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes).into())
}

impl Sessions {
    pub(super) fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub(super) fn seats(&self) -> MutexGuard<'_, TenantSeats> {
        lock(&self.seats)
    }

    /// Adds a session, in use by the caller, or returns the one already under `id` (two
    /// requests resuming one signed id at once). At a cap the least recently used idle
    /// session is ended to make room; with none idle, [`InsertError::Full`].
    pub fn insert(
        self: &Arc<Self>,
        id: Arc<str>,
        protocol_version: String,
        caps: ClientCaps,
    ) -> Result<InUse, InsertError> {
        if let Some(existing) = self.get(&id) {
            return self.enter(&existing, Use::Call).ok_or(InsertError::Ended);
        }
        let revision = Revision::parse(&protocol_version).unwrap_or(Revision::R2024_11_05);
        let session = Arc::new(Session {
            id: id.clone(),
            revision,
            protocol_version,
            caps,
            streams: Mutex::default(),
            seat: Mutex::default(),
            signed: Mutex::default(),
        });
        let evicted = self.admission.admit(self, &session).map_err(|full| {
            crate::metrics::session_refused(&self.tenant, full.cap.label());
            InsertError::Full(full)
        })?;
        if let Some(evicted) = evicted {
            let owner = evicted.owner.as_deref();
            let evicted_tenant = owner.map_or("-", |o| &*o.tenant);
            crate::metrics::session_evicted(evicted_tenant, evicted.cap.label());
            info!(client_id = %self.tenant, evicted_client_id = %evicted_tenant, cap = evicted.cap.label(), "session cap reached; the least recently used idle session was ended");
            if let Some(owner) = owner {
                owner.end(&evicted.session);
            }
        }
        let in_use = InUse::new(self.clone(), session.clone(), Use::Call, true);
        let mut map = lock(&self.map);
        if let Some(existing) = map.get(&id).cloned() {
            drop(map);
            self.admission.release(self, &session);
            drop(in_use);
            return self.enter(&existing, Use::Call).ok_or(InsertError::Ended);
        }
        map.insert(id, session);
        Ok(in_use)
    }

    /// Marks `session` in use for as long as the answer lives; `None` once it has ended
    /// (evicted, expired or deleted: the request gets 404).
    pub fn enter(self: &Arc<Self>, session: &Arc<Session>, kind: Use) -> Option<InUse> {
        let counted = self.admission.enter(self, session, kind);
        counted.then(|| InUse::new(self.clone(), session.clone(), kind, true))
    }

    /// As [`Sessions::enter`] for an open stream, which keeps its connection even when the
    /// session has just ended (it is closed as the session ends).
    fn hold_stream(self: &Arc<Self>, session: &Arc<Session>) -> InUse {
        let counted = self.admission.enter(self, session, Use::Stream);
        InUse::new(self.clone(), session.clone(), Use::Stream, counted)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    /// Ends a session (its streams close, its subscriptions and level go); false when it
    /// did not exist.
    pub fn remove(&self, id: &str) -> bool {
        self.get(id).is_some_and(|session| self.end(&session))
    }

    /// The one way a session ends (DELETE, idle expiry, eviction at a cap, its signed id's
    /// expiry): seat given back, out of the map, streams closed, its signed id recorded as
    /// ended. False when it had ended already.
    fn end(&self, session: &Arc<Session>) -> bool {
        self.admission.release(self, session);
        let removed = {
            let mut map = lock(&self.map);
            let same = map
                .get(&session.id)
                .is_some_and(|s| Arc::ptr_eq(s, session));
            same && map.remove(&session.id).is_some()
        };
        if removed {
            lock(&session.streams).close_all();
            self.ended(session);
        }
        removed
    }

    fn ended(&self, session: &Session) {
        self.tasks.session_ended(&session.id);
        // Now, not when the last holder lets go: a request still in flight must not let
        // this node resume the id meanwhile.
        drop(lock(&session.signed).take());
        self.forget(&session.id);
    }

    /// Forgets what `key` (a session, or a listener's key) asked of the child; the relays
    /// re-plan when that leaves the child with something to undo.
    fn forget(&self, key: &str) {
        if lock(&self.interest).remove_session(key) {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Registers a `subscriptions/listen` stream (request id `id`) that follows `honored`;
    /// it counts as an open stream until its guard drops.
    pub fn listen(self: &Arc<Self>, honored: Honored, id: &[u8]) -> Listening {
        let (n, rx) = self.listens.add(honored, id);
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        Listening {
            key: listen::key(n),
            rx,
            guard: ListenGuard {
                sessions: self.clone(),
                n,
            },
        }
    }

    /// The tenant's listeners.
    pub fn listens(&self) -> &Listens {
        &self.listens
    }

    /// Ends every session (the tenant was removed; its child goes too). Replies to requests
    /// in flight still finish: the child is drained, not cut off (DESIGN §2).
    pub fn clear(&self) {
        let drained: Vec<_> = lock(&self.map).drain().collect();
        for (_, session) in drained {
            self.admission.release(self, &session);
            lock(&session.streams).close_get();
            self.ended(&session);
        }
        self.listens.close_all(); // each listen stream ends gracefully
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SSE connections open now; an open stream keeps the tenant's child alive.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    /// Sends notification `method` once to every session whose revision has it, on its
    /// GET stream; returns how many had a live GET connection (the others get it when
    /// they open one).
    pub fn notify_all(&self, method: &str, message: &[u8]) -> usize {
        self.deliver(message, |_, s| s.revision.has_notification(method))
    }

    /// Sends notification `method` to session `id` alone, when its revision has it; true
    /// when a live connection took it.
    pub fn notify_one(&self, id: &str, method: &str, message: &[u8]) -> bool {
        self.get(id)
            .is_some_and(|s| s.revision.has_notification(method) && s.push(message))
    }

    /// The tenant's tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Sends a `resources/updated` for `uri` to the sessions subscribed to it.
    pub fn notify_subscribers(&self, uri: &str, message: &[u8]) -> usize {
        self.deliver(message, |interest, s| interest.is_subscribed(&s.id, uri))
    }

    /// Sends a log message of `level` to the sessions whose own level admits it.
    pub fn notify_log(&self, level: Option<Level>, message: &[u8]) -> usize {
        self.deliver(message, |interest, s| interest.wants_log(&s.id, level))
    }

    fn deliver(&self, message: &[u8], wants: impl Fn(&Interest, &Session) -> bool) -> usize {
        let sessions: Vec<_> = lock(&self.map).values().cloned().collect();
        let targets: Vec<_> = {
            let interest = lock(&self.interest);
            sessions
                .into_iter()
                .filter(|s| wants(&interest, s))
                .collect()
        };
        targets.iter().filter(|s| s.push(message)).count()
    }

    /// Sessions with an open GET connection that satisfy `pred`.
    pub fn with_live_get(&self, pred: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        let map = lock(&self.map);
        map.values()
            .filter(|s| s.has_live_get() && pred(s))
            .cloned()
            .collect()
    }

    /// Forgets sessions idle (no open connection, nothing in flight) for `ttl`; returns how
    /// many.
    pub fn expire(&self, ttl: Duration) -> usize {
        let expired = self.admission.expired(self, ttl);
        expired.iter().filter(|session| self.end(session)).count()
    }

    /// Opens a reply stream for a POST answered with SSE, with its connection attached.
    pub fn open_reply(self: &Arc<Self>, session: &Arc<Session>) -> (u64, Attached) {
        let (number, connection) = lock(&session.streams).open_reply();
        let attached = self.attached(session, number, connection);
        (number, attached)
    }

    /// Attaches a GET connection: to the GET stream (fresh), or, with `last_event_id`, to
    /// the stream that id names, after exactly that event.
    pub fn connect(
        self: &Arc<Self>,
        session: &Arc<Session>,
        last_event_id: Option<&str>,
    ) -> Result<Attached, ResumeError> {
        let (number, after) = match last_event_id {
            Some(text) => {
                let id: EventId = text.parse()?;
                (id.stream, Some(id.seq))
            }
            None => (GET_STREAM, None),
        };
        let connection = lock(&session.streams).connect(number, after)?;
        Ok(self.attached(session, number, connection))
    }

    fn attached(
        self: &Arc<Self>,
        session: &Arc<Session>,
        number: u64,
        connection: super::stream::Connection,
    ) -> Attached {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        let guard = StreamGuard {
            sessions: self.clone(),
            session: session.clone(),
            number,
            tag: connection.tag,
            _in_use: self.hold_stream(session),
        };
        Attached {
            rx: connection.rx,
            guard,
        }
    }

    /// The tenant's wish list (subscriptions, levels).
    pub fn interest(&self) -> MutexGuard<'_, Interest> {
        lock(&self.interest)
    }

    /// Serializes changes to what the child is told (see the field's doc).
    pub async fn control(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.control.lock().await
    }

    /// Changes whenever an ended session leaves the child with something to undo.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// A registered listener: its interest key, its tagged notifications (ending when the
/// tenant goes), and the guard that unregisters it.
pub struct Listening {
    /// Its key in [`Interest`].
    pub key: Arc<str>,
    /// The child's notifications it asked for, tagged.
    pub rx: mpsc::Receiver<Bytes>,
    /// Unregisters it (and its subscriptions) when dropped.
    pub guard: ListenGuard,
}

/// Unregisters a listener when dropped: its URIs leave the wish list, and the relays
/// unsubscribe the child from those nobody else follows.
pub struct ListenGuard {
    sessions: Arc<Sessions>,
    n: u64,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.sessions.listens.remove(self.n);
        self.sessions.forget(&listen::key(self.n));
        self.sessions.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An SSE connection attached to a stream: its rendered events and its registration.
#[derive(Debug)]
pub struct Attached {
    /// Rendered events for the response body.
    pub rx: mpsc::Receiver<Bytes>,
    /// Detaches the connection when dropped (with the body).
    pub guard: StreamGuard,
}

/// Held by an open SSE connection; dropping it detaches the connection from its stream.
#[derive(Debug)]
pub struct StreamGuard {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    number: u64,
    tag: u64,
    /// Keeps the session from being evicted or expiring while the connection is open.
    _in_use: InUse,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Only our own connection: a newer one may have replaced it.
        lock(&self.session.streams).disconnect(self.number, self.tag);
        self.sessions.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_sessions() -> (Arc<Sessions>, Arc<Session>, Arc<Session>) {
        let sessions = Arc::new(Sessions::default());
        let caps = ClientCaps::default();
        let add = |id: &str| {
            let added = sessions.insert(id.into(), "2025-11-25".into(), caps);
            added.unwrap().session().clone()
        };
        let (a, b) = (add("a"), add("b"));
        (sessions, a, b)
    }

    fn count(rx: &mut mpsc::Receiver<Bytes>) -> usize {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter(|f| !f.ends_with(b"data: \n\n")) // priming
            .count()
    }

    #[test]
    fn updates_reach_only_subscribers_and_logs_only_admitting_levels() {
        let (sessions, a, b) = two_sessions();
        let mut ra = sessions.connect(&a, None).unwrap();
        let mut rb = sessions.connect(&b, None).unwrap();
        sessions.interest().subscribe(&a.id, "u").unwrap();
        sessions.interest().set_level(&b.id, Some(Level::Error));
        assert_eq!(sessions.notify_subscribers("u", b"{}"), 1);
        assert_eq!(sessions.notify_log(Some(Level::Info), b"{}"), 1);
        assert_eq!(
            sessions.notify_all("notifications/tools/list_changed", b"{}"),
            2
        );
        assert_eq!((count(&mut ra.rx), count(&mut rb.rx)), (3, 1));
    }

    #[test]
    fn notifications_a_revision_lacks_are_not_sent_to_its_sessions() {
        let sessions = Arc::new(Sessions::default());
        let caps = ClientCaps::default();
        let old = sessions
            .insert("old".into(), "2025-03-26".into(), caps)
            .unwrap()
            .session()
            .clone();
        let new = sessions
            .insert("new".into(), "2025-11-25".into(), caps)
            .unwrap()
            .session()
            .clone();
        let mut ro = sessions.connect(&old, None).unwrap();
        let mut rn = sessions.connect(&new, None).unwrap();
        assert_eq!(sessions.notify_all("notifications/tasks/status", b"{}"), 1);
        assert!(!sessions.notify_one("old", "notifications/elicitation/complete", b"{}"));
        assert!(sessions.notify_one("new", "notifications/elicitation/complete", b"{}"));
        assert_eq!((count(&mut ro.rx), count(&mut rn.rx)), (0, 2));
    }

    #[test]
    fn ending_a_session_with_interest_signals_a_change_and_closes_its_streams() {
        let (sessions, a, _b) = two_sessions();
        let changes = sessions.changes();
        let mut attached = sessions.connect(&a, None).unwrap();
        assert_eq!(sessions.open_streams(), 1);
        assert!(sessions.remove("b"));
        assert!(!changes.has_changed().unwrap(), "b asked for nothing");
        sessions.interest().subscribe(&a.id, "u").unwrap();
        assert!(sessions.remove("a"));
        assert!(
            changes.has_changed().unwrap(),
            "a's subscription must be undone"
        );
        assert_eq!(sessions.interest().subscribers("u"), 0);
        count(&mut attached.rx);
        assert!(
            attached.rx.is_closed(),
            "the GET connection ends with its session"
        );
        drop(attached);
        assert_eq!(sessions.open_streams(), 0);
    }

    #[test]
    fn expiry_spares_sessions_with_a_live_connection() {
        let (sessions, a, _b) = two_sessions();
        let _open = sessions.connect(&a, None).unwrap();
        assert_eq!(
            sessions.expire(Duration::ZERO),
            1,
            "only the idle session b"
        );
        assert!(sessions.get("a").is_some());
    }
}
