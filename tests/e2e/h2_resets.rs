//! HTTP/2 reset floods (DESIGN §7, issue 10): a peer that opens streams and resets them
//! before the daemon accepts them (rapid reset, CVE-2023-44487) gets GOAWAY
//! `ENHANCE_YOUR_CALM` and loses its connection, while other HTTP/2 clients keep being
//! served.
//!
//! The flooding peer writes raw frames, as an attacker does: a library client would
//! never put a stream's HEADERS and its RST_STREAM into the same write.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::util::{ACCEPT_BOTH, Daemon, TempClients, echo_spec, initialize_params};

const PROMPT: Duration = Duration::from_secs(5);

/// The client connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
    out
}

const TYPE_HEADERS: u8 = 0x1;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// HPACK (RFC 7541, static table only): `:method: POST`, `:scheme: http`, `:path: /mcp`.
fn request_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // indexed: :method POST, :scheme http
    block.extend([0x04, 4]); // literal without indexing, name :path, 4 bytes
    block.extend(b"/mcp");
    block
}

/// The frames the server sent, as (type, stream, payload), until it closed the
/// connection (bounded).
async fn frames_until_closed(sock: &mut TcpStream) -> Vec<(u8, u32, Vec<u8>)> {
    let mut raw = Vec::new();
    let read = timeout(PROMPT, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the daemon must close the flooding connection"
    );
    let mut frames = Vec::new();
    let mut rest = &raw[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let Some(payload) = rest.get(9..9 + len) else {
            break; // cut off by the close
        };
        frames.push((rest[3], stream, payload.to_vec()));
        rest = &rest[9 + len..];
    }
    frames
}

/// The error code of the GOAWAY among `frames`; panics when there is none.
fn goaway_code(frames: &[(u8, u32, Vec<u8>)]) -> u32 {
    let (_, _, payload) = frames
        .iter()
        .find(|(kind, _, _)| *kind == TYPE_GOAWAY)
        .expect("the daemon must send GOAWAY");
    u32::from_be_bytes(payload[4..8].try_into().unwrap())
}

/// A well-behaved HTTP/2 client on its own connection: `initialize` for `client_id`
/// answered 200 with the server's info.
struct Client {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let exec = hyper_util::rt::TokioExecutor::new();
        let (send, conn) = hyper::client::conn::http2::handshake(exec, io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { send, addr }
    }

    async fn initialize(&mut self, client_id: &str) {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()});
        let req = http::Request::post(format!("http://{}/mcp", self.addr))
            .header("content-type", "application/json")
            .header("accept", ACCEPT_BOTH)
            .header("x-client-id", client_id)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = timeout(PROMPT, self.send.send_request(req))
            .await
            .expect("a well-behaved client must be answered promptly")
            .expect("its connection must stay up");
        assert_eq!(resp.status(), 200);
        let body = timeout(PROMPT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("serverInfo"), "{text}");
    }
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_other_h2_clients_are_served() {
    let clients = TempClients::new();
    clients.write("edge", &echo_spec());
    let daemon = Daemon::start(&clients, &[]).await;
    let mut bystander = Client::connect(daemon.addr()).await;
    bystander.initialize("edge").await;

    // 100 streams opened and cancelled in one write: each is reset before the daemon can
    // accept it, 5 times the 20 the daemon tolerates.
    let mut flood = preface();
    for n in 0..100u32 {
        let stream = 2 * n + 1;
        flood.extend(frame(TYPE_HEADERS, END_HEADERS, stream, &request_headers()));
        flood.extend(frame(TYPE_RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let mut attacker = TcpStream::connect(daemon.addr()).await.unwrap();
    attacker.write_all(&flood).await.unwrap();
    let frames = frames_until_closed(&mut attacker).await;
    assert_eq!(goaway_code(&frames), ENHANCE_YOUR_CALM, "{frames:?}");

    // The bystander's connection was never touched, and new ones are served too.
    bystander.initialize("edge").await;
    Client::connect(daemon.addr())
        .await
        .initialize("edge")
        .await;
}
