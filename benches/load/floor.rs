//! The HTTP floor: a minimal Streamable HTTP server that answers `tools/call echo` itself,
//! with no child behind it. It runs in its own process (this bench binary, re-executed with
//! `--http-floor-server`) on the same hyper and tokio as mcpmux, so what it costs is what any
//! gateway on this stack pays for HTTP alone; the rest of mcpmux's cost is its own.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

/// The flag that turns this binary into the floor server.
pub const FLAG: &str = "--http-floor-server";
/// The flag that makes this binary time one direct cold start of the backend and exit.
pub const COLD_FLAG: &str = "--stdio-cold-floor";

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    arguments: Option<Args<'a>>,
}

#[derive(Deserialize)]
struct Args<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

const SESSION: &str = "floor-session";

/// A JSON response.
pub fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The answer to `initialize` (request id `id`, raw JSON) of a floor server named `name`,
/// opening session `session`.
pub fn initialized(id: &str, name: &str, session: &'static str) -> Response<Full<Bytes>> {
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":"{}","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"{name}","version":"1"}}}}}}"#,
        crate::mcp::PROTOCOL
    );
    let mut r = reply(StatusCode::OK, Bytes::from(text));
    r.headers_mut()
        .insert("mcp-session-id", http::HeaderValue::from_static(session));
    r
}

/// The request's whole body; empty when it cannot be read (then it parses as no message).
pub async fn body_of(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = body_of(req).await;
    let Ok(msg) = serde_json::from_slice::<Msg<'_>>(&body) else {
        return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let Some(id) = msg.id else {
        return Ok(reply(StatusCode::ACCEPTED, Bytes::new())); // a notification
    };
    let id = id.get();
    let out = match msg.method {
        Some("initialize") => return Ok(initialized(id, "http-floor", SESSION)),
        Some("tools/call") => {
            let message = msg
                .params
                .and_then(|p| p.arguments)
                .and_then(|a| a.message)
                .map_or("\"\"", |m| m.get());
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":{message}}}]}}}}"#
            )
        }
        _ => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#),
    };
    Ok(reply(StatusCode::OK, Bytes::from(out)))
}

/// Times one spawn-plus-initialize of `mcp-echo` and prints the milliseconds. Run as a
/// fresh, small process, like mcpmux: spawning from the big, busy bench process would make
/// the floor slower than it is.
pub fn cold_once() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cold floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::stdio::cold(crate::procs::MCP_ECHO)) {
        Ok(took) => {
            println!("{}", took.as_secs_f64() * 1e3);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cold floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until killed; prints `listening on http://ADDR/mcp` to stderr like mcpmux.
pub fn serve() -> std::process::ExitCode {
    run_server(
        "http floor",
        serve_http(|| hyper::service::service_fn(answer)),
    )
}

/// Runs `server` on a multi-thread runtime like mcpmux's; its error is printed as `name: …`.
pub fn run_server(
    name: &str,
    server: impl Future<Output = Result<(), String>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(server) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds a loopback port, prints `listening on http://ADDR/mcp`, and serves every
/// connection over HTTP/1 with a service from `service`, until killed.
pub async fn serve_http<S>(service: impl Fn() -> S) -> Result<(), String>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    if let Ok(addr) = listener.local_addr() {
        eprintln!("listening on http://{addr}/mcp");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
