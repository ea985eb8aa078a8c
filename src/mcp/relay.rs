//! The relay: one child generation of one tenant, shared by all of its sessions.
//!
//! Every request sent to the child gets a fresh child-side id (and, when it asked for
//! progress, a fresh progress token equal to that id); the caller's id and token bytes
//! are kept in the pending map and spliced back into what the child sends. Messages are
//! never re-serialized. Invariant: a pending entry is completed exactly once — by the
//! child's response, by the exit epilogue, or by its [`Call`] being dropped (which tells
//! the child `notifications/cancelled`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::call::{Call, CallEvent, InflightGuard, input_owner};
use super::caps::{self, ClientCaps};
use super::envelope::{
    self, Envelope, EnvelopeError, INTERNAL_ERROR, Kind, MAX_DEPTH, METHOD_NOT_FOUND, span_of,
    splice,
};
use super::exit;
use super::interest::{self, Level, Told};
use super::reverse::ReverseRequests;
use super::session::{Session, Sessions};
use super::slot::{self, Answer, Related};
use super::stateless::{Declared, MISSING_REQUIRED_CLIENT_CAPABILITY, ToolHeaders};
use super::tasks::{Reply, STATELESS_OWNER, TaskError};
use crate::child::{ChildEvent, ChildHandle, ExitInfo, ExitReason};
use crate::clients::{ClientId, Limits};
use crate::sync::lock;

/// Related messages (progress) queued per request before further ones are dropped.
pub const RELATED_QUEUE: usize = 64;
/// JSON-RPC code for a request that timed out (as the MCP SDKs use).
pub const REQUEST_TIMEOUT: i64 = -32001;
/// URL-mode elicitations remembered per child, to send their completion to the asked
/// session only; beyond it the oldest are forgotten (their completion is then dropped).
pub const MAX_ELICITATIONS: usize = 1024;

/// Child generations, so a task id of a replaced child is never taken for the new one's.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

struct Pending {
    orig_id: Bytes,
    orig_token: Option<Bytes>,
    session: Option<Arc<str>>,
    /// Whether the caller's reply can carry messages before the response (it accepts SSE):
    /// only such a reply may be offered the child's own requests.
    streams: bool,
    /// For a stateless caller: what it can be asked through `input_required` rounds.
    asks: Option<ClientCaps>,
    /// For a stateless caller that opted in: the least severe log message it wants.
    log_level: Option<Level>,
    /// When the request was handed to the child, in the order requests were.
    reached: u64,
    /// The way back to the call: related messages, then the reply.
    answer: Answer,
    /// How the response is rewritten for the caller (task ids).
    reply: Reply,
}

/// Whom a caller's request is for, and what its reply can carry.
#[derive(Debug, Default, Clone)]
pub struct CallFor {
    /// The caller's session, if it has one.
    pub session: Option<Arc<str>>,
    /// Whether its reply can carry messages before the response (it accepts SSE).
    pub streams: bool,
    /// For a stateless caller: what it can be asked in `input_required` rounds.
    pub asks: Option<ClientCaps>,
    /// For a stateless caller that opted in: the least severe log message it wants.
    pub log_level: Option<Level>,
}

/// Who a request is for, as the pending map keeps it.
struct Caller {
    orig_id: Bytes,
    orig_token: Option<Bytes>,
    session: Option<Arc<str>>,
    streams: bool,
    asks: Option<ClientCaps>,
    log_level: Option<Level>,
}

impl Caller {
    /// mcpmux itself (its `initialize`): no session, nothing to route to it.
    fn own() -> Self {
        Self {
            orig_id: Bytes::from_static(b"0"),
            orig_token: None,
            session: None,
            streams: false,
            asks: None,
            log_level: None,
        }
    }
}

/// One running child and everything in flight on it.
pub struct Relay {
    client_id: ClientId,
    child: ChildHandle,
    spec_hash: [u8; 32],
    limits: Limits,
    started: Instant,
    next_id: AtomicU64,
    /// Counts requests as they reach the child (see [`Pending::reached`]).
    reached: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    alive: AtomicBool,
    retiring: AtomicBool,
    inflight: AtomicUsize,
    idle_since: Mutex<Instant>,
    exit: OnceLock<ExitInfo>,
    finished: tokio::sync::watch::Sender<bool>,
    sessions: Arc<Sessions>,
    reverse: ReverseRequests,
    idle: Arc<Notify>,
    told: Mutex<Told>,
    generation: u64,
    /// URL-mode elicitation ids → the session that was asked, in asking order.
    elicitations: Mutex<std::collections::VecDeque<(String, Arc<str>)>>,
    /// The `serverInfo` of the child's `initialize` result, as it wrote it.
    server_info: OnceLock<Bytes>,
    /// What the child's tool schemas declare as `Mcp-Param-*` headers.
    tool_headers: ToolHeaders,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("client_id", &self.client_id)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The child is gone.
    #[error("{0}")]
    Gone(String),
    /// The request names a task its caller cannot use.
    #[error("{0}")]
    Task(#[from] TaskError),
}

impl SendError {
    /// The JSON-RPC error code for it.
    pub fn code(&self) -> i64 {
        match self {
            Self::Gone(_) => INTERNAL_ERROR,
            Self::Task(e) => e.code(),
        }
    }
}

impl Relay {
    /// Wraps a freshly spawned child; `idle` is notified whenever the relay goes idle.
    pub fn new(
        client_id: ClientId,
        child: ChildHandle,
        spec_hash: [u8; 32],
        limits: Limits,
        sessions: Arc<Sessions>,
        idle: Arc<Notify>,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            client_id,
            child,
            spec_hash,
            limits,
            started: now,
            next_id: AtomicU64::new(1),
            reached: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            retiring: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            exit: OnceLock::new(),
            finished: tokio::sync::watch::Sender::new(false),
            sessions,
            reverse: ReverseRequests::default(),
            idle,
            told: Mutex::default(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            elicitations: Mutex::default(),
            server_info: OnceLock::new(),
            tool_headers: ToolHeaders::default(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Which child this is among all the tenant's children, ever.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Until when this child's running tasks keep it from idle reaping (`None`: none run).
    pub fn tasks_hold_until(&self) -> Option<Instant> {
        self.sessions.tasks().held_until(self.generation)
    }

    /// Whether (and how) the child is sandboxed.
    pub fn sandbox(&self) -> &crate::child::sandbox::SandboxReport {
        self.child.sandbox()
    }

    /// Hash of the client file the child was started from.
    pub fn spec_hash(&self) -> [u8; 32] {
        self.spec_hash
    }

    /// When the child was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// True while the child runs and no replacement was asked for.
    pub fn usable(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.retiring.load(Ordering::Acquire)
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Since when nothing has been in flight (meaningful only when `inflight() == 0`).
    pub fn idle_since(&self) -> Instant {
        *lock(&self.idle_since)
    }

    /// How the child ended, once it has.
    pub fn exit_info(&self) -> Option<&ExitInfo> {
        self.exit.get()
    }

    /// Stops handing this relay out; the child stops once its in-flight work is done.
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
        if self.inflight() == 0 {
            self.child.stop();
        }
    }

    /// Starts the child's stop sequence now.
    pub fn stop(&self) {
        self.retiring.store(true, Ordering::Release);
        self.child.stop();
    }

    /// Resolves when the child and its process group are gone.
    pub async fn stopped(&self) {
        self.child.stopped().await;
    }

    /// Marks the exit as fully handled (by the owner of [`Relay::run`]).
    pub fn finish(&self) {
        self.finished.send_replace(true);
    }

    /// Resolves once the child exited and [`Relay::finish`] was called.
    pub async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done).await; // the sender lives in self: never closed
    }

    /// Consumes the child's events until it exits; returns how it ended.
    pub async fn run(self: Arc<Self>, mut events: mpsc::Receiver<ChildEvent>) -> ExitInfo {
        while let Some(event) = events.recv().await {
            match event {
                ChildEvent::Line(line) => self.on_line(line),
                ChildEvent::Exited(info) => return self.on_exit(info),
            }
        }
        // The actor always ends with Exited; this covers its task dying instead.
        self.on_exit(ExitInfo {
            reason: ExitReason::Exited,
            code: None,
            signal: None,
            status: "child supervisor ended".into(),
            stderr_tail: self.child.stderr_tail(),
        })
    }

    /// Sends a caller's request (its raw bytes and envelope) for `to` and returns the
    /// pending call.
    pub async fn call(
        self: &Arc<Self>,
        message: &[u8],
        env: &Envelope<'_>,
        to: CallFor,
    ) -> Result<Call, SendError> {
        let orig_id = env.id.map(|id| Bytes::copy_from_slice(id.get().as_bytes()));
        let orig_id = orig_id.unwrap_or_else(|| Bytes::from_static(b"null"));
        let child_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let child_id_text = child_id.to_string();
        let mut edits = Vec::with_capacity(2);
        if let Some(span) = env.id.and_then(|id| span_of(message, id.get())) {
            edits.push((span, child_id_text.as_bytes()));
        }
        let token = envelope::progress_token(env.params);
        let orig_token = token.map(|t| Bytes::copy_from_slice(t.get().as_bytes()));
        if let Some(span) = token.and_then(|t| span_of(message, t.get())) {
            edits.push((span, child_id_text.as_bytes()));
        }
        let mut line = splice(message, &mut edits);
        let method = env.method.as_deref().unwrap_or_default();
        let reply = Reply::of(method, env.params);
        if reply.names_a_task() {
            let owner = to.session.as_deref().unwrap_or(STATELESS_OWNER);
            line = self
                .sessions
                .tasks()
                .request_to_child(owner, self.generation, &line)?;
        }
        let caller = Caller {
            orig_id,
            orig_token,
            session: to.session,
            streams: to.streams,
            asks: to.asks,
            log_level: to.log_level,
        };
        self.send_request(child_id, Bytes::from(line), caller, reply)
            .await
    }

    /// Sends `initialize` with the given raw params; returns the raw `result`.
    pub async fn initialize(
        self: &Arc<Self>,
        params: &str,
        timeout: Duration,
    ) -> Result<Bytes, InitError> {
        let child_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{child_id},"method":"initialize","params":{params}}}"#
        );
        let mut call = self
            .send_request(child_id, line.into(), Caller::own(), Reply::Plain)
            .await
            .map_err(|e| InitError::Failed(e.to_string()))?;
        call.uncancellable(); // initialize must never be cancelled (MCP lifecycle)
        let reply = loop {
            match call.next(timeout).await {
                CallEvent::Related(_) => continue,
                CallEvent::Final(bytes) => break bytes,
                // No caller owns this request, so none can cancel it.
                CallEvent::Cancelled => {
                    return Err(InitError::Failed("initialize was cancelled".into()));
                }
            }
        };
        let result = match init_result(&reply) {
            // The exit epilogue's error reply, not the child's: it died, it did not refuse.
            Err(InitError::Rejected(_)) if !self.alive.load(Ordering::Acquire) => {
                Err(InitError::Failed(self.exit_message()))
            }
            other => other,
        }?;
        if let Some(info) = server_info_of(&result) {
            let _ = self.server_info.set(info); // a child is initialized once
        }
        let note = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        self.child
            .send(note)
            .await
            .map_err(|e| InitError::Failed(e.to_string()))?;
        Ok(result) // the pool brings the child in line with the sessions (`control`) next
    }

    /// The child's `serverInfo` from its `initialize` result, as it wrote it.
    pub fn server_info(&self) -> Option<&Bytes> {
        self.server_info.get()
    }

    /// What the child's tool schemas declare as `Mcp-Param-*` headers, read with a
    /// `tools/list` of mcpmux's own (every page) when not known since the child's last
    /// `notifications/tools/list_changed`. `Err` says why the list could not be read.
    pub async fn tool_declarations(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<Arc<Declared>, String> {
        let page = |cursor: Option<String>| async move {
            let params = cursor.map_or_else(|| json!({}), |c| json!({"cursor": c}));
            let line = json!({"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": params})
                .to_string();
            match envelope::parse(line.as_bytes()) {
                Ok(env) => self.forward(line.as_bytes(), &env, timeout).await,
                Err(e) => Bytes::from(e.to_string()), // not a reply: read as a failure
            }
        };
        self.tool_headers.get(page).await
    }

    /// The sessions this child serves.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// What this child has been told about subscriptions and logging.
    pub fn told(&self) -> MutexGuard<'_, Told> {
        lock(&self.told)
    }

    /// Sends a request of mcpmux's own (not a caller's) under a fresh id; the child's answer
    /// matches no pending entry and is dropped.
    pub async fn send_own(&self, method: &str, params: serde_json::Value) -> Result<(), SendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.notify(line.to_string().into()).await
    }

    /// Sends a caller's request and waits for the final answer (caller's id restored),
    /// dropping anything related. The call is not tied to the session, so the child's own
    /// requests are never routed onto it.
    pub async fn forward(
        self: &Arc<Self>,
        message: &[u8],
        env: &Envelope<'_>,
        timeout: Duration,
    ) -> Bytes {
        let mut call = match self.call(message, env, CallFor::default()).await {
            Ok(call) => call,
            Err(e) => {
                let id = env.id.map_or("null", |id| id.get());
                return envelope::error_response(id, INTERNAL_ERROR, &e.to_string(), None).into();
            }
        };
        loop {
            if let CallEvent::Final(reply) = call.next(timeout).await {
                return reply;
            }
        }
    }

    /// Forwards a caller's notification (already rewritten if needed).
    pub async fn notify(&self, line: Bytes) -> Result<(), SendError> {
        self.child
            .send(line)
            .await
            .map_err(|e| SendError::Gone(e.to_string()))
    }

    /// A caller's `notifications/cancelled` for its own in-flight request: forgets the
    /// request (whatever the child still sends for it is dropped, and its [`Call`] ends with
    /// [`CallEvent::Cancelled`]) and returns the child-side id to cancel. Forgetting it here
    /// is what keeps the child from getting a second cancellation when the caller then
    /// closes the reply.
    pub fn cancel_for_caller(&self, session: &str, orig_id: &str) -> Option<u64> {
        let mut pending = lock(&self.pending);
        let child_id = pending
            .iter()
            .find(|(_, p)| p.session.as_deref() == Some(session) && p.orig_id == orig_id.as_bytes())
            .map(|(id, _)| *id)?;
        pending.remove(&child_id);
        Some(child_id)
    }

    /// Sends `(child id, line, caller's id, caller's progress token)`.
    async fn send_request(
        self: &Arc<Self>,
        child_id: u64,
        line: Bytes,
        caller: Caller,
        reply: Reply,
    ) -> Result<Call, SendError> {
        let orig_id = caller.orig_id.clone();
        let (answer, answers) = slot::slot();
        let guard = InflightGuard::new(self.clone());
        {
            let mut pending = lock(&self.pending);
            // Checked under the lock the exit epilogue takes: no entry can be stranded.
            if !self.alive.load(Ordering::Acquire) {
                return Err(SendError::Gone(self.exit_message()));
            }
            let entry = Pending {
                orig_id: caller.orig_id,
                orig_token: caller.orig_token,
                session: caller.session,
                streams: caller.streams,
                asks: caller.asks,
                log_level: caller.log_level,
                // Stamped as it is queued for the child, under the lock: a request the child
                // logged is always older than one that arrives after that.
                reached: self.reached.fetch_add(1, Ordering::Relaxed),
                answer,
                reply,
            };
            pending.insert(child_id, entry);
        }
        let call = Call::new(self.clone(), child_id, orig_id, answers, guard);
        if let Err(e) = self.child.send(line).await {
            return Err(SendError::Gone(format!("{}: {e}", self.exit_message())));
        }
        Ok(call)
    }

    fn exit_message(&self) -> String {
        match self.exit.get() {
            Some(info) => format!("child process exited ({})", info.status),
            None => "child process is not running".into(),
        }
    }

    /// Routes one line the child wrote (a response, notification or request of its own).
    pub fn on_line(&self, line: Bytes) {
        let env = match envelope::parse(&line) {
            Ok(env) => env,
            Err(EnvelopeError::TooDeep) => return self.on_too_deep(&line),
            Err(e) => {
                warn!(client_id = %self.client_id, error = %e, "child wrote an invalid message; dropped");
                return;
            }
        };
        match env.kind {
            Kind::Result | Kind::Error => self.on_response(&line, &env),
            Kind::Notification => self.on_notification(&line, &env),
            Kind::Request => self.on_child_request(&line, &env),
        }
    }

    /// A line nested deeper than callers may receive: the request it answers fails at
    /// once, naming the cause; anything else is logged and dropped.
    fn on_too_deep(&self, line: &[u8]) {
        let answered = envelope::parse_any_depth(line)
            .ok()
            .filter(|env| matches!(env.kind, Kind::Result | Kind::Error))
            .and_then(|env| env.id?.get().parse::<u64>().ok())
            .and_then(|n| lock(&self.pending).remove(&n));
        let Some(entry) = answered else {
            warn!(client_id = %self.client_id, bytes = line.len(), "child wrote a message nested deeper than {MAX_DEPTH} levels; dropped");
            return;
        };
        warn!(client_id = %self.client_id, "child answered with a message nested deeper than {MAX_DEPTH} levels; the request fails");
        let message = format!(
            "the child's response is nested deeper than {MAX_DEPTH} levels; mcpmux does not relay it"
        );
        let id = String::from_utf8_lossy(&entry.orig_id);
        let error = envelope::error_response(&id, INTERNAL_ERROR, &message, None);
        entry.answer.finish(error.into()); // the caller may have gone; nothing to do
    }

    fn on_response(&self, line: &[u8], env: &Envelope<'_>) {
        let Some(id) = env.id else {
            warn!(client_id = %self.client_id, message = %String::from_utf8_lossy(line), "child sent an error without id");
            return;
        };
        let entry = id
            .get()
            .parse::<u64>()
            .ok()
            .and_then(|n| lock(&self.pending).remove(&n));
        let Some(entry) = entry else {
            debug!(client_id = %self.client_id, id = id.get(), "response for no pending request; dropped");
            return;
        };
        let restored = match span_of(line, id.get()) {
            Some(span) => splice(line, &mut [(span, &entry.orig_id[..])]),
            None => line.to_vec(),
        };
        if let Some(session) = &entry.session
            && env.kind == Kind::Error
        {
            // -32042 hands the caller URL-mode elicitations: their completion is its.
            for id in required_elicitations(line) {
                self.remember_elicitation(id, session.clone());
            }
        }
        let owner = entry.session.as_deref().unwrap_or(STATELESS_OWNER);
        let restored =
            (self.sessions.tasks()).for_caller(entry.reply, owner, self.generation, restored);
        entry.answer.finish(restored.into()); // the caller may have gone; nothing to do
    }

    fn on_notification(&self, line: &Bytes, env: &Envelope<'_>) {
        match env.method.as_deref() {
            Some("notifications/progress") => self.on_progress(line, env),
            Some("notifications/cancelled") => self.on_child_cancelled(line, env),
            Some(method @ "notifications/resources/updated") => {
                let uri = interest::uri_of(env.params).unwrap_or_default();
                let reached = self.sessions.notify_subscribers(&uri, line);
                let listening = self.sessions.listens().notify(method, Some(&uri), line);
                debug!(client_id = %self.client_id, uri, reached, listening, "resource updated");
            }
            Some("notifications/message") => {
                let level = interest::level_of(env.params).and_then(|(_, level)| level);
                let reached = self.sessions.notify_log(level, line);
                let to_call = self.log_to_call(level, line);
                debug!(client_id = %self.client_id, ?level, reached, to_call, "child log message");
            }
            Some(method @ "notifications/tasks/status") => {
                // Only the task's owner hears about it; another child's or an unknown task's
                // status is nobody's.
                let tasks = self.sessions.tasks();
                if let Some((owner, out)) = tasks.on_status(self.generation, line) {
                    self.sessions.notify_one(&owner, method, &out);
                }
            }
            Some(method @ "notifications/elicitation/complete") => {
                let asked = elicitation_id(env.params).and_then(|id| self.take_elicitation(&id));
                if let Some(session) = asked {
                    self.sessions.notify_one(&session, method, line);
                }
            }
            method => {
                // list_changed and anything unknown: every session whose revision has it,
                // once, on its GET stream.
                // list_changed also to the listeners that asked for that kind.
                let method = method.unwrap_or_default();
                if method == "notifications/tools/list_changed" {
                    self.tool_headers.invalidate();
                }
                let reached = self.sessions.notify_all(method, line);
                let listening = self.sessions.listens().notify(method, None, line);
                debug!(client_id = %self.client_id, method, reached, listening, "child notification");
            }
        }
    }

    fn on_progress(&self, line: &[u8], env: &Envelope<'_>) {
        let Some(token) = envelope::notified_progress_token(env.params) else {
            return;
        };
        let Ok(n) = token.get().parse::<u64>() else {
            return;
        };
        let pending = lock(&self.pending);
        // Progress for a finished or unknown request is dropped (MCP progress rules).
        let Some(entry) = pending.get(&n) else { return };
        let Some(orig) = &entry.orig_token else {
            return;
        };
        let Some(span) = span_of(line, token.get()) else {
            return;
        };
        let out = Bytes::from(splice(line, &mut [(span, &orig[..])]));
        if !entry.answer.offer(out) {
            debug!(client_id = %self.client_id, "progress dropped: caller is not keeping up");
        }
    }

    fn on_child_request(&self, line: &[u8], env: &Envelope<'_>) {
        let Some(id) = env.id else { return };
        let method = env.method.as_deref().unwrap_or_default();
        let can = |s: &Session| s.caps.can_answer(method, env.params);
        // `inputRequests` may hold only sampling, elicitation and roots requests.
        let asks = |c: &ClientCaps| method != "ping" && c.can_answer(method, env.params);
        // A request about a task goes to the task's owner (its id rewritten), or nowhere.
        let tasks = self.sessions.tasks();
        let delivered = match tasks.related_for_caller(self.generation, line) {
            Some((owner, out)) => {
                let env = envelope::parse(&out).ok();
                let child_id = env.as_ref().and_then(|e| e.id).map(|i| i.get());
                let only = |s: &Session| *s.id == *owner && can(s);
                let nobody = |_: &ClientCaps| false;
                child_id.and_then(|child_id| self.forward_to_caller(&out, child_id, only, nobody))
            }
            None => {
                let asked = self.ask_in_flight(line, id.get(), can, asks);
                if asked.is_none()
                    && let Some(call) = self.fail_call_lacking(method, env.params)
                {
                    let why = format!("the caller did not declare the capability for {method}");
                    self.refuse_child(&envelope::error_response(
                        id.get(),
                        METHOD_NOT_FOUND,
                        &why,
                        None,
                    ));
                    self.cancel_at_child(call, "the caller lacks a capability the request needs");
                    return;
                }
                asked.or_else(|| self.ask_on_get(line, id.get(), can))
            }
        };
        if let Some(session) = delivered {
            if method == "elicitation/create"
                && let Some(id) = elicitation_id(env.params)
            {
                self.remember_elicitation(id, session);
            }
            return;
        }
        let reply = if method == "ping" {
            format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id.get()).into_bytes()
        } else {
            let message = format!("no caller of this tenant can answer {method}");
            envelope::error_response(id.get(), METHOD_NOT_FOUND, &message, None)
        };
        self.refuse_child(&reply);
    }

    /// Answers a child's request at once (never leave the child waiting).
    fn refuse_child(&self, reply: &[u8]) {
        if self.child.try_send(Bytes::copy_from_slice(reply)).is_err() {
            debug!(client_id = %self.client_id, "could not answer the child's request: input queue full");
        }
    }

    /// When the caller request that reached the child most recently is a stateless call
    /// that could be asked in rounds, but not for the child's request `method` (nobody that
    /// can answer took it): that call is answered -32021 naming the capability it lacks
    /// (2026-07-28: a server needing an undeclared client capability), and its child-side
    /// id is returned, for the caller is done with it. `None` leaves routing as it was.
    ///
    /// Not for `roots/list`: children ask for roots unprompted (server-everything does as it
    /// starts, during whatever call comes first), so the call need not depend on it; the
    /// child alone is refused, as a session-era client without roots would.
    fn fail_call_lacking(&self, method: &str, params: Option<&RawValue>) -> Option<u64> {
        if method == "roots/list" {
            return None;
        }
        let required = caps::required_for(method, params)?;
        let (child_id, entry) = {
            let mut pending = lock(&self.pending);
            let latest = pending
                .iter()
                .filter(|(_, p)| p.session.is_some() || p.asks.is_some())
                .max_by_key(|(_, p)| p.reached)
                .filter(|(_, p)| p.session.is_none())
                .map(|(n, _)| *n)?;
            (latest, pending.remove(&latest)?)
        };
        let id = String::from_utf8_lossy(&entry.orig_id);
        let message = format!(
            "serving this request needs the client capability to answer {method}, which it did not declare"
        );
        let data = json!({ "requiredCapabilities": required });
        let code = MISSING_REQUIRED_CLIENT_CAPABILITY;
        let error = envelope::error_response(&id, code, &message, Some(&data));
        entry.answer.finish(error.into()); // the caller may have gone; nothing to do
        debug!(client_id = %self.client_id, method, "child request needs a capability its caller lacks");
        Some(child_id)
    }

    /// Sends a child request to one caller that can answer it: [`Self::ask_in_flight`],
    /// else [`Self::ask_on_get`]. Returns the owner that took it; `None` when none can.
    fn forward_to_caller(
        &self,
        line: &[u8],
        child_id: &str,
        can: impl Fn(&Session) -> bool,
        asks: impl Fn(&ClientCaps) -> bool,
    ) -> Option<Arc<str>> {
        let asked = self.ask_in_flight(line, child_id, &can, &asks);
        asked.or_else(|| self.ask_on_get(line, child_id, &can))
    }

    /// Sends a child request on the reply of the request that reached the child most
    /// recently among those whose caller can take it (a session's SSE reply whose session
    /// `can`, or a stateless call whose declared capabilities `asks` allows, which asks in
    /// an `input_required` round). Returns the owner that took it (a session id, or the
    /// stateless call's [`input_owner`]).
    ///
    /// A stdio child does not say which call caused its request; "most recent" is exact
    /// when calls reach the child one after the other, a guess when they overlap.
    fn ask_in_flight(
        &self,
        line: &[u8],
        child_id: &str,
        can: impl Fn(&Session) -> bool,
        asks: impl Fn(&ClientCaps) -> bool,
    ) -> Option<Arc<str>> {
        let span = span_of(line, child_id)?;
        for (owner, related) in self.inflight_callers(&can, &asks) {
            let caller_id = self.reverse.register(child_id, owner.clone());
            let out = Bytes::from(splice(
                line,
                &mut [(span.clone(), caller_id.to_string().as_bytes())],
            ));
            if related.offer(out) {
                return Some(owner);
            }
            self.reverse.forget(caller_id);
        }
        None
    }

    /// Sends a child request on the GET stream of a session that `can` answer it.
    fn ask_on_get(
        &self,
        line: &[u8],
        child_id: &str,
        can: impl Fn(&Session) -> bool,
    ) -> Option<Arc<str>> {
        let span = span_of(line, child_id)?;
        for session in self.sessions.with_live_get(&can) {
            let caller_id = self.reverse.register(child_id, session.id.clone());
            let out = splice(
                line,
                &mut [(span.clone(), caller_id.to_string().as_bytes())],
            );
            if session.push(&out) {
                return Some(session.id.clone());
            }
            self.reverse.forget(caller_id);
        }
        None
    }

    fn remember_elicitation(&self, id: String, session: Arc<str>) {
        let mut asked = lock(&self.elicitations);
        if asked.len() >= MAX_ELICITATIONS {
            asked.pop_front();
        }
        asked.push_back((id, session));
    }

    /// The session asked for URL-mode elicitation `id`, forgetting it (it completes once).
    fn take_elicitation(&self, id: &str) -> Option<Arc<str>> {
        let mut asked = lock(&self.elicitations);
        let at = asked.iter().position(|(e, _)| e == id)?;
        asked.remove(at).map(|(_, session)| session)
    }

    /// The requests in flight whose caller can be asked, most recently reached
    /// first, each with its owner (session, or the stateless call's [`input_owner`]) and
    /// reply channel.
    fn inflight_callers(
        &self,
        can: impl Fn(&Session) -> bool,
        asks: impl Fn(&ClientCaps) -> bool,
    ) -> Vec<(Arc<str>, Related)> {
        let mut found: Vec<(u64, Arc<str>, Related)> = {
            let pending = lock(&self.pending);
            pending
                .iter()
                .filter_map(|(id, p)| match (&p.session, p.asks) {
                    (Some(session), _) if p.streams => {
                        Some((p.reached, session.clone(), p.answer.related()))
                    }
                    (None, Some(caps)) if asks(&caps) => {
                        Some((p.reached, input_owner(*id), p.answer.related()))
                    }
                    _ => None,
                })
                .collect()
        };
        // Sessions' capabilities are looked up outside the pending lock.
        found.retain(|(_, owner, _)| {
            owner.starts_with("call-") || self.sessions.get(owner).is_some_and(|s| can(&s))
        });
        found.sort_by_key(|(reached, _, _)| std::cmp::Reverse(*reached));
        found
            .into_iter()
            .map(|(_, owner, related)| (owner, related))
            .collect()
    }

    /// Puts a log message on the reply of the stateless request that opted in to it (its
    /// `_meta` log level admits the message's level) and reached the child most recently:
    /// a stdio child's log line names no request, so the same attribution rule as for the
    /// child's requests. Only replies that stream (SSE) can carry it.
    fn log_to_call(&self, level: Option<Level>, line: &Bytes) -> bool {
        let Some(level) = level else {
            return false; // an unknown level cannot be compared with any request's
        };
        let target = {
            let pending = lock(&self.pending);
            pending
                .values()
                .filter(|p| p.streams)
                .filter(|p| p.log_level.is_some_and(|min| level >= min))
                .max_by_key(|p| p.reached)
                .map(|p| p.answer.related())
        };
        target.is_some_and(|related| related.offer(line.clone()))
    }

    /// Points a pending request's answers at another caller id and progress token (a
    /// stateless retry resuming it), or, with `None`, drops its progress (parked).
    pub(super) fn reassign(&self, child_id: u64, to: Option<(Bytes, Option<Bytes>)>) {
        let mut pending = lock(&self.pending);
        let Some(entry) = pending.get_mut(&child_id) else {
            return;
        };
        match to {
            Some((id, token)) => {
                entry.orig_id = id;
                entry.orig_token = token;
            }
            None => entry.orig_token = None,
        }
    }

    /// Answers the child's request `key` (asked of `owner` in an `input_required` round)
    /// with `result`; false when no such request waits.
    pub async fn answer_input(&self, owner: &str, key: &str, result: &RawValue) -> bool {
        let Some(child_id) = self.reverse.answer(owner, key) else {
            return false;
        };
        let child_id = String::from_utf8_lossy(&child_id);
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{child_id},"result":{}}}"#,
            result.get()
        );
        self.child.send(line.into()).await.is_ok()
    }

    /// Fails the child's request `key` (asked of `owner`) with a JSON-RPC error, at once.
    pub fn refuse_input(&self, owner: &str, key: &str, why: &str) {
        let Some(child_id) = self.reverse.answer(owner, key) else {
            return;
        };
        let child_id = String::from_utf8_lossy(&child_id);
        let reply = envelope::error_response(&child_id, INTERNAL_ERROR, why, None);
        if self.child.try_send(reply.into()).is_err() {
            debug!(client_id = %self.client_id, "could not refuse the child's request: input queue full");
        }
    }

    /// A caller's answer to a child request: restores the child's id and forwards it.
    /// Answers to ids never issued to this session are dropped (false).
    pub async fn answer(&self, session: &str, line: &[u8], env: &Envelope<'_>) -> bool {
        let Some(id) = env.id else { return false };
        let Some(child_id) = self.reverse.answer(session, id.get()) else {
            return false;
        };
        let Some(span) = span_of(line, id.get()) else {
            return false;
        };
        let out = Bytes::from(splice(line, &mut [(span, &child_id[..])]));
        self.child.send(out).await.is_ok()
    }

    /// A child's cancellation of its own request to a caller: sent to that caller.
    fn on_child_cancelled(&self, line: &[u8], env: &Envelope<'_>) {
        let Some(request_id) = envelope::cancelled_request_id(env.params) else {
            return;
        };
        let Some((session, caller_id)) = self.reverse.cancel(request_id.get()) else {
            return;
        };
        let Some(span) = span_of(line, request_id.get()) else {
            return;
        };
        let out = splice(line, &mut [(span, caller_id.to_string().as_bytes())]);
        if let Some(session) = self.sessions.get(&session) {
            session.push(&out);
        }
    }

    fn on_exit(&self, info: ExitInfo) -> ExitInfo {
        let drained: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            self.alive.store(false, Ordering::Release);
            pending.drain().map(|(_, p)| p).collect()
        };
        let (message, data) = self.exit_report(&info);
        for entry in drained {
            let id = String::from_utf8_lossy(&entry.orig_id).into_owned();
            let reply = envelope::error_response(&id, INTERNAL_ERROR, &message, Some(&data));
            entry.answer.finish(reply.into());
        }
        let _ = self.exit.set(info.clone());
        info
    }

    /// Forgets a request its caller gave up on; tells the child when it may be cancelled.
    pub(super) fn abandon(&self, child_id: u64, cancellable: bool, reason: &str) {
        let Some(_) = lock(&self.pending).remove(&child_id) else {
            return;
        };
        if cancellable {
            self.cancel_at_child(child_id, reason);
        }
    }

    /// Tells a live child `notifications/cancelled` for its request `child_id`.
    fn cancel_at_child(&self, child_id: u64, reason: &str) {
        if !self.alive.load(Ordering::Acquire) {
            return;
        }
        let note = json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": child_id, "reason": reason },
        });
        if self.child.try_send(note.to_string().into()).is_err() {
            debug!(client_id = %self.client_id, "cancellation not sent: input queue full");
        }
    }
}

impl Relay {
    /// The `rlimit_*` limits the child runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Message and `error.data` for failures caused by the child's exit (see [`exit`]).
    fn exit_report(&self, info: &ExitInfo) -> (String, serde_json::Value) {
        exit::report(info, &self.limits)
    }

    /// Counts a request in (held by a call's in-flight guard).
    pub(super) fn enter(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a request out; the last one out marks the relay idle.
    pub(super) fn leave(&self) {
        *lock(&self.idle_since) = Instant::now();
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if self.retiring.load(Ordering::Acquire) {
                self.child.stop(); // a replaced child finishes its work, then goes
            }
            self.idle.notify_one();
        }
    }
}

/// Why initializing a child failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The child answered `initialize` with an error (its raw `error` object).
    #[error("child rejected initialize: {0}")]
    Rejected(String),
    /// The child died or did not answer.
    #[error("{0}")]
    Failed(String),
}

/// `params.elicitationId` of a URL-mode elicitation or of its completion.
fn elicitation_id(params: Option<&serde_json::value::RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "elicitationId")]
        elicitation_id: Option<String>,
    }
    serde_json::from_str::<Params>(params?.get())
        .ok()?
        .elicitation_id
}

/// JSON-RPC code of `URLElicitationRequiredError` (2025-11-25).
const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The `elicitationId`s of a `URLElicitationRequiredError` response (none for others).
fn required_elicitations(response: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Reply {
        error: Option<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: i64,
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        #[serde(default)]
        elicitations: Vec<Required>,
    }
    #[derive(serde::Deserialize)]
    struct Required {
        #[serde(rename = "elicitationId")]
        elicitation_id: Option<String>,
    }
    let Ok(Reply { error: Some(error) }) = serde_json::from_slice(response) else {
        return Vec::new();
    };
    if error.code != URL_ELICITATION_REQUIRED {
        return Vec::new();
    }
    let required = error.data.map(|d| d.elicitations).unwrap_or_default();
    required
        .into_iter()
        .filter_map(|r| r.elicitation_id)
        .collect()
}

/// The raw `serverInfo` of an `initialize` result, when it is an object.
fn server_info_of(result: &[u8]) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct InitResult<'a> {
        #[serde(borrow, rename = "serverInfo")]
        server_info: Option<&'a serde_json::value::RawValue>,
    }
    let info = serde_json::from_slice::<InitResult<'_>>(result)
        .ok()?
        .server_info?;
    info.get()
        .starts_with('{')
        .then(|| Bytes::copy_from_slice(info.get().as_bytes()))
}

fn init_result(reply: &[u8]) -> Result<Bytes, InitError> {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        result: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        error: Option<&'a serde_json::value::RawValue>,
    }
    let parsed: Reply<'_> =
        serde_json::from_slice(reply).map_err(|e| InitError::Failed(e.to_string()))?;
    match (parsed.result, parsed.error) {
        (Some(result), _) => Ok(Bytes::copy_from_slice(result.get().as_bytes())),
        (None, Some(error)) => Err(InitError::Rejected(error.get().to_string())),
        (None, None) => Err(InitError::Failed("empty reply to initialize".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_elicitations_required_by_an_error_are_found() {
        let required = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32042,"message":"m","data":{"elicitations":[{"mode":"url","elicitationId":"e1","url":"u","message":"m"},{"mode":"url"}]}}}"#;
        assert_eq!(required_elicitations(required), ["e1"]);
        let other = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"m","data":{"elicitations":[{"elicitationId":"e1"}]}}}"#;
        assert!(required_elicitations(other).is_empty());
        assert!(required_elicitations(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#).is_empty());
    }

    #[test]
    fn elicitation_ids_are_read_from_params() {
        let params = serde_json::value::RawValue::from_string(
            r#"{"mode":"url","elicitationId":"x"}"#.into(),
        )
        .unwrap();
        assert_eq!(elicitation_id(Some(&params)).as_deref(), Some("x"));
        assert_eq!(elicitation_id(None), None);
    }
}
