//! Starting a child: command lookup, environment, and the `Command` itself (DESIGN §2, §4).
//!
//! Owns what a child is given: no shell, a cleared environment plus a minimal base
//! (`PATH`, `HOME`, `TMPDIR`, `LANG`) under the file's `env`, its own process group, three
//! pipes; `HOME`, `TMPDIR` and the default `cwd` are the tenant's state directory.
//! It does not own the running process; [`Started`] hands everything to the actor.
//! Invariant: the program path passed to `exec` is absolute and was an executable file.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::resource::Resource;
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::sandbox::{self, Prepared, SandboxReport};
use super::{ChildSettings, Error, state};
use crate::clients::{ClientSpec, Limits, Secret};

/// `PATH` for children when the daemon has none.
pub(super) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// `LANG` for children when the daemon has none.
pub(super) const DEFAULT_LANG: &str = "C.UTF-8";

/// A freshly spawned child with its pipes taken, so `wait()` cannot close stdin.
pub(super) struct Started {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Equal to the pid: the child leads its own group.
    pub(super) pgid: Pid,
    pub(super) stdin: ChildStdin,
    pub(super) stdout: ChildStdout,
    pub(super) stderr: ChildStderr,
    /// Whether (and how) it is sandboxed.
    pub(super) sandbox: SandboxReport,
}

/// The daemon's own values of the base variables it passes on.
#[derive(Debug, Clone, Default)]
pub(super) struct DaemonEnv {
    pub(super) path: Option<OsString>,
    pub(super) lang: Option<OsString>,
}

impl DaemonEnv {
    fn current() -> Self {
        Self {
            path: std::env::var_os("PATH"),
            lang: std::env::var_os("LANG"),
        }
    }
}

/// Resolves and starts `spec`'s command. Must run inside a tokio runtime.
pub(super) fn start(spec: &ClientSpec, settings: &ChildSettings) -> Result<Started, Error> {
    let spawn_error = |source| Error::Spawn {
        command: spec.command.clone(),
        source,
    };
    let home =
        state::tenant_dir(&settings.state_dir, &spec.id).map_err(|source| Error::StateDir {
            path: settings.state_dir.join(spec.id.as_str()),
            source,
        })?;
    let cwd = match &spec.cwd {
        Some(cwd) => std::path::absolute(cwd).map_err(spawn_error)?,
        None => home.clone(),
    };
    let env = child_env(&DaemonEnv::current(), &home, &spec.env);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path_var = env.get(OsStr::new("PATH")).cloned().unwrap_or_default();
    let program = resolve_command(&spec.command, &cwd, exe_dir.as_deref(), &path_var)?;
    let (prepared, report) = sandbox::prepare(&settings.sandbox, &spec.sandbox, &program, &home)
        .map_err(|e| spawn_error(io::Error::other(format!("cannot build its sandbox: {e}"))))?;
    if let (SandboxReport::Off(why), crate::clients::SandboxSpec::Off) = (&report, &spec.sandbox) {
        tracing::warn!(client_id = %spec.id, "child runs unsandboxed: {why}");
    }
    let sandboxed = prepared.is_some();
    let child = command(&program, spec, &cwd, &env, prepared)
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied if sandboxed => Error::SandboxDenied {
                command: spec.command.clone(),
                source: e,
                report: report.clone(),
            },
            _ => spawn_error(explain_limits(e, spec.limits, hard_limit)),
        })?;
    take_pipes(child, report).map_err(spawn_error)
}

fn command(
    program: &Path,
    spec: &ClientSpec,
    cwd: &Path,
    env: &ChildEnv,
    sandbox: Option<Prepared>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg0(&spec.command)
        .args(&spec.args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Safety net only (leader only, not graceful); the actor runs the real sequence.
        .kill_on_drop(true);
    if spec.limits != Limits::default() || sandbox.is_some() {
        restrict_on_exec(&mut cmd, spec.limits, sandbox);
    }
    cmd
}

/// Sets the tenant's `rlimit_*` and enters its sandbox in the child between fork and
/// exec, so they bind the child (and everything it starts) but never the daemon.
#[allow(
    unsafe_code,
    reason = "pre_exec is the only way to restrict the child itself"
)]
fn restrict_on_exec(cmd: &mut Command, limits: Limits, mut sandbox: Option<Prepared>) {
    // SAFETY: the closure runs in the forked child of a threaded daemon, before exec, so
    // it must be async-signal-safe. It only makes system calls: setrlimit(2), then (when
    // sandboxed) prctl(2) and capset(2) through rustix's raw wrappers and
    // landlock_restrict_self(2) on a ruleset built before fork. None allocates or takes a
    // lock; the errors it returns are built from an errno (no allocation), and the ruleset
    // it consumes owns nothing but a descriptor, closed with close(2).
    unsafe {
        cmd.pre_exec(move || {
            set_limits(limits).map_err(std::io::Error::from)?;
            match sandbox.as_mut() {
                Some(prepared) => prepared.apply_in_child(),
                None => Ok(()),
            }
        });
    }
}

/// Each `rlimit_*` field with its resource and value.
fn limit_fields(limits: Limits) -> [(&'static str, Resource, Option<u64>); 3] {
    [
        ("rlimit_as", Resource::RLIMIT_AS, limits.address_space),
        ("rlimit_nofile", Resource::RLIMIT_NOFILE, limits.open_files),
        ("rlimit_nproc", Resource::RLIMIT_NPROC, limits.processes),
    ]
}

fn set_limits(limits: Limits) -> nix::Result<()> {
    for (_, resource, value) in limit_fields(limits) {
        if let Some(value) = value {
            nix::sys::resource::setrlimit(resource, value, value)?;
        }
    }
    Ok(())
}

/// The daemon's own hard limit of `resource`.
fn hard_limit(resource: Resource) -> Option<u64> {
    nix::sys::resource::getrlimit(resource)
        .ok()
        .map(|(_, hard)| hard)
}

/// A bare "Operation not permitted" from a spawn under limits usually means a value above
/// the daemon's own hard limit, which only a privileged process may raise: say which.
fn explain_limits(
    err: io::Error,
    limits: Limits,
    hard_limit: impl Fn(Resource) -> Option<u64>,
) -> io::Error {
    if err.kind() != io::ErrorKind::PermissionDenied {
        return err;
    }
    let over: Vec<String> = limit_fields(limits)
        .into_iter()
        .filter_map(|(name, resource, value)| {
            let (value, hard) = (value?, hard_limit(resource)?);
            (value > hard)
                .then(|| format!("{name}={value} is above mcpmux's own hard limit {hard}"))
        })
        .collect();
    if over.is_empty() {
        return err;
    }
    let fix =
        "lower it, or raise the daemon's limit (LimitNPROC=, LimitNOFILE=, LimitAS= in the unit)";
    io::Error::new(err.kind(), format!("{err}: {}; {fix}", over.join(", ")))
}

/// On error the child is dropped, and `kill_on_drop` ends it.
fn take_pipes(mut child: Child, sandbox: SandboxReport) -> io::Result<Started> {
    let missing = |what| io::Error::other(format!("child {what} missing after spawn"));
    let pid = child.id().ok_or_else(|| missing("pid"))?;
    let raw = i32::try_from(pid).map_err(|_| missing("valid pid"))?;
    let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
    Ok(Started {
        child,
        pid,
        pgid: Pid::from_raw(raw),
        stdin,
        stdout,
        stderr,
        sandbox,
    })
}

/// A child's whole environment.
pub(super) type ChildEnv = BTreeMap<OsString, OsString>;

/// The base (`PATH` and `LANG` from the daemon, `HOME` and `TMPDIR` the tenant's state
/// directory `home`), then the file's `env` on top.
pub(super) fn child_env(
    daemon: &DaemonEnv,
    home: &Path,
    file: &BTreeMap<String, Secret>,
) -> ChildEnv {
    let mut env = ChildEnv::new();
    let path = daemon.path.clone().unwrap_or_else(|| DEFAULT_PATH.into());
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), home.into());
    env.insert("TMPDIR".into(), home.into());
    let lang = daemon.lang.clone().unwrap_or_else(|| DEFAULT_LANG.into());
    env.insert("LANG".into(), lang);
    for (name, Secret(value)) in file {
        env.insert(name.into(), value.into());
    }
    env
}

/// DESIGN §4 lookup. A command with a `/` is taken as is when absolute, else relative to
/// `cwd`; a bare name is searched in `exe_dir` (where `mcpmux` lives), then in `path_var`
/// (the child's `PATH`). Empty `PATH` entries are skipped rather than meaning "cwd".
/// `cwd` must be absolute, so the result is too.
pub(super) fn resolve_command(
    command: &str,
    cwd: &Path,
    exe_dir: Option<&Path>,
    path_var: &OsStr,
) -> Result<PathBuf, Error> {
    let not_found = || Error::NotFound(command.to_owned());
    if command.is_empty() {
        return Err(not_found());
    }
    if command.contains('/') {
        let candidate = cwd.join(command);
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(not_found())
        };
    }
    let path_dirs = std::env::split_paths(path_var).filter(|dir| !dir.as_os_str().is_empty());
    exe_dir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(path_dirs.map(|dir| cwd.join(dir)))
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_found)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Creates `rel` (and its parents) with the given mode.
        fn file(&self, rel: &str, mode: u32) -> PathBuf {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
    }

    fn not_found(result: Result<PathBuf, Error>) -> String {
        match result {
            Err(Error::NotFound(command)) => command,
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn bare_name_is_found_in_path_skipping_non_executables_and_directories() {
        let fx = Fixture::new();
        fx.file("a/tool", 0o644);
        std::fs::create_dir_all(fx.path("b/tool")).unwrap();
        let want = fx.file("c/tool", 0o755);
        let path = std::env::join_paths([fx.path("a"), fx.path("b"), fx.path("c")]).unwrap();
        let got = resolve_command("tool", Path::new("/"), None, &path).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn bare_name_prefers_the_executable_directory_over_path() {
        let fx = Fixture::new();
        let beside = fx.file("exe/tool", 0o755);
        fx.file("bin/tool", 0o755);
        let path = fx.path("bin").into_os_string();
        let got = resolve_command("tool", Path::new("/"), Some(&fx.path("exe")), &path);
        assert_eq!(got.unwrap(), beside);
    }

    #[test]
    fn relative_path_entries_and_commands_resolve_against_cwd() {
        let fx = Fixture::new();
        let tool = fx.file("bin/tool", 0o755);
        let cwd = fx.dir.path();
        assert_eq!(
            resolve_command("bin/tool", cwd, None, OsStr::new("")).unwrap(),
            tool
        );
        assert_eq!(
            resolve_command("./bin/tool", cwd, None, OsStr::new("")).unwrap(),
            cwd.join("./bin/tool")
        );
        assert_eq!(
            resolve_command("tool", cwd, None, OsStr::new("::bin")).unwrap(),
            tool
        );
    }

    #[test]
    fn absolute_command_is_used_as_is() {
        let fx = Fixture::new();
        let tool = fx.file("tool", 0o700);
        let cwd = Path::new("/nonexistent");
        let got = resolve_command(tool.to_str().unwrap(), cwd, None, OsStr::new(""));
        assert_eq!(got.unwrap(), tool);
    }

    #[test]
    fn missing_or_non_executable_commands_are_not_found() {
        let fx = Fixture::new();
        fx.file("plain", 0o644);
        let path = fx.dir.path().as_os_str();
        let cwd = fx.dir.path();
        assert_eq!(
            not_found(resolve_command("nope", cwd, Some(cwd), path)),
            "nope"
        );
        assert_eq!(
            not_found(resolve_command("plain", cwd, None, path)),
            "plain"
        );
        assert_eq!(
            not_found(resolve_command("./plain", cwd, None, path)),
            "./plain"
        );
        assert_eq!(
            not_found(resolve_command("/nonexistent/x", cwd, None, path)),
            "/nonexistent/x"
        );
        assert_eq!(not_found(resolve_command("", cwd, None, path)), "");
    }

    #[test]
    fn permission_denied_under_limits_names_the_limit_above_the_hard_limit() {
        let eperm = || io::Error::from_raw_os_error(1);
        let hard = |r| match r {
            Resource::RLIMIT_NPROC => Some(1000),
            Resource::RLIMIT_NOFILE => Some(4096),
            _ => None, // unknown: never blamed
        };
        let limits = Limits {
            address_space: Some(1 << 40),
            open_files: Some(64),
            processes: Some(5000),
        };
        let explained = explain_limits(eperm(), limits, hard).to_string();
        assert!(
            explained.starts_with("Operation not permitted (os error 1): rlimit_nproc=5000 is above mcpmux's own hard limit 1000; lower it"),
            "{explained}"
        );
        assert!(!explained.contains("rlimit_nofile"), "{explained}");
        assert!(!explained.contains("rlimit_as"), "{explained}");

        let within = Limits {
            processes: Some(10),
            ..limits
        };
        let plain = explain_limits(eperm(), within, hard).to_string();
        assert_eq!(plain, eperm().to_string(), "no limit to blame");
        let enoent = io::Error::from_raw_os_error(2);
        let other = explain_limits(enoent, limits, hard).to_string();
        assert_eq!(
            other,
            io::Error::from_raw_os_error(2).to_string(),
            "not a permission error"
        );
    }

    #[test]
    fn env_is_the_base_under_the_file_env() {
        let daemon = DaemonEnv {
            path: Some("/daemon/bin".into()),
            lang: None,
        };
        let file = BTreeMap::from([
            ("HOME".to_owned(), Secret("/srv/t".to_owned())),
            ("TOKEN".to_owned(), Secret("s3cret".to_owned())),
        ]);
        let want: ChildEnv = [
            ("HOME", "/srv/t"),
            ("LANG", DEFAULT_LANG),
            ("PATH", "/daemon/bin"),
            ("TMPDIR", "/state/t"),
            ("TOKEN", "s3cret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        assert_eq!(child_env(&daemon, Path::new("/state/t"), &file), want);
    }

    #[test]
    fn env_falls_back_to_defaults_when_the_daemon_has_none() {
        let env = child_env(&DaemonEnv::default(), Path::new("/s/t"), &BTreeMap::new());
        let want: ChildEnv = [
            ("HOME", "/s/t"),
            ("LANG", DEFAULT_LANG),
            ("PATH", DEFAULT_PATH),
            ("TMPDIR", "/s/t"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        assert_eq!(env, want);
    }
}
