//! Operating the daemon (DESIGN §1 step 2, §5): a graceful stop under load, tokens for tenants
//! (`hash-token`, no open tenants by default), machine-readable logs, and exit 64 for bad
//! settings before anything is bound. systemd, admin endpoints and limits have their own
//! modules (`systemd`, `admin`, `limits`).

use std::process::Stdio;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::lifecycle::grandchild_spec;
use crate::util::{
    ChildLog, Daemon, HTTP_TIMEOUT, STARTUP_TIMEOUT, STOP_TIMEOUT, Signal, TempClients, admin_get,
    admin_status, call_tool, child_pid, error_parts, fake_child_spec, finish_call, initialize,
    initialize_params, mcp_request, mcpmux_command, open_slow_call, post, serve_args,
    tenant_status, unique_marker, wait_no_process_with_marker,
};

/// Bound for a daemon's children and grandchildren to be gone once it exited.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of each slow call in the drain test: far longer than getting 20 calls in flight
/// and checking the daemon's state, far shorter than the default 30 s shutdown grace.
const DRAIN_CALL_MS: u64 = 8_000;

// ---------------------------------------------------------------------------------------------
// Graceful stop
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_20_in_flight_requests_refuses_new_connections_and_ends_every_process() {
    let clients = TempClients::new();
    let tenants = ["alpha", "bravo", "charlie", "delta"];
    let logs: Vec<ChildLog> = tenants.iter().map(|_| ChildLog::new()).collect();
    for (id, log) in tenants.iter().zip(&logs) {
        clients.write(id, &grandchild_spec(log));
    }
    let mut daemon = Daemon::start(&clients, &[]).await;
    let sessions = join_all(tenants.iter().map(|id| initialize(&daemon, id))).await;

    // 20 slow calls, five per tenant, each known to be in flight at its child.
    let calls = (0..20u64).map(|n| {
        let t = n as usize % tenants.len();
        open_slow_call(&daemon, tenants[t], &sessions[t], 100 + n, DRAIN_CALL_MS)
    });
    let mut streams = join_all(calls).await;
    let status = admin_status(&daemon).await;
    let inflight: u64 = tenants
        .iter()
        .map(|id| tenant_status(&status, id)["inflight"].as_u64().unwrap())
        .sum();
    assert_eq!(
        inflight, 20,
        "all 20 calls are in flight at SIGTERM: {status:#}"
    );

    let mark = daemon.log_mark();
    daemon.signal(Signal::SIGTERM);
    let stopped = format!("stopped accepting connections addr={}", daemon.addr());
    let line = daemon
        .wait_for_log_after(mark, &stopped, STOP_TIMEOUT)
        .await;
    assert!(
        line.is_some(),
        "SIGTERM must close the tenant listener at once"
    );
    let refused = tokio::net::TcpStream::connect(daemon.addr()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a new connection after SIGTERM must be refused, got {refused:?}"
    );
    // The admin port stays up during the drain, to say so.
    assert_eq!(
        admin_get(&daemon, "/readyz").await,
        (503, "draining\n".into()),
        "/readyz must fail while draining, so load balancers stop sending"
    );
    assert_eq!(admin_status(&daemon).await["draining"], true);

    let finished = join_all(streams.iter_mut().enumerate().map(|(n, stream)| {
        finish_call(
            stream,
            100 + n as u64,
            "a request in flight at SIGTERM must be answered",
        )
    }))
    .await;
    for (n, done) in finished.iter().enumerate() {
        assert_eq!(
            done["result"]["content"][0]["text"],
            format!("done after {DRAIN_CALL_MS} ms"),
            "call {n} must complete successfully during the drain: {done:#}"
        );
    }
    let status = daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("the daemon must exit once the drain is done");
    assert_eq!(status.code(), Some(0), "a clean drain exits 0: {status}");
    for log in &logs {
        let left = wait_no_process_with_marker(log.marker(), GONE_TIMEOUT).await;
        assert_eq!(
            left,
            Ok(()),
            "no child or grandchild may outlive the daemon"
        );
    }
}

/// `--shutdown-delay` in the readiness-first drain test: long enough to check that the node
/// serves new connections while unready, short enough to keep the test quick.
const SHUTDOWN_DELAY_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_turns_readyz_503_at_once_and_serves_new_connections_until_it_ends()
 {
    let clients = TempClients::new();
    clients.write("alpha", &fake_child_spec(&[]));
    let delay = SHUTDOWN_DELAY_SECS.to_string();
    let mut daemon = Daemon::start(&clients, &["--shutdown-delay", &delay]).await;
    let session = initialize(&daemon, "alpha").await;
    assert_eq!(admin_get(&daemon, "/readyz").await.0, 200);

    let mark = daemon.log_mark();
    let signalled = tokio::time::Instant::now();
    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_for_log_after(mark, "/readyz is 503", STOP_TIMEOUT)
        .await
        .expect("SIGTERM must announce the shutdown delay");
    assert_eq!(
        admin_get(&daemon, "/readyz").await,
        (503, "draining\n".into()),
        "/readyz must fail as soon as SIGTERM arrives, before the listener closes"
    );
    // A client that has never connected (so: a new connection) is still served, in a new
    // session and in the old one.
    let fresh = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap();
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let resp = fresh
        .post(daemon.url())
        .header("X-Client-ID", "alpha")
        .header("Accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .expect("a new connection during the shutdown delay must be accepted");
    assert_eq!(
        resp.status(),
        200,
        "initialize during the delay must succeed"
    );
    let echoed = call_tool(&daemon, "alpha", &session, "echo", json!({})).await;
    assert_eq!(
        echoed["result"]["content"][0]["text"], "ok",
        "a call during the delay must be served: {echoed:#}"
    );
    let stopped = format!("stopped accepting connections addr={}", daemon.addr());
    daemon
        .wait_for_log_after(mark, &stopped, STOP_TIMEOUT)
        .await
        .expect("the listener must close once the delay is over");
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_secs(SHUTDOWN_DELAY_SECS),
        "the listener must stay open for the whole delay; it closed after {waited:?}"
    );
    let status = daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("the daemon must exit");
    assert_eq!(
        status.code(),
        Some(0),
        "a delayed, clean drain exits 0: {status}"
    );
}

#[tokio::test]
async fn a_second_sigterm_during_the_shutdown_delay_drains_at_once() {
    let clients = TempClients::new();
    let mut daemon = Daemon::start(&clients, &["--shutdown-delay", "600"]).await;
    let mark = daemon.log_mark();
    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_for_log_after(mark, "/readyz is 503", STOP_TIMEOUT)
        .await
        .expect("SIGTERM must announce the shutdown delay");
    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("a second SIGTERM must end the 600 s delay");
    assert_eq!(status.code(), Some(0), "{status}");
    let logs = daemon.logs().join("\n");
    assert!(
        logs.contains("second signal: not waiting for the shutdown delay"),
        "the skipped delay must be logged: {logs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Runs `mcpmux hash-token` with `stdin`; returns exit code, stdout and stderr.
async fn hash_token(stdin: &str) -> (Option<i32>, String, String) {
    let mut cmd = mcpmux_command(&["hash-token"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the mcpmux binary must start");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).await.unwrap();
    drop(pipe);
    let out = timeout(STARTUP_TIMEOUT, child.wait_with_output())
        .await
        .expect("`mcpmux hash-token` must finish once stdin is closed")
        .expect("waiting on mcpmux");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// POSTs `body` for `client_id` with `Authorization: Bearer <token>`.
async fn post_bearer(
    daemon: &Daemon,
    client_id: &str,
    session: Option<&str>,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, Some(client_id), session)
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {token}"))
        .body(body.to_string())
        .send()
        .await
        .expect("daemon must answer a POST to /mcp")
}

#[tokio::test]
async fn hash_token_prints_the_sha256_an_operator_puts_in_token_sha256() {
    let token = format!("tok-{}", unique_marker());
    let want = hex::encode(Sha256::digest(token.as_bytes()));
    // As from `echo "$TOKEN" |` (trailing newline) and from `printf %s "$TOKEN" |`.
    for stdin in [
        format!("{token}\n"),
        token.clone(),
        format!("  {token}\r\n"),
    ] {
        let (code, stdout, stderr) = hash_token(&stdin).await;
        assert_eq!(
            (code, stdout.as_str()),
            (Some(0), format!("{want}\n").as_str()),
            "hash-token of {stdin:?} must print the token's sha256 in hex: {stderr}"
        );
    }
    let (code, stdout, stderr) = hash_token(" \n").await;
    assert_eq!(
        (code, stdout.as_str()),
        (Some(64), ""),
        "no token is bad usage"
    );
    assert!(stderr.contains("no token on stdin"), "{stderr}");

    // The printed value works as token_sha256, on a daemon that serves no open tenants.
    let clients = TempClients::new();
    let mut locked = fake_child_spec(&[]);
    locked["token_sha256"] = json!(want);
    clients.write("locked", &locked);
    let dir = clients.path().to_str().unwrap();
    let daemon = Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--clients",
            dir,
        ],
        &[],
    )
    .await;
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let resp = post_bearer(&daemon, "locked", None, &token, &init).await;
    assert_eq!(resp.status(), 200, "the token must open its tenant");
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {}}});
    let resp = post_bearer(&daemon, "locked", Some(&session), &token, &call).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "ok", "{answer:#}");
}

#[tokio::test]
async fn without_allow_open_tenants_a_tenant_with_no_token_answers_401_and_starts_nothing() {
    let clients = TempClients::new();
    clients.write("open", &fake_child_spec(&[]));
    let dir = clients.path().to_str().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--clients",
        dir,
    ];
    let daemon = Daemon::spawn(&args, &[]).await;
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let want = json!({
        "error": "This client has no token configured; the operator must set token_sha256 in its client file.",
        "code": "UNAUTHORIZED",
    });
    for (case, resp) in [
        (
            "no Authorization",
            post(&daemon, Some("open"), None, &init).await,
        ),
        (
            "any bearer token",
            post_bearer(&daemon, "open", None, "anything", &init).await,
        ),
    ] {
        let challenge = resp.headers().get("www-authenticate").cloned();
        let (status, ctype, body) = error_parts(resp).await;
        assert_eq!(
            (status, ctype.as_str(), &body),
            (401, "application/json", &want),
            "{case}: a tokenless tenant is closed unless --allow-open-tenants"
        );
        assert_eq!(
            challenge.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{case}: a 401 carries WWW-Authenticate: Bearer"
        );
    }
    let status = admin_status(&daemon).await;
    let open = tenant_status(&status, "open");
    assert_eq!(
        (&open["pid"], &open["restarts"]),
        (&Value::Null, &json!(0)),
        "an unauthorized request must not start a child: {open:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs and settings
// ---------------------------------------------------------------------------------------------

fn parse_log_line(line: &str) -> Value {
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("with --log-format json every line must be JSON ({e}): {line}"));
    assert!(
        value["timestamp"].is_string() && value["level"].is_string(),
        "each JSON line has a timestamp and a level: {line}"
    );
    value
}

#[tokio::test]
async fn json_log_lines_parse_and_each_request_is_logged_with_its_fields() {
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    let env = [("RUST_LOG", "mcpmux=debug")];
    let mut daemon = Daemon::start_with_env(&clients, &["--log-format", "json"], &env).await;
    let session = initialize(&daemon, "acme").await;
    let pid = child_pid(&daemon, "acme", &session).await;
    let called = call_tool(&daemon, "acme", &session, "echo", json!({})).await;
    assert!(called.get("result").is_some(), "{called:#}");

    let needle = r#""method":"tools/call""#;
    let line = daemon.wait_for_log(needle, HTTP_TIMEOUT).await;
    let line = line.expect("each request must be logged at debug level as `request`");
    let logged = parse_log_line(&line);
    assert_eq!(logged["message"], "request", "{logged:#}");
    assert_eq!(logged["level"], "DEBUG", "{logged:#}");
    assert_eq!(
        (
            &logged["client_id"],
            &logged["session"],
            &logged["status"],
            &logged["child_pid"]
        ),
        (&json!("acme"), &json!(session), &json!(200), &json!(pid)),
        "the request line names tenant, session, status and child: {logged:#}"
    );
    assert!(
        logged["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "the request line has duration_ms: {logged:#}"
    );

    let status = daemon.stop().await;
    assert_eq!(status.code(), Some(0), "{status}");
    let lines = daemon.logs();
    assert!(lines.len() > 5, "a debug run logs plenty: {lines:?}");
    for line in &lines {
        parse_log_line(line);
    }
}

/// Extra flags, extra environment, and the name the error message must mention.
type BadSetting<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn bad_flags_and_settings_exit_64_before_binding_anything() {
    let clients = TempClients::new();
    // The daemon is pointed at ports the test holds: had it bound before validating, it would
    // fail with "address in use" and exit 1, not 64.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let admin = held_admin.local_addr().unwrap().to_string();
    let dir = clients.path().to_str().unwrap();
    let base = serve_args(&listen, &admin, dir);
    let cases: [BadSetting<'_>; 14] = [
        (&["--idle-ttl", "0"], &[], "idle-ttl"),
        (&[], &[("MCPMUX_IDLE_TTL", "0")], "idle-ttl"),
        (&["--max-children", "0"], &[], "max-children"),
        (&["--max-sessions", "0"], &[], "max-sessions"),
        (
            &[],
            &[("MCPMUX_MAX_SESSIONS_PER_TENANT", "0")],
            "max-sessions-per-tenant",
        ),
        (
            &["--max-inflight-per-tenant", "0"],
            &[],
            "max-inflight-per-tenant",
        ),
        (&["--request-timeout=-1"], &[], "request-timeout"),
        (&["--stop-grace", "NaN"], &[], "stop-grace"),
        (&["--shutdown-delay=-3"], &[], "shutdown-delay"),
        (&["--sse-after=-1"], &[], "sse-after"),
        (&[], &[("MCPMUX_SSE_AFTER", "later")], "sse-after"),
        (&["--idle-ttl", "soon"], &[], "idle-ttl"),
        (&["--log-format", "xml"], &[], "log-format"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
    ];
    for (extra, env, named) in cases {
        let args = [&base[..], extra].concat();
        let mut cmd = mcpmux_command(&args);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = timeout(STARTUP_TIMEOUT, cmd.output())
            .await
            .expect("a daemon with bad settings must exit at once")
            .expect("the mcpmux binary must start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{extra:?} {env:?} must exit 64 (EX_USAGE): {stderr}"
        );
        assert!(
            stderr.contains(named),
            "{extra:?} {env:?}: the message must name {named}: {stderr}"
        );
        assert!(
            !stderr.contains("listening on"),
            "{extra:?} {env:?}: nothing may be bound: {stderr}"
        );
    }
}
