//! Reload driver: notify events (debounced), explicit requests (SIGHUP) and a safety timer
//! all lead to one rescan of the clients directory (DESIGN §2).
//!
//! Owns the notify watcher and the task that runs rescans; the reload rule itself is the
//! registry's. The watcher covers the clients directory and its parent (non-recursive), so
//! a swap of the directory itself (`ln -sfn`, `mv -T`) is seen and followed. Events carry
//! no meaning beyond "something changed": every rescan reads the whole directory.
//! Invariants: the notify callback never blocks (a capacity-1 channel is the dirty flag);
//! rescans run one at a time, each followed by `on_reload`; the task ends on `shutdown`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Defaults, Registry, ReloadOutcome};

/// A steady stream of events still reloads after this many debounce periods.
const DEBOUNCE_CAP_FACTOR: u32 = 5;

/// Longest accepted debounce; the setting is validated elsewhere, this keeps a bad value
/// from overflowing a deadline.
const MAX_DEBOUNCE: Duration = Duration::from_secs(60);

/// Bounds of the safety rescan period: a zero period would spin, a huge one would
/// overflow a deadline.
const SAFETY_RESCAN_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 60 * 60));

/// Reload requests that may wait for the task (SIGHUPs arrive one at a time).
const RELOAD_REQUESTS: usize = 4;

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Directory and per-file defaults.
    pub defaults: Defaults,
    /// Quiet time after the last event before a rescan.
    pub debounce: Duration,
    /// Rescan this often even without events (lost events, network file systems).
    pub safety_rescan: Duration,
}

/// Asks the watcher for a rescan now and waits for its outcome.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<oneshot::Sender<ReloadOutcome>>,
}

impl ReloadHandle {
    /// Rescans now (SIGHUP) and returns what changed; `None` if the watcher has stopped.
    pub async fn reload_now(&self) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.requests.send(reply).await.ok()?;
        outcome.await.ok()
    }
}

/// Starts watching `config.defaults.clients_dir` and its parent; `on_reload` runs after
/// every rescan (also those that changed nothing, so it can count them), on the watcher
/// task: keep it short. The first rescan runs at once, after the watch is in place, so a
/// file written between the caller's own first load and this call is not missed.
///
/// Fails when notify cannot be set up or the clients directory cannot be watched. Must be
/// called within a tokio runtime; the task ends when `shutdown` is cancelled.
pub fn spawn_watcher(
    config: WatchConfig,
    registry: Arc<Registry>,
    on_reload: Arc<dyn Fn(&ReloadOutcome) + Send + Sync>,
    shutdown: CancellationToken,
) -> io::Result<(ReloadHandle, JoinHandle<()>)> {
    let (dirty_tx, dirty) = mpsc::channel(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        if is_rescan_worthy(&event) {
            // Full means a rescan is already due, closed means the task has ended: in
            // both cases there is nothing more to do, and notify's thread must not block.
            let _ = dirty_tx.try_send(());
        }
    })
    .map_err(io::Error::other)?;
    let dirs = DirWatch::start(watcher, &config.defaults.clients_dir)?;
    let (requests_tx, requests) = mpsc::channel(RELOAD_REQUESTS);
    let task = WatchTask {
        config,
        registry,
        on_reload,
        dirs,
        dirty,
        requests,
    };
    let join = tokio::spawn(task.run(shutdown));
    Ok((
        ReloadHandle {
            requests: requests_tx,
        },
        join,
    ))
}

/// Every event and every notify error (a queue overflow among them) means "rescan",
/// whatever its kind or path, except opens and read-only closes: they change nothing,
/// and the rescan's own reads produce them, so heeding them would rescan forever.
fn is_rescan_worthy(event: &notify::Result<Event>) -> bool {
    !matches!(
        event,
        Ok(Event {
            kind: EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            ),
            ..
        })
    )
}

/// Which directory object the clients path currently resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirIdentity {
    canonical: PathBuf,
    dev: u64,
    ino: u64,
}

impl DirIdentity {
    fn of(path: &Path) -> io::Result<Self> {
        let canonical = path.canonicalize()?;
        let meta = std::fs::metadata(&canonical)?;
        Ok(Self {
            canonical,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The notify watcher and what it watches: the clients path's parent, fixed, and the
/// directory the clients path resolves to, followed when it changes.
struct DirWatch {
    /// Kept for the task's life: dropping it stops every watch.
    watcher: RecommendedWatcher,
    /// The clients path as configured, made absolute (not canonical: it may be a symlink).
    clients: PathBuf,
    /// The directory now watched for the clients path.
    watched: Option<DirIdentity>,
}

impl DirWatch {
    fn start(mut watcher: RecommendedWatcher, clients_dir: &Path) -> io::Result<Self> {
        let clients = std::path::absolute(clients_dir)?;
        if let Some(parent) = clients.parent() {
            watcher
                .watch(parent, RecursiveMode::NonRecursive)
                .map_err(io::Error::other)?;
        }
        let identity = DirIdentity::of(&clients)?;
        watcher
            .watch(&identity.canonical, RecursiveMode::NonRecursive)
            .map_err(io::Error::other)?;
        Ok(Self {
            watcher,
            clients,
            watched: Some(identity),
        })
    }

    /// Re-points the directory watch when the clients path now names another directory
    /// (symlink swapped, directory replaced). A path that is missing for now is left
    /// unwatched; the parent's watch reports its return.
    fn refresh(&mut self) {
        let current = DirIdentity::of(&self.clients)
            .inspect_err(
                |err| debug!(dir = %self.clients.display(), %err, "clients dir unavailable"),
            )
            .ok();
        if current == self.watched {
            return;
        }
        if let Some(old) = self.watched.take() {
            // Fails when the old directory is already gone, which is fine.
            let _ = self.watcher.unwatch(&old.canonical);
        }
        let Some(new) = current else { return };
        match self
            .watcher
            .watch(&new.canonical, RecursiveMode::NonRecursive)
        {
            Ok(()) => {
                info!(dir = %self.clients.display(), target = %new.canonical.display(), "following clients directory");
                self.watched = Some(new);
            }
            // Retried at the next rescan (an event or the safety timer).
            Err(err) => {
                warn!(dir = %new.canonical.display(), %err, "cannot watch clients directory")
            }
        }
    }
}

/// The reload loop: owns the watcher, the dirty flag and the request queue.
struct WatchTask {
    config: WatchConfig,
    registry: Arc<Registry>,
    on_reload: Arc<dyn Fn(&ReloadOutcome) + Send + Sync>,
    dirs: DirWatch,
    dirty: mpsc::Receiver<()>,
    requests: mpsc::Receiver<oneshot::Sender<ReloadOutcome>>,
}

impl WatchTask {
    async fn run(mut self, shutdown: CancellationToken) {
        self.rescan().await;
        let (min, max) = SAFETY_RESCAN_BOUNDS;
        let period = self.config.safety_rescan.clamp(min, max);
        let mut safety = time::interval_at(Instant::now() + period, period);
        safety.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // `None` (every handle dropped) only disables this arm for one turn.
                Some(reply) = self.requests.recv() => self.on_request(reply).await,
                Some(()) = self.dirty.recv() => self.on_event(&shutdown).await,
                _ = safety.tick() => drop(self.rescan().await),
            }
        }
        debug!("clients watcher stopped");
    }

    async fn on_request(&mut self, reply: oneshot::Sender<ReloadOutcome>) {
        if let Some(outcome) = self.rescan().await {
            // The requester may have given up waiting; the reload stands regardless.
            let _ = reply.send(outcome);
        }
    }

    async fn on_event(&mut self, shutdown: &CancellationToken) {
        if self.debounce(shutdown).await {
            self.rescan().await;
        }
    }

    /// Waits until `debounce` passes with no new event, or until `DEBOUNCE_CAP_FACTOR`
    /// periods since the first, so a constant stream still reloads. False on shutdown.
    async fn debounce(&mut self, shutdown: &CancellationToken) -> bool {
        let quiet = self.config.debounce.min(MAX_DEBOUNCE);
        let cap = Instant::now() + quiet * DEBOUNCE_CAP_FACTOR;
        loop {
            let deadline = (Instant::now() + quiet).min(cap);
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = time::sleep_until(deadline) => return true,
                event = self.dirty.recv() => if event.is_none() { return true },
            }
        }
    }

    /// One rescan: follow the directory, reload the registry off the async workers, log,
    /// then tell `on_reload`. `None` only if the reload panicked.
    async fn rescan(&mut self) -> Option<ReloadOutcome> {
        self.dirs.refresh();
        let registry = Arc::clone(&self.registry);
        let defaults = self.config.defaults.clone();
        let outcome = tokio::task::spawn_blocking(move || registry.reload(&defaults))
            .await
            .inspect_err(|err| error!(%err, "clients rescan failed"))
            .ok()?;
        log_summary(&outcome);
        (self.on_reload)(&outcome);
        Some(outcome)
    }
}

/// One line per rescan that changed something; each file error is logged by the registry
/// (once per distinct error, not at every rescan).
fn log_summary(outcome: &ReloadOutcome) {
    let diff = &outcome.diff;
    let (added, changed, removed) = (diff.added.len(), diff.changed.len(), diff.removed.len());
    let errors = outcome.errors.len();
    if diff.is_empty() {
        debug!(errors, "clients rescanned, no change");
    } else {
        info!(added, changed, removed, errors, "clients reloaded");
    }
}
