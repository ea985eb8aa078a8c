//! `mcp-echo`: the example stdio MCP server shipped beside `mcpmux`.
//!
//! The demo tenant in `clients/` runs it, and the end-to-end tests and the load benchmark use it
//! as the child behind the gateway. It owns nothing but its tools: `echo`, `add`, `slow` (progress
//! and cancellation), `pid` (has the child been replaced?) and `env` (is the child's environment
//! isolated?). It speaks the session-era protocol (rmcp's newest version with `initialize`) over
//! stdin/stdout; stdout carries only the protocol, logs go to stderr.
//!
//! Invariant: stdin EOF ends the process promptly with exit code 0, even with a `slow` call in
//! flight, because the gateway's stop sequence starts by closing stdin.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use clap::Parser;
use rmcp::{
    RoleServer, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        Implementation, ProgressNotificationParam, ProtocolVersion, ServerCapabilities,
        ServerConfig,
    },
    schemars::{self, JsonSchema},
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Longest `slow` call accepted, so a caller cannot make the deadline arithmetic overflow.
const MAX_SLOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Most progress steps in one `slow` call, so a caller cannot make it flood the client.
const MAX_SLOW_STEPS: u32 = 1000;
/// Progress steps of a `slow` call that names none.
const DEFAULT_SLOW_STEPS: u32 = 5;
/// Log filter used when `RUST_LOG` is unset: rmcp logs every notification at `info`.
const DEFAULT_LOG_FILTER: &str = "mcp_echo=info,rmcp=warn";

/// Example stdio MCP server for mcpmux (tools: echo, add, slow, pid, env).
///
/// Speaks newline-delimited JSON-RPC on stdin/stdout; logs go to stderr (filter: RUST_LOG).
#[derive(Parser)]
#[command(name = "mcp-echo", version, about)]
struct Cli {}

#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    /// Text to send back unchanged.
    message: String,
}

#[derive(Deserialize, JsonSchema)]
struct AddArgs {
    /// First addend.
    a: f64,
    /// Second addend.
    b: f64,
}

#[derive(Deserialize, JsonSchema)]
struct SlowArgs {
    /// Total time to sleep, in milliseconds.
    ms: u64,
    /// Number of progress steps (default 5); progress is sent only with a progressToken.
    steps: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
struct EnvArgs {
    /// Name of the environment variable to read.
    name: String,
}

/// The server: a tool router plus the token that fires when stdin reaches EOF.
#[derive(Clone)]
struct Echo {
    tool_router: ToolRouter<Self>,
    /// Cancelled on stdin EOF. rmcp waits up to 5 s for in-flight handlers after EOF; watching
    /// this token lets `slow` stop at once so the process exits promptly.
    stdin_closed: CancellationToken,
}

#[tool_router]
impl Echo {
    fn new(stdin_closed: CancellationToken) -> Self {
        Self {
            tool_router: Self::tool_router(),
            stdin_closed,
        }
    }

    #[tool(description = "Return the message unchanged.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.message
    }

    #[tool(description = "Return the sum of a and b.")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(
        description = "Sleep ms milliseconds in steps, sending progress per step when the \
                       request has a progressToken; stops early when cancelled."
    )]
    async fn slow(
        &self,
        Parameters(args): Parameters<SlowArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        // An `Err` here is a tool result with isError (bad input is the tool's failure, not a
        // protocol error), and it keeps rmcp from logging a warning for a cancelled call.
        if args.ms > MAX_SLOW_MS {
            return Err(format!("ms must be at most {MAX_SLOW_MS}"));
        }
        let steps = args
            .steps
            .unwrap_or(DEFAULT_SLOW_STEPS)
            .clamp(1, MAX_SLOW_STEPS);
        let work = run_steps(&ctx, Duration::from_millis(args.ms), steps);
        tokio::select! {
            () = work => Ok(format!("done after {} ms", args.ms)),
            // rmcp drops the reply to a cancelled request, so nobody sees this one.
            () = ctx.ct.cancelled() => Err("slow: cancelled".to_owned()),
            // Seen only if stdout is still read while the process exits.
            () = self.stdin_closed.cancelled() => Err("slow: stopped, stdin closed".to_owned()),
        }
    }

    #[tool(description = "Return this server's process id.")]
    async fn pid(&self) -> String {
        std::process::id().to_string()
    }

    #[tool(description = "Return the value of environment variable name, or <unset>.")]
    async fn env(&self, Parameters(args): Parameters<EnvArgs>) -> String {
        match std::env::var_os(&args.name) {
            Some(value) => value.to_string_lossy().into_owned(),
            None => "<unset>".to_owned(),
        }
    }
}

// Route through the stored router: the macro's default rebuilds it on every call.
#[tool_handler(router = self.tool_router)]
impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            // Children are session-era: the gateway always initializes them.
            .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
            .with_server_info(Implementation::new("mcp-echo", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Example server shipped with mcpmux. Tools: echo, add, slow (progress and \
                 cancellation), pid, env.",
            )
    }
}

/// Sleeps `total` in `steps` equal parts, reporting progress after each part when the request
/// carried a progress token. Deadlines are absolute so notification latency does not add up.
async fn run_steps(ctx: &RequestContext<RoleServer>, total: Duration, steps: u32) {
    let token = ctx.meta.get_progress_token();
    let start = tokio::time::Instant::now();
    for step in 1..=steps {
        // `total / steps * step` never exceeds `total`, and the last step lands on it exactly.
        let offset = if step == steps {
            total
        } else {
            total / steps * step
        };
        tokio::time::sleep_until(start + offset).await;
        if let Some(token) = &token {
            let param = ProgressNotificationParam::new(token.clone(), f64::from(step))
                .with_total(f64::from(steps));
            if let Err(error) = ctx.peer.notify_progress(param).await {
                tracing::debug!(%error, "progress notification not sent");
            }
        }
    }
}

/// Stdin reader that cancels a token when it reaches EOF, so long tools can stop early.
struct EofSignal<R> {
    inner: R,
    closed: CancellationToken,
}

impl<R: AsyncRead + Unpin> AsyncRead for EofSignal<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        // A successful read that adds nothing to a buffer with room is EOF.
        if let Poll::Ready(Ok(())) = &poll
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.closed.cancel();
        }
        poll
    }
}

// One thread: each tenant gets its own child, and a request's work is tiny, so cross-thread
// hand-offs would cost more than they save.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        // mcpmux stamps each stderr line itself.
        .without_time()
        .init();

    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves MCP on stdin/stdout until stdin closes.
async fn serve() -> anyhow::Result<()> {
    let stdin_closed = CancellationToken::new();
    // The pipe variant of rmcp's stdio transport: reads and writes run on the reactor instead of
    // the blocking pool when both ends are pipes (as under mcpmux), else it falls back to stdio().
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let stdin = EofSignal {
        inner: stdin,
        closed: stdin_closed.clone(),
    };
    tracing::info!(pid = std::process::id(), "mcp-echo serving on stdio");
    let service = Echo::new(stdin_closed)
        .serve((stdin, stdout))
        .await
        .map_err(|e| anyhow::anyhow!("initialize failed: {e}"))?;
    let reason = service.waiting().await?;
    tracing::info!(?reason, "mcp-echo finished");
    Ok(())
}
