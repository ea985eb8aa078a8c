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
        let clients = std::path::absolute(clients_dir).map_err(|e| in_path(clients_dir, e))?;
        if let Some(parent) = clients.parent() {
            watch(&mut watcher, parent)?;
        }
        let identity = DirIdentity::of(&clients).map_err(|e| in_path(&clients, e))?;
        watch(&mut watcher, &identity.canonical)?;
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
        match watch(&mut self.watcher, &new.canonical) {
            Ok(()) => {
                info!(dir = %self.clients.display(), target = %new.canonical.display(), "following clients directory");
                self.watched = Some(new);
            }
            // Retried at the next rescan (an event or the safety timer).
            Err(err) => warn!(%err, "cannot watch the clients directory"),
        }
    }
}

/// Watches one directory, without its subdirectories. notify's error names the path.
fn watch(watcher: &mut RecommendedWatcher, dir: &Path) -> io::Result<()> {
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(io::Error::other)
}

/// Puts the path in front of an I/O error, which does not name it by itself.
fn in_path(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!(
            "{}: cannot watch the clients directory: {err}",
            path.display()
        ),
    )
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
        match self.debounce(shutdown).await {
            Settled::Quiet => drop(self.rescan().await),
            // The requested rescan also covers the pending events.
            Settled::Request(reply) => self.on_request(reply).await,
            Settled::Shutdown => {}
        }
    }

    /// Waits until `debounce` passes with no new event, or until `DEBOUNCE_CAP_FACTOR`
    /// periods since the first, so a constant stream still reloads. A reload request or
    /// shutdown ends the wait early: SIGHUP must not wait behind a stream of events.
    async fn debounce(&mut self, shutdown: &CancellationToken) -> Settled {
        let quiet = self.config.debounce.min(MAX_DEBOUNCE);
        let cap = Instant::now() + quiet * DEBOUNCE_CAP_FACTOR;
        loop {
            let deadline = (Instant::now() + quiet).min(cap);
            tokio::select! {
                // Deadline before events: once the cap has passed, a steady stream of
                // events must not win the race every time.
                biased;
                () = shutdown.cancelled() => return Settled::Shutdown,
                Some(reply) = self.requests.recv() => return Settled::Request(reply),
                () = time::sleep_until(deadline) => return Settled::Quiet,
                // Another event: wait a full quiet period again (up to the cap).
                Some(()) = self.dirty.recv() => {}
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

/// How a debounce wait ended.
enum Settled {
    /// No event for a quiet period (or the cap was reached): time to rescan.
    Quiet,
    /// A reload request arrived meanwhile: serve it, which rescans.
    Request(oneshot::Sender<ReloadOutcome>),
    /// Shutdown: no rescan.
    Shutdown,
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;
    use crate::clients::{ClientId, ClientSpec};

    /// Short, so tests are quick; every wait below is bounded by [`WAIT`].
    const DEBOUNCE: Duration = Duration::from_millis(50);
    /// Generous: the test machine is shared.
    const WAIT: Duration = Duration::from_secs(10);

    fn id(name: &str) -> ClientId {
        ClientId::parse(name).unwrap()
    }

    fn ids(specs: &[Arc<ClientSpec>]) -> Vec<&str> {
        specs.iter().map(|s| s.id.as_str()).collect()
    }

    fn client(command: &str) -> String {
        format!(r#"{{"command": "{command}"}}"#)
    }

    /// A watcher on `<root>/clients` (a directory or a symlink to one), with every
    /// outcome passed to `on_reload` forwarded to `outcomes`.
    struct Harness {
        root: tempfile::TempDir,
        registry: Arc<Registry>,
        outcomes: mpsc::UnboundedReceiver<ReloadOutcome>,
        handle: ReloadHandle,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Harness {
        /// A plain clients directory holding `files`.
        async fn with_files(files: &[(&str, &str)]) -> Self {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir(root.path().join("clients")).unwrap();
            for (name, body) in files {
                fs::write(root.path().join("clients").join(name), body).unwrap();
            }
            Self::start(root, DEBOUNCE, Duration::from_secs(3600)).await
        }

        /// Starts the watcher and waits for its first rescan.
        async fn start(
            root: tempfile::TempDir,
            debounce: Duration,
            safety_rescan: Duration,
        ) -> Self {
            let defaults = Defaults {
                clients_dir: root.path().join("clients"),
                idle_ttl: Duration::from_secs(300),
            };
            let config = WatchConfig {
                defaults,
                debounce,
                safety_rescan,
            };
            let registry = Arc::new(Registry::new());
            let (tx, outcomes) = mpsc::unbounded_channel();
            let on_reload = Arc::new(move |o: &ReloadOutcome| drop(tx.send(o.clone())));
            let shutdown = CancellationToken::new();
            let (handle, task) =
                spawn_watcher(config, Arc::clone(&registry), on_reload, shutdown.clone()).unwrap();
            let mut harness = Self {
                root,
                registry,
                outcomes,
                handle,
                shutdown,
                task,
            };
            harness.next("the watcher rescans once at start").await;
            harness
        }

        fn path(&self, name: &str) -> PathBuf {
            self.root.path().join(name)
        }

        fn write(&self, name: &str, body: &str) {
            fs::write(self.path(name), body).unwrap();
        }

        fn command_of(&self, name: &str) -> Option<String> {
            self.registry
                .get(&id(name))
                .map(|spec| spec.command.clone())
        }

        async fn next(&mut self, contract: &str) -> ReloadOutcome {
            let next = time::timeout(WAIT, self.outcomes.recv())
                .await
                .expect(contract);
            next.expect("the watcher task outlives the test")
        }

        /// Every outcome up to and including the first that satisfies `done`, which also
        /// sees the registry as that rescan left it.
        async fn until(
            &mut self,
            contract: &str,
            done: impl Fn(&ReloadOutcome, &Registry) -> bool,
        ) -> Vec<ReloadOutcome> {
            let mut seen = Vec::new();
            loop {
                let outcome = self.next(contract).await;
                let finished = done(&outcome, &self.registry);
                seen.push(outcome);
                if finished {
                    return seen;
                }
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            time::timeout(WAIT, self.task)
                .await
                .expect("the watcher stops on shutdown")
                .expect("the watcher task does not panic");
        }
    }

    fn never_removed(seen: &[ReloadOutcome], name: &str) -> bool {
        seen.iter().all(|o| !o.diff.removed.contains(&id(name)))
    }

    #[test]
    fn only_reads_are_ignored() {
        let event = |kind| Ok(Event::new(kind));
        let cases = [
            (
                event(EventKind::Access(AccessKind::Open(AccessMode::Any))),
                false,
            ),
            (event(EventKind::Access(AccessKind::Read)), false),
            (
                event(EventKind::Access(AccessKind::Close(AccessMode::Read))),
                false,
            ),
            (
                event(EventKind::Access(AccessKind::Close(AccessMode::Write))),
                true,
            ),
            (event(EventKind::Create(CreateKind::File)), true),
            (event(EventKind::Modify(ModifyKind::Any)), true),
            (event(EventKind::Remove(RemoveKind::Any)), true),
            (event(EventKind::Other), true),
            (event(EventKind::Any), true),
            (Err(notify::Error::generic("queue overflow")), true),
        ];
        for (event, want) in cases {
            assert_eq!(is_rescan_worthy(&event), want, "{event:?}");
        }
    }

    #[tokio::test]
    async fn new_file_is_added() {
        let mut h = Harness::with_files(&[]).await;
        h.write("clients/a.json", &client("one"));
        h.until("a new file must be reported as added", |o, _| {
            ids(&o.diff.added) == ["a"]
        })
        .await;
        assert_eq!(h.command_of("a").as_deref(), Some("one"));
        h.stop().await;
    }

    #[tokio::test]
    async fn rename_over_is_a_change() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        h.write("clients/a.json.tmp", &client("two"));
        fs::rename(h.path("clients/a.json.tmp"), h.path("clients/a.json")).unwrap();
        let seen = h
            .until("a rename-over edit must be reported as changed", |o, _| {
                ids(&o.diff.changed) == ["a"]
            })
            .await;
        assert!(
            never_removed(&seen, "a"),
            "an atomic rename never removes the tenant: {seen:#?}"
        );
        assert_eq!(h.command_of("a").as_deref(), Some("two"));
        h.stop().await;
    }

    #[tokio::test]
    async fn sed_in_place_is_a_change() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        let status = std::process::Command::new("sed")
            .arg("-i")
            .arg("s/one/two/")
            .arg(h.path("clients/a.json"))
            .status()
            .unwrap();
        assert!(status.success());
        let seen = h
            .until("a sed -i edit must be reported as changed", |o, _| {
                ids(&o.diff.changed) == ["a"]
            })
            .await;
        assert!(never_removed(&seen, "a"), "{seen:#?}");
        assert_eq!(h.command_of("a").as_deref(), Some("two"));
        h.stop().await;
    }

    #[tokio::test]
    async fn truncate_and_write_keeps_last_good_until_complete() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        let full = client("two");
        let (head, tail) = full.split_at(full.len() / 2);
        let mut file = fs::File::create(h.path("clients/a.json")).unwrap();
        file.write_all(head.as_bytes()).unwrap();
        let half = h
            .until(
                "a half-written file must be reported as an error",
                |o, r| o.errors.iter().any(|e| e.id == Some(id("a"))) && r.get(&id("a")).is_some(),
            )
            .await;
        assert_eq!(
            h.command_of("a").as_deref(),
            Some("one"),
            "the last good version stays"
        );
        file.write_all(tail.as_bytes()).unwrap();
        drop(file);
        let done = h
            .until("the completed write must be reported as changed", |o, _| {
                ids(&o.diff.changed) == ["a"]
            })
            .await;
        assert!(never_removed(&half, "a") && never_removed(&done, "a"));
        assert_eq!(h.command_of("a").as_deref(), Some("two"));
        h.stop().await;
    }

    #[tokio::test]
    async fn invalid_edit_keeps_last_good() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        h.write("clients/a.json", r#"{"comand": "two"}"#);
        let seen = h
            .until("an invalid edit must be reported as an error", |o, _| {
                o.errors
                    .iter()
                    .any(|e| e.id == Some(id("a")) && e.reason.contains("comand"))
            })
            .await;
        assert!(
            seen.iter().all(|o| o.diff.is_empty()),
            "an invalid edit changes nothing: {seen:#?}"
        );
        assert_eq!(h.command_of("a").as_deref(), Some("one"));
        h.stop().await;
    }

    #[tokio::test]
    async fn deleted_file_is_removed() {
        let mut h =
            Harness::with_files(&[("a.json", &client("one")), ("b.json", &client("one"))]).await;
        fs::remove_file(h.path("clients/a.json")).unwrap();
        h.until("a deleted file must be reported as removed", |o, _| {
            o.diff.removed == [id("a")]
        })
        .await;
        assert_eq!(h.command_of("a"), None);
        assert_eq!(h.registry.len(), 1);
        h.stop().await;
    }

    #[tokio::test]
    async fn temp_files_change_nothing() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        for temp in [
            ".a.json.swp",
            "a.json~",
            ".#a.json",
            "#a.json#",
            "4913",
            "sedAb12Cd",
            "a.json.tmp",
        ] {
            h.write(&format!("clients/{temp}"), "garbage");
        }
        // The sentinel is written last: once it is seen, the temp files were seen too.
        h.write("clients/z.json", &client("one"));
        let seen = h
            .until("the sentinel file must be reported as added", |o, _| {
                ids(&o.diff.added) == ["z"]
            })
            .await;
        for outcome in &seen {
            assert!(
                outcome.errors.is_empty(),
                "temp files are not read: {outcome:#?}"
            );
            assert!(
                outcome.diff.changed.is_empty() && outcome.diff.removed.is_empty(),
                "{outcome:#?}"
            );
            assert!(
                ids(&outcome.diff.added).iter().all(|a| *a == "z"),
                "{outcome:#?}"
            );
        }
        h.stop().await;
    }

    #[tokio::test]
    async fn vim_save_dance_ends_with_the_new_content() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        // vim (backupcopy=no): swap file, a write probe, old file renamed to a backup,
        // new file written, backup and swap removed.
        h.write("clients/.a.json.swp", "swap");
        h.write("clients/4913", "");
        fs::remove_file(h.path("clients/4913")).unwrap();
        fs::rename(h.path("clients/a.json"), h.path("clients/a.json~")).unwrap();
        h.write("clients/a.json", &client("two"));
        fs::remove_file(h.path("clients/a.json~")).unwrap();
        fs::remove_file(h.path("clients/.a.json.swp")).unwrap();
        let seen = h
            .until(
                "a vim save must end with the new content in force",
                |_, r| r.get(&id("a")).is_some_and(|s| s.command == "two"),
            )
            .await;
        assert!(seen.iter().all(|o| o.errors.is_empty()), "{seen:#?}");
        h.stop().await;
    }

    #[tokio::test]
    async fn configmap_data_swap_is_a_change() {
        let root = tempfile::tempdir().unwrap();
        let clients = root.path().join("clients");
        fs::create_dir_all(clients.join("..2026_01")).unwrap();
        fs::write(clients.join("..2026_01/a.json"), client("one")).unwrap();
        symlink("..2026_01", clients.join("..data")).unwrap();
        symlink("..data/a.json", clients.join("a.json")).unwrap();
        let mut h = Harness::start(root, DEBOUNCE, Duration::from_secs(3600)).await;
        assert_eq!(h.command_of("a").as_deref(), Some("one"));
        // What the kubelet does: new timestamped dir, `..data_tmp` renamed over `..data`,
        // old dir deleted. `a.json` itself is never touched.
        fs::create_dir(clients.join("..2026_02")).unwrap();
        fs::write(clients.join("..2026_02/a.json"), client("two")).unwrap();
        symlink("..2026_02", clients.join("..data_tmp")).unwrap();
        fs::rename(clients.join("..data_tmp"), clients.join("..data")).unwrap();
        fs::remove_dir_all(clients.join("..2026_01")).unwrap();
        let seen = h
            .until("a ConfigMap swap must be reported as changed", |o, _| {
                ids(&o.diff.changed) == ["a"]
            })
            .await;
        assert!(never_removed(&seen, "a"), "{seen:#?}");
        assert_eq!(h.command_of("a").as_deref(), Some("two"));
        h.stop().await;
    }

    #[tokio::test]
    async fn directory_symlink_swap_is_followed() {
        let root = tempfile::tempdir().unwrap();
        for (dir, file) in [("v1", "a.json"), ("v2", "b.json")] {
            fs::create_dir(root.path().join(dir)).unwrap();
            fs::write(root.path().join(dir).join(file), client("one")).unwrap();
        }
        symlink("v1", root.path().join("clients")).unwrap();
        let mut h = Harness::start(root, DEBOUNCE, Duration::from_secs(3600)).await;
        assert_eq!(h.registry.len(), 1);
        // `ln -sfn v2 clients`, atomically: a new symlink renamed over the old one.
        symlink("v2", h.path("clients.tmp")).unwrap();
        fs::rename(h.path("clients.tmp"), h.path("clients")).unwrap();
        h.until("a directory symlink swap must be followed", |o, _| {
            ids(&o.diff.added) == ["b"] && o.diff.removed == [id("a")]
        })
        .await;
        h.write("v2/c.json", &client("one"));
        h.until("edits in the new target must be seen", |o, _| {
            ids(&o.diff.added) == ["c"]
        })
        .await;
        h.stop().await;
    }

    #[tokio::test]
    async fn directory_replaced_by_rename_is_followed() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        fs::create_dir(h.path("clients.new")).unwrap();
        h.write("clients.new/b.json", &client("one"));
        fs::rename(h.path("clients"), h.path("clients.old")).unwrap();
        fs::rename(h.path("clients.new"), h.path("clients")).unwrap();
        h.until("a replaced directory must be followed", |_, r| {
            r.get(&id("b")).is_some() && r.get(&id("a")).is_none()
        })
        .await;
        h.write("clients/c.json", &client("one"));
        h.until("edits in the new directory must be seen", |o, _| {
            ids(&o.diff.added) == ["c"]
        })
        .await;
        h.write("clients.old/d.json", &client("one"));
        h.write("clients/e.json", &client("one"));
        let seen = h
            .until("edits in the new directory must be seen", |o, _| {
                ids(&o.diff.added) == ["e"]
            })
            .await;
        assert!(
            seen.iter().all(|o| !ids(&o.diff.added).contains(&"d")),
            "the old directory is not read"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn reload_now_rescans_without_waiting_for_events() {
        // A debounce far longer than the test's wait: only `reload_now` can report in time.
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("clients")).unwrap();
        let mut h = Harness::start(root, MAX_DEBOUNCE, Duration::from_secs(3600)).await;
        h.write("clients/a.json", &client("one"));
        let outcome = time::timeout(WAIT, h.handle.reload_now())
            .await
            .expect("reload_now must not wait behind the debounce")
            .expect("the watcher is running");
        assert_eq!(ids(&outcome.diff.added), ["a"]);
        let told = h.next("on_reload runs for requested rescans too").await;
        assert_eq!(ids(&told.diff.added), ["a"]);
        let handle = h.handle.clone();
        h.stop().await;
        assert!(
            handle.reload_now().await.is_none(),
            "a stopped watcher answers None"
        );
    }

    #[tokio::test]
    async fn own_reads_do_not_cause_rescans() {
        let mut h = Harness::with_files(&[("a.json", &client("one"))]).await;
        time::timeout(WAIT, h.handle.reload_now())
            .await
            .expect("reload_now answers")
            .expect("running");
        h.next("on_reload runs for the requested rescan").await;
        // Waiting for an absence: the rescan's own opens must not feed back into rescans.
        let extra = time::timeout(DEBOUNCE * 10, h.outcomes.recv()).await;
        assert!(
            extra.is_err(),
            "a rescan must not trigger another: {extra:?}"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn safety_timer_rescans_without_events() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("clients")).unwrap();
        let (min_period, _) = SAFETY_RESCAN_BOUNDS;
        let mut h = Harness::start(root, DEBOUNCE, min_period).await;
        let outcome = h
            .next("the safety timer must rescan with no event at all")
            .await;
        assert!(
            outcome.diff.is_empty() && outcome.errors.is_empty(),
            "{outcome:#?}"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn missing_directory_fails_to_start_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let clients = root.path().join("absent");
        let config = WatchConfig {
            defaults: Defaults {
                clients_dir: clients.clone(),
                idle_ttl: Duration::from_secs(1),
            },
            debounce: DEBOUNCE,
            safety_rescan: Duration::from_secs(3600),
        };
        let on_reload = Arc::new(|_: &ReloadOutcome| {});
        let started = spawn_watcher(
            config,
            Arc::new(Registry::new()),
            on_reload,
            CancellationToken::new(),
        );
        let err = started.expect_err("a missing clients directory is a startup error");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().starts_with(&clients.display().to_string()),
            "{err}"
        );
    }
}
