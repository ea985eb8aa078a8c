//! Signals: SIGTERM and SIGINT start a graceful shutdown, SIGHUP a reload.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The daemon's signal streams, registered before anything is bound.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM (systemd stop) or SIGINT (Ctrl-C): drain and exit.
    Shutdown,
    /// SIGHUP (systemd `ExecReload`): rescan the clients directory.
    Reload,
}

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal's request.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Shutdown,
            _ = self.int.recv() => Request::Shutdown,
            _ = self.hup.recv() => Request::Reload,
        }
    }
}
