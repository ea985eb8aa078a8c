//! Supervised stdio children: spawn, line framing, stderr, the stop sequence.
//!
//! A child is an actor: one task owns the process, its stdin and stdout (`task`); a second
//! task, owned by the first, drains stderr (`stderr`). Callers hold a cloneable
//! [`ChildHandle`] and read [`ChildEvent`]s from the receiver returned by [`spawn`]. This
//! module knows nothing of MCP beyond newline-delimited framing (`framing`).
//!
//! Invariants: stdout and stderr are always drained; every child is reaped and its process
//! group emptied before [`ChildEvent::Exited`] (the last event) is sent; every queue is
//! bounded. Dropping the last [`ChildHandle`] starts the stop sequence, so no child
//! outlives its owner.
//!
//! Files: `spawn` (command lookup, environment, `Command`), `state` (per-tenant state
//! directories), `sandbox` (the Landlock policy and its application), `task` (the actor and the
//! stop sequence's steps), `stop` (process-group signalling and cleanup), `framing`,
//! `stderr`.

mod framing;
pub mod inherited;
mod outgoing;
pub mod sandbox;
mod spawn;
pub mod state;
mod stderr;
mod stop;
mod task;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::clients::ClientSpec;
use sandbox::{SandboxReport, SandboxSettings};

pub use stderr::{
    STDERR_LINES_PER_SEC, STDERR_MAX_LINE_BYTES, STDERR_TAIL_LINE_BYTES, STDERR_TAIL_LINES,
};
pub use task::STDOUT_DRAIN_AFTER_EXIT;

/// Capacity of a child's stdin queue, in messages.
pub const STDIN_QUEUE_LEN: usize = 1024;
/// Capacity of a child's event channel, in events.
pub const EVENT_QUEUE_LEN: usize = 1024;

/// Daemon-wide settings for every child.
#[derive(Debug, Clone)]
pub struct ChildSettings {
    /// Longest stdout line accepted from a child, in bytes; longer is fatal for the child.
    pub max_line_bytes: usize,
    /// Wait after closing stdin before SIGTERM, and after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// The state root (`--state-dir`): one directory per tenant, created on its first spawn.
    pub state_dir: PathBuf,
    /// The daemon-wide sandbox decision (`--sandbox`).
    pub sandbox: SandboxSettings,
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
    /// The tenant's state directory could not be created or used.
    #[error("cannot use the tenant's state directory {}: {source}", path.display())]
    StateDir {
        /// `<state-dir>/<id>`.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The spawn itself failed.
    #[error("failed to start {command}: {source}")]
    Spawn {
        /// The command as written in the client file.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The spawn failed with "permission denied" under the sandbox: most likely the policy
    /// denied something the command needs (its interpreter, say).
    #[error("failed to start {command} under the sandbox: {source}")]
    SandboxDenied {
        /// The command as written in the client file.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// What the sandbox was.
        report: SandboxReport,
    },
    /// The child is gone or stopping; nothing more can be sent.
    #[error("child process is not running")]
    Gone,
    /// The stdin queue is full (child not reading).
    #[error("child process is not reading its input")]
    Full,
}

impl Error {
    /// The JSON-RPC `error.data` for a caller whose request needed this child.
    pub fn data(&self) -> serde_json::Value {
        match self {
            Self::SandboxDenied { report, .. } => sandbox::denied_data(report, &self.to_string()),
            _ => serde_json::json!({ "error": self.to_string() }),
        }
    }
}

/// A handle to a running child; cheap to clone. Dropping the last clone stops the child.
#[derive(Clone)]
pub struct ChildHandle {
    pid: u32,
    sandbox: Arc<SandboxReport>,
    inbox: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    _stop_on_drop: Arc<StopOnDrop>,
}

/// State shared by the handles and the actor.
#[derive(Debug, Default)]
struct Shared {
    /// Cancelled to request the stop sequence.
    stop: CancellationToken,
    /// Cancelled once the child and its group are gone and reaped.
    done: CancellationToken,
    tail: Arc<stderr::StderrTail>,
}

/// Held by every handle clone; the last drop requests the stop sequence.
#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("pid", &self.pid)
            .field("stopping", &self.shared.stop.is_cancelled())
            .field("stopped", &self.shared.done.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl ChildHandle {
    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether (and how) the child is sandboxed.
    pub fn sandbox(&self) -> &SandboxReport {
        &self.sandbox
    }

    /// Queues one message (no trailing newline) for the child's stdin, waiting for room.
    pub async fn send(&self, line: Bytes) -> Result<(), Error> {
        if self.shared.stop.is_cancelled() {
            return Err(Error::Gone);
        }
        self.inbox.send(line).await.map_err(|_| Error::Gone)
    }

    /// Queues one message without waiting; fails when the queue is full.
    pub fn try_send(&self, line: Bytes) -> Result<(), Error> {
        if self.shared.stop.is_cancelled() {
            return Err(Error::Gone);
        }
        self.inbox.try_send(line).map_err(|e| match e {
            TrySendError::Full(_) => Error::Full,
            TrySendError::Closed(_) => Error::Gone,
        })
    }

    /// Starts the stop sequence; idempotent.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Resolves once the child and its process group are gone and reaped.
    pub async fn stopped(&self) {
        self.shared.done.cancelled().await;
    }

    /// The last lines the child wrote to stderr (at most [`STDERR_TAIL_LINES`]).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.shared.tail.snapshot()
    }
}

/// Takes each stdout line of a child on its actor's task (see [`Unread::with_sink`]).
pub type LineSink = Box<dyn FnMut(Bytes) + Send>;

/// Starts `spec`'s command as a new process group with the environment of DESIGN §2;
/// every stdout line and the exit arrive as events. Must be called inside a tokio runtime.
pub fn spawn(
    spec: &ClientSpec,
    settings: &ChildSettings,
) -> Result<(ChildHandle, mpsc::Receiver<ChildEvent>), Error> {
    let (handle, unread) = start(spec, settings)?;
    Ok((handle, unread.events()))
}

/// Starts `spec`'s command like [`spawn`], with its stdout not read yet: the caller says
/// where the lines go (the pipe holds them meanwhile). Must be called inside a runtime.
pub fn start(spec: &ClientSpec, settings: &ChildSettings) -> Result<(ChildHandle, Unread), Error> {
    let started = spawn::start(spec, settings)?;
    let pid = started.pid;
    let sandbox = Arc::new(started.sandbox.clone());
    let shared = Arc::new(Shared::default());
    let (inbox_tx, inbox_rx) = mpsc::channel(STDIN_QUEUE_LEN);
    let handle = ChildHandle {
        pid,
        sandbox,
        inbox: inbox_tx,
        _stop_on_drop: Arc::new(StopOnDrop(shared.stop.clone())),
        shared: shared.clone(),
    };
    let unread = Unread(Some(UnreadParts {
        started,
        id: spec.id.clone(),
        settings: settings.clone(),
        shared,
        inbox: inbox_rx,
    }));
    Ok((handle, unread))
}

/// A started child whose actor has not begun: [`Unread::events`] or [`Unread::with_sink`]
/// begins it. Dropped unused, it begins with lines discarded, so the child is still
/// supervised and stops with its last handle.
pub struct Unread(Option<UnreadParts>);

struct UnreadParts {
    started: spawn::Started,
    id: crate::clients::ClientId,
    settings: ChildSettings,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Bytes>,
}

impl Unread {
    /// Every stdout line as [`ChildEvent::Line`], then `Exited`.
    pub fn events(mut self) -> mpsc::Receiver<ChildEvent> {
        self.begin(task::Lines::Events, EVENT_QUEUE_LEN)
    }

    /// Every stdout line handed to `sink` on the actor's task as it is read, with no
    /// hand-off to another task; the receiver gets only `Exited`, after the last line was
    /// handed over. `sink` must not block.
    pub fn with_sink(mut self, sink: LineSink) -> mpsc::Receiver<ChildEvent> {
        self.begin(task::Lines::Sink(sink), 1)
    }

    fn begin(&mut self, lines: task::Lines, capacity: usize) -> mpsc::Receiver<ChildEvent> {
        let (events_tx, events_rx) = mpsc::channel(capacity);
        if let Some(parts) = self.0.take() {
            task::spawn_actor(
                parts.started,
                &parts.id,
                &parts.settings,
                parts.shared,
                parts.inbox,
                lines,
                events_tx,
            );
        }
        events_rx
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if self.0.is_some() {
            drop(self.begin(task::Lines::Sink(Box::new(drop)), 1));
        }
    }
}

/// Child settings for unit tests across the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// One state root for the whole test binary, removed by nobody: tests only create
    /// tenant directories under it, in the system temp dir.
    pub(crate) fn state_root() -> PathBuf {
        static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        ROOT.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("mcpmux-child-tests-")
                .tempdir()
                .unwrap();
            dir.keep()
        })
        .clone()
    }

    /// The daemon's defaults: sandboxed where the kernel can (these machines can).
    pub(crate) fn settings(grace_ms: u64) -> ChildSettings {
        let root = state_root();
        let status = sandbox::probe();
        ChildSettings {
            max_line_bytes: 1 << 20,
            stop_grace: Duration::from_millis(grace_ms),
            sandbox: SandboxSettings::decide(sandbox::Mode::Auto, status, &[&root], None).unwrap(),
            state_dir: root,
        }
    }
    /// A client spec running `command args` with every default, for tests over real children.
    pub(crate) fn spec(command: &str, args: &[&str]) -> ClientSpec {
        use std::collections::BTreeMap;

        use crate::clients::{ClientId, Limits};
        ClientSpec {
            id: ClientId::parse("test").unwrap(),
            path: PathBuf::from("/nonexistent/test.json"),
            command: command.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            idle_ttl: Duration::from_secs(300),
            token_sha256: None,
            limits: Limits::default(),
            sandbox: Default::default(),
            content_hash: [0; 32],
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real processes (`sh`, `cat`, `env`, `sleep`); every wait bounded.

    use std::path::PathBuf;

    use nix::unistd::Pid;
    use tokio::time::timeout;

    use super::testing::spec;
    use super::*;
    use crate::clients::Secret;

    const WAIT: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> ClientSpec {
        spec("sh", &["-c", script])
    }

    use super::testing::{settings, state_root};

    async fn next_line(rx: &mut mpsc::Receiver<ChildEvent>) -> Bytes {
        let event = timeout(WAIT, rx.recv())
            .await
            .expect("child must write a stdout line");
        match event {
            Some(ChildEvent::Line(line)) => line,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    /// Reads to the end; returns the lines and the exit, checking `Exited` is last.
    async fn until_exit(rx: &mut mpsc::Receiver<ChildEvent>) -> (Vec<Bytes>, ExitInfo) {
        let mut lines = Vec::new();
        loop {
            let event = timeout(WAIT, rx.recv())
                .await
                .expect("child must end with Exited");
            match event.expect("the event channel must not close before Exited") {
                ChildEvent::Line(line) => lines.push(line),
                ChildEvent::Exited(info) => {
                    let after = timeout(WAIT, rx.recv())
                        .await
                        .expect("channel closes after Exited");
                    assert!(after.is_none(), "Exited must be the last event");
                    return (lines, info);
                }
            }
        }
    }

    async fn stopped(handle: &ChildHandle) {
        timeout(WAIT, handle.stopped())
            .await
            .expect("stopped() must resolve once the child is gone");
    }

    fn assert_group_gone(pid: u32) {
        let pgid = Pid::from_raw(i32::try_from(pid).unwrap());
        assert!(
            !stop::group_alive(pgid),
            "no live process may remain in group {pid}"
        );
    }

    fn text(line: &Bytes) -> &str {
        std::str::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn lines_round_trip_through_cat_byte_exact() {
        let (handle, mut rx) = spawn(&spec("cat", &[]), &settings(1000)).unwrap();
        let json =
            Bytes::from_static("{\"jsonrpc\":\"2.0\",\"id\":1,\"p\":\"é\\u0000\"}".as_bytes());
        handle.send(json.clone()).await.unwrap();
        handle.try_send(Bytes::from_static(b"crlf line\r")).unwrap();
        handle.send(Bytes::new()).await.unwrap();
        handle.send(Bytes::from_static(b"last")).await.unwrap();
        assert_eq!(next_line(&mut rx).await, json);
        assert_eq!(
            next_line(&mut rx).await,
            "crlf line",
            "\\r\\n must be stripped"
        );
        assert_eq!(
            next_line(&mut rx).await,
            "last",
            "empty lines must be skipped"
        );
        handle.stop();
        let (lines, info) = until_exit(&mut rx).await;
        assert!(lines.is_empty());
        assert_eq!((info.reason, info.code), (ExitReason::Stopped, Some(0)));
        assert!(matches!(
            handle.send(Bytes::from_static(b"x")).await,
            Err(Error::Gone)
        ));
        assert!(matches!(
            handle.try_send(Bytes::from_static(b"x")),
            Err(Error::Gone)
        ));
    }

    #[tokio::test]
    async fn a_sink_gets_every_line_on_the_actor_and_exited_comes_after_the_last() {
        let (handle, unread) =
            start(&sh("echo one; echo two; echo three"), &settings(1000)).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let mut rx = unread.with_sink(Box::new(move |line| sink_seen.lock().unwrap().push(line)));
        let (lines, info) = until_exit(&mut rx).await;
        assert!(lines.is_empty(), "lines go to the sink, not the channel");
        assert_eq!(info.code, Some(0));
        let got = seen.lock().unwrap().clone();
        assert_eq!(got, ["one", "two", "three"].map(Bytes::from));
        stopped(&handle).await;
    }

    #[tokio::test]
    async fn an_unread_child_dropped_unused_is_still_stopped_with_its_handle() {
        let (handle, unread) = start(&spec("sleep", &["300"]), &settings(100)).unwrap();
        drop(unread);
        let pid = handle.pid();
        handle.stop();
        stopped(&handle).await;
        assert_group_gone(pid);
    }

    #[tokio::test]
    async fn environment_is_exactly_the_base_plus_the_file_env() {
        let mut spec = spec("env", &[]);
        spec.env.insert("LANG".into(), Secret("xx_XX.UTF-8".into()));
        spec.env.insert("TENANT_VAR".into(), Secret("a b=c".into()));
        let (_handle, mut rx) = spawn(&spec, &settings(1000)).unwrap();
        let (lines, info) = until_exit(&mut rx).await;
        assert_eq!(info.code, Some(0));
        let mut got: Vec<String> = lines.iter().map(|l| text(l).to_owned()).collect();
        got.sort();
        let mut want = vec!["LANG=xx_XX.UTF-8".to_owned(), "TENANT_VAR=a b=c".to_owned()];
        let path = std::env::var("PATH").unwrap_or_else(|_| spawn::DEFAULT_PATH.to_owned());
        want.push(format!("PATH={path}"));
        let home = state_root().join("test");
        want.push(format!("HOME={}", home.display()));
        want.push(format!("TMPDIR={}", home.display()));
        want.sort();
        assert_eq!(got, want);
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some(), "test premise");
        assert!(!got.iter().any(|l| l.starts_with("CARGO_PKG_NAME=")));
    }

    #[tokio::test]
    async fn over_long_stdout_line_stops_the_child_with_line_too_long() {
        let script = "echo ok; head -c 5000 /dev/zero; echo; echo after; exec sleep 300";
        let settings = ChildSettings {
            max_line_bytes: 1024,
            ..settings(200)
        };
        let (handle, mut rx) = spawn(&sh(script), &settings).unwrap();
        let (lines, info) = until_exit(&mut rx).await;
        assert_eq!(lines, vec![Bytes::from_static(b"ok")]);
        assert_eq!(info.reason, ExitReason::LineTooLong);
        assert_eq!(
            info.signal,
            Some(15),
            "sleep ignores stdin EOF, so SIGTERM ends it"
        );
        stopped(&handle).await;
        assert_group_gone(handle.pid());
    }

    #[tokio::test]
    async fn stderr_flood_does_not_stall_stdout() {
        let script = "yes error | head -n 8000000 >&2; echo done; echo bye >&2";
        let (handle, mut rx) = spawn(&sh(script), &settings(1000)).unwrap();
        let line = timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("stdout must flow while stderr floods");
        assert!(matches!(line, Some(ChildEvent::Line(l)) if l == "done"));
        let (_, info) = until_exit(&mut rx).await;
        assert_eq!(info.code, Some(0));
        assert_eq!(info.stderr_tail.len(), STDERR_TAIL_LINES);
        assert_eq!(info.stderr_tail.last().map(String::as_str), Some("bye"));
        assert_eq!(info.stderr_tail[0], "error");
        assert_eq!(handle.stderr_tail(), info.stderr_tail);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stdout_flows_during_an_endless_stderr_flood() {
        // The first flood is done before `cat` runs, so the tail cannot be empty at exit.
        let script = "yes error | head -n 100000 >&2; yes error >&2 & exec cat";
        let (handle, mut rx) = spawn(&sh(script), &settings(300)).unwrap();
        for i in 0..3 {
            let ping = Bytes::from(format!("ping {i}"));
            handle.send(ping.clone()).await.unwrap();
            let echoed = next_line(&mut rx).await;
            assert_eq!(echoed, ping, "stdout must flow while stderr floods");
        }
        handle.stop();
        stopped(&handle).await;
        assert_group_gone(handle.pid());
        let (_, info) = until_exit(&mut rx).await;
        assert!(!info.stderr_tail.is_empty());
        // The flood is killed mid-write, so the last line may be cut short.
        let tail = &info.stderr_tail;
        assert!(
            tail.iter().all(|l| "error".starts_with(l.as_str())),
            "{tail:?}"
        );
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_when_eof_and_sigterm_are_ignored() {
        let script = "trap '' TERM; echo ready; while :; do sleep 0.1; done";
        let (handle, mut rx) = spawn(&sh(script), &settings(300)).unwrap();
        assert_eq!(next_line(&mut rx).await, "ready");
        handle.stop();
        handle.stop();
        stopped(&handle).await;
        assert_group_gone(handle.pid());
        let (_, info) = until_exit(&mut rx).await;
        assert_eq!(info.reason, ExitReason::Stopped);
        assert_eq!((info.code, info.signal), (None, Some(9)));
        assert_eq!(info.status, "killed by signal 9 (SIGKILL)");
    }

    /// The grandchild's pid, echoed by the script, must not name a live process.
    fn assert_gone(pid_line: &Bytes) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", text(pid_line)));
        let state = stat
            .ok()
            .and_then(|s| stop::parse_stat(&s))
            .map(|s| s.state);
        assert!(
            matches!(state, None | Some('Z' | 'X')),
            "grandchild still running: {state:?}"
        );
    }

    #[tokio::test]
    async fn grandchild_is_gone_after_stop() {
        let (handle, mut rx) =
            spawn(&sh("sleep 300 & echo $!; exec cat"), &settings(1000)).unwrap();
        let grandchild = next_line(&mut rx).await;
        handle.stop();
        stopped(&handle).await;
        assert_group_gone(handle.pid());
        assert_gone(&grandchild);
        let (_, info) = until_exit(&mut rx).await;
        assert_eq!((info.reason, info.code), (ExitReason::Stopped, Some(0)));
    }

    #[tokio::test]
    async fn grandchild_is_gone_after_the_leader_exits_and_its_last_line_arrives() {
        let script = "sleep 300 & echo $!; exec head -n 1";
        let (handle, mut rx) = spawn(&sh(script), &settings(1000)).unwrap();
        let grandchild = next_line(&mut rx).await;
        handle
            .send(Bytes::from_static(b"final answer"))
            .await
            .unwrap();
        let (lines, info) = until_exit(&mut rx).await;
        assert_eq!(lines, vec![Bytes::from_static(b"final answer")]);
        assert_eq!((info.reason, info.code), (ExitReason::Exited, Some(0)));
        stopped(&handle).await;
        assert_group_gone(handle.pid());
        assert_gone(&grandchild);
    }

    #[tokio::test]
    async fn exit_reports_code_and_stderr_tail() {
        let (handle, mut rx) = spawn(&sh("echo hi >&2; exit 3"), &settings(1000)).unwrap();
        let (lines, info) = until_exit(&mut rx).await;
        assert!(lines.is_empty());
        assert_eq!(info.reason, ExitReason::Exited);
        assert_eq!((info.code, info.signal), (Some(3), None));
        assert_eq!(info.status, "exit status 3");
        assert_eq!(info.stderr_tail, vec!["hi".to_owned()]);
        assert_eq!(handle.stderr_tail(), vec!["hi".to_owned()]);
        assert!(matches!(
            handle.send(Bytes::from_static(b"x")).await,
            Err(Error::Gone)
        ));
    }

    #[tokio::test]
    async fn stopped_resolves_for_every_caller_before_and_after_the_exit() {
        let (handle, mut rx) = spawn(&spec("cat", &[]), &settings(1000)).unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.stopped().await })
            })
            .collect();
        handle.stop();
        for waiter in waiters {
            timeout(WAIT, waiter)
                .await
                .expect("every waiter must see the stop")
                .unwrap();
        }
        stopped(&handle).await;
        stopped(&handle.clone()).await;
        let (_, info) = until_exit(&mut rx).await;
        assert_eq!(info.reason, ExitReason::Stopped);
    }

    #[tokio::test]
    async fn try_send_reports_full_when_the_child_does_not_read() {
        let (handle, _rx) = spawn(&spec("sleep", &["300"]), &settings(100)).unwrap();
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let full = (0..4 * STDIN_QUEUE_LEN).find_map(|_| handle.try_send(big.clone()).err());
        assert!(matches!(full, Some(Error::Full)), "got {full:?}");
        handle.stop();
        stopped(&handle).await;
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_child() {
        let (handle, mut rx) = spawn(&spec("sleep", &["300"]), &settings(100)).unwrap();
        let pid = handle.pid();
        let clone = handle.clone();
        drop(handle);
        drop(clone);
        let (_, info) = until_exit(&mut rx).await;
        assert_eq!((info.reason, info.signal), (ExitReason::Stopped, Some(15)));
        assert_group_gone(pid);
    }

    #[tokio::test]
    async fn unknown_command_is_not_found() {
        let err = spawn(&spec("mcpmux-no-such-command", &[]), &settings(100)).unwrap_err();
        assert!(matches!(err, Error::NotFound(c) if c == "mcpmux-no-such-command"));
    }

    #[tokio::test]
    async fn missing_cwd_is_a_spawn_error() {
        let mut spec = spec("/bin/sh", &[]);
        spec.cwd = Some(PathBuf::from("/nonexistent/dir"));
        let err = spawn(&spec, &settings(100)).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "got {err:?}");
    }
}
