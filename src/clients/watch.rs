//! Reload driver: notify events (debounced), explicit requests (SIGHUP) and a safety
//! timer all lead to one rescan. (Stub: to be implemented.)

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Defaults, Registry, ReloadOutcome};

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
    _todo: (),
}

impl ReloadHandle {
    /// Rescans now (SIGHUP) and returns what changed.
    pub async fn reload_now(&self) -> Option<ReloadOutcome> {
        todo!()
    }
}

/// Starts watching; `on_reload` runs after every rescan that was applied.
pub fn spawn_watcher(
    config: WatchConfig,
    registry: Arc<Registry>,
    on_reload: Arc<dyn Fn(&ReloadOutcome) + Send + Sync>,
    shutdown: CancellationToken,
) -> std::io::Result<(ReloadHandle, JoinHandle<()>)> {
    let _ = (config, registry, on_reload, shutdown);
    todo!()
}
