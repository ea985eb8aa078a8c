//! The edge (DESIGN §7, issue 10): a deadline on every stage of a connection on both ports
//! and both HTTP versions, the connection budget with eviction of headless connections,
//! and the depth limit on messages in both directions.
//!
//! Connections here are raw TCP (or hyper's own HTTP/2 client) so each test controls
//! exactly which bytes are sent and when; the daemon's view is read from `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::util::{
    ACCEPT_BOTH, Daemon, TempClients, admin_get, echo_spec, error_parts, fake_child_spec,
    initialize, isolated_command, mcp_request,
};

/// The HTTP/2 client connection preface (RFC 9113 §3.4), without SETTINGS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Slack on top of a deadline for the daemon to act on it on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);
/// Bound on any single exchange that should be immediate.
const PROMPT: Duration = Duration::from_secs(5);

/// Reads until the peer closes (EOF or reset); the bytes read. Panics with `contract`
/// after `within`.
async fn until_closed(sock: &mut TcpStream, within: Duration, contract: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| panic!("{contract}"));
    got
}

/// One HTTP/1.1 response read off `sock` (Content-Length framed): status line and body.
async fn read_response(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = timeout(PROMPT, sock.read(&mut chunk))
            .await
            .expect("a response must arrive promptly")
            .expect("the connection must stay readable");
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = timeout(PROMPT, sock.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (head, buf[head_end..head_end + length].to_vec())
}

/// A complete request without `X-Client-ID`: answered 403 at once, no child involved.
const HEADLESS_TENANT_REQUEST: &[u8] =
    b"POST /mcp HTTP/1.1\r\nHost: mcpmux\r\nContent-Length: 0\r\n\r\n";

/// Sends [`HEADLESS_TENANT_REQUEST`] on `sock` and checks the 403.
async fn served(sock: &mut TcpStream) {
    sock.write_all(HEADLESS_TENANT_REQUEST).await.unwrap();
    let (head, _) = read_response(sock).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// The value of the sample `name{labels}` in `/metrics` (labels as written there), 0 when
/// absent.
async fn metric(daemon: &Daemon, name: &str, labels: &str) -> f64 {
    let (status, text) = admin_get(daemon, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `name{labels}` equals `want` (bounded).
async fn wait_metric(daemon: &Daemon, name: &str, labels: &str, want: f64) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let got = metric(daemon, name, labels).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} must reach {want}, is {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Raises this test process's own soft open-file limit to at least `want` (the flood holds
/// thousands of sockets); the daemon's limit is set separately.
fn raise_own_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        assert!(
            hard >= want,
            "the hard open-file limit ({hard}) must allow {want}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_headless_connections_under_nofile_1024_never_locks_callers_out() {
    const FLOOD: usize = 2_000;
    const ADMIN_FLOOD: usize = 200;
    const WAVE: usize = 100;
    const HEADER: Duration = Duration::from_secs(2);
    const PROBE_BOUND: Duration = Duration::from_secs(1);
    raise_own_nofile(2 * (FLOOD + ADMIN_FLOOD) as u64);
    let clients = TempClients::new();
    clients.write("edge", &echo_spec());
    let mut prlimit = isolated_command("prlimit");
    prlimit.arg("--nofile=1024:1024");
    let daemon = Daemon::start_behind(prlimit, &clients, &["--header-read-timeout", "2"]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "the daemon must run under an open-file limit of 1024: {limits}"
    );
    let budget = daemon
        .wait_for_log("connection budget derived", PROMPT)
        .await
        .expect("the derived budget must be logged at start");
    assert!(budget.contains("max_connections=384"), "{budget}");
    let admin = daemon.admin_addr().await;
    let session = initialize(&daemon, "edge").await; // the child is up before the flood

    let tenant = daemon.addr();
    // The flood runs on its own thread and runtime, as another process would: probes are
    // never queued behind its tasks. It sends a wave as soon as the daemon has accepted all
    // but the last one: as fast as the daemon accepts, but without overflowing the
    // kernel's listen backlog (then SYNs are dropped and everyone's connect waits 1 s for
    // a retransmission, which no daemon can prevent).
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let scraper = reqwest::Client::new();
            let mut conns = Vec::new();
            let mut sent = [0usize; 2];
            for wave in 0..(FLOOD + ADMIN_FLOOD) / WAVE {
                let (port, at) = if wave * WAVE < FLOOD {
                    (tenant, 0)
                } else {
                    (admin, 1)
                };
                let name = ["tenant", "admin"][at];
                accepted_at_least(&scraper, admin, name, sent[at].saturating_sub(WAVE)).await;
                for i in 0..WAVE {
                    conns.push(tokio::spawn(headless(port, i % 3, HEADER + SLACK)));
                }
                sent[at] += WAVE;
            }
            let mut lifetimes = Vec::new();
            for conn in conns {
                lifetimes.push(conn.await.unwrap());
            }
            lifetimes
        })
    });

    // Probes back to back, each on a fresh connection, until every flood connection ended.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(PROBE_BOUND)
        .build()
        .unwrap();
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    let mut id = 10;
    while !flood.is_finished() {
        id += 1;
        let started = Instant::now();
        let ping = json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
        let resp = fresh
            .post(daemon.url())
            .header("Accept", ACCEPT_BOTH)
            .header("X-Client-ID", "edge")
            .header("Mcp-Session-Id", &session)
            .json(&ping)
            .send()
            .await;
        let resp = resp.unwrap_or_else(|e| panic!("probe {probes} must be answered: {e:?}"));
        assert_eq!(resp.status(), 200, "probe {probes}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], id, "{body}");
        let health = fresh.get(format!("http://{admin}/healthz")).send().await;
        let health = health.unwrap_or_else(|e| panic!("/healthz must answer: {e:?}"));
        assert_eq!(health.status(), 200);
        let took = started.elapsed();
        assert!(took < PROBE_BOUND, "probe {probes} took {took:?}");
        slowest = slowest.max(took);
        probes += 1;
    }
    let lifetimes = flood.join().unwrap();
    let longest = lifetimes.iter().max().unwrap();
    assert!(
        *longest <= HEADER + SLACK,
        "no headless connection may outlive the header deadline: longest {longest:?}"
    );
    assert!(
        probes >= 3,
        "the flood must have overlapped several probes ({probes})"
    );
    eprintln!("{probes} probes during the flood, the slowest took {slowest:?}");
    let evicted = metric(
        &daemon,
        "mcpmux_connections_evicted_total",
        r#"port="tenant""#,
    )
    .await;
    let timed_out = r#"port="tenant",stage="head""#;
    let timed_out = metric(&daemon, "mcpmux_connections_timed_out_total", timed_out).await;
    assert!(
        evicted > 0.0,
        "the budget must have evicted some ({evicted})"
    );
    assert!(
        evicted + timed_out >= FLOOD as f64,
        "each flood connection is evicted or timed out: {evicted} + {timed_out}"
    );
    let admin_evicted = metric(
        &daemon,
        "mcpmux_connections_evicted_total",
        r#"port="admin""#,
    );
    assert!(
        admin_evicted.await > 0.0,
        "the admin flood exceeds its reserve"
    );
}

/// Polls the admin port's `/metrics` until `port` has accepted at least `want`
/// connections (bounded). Scrapes that fail (the admin flood may evict a fresh scrape
/// connection before its head is read) are retried.
async fn accepted_at_least(scraper: &reqwest::Client, admin: SocketAddr, port: &str, want: usize) {
    let deadline = Instant::now() + PROMPT;
    let prefix = format!(r#"mcpmux_connections_accepted_total{{port="{port}"}} "#);
    loop {
        let scraped = scraper.get(format!("http://{admin}/metrics")).send().await;
        let text = match scraped {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let accepted = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if accepted >= want as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon must keep accepting: {accepted} of {want} on the {port} port"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One headless connection to `addr`: silent, the byte `P`, or the HTTP/2 preface, by
/// `kind`. Returns how long it lived after connecting (panics past `bound`).
async fn headless(addr: SocketAddr, kind: usize, bound: Duration) -> Duration {
    let mut sock = timeout(PROMPT, TcpStream::connect(addr))
        .await
        .expect("connect must complete promptly")
        .expect("the listener must accept TCP connections");
    let connected = Instant::now();
    match kind {
        0 => {}
        1 => sock.write_all(b"P").await.unwrap(),
        _ => sock.write_all(H2_PREFACE).await.unwrap(),
    }
    let contract = "a headless connection must be closed by its header deadline";
    let got = until_closed(&mut sock, bound, contract).await;
    assert!(
        got.is_empty() || kind == 2,
        "nothing is served to it: {got:?}"
    );
    connected.elapsed()
}

#[tokio::test]
async fn at_the_budget_a_headless_connection_is_evicted_and_served_ones_are_kept() {
    let clients = TempClients::new();
    let daemon = Daemon::start(&clients, &["--max-connections", "3"]).await;
    let open = r#"port="tenant""#;
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut sock = TcpStream::connect(daemon.addr()).await.unwrap();
        served(&mut sock).await;
        kept.push(sock);
    }
    wait_metric(&daemon, "mcpmux_connections_open", open, 3.0).await;

    // Full, and every connection has sent a head: the newcomer is closed at once.
    let mut refused = TcpStream::connect(daemon.addr()).await.unwrap();
    let got = until_closed(
        &mut refused,
        PROMPT,
        "a newcomer at a full budget is closed",
    )
    .await;
    assert!(got.is_empty(), "{got:?}");
    let rejected = metric(&daemon, "mcpmux_connections_rejected_total", open).await;
    assert_eq!(rejected, 1.0);

    // Free one slot; a silent connection takes it; the next newcomer evicts it.
    drop(kept.pop());
    wait_metric(&daemon, "mcpmux_connections_open", open, 2.0).await;
    let mut silent = TcpStream::connect(daemon.addr()).await.unwrap();
    wait_metric(&daemon, "mcpmux_connections_open", open, 3.0).await;
    let mut newcomer = TcpStream::connect(daemon.addr()).await.unwrap();
    let got = until_closed(&mut silent, PROMPT, "the headless connection is evicted").await;
    assert!(got.is_empty(), "{got:?}");
    served(&mut newcomer).await;
    for sock in &mut kept {
        served(sock).await; // the served connections were never touched
    }
    let evicted = metric(&daemon, "mcpmux_connections_evicted_total", open).await;
    assert_eq!(evicted, 1.0);
}

#[tokio::test]
async fn a_stalled_body_gets_408_within_body_read_timeout_and_the_connection_closes() {
    let clients = TempClients::new();
    clients.write("edge", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--body-read-timeout", "1"]).await;
    let mut sock = TcpStream::connect(daemon.addr()).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: mcpmux\r\nX-Client-ID: edge\r\nAccept: {ACCEPT_BOTH}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\""
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let (status, body) = timeout(Duration::from_secs(1) + SLACK, read_response(&mut sock))
        .await
        .expect("a stalled body must be answered within --body-read-timeout");
    let took = sent.elapsed();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(
        status.to_ascii_lowercase().contains("connection: close"),
        "{status}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "not before the deadline: {took:?}"
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "BODY_TIMEOUT", "{body}");
    assert_eq!(
        body["error"],
        "request body not received within 1s (--body-read-timeout)"
    );
    let rest = until_closed(&mut sock, PROMPT, "the connection closes after the 408").await;
    assert!(rest.is_empty(), "{rest:?}");
    // Nothing else was lost: the tenant serves a normal caller.
    let session = initialize(&daemon, "edge").await;
    assert!(!session.is_empty());
    let body_timeouts = r#"port="tenant",stage="body""#;
    let counted = metric(&daemon, "mcpmux_connections_timed_out_total", body_timeouts).await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn first_bytes_split_anywhere_are_served_as_http1_or_http2() {
    // The daemon tells HTTP/1 from HTTP/2 by the first bytes it has; a client whose first
    // segment is short must get the same answer as one that sends everything at once.
    let clients = TempClients::new();
    let daemon = Daemon::start(&clients, &[]).await;
    for split in [1, 2, 4, HEADLESS_TENANT_REQUEST.len() - 1] {
        let mut sock = TcpStream::connect(daemon.addr()).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let (first, rest) = HEADLESS_TENANT_REQUEST.split_at(split);
        sock.write_all(first).await.unwrap();
        sock.write_all(rest).await.unwrap();
        let (head, _) = read_response(&mut sock).await;
        assert!(head.starts_with("HTTP/1.1 403"), "split at {split}: {head}");
    }
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    for split in [1, 3, 16, H2_PREFACE.len() - 1] {
        let mut sock = TcpStream::connect(daemon.addr()).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let (first, rest) = H2_PREFACE.split_at(split);
        sock.write_all(first).await.unwrap();
        sock.write_all(&[rest, SETTINGS].concat()).await.unwrap();
        let mut frame = [0u8; 9];
        timeout(PROMPT, sock.read_exact(&mut frame))
            .await
            .expect("the server's SETTINGS must arrive promptly")
            .expect("the connection must stay open");
        assert_eq!(
            frame[3], 4,
            "split at {split}: a SETTINGS frame, got {frame:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_http1_keepalive_connection_is_closed_at_header_read_timeout() {
    let clients = TempClients::new();
    let daemon = Daemon::start(&clients, &["--header-read-timeout", "1.5"]).await;
    let mut sock = TcpStream::connect(daemon.addr()).await.unwrap();
    served(&mut sock).await;
    served(&mut sock).await; // kept alive between requests
    let idle_from = Instant::now();
    let contract = "an idle keep-alive connection must be closed at its deadline";
    let rest = until_closed(&mut sock, Duration::from_millis(1500) + SLACK, contract).await;
    let idled = idle_from.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        idled >= Duration::from_millis(1400),
        "closed too early: {idled:?}"
    );
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_at_header_read_timeout_on_both_ports() {
    let clients = TempClients::new();
    let daemon = Daemon::start(&clients, &["--header-read-timeout", "1.5"]).await;
    let admin = daemon.admin_addr().await;
    for (addr, path, port) in [
        (daemon.addr(), "/mcp", "tenant"),
        (admin, "/healthz", "admin"),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let exec = hyper_util::rt::TokioExecutor::new();
        let (mut send, conn) = hyper::client::conn::http2::handshake(exec, io)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = timeout(PROMPT, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        drop(resp);
        let idle_from = Instant::now();
        let ended = timeout(Duration::from_millis(1500) + SLACK, conn).await;
        let ended =
            ended.unwrap_or_else(|_| panic!("an idle h2 connection on the {port} port must close"));
        assert!(ended.unwrap().is_ok(), "the daemon closes it cleanly");
        let idled = idle_from.elapsed();
        assert!(
            idled >= Duration::from_millis(1400),
            "closed too early: {idled:?}"
        );
        if port == "tenant" {
            // The only tenant connection of this test; on the admin port the test's own
            // `/metrics` polls idle out too.
            let labels = r#"port="tenant",stage="idle""#;
            wait_metric(&daemon, "mcpmux_connections_timed_out_total", labels, 1.0).await;
        }
    }
}

#[tokio::test]
async fn an_open_sse_stream_is_not_idle() {
    let clients = TempClients::new();
    clients.write("edge", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--header-read-timeout", "1"]).await;
    let session = initialize(&daemon, "edge").await;
    let get = mcp_request(&daemon, reqwest::Method::GET, Some("edge"), Some(&session));
    let resp = get.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Box::pin(futures_util::StreamExt::fuse(resp.bytes_stream()));
    // Three idle deadlines pass with nothing on the stream: it must stay open.
    let window = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(window, futures_util::StreamExt::next(&mut body)).await {
            Err(_) => break,
            Ok(Some(chunk)) => assert!(chunk.is_ok(), "the stream must not fail"),
            Ok(None) => panic!("an open SSE stream must not be closed as idle"),
        }
    }
    // And it still carries the tenant's notifications.
    let notified = crate::util::call_tool(&daemon, "edge", &session, "notify", json!({})).await;
    assert!(notified.get("result").is_some(), "{notified}");
    let mut seen = Vec::new();
    let found = timeout(PROMPT, async {
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            seen.extend_from_slice(&chunk.unwrap());
            if String::from_utf8_lossy(&seen).contains("notifications/tools/list_changed") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{}", String::from_utf8_lossy(&seen));
}

/// A `tools/call` of the fake child's `echo` whose message nests `depth` levels (the
/// message is level 1), with `marker` at the bottom.
fn nested_call(id: u64, depth: usize, marker: &str) -> Vec<u8> {
    // message(1) > params(2) > arguments(3) > "v": [[...]] down to `depth`.
    let inner = depth.saturating_sub(3);
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"v":{}"{marker}"{}}}}}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
    .into_bytes()
}

async fn post_raw(daemon: &Daemon, session: &str, body: Vec<u8>) -> reqwest::Response {
    mcp_request(daemon, reqwest::Method::POST, Some("edge"), Some(session))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_nested_deeper_than_128_levels_are_refused_at_once_both_ways() {
    let log = crate::util::ChildLog::new();
    let clients = TempClients::new();
    clients.write("edge", &crate::util::logged_fake_child_spec(&log, &[]));
    let daemon = Daemon::start(&clients, &[]).await;
    let session = initialize(&daemon, "edge").await;
    let marker = crate::util::unique_marker();

    for depth in [129, 200, 100_000] {
        let started = Instant::now();
        let resp = post_raw(&daemon, &session, nested_call(7, depth, &marker)).await;
        let (status, _, body) = error_parts(resp).await;
        let took = started.elapsed();
        assert_eq!(status, 400, "{depth} deep: {body}");
        assert_eq!(body["error"]["code"], -32700, "{depth} deep: {body}");
        assert_eq!(
            body["error"]["message"], "parse error: nested deeper than 128 levels",
            "{body}"
        );
        assert!(took < Duration::from_secs(1), "{depth} deep took {took:?}");
    }
    // 100 and 128 levels are served; the child's answer to the 128-deep call is one level
    // deeper (it echoes the params inside its result), so that request fails at once with
    // an error naming the cause instead of waiting for --request-timeout.
    let resp = post_raw(&daemon, &session, nested_call(8, 100, &marker)).await;
    assert_eq!(resp.status(), 200);
    let answer = crate::util::messages(resp).await;
    let answer = crate::util::response_to(&answer, &json!(8));
    assert!(
        answer.get("result").is_some(),
        "100 deep is served: {answer:#}"
    );
    let received = || {
        let lines = log.lines();
        lines.iter().filter(|l| l.contains(marker.as_str())).count()
    };
    assert_eq!(received(), 1, "only the 100-deep call reached the child");

    let started = Instant::now();
    let resp = post_raw(&daemon, &session, nested_call(9, 128, &marker)).await;
    assert_eq!(resp.status(), 200);
    let text = timeout(PROMPT, resp.text()).await.unwrap().unwrap();
    let took = started.elapsed();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: ").filter(|d| !d.is_empty()))
        .unwrap_or(&text);
    let answer: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(answer["id"], 9, "{answer}");
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "the child's response is nested deeper than 128 levels; mcpmux does not relay it"
    );
    assert!(
        took < PROMPT,
        "failed at once, not at the request timeout: {took:?}"
    );
    assert_eq!(received(), 2, "the 128-deep call reached the child");
    // Nothing else was lost: the session goes on.
    let called = crate::util::call_tool(&daemon, "edge", &session, "echo", json!({})).await;
    assert!(called.get("result").is_some(), "{called}");
}
