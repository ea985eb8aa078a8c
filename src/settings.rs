//! Validated daemon settings, built from the command line before anything is bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::child::sandbox::{self, SandboxSettings};
use crate::child::{ChildSettings, state};
use crate::cli::{SandboxMode, ServeArgs};
use crate::clients::Defaults;
use crate::token::SessionTokens;

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-file defaults and the clients directory.
    pub defaults: Defaults,
    /// Settings of every child.
    pub child: ChildSettings,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Wait for an answer; progress restarts it.
    pub request_timeout: Duration,
    /// Debounce of the clients-directory watcher.
    pub reload_debounce: Duration,
    /// `Origin` values allowed besides loopback origins.
    pub allowed_origins: Vec<String>,
    /// `Host` values allowed besides loopback names; `None`: `Host` is not checked.
    pub allowed_hosts: Option<Vec<String>>,
    /// In-flight requests per tenant.
    pub max_inflight_per_tenant: usize,
    /// Unused sessions are forgotten after this.
    pub session_ttl: Duration,
    /// Sessions one tenant may have open (`--max-sessions-per-tenant`).
    pub max_sessions_per_tenant: usize,
    /// Sessions all tenants together may have open (`--max-sessions`).
    pub max_sessions: usize,
    /// Drain deadline on SIGTERM.
    pub shutdown_grace: Duration,
    /// Time between SIGTERM (readiness 503) and the drain, serving as usual meanwhile.
    pub shutdown_delay: Duration,
    /// Children alive at once.
    pub max_children: usize,
    /// Serve tenants without a token.
    pub allow_open_tenants: bool,
    /// Time to receive request headers; also the idle limit of a connection.
    pub header_read_timeout: Duration,
    /// Time to receive a request body once its head is in.
    pub body_read_timeout: Duration,
    /// Tenant-port connections at once (`--max-connections` or derived at start).
    pub max_connections: Option<usize>,
    /// How long a broken SSE reply waits for its caller to resume before it is cancelled.
    pub resume_grace: Duration,
    /// How long a relayed request may be silent before an SSE-accepting caller's reply turns
    /// to SSE (`--sse-after`; zero: SSE from the start).
    pub sse_after: Duration,
    /// Signed session ids (`--session-key-file`); `None`: node-local random ids.
    pub session_tokens: Option<Arc<SessionTokens>>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting --{flag}: {reason}")]
pub struct SettingsError {
    flag: &'static str,
    reason: String,
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, SettingsError> {
    Duration::try_from_secs_f64(value).map_err(|e| SettingsError {
        flag,
        reason: e.to_string(),
    })
}

/// A deadline: zero would close every connection at once.
fn positive_seconds(flag: &'static str, value: f64) -> Result<Duration, SettingsError> {
    let duration = seconds(flag, value)?;
    if duration.is_zero() {
        return Err(SettingsError {
            flag,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(duration)
}

fn positive(flag: &'static str, value: u64) -> Result<u64, SettingsError> {
    if value == 0 {
        return Err(SettingsError {
            flag,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(value)
}

fn session_tokens(args: &ServeArgs) -> Result<Option<Arc<SessionTokens>>, SettingsError> {
    let lifetime = Duration::from_secs(positive("session-lifetime", args.session_lifetime)?);
    let Some(path) = &args.session_key_file else {
        return Ok(None);
    };
    let tokens = SessionTokens::load(path, lifetime).map_err(|e| SettingsError {
        flag: "session-key-file",
        reason: e.to_string(),
    })?;
    Ok(Some(Arc::new(tokens)))
}

impl Settings {
    /// Validates the flags of `mcpmux serve`, probing the kernel for Landlock.
    pub fn from_args(args: &ServeArgs) -> Result<Self, SettingsError> {
        Self::from_args_probed(args, sandbox::probe())
    }

    /// As [`Settings::from_args`], with the kernel's Landlock support given.
    pub fn from_args_probed(
        args: &ServeArgs,
        landlock: landlock::LandlockStatus,
    ) -> Result<Self, SettingsError> {
        let clients_dir = std::path::absolute(&args.clients).map_err(|e| SettingsError {
            flag: "clients",
            reason: format!("{}: {e}", args.clients.display()),
        })?;
        let state_dir = state_dir(args.state_dir.as_deref(), &clients_dir)?;
        let mode = match args.sandbox {
            SandboxMode::Auto => sandbox::Mode::Auto,
            SandboxMode::Required => sandbox::Mode::Required,
            SandboxMode::Off => sandbox::Mode::Off,
        };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        // The key file signs every session id: no child may read it (issue: sandbox policy
        // never grants the daemon's own configuration).
        let key_file = match &args.session_key_file {
            Some(path) => Some(std::path::absolute(path).map_err(|e| SettingsError {
                flag: "session-key-file",
                reason: format!("{}: {e}", path.display()),
            })?),
            None => None,
        };
        let protected: Vec<&Path> = [clients_dir.as_path(), state_dir.as_path()]
            .into_iter()
            .chain(key_file.as_deref())
            .collect();
        let sandbox =
            SandboxSettings::decide(mode, landlock, &protected, exe_dir).map_err(|reason| {
                SettingsError {
                    flag: "sandbox",
                    reason,
                }
            })?;
        Ok(Self {
            defaults: Defaults {
                clients_dir,
                idle_ttl: Duration::from_secs(positive("idle-ttl", args.idle_ttl)?),
            },
            child: ChildSettings {
                max_line_bytes: positive("max-line-bytes", args.max_line_bytes as u64)? as usize,
                stop_grace: seconds("stop-grace", args.stop_grace)?,
                state_dir,
                sandbox,
            },
            max_body_bytes: positive("max-body-bytes", args.max_body_bytes as u64)? as usize,
            request_timeout: seconds("request-timeout", args.request_timeout)?,
            reload_debounce: Duration::from_millis(args.reload_debounce_ms),
            allowed_origins: args
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_string())
                .collect(),
            allowed_hosts: (!args.allowed_hosts.is_empty()).then(|| {
                let hosts = args.allowed_hosts.iter().map(|h| h.trim().to_string());
                hosts.filter(|h| !h.is_empty()).collect()
            }),
            max_inflight_per_tenant: positive(
                "max-inflight-per-tenant",
                args.max_inflight_per_tenant as u64,
            )? as usize,
            session_ttl: Duration::from_secs(positive("session-ttl", args.session_ttl)?),
            max_sessions_per_tenant: positive(
                "max-sessions-per-tenant",
                args.max_sessions_per_tenant as u64,
            )? as usize,
            max_sessions: positive("max-sessions", args.max_sessions as u64)? as usize,
            shutdown_grace: seconds("shutdown-grace", args.shutdown_grace)?,
            shutdown_delay: seconds("shutdown-delay", args.shutdown_delay)?,
            max_children: positive("max-children", args.max_children as u64)? as usize,
            allow_open_tenants: args.allow_open_tenants,
            header_read_timeout: positive_seconds("header-read-timeout", args.header_read_timeout)?,
            body_read_timeout: positive_seconds("body-read-timeout", args.body_read_timeout)?,
            max_connections: args
                .max_connections
                .map(|n| positive("max-connections", n as u64).map(|n| n as usize))
                .transpose()?,
            resume_grace: seconds("resume-grace", args.resume_grace)?,
            sse_after: seconds("sse-after", args.sse_after)?,
            session_tokens: session_tokens(args)?,
        })
    }
}

/// `--state-dir` or its default, made absolute and created (mode 0700). It may not lie in the
/// clients directory, whose watcher and rescans are for client files only.
fn state_dir(flag: Option<&Path>, clients_dir: &Path) -> Result<PathBuf, SettingsError> {
    let error = |reason: String| SettingsError {
        flag: "state-dir",
        reason,
    };
    let dir = match flag {
        Some(dir) => dir.to_path_buf(),
        None => state::default_root(|name| std::env::var_os(name)).ok_or_else(|| {
            error("not given, and none of STATE_DIRECTORY, XDG_STATE_HOME, HOME is set".into())
        })?,
    };
    let dir = std::path::absolute(&dir).map_err(|e| error(format!("{}: {e}", dir.display())))?;
    let inside = || {
        error(format!(
            "{} is inside the clients directory; put it beside it",
            dir.display()
        ))
    };
    // Checked before creating anything, and again through symlinks once it exists.
    if dir.starts_with(clients_dir) {
        return Err(inside());
    }
    state::ensure_root(&dir).map_err(|e| error(format!("cannot create {}: {e}", dir.display())))?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if canonical(&dir).starts_with(canonical(clients_dir)) {
        return Err(inside());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let argv = [&["mcpmux"], extra].concat();
        Cli::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn state_dir_is_created_absolute_and_kept_out_of_the_clients_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let clients = tmp.path().join("clients");
        std::fs::create_dir(&clients).unwrap();
        let (c, state) = (clients.to_str().unwrap(), tmp.path().join("state"));
        let args = serve_args(&["--clients", c, "--state-dir", state.to_str().unwrap()]);
        let settings = Settings::from_args(&args).unwrap();
        assert_eq!(settings.child.state_dir, state);
        assert!(state.is_dir(), "created at start-up");

        let inside = clients.join("state");
        let args = serve_args(&["--clients", c, "--state-dir", inside.to_str().unwrap()]);
        let err = Settings::from_args(&args).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "invalid setting --state-dir: {} is inside the clients directory; put it beside it",
                inside.display()
            )
        );
        assert!(
            !inside.exists(),
            "nothing is created in the clients directory"
        );
    }

    #[test]
    fn sandbox_required_on_a_kernel_without_landlock_is_a_bad_setting() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let args = serve_args(&[
            "--sandbox",
            "required",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        let err = Settings::from_args_probed(&args, landlock::LandlockStatus::NotImplemented)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid setting --sandbox: --sandbox required, but the kernel has no Landlock; \
             use --sandbox auto to run without it"
        );
        // main maps every SettingsError to exit 64 (sysexits EX_USAGE).
        let auto = serve_args(&["--state-dir", state.to_str().unwrap()]);
        let settings =
            Settings::from_args_probed(&auto, landlock::LandlockStatus::NotImplemented).unwrap();
        assert_eq!(settings.child.sandbox.abi, None);
        assert!(settings.child.sandbox.warning.is_some(), "auto warns");
        let real = Settings::from_args(&args).unwrap();
        assert!(
            real.child.sandbox.abi.is_some(),
            "these machines have Landlock"
        );
    }
}
