//! Tenants and their children: single-flight start, handshake replay, crash backoff,
//! replacement on reload, idle reaping.
//!
//! Each tenant has at most one usable relay. Starting one happens under the tenant's
//! async start lock, so fifty simultaneous first requests spawn one child. A relay is
//! published only after its child answered `initialize`, so every request sees an
//! initialized child. Invariant: a child is stopped only when it has nothing in flight
//! (reap, retire), or when it broke (crash, over-long line), or on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::child::{self, ExitInfo, ExitReason};
use crate::clients::{ClientId, ClientSpec, Diff, Limits, Registry};
use crate::mcp::admission::Admission;
use crate::mcp::caps;
use crate::mcp::control;
use crate::mcp::relay::{InitError, Relay};
use crate::mcp::rounds::Rounds;
use crate::mcp::session::Sessions;
use crate::settings::Settings;
use crate::sync::lock;
use crate::systemd::{HEARTBEAT, Heartbeat};

/// A child that lived at least this long resets the crash count.
pub const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// Longest wait imposed between restarts of a crash-looping child.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for a child's answer to `initialize`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `initialize` exchange every child of a tenant gets.
#[derive(Debug, Clone)]
pub struct InitCache {
    /// `params` of the child's `initialize`: the first caller's, with the newest revision
    /// and every client capability mcpmux can route; replayed to every new child.
    pub params: Arc<str>,
    /// Raw `result` of the current child's `initialize`.
    pub result: Bytes,
}

/// Why no child could serve a request. What a caller is told (status, `error.data`) is
/// the HTTP edge's business.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--max-children` reached and every child busy.
    #[error("all {0} children are busy; retry shortly")]
    Busy(usize),
    /// Crash loop: try again after this long.
    #[error("the tenant's child keeps crashing; retry in {} s", .0.as_secs().max(1))]
    Backoff(Duration),
    /// A session-era request for a tenant whose child was never initialized.
    #[error("the tenant has no initialized session; send initialize first")]
    NotInitialized,
    /// The command could not be started.
    #[error("child failed to start: {error}")]
    Spawn {
        /// What went wrong.
        error: String,
        /// JSON-RPC `error.data`: the error, and the sandbox when it denied the start.
        data: serde_json::Value,
    },
    /// The child answered `initialize` with an error (its raw `error` object).
    #[error("child rejected initialize")]
    Rejected {
        /// The child's `error` object, as it wrote it.
        child_error: String,
        /// How the child ended after it was stopped, when known.
        exit: Option<ExitReport>,
    },
    /// The child died, or did not answer `initialize` in time.
    #[error("child failed to initialize: {detail}")]
    Died {
        /// What happened, for the message.
        detail: String,
        /// How the child ended, when known.
        exit: Option<ExitReport>,
    },
}

/// A child's exit with the limits it ran under (see [`crate::mcp::exit::report`]).
#[derive(Debug, Clone)]
pub struct ExitReport {
    /// How it ended.
    pub info: ExitInfo,
    /// Its `rlimit_*` limits.
    pub limits: Limits,
}

/// A place under `--max-children`; dropping it gives the place back, so a child is
/// counted exactly as long as its permit lives beside it in the tenant's slot.
#[derive(Debug)]
struct ChildPermit {
    live: Arc<AtomicUsize>,
}

impl Drop for ChildPermit {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A published child and the permit that counts it.
#[derive(Debug)]
struct Slotted {
    relay: Arc<Relay>,
    _permit: ChildPermit,
}

#[derive(Debug, Default)]
struct Slot {
    child: Option<Slotted>,
    crashes: u32,
    retry_at: Option<Instant>,
    restarts: u64,
    last_exit: Option<(ExitInfo, Instant)>,
}

/// One tenant as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantStatus {
    /// The tenant.
    pub client_id: String,
    /// `running`, `stopped` or `backoff`.
    pub state: &'static str,
    /// The child's pid while one runs.
    pub pid: Option<u32>,
    /// Seconds since the child started.
    pub uptime_secs: Option<f64>,
    /// Seconds since the child last had work (0 while busy).
    pub idle_secs: Option<f64>,
    /// Requests in flight.
    pub inflight: usize,
    /// Open sessions.
    pub sessions: usize,
    /// Unexpected exits and failed starts so far.
    pub restarts: u64,
    /// Seconds until the next start is allowed, in a crash loop.
    pub retry_in_secs: Option<f64>,
    /// How the last child ended.
    pub last_exit: Option<serde_json::Value>,
    /// The running child's sandbox: `{"abi", "applied"}`, or `false`.
    pub sandbox: Option<serde_json::Value>,
    /// Why the running child is not sandboxed.
    pub unsandboxed_because: Option<String>,
}

/// One tenant's runtime state (the spec itself lives in the registry).
#[derive(Debug)]
pub struct Tenant {
    /// Its id.
    pub id: ClientId,
    /// Its sessions.
    pub sessions: Arc<Sessions>,
    slot: Mutex<Slot>,
    start: tokio::sync::Mutex<()>,
    init: Mutex<Option<InitCache>>,
    /// Its stateless calls parked between `input_required` rounds.
    pub rounds: Arc<Rounds>,
}

/// All tenants with runtime state.
#[derive(Debug)]
pub struct Pool {
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    tenants: Mutex<HashMap<ClientId, Arc<Tenant>>>,
    idle: Arc<Notify>,
    /// Children in tenants' slots, plus starts in progress (`--max-children`).
    live: Arc<AtomicUsize>,
    /// The session caps, over every tenant's sessions.
    admission: Arc<Admission>,
}

impl Pool {
    /// An empty pool over `registry`.
    pub fn new(registry: Arc<Registry>, settings: Arc<Settings>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            tenants: Mutex::default(),
            idle: Arc::default(),
            live: Arc::default(),
            admission: Arc::new(Admission::new(
                settings.max_sessions_per_tenant,
                settings.max_sessions,
            )),
            settings,
        })
    }

    /// The daemon settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The tenant `id` with its current spec, when a client file defines it.
    pub fn tenant(&self, id: &ClientId) -> Option<(Arc<Tenant>, Arc<ClientSpec>)> {
        let spec = self.registry.get(id)?;
        let mut tenants = lock(&self.tenants);
        let tenant = tenants.entry(id.clone()).or_insert_with(|| {
            Arc::new(Tenant {
                id: id.clone(),
                sessions: Arc::new(Sessions::new(id.as_str(), self.admission.clone())),
                slot: Mutex::default(),
                start: tokio::sync::Mutex::new(()),
                init: Mutex::new(None),
                rounds: Rounds::new(id.as_str(), self.settings.request_timeout),
            })
        });
        Some((tenant.clone(), spec))
    }

    /// Applies a reload: changed tenants get a new child on their next request, removed
    /// ones lose their sessions and child. In-flight work finishes first either way.
    pub fn on_reload(&self, diff: &Diff) {
        for spec in &diff.changed {
            if let Some(tenant) = lock(&self.tenants).get(&spec.id) {
                tenant.retire_child("client file changed");
            }
        }
        for id in &diff.removed {
            // The exporter cannot drop a series; a removed tenant reads 0, not its last value.
            crate::metrics::tenant_state(id.as_str(), 0, 0);
            if let Some(tenant) = lock(&self.tenants).remove(id) {
                tenant.retire_child("client file removed");
                tenant.sessions.clear();
                lock(&tenant.init).take();
            }
        }
    }

    /// A usable, initialized relay for `tenant`, starting a child if needed.
    /// `first_params` are the caller's `initialize` params, used when the tenant has
    /// never been initialized.
    pub async fn relay(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        spec: &Arc<ClientSpec>,
        first_params: Option<&str>,
    ) -> Result<(Arc<Relay>, InitCache), StartError> {
        if let Some(ready) = tenant.ready(spec) {
            return Ok(ready);
        }
        let _start = tenant.start.lock().await;
        if let Some(ready) = tenant.ready(spec) {
            return Ok(ready); // another request started it while we waited
        }
        tenant.check_backoff()?;
        let params = lock(&tenant.init).as_ref().map(|c| c.params.clone());
        let params = params
            .or_else(|| first_params.map(|p| Arc::from(caps::child_params(p))))
            .ok_or(StartError::NotInitialized)?;
        tenant.retire_child("replaced by a child of the current client file");
        let permit = self.reserve_child(&tenant.id)?;
        let relay = self.spawn(tenant, spec)?; // a failed spawn drops the permit
        match relay
            .initialize(&params, INIT_TIMEOUT.min(self.settings.request_timeout))
            .await
        {
            Ok(result) => {
                // Before anyone else may use this child: the live sessions' subscriptions
                // and level (a replacement child starts knowing nothing), then follow
                // later changes.
                control::reconcile(&relay).await;
                control::spawn_reconciler(relay.clone());
                let cache = InitCache { params, result };
                *lock(&tenant.init) = Some(cache.clone());
                let replaced = {
                    let mut slot = lock(&tenant.slot);
                    let stale = tenant.take(&mut slot);
                    slot.child = Some(Slotted {
                        relay: relay.clone(),
                        _permit: permit,
                    });
                    stale
                };
                if let Some(stale) = replaced {
                    // A child from a file that changed while it was starting (the reload
                    // found nothing published to retire), or one that just died.
                    info!(client_id = %tenant.id, pid = stale.pid(), "retiring child replaced by a newer one");
                    stale.retire();
                }
                Ok((relay, cache))
            }
            Err(e) => {
                drop(permit);
                Err(self.init_failed(tenant, &relay, e).await)
            }
        }
    }

    /// Takes a place for a new child under `--max-children`, reaping the longest-idle
    /// child of another tenant when the cap is reached.
    fn reserve_child(&self, for_tenant: &ClientId) -> Result<ChildPermit, StartError> {
        let max = self.settings.max_children;
        loop {
            let live = self.live.load(Ordering::Acquire);
            if live < max {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let live = self.live.clone();
                    return Ok(ChildPermit { live });
                }
                continue;
            }
            if !self.evict_longest_idle(for_tenant) {
                return Err(StartError::Busy(max));
            }
        }
    }

    /// Stops the child idle the longest (no request in flight, no open stream); false when
    /// every child is busy.
    fn evict_longest_idle(&self, for_tenant: &ClientId) -> bool {
        let candidates = self.tenants();
        let oldest = candidates
            .iter()
            .filter(|t| t.id != *for_tenant && t.sessions.open_streams() == 0)
            .filter_map(|t| {
                let relay = t.current_relay()?;
                let idle = relay.inflight() == 0 && relay.tasks_hold_until().is_none();
                idle.then(|| (relay.idle_since(), t))
            })
            .min_by_key(|(since, _)| *since);
        let Some((_, tenant)) = oldest else {
            return false;
        };
        let mut slot = lock(&tenant.slot);
        // Re-check under the lock: a request may have arrived since.
        let still_idle = slot.relay().is_some_and(|r| r.inflight() == 0);
        let Some(relay) = still_idle.then(|| tenant.take(&mut slot)).flatten() else {
            return true;
        };
        drop(slot);
        info!(client_id = %tenant.id, pid = relay.pid(), "stopping the longest-idle child to make room (--max-children)");
        crate::metrics::reaped(tenant.id.as_str());
        relay.stop();
        true
    }

    fn spawn(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        spec: &Arc<ClientSpec>,
    ) -> Result<Arc<Relay>, StartError> {
        let (handle, unread) = child::start(spec, &self.settings.child).map_err(|e| {
            tenant.record_crash(None);
            crate::metrics::start_failed(tenant.id.as_str());
            warn!(client_id = %tenant.id, error = %e, "child failed to start");
            StartError::Spawn {
                data: e.data(),
                error: e.to_string(),
            }
        })?;
        let relay = Relay::new(
            tenant.id.clone(),
            handle,
            spec.content_hash,
            spec.limits,
            tenant.sessions.clone(),
            self.idle.clone(),
        );
        info!(client_id = %tenant.id, pid = relay.pid(), command = %spec.command, sandbox = %relay.sandbox(), "child started");
        crate::metrics::spawned(tenant.id.as_str(), relay.sandbox().applied());
        // The child's lines are routed on its actor's task as they are read: one hand-off
        // fewer per call than a task of the relay's own. Weak, so the actor never keeps
        // the relay (and so the child's handle) alive.
        let weak = Arc::downgrade(&relay);
        let events = unread.with_sink(Box::new(move |line| {
            if let Some(relay) = weak.upgrade() {
                relay.on_line(line);
            }
        }));
        let (task_relay, task_tenant) = (relay.clone(), tenant.clone());
        // Owned by the child: ends when the child's event stream ends (it always does).
        tokio::spawn(async move {
            let info = task_relay.clone().run(events).await;
            task_tenant.on_exit(&task_relay, &info);
            task_relay.finish();
        });
        Ok(relay)
    }

    async fn init_failed(&self, tenant: &Tenant, relay: &Arc<Relay>, err: InitError) -> StartError {
        relay.stop();
        relay.finished().await;
        crate::metrics::start_failed(tenant.id.as_str());
        warn!(client_id = %tenant.id, error = %err, "child failed to initialize");
        let exit = relay.exit_info().map(|info| ExitReport {
            info: info.clone(),
            limits: relay.limits(),
        });
        match err {
            InitError::Rejected(child_error) => {
                // A child that refuses initialize is as useless as a crash.
                tenant.record_crash(None);
                StartError::Rejected { child_error, exit }
            }
            InitError::Failed(why) => {
                let detail = match &exit {
                    Some(e) if e.info.reason != ExitReason::Stopped => {
                        crate::mcp::exit::report(&e.info, &e.limits).0
                    }
                    _ => why,
                };
                StartError::Died { detail, exit }
            }
        }
    }

    /// Every configured tenant's state, sorted by id.
    pub fn status(&self, registry: &Registry) -> Vec<TenantStatus> {
        let mut ids: Vec<ClientId> = registry.snapshot().keys().cloned().collect();
        ids.sort();
        let tenants = lock(&self.tenants);
        ids.iter()
            .map(|id| match tenants.get(id) {
                Some(tenant) => tenant.status(),
                None => TenantStatus::unstarted(id),
            })
            .collect()
    }

    /// Every tenant with runtime state.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        lock(&self.tenants).values().cloned().collect()
    }

    /// Stops idle children and expired sessions until `shutdown`.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken, heartbeat: Heartbeat) {
        loop {
            heartbeat.beat();
            let next = self.reap_once().min(Instant::now() + HEARTBEAT);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.idle.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// One reaper pass; returns when the next one is due.
    fn reap_once(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(60).min(self.settings.session_ttl);
        for tenant in self.tenants() {
            tenant.sessions.expire(self.settings.session_ttl);
            let Some(spec) = self.registry.get(&tenant.id) else {
                continue;
            };
            if let Some(due) = tenant.reap_if_idle(spec.idle_ttl, now) {
                next = next.min(due);
            }
        }
        next
    }

    /// Stops every child and waits (bounded by the stop sequence) until all are gone.
    pub async fn shutdown(&self) {
        let relays: Vec<_> = self
            .tenants()
            .iter()
            .filter_map(|t| t.take(&mut lock(&t.slot)))
            .collect();
        for relay in &relays {
            relay.stop();
        }
        for relay in relays {
            relay.stopped().await;
        }
    }
}

impl Slot {
    fn relay(&self) -> Option<&Arc<Relay>> {
        self.child.as_ref().map(|c| &c.relay)
    }
}

impl TenantStatus {
    fn unstarted(id: &ClientId) -> Self {
        Self {
            client_id: id.to_string(),
            state: "stopped",
            pid: None,
            uptime_secs: None,
            idle_secs: None,
            inflight: 0,
            sessions: 0,
            restarts: 0,
            retry_in_secs: None,
            last_exit: None,
            sandbox: None,
            unsandboxed_because: None,
        }
    }
}

impl Tenant {
    /// Removes the slotted child, giving back its place under `--max-children`.
    fn take(&self, slot: &mut Slot) -> Option<Arc<Relay>> {
        slot.child.take().map(|slotted| slotted.relay)
    }

    /// The tenant as `/status` shows it.
    pub fn status(&self) -> TenantStatus {
        let now = Instant::now();
        let slot = lock(&self.slot);
        let relay = slot.relay();
        let retry_in = slot
            .retry_at
            .filter(|at| *at > now)
            .map(|at| (at - now).as_secs_f64());
        let inflight = relay.map_or(0, |r| r.inflight());
        let state = match (relay, retry_in) {
            (Some(_), _) => "running",
            (None, Some(_)) => "backoff",
            (None, None) => "stopped",
        };
        TenantStatus {
            client_id: self.id.to_string(),
            state,
            pid: relay.map(|r| r.pid()),
            uptime_secs: relay.map(|r| (now - r.started()).as_secs_f64()),
            idle_secs: relay.map(|r| {
                if inflight > 0 {
                    0.0
                } else {
                    (now - r.idle_since()).as_secs_f64()
                }
            }),
            inflight,
            sessions: self.sessions.len(),
            restarts: slot.restarts,
            retry_in_secs: retry_in,
            last_exit: slot.last_exit.as_ref().map(|(info, at)| {
                json!({
                    "reason": format!("{:?}", info.reason).to_lowercase(),
                    "status": info.status,
                    "exit_code": info.code,
                    "signal": info.signal,
                    "secs_ago": (now - *at).as_secs_f64(),
                    "stderr_tail": info.stderr_tail,
                })
            }),
            sandbox: relay.map(|r| r.sandbox().status_json()),
            unsandboxed_because: relay.and_then(|r| r.sandbox().off_reason().map(str::to_owned)),
        }
    }

    fn ready(&self, spec: &ClientSpec) -> Option<(Arc<Relay>, InitCache)> {
        let slot = lock(&self.slot);
        let relay = slot.relay()?;
        if !relay.usable() || relay.spec_hash() != spec.content_hash {
            return None;
        }
        let cache = lock(&self.init).clone()?;
        Some((relay.clone(), cache))
    }

    /// The current relay, if any (for cancellations and status).
    pub fn current_relay(&self) -> Option<Arc<Relay>> {
        lock(&self.slot).relay().cloned()
    }

    /// The cached initialize exchange, once the tenant has been initialized.
    pub fn init_cache(&self) -> Option<InitCache> {
        lock(&self.init).clone()
    }

    fn retire_child(&self, why: &str) {
        let taken = self.take(&mut lock(&self.slot));
        if let Some(relay) = taken {
            info!(client_id = %self.id, pid = relay.pid(), why, "retiring child after its in-flight requests");
            relay.retire();
        }
    }

    fn check_backoff(&self) -> Result<(), StartError> {
        let slot = lock(&self.slot);
        match slot.retry_at {
            Some(at) if at > Instant::now() => Err(StartError::Backoff(at - Instant::now())),
            _ => Ok(()),
        }
    }

    fn record_crash(&self, lived: Option<Duration>) {
        self.record_crash_in(&mut lock(&self.slot), lived);
    }

    /// Counts a crash and arms the backoff, in the caller's lock of `slot`.
    fn record_crash_in(&self, slot: &mut Slot, lived: Option<Duration>) {
        crate::metrics::crashed(self.id.as_str());
        slot.crashes = match lived {
            Some(lived) if lived >= BACKOFF_RESET => 1,
            _ => slot.crashes.saturating_add(1),
        };
        slot.restarts += 1;
        let delay = backoff(slot.crashes);
        slot.retry_at = (!delay.is_zero()).then(|| Instant::now() + delay);
    }

    fn on_exit(&self, relay: &Arc<Relay>, info: &ExitInfo) {
        let crashed = info.reason != ExitReason::Stopped;
        {
            // One lock for the exit and the crash count: `/status` and the backoff check
            // never see a crashed child's exit without its restart counted.
            let mut slot = lock(&self.slot);
            if slot.relay().is_some_and(|r| Arc::ptr_eq(r, relay)) {
                self.take(&mut slot);
            }
            slot.last_exit = Some((info.clone(), Instant::now()));
            if crashed {
                self.record_crash_in(&mut slot, Some(relay.started().elapsed()));
            }
        }
        if crashed {
            warn!(client_id = %self.id, pid = relay.pid(), status = %info.status, reason = ?info.reason, "child exited unexpectedly");
        } else {
            info!(client_id = %self.id, pid = relay.pid(), status = %info.status, "child stopped");
        }
    }

    /// Stops the child if it is idle past `ttl`; otherwise returns when to look again.
    fn reap_if_idle(&self, ttl: Duration, now: Instant) -> Option<Instant> {
        let mut slot = lock(&self.slot);
        let relay = slot.relay()?;
        if relay.inflight() > 0 {
            return None; // its last request's end wakes the reaper
        }
        if let Some(held) = relay.tasks_hold_until() {
            // A task still running is work in flight (until its ttl runs out).
            return Some(held.max(relay.idle_since() + ttl));
        }
        if self.sessions.open_streams() > 0 {
            return Some(now + ttl); // an open stream counts as activity
        }
        let due = relay.idle_since() + ttl;
        if due > now {
            return Some(due);
        }
        let relay = self.take(&mut slot)?;
        drop(slot);
        info!(client_id = %self.id, pid = relay.pid(), idle_secs = ttl.as_secs(), "reaping idle child");
        crate::metrics::reaped(self.id.as_str());
        relay.stop();
        None
    }
}

/// Wait before the next start after `crashes` consecutive crashes: none after the first
/// (the next request just starts a new child), then 1 s, 2 s, 4 s ... up to the cap.
fn backoff(crashes: u32) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let secs = 1u64 << (crashes - 2).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let got: Vec<u64> = (0..10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
