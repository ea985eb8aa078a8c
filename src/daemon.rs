//! `mcpmux serve`: settings, registry, listeners, reaper, signals, drain, exit.
//!
//! Order (linkerd's): validate settings before binding anything; load the clients
//! directory; bind; announce; serve until SIGTERM/SIGINT; stop accepting, drain for the
//! grace period, stop every child; exit 0. A second signal during the drain exits at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::ServeArgs;
use crate::clients::{Registry, ReloadOutcome, WatchConfig, spawn_watcher};
use crate::http::{App, MCP_PATH};
use crate::pool::Pool;
use crate::settings::Settings;
use crate::shutdown::{Request, Signals};

/// Safety rescan interval, for file systems that lose events.
const SAFETY_RESCAN: std::time::Duration = std::time::Duration::from_secs(60);
/// Exit code for bad settings (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// Runs the daemon to completion.
pub fn main(args: ServeArgs) -> ExitCode {
    crate::logging::init(args.log_format);
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
    match runtime.block_on(run(args.listen, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr, settings: Arc<Settings>) -> anyhow::Result<()> {
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let registry = Arc::new(Registry::new());
    let first = registry.reload(&settings.defaults);
    report_reload(&first);
    info!(clients = registry.snapshot().len(), dir = %settings.defaults.clients_dir.display(), "clients loaded");

    let shutdown = CancellationToken::new();
    let pool = Pool::new(registry.clone(), settings.clone());
    let watch = WatchConfig {
        defaults: settings.defaults.clone(),
        debounce: settings.reload_debounce,
        safety_rescan: SAFETY_RESCAN,
    };
    let on_reload_pool = pool.clone();
    let on_reload =
        Arc::new(move |outcome: &ReloadOutcome| on_reload_pool.on_reload(&outcome.diff));
    let (reload, watcher) = spawn_watcher(watch, registry.clone(), on_reload, shutdown.clone())
        .with_context(|| format!("cannot watch {}", settings.defaults.clients_dir.display()))?;

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    info!("listening on http://{addr}{MCP_PATH}");

    let app = Arc::new(App {
        pool: pool.clone(),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
    });
    let reaper = tokio::spawn(pool.clone().run_reaper(shutdown.clone()));
    let server = tokio::spawn(crate::http::serve(listener, app, settings.shutdown_grace));

    while signals.next().await == Request::Reload {
        info!("SIGHUP: rescanning clients");
        if reload.reload_now().await.is_none() {
            warn!("reload requested but the watcher is not running");
        }
    }
    info!(
        grace_secs = settings.shutdown_grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    shutdown.cancel();
    tokio::select! {
        _ = server => {}
        _ = signals.next() => warn!("second signal: not waiting for in-flight requests"),
    }
    pool.shutdown().await;
    let _ = tokio::join!(reaper, watcher);
    info!("stopped");
    Ok(())
}

/// Logs what a reload changed and every file it could not use.
pub fn report_reload(outcome: &ReloadOutcome) {
    for err in &outcome.errors {
        warn!(file = %err.path.display(), reason = %err.reason, "client file not loaded");
    }
}
