//! Tenants and their children: single-flight start, handshake replay, crash backoff,
//! replacement on reload, idle reaping.
//!
//! Each tenant has at most one usable relay. Starting one happens under the tenant's
//! async start lock, so fifty simultaneous first requests spawn one child. A relay is
//! published only after its child answered `initialize`, so every request sees an
//! initialized child. Invariant: a child is stopped only when it has nothing in flight
//! (reap, retire), or when it broke (crash, over-long line), or on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::child::{self, ExitInfo, ExitReason};
use crate::clients::{ClientId, ClientSpec, Diff, Registry};
use crate::mcp::relay::{self, InitError, Relay};
use crate::mcp::session::Sessions;
use crate::settings::Settings;

/// A child that lived at least this long resets the crash count.
pub const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// Longest wait imposed between restarts of a crash-looping child.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for a child's answer to `initialize`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `initialize` exchange every child of a tenant gets.
#[derive(Debug, Clone)]
pub struct InitCache {
    /// Raw `params` of the first session's `initialize`, replayed to every new child.
    pub params: Arc<str>,
    /// Raw `result` of the current child's `initialize`.
    pub result: Bytes,
}

/// Why no child could serve a request.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Crash loop: try again after this long (503 + Retry-After).
    #[error("the tenant's child keeps crashing; retry in {} s", .0.as_secs().max(1))]
    Backoff(Duration),
    /// The child could not be started or initialized; `data` has exit and stderr tail.
    #[error("{message}")]
    Failed {
        /// Human message.
        message: String,
        /// JSON-RPC `error.data`.
        data: serde_json::Value,
    },
}

#[derive(Debug, Default)]
struct Slot {
    relay: Option<Arc<Relay>>,
    crashes: u32,
    retry_at: Option<Instant>,
    restarts: u64,
    last_exit: Option<ExitInfo>,
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
}

/// All tenants with runtime state.
#[derive(Debug)]
pub struct Pool {
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    tenants: Mutex<HashMap<ClientId, Arc<Tenant>>>,
    idle: Arc<Notify>,
}

impl Pool {
    /// An empty pool over `registry`.
    pub fn new(registry: Arc<Registry>, settings: Arc<Settings>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            settings,
            tenants: Mutex::default(),
            idle: Arc::default(),
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
                sessions: Arc::default(),
                slot: Mutex::default(),
                start: tokio::sync::Mutex::new(()),
                init: Mutex::new(None),
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
            .or_else(|| first_params.map(Arc::from))
            .ok_or_else(|| StartError::Failed {
                message: "the tenant has no initialized session; send initialize first".into(),
                data: serde_json::Value::Null,
            })?;
        let relay = self.spawn(tenant, spec)?;
        match relay
            .initialize(&params, INIT_TIMEOUT.min(self.settings.request_timeout))
            .await
        {
            Ok(result) => {
                let cache = InitCache { params, result };
                *lock(&tenant.init) = Some(cache.clone());
                let replaced = lock(&tenant.slot).relay.replace(relay.clone());
                if let Some(stale) = replaced {
                    // A child from a file that changed while it was starting (the reload
                    // found nothing published to retire), or one that just died.
                    info!(client_id = %tenant.id, pid = stale.pid(), "retiring child replaced by a newer one");
                    stale.retire();
                }
                Ok((relay, cache))
            }
            Err(e) => Err(self.init_failed(tenant, &relay, e).await),
        }
    }

    fn spawn(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        spec: &Arc<ClientSpec>,
    ) -> Result<Arc<Relay>, StartError> {
        let (handle, events) = child::spawn(spec, &self.settings.child).map_err(|e| {
            tenant.record_crash(None);
            warn!(client_id = %tenant.id, error = %e, "child failed to start");
            StartError::Failed {
                message: format!("child failed to start: {e}"),
                data: json!({ "error": e.to_string() }),
            }
        })?;
        let relay = Relay::new(
            tenant.id.clone(),
            handle,
            spec.content_hash,
            tenant.sessions.clone(),
            self.idle.clone(),
        );
        info!(client_id = %tenant.id, pid = relay.pid(), command = %spec.command, "child started");
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
        let exit = relay.exit_info().cloned();
        warn!(client_id = %tenant.id, error = %err, "child failed to initialize");
        let mut data = exit
            .as_ref()
            .map(relay::exit_data)
            .unwrap_or_else(|| json!({}));
        if let (InitError::Rejected(error), Some(obj)) = (&err, data.as_object_mut()) {
            obj.insert(
                "child_error".into(),
                serde_json::from_str(error).unwrap_or(json!(error)),
            );
        }
        if matches!(err, InitError::Rejected(_)) {
            tenant.record_crash(None); // a child that refuses initialize is as useless as a crash
        }
        let message = match (&err, &exit) {
            (InitError::Rejected(_), _) => "child rejected initialize".to_string(),
            (_, Some(info)) if info.reason != ExitReason::Stopped => {
                format!("child failed to initialize: {}", relay::exit_message(info))
            }
            _ => format!("child failed to initialize: {err}"),
        };
        StartError::Failed { message, data }
    }

    /// Every tenant with runtime state.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        lock(&self.tenants).values().cloned().collect()
    }

    /// Stops idle children and expired sessions until `shutdown`.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.reap_once();
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
            .filter_map(|t| lock(&t.slot).relay.take())
            .collect();
        for relay in &relays {
            relay.stop();
        }
        for relay in relays {
            relay.stopped().await;
        }
    }
}

impl Tenant {
    fn ready(&self, spec: &ClientSpec) -> Option<(Arc<Relay>, InitCache)> {
        let slot = lock(&self.slot);
        let relay = slot.relay.as_ref()?;
        if !relay.usable() || relay.spec_hash() != spec.content_hash {
            return None;
        }
        let cache = lock(&self.init).clone()?;
        Some((relay.clone(), cache))
    }

    /// The current relay, if any (for cancellations and status).
    pub fn current_relay(&self) -> Option<Arc<Relay>> {
        lock(&self.slot).relay.clone()
    }

    /// The cached initialize exchange, once the tenant has been initialized.
    pub fn init_cache(&self) -> Option<InitCache> {
        lock(&self.init).clone()
    }

    fn retire_child(&self, why: &str) {
        if let Some(relay) = lock(&self.slot).relay.take() {
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
        let mut slot = lock(&self.slot);
        slot.crashes = match lived {
            Some(lived) if lived >= BACKOFF_RESET => 1,
            _ => slot.crashes.saturating_add(1),
        };
        slot.restarts += 1;
        let delay = backoff(slot.crashes);
        slot.retry_at = (!delay.is_zero()).then(|| Instant::now() + delay);
    }

    fn on_exit(&self, relay: &Arc<Relay>, info: &ExitInfo) {
        {
            let mut slot = lock(&self.slot);
            if slot.relay.as_ref().is_some_and(|r| Arc::ptr_eq(r, relay)) {
                slot.relay = None;
            }
            slot.last_exit = Some(info.clone());
        }
        if info.reason == ExitReason::Stopped {
            info!(client_id = %self.id, pid = relay.pid(), status = %info.status, "child stopped");
        } else {
            warn!(client_id = %self.id, pid = relay.pid(), status = %info.status, reason = ?info.reason, "child exited unexpectedly");
            self.record_crash(Some(relay.started().elapsed()));
        }
    }

    /// Stops the child if it is idle past `ttl`; otherwise returns when to look again.
    fn reap_if_idle(&self, ttl: Duration, now: Instant) -> Option<Instant> {
        let mut slot = lock(&self.slot);
        let relay = slot.relay.as_ref()?;
        if relay.inflight() > 0 {
            return None; // its last request's end wakes the reaper
        }
        if self.sessions.open_streams() > 0 {
            return Some(now + ttl); // an open stream counts as activity
        }
        let due = relay.idle_since() + ttl;
        if due > now {
            return Some(due);
        }
        let relay = slot.relay.take()?;
        drop(slot);
        info!(client_id = %self.id, pid = relay.pid(), idle_secs = ttl.as_secs(), "reaping idle child");
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
