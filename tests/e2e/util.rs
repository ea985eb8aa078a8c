//! The e2e harness: a unique clients directory per test, the real `mcpmux` binary on ephemeral
//! ports, raw HTTP helpers, and `/proc` scans for leftover processes.
//!
//! Modelled on ripgrep's `tests/util.rs` (a temp dir per test, the binary from
//! `CARGO_BIN_EXE_*`) and on the mini-redis and linkerd harnesses (bind `:0`, learn the address
//! from the process itself). Readiness and log expectations are event-driven: a reader thread
//! pushes each stderr line into a `tokio::sync::watch` channel, and waiters wake on every new
//! line. Every wait has a deadline; its failure message states the contract that was broken.
//!
//! Not owned here: assertions about MCP semantics (the test modules make those).
#![allow(
    dead_code,
    reason = "shared by every test module; each module uses only some of the helpers"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
pub use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

/// How long a freshly spawned daemon may take to log its listening address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM (drain grace plus child stop, with slack
/// for a loaded 2-core CI machine).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound for one HTTP exchange with the daemon, body included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// The session-era protocol version the raw helpers speak.
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// The `Accept` value a conforming Streamable HTTP caller sends on POST.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// The repository root (where `Cargo.toml`, `clients/` and `tests/` live).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A random hex string, for markers in child arguments and for unique names.
pub fn unique_marker() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source must be available");
    hex::encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Clients directory
// ---------------------------------------------------------------------------------------------

/// A clients directory unique to one test, with a state directory beside it (`<root>/clients`
/// and `<root>/state`), removed when dropped.
pub struct TempClients {
    root: tempfile::TempDir,
    clients: PathBuf,
    state: PathBuf,
}

impl TempClients {
    pub fn new() -> TempClients {
        let root = tempfile::Builder::new()
            .prefix("mcpmux-e2e-clients-")
            .tempdir()
            .expect("a temp clients dir must be creatable");
        let clients = root.path().join("clients");
        std::fs::create_dir(&clients).expect("the clients dir must be creatable");
        let state = root.path().join("state");
        TempClients {
            root,
            clients,
            state,
        }
    }

    pub fn path(&self) -> &Path {
        &self.clients
    }

    /// The directory holding `clients/` and `state/`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The daemon's `--state-dir` (created by the daemon).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Tenant `id`'s state directory: its child's cwd, HOME and TMPDIR.
    pub fn tenant_state(&self, id: &str) -> PathBuf {
        self.state.join(id)
    }

    /// The path of client `id`'s file, `<dir>/<id>.json`.
    pub fn file(&self, id: &str) -> PathBuf {
        self.path().join(format!("{id}.json"))
    }

    /// Writes `<id>.json` atomically (a hidden temp file renamed over the target, as careful
    /// editors and config management do), so the daemon never sees a half-written file.
    pub fn write(&self, id: &str, spec: &Value) {
        let tmp = self
            .path()
            .join(format!(".{id}.json.{}.tmp", unique_marker()));
        let body = serde_json::to_vec_pretty(spec).expect("a Value always serialises");
        std::fs::write(&tmp, body).expect("temp client file must be writable");
        std::fs::rename(&tmp, self.file(id)).expect("temp client file must rename into place");
    }

    /// Writes `name` (any file name, any bytes) in place, exactly as given.
    pub fn write_raw(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.path().join(name), bytes).expect("raw client file must be writable");
    }

    pub fn remove(&self, id: &str) {
        std::fs::remove_file(self.file(id)).expect("client file must exist to be removed");
    }
}

/// `{"command": "mcp-echo"}`: the example child shipped beside `mcpmux`.
pub fn echo_spec() -> Value {
    json!({"command": "mcp-echo"})
}

/// The system's Python (under `/usr`, which the sandbox grants) when there is one; a
/// `python3` found first on `PATH` may be a shim (pyenv) whose tree the sandbox denies.
pub fn system_python() -> &'static str {
    system_binary("/usr/bin/python3", "python3")
}

/// `path` when it exists, else `name` to be found on `PATH`.
pub fn system_binary(path: &'static str, name: &'static str) -> &'static str {
    if Path::new(path).exists() { path } else { name }
}

/// The fixtures directory, which a Python fixture's client file grants read access to
/// (`"sandbox": {"read": [...]}`), as an operator would for a script outside the system trees.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The Python raw fixture child, `tests/fixtures/fake_child.py`, with `args` after the script.
pub fn fake_child_spec(args: &[&str]) -> Value {
    let script = fixtures_dir().join("fake_child.py");
    let mut argv = vec![Value::from(
        script.to_str().expect("repo path must be UTF-8"),
    )];
    argv.extend(args.iter().map(|a| Value::from(*a)));
    let fixtures = fixtures_dir();
    let read = fixtures.to_str().expect("repo path must be UTF-8");
    json!({"command": system_python(), "args": argv, "sandbox": {"read": [read]}})
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// Everything the daemon wrote to stderr so far, and whether the pipe has closed.
#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    closed: bool,
}

/// A running `mcpmux serve`, killed on drop if still running.
pub struct Daemon {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: Arc<watch::Sender<LogState>>,
    http: reqwest::Client,
}

/// Longest a dropped daemon gets to stop its children before it is killed.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Daemon {
    /// A test that ends without `stop()` still must not leave the daemon's children behind:
    /// SIGKILL (`kill_on_drop`) would orphan any child that ignores stdin EOF. So ask the
    /// daemon to stop them (SIGTERM), and give it a bounded time. Drop cannot await, and no
    /// event reports another process's exit to synchronous code, so this polls `try_wait`.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already exited (or not ours to wait for)
        }
        // Never panic in drop (it may run while a failed test unwinds).
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        if nix::sys::signal::kill(pid, Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + DROP_STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running: `kill_on_drop` ends it when `child` drops.
    }
}

/// The arguments [`Daemon::start`] gives `mcpmux`: ephemeral tenant and admin ports,
/// tokenless test tenants, `clients` and its state directory, then `extra_args`.
fn start_args<'a>(clients: &'a TempClients, extra_args: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        // Test tenants are tokenless unless a test gives one a token.
        "--allow-open-tenants",
    ];
    let dir = clients.path().to_str().expect("temp path must be UTF-8");
    args.extend(["--clients", dir]);
    let state = clients
        .state_dir()
        .to_str()
        .expect("temp path must be UTF-8");
    args.extend(["--state-dir", state]);
    args.extend(extra_args);
    args
}

impl Daemon {
    /// Starts `mcpmux serve` on ephemeral tenant and admin ports, serving `clients`.
    pub async fn start(clients: &TempClients, extra_args: &[&str]) -> Daemon {
        Daemon::start_with_env(clients, extra_args, &[]).await
    }

    /// As [`Daemon::start`], with extra environment variables for the daemon.
    pub async fn start_with_env(
        clients: &TempClients,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn(&start_args(clients, extra_args), env).await
    }

    /// As [`Daemon::start`], with `mcpmux` and its arguments appended to `trampoline`, a
    /// program that sets up limits or descriptors and then execs them (e.g. `prlimit`).
    pub async fn start_behind(
        mut trampoline: Command,
        clients: &TempClients,
        extra_args: &[&str],
    ) -> Daemon {
        trampoline
            .arg(env!("CARGO_BIN_EXE_mcpmux"))
            .args(start_args(clients, extra_args));
        Daemon::spawn_command(trampoline).await
    }

    /// Spawns the binary with exactly `args` and waits for its tenant listening address.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = mcpmux_command(args);
        cmd.envs(env.iter().copied());
        Daemon::spawn_command(cmd).await
    }

    /// Spawns `cmd`, which must end up exec'ing `mcpmux serve` in the same process (a
    /// trampoline that sets up descriptors or environment first), and waits for its tenant
    /// listening address.
    pub async fn spawn_command(mut cmd: Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the mcpmux binary must start");
        let pid = child.id().expect("a just-spawned child has a pid");
        let stderr = child.stderr.take().expect("stderr was piped");
        let log = Arc::new(watch::Sender::new(LogState::default()));
        spawn_log_reader(
            pid,
            stderr.into_owned_fd().expect("stderr pipe fd"),
            log.clone(),
        );
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("a plain-HTTP reqwest client must build");
        let mut daemon = Daemon {
            child,
            pid,
            addr: ([0, 0, 0, 0], 0).into(),
            log,
            http,
        };
        let line = daemon
            .wait_for_log_after(0, "listening on http://", STARTUP_TIMEOUT)
            .await;
        let Some(line) = line else {
            let status = daemon.child.try_wait().ok().flatten();
            panic!(
                "daemon must report its listening address (exit status: {status:?}; stderr above)"
            );
        };
        daemon.addr = tenant_addr_in(&daemon.logs()).unwrap_or_else(|| {
            panic!("daemon must log `listening on http://<addr>/mcp`; first such line: {line}")
        });
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/mcp`, the tenant endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The admin listener's address, from its `listening on http://<addr>` log line (one whose
    /// path is not `/mcp`). Waits a bounded time for that line.
    pub async fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut rx = self.log.subscribe();
        loop {
            if let Some(addr) = admin_addr_in(&rx.borrow_and_update().lines) {
                return addr;
            }
            let woke = timeout_at(deadline, rx.changed()).await;
            assert!(
                matches!(woke, Ok(Ok(()))) && !self.log.borrow().closed,
                "daemon must log its admin address as `listening on http://<addr>`"
            );
        }
    }

    /// The shared HTTP client (no TLS; `HTTP_TIMEOUT` per request).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A copy of every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.borrow().lines.clone()
    }

    /// The number of stderr lines so far: a mark for [`Daemon::wait_for_log_after`].
    pub fn log_mark(&self) -> usize {
        self.log.borrow().lines.len()
    }

    /// Waits until a stderr line contains `needle` and returns it; `None` if none did within
    /// `within`, or if the daemon closed stderr (exited) first.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> Option<String> {
        self.wait_for_log_after(0, needle, within).await
    }

    /// As [`Daemon::wait_for_log`], considering only lines after `mark` (see
    /// [`Daemon::log_mark`]), for messages that recur (a second reload, a second spawn).
    pub async fn wait_for_log_after(
        &self,
        mark: usize,
        needle: &str,
        within: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut rx = self.log.subscribe();
        let mut next = mark;
        loop {
            {
                let state = rx.borrow_and_update();
                let fresh = state.lines.get(next..).unwrap_or_default();
                if let Some(hit) = fresh.iter().find(|l| l.contains(needle)) {
                    return Some(hit.clone());
                }
                next = next.max(state.lines.len());
                if state.closed {
                    return None;
                }
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Sends `sig` to the daemon process.
    pub fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, sig).expect("daemon must be signalable");
    }

    /// SIGTERM, then waits (bounded by `STOP_TIMEOUT`) for the daemon to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("try_wait on the daemon") {
            return status;
        }
        self.signal(Signal::SIGTERM);
        self.wait_exit(STOP_TIMEOUT).await.expect(
            "daemon must exit after SIGTERM within STOP_TIMEOUT (drain, then stop children)",
        )
    }

    /// Waits up to `within` for the daemon to exit on its own; `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        timeout(within, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("waiting on the daemon must not fail"))
    }

    /// POSTs one JSON-RPC message; see [`post`].
    pub async fn post(
        &self,
        client_id: Option<&str>,
        session: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        post(self, client_id, session, body).await
    }
}

/// A `Command` for the `mcpmux` binary under test, with the test's `MCPMUX_*` variables
/// removed so a developer's environment cannot change what a test means.
pub fn mcpmux_command(args: &[&str]) -> Command {
    let mut cmd = isolated_command(env!("CARGO_BIN_EXE_mcpmux"));
    cmd.args(args);
    cmd
}

/// A `Command` for `program` with the test's `MCPMUX_*` variables removed and `NO_COLOR` set,
/// for trampolines that exec `mcpmux` themselves. A daemon started without `--state-dir`
/// keeps its tenants' state under one shared temp directory, not the developer's home.
pub fn isolated_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NO_COLOR", "1").env_remove("STATE_DIRECTORY").env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join("mcpmux-e2e-xdg-state"),
    );
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MCPMUX_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `mcpmux <args>` to completion (e.g. `check DIR`, or bad flags), bounded.
pub async fn run_mcpmux(args: &[&str]) -> std::process::Output {
    let mut cmd = mcpmux_command(args);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    timeout(STARTUP_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`mcpmux {}` must finish within STARTUP_TIMEOUT",
                args.join(" ")
            )
        })
        .expect("the mcpmux binary must start")
}

/// Reads the daemon's stderr on a plain thread (so a busy or blocked test runtime can never
/// leave the daemon blocked on a full pipe), echoing each line to the test's captured stderr.
fn spawn_log_reader(pid: u32, fd: std::os::fd::OwnedFd, log: Arc<watch::Sender<LogState>>) {
    // Ends at EOF: when the daemon (and anything sharing its stderr) has exited.
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(fd)).lines() {
            let Ok(line) = line else { break };
            eprintln!("mcpmux[{pid}]| {line}");
            log.send_modify(|s| s.lines.push(line));
        }
        log.send_modify(|s| s.closed = true);
    });
}

/// The `<addr>` of the first `listening on http://<addr><path>` in `lines` whose path
/// satisfies `want_path`.
fn listening_addr_in(lines: &[String], want_path: impl Fn(&str) -> bool) -> Option<SocketAddr> {
    const PREFIX: &str = "listening on http://";
    lines.iter().find_map(|line| {
        let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        let addr = rest[..end].parse().ok()?;
        want_path(&rest[end..]).then_some(addr)
    })
}

fn tenant_addr_in(lines: &[String]) -> Option<SocketAddr> {
    listening_addr_in(lines, |path| path.starts_with("/mcp"))
}

fn admin_addr_in(lines: &[String]) -> Option<SocketAddr> {
    listening_addr_in(lines, |path| !path.starts_with("/mcp"))
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A request to the tenant endpoint with the headers a conforming caller sends: `Accept` for
/// JSON and SSE, plus `X-Client-ID` and `Mcp-Session-Id` when given.
pub fn mcp_request(
    daemon: &Daemon,
    method: reqwest::Method,
    client_id: Option<&str>,
    session: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = daemon
        .http()
        .request(method, daemon.url())
        .header("Accept", ACCEPT_BOTH);
    if let Some(id) = client_id {
        req = req.header("X-Client-ID", id);
    }
    if let Some(s) = session {
        req = req.header("Mcp-Session-Id", s);
    }
    req
}

/// POSTs one JSON-RPC message as `application/json`; returns the response unread.
pub async fn post(
    daemon: &Daemon,
    client_id: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, client_id, session)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(body).expect("a Value always serialises"))
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

/// The `params` of a 2025-11-25 `initialize` from a caller with no capabilities.
pub fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcpmux-e2e", "version": "0.0.0"}
    })
}

/// Runs the session-era handshake for `client_id` (`initialize`, then
/// `notifications/initialized`) and returns the `Mcp-Session-Id`.
pub async fn initialize(daemon: &Daemon, client_id: &str) -> String {
    initialize_with(daemon, client_id, initialize_params())
        .await
        .0
}

/// As [`initialize`] with the given `params`; returns the session id and the `result`.
pub async fn initialize_with(daemon: &Daemon, client_id: &str, params: Value) -> (String, Value) {
    let req = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params});
    let resp = post(daemon, Some(client_id), None, &req).await;
    assert_eq!(
        resp.status(),
        200,
        "initialize must succeed for known client {client_id}"
    );
    let session = resp
        .headers()
        .get("mcp-session-id")
        .expect("initialize response must carry Mcp-Session-Id")
        .to_str()
        .expect("Mcp-Session-Id must be visible ASCII")
        .to_owned();
    let result = response_to(&messages(resp).await, &json!(0)).clone();
    let result = result
        .get("result")
        .cloned()
        .expect("initialize must return a result, not an error");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = post(daemon, Some(client_id), Some(&session), &note).await;
    assert_eq!(
        resp.status(),
        202,
        "notifications/initialized must be accepted with 202"
    );
    (session, result)
}

/// Sends request `method` with `params` (id 1) in `session` and returns the JSON-RPC response
/// message (with `result` or `error`), skipping any notifications streamed before it.
pub async fn rpc(
    daemon: &Daemon,
    client_id: &str,
    session: &str,
    method: &str,
    params: Value,
) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp = post(daemon, Some(client_id), Some(session), &req).await;
    assert_eq!(
        resp.status(),
        200,
        "{method} in a live session must be answered with 200"
    );
    response_to(&messages(resp).await, &json!(1)).clone()
}

/// `tools/call` of `name` with `arguments`; returns the JSON-RPC response message.
pub async fn call_tool(
    daemon: &Daemon,
    client_id: &str,
    session: &str,
    name: &str,
    arguments: Value,
) -> Value {
    rpc(
        daemon,
        client_id,
        session,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
    .await
}

/// The response (a message with `id` and `result` or `error`) to request `id` in `messages`.
pub fn response_to<'a>(messages: &'a [Value], id: &Value) -> &'a Value {
    messages
        .iter()
        .find(|m| {
            m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
        })
        .unwrap_or_else(|| panic!("no response to id {id} among {messages:#?}"))
}

/// Reads the whole body (bounded by `HTTP_TIMEOUT`) and returns the JSON-RPC messages it
/// carries: one for `application/json`, each non-empty `data:` event for `text/event-stream`
/// (an empty one is a resumability priming event, not a message), none for an empty 202. Panics on any other content type, showing status and body.
pub async fn messages(resp: reqwest::Response) -> Vec<Value> {
    let status = resp.status();
    let ctype = content_type(&resp);
    let body = timeout(HTTP_TIMEOUT, resp.bytes())
        .await
        .expect("a POST response body must complete (an SSE answer ends after the final response)")
        .expect("response body must be readable");
    if status == 202 && body.is_empty() {
        return Vec::new();
    }
    if ctype.starts_with("application/json") {
        let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{status} application/json body must be JSON ({e}): {body:?}")
        });
        return vec![value];
    }
    if ctype.starts_with("text/event-stream") {
        let text = std::str::from_utf8(&body).expect("an SSE body must be UTF-8");
        let events = parse_sse(text).into_iter().filter(|e| !e.data.is_empty());
        return events.map(|e| parse_json(&e.data)).collect();
    }
    panic!(
        "{status} with unexpected content type {ctype:?}: {}",
        String::from_utf8_lossy(&body)
    )
}

fn content_type(resp: &reqwest::Response) -> String {
    let h = resp.headers().get("content-type");
    h.and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn parse_json(data: &str) -> Value {
    serde_json::from_str(data)
        .unwrap_or_else(|e| panic!("SSE data must be one JSON message ({e}): {data}"))
}

/// One server-sent event (only the fields MCP uses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Parses complete SSE text into its events with data (comments and data-less events dropped).
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut parser = SseParser::default();
    let mut events = parser.push(text.as_bytes());
    events.extend(parser.push(b"\n\n"));
    events
}

/// An incremental SSE parser (WHATWG rules for `id`, `event`, `data`; `\n` or `\r\n` ends).
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes (chunks may split lines and characters); returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut done = Vec::new();
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = std::str::from_utf8(&raw).expect("an SSE line must be UTF-8");
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if std::mem::take(&mut self.has_data) {
                    done.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" if self.has_data => {
                    self.current.data.push('\n');
                    self.current.data.push_str(value);
                }
                "data" => {
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                _ => {} // comments (empty field) and retry
            }
        }
        done
    }
}

/// An open `text/event-stream` response read message by message (a session's GET stream, or
/// a POST answer consumed while it is still open).
pub struct SseStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseStream {
    /// Wraps `resp`, asserting it is a 200 `text/event-stream`.
    pub fn new(resp: reqwest::Response) -> SseStream {
        assert_eq!(resp.status(), 200, "an SSE stream must open with 200");
        let ctype = content_type(&resp);
        assert!(
            ctype.starts_with("text/event-stream"),
            "expected an SSE stream, got {ctype:?}"
        );
        SseStream {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::default(),
            ready: Default::default(),
        }
    }

    /// The next event; `None` if the stream ended. Panics with `contract` after `within`.
    pub async fn next_event(&mut self, within: Duration, contract: &str) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            let chunk = timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("{contract}"));
            let chunk = chunk?;
            let chunk = chunk.expect("SSE stream must not fail mid-event");
            self.ready.extend(self.parser.push(&chunk));
        }
    }

    /// The next JSON-RPC message (events with empty data, such as a resumability priming
    /// event, are skipped). Panics with `contract` after `within`, or if the stream ends first.
    pub async fn next_message(&mut self, within: Duration, contract: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left, contract).await;
            let ev = ev.unwrap_or_else(|| panic!("stream ended: {contract}"));
            if !ev.data.is_empty() {
                return parse_json(&ev.data);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Pids of live processes with an argument containing `marker` (from `/proc/*/cmdline`).
/// Zombies have an empty cmdline and are not found: see [`zombie_children_of`].
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = proc_pids()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline
                .split(|&b| b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(marker))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Children of `parent` in state Z (exited, not reaped), from `/proc/*/stat`.
pub fn zombie_children_of(parent: u32) -> Vec<u32> {
    proc_pids()
        .filter(|&pid| proc_stat(pid).is_some_and(|(state, ppid)| ppid == parent && state == 'Z'))
        .collect()
}

/// `(state, ppid)` of `pid` from `/proc/<pid>/stat`; `None` if it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split at the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .expect("/proc must be readable (tests run on Linux)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// Waits until no live process carries `marker`; `Err(pids)` with the survivors after `within`.
///
/// This is the harness's one polling wait, and deliberately so: a test cannot be notified of
/// the exit of a process that is not its child (a daemon's grandchild), so it re-scans `/proc`
/// every 25 ms until the deadline. Waits on our own processes and on the daemon's log use
/// events instead.
pub async fn wait_no_process_with_marker(marker: &str, within: Duration) -> Result<(), Vec<u32>> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with_marker(marker);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The fake child (`tests/fixtures/fake_child.py`)
// ---------------------------------------------------------------------------------------------

/// A fake child's `--log-file`: every line the child received, in a temp dir of its own (not
/// the clients directory, which the daemon watches). Its file name carries a decimal marker,
/// so the child's command line can be found in `/proc` (and `sleep 3000.<marker>` is valid).
pub struct ChildLog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    marker: String,
}

impl ChildLog {
    pub fn new() -> ChildLog {
        let dir = tempfile::Builder::new()
            .prefix("mcpmux-e2e-childlog-")
            .tempdir()
            .expect("a temp dir for the child log must be creatable");
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source must be available");
        let marker = format!("{:020}", u64::from_le_bytes(bytes));
        let path = dir.path().join(format!("child-{marker}.log"));
        ChildLog {
            _dir: dir,
            path,
            marker,
        }
    }

    /// The directory the log file is in.
    pub fn dir(&self) -> &str {
        self._dir.path().to_str().expect("temp path must be UTF-8")
    }

    /// The path to pass as `--log-file`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temp path must be UTF-8")
    }

    /// Decimal digits found in the child's command line (and nowhere else).
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The raw lines received so far (none if the child never started).
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    /// Every message received so far, parsed.
    pub fn messages(&self) -> Vec<Value> {
        self.lines().iter().map(|l| parse_json(l)).collect()
    }

    /// Every received message with `method` (requests and notifications), parsed.
    pub fn with_method(&self, method: &str) -> Vec<Value> {
        let messages = self.messages().into_iter();
        messages.filter(|m| m["method"] == method).collect()
    }

    /// Polls what the child received until `found` picks something out of it; panics with
    /// `contract` after `within`.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        contract: &str,
        found: impl Fn(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if let Some(got) = found(&messages) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{contract} (within {within:?}): {messages:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every `tools/call` of tool `name` received, parsed.
    pub fn tool_calls(&self, name: &str) -> Vec<Value> {
        let calls = self.with_method("tools/call").into_iter();
        calls.filter(|m| m["params"]["name"] == name).collect()
    }
}

/// [`fake_child_spec`] with `--log-file` pointing at `log` (whose directory the sandbox
/// lets it write), then `args`.
pub fn logged_fake_child_spec(log: &ChildLog, args: &[&str]) -> Value {
    let mut all = vec!["--log-file", log.path()];
    all.extend(args);
    let mut spec = fake_child_spec(&all);
    spec["sandbox"]["write"] = json!([log.dir()]);
    spec
}

/// A daemon serving each tenant of `ids` from its own fake child, all logging into `log`,
/// started with `args`.
pub async fn logged_daemon(log: &ChildLog, ids: &[&str], args: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    for id in ids {
        clients.write(id, &logged_fake_child_spec(log, &[]));
    }
    let daemon = Daemon::start(&clients, args).await;
    (clients, daemon)
}

/// The params of a child's `sampling/createMessage` asking about `text`.
pub fn sampling_params(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": 5})
}

/// A caller's `CreateMessageResult` saying `text`.
pub fn sampled_result(text: &str) -> Value {
    json!({"role": "assistant", "content": {"type": "text", "text": text}, "model": "e2e"})
}

/// The text a `sampling/createMessage` request asks about (see [`sampling_params`]).
pub fn sampling_text(request: &Value) -> String {
    let text = request["params"]["messages"][0]["content"]["text"].as_str();
    text.unwrap_or_else(|| panic!("a sampling request asks about text: {request:#}"))
        .to_owned()
}

/// The child's pid, from its `pid` tool (both the fake child and `mcp-echo` have one).
pub async fn child_pid(daemon: &Daemon, client_id: &str, session: &str) -> u32 {
    let called = call_tool(daemon, client_id, session, "pid", json!({})).await;
    let text = called["result"]["content"][0]["text"].as_str();
    let text = text.unwrap_or_else(|| panic!("the pid tool must answer with text: {called:#}"));
    text.parse()
        .unwrap_or_else(|e| panic!("the pid tool must answer a number ({e}): {text:?}"))
}

// ---------------------------------------------------------------------------------------------
// The harness's own pure parts
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_joins_data_lines_and_survives_split_chunks() {
        let text =
            ": keep-alive\n\nid: 7\nevent: message\ndata: {\"a\":\r\ndata: 1}\n\ndata: é\n\n";
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for byte in text.as_bytes() {
            events.extend(parser.push(std::slice::from_ref(byte)));
        }
        let want = vec![
            SseEvent {
                id: Some("7".into()),
                event: Some("message".into()),
                data: "{\"a\":\n1}".into(),
            },
            SseEvent {
                data: "é".into(),
                ..SseEvent::default()
            },
        ];
        assert_eq!(events, want);
        assert_eq!(parse_sse(text), want, "the whole-text parser must agree");
    }

    #[test]
    fn listening_lines_give_tenant_and_admin_addresses() {
        let lines = [
            "2026-11-25T08:00:00Z  INFO mcpmux: admin listening on http://127.0.0.1:4001/"
                .to_owned(),
            r#"{"fields":{"message":"listening on http://127.0.0.1:4000/mcp"}}"#.to_owned(),
        ];
        assert_eq!(
            tenant_addr_in(&lines),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            admin_addr_in(&lines),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(tenant_addr_in(&lines[..1]), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Error bodies and raw HTTP (tenant and transport error tests)
// ---------------------------------------------------------------------------------------------

/// Status, `Content-Type` and JSON body of an error answer, for one `assert_eq!` against the
/// whole expected triple (DESIGN §1 `{"error","code"}` bodies, §3 JSON-RPC error bodies).
pub async fn error_parts(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let ctype = content_type(&resp);
    let body = timeout(HTTP_TIMEOUT, resp.bytes())
        .await
        .expect("an error body must complete within HTTP_TIMEOUT")
        .expect("an error body must be readable");
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status} error body must be JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, ctype, value)
}

/// A response read off a raw socket by [`raw_http`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body must be JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `head` (request line and header lines, `\r\n`-separated, without the final blank
/// line) and then `body` on a fresh connection, and reads one response (its body by
/// `Content-Length`). For requests reqwest cannot make: no `Accept` at all, or a
/// `Content-Length` whose body is never sent (proving the daemon answered without reading it).
pub async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut sock = tokio::net::TcpStream::connect(addr)
            .await
            .expect("daemon must accept a TCP connection");
        let mut request = format!("{head}\r\n\r\n").into_bytes();
        request.extend_from_slice(body);
        sock.write_all(&request)
            .await
            .expect("request must be writable");
        let mut buf = Vec::new();
        loop {
            if let Some(resp) = parse_raw_response(&buf) {
                return resp;
            }
            let mut chunk = [0u8; 4096];
            let n = sock
                .read(&mut chunk)
                .await
                .expect("response must be readable");
            assert!(
                n > 0,
                "connection closed before a whole response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(HTTP_TIMEOUT, exchange)
        .await
        .expect("daemon must answer a raw request within HTTP_TIMEOUT without the body")
}

/// A whole response in `buf` (head plus `Content-Length` bytes of body), if it has arrived.
fn parse_raw_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("response head must be ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a response has a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| {
            v.parse().expect("Content-Length must be a number")
        });
    let body = buf.get(end + 4..end + 4 + len)?.to_vec();
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Operations tests (admin, systemd, limits)
// ---------------------------------------------------------------------------------------------

/// Whether `pid` is gone: no `/proc/<pid>`, or an unreaped zombie (dead, only not yet waited
/// for by its parent, e.g. a grandchild reparented to a container's init).
pub fn pid_gone(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|(state, _)| state == 'Z')
}

/// Waits until `pid` is gone (see [`pid_gone`]); `false` if it still runs after `within`.
///
/// The same accepted exception as [`wait_no_process_with_marker`] (a bounded `/proc` poll for
/// the exit of a process that is not ours), for a process known by its pid.
pub async fn wait_pid_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pid_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// GET `path` on the admin listener: status and body text.
pub async fn admin_get(daemon: &Daemon, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", daemon.admin_addr().await);
    let resp = daemon.http().get(url).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("the admin listener must answer GET {path}: {e}"));
    let status = resp.status().as_u16();
    let body = timeout(HTTP_TIMEOUT, resp.text())
        .await
        .expect("an admin body must complete within HTTP_TIMEOUT")
        .expect("an admin body must be readable");
    (status, body)
}

/// `GET /status`, parsed.
pub async fn admin_status(daemon: &Daemon) -> Value {
    let (status, body) = admin_get(daemon, "/status").await;
    assert_eq!(status, 200, "/status must answer 200: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status must be JSON ({e}): {body}"))
}

/// The `/status` entry of `client_id`.
pub fn tenant_status<'a>(status: &'a Value, client_id: &str) -> &'a Value {
    let tenants = status["tenants"].as_array();
    let tenants = tenants.unwrap_or_else(|| panic!("/status must list tenants: {status:#}"));
    let found = tenants.iter().find(|t| t["client_id"] == client_id);
    found.unwrap_or_else(|| panic!("/status must list tenant {client_id}: {status:#}"))
}

/// Asserts `session` of `client_id` still answers a tool call (nothing else was lost);
/// `what` says when.
pub async fn assert_session_works(daemon: &Daemon, client_id: &str, session: &str, what: &str) {
    let called = call_tool(
        daemon,
        client_id,
        session,
        "echo",
        json!({"message": "alive"}),
    )
    .await;
    assert_eq!(
        called["result"]["content"][0]["text"], "alive",
        "{what}: session {session} of {client_id} must serve tool calls: {called:#}"
    );
}

/// POSTs one JSON-RPC message from a caller that accepts only `application/json`.
pub async fn post_json_only(
    daemon: &Daemon,
    client_id: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = daemon
        .http()
        .post(daemon.url())
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .header("X-Client-ID", client_id);
    if let Some(session) = session {
        req = req.header("Mcp-Session-Id", session);
    }
    req.body(body.to_string())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

/// The arguments of `mcpmux serve` on `listen` and `admin` over the clients dir `clients`.
pub fn serve_args<'a>(listen: &'a str, admin: &'a str, clients: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        "--listen",
        listen,
        "--admin-listen",
        admin,
        "--clients",
        clients,
    ]
}

/// A loopback port free at the time of asking (for a program that cannot report an
/// ephemeral bind, or a restart on the same port).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    probe.local_addr().expect("its address").port()
}

/// The fake child's `slow` tool arguments: `ms` long, a progress notification every 100 ms.
pub fn slow_args(ms: u64) -> Value {
    json!({"ms": ms, "steps": (ms / 100).max(1)})
}

/// Starts a `slow` call of `ms` (request id `id`, progress token `id`) in `session` and
/// returns its SSE answer once the first progress notification has arrived: from then on the
/// request is known to be in flight at the child, with no polling.
pub async fn open_slow_call(
    daemon: &Daemon,
    client_id: &str,
    session: &str,
    id: u64,
    ms: u64,
) -> SseStream {
    let params =
        json!({"name": "slow", "arguments": slow_args(ms), "_meta": {"progressToken": id}});
    let req = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let resp = post(daemon, Some(client_id), Some(session), &req).await;
    let mut stream = SseStream::new(resp);
    let first = stream
        .next_message(
            HTTP_TIMEOUT,
            "a slow call must stream its first progress notification",
        )
        .await;
    assert_eq!(
        first["method"], "notifications/progress",
        "the first message of a slow call is its progress: {first:#}"
    );
    stream
}

/// Reads `stream` up to the response to request `id` and returns it.
pub async fn finish_call(stream: &mut SseStream, id: u64, contract: &str) -> Value {
    loop {
        let message = stream.next_message(HTTP_TIMEOUT, contract).await;
        let answered = message.get("result").is_some() || message.get("error").is_some();
        if message["id"] == id && answered {
            return message;
        }
    }
}

/// A Unix datagram socket standing in for systemd's notification socket.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: tokio::net::UnixDatagram,
    /// Every datagram received so far, in order.
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("mcpmux-e2e-notify-")
            .tempdir()
            .expect("a temp dir for NOTIFY_SOCKET must be creatable");
        let path = dir.path().join("notify.sock");
        let std = std::os::unix::net::UnixDatagram::bind(&path)
            .expect("the test must be able to bind its NOTIFY_SOCKET");
        std.set_nonblocking(true).expect("set_nonblocking");
        let sock = tokio::net::UnixDatagram::from_std(std)
            .expect("a bound datagram socket must be adoptable");
        NotifySocket {
            _dir: dir,
            path,
            sock,
            seen: Vec::new(),
        }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("temp path must be UTF-8")
    }

    /// Receives datagrams until one carries the assignment `field` (e.g. `READY=1`), and
    /// returns that datagram. Panics with `contract` (and what did arrive) after `within`.
    pub async fn expect(&mut self, field: &str, within: Duration, contract: &str) -> String {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            let received = timeout_at(deadline, self.sock.recv(&mut buf)).await;
            let Ok(received) = received else {
                panic!(
                    "{contract}: no {field} within {within:?}; received {:?}",
                    self.seen
                );
            };
            let n = received.expect("the notify socket must be readable");
            let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(datagram.clone());
            if notify_has(&datagram, field) {
                return datagram;
            }
        }
    }
}

/// Whether `datagram` (newline-separated `KEY=VALUE` lines) has the line `field`.
pub fn notify_has(datagram: &str, field: &str) -> bool {
    datagram.lines().any(|line| line == field)
}

/// The value of `key` in `datagram`, if present.
pub fn notify_value<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    datagram
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}
