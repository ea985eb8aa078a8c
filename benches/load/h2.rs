//! Idle GET streams over HTTP/2 (prior knowledge, as h2c): many streams share one
//! connection, as clients such as the TypeScript SDK can do, so a stream should cost far
//! less than over HTTP/1.1, where each holds a connection of its own.
//!
//! Runs on a daemon of its own: glibc keeps what the HTTP/1.1 streams freed, and a second
//! batch of streams on the same daemon would reuse it and look cheaper than it is.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::http::Endpoint;
use crate::procs::Daemon;
use crate::scale;

/// Streams per connection: under hyper's default limit of 200 concurrent streams.
pub const PER_CONN: usize = 128;

/// What the HTTP/2 run measured.
#[derive(Debug, Default)]
pub struct H2Memory {
    pub streams: usize,
    pub connections: usize,
    pub before_kb: u64,
    pub open_kb: u64,
    pub per_stream_kb: f64,
}

impl H2Memory {
    pub fn json(&self) -> Value {
        json!({
            "idle_get_streams": self.streams, "connections": self.connections,
            "rss_kb_before": self.before_kb, "rss_kb_open": self.open_kb,
            "kb_per_idle_get_stream": crate::stats::round3(self.per_stream_kb),
        })
    }
}

/// `streams` sessions, then one idle GET stream on each, [`PER_CONN`] to a connection.
pub async fn memory(dir: &Path, streams: usize) -> Result<H2Memory, String> {
    let daemon = Daemon::start(dir, &[])?;
    let res = memory_on(&daemon, streams).await;
    if res.is_err() {
        eprintln!("mcpmux log tail:\n{}", daemon.proc.tail());
    }
    daemon.stop();
    res
}

async fn memory_on(daemon: &Daemon, streams: usize) -> Result<H2Memory, String> {
    let pid = daemon.pid();
    let ep = Endpoint::parse(&daemon.url)?;
    let headers = scale::open_sessions(&ep, streams).await?;
    let before = scale::settled_rss(pid, Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let mut holders = Vec::new();
    let mut connections = 0;
    for chunk in headers.chunks(PER_CONN) {
        let tcp = TcpStream::connect(ep.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        connections += 1;
        holders.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut opening = Vec::with_capacity(chunk.len());
        for block in chunk {
            let mut sender = sender.clone();
            let req = get_request(&ep, block)?;
            opening.push(tokio::spawn(async move {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("HTTP/2 stream: {e}"))?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("HTTP/2 GET: {e}"))
            }));
        }
        for o in opening {
            let resp = o.await.map_err(|e| format!("task: {e}"))??;
            if resp.status() != 200 {
                stop.cancel();
                return Err(format!("HTTP/2 GET stream: HTTP {}", resp.status()));
            }
            let stop = stop.clone();
            holders.push(tokio::spawn(async move {
                let mut body = resp.into_body();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        frame = body.frame() => {
                            if !matches!(frame, Some(Ok(_))) {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    let open = scale::settled_rss(pid, Duration::from_secs(5)).await;
    stop.cancel();
    for h in holders {
        h.abort();
    }
    let per_stream_kb = open.saturating_sub(before) as f64 / headers.len().max(1) as f64;
    eprintln!(
        "  {} idle GET streams over HTTP/2 ({connections} connections): RSS {before} -> {open} KiB, {per_stream_kb:.2} KiB each",
        headers.len()
    );
    Ok(H2Memory {
        streams: headers.len(),
        connections,
        before_kb: before,
        open_kb: open,
        per_stream_kb,
    })
}

/// The session's GET, its header block (`name: value\r\n` lines) turned into h2 headers.
fn get_request(ep: &Endpoint, block: &[u8]) -> Result<hyper::Request<Empty<Bytes>>, String> {
    let uri = format!("http://{}{}", ep.addr, ep.path);
    let mut req = hyper::Request::get(uri);
    for line in String::from_utf8_lossy(block).split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("accept") {
            continue;
        }
        req = req.header(name, value.trim());
    }
    req.header("accept", "text/event-stream")
        .body(Empty::new())
        .map_err(|e| format!("GET request: {e}"))
}
