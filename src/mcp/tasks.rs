//! Tasks (2025-11-25) on a shared child: task ids rewritten per session like request ids.
//!
//! A child mints a task id when it accepts a task-augmented request; every session of the
//! tenant talks to the same child, so raw ids would let one session poll, fetch, cancel or
//! list another's tasks. mcpmux therefore hands each session its own unguessable id for the
//! task, remembers which session and which child generation it belongs to, and splices ids
//! both ways: the child's id into `tasks/get|result|cancel` params, the session's id into
//! `CreateTaskResult`, `Task` results, `tasks/list` (filtered to the session's own tasks),
//! `notifications/tasks/status` and `io.modelcontextprotocol/related-task` metadata.
//!
//! A task outlives neither its child nor its session: when the child is replaced its tasks
//! are marked lost (asking about one gets an error saying so, rather than "unknown task"),
//! and a session's tasks go with it. Non-terminal tasks of the live child keep it from being
//! reaped for idleness until their `ttl` runs out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::envelope::{span_of, splice};
use crate::sync::lock;

/// Tasks remembered per tenant at most; the oldest finished ones go first beyond it.
pub const MAX_TASKS: usize = 4096;
/// How long a task without a `ttl` (unlimited) keeps its child from idle reaping at most.
pub const UNLIMITED_TASK_HOLD: Duration = Duration::from_secs(3600);
/// The `_meta` key that ties a message to a task.
pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// The owner key of tasks created by stateless-era callers, who have no session (they
/// share one namespace per tenant; no session id is empty).
pub const STATELESS_OWNER: &str = "";

/// How the child's response to a request is rewritten for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Not about tasks.
    Plain,
    /// A task-augmented request: a `CreateTaskResult` may come back.
    Created,
    /// `tasks/get` or `tasks/cancel`: a `Task`.
    Task,
    /// `tasks/result`: the task's result, with related-task metadata.
    Payload,
    /// `tasks/list`.
    List,
}

impl Reply {
    /// What the answer to request `method` with `params` will be.
    pub fn of(method: &str, params: Option<&RawValue>) -> Self {
        match method {
            "tasks/get" | "tasks/cancel" => Self::Task,
            "tasks/result" => Self::Payload,
            "tasks/list" => Self::List,
            _ if params.is_some_and(is_task_augmented) => Self::Created,
            _ => Self::Plain,
        }
    }

    /// Whether the request's `params.taskId` names a task and must be rewritten.
    pub fn names_a_task(self) -> bool {
        matches!(self, Self::Task | Self::Payload)
    }
}

fn is_task_augmented(params: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Augmented {
        task: Option<IgnoredAny>,
    }
    params.get().contains("\"task\"")
        && serde_json::from_str::<Augmented>(params.get()).is_ok_and(|p| p.task.is_some())
}

/// Why a session's task id cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No such task for this session (never existed, another session's, or forgotten):
    /// JSON-RPC -32602.
    #[error("unknown task {0}")]
    Unknown(String),
    /// The child that ran it is gone: JSON-RPC -32603.
    #[error("task {0} was lost: the MCP server process running it was replaced")]
    Lost(String),
}

impl TaskError {
    /// The JSON-RPC error code for it.
    pub fn code(&self) -> i64 {
        match self {
            Self::Unknown(_) => super::envelope::INVALID_PARAMS,
            Self::Lost(_) => super::envelope::INTERNAL_ERROR,
        }
    }
}

#[derive(Debug)]
struct Entry {
    session: String,
    generation: u64,
    /// The child's id, as raw JSON (a string literal).
    child_raw: Bytes,
    terminal: bool,
    /// Until when a non-terminal task keeps its child alive.
    hold_until: Instant,
    touched: Instant,
}

/// Every task of one tenant, keyed by the id its session sees.
#[derive(Debug, Default)]
pub struct Tasks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_caller: HashMap<String, Entry>,
    /// (generation, child's id decoded) → caller id.
    by_child: HashMap<(u64, String), String>,
}

/// Task statuses after which a task never changes (2025-11-25 tasks).
fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

fn mint() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(format!("task-{}", hex::encode(bytes)))
}

fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn decode(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

#[derive(Deserialize)]
struct TaskFields<'a> {
    #[serde(rename = "taskId", borrow)]
    task_id: Option<&'a RawValue>,
    status: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    ttl: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResultOf<T> {
    result: Option<T>,
}

#[derive(Deserialize)]
struct Created<'a> {
    #[serde(borrow)]
    task: Option<TaskFields<'a>>,
}

#[derive(Deserialize)]
struct Listed<'a> {
    #[serde(borrow)]
    tasks: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WithMeta<'a> {
    #[serde(rename = "_meta", borrow)]
    meta: Option<RelatedMeta<'a>>,
}

#[derive(Deserialize)]
struct RelatedMeta<'a> {
    #[serde(rename = "io.modelcontextprotocol/related-task", borrow)]
    related: Option<TaskFields<'a>>,
}

#[derive(Deserialize)]
struct ParamsOf<T> {
    params: Option<T>,
}

/// `ttl` in ms (a number) as a hold, or the cap for `null`/absent (unlimited).
fn hold_for(ttl: Option<&RawValue>) -> Duration {
    let ms = ttl.and_then(|t| t.get().parse::<f64>().ok());
    match ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => {
            Duration::from_secs_f64(ms / 1000.0).min(UNLIMITED_TASK_HOLD)
        }
        _ => UNLIMITED_TASK_HOLD,
    }
}

impl Tasks {
    /// The response to a task-augmented request of `session` on child `generation`: the
    /// child's task id in `result.task.taskId` replaced by a fresh one for the session.
    /// Anything else (an error, a plain result) is returned unchanged.
    pub fn on_created(&self, session: &str, generation: u64, response: &[u8]) -> Vec<u8> {
        let Ok(parsed) = serde_json::from_slice::<ResultOf<Created<'_>>>(response) else {
            return response.to_vec();
        };
        let Some(task) = parsed.result.and_then(|r| r.task) else {
            return response.to_vec();
        };
        let Some((raw, child)) = task.task_id.and_then(|t| Some((t, decode(t)?))) else {
            return response.to_vec();
        };
        let (Some(span), Some(caller)) = (span_of(response, raw.get()), mint()) else {
            return response.to_vec();
        };
        let now = Instant::now();
        let entry = Entry {
            session: session.to_owned(),
            generation,
            child_raw: Bytes::copy_from_slice(raw.get().as_bytes()),
            terminal: task.status.as_deref().is_some_and(is_terminal),
            hold_until: now + hold_for(task.ttl),
            touched: now,
        };
        {
            let mut inner = lock(&self.inner);
            inner.evict_beyond(MAX_TASKS - 1);
            inner.by_child.insert((generation, child), caller.clone());
            inner.by_caller.insert(caller.clone(), entry);
        }
        splice(response, &mut [(span, quoted(&caller).as_bytes())])
    }

    /// The child's raw id for `session`'s task `caller_id` on the live child `generation`.
    pub fn to_child(
        &self,
        session: &str,
        generation: u64,
        caller_id: &str,
    ) -> Result<Bytes, TaskError> {
        let mut inner = lock(&self.inner);
        let entry = inner
            .by_caller
            .get_mut(caller_id)
            .filter(|e| e.session == session)
            .ok_or_else(|| TaskError::Unknown(caller_id.to_owned()))?;
        if entry.generation != generation {
            return Err(TaskError::Lost(caller_id.to_owned()));
        }
        entry.touched = Instant::now();
        Ok(entry.child_raw.clone())
    }

    /// Rewrites `params.taskId` of a caller's `tasks/get|result|cancel` into the child's id.
    pub fn request_to_child(
        &self,
        session: &str,
        generation: u64,
        message: &[u8],
    ) -> Result<Vec<u8>, TaskError> {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(rename = "taskId", borrow)]
            task_id: Option<&'a RawValue>,
        }
        let parsed = serde_json::from_slice::<ParamsOf<Params<'_>>>(message).ok();
        let raw = parsed.and_then(|p| p.params?.task_id);
        let Some((raw, caller)) = raw.and_then(|r| Some((r, decode(r)?))) else {
            return Err(TaskError::Unknown("(none given)".into()));
        };
        let child = self.to_child(session, generation, &caller)?;
        let span = span_of(message, raw.get()).ok_or(TaskError::Unknown(caller))?;
        Ok(splice(message, &mut [(span, &child[..])]))
    }

    /// A `Task` the child sent (a `tasks/get` or `tasks/cancel` result, or the params of a
    /// `notifications/tasks/status`): the owner session and the message with its id, or
    /// `None` when the task belongs to nobody mcpmux knows (then it must not be delivered).
    fn task_for_caller(
        &self,
        generation: u64,
        message: &[u8],
        fields: &TaskFields<'_>,
    ) -> Option<(String, Vec<u8>)> {
        let raw = fields.task_id?;
        let child = decode(raw)?;
        let mut inner = lock(&self.inner);
        let caller = inner.by_child.get(&(generation, child))?.clone();
        let entry = inner.by_caller.get_mut(&caller)?;
        if let Some(status) = fields.status.as_deref() {
            entry.terminal |= is_terminal(status);
        }
        entry.touched = Instant::now();
        let session = entry.session.clone();
        drop(inner);
        let span = span_of(message, raw.get())?;
        Some((
            session,
            splice(message, &mut [(span, quoted(&caller).as_bytes())]),
        ))
    }

    /// The child's answer to `tasks/get` or `tasks/cancel`: `result.taskId` rewritten for
    /// the session, when the task is `session`'s; otherwise unchanged (an error reply).
    pub fn on_task_result(&self, session: &str, generation: u64, response: &[u8]) -> Vec<u8> {
        let parsed = serde_json::from_slice::<ResultOf<TaskFields<'_>>>(response).ok();
        let Some(fields) = parsed.and_then(|p| p.result) else {
            return response.to_vec();
        };
        match self.task_for_caller(generation, response, &fields) {
            Some((owner, out)) if owner == session => out,
            _ => response.to_vec(),
        }
    }

    /// The child's answer to `tasks/result`: the related-task id in `result._meta`
    /// rewritten for the session.
    pub fn on_task_payload(&self, generation: u64, response: &[u8]) -> Vec<u8> {
        let parsed = serde_json::from_slice::<ResultOf<WithMeta<'_>>>(response).ok();
        let related = parsed.and_then(|p| p.result?.meta?.related);
        match related.and_then(|r| self.task_for_caller(generation, response, &r)) {
            Some((_, out)) => out,
            None => response.to_vec(),
        }
    }

    /// A `notifications/tasks/status`: its owner and the rewritten message; `None` for a
    /// task no session of this tenant created (dropped).
    pub fn on_status(&self, generation: u64, message: &[u8]) -> Option<(String, Vec<u8>)> {
        let parsed = serde_json::from_slice::<ParamsOf<TaskFields<'_>>>(message).ok()?;
        self.task_for_caller(generation, message, &parsed.params?)
    }

    /// A child request or notification carrying related-task metadata in `params._meta`:
    /// the session that owns the task and the message with its id; `None` when it has none
    /// or the task is unknown.
    pub fn related_for_caller(&self, generation: u64, message: &[u8]) -> Option<(String, Vec<u8>)> {
        if !memchr_related(message) {
            return None; // the common case costs one substring scan, not a parse
        }
        let parsed = serde_json::from_slice::<ParamsOf<WithMeta<'_>>>(message).ok()?;
        let related = parsed.params?.meta?.related?;
        self.task_for_caller(generation, message, &related)
    }

    /// The child's `tasks/list` result with only `session`'s tasks, ids rewritten; each
    /// kept entry byte-exact otherwise. Unchanged when it is not a list (an error).
    pub fn on_list(&self, session: &str, generation: u64, response: &[u8]) -> Vec<u8> {
        let parsed = serde_json::from_slice::<ResultOf<Listed<'_>>>(response).ok();
        let Some(list) = parsed.and_then(|p| p.result?.tasks) else {
            return response.to_vec();
        };
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(list.get()) else {
            return response.to_vec();
        };
        let mut kept = Vec::with_capacity(list.get().len());
        kept.push(b'[');
        for item in items {
            let bytes = item.get().as_bytes();
            let Ok(fields) = serde_json::from_slice::<TaskFields<'_>>(bytes) else {
                continue;
            };
            if let Some((owner, out)) = self.task_for_caller(generation, bytes, &fields)
                && owner == session
            {
                if kept.len() > 1 {
                    kept.push(b',');
                }
                kept.extend_from_slice(&out);
            }
        }
        kept.push(b']');
        match span_of(response, list.get()) {
            Some(span) => splice(response, &mut [(span, &kept[..])]),
            None => response.to_vec(),
        }
    }

    /// The child's `response` to a request of `owner` whose answer is of kind `reply`,
    /// rewritten for that caller.
    pub fn for_caller(
        &self,
        reply: Reply,
        owner: &str,
        generation: u64,
        response: Vec<u8>,
    ) -> Vec<u8> {
        match reply {
            Reply::Plain => response,
            Reply::Created => self.on_created(owner, generation, &response),
            Reply::Task => self.on_task_result(owner, generation, &response),
            Reply::Payload => self.on_task_payload(generation, &response),
            Reply::List => self.on_list(owner, generation, &response),
        }
    }

    /// Until when child `generation` is held by its tasks not yet terminal (whose `ttl`
    /// has not run out); `None` when no such task holds it.
    pub fn held_until(&self, generation: u64) -> Option<Instant> {
        let now = Instant::now();
        let inner = lock(&self.inner);
        inner
            .by_caller
            .values()
            .filter(|e| e.generation == generation && !e.terminal && e.hold_until > now)
            .map(|e| e.hold_until)
            .max()
    }

    /// Forgets every task of a session that ended.
    pub fn session_ended(&self, session: &str) {
        let mut inner = lock(&self.inner);
        let gone: Vec<String> = inner
            .by_caller
            .iter()
            .filter(|(_, e)| e.session == session)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            inner.forget(&id);
        }
    }
}

impl Inner {
    fn forget(&mut self, caller: &str) {
        if let Some(entry) = self.by_caller.remove(caller) {
            let child = serde_json::from_slice::<String>(&entry.child_raw).unwrap_or_default();
            self.by_child.remove(&(entry.generation, child));
        }
    }

    /// Keeps at most `max` tasks: finished (or lost) ones least recently used first.
    fn evict_beyond(&mut self, max: usize) {
        while self.by_caller.len() > max {
            let oldest = self
                .by_caller
                .iter()
                .min_by_key(|(_, e)| (!e.terminal, e.touched))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.forget(&id),
                None => return,
            }
        }
    }
}

fn memchr_related(message: &[u8]) -> bool {
    message
        .windows(RELATED_TASK.len())
        .any(|w| w == RELATED_TASK.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn created(child_id: &str) -> Vec<u8> {
        let body = json!({"jsonrpc":"2.0","id":"x","result":{"task":{"taskId":child_id,"status":"working","ttl":60000,"createdAt":"t"}, "z": 1}});
        serde_json::to_vec(&body).unwrap()
    }

    fn v(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn caller_id(tasks: &Tasks, session: &str, generation: u64, child_id: &str) -> String {
        let out = tasks.on_created(session, generation, &created(child_id));
        v(&out)["result"]["task"]["taskId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn created_tasks_get_a_fresh_id_that_only_their_session_can_use() {
        let tasks = Tasks::default();
        let out = tasks.on_created("a", 1, &created("1"));
        let got = v(&out);
        let id = got["result"]["task"]["taskId"].as_str().unwrap().to_owned();
        assert!(id.starts_with("task-") && id.len() > 30, "{id}");
        assert_eq!(got["result"]["z"], 1, "the rest is untouched");
        assert_eq!(
            tasks.to_child("a", 1, &id).unwrap(),
            Bytes::from_static(b"\"1\"")
        );
        assert_eq!(
            tasks.to_child("b", 1, &id),
            Err(TaskError::Unknown(id.clone()))
        );
        assert_eq!(
            tasks.to_child("a", 2, &id),
            Err(TaskError::Lost(id.clone()))
        );
        assert!(
            matches!(tasks.to_child("a", 1, "1"), Err(TaskError::Unknown(_))),
            "raw child ids are not valid"
        );
        let get = format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"tasks/get","params":{{"taskId":"{id}"}}}}"#
        );
        let to_child = tasks.request_to_child("a", 1, get.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(to_child).unwrap(),
            r#"{"jsonrpc":"2.0","id":5,"method":"tasks/get","params":{"taskId":"1"}}"#
        );
        assert!(tasks.request_to_child("b", 1, get.as_bytes()).is_err());
    }

    #[test]
    fn status_reaches_only_the_owner_and_terminal_status_releases_the_child() {
        let tasks = Tasks::default();
        let a = caller_id(&tasks, "a", 1, "7");
        assert!(tasks.held_until(1).is_some());
        let status = br#"{"jsonrpc":"2.0","method":"notifications/tasks/status","params":{"taskId":"7","status":"completed","createdAt":"t"}}"#;
        let (owner, out) = tasks.on_status(1, status).unwrap();
        assert_eq!(owner, "a");
        assert_eq!(v(&out)["params"]["taskId"], a.as_str());
        assert_eq!(tasks.held_until(1), None, "completed tasks hold nothing");
        let stray = br#"{"jsonrpc":"2.0","method":"notifications/tasks/status","params":{"taskId":"8","status":"working"}}"#;
        assert!(
            tasks.on_status(1, stray).is_none(),
            "unknown tasks are not delivered"
        );
        assert!(
            tasks.on_status(2, status).is_none(),
            "another child's ids are other tasks"
        );
    }

    #[test]
    fn lists_are_filtered_to_the_session_and_results_rewritten() {
        let tasks = Tasks::default();
        let a = caller_id(&tasks, "a", 1, "1");
        let b = caller_id(&tasks, "b", 1, "2");
        let list = br#"{"jsonrpc":"2.0","id":3,"result":{"tasks":[{"taskId":"1","status":"working","x":[1, 2]},{"taskId":"2","status":"working"},{"taskId":"9","status":"working"}],"nextCursor":"c"}}"#;
        let out = tasks.on_list("a", 1, list);
        let want = format!(
            r#"{{"jsonrpc":"2.0","id":3,"result":{{"tasks":[{{"taskId":"{a}","status":"working","x":[1, 2]}}],"nextCursor":"c"}}}}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let got = br#"{"jsonrpc":"2.0","id":4,"result":{"taskId":"2","status":"cancelled"}}"#;
        assert_eq!(
            v(&tasks.on_task_result("b", 1, got))["result"]["taskId"],
            b.as_str()
        );
        assert_eq!(
            v(&tasks.on_task_result("a", 1, got))["result"]["taskId"],
            "2",
            "not a's: unchanged"
        );
        let payload = br#"{"jsonrpc":"2.0","id":4,"result":{"content":[],"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"1"}}}}"#;
        let out = v(&tasks.on_task_payload(1, payload));
        assert_eq!(out["result"]["_meta"][RELATED_TASK]["taskId"], a.as_str());
        let ask = br#"{"jsonrpc":"2.0","id":"e1","method":"elicitation/create","params":{"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"2"}}}}"#;
        let (owner, out) = tasks.related_for_caller(1, ask).unwrap();
        assert_eq!(
            (
                owner.as_str(),
                v(&out)["params"]["_meta"][RELATED_TASK]["taskId"].as_str()
            ),
            ("b", Some(b.as_str()))
        );
        tasks.session_ended("b");
        assert!(tasks.related_for_caller(1, ask).is_none());
        assert!(tasks.held_until(1).is_some());
    }

    #[test]
    fn replies_are_classified_by_method_and_task_field() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).unwrap();
        let tasked = raw(r#"{"name":"x","task":{"ttl":1}}"#);
        let plain = raw(r#"{"name":"task","arguments":{"task":1}}"#);
        assert_eq!(Reply::of("tools/call", Some(&tasked)), Reply::Created);
        assert_eq!(Reply::of("tools/call", Some(&plain)), Reply::Plain);
        assert_eq!(Reply::of("tools/call", None), Reply::Plain);
        assert_eq!(Reply::of("tasks/cancel", None), Reply::Task);
        assert_eq!(Reply::of("tasks/list", None), Reply::List);
        assert!(Reply::of("tasks/result", None).names_a_task());
        assert!(!Reply::of("tasks/list", None).names_a_task());
    }

    #[test]
    fn the_table_is_bounded() {
        let tasks = Tasks::default();
        for n in 0..MAX_TASKS + 10 {
            caller_id(&tasks, "a", 1, &n.to_string());
        }
        assert_eq!(lock(&tasks.inner).by_caller.len(), MAX_TASKS);
        assert_eq!(lock(&tasks.inner).by_child.len(), MAX_TASKS);
    }
}
