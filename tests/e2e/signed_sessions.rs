//! Signed session ids on real nodes sharing a key file (`--session-key-file`, DESIGN §6):
//! every bad token is a 404 on every node and costs nothing else; a valid one is resumed by a
//! node that never saw it, child and all; a node never resumes an id it ended; keys rotate
//! without a flag day and are re-read on SIGHUP; a bad key file exits 64 naming the problem.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use crate::scaleout::{KeyFile, Node};
use crate::util::{
    Daemon, HTTP_TIMEOUT, STARTUP_TIMEOUT, Signal, SseStream, TempClients, assert_session_works,
    call_tool, echo_spec, error_parts, fake_child_spec, initialize, mcp_request, mcpmux_command,
    post, serve_args,
};

const KEY_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const KEY_B: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0af9e8d7c6b5a4938271605f4e3d2c1b0a";
/// How long a node may take to re-read its key file after SIGHUP.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn clients() -> TempClients {
    let clients = TempClients::new();
    clients.write("alpha", &echo_spec());
    clients.write("bravo", &echo_spec());
    clients
}

fn tools_list() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
}

/// `tools/list` in `session` of `tenant` on `node`: its status and body.
async fn list(node: &Node, tenant: &str, session: &str) -> (u16, Value) {
    let resp = post(&node.daemon, Some(tenant), Some(session), &tools_list()).await;
    let status = resp.status().as_u16();
    let body = timeout(Duration::from_secs(20), resp.json::<Value>())
        .await
        .expect("a body within 20 s")
        .unwrap_or(Value::Null);
    (status, body)
}

/// Asserts the exact 404 of an unknown session.
async fn assert_404(node: &Node, tenant: &str, session: &str, what: &str) {
    let resp = post(&node.daemon, Some(tenant), Some(session), &tools_list()).await;
    let (status, ctype, body) = error_parts(resp).await;
    assert_eq!(
        (status, ctype.as_str()),
        (404, "application/json"),
        "{what}: must be 404: {body}"
    );
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
            "message": "session not found; initialize a new session"}}),
        "{what}: the 404 body"
    );
}

/// The session answers a tool call on `node`.
async fn assert_works(node: &Node, tenant: &str, session: &str, what: &str) {
    assert_session_works(&node.daemon, tenant, session, what).await;
}

/// `token` with byte `at` replaced by another visible character.
fn altered(token: &str, at: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The token's claims, decoded without verifying (the test reads what the node signed), as
/// JSON: `t` tenant, `v` revision, `p` params, `n` nonce (hex), `i` issued, `e` expires. The
/// `m2` payload is a flags byte (1: the params' `protocolVersion` is `v`, left out), the
/// tenant and revision each after a length byte, the params' JSON, then 16 bytes of nonce
/// and two 8-byte big-endian times.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("m2.<payload>.<tag>");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let (flags, mut rest) = bytes.split_first().expect("a flags byte");
    let mut field = || {
        let (len, more) = rest.split_first().expect("a length byte");
        let (text, more) = more.split_at(usize::from(*len));
        rest = more;
        String::from_utf8(text.to_vec()).expect("UTF-8")
    };
    let (tenant, version) = (field(), field());
    let (params, tail) = rest.split_at(rest.len() - 32);
    let mut params: Value = serde_json::from_slice(params).expect("JSON params");
    if flags & 1 == 1 {
        params["protocolVersion"] = json!(version);
    }
    let secs = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    json!({
        "t": tenant, "v": version, "p": params, "n": hex::encode(&tail[..16]),
        "i": secs(&tail[16..24]), "e": secs(&tail[24..]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_id_is_resumed_by_a_node_that_never_saw_it_and_every_bad_one_is_404_on_every_node()
{
    let clients = clients();
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let first = Node::start(&clients, &keys, None, &[]).await;
    let second = Node::start(&clients, &keys, None, &[]).await;
    let other_keys = KeyFile::new(&format!("{KEY_B}\n"));
    let stranger = Node::start(&clients, &other_keys, None, &[]).await;

    let session = initialize(&first.daemon, "alpha").await;
    assert!(session.starts_with("m2."), "a signed id: {session}");
    assert!(session.bytes().all(|b| b.is_ascii_graphic()));
    let said = claims(&session);
    assert_eq!(said["t"], "alpha");
    assert_eq!(said["v"], "2025-11-25");
    assert_eq!(
        said["n"].as_str().map(str::len),
        Some(32),
        "128-bit nonce: {said}"
    );
    assert_eq!(said["p"]["capabilities"], json!({}));
    assert_eq!(said["p"]["protocolVersion"], "2025-11-25");
    assert_eq!(
        said["e"].as_u64().unwrap() - said["i"].as_u64().unwrap(),
        86_400,
        "the default lifetime is 24 h"
    );

    // Every bad variant, on every node, before the good one is ever resumed.
    let nodes = [&first, &second, &stranger];
    let positions = [3, session.len() / 2, session.len() - 1];
    for node in nodes {
        for at in positions {
            assert_404(
                node,
                "alpha",
                &altered(&session, at),
                &format!("byte {at} altered"),
            )
            .await;
        }
        assert_404(node, "bravo", &session, "another tenant's header").await;
    }
    assert_404(&stranger, "alpha", &session, "a node with another key").await;

    // The node that never saw it resumes it: the child starts there from what the id carries.
    assert_works(&second, "alpha", &session, "resumed on the second node").await;
    assert_works(&first, "alpha", &session, "still on the first node").await;
    let status = crate::util::admin_status(&second.daemon).await;
    let alpha = crate::util::tenant_status(&status, "alpha");
    assert_eq!(alpha["sessions"], 1, "{status:#}");
    assert!(
        alpha["pid"].as_u64().is_some(),
        "a child runs there: {status:#}"
    );
    // Nothing else was lost: bravo's own session on the stranger still works.
    let bravo = initialize(&stranger.daemon, "bravo").await;
    assert_works(
        &stranger,
        "bravo",
        &bravo,
        "a session of the other key's node",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_resumes_an_id_it_ended_but_ends_an_unknown_one_on_delete() {
    let clients = clients();
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let first = Node::start(&clients, &keys, None, &[]).await;
    let second = Node::start(&clients, &keys, None, &[]).await;
    let session = initialize(&first.daemon, "alpha").await;
    let delete = |node: &Node, session: &str| {
        mcp_request(
            &node.daemon,
            reqwest::Method::DELETE,
            Some("alpha"),
            Some(session),
        )
        .send()
    };
    assert_eq!(delete(&first, &session).await.unwrap().status(), 204);
    assert_404(&first, "alpha", &session, "after DELETE on its own node").await;

    // The second node never saw the DELETE: it may resume the id (the documented deviation),
    // and a DELETE there ends it for that node too, without starting anything.
    let other = initialize(&first.daemon, "alpha").await;
    assert_eq!(delete(&second, &other).await.unwrap().status(), 204);
    assert_404(
        &second,
        "alpha",
        &other,
        "after DELETE of an id it never held",
    )
    .await;
    let status = crate::util::admin_status(&second.daemon).await;
    assert_eq!(
        crate::util::tenant_status(&status, "alpha")["pid"],
        Value::Null,
        "ending an unknown id starts no child: {status:#}"
    );
    assert_works(&first, "alpha", &other, "its own node still holds it").await;
    assert_works(
        &second,
        "alpha",
        &session,
        "the deviation: the second node resumes it",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_is_404_on_every_node() {
    let clients = clients();
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let lifetime = ["--session-lifetime", "1"];
    let first = Node::start(&clients, &keys, None, &lifetime).await;
    let second = Node::start(&clients, &keys, None, &lifetime).await;
    let session = initialize(&first.daemon, "alpha").await;
    let expires = claims(&session)["e"].as_u64().unwrap();
    // Poll until the wall clock passes the expiry (at most 2 s from issue).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now >= expires {
            break;
        }
        assert!(Instant::now() < deadline, "the clock must pass the expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_404(&first, "alpha", &session, "expired, on its own node").await;
    assert_404(&second, "alpha", &session, "expired, on another node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_new_first_old_second_and_sighup_rereads_the_file() {
    let clients = clients();
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let first = Node::start(&clients, &keys, None, &[]).await;
    let second = Node::start(&clients, &keys, None, &[]).await;
    let old = initialize(&first.daemon, "alpha").await;

    keys.write(&format!("# new key first\n{KEY_B}\n{KEY_A}\n"), 0o600);
    for node in [&first, &second] {
        let mark = node.daemon.log_mark();
        node.daemon.signal(Signal::SIGHUP);
        let line = node
            .daemon
            .wait_for_log_after(mark, "session key file re-read", RELOAD_TIMEOUT)
            .await;
        assert!(
            line.is_some_and(|l| l.contains("keys=2")),
            "SIGHUP must re-read the key file"
        );
    }
    assert_works(
        &second,
        "alpha",
        &old,
        "an old key's session resumes after rotation",
    )
    .await;
    let new = initialize(&first.daemon, "alpha").await;

    // Only the new key left: sessions it signed move, the old key's do not.
    keys.write(&format!("{KEY_B}\n"), 0o600);
    let third = Node::start(&clients, &keys, None, &[]).await;
    assert_works(&third, "alpha", &new, "signed by the new, first key").await;
    assert_404(&third, "alpha", &old, "signed by a retired key").await;

    // A bad edit keeps the keys in force.
    keys.write("not a key\n", 0o600);
    let mark = second.daemon.log_mark();
    second.daemon.signal(Signal::SIGHUP);
    let line = second
        .daemon
        .wait_for_log_after(mark, "session key file not re-read", RELOAD_TIMEOUT)
        .await;
    assert!(
        line.is_some_and(|l| l.contains("line 1")),
        "a bad key file on SIGHUP is reported with its line"
    );
    let (status, body) = list(&second, "alpha", &new).await;
    assert_eq!(status, 200, "the keys in force stay: {body}");
}

#[tokio::test]
async fn a_bad_key_file_exits_64_naming_the_problem_before_binding() {
    let clients = clients();
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let cases: [(&str, u32, &str); 4] = [
        (
            KEY_A,
            0o644,
            "mode 0644 lets group or others access the key; chmod 600 it",
        ),
        (KEY_A, 0o640, "mode 0640"),
        (
            &KEY_A[..60],
            0o600,
            "line 1: a key must be 64 hex characters",
        ),
        ("# only a comment\n", 0o600, "no key in the file"),
    ];
    let path = keys.path();
    for (text, mode, named) in cases {
        keys.write(text, mode);
        let mut args = serve_args(&listen, "127.0.0.1:0", clients.path().to_str().unwrap());
        args.extend(["--session-key-file", path.to_str().unwrap()]);
        let mut cmd = mcpmux_command(&args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let out = timeout(STARTUP_TIMEOUT, cmd.output())
            .await
            .expect("a bad key file must stop the daemon at once")
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{named}: {stderr}");
        assert!(stderr.contains("--session-key-file"), "{stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "the file is named: {stderr}"
        );
        assert!(stderr.contains(named), "{stderr}");
        assert!(!stderr.contains("listening on"), "nothing bound: {stderr}");
    }
    let without = Daemon::start(&clients, &[]).await;
    let session = initialize(&without, "alpha").await;
    assert!(
        session.len() == 64 && session.bytes().all(|b| b.is_ascii_hexdigit()),
        "without the flag ids stay node-local random values: {session}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_told_to_refetch_every_list_its_child_can_change() {
    let clients = TempClients::new();
    clients.write("lists", &fake_child_spec(&["--list-changed"]));
    let keys = KeyFile::new(&format!("{KEY_A}\n"));
    let first = Node::start(&clients, &keys, None, &[]).await;
    let second = Node::start(&clients, &keys, None, &[]).await;
    let session = initialize(&first.daemon, "lists").await;
    let (status, body) = list(&second, "lists", &session).await;
    assert_eq!(status, 200, "resumed on the second node: {body}");

    // Its subscriptions did not move, so the session is told to refetch what may differ.
    let get = |node: &Node| {
        mcp_request(
            &node.daemon,
            reqwest::Method::GET,
            Some("lists"),
            Some(&session),
        )
        .send()
    };
    let mut resumed = SseStream::new(get(&second).await.unwrap());
    let mut told = Vec::new();
    for _ in 0..3 {
        let contract = "the resumed session's GET stream carries the list_changed notifications";
        let message = resumed.next_message(HTTP_TIMEOUT, contract).await;
        told.push(message["method"].as_str().unwrap_or_default().to_owned());
    }
    told.sort();
    assert_eq!(
        told,
        [
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
            "notifications/tools/list_changed",
        ]
    );

    // The node that made the session resumed nothing: its first notification there is the
    // child's own, marked one.
    let mut own = SseStream::new(get(&first).await.unwrap());
    let called = call_tool(
        &first.daemon,
        "lists",
        &session,
        "notify",
        json!({"marker": "the child's own"}),
    )
    .await;
    assert!(called.get("result").is_some(), "{called:#}");
    let contract = "the session's own node forwards the child's notification";
    let first_told = own.next_message(HTTP_TIMEOUT, contract).await;
    assert_eq!(
        first_told["params"]["_meta"]["marker"], "the child's own",
        "no resume announcement on the node that holds the session: {first_told:#}"
    );
}
