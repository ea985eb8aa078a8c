//! A minimal HTTP/1.1 client for load runs: one keep-alive connection per worker, requests
//! written from pre-rendered header blocks, responses read with `Content-Length`, chunked or
//! close-delimited bodies, and `text/event-stream` replies scanned for the JSON-RPC
//! response. Small on purpose: the driver shares two cores with the gateway it measures,
//! so every microsecond it spends is one the gateway does not get.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest wait for one whole exchange: a hung server fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket address.
    pub addr: SocketAddr,
    /// Path of the MCP endpoint (`/mcp`, `/servers/echo/mcp`).
    pub path: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT/PATH` (an IP host: the benchmark only talks to loopback).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("not an http:// URL: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = authority
            .parse()
            .map_err(|e| format!("{url}: host must be IP:PORT: {e}"))?;
        let path = if path.is_empty() { "/" } else { path };
        Ok(Self {
            addr,
            path: path.to_string(),
        })
    }
}

/// A response, as far as the benchmark needs it.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Mcp-Session-Id`, when sent.
    pub session_id: Option<String>,
    /// The body; for an SSE reply, the `data` of the event holding the JSON-RPC response.
    pub body: Vec<u8>,
    /// When the response (the JSON-RPC one, for SSE) was complete.
    pub answered_at: Instant,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

struct Head {
    status: u16,
    framing: Framing,
    sse: bool,
    close: bool,
    session_id: Option<String>,
}

/// One keep-alive connection.
pub struct Conn {
    ep: Endpoint,
    stream: Option<TcpStream>,
    /// Read buffer: bytes `rpos..` are unread.
    rbuf: Vec<u8>,
    rpos: usize,
    /// The request being written (reused).
    wbuf: Vec<u8>,
}

impl Conn {
    /// A connection to `ep`, opened lazily by the first request.
    pub fn new(ep: &Endpoint) -> Self {
        Self {
            ep: ep.clone(),
            stream: None,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
        }
    }

    /// Opens the TCP connection now (Nagle off, as any RPC client would).
    pub async fn connect(&mut self) -> Result<(), String> {
        let stream = TcpStream::connect(self.ep.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.ep.addr))?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.rbuf.clear();
        self.rpos = 0;
        Ok(())
    }

    fn render(&mut self, method: &str, headers: &[u8], body: &[u8]) {
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(method.as_bytes());
        w.push(b' ');
        w.extend_from_slice(self.ep.path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        w.extend_from_slice(self.ep.addr.to_string().as_bytes());
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(headers);
        if method == "POST" {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(body.len().to_string().as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(body);
    }

    /// Sends a request and reads the whole response. `headers` is a pre-rendered block of
    /// `name: value\r\n` lines. A reused connection the server closed while idle is
    /// reopened and the request sent again (nothing of it was read by then).
    pub async fn request(
        &mut self,
        method: &str,
        headers: &[u8],
        body: &[u8],
    ) -> Result<Reply, String> {
        self.render(method, headers, body);
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let reused = self.stream.is_some();
            if !reused {
                self.connect().await?;
            }
            match self.exchange().await {
                Ok(reply) => Ok(reply),
                Err(Failed::Stale(_)) if reused => {
                    self.connect().await?;
                    self.exchange().await.map_err(Failed::into_message)
                }
                Err(e) => Err(e.into_message()),
            }
        })
        .await;
        res.unwrap_or_else(|_| {
            self.stream = None;
            Err(format!("no response in {} s", REQUEST_TIMEOUT.as_secs()))
        })
    }

    async fn exchange(&mut self) -> Result<Reply, Failed> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failed::Stale("not connected".into()));
        };
        if let Err(e) = stream.write_all(&self.wbuf).await {
            self.stream = None;
            return Err(Failed::Stale(format!("write: {e}")));
        }
        let head = match self.read_head().await {
            Ok(head) => head,
            Err(e) => {
                self.stream = None;
                return Err(e);
            }
        };
        let mut body = Vec::new();
        let mut answered_at = None;
        let mut sse = head.sse.then(SseScan::default);
        let res = self
            .read_body(head.framing, |piece| match &mut sse {
                None => body.extend_from_slice(piece),
                Some(scan) => {
                    if answered_at.is_none()
                        && let Some(message) = scan.feed(piece)
                    {
                        body = message;
                        answered_at = Some(Instant::now());
                    }
                }
            })
            .await;
        if let Err(e) = res {
            self.stream = None;
            return Err(Failed::Other(e));
        }
        if head.close || matches!(head.framing, Framing::Close) {
            self.stream = None;
        }
        Ok(Reply {
            status: head.status,
            session_id: head.session_id,
            body,
            answered_at: answered_at.unwrap_or_else(Instant::now),
        })
    }

    async fn fill(&mut self) -> Result<usize, String> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        let stream = self.stream.as_mut().ok_or("not connected")?;
        self.rbuf.reserve(16 * 1024);
        stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| format!("read: {e}"))
    }

    async fn read_head(&mut self) -> Result<Head, Failed> {
        let mut first = true;
        loop {
            let unread = &self.rbuf[self.rpos..];
            if let Some(end) = find(unread, b"\r\n\r\n") {
                let head = parse_head(&unread[..end]).map_err(Failed::Other)?;
                self.rpos += end + 4;
                return Ok(head);
            }
            if unread.len() > MAX_HEAD {
                return Err(Failed::Other("response head too long".into()));
            }
            // A reset on a reused connection is the server having closed it while idle.
            let n = self.fill().await.map_err(Failed::Stale)?;
            if n == 0 {
                let msg = "connection closed before a response".to_string();
                // EOF before any byte: the server closed the idle connection.
                let empty = first && self.rpos == self.rbuf.len();
                return Err(if empty {
                    Failed::Stale(msg)
                } else {
                    Failed::Other(msg)
                });
            }
            first = false;
        }
    }

    /// Feeds the body to `sink` piece by piece until it ends.
    async fn read_body(
        &mut self,
        framing: Framing,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        match framing {
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.rpos == self.rbuf.len() && self.fill().await? == 0 {
                        return Err("connection closed inside a body".into());
                    }
                    let take = left.min(self.rbuf.len() - self.rpos);
                    sink(&self.rbuf[self.rpos..self.rpos + take]);
                    self.rpos += take;
                    left -= take;
                }
                Ok(())
            }
            Framing::Close => loop {
                if self.rpos < self.rbuf.len() {
                    sink(&self.rbuf[self.rpos..]);
                    self.rpos = self.rbuf.len();
                }
                if self.fill().await? == 0 {
                    return Ok(());
                }
            },
            Framing::Chunked => loop {
                let line = self.read_line().await?;
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                if size == 0 {
                    while !self.read_line().await?.is_empty() {} // trailers
                    return Ok(());
                }
                let mut left = size;
                while left > 0 {
                    if self.rpos == self.rbuf.len() && self.fill().await? == 0 {
                        return Err("connection closed inside a chunk".into());
                    }
                    let take = left.min(self.rbuf.len() - self.rpos);
                    sink(&self.rbuf[self.rpos..self.rpos + take]);
                    self.rpos += take;
                    left -= take;
                }
                if !self.read_line().await?.is_empty() {
                    return Err("chunk not followed by CRLF".into());
                }
            },
        }
    }

    async fn read_line(&mut self) -> Result<String, String> {
        loop {
            let unread = &self.rbuf[self.rpos..];
            if let Some(end) = find(unread, b"\r\n") {
                let line = String::from_utf8_lossy(&unread[..end]).into_owned();
                self.rpos += end + 2;
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err("connection closed inside a chunked body".into());
            }
        }
    }

    /// Sends a GET that opens a stream, reads its head, and returns the status. The
    /// connection then carries the stream; [`Conn::hold`] keeps reading it.
    pub async fn open_stream(&mut self, headers: &[u8]) -> Result<u16, String> {
        self.render("GET", headers, b"");
        if self.stream.is_none() {
            self.connect().await?;
        }
        let stream = self.stream.as_mut().ok_or("not connected")?;
        stream
            .write_all(&self.wbuf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = tokio::time::timeout(REQUEST_TIMEOUT, self.read_head())
            .await
            .map_err(|_| "no response head in 30 s".to_string())?
            .map_err(Failed::into_message)?;
        Ok(head.status)
    }

    /// Reads and discards an open stream (keep-alive comments) until `stop` or EOF;
    /// returns the bytes read.
    pub async fn hold(mut self, stop: CancellationToken) -> u64 {
        let mut total = 0;
        let Some(mut stream) = self.stream.take() else {
            return 0;
        };
        let mut scratch = [0u8; 512];
        loop {
            tokio::select! {
                () = stop.cancelled() => return total,
                n = stream.read(&mut scratch) => match n {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                },
            }
        }
    }

    /// Drops the connection.
    pub fn close(&mut self) {
        self.stream = None;
    }
}

/// Why an exchange failed.
enum Failed {
    /// Nothing came back: on a reused connection the server closed it while it was idle,
    /// so the request can be sent again on a new one.
    Stale(String),
    /// The server answered (in part): not retried.
    Other(String),
}

impl Failed {
    fn into_message(self) -> String {
        match self {
            Self::Stale(m) | Self::Other(m) => m,
        }
    }
}

/// A vector search: a byte-by-byte one would make the client's cost grow with the head
/// (a signed session id is some 400 bytes of it) and show up in the latencies measured.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut out = Head {
        status,
        framing: Framing::Close,
        sse: false,
        close: false,
        session_id: None,
    };
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok(),
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => {
                out.framing = Framing::Chunked;
            }
            "content-type" => out.sse = value.starts_with("text/event-stream"),
            "connection" => out.close = value.eq_ignore_ascii_case("close"),
            "mcp-session-id" => out.session_id = Some(value.to_string()),
            _ => {}
        }
    }
    if !matches!(out.framing, Framing::Chunked) {
        out.framing = match length {
            Some(n) => Framing::Length(n),
            // 1xx, 204 and 304 have no body; others without a length end at close.
            None if status == 204 || status == 304 || status < 200 => Framing::Length(0),
            None => Framing::Close,
        };
    }
    Ok(out)
}

/// Finds the first SSE event whose data is a JSON-RPC response (has `result` or `error`).
#[derive(Default)]
struct SseScan {
    buf: Vec<u8>,
    data: Vec<u8>,
}

impl SseScan {
    fn feed(&mut self, piece: &[u8]) -> Option<Vec<u8>> {
        self.buf.extend_from_slice(piece);
        let mut start = 0;
        let mut found = None;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.buf[start..start + pos];
            start += pos + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                let data = std::mem::take(&mut self.data);
                if found.is_none() && is_response(&data) {
                    found = Some(data);
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
            }
        }
        self.buf.drain(..start);
        found
    }
}

fn is_response(data: &[u8]) -> bool {
    // Requests and notifications carry "method"; a response never does.
    !data.is_empty()
        && find(data, b"\"method\"").is_none()
        && (find(data, b"\"result\"").is_some() || find(data, b"\"error\"").is_some())
}

/// Waits up to `limit` for `f` to succeed, retrying every `every`.
pub async fn retry_until<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
