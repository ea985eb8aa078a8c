//! Supervised stdio children: spawn, line framing, stderr, the stop sequence.
//!
//! A child is an actor: one task owns the process, its stdin, stdout and stderr. Callers
//! hold a cloneable [`ChildHandle`] and read [`ChildEvent`]s from the receiver returned by
//! [`spawn`]. This module knows nothing of MCP beyond newline-delimited framing.
//! (Stub: to be implemented.)

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::clients::ClientSpec;

/// Daemon-wide settings for every child.
#[derive(Debug, Clone)]
pub struct ChildSettings {
    /// Longest stdout line accepted from a child, in bytes; longer is fatal for the child.
    pub max_line_bytes: usize,
    /// Wait after closing stdin before SIGTERM, and after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

/// What a child reports, in order; `Exited` is always the last event.
#[derive(Debug)]
pub enum ChildEvent {
    /// One stdout line, without its newline.
    Line(Bytes),
    /// The child and its process group are gone.
    Exited(ExitInfo),
}

/// Why a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// We stopped it ([`ChildHandle::stop`]).
    Stopped,
    /// It exited (or closed stdout) on its own.
    Exited,
    /// It wrote a stdout line longer than the limit and was stopped.
    LineTooLong,
}

/// How a child ended, for error messages, logs and `/status`.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// Why it ended.
    pub reason: ExitReason,
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when killed by one.
    pub signal: Option<i32>,
    /// A short description: `exit status 1`, `killed by signal 9 (SIGKILL)`.
    pub status: String,
    /// The last lines of its stderr.
    pub stderr_tail: Vec<String>,
}

/// Failure to start or talk to a child.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be found.
    #[error("command not found: {0}")]
    NotFound(String),
    /// The spawn itself failed.
    #[error("failed to start {command}: {source}")]
    Spawn {
        /// The command as written in the client file.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The child is gone or stopping; nothing more can be sent.
    #[error("child process is not running")]
    Gone,
    /// The stdin queue is full (child not reading).
    #[error("child process is not reading its input")]
    Full,
}

/// A handle to a running child; cheap to clone.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    _todo: (),
}

impl ChildHandle {
    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        todo!()
    }

    /// Queues one message (no trailing newline) for the child's stdin.
    pub async fn send(&self, line: Bytes) -> Result<(), Error> {
        let _ = line;
        todo!()
    }

    /// Queues one message without waiting; fails when the queue is full.
    pub fn try_send(&self, line: Bytes) -> Result<(), Error> {
        let _ = line;
        todo!()
    }

    /// Starts the stop sequence; idempotent.
    pub fn stop(&self) {
        todo!()
    }

    /// Resolves once the child and its process group are gone and reaped.
    pub async fn stopped(&self) {
        todo!()
    }

    /// The last lines the child wrote to stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        todo!()
    }
}

/// Starts `spec`'s command as a new process group with the environment of DESIGN §2.
pub fn spawn(
    spec: &ClientSpec,
    settings: &ChildSettings,
) -> Result<(ChildHandle, mpsc::Receiver<ChildEvent>), Error> {
    let _ = (spec, settings);
    todo!()
}
