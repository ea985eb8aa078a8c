//! The connection budget of one listener (`--max-connections` on the tenant port, a fixed
//! reserve on the admin port).
//!
//! A slot is a semaphore permit held by the connection's task, so the count can never drift
//! from the connections really open. Connections that have not yet sent a complete request
//! head are kept in age order: at the budget, a newcomer evicts the oldest of them (such a
//! connection cost its client nothing yet and can be retried); only when every open
//! connection has sent a head is the newcomer closed at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::ConnState;
use crate::metrics::ConnMetrics;

/// Descriptors kept for everything but connections and children: listeners, the runtime's
/// epoll and signal pipes, the clients-directory watcher, logs, files read on reload.
pub const RESERVED_FDS: u64 = 64;
/// Connections the admin port may hold; its own budget, so `/healthz` and `/metrics`
/// answer while the tenant port is full.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Descriptors one child costs the daemon: stdin, stdout and stderr pipes and a pidfd.
pub const FDS_PER_CHILD: u64 = 4;
/// Fewest connections a derived budget allows, however low the open-file limit.
pub const MIN_CONNECTIONS: usize = 8;
/// Most connections a derived budget allows (an unlimited open-file limit).
pub const MAX_DERIVED_CONNECTIONS: usize = 1 << 20;
/// Evicted connections that may still be closing while newcomers are admitted: the most a
/// listener may exceed its budget by, for a moment.
pub const EVICTION_SLACK: usize = 64;
/// How long a newcomer waits for evicted connections to close once [`EVICTION_SLACK`] of
/// them are closing, before it is turned away.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The default `--max-connections` for an open-file limit of `nofile`: what is left after
/// [`RESERVED_FDS`], the admin reserve, each port's [`EVICTION_SLACK`] and the children's
/// pipes (`max_children` × [`FDS_PER_CHILD`], but at most half of what remains).
pub fn derived_max_connections(nofile: u64, max_children: usize) -> usize {
    let spare = nofile
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(ADMIN_MAX_CONNECTIONS as u64)
        .saturating_sub(2 * EVICTION_SLACK as u64);
    let children = (max_children as u64)
        .saturating_mul(FDS_PER_CHILD)
        .min(spare / 2);
    let budget = usize::try_from(spare - children).unwrap_or(usize::MAX);
    budget.clamp(MIN_CONNECTIONS, MAX_DERIVED_CONNECTIONS)
}

/// The daemon's soft open-file limit (`RLIMIT_NOFILE`), when it can be read.
pub fn nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// A listener's open connections, bounded.
#[derive(Debug)]
pub struct Budget {
    slots: Arc<Semaphore>,
    /// Connections without a complete request head yet, oldest first.
    waiting: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    pub(super) metrics: ConnMetrics,
}

/// A connection's place in the budget; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: &metrics::Gauge) -> Self {
        open.increment(1.0);
        Self {
            _permit: permit,
            open: open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl Budget {
    /// A budget of `max` connections, recording into `metrics`.
    pub fn new(max: usize, metrics: ConnMetrics) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(
                max.saturating_add(EVICTION_SLACK)
                    .min(Semaphore::MAX_PERMITS),
            )),
            waiting: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    /// A slot for a just-accepted connection: a free one, or one freed by evicting the
    /// oldest waiting connection. `None`: every connection has sent a head, so the
    /// newcomer is closed at once.
    ///
    /// The newcomer does not wait for its victim to close: up to [`EVICTION_SLACK`]
    /// evicted connections may still be closing, so a flood is accepted as fast as it
    /// comes (its victims close in their own tasks) and a caller queued behind it in the
    /// backlog is reached quickly.
    pub async fn admit(&self) -> Option<Slot> {
        if self.slots.available_permits() > EVICTION_SLACK
            && let Ok(permit) = self.slots.clone().try_acquire_owned()
        {
            return Some(Slot::new(permit, &self.metrics.open));
        }
        if !self.evict_oldest() {
            self.metrics.rejected.increment(1);
            return None;
        }
        // Under a flood, let the connections already accepted parse the heads they have
        // before more newcomers can evict them: accept no faster than heads are read.
        tokio::task::yield_now().await;
        let freed = tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned()).await;
        match freed {
            Ok(Ok(permit)) => Some(Slot::new(permit, &self.metrics.open)),
            _ => {
                self.metrics.rejected.increment(1);
                None
            }
        }
    }

    /// Tells the oldest connection without a complete head to close. False when none waits.
    pub fn evict_oldest(&self) -> bool {
        loop {
            let Some((_, conn)) = self.lock().pop_first() else {
                return false;
            };
            if conn.evict() {
                self.metrics.evicted.increment(1);
                return true;
            }
        }
    }

    /// `conn` has not sent a complete request head yet.
    pub(super) fn waiting(&self, conn: &Arc<ConnState>) {
        self.lock().insert(conn.seq(), conn.clone());
    }

    /// `conn` has sent a head, or has closed: it is no longer a candidate for eviction.
    pub(super) fn not_waiting(&self, conn: &ConnState) {
        self.lock().remove(&conn.seq());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        // The map stays consistent under any panic: each operation is one call on it.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_budget_leaves_room_for_children_and_the_admin_port() {
        // 1024 - 64 reserved - 64 admin - 2 × 64 slack = 768; children get half of it
        // (4 × 1024 > 384).
        assert_eq!(derived_max_connections(1024, 1024), 384);
        // Few children: they get only what they need.
        assert_eq!(derived_max_connections(1024, 10), 768 - 40);
        // A tiny limit still leaves a usable floor; an unlimited one is capped.
        assert_eq!(derived_max_connections(100, 1024), MIN_CONNECTIONS);
        assert_eq!(
            derived_max_connections(u64::MAX, 1024),
            MAX_DERIVED_CONNECTIONS
        );
    }
}
