//! systemd integration: readiness, reload and stop notifications, the watchdog, and
//! socket activation. Everything here is a no-op when not run by systemd.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often a supervised loop must prove it is alive; loops wake at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// READY=1: clients loaded and listeners bound.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// RELOADING=1 with MONOTONIC_USEC (required by systemd 253+ for Type=notify-reload).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!(error = %e, "cannot read the monotonic clock for RELOADING"),
    }
}

/// STOPPING=1: draining.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// A loop's liveness stamp, checked by the watchdog.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// Records that the loop is alive now.
    pub fn beat(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Pings WATCHDOG=1 at half the interval systemd asked for, but only while every loop in
/// `beats` has beaten within that interval: a wedged accept loop or reaper stops the pings
/// and systemd restarts the service.
pub async fn run_watchdog(beats: Vec<Heartbeat>, shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if beats.iter().all(|b| b.age() < interval) {
            send(&[NotifyState::Watchdog]);
        } else {
            debug!("watchdog ping withheld: a loop missed its heartbeat");
        }
    }
}

/// Listening sockets passed by systemd (`LISTEN_FDS`), by `FileDescriptorName`.
#[derive(Debug, Default)]
pub struct Activated {
    /// The tenant listener (`mcp`, or the first unnamed socket).
    pub mcp: Option<StdListener>,
    /// The admin listener (`admin`, or the second unnamed socket).
    pub admin: Option<StdListener>,
}

/// Takes the sockets systemd passed, if any (the environment is left as is; children never
/// see it because their environment is rebuilt from scratch).
pub fn activated() -> std::io::Result<Activated> {
    let mut out = Activated::default();
    for (index, (fd, name)) in sd_notify::listen_fds_with_names()?.enumerate() {
        let listener = adopt(fd)?;
        listener.set_nonblocking(true)?; // tokio needs it, or accept blocks a runtime thread
        match (name.as_str(), index) {
            ("mcp", _) | ("unknown" | "", 0) => out.mcp = Some(listener),
            ("admin", _) | ("unknown" | "", 1) => out.admin = Some(listener),
            _ => warn!(fd, name, "ignoring an unexpected socket passed by systemd"),
        }
    }
    Ok(out)
}

#[allow(unsafe_code, reason = "the one audited unsafe block of the crate")]
fn adopt(fd: std::os::fd::RawFd) -> std::io::Result<StdListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: sd_listen_fds(3) hands this process ownership of the descriptors from 3 to
    // 3+LISTEN_FDS-1 (already checked against LISTEN_PID and set CLOEXEC by sd_notify);
    // each is adopted exactly once, here, and nothing else in the process uses them.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(StdListener::from(owned))
}
