//! Command line: `mcpmux [serve] [FLAGS]`, `mcpmux check [DIR]`, `hash-token`, `completions SHELL`.
//!
//! Every flag has an environment equivalent (DESIGN §5). Values are parsed here and
//! validated into [`crate::settings::Settings`]; nothing in this file binds or spawns.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mcpmux: many tenants' stdio MCP servers behind one Streamable HTTP endpoint.
#[derive(Debug, Parser)]
#[command(name = "mcpmux", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without one, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon flags when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing the daemon flags would buy nothing"
)]
pub enum Command {
    /// Run the daemon (the default).
    Serve(ServeArgs),
    /// Print the `token_sha256` value for a bearer token read from stdin.
    HashToken,
    /// Validate a clients directory, print every error with its file, exit 1 if any.
    Check {
        /// The directory to check (default: $MCPMUX_CLIENTS or ./clients).
        #[arg(env = "MCPMUX_CLIENTS", default_value = "./clients")]
        dir: PathBuf,
    },
    /// Print a completion script for SHELL on stdout (e.g. `source <(mcpmux completions bash)`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout; packages install it as mcpmux(1).
    #[command(hide = true)]
    Man,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether children run in a Landlock sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// Sandbox where the kernel has Landlock; warn once and run unsandboxed where not.
    Auto,
    /// Refuse to start without Landlock signal scoping (ABI 6 or later).
    Required,
    /// Never sandbox.
    Off,
}

/// Flags of the daemon.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the tenant-facing MCP endpoint.
    #[arg(long, env = "MCPMUX_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of client files (`<id>.json`).
    #[arg(long, env = "MCPMUX_CLIENTS", default_value = "./clients")]
    pub clients: PathBuf,
    /// Directory holding one state directory per tenant (its child's default cwd, HOME and
    /// TMPDIR). Default: $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/mcpmux, else
    /// ~/.local/state/mcpmux.
    #[arg(long, env = "MCPMUX_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Landlock sandbox for children.
    #[arg(long, env = "MCPMUX_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: SandboxMode,
    /// Address of the admin endpoints (health, metrics, status).
    #[arg(long, env = "MCPMUX_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Default idle TTL of a child, in seconds.
    #[arg(long, env = "MCPMUX_IDLE_TTL", default_value_t = 300)]
    pub idle_ttl: u64,
    /// Log format.
    #[arg(long, env = "MCPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest accepted request body, in bytes (413 above).
    #[arg(long, env = "MCPMUX_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest stdout line accepted from a child, in bytes (longer: the child is restarted).
    #[arg(long, env = "MCPMUX_MAX_LINE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_line_bytes: usize,
    /// Seconds a request may wait for its answer; each progress notification restarts it.
    #[arg(long, env = "MCPMUX_REQUEST_TIMEOUT", default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Seconds to wait after closing a child's stdin, and again after SIGTERM.
    #[arg(long, env = "MCPMUX_STOP_GRACE", default_value_t = 3.0)]
    pub stop_grace: f64,
    /// Quiet time after a change in the clients directory before it is rescanned.
    #[arg(long, env = "MCPMUX_RELOAD_DEBOUNCE_MS", default_value_t = 200)]
    pub reload_debounce_ms: u64,
    /// `Origin` values allowed besides loopback origins (comma-separated); requests with
    /// another Origin get 403.
    #[arg(long, env = "MCPMUX_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Check `Host` too: names (`name` or `name:port`, comma-separated) allowed besides
    /// loopback ones. Off by default: reverse proxies pass their own names.
    #[arg(long, env = "MCPMUX_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Requests one tenant may have in flight at once (503 above).
    #[arg(long, env = "MCPMUX_MAX_INFLIGHT_PER_TENANT", default_value_t = 256)]
    pub max_inflight_per_tenant: usize,
    /// Seconds a session may go unused before it is forgotten (404 afterwards).
    #[arg(long, env = "MCPMUX_SESSION_TTL", default_value_t = 3600)]
    pub session_ttl: u64,
    /// Sessions one tenant may have open. At the cap a new session ends the tenant's least
    /// recently used session that has no open stream and nothing in flight; with none, 503.
    #[arg(long, env = "MCPMUX_MAX_SESSIONS_PER_TENANT", default_value_t = crate::mcp::admission::DEFAULT_MAX_PER_TENANT)]
    pub max_sessions_per_tenant: usize,
    /// Sessions all tenants together may have open; at the cap as above, over all tenants.
    #[arg(long, env = "MCPMUX_MAX_SESSIONS", default_value_t = crate::mcp::admission::DEFAULT_MAX_TOTAL)]
    pub max_sessions: usize,
    /// Most children alive at once; at the cap the longest-idle one is stopped first.
    #[arg(long, env = "MCPMUX_MAX_CHILDREN", default_value_t = 1024)]
    pub max_children: usize,
    /// Serve tenants whose client file has no `token_sha256` (anyone who can reach the
    /// port may then use them). Without it, such tenants answer 401.
    #[arg(long, env = "MCPMUX_ALLOW_OPEN_TENANTS")]
    pub allow_open_tenants: bool,
    /// Seconds a client gets to send its request headers (the first one from accept, the
    /// next ones from the end of the previous response: this is also the idle limit of a
    /// keep-alive connection, HTTP/1 and HTTP/2).
    #[arg(long, env = "MCPMUX_HEADER_READ_TIMEOUT", default_value_t = 30.0)]
    pub header_read_timeout: f64,
    /// Seconds a client gets to send a request body once its headers are in (408 and
    /// close after).
    #[arg(long, env = "MCPMUX_BODY_READ_TIMEOUT", default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Connections the tenant port holds at once. Default: derived from the open-file
    /// limit (see the log line `connection budget` at start).
    #[arg(long, env = "MCPMUX_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Make /readyz fail (503) while any tenant's child is in a crash loop.
    #[arg(long, env = "MCPMUX_READY_REQUIRES_NO_CRASHLOOP")]
    pub ready_requires_no_crashloop: bool,
    /// Seconds to let in-flight requests finish on SIGTERM before children are stopped.
    #[arg(long, env = "MCPMUX_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Seconds to keep accepting and serving after SIGTERM turned /readyz to 503, so a load
    /// balancer sees the node leave before its connections are refused; then the drain.
    #[arg(long, env = "MCPMUX_SHUTDOWN_DELAY", default_value_t = 0.0)]
    pub shutdown_delay: f64,
    /// Seconds a request whose SSE reply connection broke keeps running for its caller to
    /// resume it (GET with Last-Event-ID); then it is cancelled at the child. 0: at once.
    #[arg(long, env = "MCPMUX_RESUME_GRACE", default_value_t = 5.0)]
    pub resume_grace: f64,
    /// Seconds a relayed request may stay unanswered before a caller that accepts
    /// text/event-stream gets its reply as SSE (headers at once, the result as an event),
    /// so a load balancer's client sees headers before a node can die mid-call. 0: always.
    #[arg(long, env = "MCPMUX_SSE_AFTER", default_value_t = 1.0)]
    pub sse_after: f64,
    /// Sign session ids with the keys in this file (one 64-hex-character key per line, mode
    /// 0600 or stricter; the first signs, all verify), so any node sharing it resumes them.
    #[arg(long, env = "MCPMUX_SESSION_KEY_FILE")]
    pub session_key_file: Option<PathBuf>,
    /// Seconds a signed session id stays valid from its issue, on every node.
    #[arg(long, env = "MCPMUX_SESSION_LIFETIME", default_value_t = 86_400)]
    pub session_lifetime: u64,
}
