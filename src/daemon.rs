//! `mcpmux serve`: settings, registry, listeners, reaper, signals, drain, exit.
//!
//! Order (linkerd's): validate settings before binding anything; load the clients
//! directory; bind; announce; serve until SIGTERM/SIGINT; turn `/readyz` to 503 and keep
//! serving for `--shutdown-delay`, so a load balancer stops sending before connections are
//! refused; stop accepting, drain for the grace period, stop every child; exit 0. A second
//! signal during the delay or the drain skips what is left of it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::cli::ServeArgs;
use crate::clients::{Registry, ReloadHandle, ReloadOutcome, WatchConfig, spawn_watcher};
use crate::http::budget::{
    ADMIN_MAX_CONNECTIONS, EVICTION_SLACK, FDS_PER_CHILD, RESERVED_FDS, derived_max_connections,
    nofile_limit,
};
use crate::http::conn::Deadlines;
use crate::http::{App, MCP_PATH, Port};
use crate::pool::Pool;
use crate::settings::Settings;
use crate::shutdown::{Request, Signals};
use crate::systemd::{self, Heartbeat};

/// Safety rescan interval, for file systems that lose events.
const SAFETY_RESCAN: Duration = Duration::from_secs(60);
/// Exit code for bad settings (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// Runs the daemon to completion.
pub fn main(args: ServeArgs) -> ExitCode {
    // Before any thread or child: no inherited descriptor may pass to a tenant's child.
    let sealed = crate::child::inherited::seal_inherited_descriptors();
    crate::logging::init(args.log_format);
    match sealed {
        Ok(0) => {}
        Ok(n) => info!(
            descriptors = n,
            "marked inherited descriptors close-on-exec, so no child gets them"
        ),
        Err(e) => {
            error!("cannot mark inherited descriptors close-on-exec: {e}");
            return ExitCode::FAILURE;
        }
    }
    let settings = match Settings::from_args(&args) {
        Ok(settings) => Arc::new(settings),
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs, settings: Arc<Settings>) -> anyhow::Result<()> {
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let metrics = crate::metrics::install()
        .map_err(|e| warn!(error = %e, "metrics recorder not installed; /metrics will be empty"))
        .ok();
    crate::metrics::limits(
        settings.max_children,
        settings.max_sessions_per_tenant,
        settings.max_sessions,
    );
    let registry = Arc::new(Registry::new());
    // The registry logs each bad file (file and reason) itself.
    registry.reload(&settings.defaults);
    info!(
        clients = registry.snapshot().len(),
        dir = %settings.defaults.clients_dir.display(),
        "clients loaded"
    );
    log_sandbox(&settings.child);

    let shutdown = CancellationToken::new();
    // Cancelled at SIGTERM, before `shutdown` (which waits for --shutdown-delay).
    let unready = CancellationToken::new();
    if let Some(handle) = &metrics {
        // Ends with the daemon; without it histogram samples pile up between scrapes.
        tokio::spawn(crate::metrics::run_upkeep(handle.clone(), shutdown.clone()));
    }
    let pool = Pool::new(registry.clone(), settings.clone());
    let (reload, watcher) = start_watcher(&settings, &registry, &pool, &shutdown)?;
    let (mcp_listener, admin_listener) = bind(&args).await?;
    let heartbeats = [Heartbeat::default(), Heartbeat::default()];

    let app = Arc::new(App {
        pool: pool.clone(),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
    });
    let admin = Arc::new(Admin {
        pool: pool.clone(),
        registry: registry.clone(),
        metrics,
        draining: unready.clone(),
        crashloop_unready: args.ready_requires_no_crashloop,
    });
    let reaper = tokio::spawn(
        pool.clone()
            .run_reaper(shutdown.clone(), heartbeats[1].clone()),
    );
    let grace = settings.shutdown_grace;
    let tenant_port = move |req| {
        let app = app.clone();
        // Boxed per request: hyper reserves room for the handler future in every
        // connection for the connection's whole life, and unboxed it is 7.8 KiB.
        Box::pin(async move { app.handle(req).await })
    };
    let deadlines = Deadlines {
        header: settings.header_read_timeout,
        body: settings.body_read_timeout,
    };
    let tenant = Port {
        name: "tenant",
        max_connections: connection_budget(&settings),
        deadlines,
        grace,
    };
    let server = tokio::spawn(crate::http::serve(
        mcp_listener,
        tenant_port,
        tenant,
        shutdown.clone(),
        heartbeats[0].clone(),
    ));
    let admin_port = move |req| admin.clone().handle(req);
    // The admin port must keep answering /readyz (503) while the tenant port drains.
    let admin_stop = CancellationToken::new();
    let admin = Port {
        name: "admin",
        max_connections: ADMIN_MAX_CONNECTIONS,
        deadlines,
        grace: Duration::from_secs(1),
    };
    let admin_server = tokio::spawn(crate::http::serve(
        admin_listener,
        admin_port,
        admin,
        admin_stop.clone(),
        Heartbeat::default(),
    ));
    let watchdog = tokio::spawn(systemd::run_watchdog(heartbeats.to_vec(), shutdown.clone()));
    systemd::ready();

    while signals.next().await == Request::Reload {
        info!("SIGHUP: rescanning clients");
        systemd::reloading();
        if reload.reload_now().await.is_none() {
            warn!("reload requested but the watcher is not running");
        }
        if let Some(tokens) = &settings.session_tokens {
            match tokens.reload() {
                Ok(keys) => info!(keys, "session key file re-read"),
                Err(e) => error!("session key file not re-read, the keys in force stay: {e}"),
            }
        }
        systemd::ready();
    }
    systemd::stopping();
    unready.cancel();
    delay_drain(settings.shutdown_delay, &mut signals).await;
    info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    shutdown.cancel();
    tokio::select! {
        _ = server => {}
        _ = signals.next() => warn!("second signal: not waiting for in-flight requests"),
    }
    pool.shutdown().await;
    admin_stop.cancel();
    let _ = tokio::join!(reaper, watcher, watchdog, admin_server);
    info!("stopped");
    Ok(())
}

/// Serves on, unready, for `delay` after SIGTERM; a second SIGTERM/SIGINT ends the wait
/// (SIGHUP is ignored: the node is leaving).
async fn delay_drain(delay: Duration, signals: &mut Signals) {
    if delay.is_zero() {
        return;
    }
    info!(
        delay_secs = delay.as_secs_f64(),
        "shutting down: /readyz is 503; serving on until the delay ends"
    );
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return,
            request = signals.next() => match request {
                Request::Shutdown => {
                    warn!("second signal: not waiting for the shutdown delay");
                    return;
                }
                Request::Reload => info!("SIGHUP during the shutdown delay: ignored"),
            },
        }
    }
}

/// `--max-connections`, or the budget derived from the open-file limit; logged either way.
fn connection_budget(settings: &Settings) -> usize {
    if let Some(max) = settings.max_connections {
        info!(
            max_connections = max,
            "connection budget from --max-connections"
        );
        return max;
    }
    let nofile = nofile_limit().unwrap_or(1024);
    let max = derived_max_connections(nofile, settings.max_children);
    info!(
        max_connections = max,
        nofile,
        reserved = RESERVED_FDS,
        admin = ADMIN_MAX_CONNECTIONS,
        eviction_slack = EVICTION_SLACK,
        per_child = FDS_PER_CHILD,
        "connection budget derived from the open-file limit: \
         RLIMIT_NOFILE - reserved - admin - 2 x eviction_slack - children's pipes \
         (max-children x per_child, at most half the rest); set --max-connections to override"
    );
    max
}

fn start_watcher(
    settings: &Arc<Settings>,
    registry: &Arc<Registry>,
    pool: &Arc<Pool>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(ReloadHandle, JoinHandle<()>)> {
    let watch = WatchConfig {
        defaults: settings.defaults.clone(),
        debounce: settings.reload_debounce,
        safety_rescan: SAFETY_RESCAN,
    };
    let pool = pool.clone();
    let on_reload = Arc::new(move |outcome: &ReloadOutcome| {
        crate::metrics::reloaded(outcome.errors.len());
        pool.on_reload(&outcome.diff);
    });
    spawn_watcher(watch, registry.clone(), on_reload, shutdown.clone())
        .with_context(|| format!("cannot watch {}", settings.defaults.clients_dir.display()))
}

/// The tenant and admin listeners: from systemd socket activation when it passed them,
/// else bound from the flags. Logs one line per address.
async fn bind(args: &ServeArgs) -> anyhow::Result<(TcpListener, TcpListener)> {
    let activated = systemd::activated().context("cannot adopt sockets passed by systemd")?;
    let mcp = listener(activated.mcp, args.listen).await?;
    let admin = listener(activated.admin, args.admin_listen).await?;
    let mcp_addr = mcp.local_addr().context("cannot read the bound address")?;
    let admin_addr = admin
        .local_addr()
        .context("cannot read the bound address")?;
    info!("listening on http://{mcp_addr}{MCP_PATH}");
    info!("admin listening on http://{admin_addr} (/healthz /readyz /metrics /status)");
    Ok((mcp, admin))
}

async fn listener(
    passed: Option<std::net::TcpListener>,
    addr: SocketAddr,
) -> anyhow::Result<TcpListener> {
    match passed {
        Some(std) => TcpListener::from_std(std).context("cannot use a socket passed by systemd"),
        None => crate::http::bind(addr).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Says once, at start-up, how children will be sandboxed (a warning when they will not be,
/// or only partly).
fn log_sandbox(child: &crate::child::ChildSettings) {
    let state_dir = child.state_dir.display();
    let sandbox = &child.sandbox;
    if let Some(warning) = &sandbox.warning {
        warn!(%state_dir, "{warning}");
    }
    match sandbox.abi {
        Some(abi) => info!(%state_dir, landlock_abi = abi, "children are sandboxed"),
        None => info!(%state_dir, reason = %sandbox.off_reason, "children are not sandboxed"),
    }
}
