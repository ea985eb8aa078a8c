//! MCP over Streamable HTTP as a load client speaks it: `initialize`, then
//! `notifications/initialized`, then `tools/call echo` with a message that carries the
//! request id, so a reply routed to the wrong caller is caught.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::{Conn, Endpoint, Reply};

/// Protocol version the load client asks for.
pub const PROTOCOL: &str = "2025-06-18";

/// `initialize` with request id `id`.
pub fn initialize(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"mcpmux-load","version":"1"}}}}}}"#
    )
}

/// The notification that ends the handshake.
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// `tools/call echo` whose message names the id.
pub fn echo_call(out: &mut Vec<u8>, id: u64) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"m<{id}>"}}}}}}"#
    );
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// Checks a JSON-RPC response: the right id, a result, and (for `echo`) the echoed text.
pub fn check(body: &[u8], id: u64, echo: bool) -> Result<(), String> {
    let resp: Response<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON-RPC response ({e}): {}", preview(body)))?;
    let want = id.to_string();
    if resp.id.map(RawValue::get) != Some(want.as_str()) {
        return Err(format!("want id {id}, got {}", preview(body)));
    }
    if let Some(error) = resp.error {
        return Err(format!("JSON-RPC error: {}", error.get()));
    }
    let result = resp.result.ok_or("response has no result")?;
    if echo && !result.get().contains(&format!("m<{id}>")) {
        return Err(format!("echo of id {id} missing: {}", preview(body)));
    }
    Ok(())
}

fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Header block of every request: JSON in, JSON or SSE out, plus the tenant header.
fn base_headers(tenant: Option<&str>) -> String {
    let mut h = String::from(
        "content-type: application/json\r\naccept: application/json, text/event-stream\r\n",
    );
    if let Some(t) = tenant {
        h.push_str(&format!("x-client-id: {t}\r\n"));
    }
    h
}

/// An initialized MCP session on its own keep-alive connection.
pub struct Session {
    /// The connection it uses.
    pub conn: Conn,
    /// `Mcp-Session-Id`, when the server gave one.
    pub id: Option<String>,
    headers: Vec<u8>,
    body: Vec<u8>,
}

/// A completed handshake: the session id and the header block its requests carry.
pub struct Handshake {
    /// `Mcp-Session-Id`, when the server gave one.
    pub session_id: Option<String>,
    /// Header lines for the session's requests (tenant, session, version).
    pub headers: Vec<u8>,
    /// Latency of `initialize`.
    pub init: Duration,
}

/// `initialize` then `notifications/initialized` on `conn`.
pub async fn handshake(
    conn: &mut Conn,
    tenant: Option<&str>,
    init_id: u64,
) -> Result<Handshake, String> {
    let base = base_headers(tenant);
    let t = Instant::now();
    let reply = conn
        .request("POST", base.as_bytes(), initialize(init_id).as_bytes())
        .await?;
    let init = reply.answered_at.saturating_duration_since(t);
    ok_status(&reply, "initialize")?;
    check(&reply.body, init_id, false).map_err(|e| format!("initialize: {e}"))?;
    let version = negotiated(&reply.body);
    let mut headers = base;
    if let Some(sid) = &reply.session_id {
        headers.push_str(&format!("mcp-session-id: {sid}\r\n"));
    }
    headers.push_str(&format!("mcp-protocol-version: {version}\r\n"));
    let note = conn
        .request("POST", headers.as_bytes(), INITIALIZED.as_bytes())
        .await?;
    if !(200..300).contains(&note.status) {
        return Err(format!(
            "notifications/initialized: HTTP {}: {}",
            note.status,
            preview(&note.body)
        ));
    }
    Ok(Handshake {
        session_id: reply.session_id,
        headers: headers.into_bytes(),
        init,
    })
}

impl Session {
    /// Runs the handshake on `conn` and keeps both.
    pub async fn open(mut conn: Conn, tenant: Option<&str>, init_id: u64) -> Result<Self, String> {
        let hs = handshake(&mut conn, tenant, init_id).await?;
        Ok(Self {
            conn,
            id: hs.session_id,
            headers: hs.headers,
            body: Vec::with_capacity(256),
        })
    }

    /// One `tools/call echo` with id `id`; returns its latency (to the response bytes).
    pub async fn call(&mut self, id: u64) -> Result<Duration, String> {
        echo_call(&mut self.body, id);
        let t = Instant::now();
        let reply = self.conn.request("POST", &self.headers, &self.body).await?;
        let took = reply.answered_at.saturating_duration_since(t);
        ok_status(&reply, "tools/call")?;
        check(&reply.body, id, true)?;
        Ok(took)
    }

    /// A POST that carries no session (answered before MCP: the pipeline's cheapest
    /// request); returns the status. Used to watch reloads take effect.
    pub async fn probe(conn: &mut Conn, tenant: &str) -> Result<u16, String> {
        let headers = base_headers(Some(tenant));
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        Ok(conn.request("POST", headers.as_bytes(), body).await?.status)
    }

    /// Ends the session (best effort).
    pub async fn delete(&mut self) {
        if self.id.is_some() {
            let _ = self.conn.request("DELETE", &self.headers, b"").await;
        }
    }
}

fn ok_status(reply: &Reply, what: &str) -> Result<(), String> {
    if reply.status == 200 {
        return Ok(());
    }
    Err(format!(
        "{what}: HTTP {}: {}",
        reply.status,
        preview(&reply.body)
    ))
}

fn negotiated(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Init {
        result: InitResult,
    }
    #[derive(Deserialize)]
    struct InitResult {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
    }
    serde_json::from_slice::<Init>(body)
        .map(|i| i.result.protocol_version)
        .unwrap_or_else(|_| PROTOCOL.to_string())
}

/// Opens a session on a fresh connection to `ep`.
pub async fn open(ep: &Endpoint, tenant: Option<&str>, init_id: u64) -> Result<Session, String> {
    Session::open(Conn::new(ep), tenant, init_id).await
}
