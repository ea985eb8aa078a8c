//! The session caps (`--max-sessions-per-tenant`, `--max-sessions`) and who makes room at
//! them: the least recently used session with no open stream and nothing in flight.
//!
//! Every session holds a seat from its `initialize` (or resumption) until it ends. It is *in
//! use* while a request of it is handled, a reply it streams is running, or one of its SSE
//! connections is open (each holds an [`InUse`]); otherwise it is *idle* and sits in two
//! indexes ordered by when it went idle: its tenant's and the daemon's. At a cap, a new
//! session takes the seat of the first idle session of that cap's index, in O(log n); only
//! when that index is empty is it refused ([`Full`]). Idle expiry (`--session-ttl`) reads
//! the tenant's index from its oldest end too, so neither scans every session.
//!
//! Lock order: [`Admission`]'s state, then a tenant's seats, then one session's seat. They
//! are only ever taken in that order, and never while a session map is held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::time::{Duration, Instant};

use super::session::{Session, Sessions};
use crate::sync::lock;

/// Default of `--max-sessions-per-tenant`.
pub const DEFAULT_MAX_PER_TENANT: usize = 10_000;
/// Default of `--max-sessions` (README, "Limits and timeouts", says why).
pub const DEFAULT_MAX_TOTAL: usize = 100_000;

/// `Retry-After` when some session at the cap is held only by requests in flight: it is
/// evictable the moment they are answered, and MCP requests are answered in milliseconds
/// to seconds (the in-flight cap's 503 says 1 s for the same reason).
const CALLS_RETRY_AFTER: u64 = 1;
/// `Retry-After` when every session at the cap holds an open SSE stream: nothing frees
/// before a caller closes one or ends its session, and no deadline says when that is. A
/// minute keeps refused clients from hammering the endpoint without making them wait long
/// once a stream does close.
const STREAMS_RETRY_AFTER: u64 = 60;

/// Which cap a session was evicted or refused at (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `--max-sessions-per-tenant`.
    Tenant,
    /// `--max-sessions`.
    Global,
}

impl Cap {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Cap::Tenant => "tenant",
            Cap::Global => "global",
        }
    }
}

/// A refusal: the cap is reached and every session under it is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The cap that was reached.
    pub cap: Cap,
    /// Its value.
    pub max: usize,
    /// Seconds until room is expected (see the constants above).
    pub retry_after: u64,
}

/// What holds a session in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A request being handled, or a streamed reply still running.
    Call,
    /// An open SSE connection.
    Stream,
}

/// A session of `owner` that gave up its seat to a new one; the caller ends it.
pub(super) struct Evicted {
    pub(super) owner: Option<Arc<Sessions>>,
    pub(super) session: Arc<Session>,
    pub(super) cap: Cap,
}

/// The caps and the daemon-wide index, shared by every tenant's [`Sessions`].
#[derive(Debug)]
pub struct Admission {
    max_per_tenant: usize,
    max_total: usize,
    state: Mutex<Global>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PER_TENANT, DEFAULT_MAX_TOTAL)
    }
}

#[derive(Debug, Default)]
struct Global {
    seated: usize,
    /// Sessions in use by requests in flight alone (no open stream).
    calls_only: usize,
    idle: BTreeMap<u64, GlobalIdle>,
    next: u64,
}

#[derive(Debug)]
struct GlobalIdle {
    owner: Weak<Sessions>,
    session: Arc<Session>,
}

/// One tenant's seats.
#[derive(Debug, Default)]
pub(super) struct TenantSeats {
    seated: usize,
    calls_only: usize,
    /// Idle sessions by the order they went idle, with when.
    idle: BTreeMap<u64, (Instant, Arc<Session>)>,
}

/// One session's seat.
#[derive(Debug, Default)]
pub(super) struct Seat {
    calls: u32,
    streams: u32,
    /// Its key in the idle indexes, while idle.
    idle: Option<u64>,
    released: bool,
}

impl Seat {
    fn calls_only(&self) -> bool {
        self.streams == 0 && self.calls > 0
    }
}

/// Keeps a session in use; dropping it may make the session idle again.
#[derive(Debug)]
pub struct InUse {
    owner: Arc<Sessions>,
    session: Arc<Session>,
    kind: Use,
    counted: bool,
}

impl InUse {
    pub(super) fn new(
        owner: Arc<Sessions>,
        session: Arc<Session>,
        kind: Use,
        counted: bool,
    ) -> Self {
        Self {
            owner,
            session,
            kind,
            counted,
        }
    }

    /// The session held.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.counted {
            (self.owner.admission()).leave(&self.owner, &self.session, self.kind);
        }
    }
}

/// Moves the calls-only counts when a seat changes category.
fn recount(global: &mut Global, seats: &mut TenantSeats, before: bool, after: bool) {
    match (before, after) {
        (false, true) => {
            global.calls_only += 1;
            seats.calls_only += 1;
        }
        (true, false) => {
            global.calls_only -= 1;
            seats.calls_only -= 1;
        }
        _ => {}
    }
}

/// Gives up `session`'s seat; false when it was given up already.
fn release(global: &mut Global, seats: &mut TenantSeats, session: &Session) -> bool {
    let mut seat = lock(&session.seat);
    if seat.released {
        return false;
    }
    seat.released = true;
    if let Some(n) = seat.idle.take() {
        seats.idle.remove(&n);
        global.idle.remove(&n);
    }
    recount(global, seats, seat.calls_only(), false);
    seats.seated -= 1;
    global.seated -= 1;
    true
}

impl Admission {
    /// Caps of `max_per_tenant` sessions per tenant and `max_total` in all (both ≥ 1).
    pub fn new(max_per_tenant: usize, max_total: usize) -> Self {
        Self {
            max_per_tenant: max_per_tenant.max(1),
            max_total: max_total.max(1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, Global> {
        lock(&self.state)
    }

    /// Seats `session` of `owner`, in use by one call; at a cap another session's seat is
    /// taken (returned, for the caller to end it), and with none idle the answer is [`Full`].
    pub(super) fn admit(
        &self,
        owner: &Arc<Sessions>,
        session: &Session,
    ) -> Result<Option<Evicted>, Full> {
        let mut global = self.state();
        let mut seats = owner.seats();
        let mut evicted = None;
        if seats.seated >= self.max_per_tenant {
            let Some((_, victim)) = seats.idle.values().next().cloned() else {
                return Err(full(Cap::Tenant, self.max_per_tenant, seats.calls_only));
            };
            release(&mut global, &mut seats, &victim);
            evicted = Some(Evicted {
                owner: Some(owner.clone()),
                session: victim,
                cap: Cap::Tenant,
            });
        } else if global.seated >= self.max_total {
            let Some(first) = global.idle.values().next() else {
                return Err(full(Cap::Global, self.max_total, global.calls_only));
            };
            let (victim, victim_owner) = (first.session.clone(), first.owner.upgrade());
            match &victim_owner {
                Some(other) if Arc::ptr_eq(other, owner) => {
                    release(&mut global, &mut seats, &victim);
                }
                Some(other) => {
                    release(&mut global, &mut other.seats(), &victim);
                }
                // Its tenant is being dropped (which gives its seats back): the global
                // count is what is left to settle.
                None => {
                    let mut gone = TenantSeats {
                        seated: 1,
                        ..TenantSeats::default()
                    };
                    release(&mut global, &mut gone, &victim);
                }
            }
            evicted = Some(Evicted {
                owner: victim_owner,
                session: victim,
                cap: Cap::Global,
            });
        }
        let mut seat = lock(&session.seat);
        *seat = Seat {
            calls: 1,
            ..Seat::default()
        };
        seats.seated += 1;
        global.seated += 1;
        recount(&mut global, &mut seats, false, true);
        Ok(evicted)
    }

    /// Marks `session` in use by one more `kind`; false once it has ended.
    pub(super) fn enter(&self, owner: &Sessions, session: &Session, kind: Use) -> bool {
        let mut global = self.state();
        let mut seats = owner.seats();
        let mut seat = lock(&session.seat);
        if seat.released {
            return false;
        }
        let before = seat.calls_only();
        if let Some(n) = seat.idle.take() {
            seats.idle.remove(&n);
            global.idle.remove(&n);
        }
        match kind {
            Use::Call => seat.calls += 1,
            Use::Stream => seat.streams += 1,
        }
        recount(&mut global, &mut seats, before, seat.calls_only());
        true
    }

    /// One `kind` of use of `session` ended; with none left the session goes idle, as the
    /// most recently used.
    fn leave(&self, owner: &Arc<Sessions>, session: &Arc<Session>, kind: Use) {
        let mut global = self.state();
        let mut seats = owner.seats();
        let mut seat = lock(&session.seat);
        let before = seat.calls_only();
        match kind {
            Use::Call => seat.calls = seat.calls.saturating_sub(1),
            Use::Stream => seat.streams = seat.streams.saturating_sub(1),
        }
        if seat.released {
            return;
        }
        recount(&mut global, &mut seats, before, seat.calls_only());
        if seat.calls == 0 && seat.streams == 0 {
            let n = global.next;
            global.next += 1;
            seat.idle = Some(n);
            seats.idle.insert(n, (Instant::now(), session.clone()));
            let entry = GlobalIdle {
                owner: Arc::downgrade(owner),
                session: session.clone(),
            };
            global.idle.insert(n, entry);
        }
    }

    /// Gives up `session`'s seat (it is ending); false when it was given up already.
    pub(super) fn release(&self, owner: &Sessions, session: &Session) -> bool {
        release(&mut self.state(), &mut owner.seats(), session)
    }

    /// Gives up the seats of `owner`'s sessions idle for `ttl` or longer and returns them,
    /// oldest first, for the caller to end.
    pub(super) fn expired(&self, owner: &Sessions, ttl: Duration) -> Vec<Arc<Session>> {
        let now = Instant::now();
        let mut global = self.state();
        let mut seats = owner.seats();
        let mut out = Vec::new();
        while let Some((since, session)) = seats.idle.values().next()
            && now.duration_since(*since) >= ttl
        {
            let session = session.clone();
            release(&mut global, &mut seats, &session);
            out.push(session);
        }
        out
    }

    /// Sessions seated now, all tenants together.
    pub fn seated(&self) -> usize {
        self.state().seated
    }

    /// The per-tenant cap.
    pub fn max_per_tenant(&self) -> usize {
        self.max_per_tenant
    }

    /// The global cap.
    pub fn max_total(&self) -> usize {
        self.max_total
    }
}

fn full(cap: Cap, max: usize, calls_only: usize) -> Full {
    let retry_after = if calls_only > 0 {
        CALLS_RETRY_AFTER
    } else {
        STREAMS_RETRY_AFTER
    };
    Full {
        cap,
        max,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::caps::ClientCaps;
    use crate::mcp::session::InsertError;

    fn tenant(name: &str, admission: &Arc<Admission>) -> Arc<Sessions> {
        Arc::new(Sessions::new(name, admission.clone()))
    }

    fn add(sessions: &Arc<Sessions>, id: &str) -> Result<InUse, InsertError> {
        sessions.insert(id.into(), "2025-11-25".into(), ClientCaps::default())
    }

    /// Adds `id` and lets it go idle at once.
    fn add_idle(sessions: &Arc<Sessions>, id: &str) -> Arc<Session> {
        add(sessions, id).unwrap().session().clone()
    }

    fn ids(sessions: &Sessions, all: &[&str]) -> Vec<String> {
        let live = all.iter().filter(|id| sessions.get(id).is_some());
        live.map(|id| id.to_string()).collect()
    }

    #[test]
    fn at_the_tenant_cap_the_least_recently_used_idle_session_makes_room() {
        let admission = Arc::new(Admission::new(3, 100));
        let acme = tenant("acme", &admission);
        let a = add_idle(&acme, "a");
        for id in ["b", "c"] {
            add_idle(&acme, id);
        }
        drop(acme.enter(&a, Use::Call)); // a used again: b is now the least recently used
        add_idle(&acme, "d");
        assert_eq!(ids(&acme, &["a", "b", "c", "d"]), ["a", "c", "d"]);
        assert!(acme.enter(&a, Use::Call).is_some());
        assert_eq!((acme.len(), admission.seated()), (3, 3));
    }

    #[test]
    fn sessions_in_use_are_kept_and_with_all_in_use_the_answer_says_when_to_retry() {
        let admission = Arc::new(Admission::new(3, 100));
        let acme = tenant("acme", &admission);
        let streaming = add_idle(&acme, "streaming");
        let calling = add_idle(&acme, "calling");
        add_idle(&acme, "idle");
        let _get = acme.connect(&streaming, None).unwrap();
        let call = acme.enter(&calling, Use::Call).unwrap();
        let _newest = add(&acme, "newest").unwrap(); // in use by its own initialize
        assert_eq!(
            ids(&acme, &["streaming", "calling", "idle", "newest"]),
            ["streaming", "calling", "newest"]
        );
        let full = |cap, retry_after| {
            Err(InsertError::Full(Full {
                cap,
                max: 3,
                retry_after,
            }))
        };
        assert_eq!(add(&acme, "refused").map(|_| ()), full(Cap::Tenant, 1));
        // The same sessions with open streams only.
        let newest = acme.get("newest").unwrap();
        let (_s1, _s2) = (
            acme.connect(&calling, None).unwrap(),
            acme.connect(&newest, None).unwrap(),
        );
        drop((call, _newest));
        assert_eq!(
            add(&acme, "refused").map(|_| ()),
            full(Cap::Tenant, STREAMS_RETRY_AFTER),
            "only open streams: no end is known"
        );
        assert!(acme.get("refused").is_none());
        assert_eq!(admission.seated(), 3);
    }

    #[test]
    fn at_the_global_cap_any_tenants_least_recently_used_idle_session_makes_room() {
        let admission = Arc::new(Admission::new(10, 3));
        let (acme, bravo) = (tenant("acme", &admission), tenant("bravo", &admission));
        add_idle(&acme, "a1");
        let b1 = add_idle(&bravo, "b1");
        let a2 = add_idle(&acme, "a2");
        let _held = acme.connect(&a2, None).unwrap();
        add_idle(&bravo, "b2");
        assert!(acme.get("a1").is_none(), "acme's a1 made room for bravo");
        add_idle(&acme, "a3");
        assert!(bravo.get("b1").is_none(), "then bravo's b1 for acme");
        assert!(
            bravo.enter(&b1, Use::Call).is_none(),
            "an evicted session stays ended"
        );
        assert_eq!((acme.len(), bravo.len(), admission.seated()), (2, 1, 3));
        let _b2 = bravo.enter(&bravo.get("b2").unwrap(), Use::Call).unwrap();
        let _a3 = acme.enter(&acme.get("a3").unwrap(), Use::Call).unwrap();
        let refused = add(&bravo, "b3").map(|_| ());
        let full = Full {
            cap: Cap::Global,
            max: 3,
            retry_after: CALLS_RETRY_AFTER,
        };
        assert_eq!(refused, Err(InsertError::Full(full)));
    }

    #[test]
    fn ended_sessions_and_dropped_tenants_give_their_seats_back() {
        let admission = Arc::new(Admission::new(10, 3));
        let acme = tenant("acme", &admission);
        let a = add_idle(&acme, "a");
        add_idle(&acme, "b");
        assert!(acme.remove("b"));
        assert_eq!(acme.expire(Duration::from_secs(3600)), 0, "a is fresh");
        assert_eq!(admission.seated(), 1);
        let _open = acme.connect(&a, None).unwrap();
        assert_eq!(acme.expire(Duration::ZERO), 0, "an open stream keeps a");
        drop(_open); // it holds the tenant's sessions too
        drop(acme);
        assert_eq!(admission.seated(), 0);
        let bravo = tenant("bravo", &admission);
        for id in ["x", "y", "z"] {
            add_idle(&bravo, id);
        }
        assert_eq!(bravo.expire(Duration::ZERO), 3);
        assert_eq!(admission.seated(), 0);
    }
}
