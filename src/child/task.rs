//! The child actor: one task owns the process, its stdin and its stdout, from spawn to reap.
//!
//! Phases: run until the leader exits (feeding stdin, forwarding stdout, stepping the stop
//! sequence); read what is left of stdout for a bounded time; clean the process group;
//! report. Invariants: every wait is part of a `select!` that keeps stdout moving, so the
//! child never blocks on a full pipe because of us; the leader is always `wait()`ed; the
//! group is cleaned before `Exited` is sent, and `Exited` is the last event.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::FramedRead;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::framing::{Frame, LineDecoder};
use super::outgoing::Outgoing;
use super::spawn::Started;
use super::stop::{clean_group, signal_group};
use super::{ChildEvent, ChildSettings, ExitInfo, ExitReason, Shared, stderr};
use crate::clients::ClientId;

/// How long stdout is still read after the leader exits: lines written just before the
/// exit must not be lost, but a grandchild may hold the pipe open forever.
pub const STDOUT_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long the stderr drain may run on once the group is gone (an escaped process,
/// one that called `setsid`, may still hold the pipe).
const STDERR_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Where the stop sequence is; each stage but the last ends at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    StdinClosed,
    Terminated,
    Killed,
}

#[derive(Debug)]
struct Stopping {
    reason: ExitReason,
    stage: Stage,
    deadline: Option<Instant>,
}

pub(super) struct Actor {
    pgid: Pid,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The messages being written, taken from the inbox in one batch.
    outgoing: Outgoing,
    inbox: mpsc::Receiver<Bytes>,
    stdout: Option<FramedRead<ChildStdout, LineDecoder>>,
    /// A stdout line waiting for room in the event channel.
    pending: Option<Bytes>,
    /// Where lines go: handed to a sink on this task, or queued as events.
    lines: Lines,
    events: mpsc::Sender<ChildEvent>,
    /// The receiver is gone: stdout is still drained, lines are dropped.
    events_closed: bool,
    shared: Arc<Shared>,
    settings: ChildSettings,
    stopping: Option<Stopping>,
    stderr: AbortOnDropHandle<()>,
}

/// Starts the stderr drain and the actor. The actor task is detached: it ends once the
/// child and its group are gone, and every path there is bounded (the last
/// [`ChildHandle`](super::ChildHandle) dropped starts the stop sequence).
pub(super) fn spawn_actor(
    started: Started,
    id: &ClientId,
    settings: &ChildSettings,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Bytes>,
    lines: Lines,
    events: mpsc::Sender<ChildEvent>,
) {
    let Started {
        child,
        pid,
        pgid,
        stdin,
        stdout,
        stderr,
        sandbox: _,
    } = started;
    let stderr = stderr::spawn_drain(stderr, id.clone(), pid, shared.tail.clone());
    let actor = Actor {
        pgid,
        child,
        stdin: Some(stdin),
        outgoing: Outgoing::default(),
        inbox,
        stdout: Some(FramedRead::new(
            stdout,
            LineDecoder::new(settings.max_line_bytes),
        )),
        pending: None,
        lines,
        events,
        events_closed: false,
        shared,
        settings: settings.clone(),
        stopping: None,
        stderr,
    };
    let span = tracing::info_span!("child", client_id = %id, pid);
    tokio::spawn(actor.run().instrument(span));
}

impl Actor {
    async fn run(mut self) {
        tracing::debug!("child started");
        let status = self.run_until_leader_exits().await;
        self.close_stdin();
        self.drain_stdout().await;
        clean_group(self.pgid, self.settings.stop_grace).await;
        self.finish(status).await;
    }

    async fn run_until_leader_exits(&mut self) -> io::Result<ExitStatus> {
        loop {
            let deadline = self.stopping.as_ref().and_then(|s| s.deadline);
            let can_take = self.stdin.is_some() && self.outgoing.is_empty();
            tokio::select! {
                status = self.child.wait() => return status,
                () = self.shared.stop.cancelled(), if self.stopping.is_none() => {
                    self.begin_stop(ExitReason::Stopped);
                }
                () = sleep_until_some(deadline) => self.on_stop_deadline(),
                msg = self.inbox.recv(), if can_take => self.on_message(msg),
                res = write_some(&mut self.stdin, &mut self.outgoing) => self.on_written(res),
                frame = next_frame(&mut self.stdout), if self.pending.is_none() => {
                    self.on_frame(frame);
                }
                closed = forward(&self.events, &mut self.pending), if self.pending.is_some() => {
                    self.events_closed |= closed;
                }
            }
        }
    }

    /// After the leader exits: whatever it wrote last is in the pipe; read it, briefly.
    async fn drain_stdout(&mut self) {
        let deadline = Instant::now() + STDOUT_DRAIN_AFTER_EXIT;
        while self.stdout.is_some() || self.pending.is_some() {
            tokio::select! {
                () = sleep_until(deadline) => break,
                frame = next_frame(&mut self.stdout), if self.pending.is_none() => {
                    self.on_frame(frame);
                }
                closed = forward(&self.events, &mut self.pending), if self.pending.is_some() => {
                    self.events_closed |= closed;
                }
            }
        }
        if self.stdout.take().is_some() {
            tracing::debug!("stdout still open after the leader exited; closing our end");
        }
        self.pending = None;
    }

    fn on_message(&mut self, msg: Option<Bytes>) {
        match msg {
            Some(line) => {
                self.outgoing.push(line);
                // Whatever else is queued goes out in the same write.
                while self.outgoing.has_room() {
                    match self.inbox.try_recv() {
                        Ok(line) => self.outgoing.push(line),
                        Err(_) => break,
                    }
                }
            }
            // Unreachable while a handle lives (the handle holds a sender); stop anyway.
            None => self.begin_stop(ExitReason::Stopped),
        }
    }

    fn on_written(&mut self, res: io::Result<usize>) {
        match res {
            Ok(0) => self.on_stdin_failed(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) => self.on_stdin_failed(e),
        }
    }

    /// The child closed its stdin (`BrokenPipe`: it is exiting); nothing more can be sent.
    fn on_stdin_failed(&mut self, e: io::Error) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            tracing::debug!("child closed its stdin");
        } else {
            tracing::warn!(%e, "writing to child stdin failed");
        }
        self.close_stdin();
    }

    fn on_frame(&mut self, frame: Option<io::Result<Frame>>) {
        match frame {
            // After an over-long line the child's output is not trusted: its in-flight
            // requests must fail (DESIGN §3, limits), not be answered by what follows.
            Some(Ok(Frame::Line(_))) if self.line_too_long() => {}
            Some(Ok(Frame::Line(line))) => match &mut self.lines {
                Lines::Sink(sink) => sink(line),
                Lines::Events if !self.events_closed => self.pending = Some(line),
                Lines::Events => {}
            },
            Some(Ok(Frame::TooLong(_))) => self.on_line_too_long(),
            Some(Err(e)) => {
                tracing::warn!(%e, "reading child stdout failed");
                self.on_stdout_closed();
            }
            None => self.on_stdout_closed(),
        }
    }

    fn on_line_too_long(&mut self) {
        let limit = self.settings.max_line_bytes;
        tracing::warn!(
            limit,
            "child wrote a stdout line over the limit; stopping it"
        );
        self.begin_stop(ExitReason::LineTooLong);
    }

    fn line_too_long(&self) -> bool {
        let stopping = self.stopping.as_ref();
        stopping.is_some_and(|s| s.reason == ExitReason::LineTooLong)
    }

    /// Without stdout the child cannot answer: stop it (it is usually exiting anyway).
    fn on_stdout_closed(&mut self) {
        self.stdout = None;
        self.begin_stop(ExitReason::Exited);
    }

    /// Step one of the stop sequence; later calls keep the first reason.
    fn begin_stop(&mut self, reason: ExitReason) {
        if self.stopping.is_some() {
            return;
        }
        tracing::debug!(?reason, "stopping child: closing its stdin");
        self.close_stdin();
        self.stopping = Some(Stopping {
            reason,
            stage: Stage::StdinClosed,
            deadline: Some(Instant::now() + self.settings.stop_grace),
        });
    }

    fn on_stop_deadline(&mut self) {
        let (pgid, grace) = (self.pgid, self.settings.stop_grace);
        let Some(stopping) = self.stopping.as_mut() else {
            return;
        };
        match stopping.stage {
            Stage::StdinClosed => {
                tracing::info!(
                    ?grace,
                    "child still running after stdin closed; sending SIGTERM to its group"
                );
                signal_group(pgid, Signal::SIGTERM);
                stopping.stage = Stage::Terminated;
                stopping.deadline = Some(Instant::now() + grace);
            }
            Stage::Terminated => {
                tracing::warn!(
                    ?grace,
                    "child still running after SIGTERM; sending SIGKILL to its group"
                );
                signal_group(pgid, Signal::SIGKILL);
                stopping.stage = Stage::Killed;
                stopping.deadline = None;
            }
            Stage::Killed => stopping.deadline = None,
        }
    }

    /// Closes the child's stdin and the queue: later sends fail with `Gone`.
    fn close_stdin(&mut self) {
        self.stdin = None;
        self.outgoing.clear();
        self.inbox.close();
    }

    /// The epilogue: collect the stderr tail, mark done, send `Exited`.
    async fn finish(mut self, status: io::Result<ExitStatus>) {
        if timeout(STDERR_DRAIN_AFTER_EXIT, &mut self.stderr)
            .await
            .is_err()
        {
            tracing::debug!("stderr still open after the group is gone; abandoning it");
        }
        let reason = self.stopping.map_or(ExitReason::Exited, |s| s.reason);
        let info = exit_info(reason, &status, self.shared.tail.snapshot());
        tracing::info!(reason = ?info.reason, status = %info.status, "child exited");
        // Queue `Exited` before `stopped()` resolves when there is room; never let a
        // consumer that stopped reading hold `stopped()` back.
        match self.events.try_send(ChildEvent::Exited(info)) {
            Err(TrySendError::Full(event)) => {
                self.shared.done.cancel();
                let _ = self.events.send(event).await;
            }
            Ok(()) | Err(TrySendError::Closed(_)) => self.shared.done.cancel(),
        }
    }
}

/// Where a child's stdout lines go.
pub(super) enum Lines {
    /// Queued as [`ChildEvent::Line`]s, read by another task.
    Events,
    /// Handed to the sink as they are read, on the actor's own task: no hand-off per line.
    /// The sink must not block; only `Exited` goes to the event channel then.
    Sink(super::LineSink),
}

/// Hands the pending line to the event channel once it has room; true when the receiver
/// is gone. Cancel-safe: the line is taken only with a slot reserved.
async fn forward(events: &mpsc::Sender<ChildEvent>, pending: &mut Option<Bytes>) -> bool {
    match events.reserve().await {
        Ok(permit) => {
            if let Some(line) = pending.take() {
                permit.send(ChildEvent::Line(line));
            }
            false
        }
        Err(_) => {
            *pending = None;
            true
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes part of the outgoing batch (vectored: one `writev`); pending forever when there
/// is nothing to write. Cancel-safe: `write_buf` advances the batch only for bytes written.
async fn write_some(stdin: &mut Option<ChildStdin>, outgoing: &mut Outgoing) -> io::Result<usize> {
    match stdin {
        Some(stdin) if outgoing.has_remaining() => stdin.write_buf(outgoing).await,
        _ => std::future::pending().await,
    }
}

async fn next_frame(
    stdout: &mut Option<FramedRead<ChildStdout, LineDecoder>>,
) -> Option<io::Result<Frame>> {
    match stdout {
        Some(stdout) => stdout.next().await,
        None => std::future::pending().await,
    }
}

/// Builds the report of how the leader ended.
pub(super) fn exit_info(
    reason: ExitReason,
    status: &io::Result<ExitStatus>,
    stderr_tail: Vec<String>,
) -> ExitInfo {
    let (code, signal) = match status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (None, None),
    };
    ExitInfo {
        reason,
        code,
        signal,
        status: describe(status),
        stderr_tail,
    }
}

/// `exit status 1`, `killed by signal 9 (SIGKILL)`.
fn describe(status: &io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(e) => return format!("exit status unknown: {e}"),
    };
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let Some(signal) = status.signal() else {
        return status.to_string();
    };
    let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
    let core = if status.core_dumped() {
        ", core dumped"
    } else {
        ""
    };
    format!("killed by signal {signal} ({name}{core})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_exit_codes_and_signals() {
        let cases = [
            (0, "exit status 0", Some(0), None),
            (3 << 8, "exit status 3", Some(3), None),
            (9, "killed by signal 9 (SIGKILL)", None, Some(9)),
            (
                11 | 0x80,
                "killed by signal 11 (SIGSEGV, core dumped)",
                None,
                Some(11),
            ),
        ];
        for (raw, text, code, signal) in cases {
            let status = Ok(ExitStatus::from_raw(raw));
            let info = exit_info(ExitReason::Exited, &status, Vec::new());
            assert_eq!(
                (info.status.as_str(), info.code, info.signal),
                (text, code, signal)
            );
        }
        let err = Err(io::Error::other("boom"));
        assert_eq!(describe(&err), "exit status unknown: boom");
    }
}
