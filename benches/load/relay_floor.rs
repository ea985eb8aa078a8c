//! The relay floor: the least a relay on this stack can do per call. hyper in front (as in
//! the HTTP floor), the same `mcp-echo` behind one pipe, and per call only what relaying
//! cannot skip: the caller's id swapped for a relay id on the way in and back on the way
//! out, a map from relay id to the waiting request, one task writing stdin (every queued
//! message in one write) and one reading stdout. No sessions, limits, metrics or logs. It
//! runs in its own process (this bench binary, re-executed with `--relay-floor-server`), so
//! mcpmux against it is what mcpmux's own features cost, and it against the HTTP floor plus
//! the child driven directly is what the pipe hop itself costs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use crate::floor::{body_of, initialized, reply, run_server, serve_http};

/// The flag that turns this binary into the relay floor server.
pub const FLAG: &str = "--relay-floor-server";
/// Longest child line read (mcpmux's default limit).
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a str>,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// Requests sent to the child and not yet answered, by relay id.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Bytes>>>;

struct Relay {
    next: AtomicU64,
    waiting: Waiting,
    stdin: mpsc::Sender<Bytes>,
}

/// `text` with the byte range of `part` (a slice of it) replaced by `with`.
fn splice(text: &[u8], part: &str, with: &[u8]) -> Option<Vec<u8>> {
    let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + part.len();
    let mut out = Vec::with_capacity(text.len() + with.len());
    out.extend_from_slice(text.get(..start)?);
    out.extend_from_slice(with);
    out.extend_from_slice(text.get(end..)?);
    Some(out)
}

async fn answer(
    relay: Arc<Relay>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = body_of(req).await;
    let Ok(msg) = serde_json::from_slice::<Msg<'_>>(&body) else {
        return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let Some(id) = msg.id else {
        return Ok(reply(StatusCode::ACCEPTED, Bytes::new())); // a notification
    };
    if msg.method == Some("initialize") {
        // Answered here, like the HTTP floor: the relay initialized its child at start.
        return Ok(initialized(id.get(), "relay-floor", "relay-floor"));
    }
    let ours = relay.next.fetch_add(1, Ordering::Relaxed);
    let Some(line) = splice(&body, id.get(), ours.to_string().as_bytes()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let (tx, rx) = oneshot::channel();
    relay
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(ours, tx);
    if relay.stdin.send(Bytes::from(line)).await.is_err() {
        return Ok(reply(StatusCode::BAD_GATEWAY, Bytes::new()));
    }
    let Ok(answer) = rx.await else {
        return Ok(reply(StatusCode::BAD_GATEWAY, Bytes::new()));
    };
    let out = serde_json::from_slice::<Reply<'_>>(&answer)
        .ok()
        .and_then(|r| r.id)
        .and_then(|child_id| splice(&answer, child_id.get(), id.get().as_bytes()));
    Ok(match out {
        Some(out) => reply(StatusCode::OK, Bytes::from(out)),
        None => reply(StatusCode::BAD_GATEWAY, Bytes::new()),
    })
}

/// Writes every queued message in one write, like mcpmux's child actor.
async fn write_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        buf.push(b'\n');
        while buf.len() < 64 * 1024 {
            let Ok(more) = rx.try_recv() else { break };
            buf.extend_from_slice(&more);
            buf.push(b'\n');
        }
        if stdin.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Hands each stdout line to the request waiting for its id.
async fn read_stdout(stdout: ChildStdout, relay: Arc<Relay>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => return,
            Ok(_) => {}
        }
        let Some(id) = serde_json::from_slice::<Reply<'_>>(&line)
            .ok()
            .and_then(|r| r.id)
            .and_then(|id| id.get().parse::<u64>().ok())
        else {
            continue; // a notification or a request of the child: not relayed here
        };
        let tx = relay
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(Bytes::copy_from_slice(&line));
        }
    }
}

/// Starts `mcp-echo`, initializes it, and serves until killed; prints
/// `listening on http://ADDR/mcp` to stderr like mcpmux.
pub fn serve() -> std::process::ExitCode {
    run_server("relay floor", run())
}

async fn run() -> Result<(), String> {
    let mut child = Command::new(crate::procs::MCP_ECHO)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", crate::procs::MCP_ECHO))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("child without pipes".into());
    };
    // The handshake, before any caller: the child is warm, as mcpmux's is in the bench.
    let mut reader = BufReader::new(stdout);
    let init = format!("{}\n", crate::mcp::initialize(0));
    stdin
        .write_all(init.as_bytes())
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| format!("initialize reply: {e}"))?;
    let initialized = format!("{}\n", crate::mcp::INITIALIZED);
    stdin
        .write_all(initialized.as_bytes())
        .await
        .map_err(|e| format!("initialized: {e}"))?;
    let stdout = reader.into_inner();

    let (stdin_tx, stdin_rx) = mpsc::channel(1024);
    let relay = Arc::new(Relay {
        next: AtomicU64::new(1),
        waiting: Mutex::new(HashMap::new()),
        stdin: stdin_tx,
    });
    tokio::spawn(write_stdin(stdin, stdin_rx));
    tokio::spawn(read_stdout(stdout, relay.clone()));

    serve_http(move || {
        let relay = relay.clone();
        hyper::service::service_fn(move |req| answer(relay.clone(), req))
    })
    .await
}
