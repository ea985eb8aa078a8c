//! Session-era precision on a shared child (README "Sessions on a shared child"): the child
//! is told every client capability mcpmux can route and the newest revision; each session
//! gets its own revision, batches on 2025-03-26, any supported `MCP-Protocol-Version`; the
//! child's requests reach only a session with that exact sub-capability; task ids are per
//! session; `notifications/elicitation/complete` reaches only the session that was asked.
//!
//! The child is the raw fixture `tests/fixtures/fake_child.py` (its `received` tool reports
//! what mcpmux sent it; `ask` sends a request to "the client"; `send` writes any message), and
//! for the first acceptance check server-everything with the Python SDK. Ordering is the
//! synchronisation: the child writes in order and each stream delivers in order, so a
//! broadcast sentinel written last bounds "nothing else came" on another session's stream.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::{Instant, timeout};

use crate::interop::{ensure_setup, venv_python};
use crate::util::{
    Daemon, SseEvent, SseStream, TempClients, admin_status, fake_child_spec, initialize,
    initialize_params, initialize_with, mcp_request, messages, post, repo_root, tenant_status,
};

const TENANT: &str = "era";
/// Bound for one event on an open stream (the child sends it within milliseconds).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for a Python SDK run (venv start, node child, handshake, two tool calls).
const SDK_TIMEOUT: Duration = Duration::from_secs(90);

async fn fake_daemon(child_args: &[&str], daemon_args: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write(TENANT, &fake_child_spec(child_args));
    let daemon = Daemon::start(&clients, daemon_args).await;
    (clients, daemon)
}

/// A session that asked for `version` and declared `capabilities`; returns its id and the
/// version it was told.
async fn session(daemon: &Daemon, version: &str, capabilities: Value) -> (String, String) {
    let mut params = initialize_params();
    params["protocolVersion"] = json!(version);
    params["capabilities"] = capabilities;
    let (id, result) = initialize_with(daemon, TENANT, params).await;
    let told = result["protocolVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (id, told)
}

async fn get_stream(daemon: &Daemon, session: &str) -> SseStream {
    let req = mcp_request(daemon, reqwest::Method::GET, Some(TENANT), Some(session));
    SseStream::new(req.send().await.expect("daemon must answer a GET to /mcp"))
}

/// The next event that carries a message (priming events skipped).
async fn next_message(stream: &mut SseStream, contract: &str) -> Value {
    loop {
        let event = stream.next_event(EVENT_TIMEOUT, contract).await;
        let SseEvent { data, .. } = event.unwrap_or_else(|| panic!("stream ended: {contract}"));
        if !data.is_empty() {
            return serde_json::from_str(&data).expect("SSE data must be JSON");
        }
    }
}

/// POSTs `body` (any bytes) in `session` with extra headers; returns the response unread.
async fn post_raw(
    daemon: &Daemon,
    session: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut req = mcp_request(daemon, reqwest::Method::POST, Some(TENANT), Some(session))
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(body.to_owned()).send().await.unwrap()
}

/// One request in `session`; returns its response message.
async fn request(daemon: &Daemon, session: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp = post(daemon, Some(TENANT), Some(session), &body).await;
    assert_eq!(resp.status(), 200, "{method} must be answered with 200");
    let all = messages(resp).await;
    all.into_iter()
        .find(|m| m["id"] == 1 && (m.get("result").is_some() || m.get("error").is_some()))
        .unwrap_or_else(|| panic!("no response to {method}"))
}

async fn tool(daemon: &Daemon, session: &str, name: &str, arguments: Value) -> Value {
    request(
        daemon,
        session,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
    .await
}

/// Params of every `method` message the child received so far (waiting for `count`).
async fn child_received(daemon: &Daemon, session: &str, method: &str, count: usize) -> Vec<Value> {
    let got = tool(
        daemon,
        session,
        "received",
        json!({"method": method, "count": count}),
    )
    .await;
    got["result"]["received"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Answers a child request that arrived on a session's stream with `result`.
async fn answer(daemon: &Daemon, session: &str, asked: &Value, result: Value) {
    let reply = json!({"jsonrpc": "2.0", "id": asked["id"], "result": result});
    let resp = post(daemon, Some(TENANT), Some(session), &reply).await;
    assert_eq!(
        resp.status(),
        202,
        "an answer to a child request is accepted with 202"
    );
}

/// Runs `ask` (the child sends `method` with `params` to a client) from `session` in the
/// background; the returned handle yields the tool result (`answer` is what came back).
fn ask_in_background(
    daemon: &Daemon,
    session: &str,
    method: &str,
    params: Value,
) -> tokio::task::JoinHandle<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "ask", "arguments": {"method": method, "params": params, "ms": 8000}}});
    let req = mcp_request(daemon, reqwest::Method::POST, Some(TENANT), Some(session))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        let all = messages(resp).await;
        let reply = all
            .iter()
            .find(|m| m["id"] == 1 && m.get("result").is_some());
        reply.unwrap_or_else(|| panic!("ask must end with a result: {all:?}"))["result"].clone()
    })
}

fn url_elicitation(id: &str) -> Value {
    json!({"mode": "url", "message": "open it", "url": "https://auth.example/x", "elicitationId": id})
}

fn tool_sampling() -> Value {
    json!({"messages": [], "maxTokens": 5, "tools": [{"name": "t", "inputSchema": {"type": "object"}}]})
}

fn form_elicitation() -> Value {
    json!({"message": "name?", "requestedSchema": {"type": "object", "properties": {"n": {"type": "string"}}}})
}

// ---------------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_child_is_told_every_routable_capability_whoever_initializes_first() {
    let (_clients, daemon) = fake_daemon(&[], &[]).await;
    // A health probe: no capabilities at all, an old revision.
    let (probe, told) = session(&daemon, "2025-03-26", json!({})).await;
    assert_eq!(
        told, "2025-03-26",
        "a session is answered with the revision it asked for"
    );
    let init = child_received(&daemon, &probe, "initialize", 1).await;
    assert_eq!(init.len(), 1, "the child is initialized once: {init:?}");
    assert_eq!(
        init[0]["protocolVersion"], "2025-11-25",
        "the newest revision: {init:?}"
    );
    let caps = &init[0]["capabilities"];
    assert_eq!(caps["sampling"]["tools"], json!({}), "{caps}");
    assert_eq!(
        caps["elicitation"],
        json!({"form": {}, "url": {}}),
        "{caps}"
    );
    assert_eq!(caps["roots"]["listChanged"], true, "{caps}");
    // A later session's roots change reaches the child.
    let (rooted, _) = session(
        &daemon,
        "2025-11-25",
        json!({"roots": {"listChanged": true}}),
    )
    .await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"});
    let resp = post(&daemon, Some(TENANT), Some(&rooted), &note).await;
    assert_eq!(resp.status(), 202);
    let seen = child_received(&daemon, &rooted, "notifications/roots/list_changed", 1).await;
    assert_eq!(
        seen.len(),
        1,
        "notifications/roots/list_changed must reach the child"
    );
}

#[tokio::test]
async fn child_requests_reach_only_a_session_that_declared_the_exact_sub_capability() {
    let (_clients, daemon) = fake_daemon(&[], &[]).await;
    let form_caps = json!({"elicitation": {"form": {}}, "sampling": {}});
    let (form, _) = session(&daemon, "2025-11-25", form_caps).await;
    let mut form_get = get_stream(&daemon, &form).await;
    // Alone, the form-only session cannot take a URL elicitation: the child is refused at once.
    let alone = ask_in_background(
        &daemon,
        &form,
        "elicitation/create",
        url_elicitation("el-0"),
    );
    let alone = timeout(EVENT_TIMEOUT, alone).await.unwrap().unwrap();
    assert_eq!(alone["content"][0]["text"], "answered", "{alone:#}");
    assert!(
        alone["answer"]["error"]["code"].is_i64(),
        "the child must get an error at once: {alone:#}"
    );

    let rich_caps = json!({"elicitation": {"url": {}}, "sampling": {"tools": {}}});
    let (rich, _) = session(&daemon, "2025-11-25", rich_caps).await;
    let mut rich_get = get_stream(&daemon, &rich).await;
    for (method, params) in [
        ("elicitation/create", url_elicitation("el-1")),
        ("sampling/createMessage", tool_sampling()),
    ] {
        // Asked from the form-only session, answered by the one that declared it.
        let call = ask_in_background(&daemon, &form, method, params.clone());
        let asked = next_message(&mut rich_get, "the capable session is asked").await;
        assert_eq!(
            (asked["method"].as_str(), &asked["params"]),
            (Some(method), &params)
        );
        answer(
            &daemon,
            &rich,
            &asked,
            json!({"action": "accept", "by": "rich"}),
        )
        .await;
        let done = timeout(EVENT_TIMEOUT, call).await.unwrap().unwrap();
        assert_eq!(done["answer"]["result"]["by"], "rich", "{method}: {done:#}");
    }
    // And the other way round: a form elicitation goes to the form session.
    let call = ask_in_background(&daemon, &rich, "elicitation/create", form_elicitation());
    let asked = next_message(&mut form_get, "the form session is asked").await;
    assert_eq!(asked["method"], "elicitation/create");
    answer(
        &daemon,
        &form,
        &asked,
        json!({"action": "decline", "by": "form"}),
    )
    .await;
    let done = timeout(EVENT_TIMEOUT, call).await.unwrap().unwrap();
    assert_eq!(done["answer"]["result"]["by"], "form", "{done:#}");

    // The URL elicitation el-1 was the rich session's: its completion goes there only.
    let complete = json!({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
        "params": {"elicitationId": "el-1"}});
    let sent = tool(&daemon, &form, "send", json!({"message": complete})).await;
    assert!(sent.get("result").is_some(), "{sent}");
    let marker = tool(
        &daemon,
        &form,
        "notify",
        json!({"marker": "after-complete"}),
    )
    .await;
    assert!(marker.get("result").is_some(), "{marker}");
    let got = next_message(&mut rich_get, "the asked session hears the completion").await;
    assert_eq!(
        got, complete,
        "byte-exact apart from nothing: it names no id to rewrite"
    );
    let first = next_message(&mut form_get, "the form session hears the sentinel").await;
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "the completion must not reach a session that was not asked: {first}"
    );
}

// ---------------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_get_their_own_revision_on_top_of_the_childs() {
    let (_clients, daemon) = fake_daemon(&["--protocol", "2025-06-18"], &[]).await;
    let (_newest, told) = session(&daemon, "2025-11-25", json!({})).await;
    assert_eq!(
        told, "2025-06-18",
        "a child speaking only 2025-06-18 bounds the session"
    );
    let (_old, told) = session(&daemon, "2025-03-26", json!({})).await;
    assert_eq!(
        told, "2025-03-26",
        "an older revision is served on a newer child"
    );
    let (_odd, told) = session(&daemon, "2030-01-01", json!({})).await;
    assert_eq!(told, "2025-06-18", "an unknown revision gets the child's");
}

#[tokio::test]
async fn an_old_session_is_never_sent_a_message_type_its_revision_lacks() {
    let (_clients, daemon) = fake_daemon(&["--tasks"], &[]).await;
    // 2025-03-26 has no elicitation, whatever the session declares.
    let (old, _) = session(
        &daemon,
        "2025-03-26",
        json!({"elicitation": {}, "sampling": {}}),
    )
    .await;
    let mut old_get = get_stream(&daemon, &old).await;
    // The asks come from a session that can answer nothing, so the old one's GET stream is
    // where a request for it would arrive.
    let (bare, _) = session(&daemon, "2025-11-25", json!({})).await;
    let refused = ask_in_background(&daemon, &bare, "elicitation/create", form_elicitation());
    let refused = timeout(EVENT_TIMEOUT, refused).await.unwrap().unwrap();
    assert!(refused["answer"]["error"].is_object(), "{refused:#}");
    // Sampling exists in 2025-03-26, so that one is asked.
    let sampling = json!({"messages": [], "maxTokens": 1});
    let call = ask_in_background(&daemon, &bare, "sampling/createMessage", sampling);
    let asked = next_message(&mut old_get, "sampling reaches a 2025-03-26 session").await;
    assert_eq!(
        asked["method"], "sampling/createMessage",
        "the elicitation never came: {asked}"
    );
    let sampled =
        json!({"role": "assistant", "model": "m", "content": {"type": "text", "text": "x"}});
    answer(&daemon, &old, &asked, sampled).await;
    let done = timeout(EVENT_TIMEOUT, call).await.unwrap().unwrap();
    assert_eq!(done["answer"]["result"]["model"], "m", "{done:#}");
    // Task status notifications do not exist in 2025-03-26 either, even for a task the
    // session made the child create.
    let created = request(&daemon, &old, "tools/call", task_call(60_000)).await;
    let task_id = created["result"]["task"]["taskId"].clone();
    let cancelled = request(&daemon, &old, "tasks/cancel", json!({"taskId": task_id})).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    tool(&daemon, &old, "notify", json!({"marker": "old"})).await;
    let first = next_message(&mut old_get, "the sentinel arrives").await;
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "{first}"
    );
}

#[tokio::test]
async fn protocol_version_header_may_name_any_supported_revision() {
    let (_clients, daemon) = fake_daemon(&[], &[]).await;
    let session = initialize(&daemon, TENANT).await;
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let resp = post_raw(
        &daemon,
        &session,
        &[("MCP-Protocol-Version", "2025-03-26")],
        list,
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "a TS client sends its oldest supported revision"
    );
    for bad in ["banana", "2025-01-01", "2026-07-28"] {
        let resp = post_raw(&daemon, &session, &[("MCP-Protocol-Version", bad)], list).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], Value::Null, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("2025-11-25, 2025-06-18, 2025-03-26"),
            "the 400 must list the supported revisions: {body}"
        );
    }
    let called = tool(&daemon, &session, "echo", json!({})).await;
    assert_eq!(
        called["result"]["content"][0]["text"], "ok",
        "the session still works"
    );
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_2025_03_26_session_gets_one_array_for_a_batch() {
    let (_clients, daemon) = fake_daemon(&[], &[]).await;
    let (old, _) = session(&daemon, "2025-03-26", json!({})).await;
    let batch = r#"[{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"echo","arguments":{}}},
        {"jsonrpc":"2.0","method":"notifications/roots/list_changed"},
        {"jsonrpc":"2.0","id":7,"method":"ping"}]"#;
    let resp = post_raw(&daemon, &old, &[("Accept", "application/json")], batch).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let array: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(array.len(), 2, "one response per request: {text}");
    assert!(
        text.contains(r#""id":"a-1""#) && text.contains(r#""id":7"#),
        "ids byte-exact: {text}"
    );
    let echo = array.iter().find(|m| m["id"] == "a-1").unwrap();
    assert!(
        echo["result"]["id_seen"].is_u64(),
        "relayed under a child id: {echo}"
    );
    assert_eq!(
        child_received(&daemon, &old, "notifications/roots/list_changed", 1)
            .await
            .len(),
        1
    );

    let notes = r#"[{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}]"#;
    let resp = post_raw(&daemon, &old, &[], notes).await;
    assert_eq!(resp.status(), 202, "a batch without requests");
    assert!(resp.bytes().await.unwrap().is_empty());

    let mixed = r#"[5, {"jsonrpc":"2.0","id":8,"method":"ping"}]"#;
    let resp = post_raw(&daemon, &old, &[("Accept", "application/json")], mixed).await;
    let array: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(array.len(), 2, "{array:?}");
    assert_eq!(
        (&array[0]["id"], &array[0]["error"]["code"]),
        (&Value::Null, &json!(-32600))
    );
    assert_eq!(array[1]["id"], 8);

    let init =
        json!([{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()}]);
    for (case, body) in [
        ("empty", "[]".to_owned()),
        ("initialize inside", init.to_string()),
    ] {
        let resp = post_raw(&daemon, &old, &[], &body).await;
        assert_eq!(resp.status(), 400, "{case}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], -32600, "{case}: {body}");
    }
    let newer = initialize(&daemon, TENANT).await;
    let resp = post_raw(&daemon, &newer, &[], batch).await;
    assert_eq!(resp.status(), 400, "no batches on 2025-11-25");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

fn task_call(ms: u64) -> Value {
    json!({"name": "slow", "arguments": {"ms": ms, "steps": 1}, "task": {"ttl": 60000}})
}

#[tokio::test]
async fn tasks_are_visible_only_to_the_session_that_created_them() {
    let (_clients, daemon) = fake_daemon(&["--tasks"], &[]).await;
    let (a, _) = session(&daemon, "2025-11-25", json!({})).await;
    let (b, _) = session(&daemon, "2025-11-25", json!({})).await;
    let mut a_get = get_stream(&daemon, &a).await;
    let mut b_get = get_stream(&daemon, &b).await;
    let created = request(&daemon, &a, "tools/call", task_call(30_000)).await;
    let task_id = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !task_id.is_empty() && task_id != "1",
        "a per-session id, not the child's: {created}"
    );
    assert_eq!(created["result"]["task"]["status"], "working");

    for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
        for id in [task_id.as_str(), "1"] {
            let got = request(&daemon, &b, method, json!({"taskId": id})).await;
            assert_eq!(
                got["error"]["code"], -32602,
                "{method} {id} from another session: {got}"
            );
        }
    }
    let listed = request(&daemon, &b, "tasks/list", json!({})).await;
    assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
    let listed = request(&daemon, &a, "tasks/list", json!({})).await;
    let ids: Vec<&Value> = listed["result"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["taskId"])
        .collect();
    assert_eq!(ids, [&json!(task_id)], "{listed}");
    let got = request(&daemon, &a, "tasks/get", json!({"taskId": task_id})).await;
    assert_eq!(
        (&got["result"]["taskId"], &got["result"]["status"]),
        (&json!(task_id), &json!("working"))
    );

    let cancelled = request(&daemon, &a, "tasks/cancel", json!({"taskId": task_id})).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let status = next_message(&mut a_get, "the owner hears its task's status").await;
    assert_eq!(status["method"], "notifications/tasks/status", "{status}");
    assert_eq!(
        (&status["params"]["taskId"], &status["params"]["status"]),
        (&json!(task_id), &json!("cancelled"))
    );
    tool(&daemon, &a, "notify", json!({"marker": "tasks"})).await;
    let first = next_message(&mut b_get, "the other session hears the sentinel").await;
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "status must not reach B: {first}"
    );

    // A finished task's result carries the session's id in its related-task metadata.
    let created = request(&daemon, &a, "tools/call", task_call(100)).await;
    let quick = created["result"]["task"]["taskId"].clone();
    let result = request(&daemon, &a, "tasks/result", json!({"taskId": quick})).await;
    assert_eq!(
        result["result"]["content"][0]["text"], "done after 100 ms",
        "{result}"
    );
    assert_eq!(
        result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        quick
    );
}

#[tokio::test]
async fn a_replaced_childs_tasks_fail_with_a_clear_error() {
    let (clients, daemon) = fake_daemon(&["--tasks"], &[]).await;
    let (a, _) = session(&daemon, "2025-11-25", json!({})).await;
    let created = request(&daemon, &a, "tools/call", task_call(60_000)).await;
    let task_id = created["result"]["task"]["taskId"].clone();
    let mark = daemon.log_mark();
    clients.write(
        TENANT,
        &fake_child_spec(&["--tasks", "--protocol", "2025-11-25"]),
    );
    daemon
        .wait_for_log_after(mark, "retiring child", EVENT_TIMEOUT)
        .await
        .expect("the edit must retire the child");
    let got = request(&daemon, &a, "tasks/get", json!({"taskId": task_id})).await;
    assert_eq!(got["error"]["code"], -32603, "{got}");
    let message = got["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("lost"),
        "the error must say the task was lost: {got}"
    );
}

#[tokio::test]
async fn a_child_with_a_running_task_is_not_reaped_for_idleness() {
    let (_clients, daemon) = fake_daemon(&["--tasks"], &["--idle-ttl", "1"]).await;
    let (a, _) = session(&daemon, "2025-11-25", json!({})).await;
    let created = request(&daemon, &a, "tools/call", task_call(60_000)).await;
    let task_id = created["result"]["task"]["taskId"].clone();
    let pid = tenant_status(&admin_status(&daemon).await, TENANT)["pid"].clone();
    // Watch /status (which is no activity) until the child has been idle well past its TTL.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = admin_status(&daemon).await;
        let tenant = tenant_status(&status, TENANT);
        assert_eq!(tenant["pid"], pid, "the child must not be reaped: {tenant}");
        if tenant["idle_secs"].as_f64().is_some_and(|s| s >= 2.5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never became idle: {tenant}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // between polls of /status
    }
    let got = request(&daemon, &a, "tasks/get", json!({"taskId": task_id})).await;
    assert_eq!(got["result"]["status"], "working", "{got}");
}

// ---------------------------------------------------------------------------------------------
// server-everything and the Python SDK
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_capable_sdk_session_after_a_bare_probe_gets_the_trigger_tools_and_is_asked() {
    ensure_setup();
    let clients = TempClients::new();
    clients.write(TENANT, &crate::interop::everything_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    // A health probe initializes the child first, declaring nothing.
    // Its GET stream is open, so it could be asked if routing ignored capabilities.
    let probe = initialize(&daemon, TENANT).await;
    let _probe_get = get_stream(&daemon, &probe).await;

    let script = repo_root().join("tests/interop/sdk_callbacks.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(script)
        .args([
            &daemon.url(),
            "--client-id",
            TENANT,
            "--marker",
            "session-b",
        ])
        .args(["--timeout", &(SDK_TIMEOUT.as_secs() - 10).to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = timeout(SDK_TIMEOUT, cmd.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK client must complete: {stderr}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools = summary["tools"].as_array().unwrap();
    for name in ["trigger-sampling-request", "trigger-elicitation-request"] {
        assert!(
            tools.iter().any(|t| t == name),
            "{name} must be listed: {summary:#}"
        );
    }
    assert_eq!(
        summary["asked"],
        json!({"sampling": 1, "elicitation": 1}),
        "{summary:#}"
    );
    let sampled = summary["sampling"]["text"].to_string();
    assert!(sampled.contains("sampled by session-b"), "{summary:#}");
    let elicited = summary["elicitation"]["text"].to_string();
    assert!(elicited.contains("session-b"), "{summary:#}");
}
