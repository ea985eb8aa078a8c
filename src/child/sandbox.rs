//! The tenant sandbox: every child in its own Landlock domain (DESIGN §4).
//!
//! Owns the daemon-wide decision (`--sandbox auto|required|off` against the kernel's ABI,
//! made once at start-up), the default policy, and building one child's ruleset. Everything
//! that allocates or opens files happens here, in the daemon, before fork; the child only
//! applies the result between fork and exec ([`Prepared::apply_in_child`]).
//!
//! Landlock only allows, so a protected directory under a granted tree (the clients
//! directory under `/etc`) is kept out by granting its siblings along the path instead of
//! the parent: the parent itself is then not listable, and entries created there later are
//! not covered. Rules bind inodes, not names.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, LandlockStatus, PathBeneath, PathFd, RestrictSelf, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::thread::{CapabilitySet, CapabilitySets};
use serde_json::{Value, json};

use crate::clients::SandboxSpec;

/// The newest ABI whose rights mcpmux asks for (and is tested against). An older kernel
/// gets what it has, feature by feature (the crate's best-effort mode).
const TARGET_ABI: ABI = ABI::V7;
/// The first ABI that scopes signals and abstract unix sockets to the domain.
pub const SCOPE_ABI: i32 = 6;
/// Most rules one child's ruleset may have (sibling grants around protected paths add up).
const MAX_RULES: usize = 4096;

/// System trees every child may read and execute.
const SYSTEM_TREES: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/etc",
    "/nix/store",
];
/// Trees every child may read (not execute).
const READ_TREES: &[&str] = &["/proc", "/sys"];
/// Devices every child may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// The daemon's configuration in the package layout (clients, session key, environment
/// file): never granted, whatever the grants around it.
const PACKAGE_CONFIG: &str = "/etc/mcpmux";

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sandbox where the kernel can; warn once and run unsandboxed where it cannot.
    Auto,
    /// Refuse to start without Landlock signal scoping (ABI 6+).
    Required,
    /// Never sandbox.
    Off,
}

/// The daemon-wide decision, made once at start-up.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The kernel's Landlock ABI when children are sandboxed; `None` when they are not.
    pub abi: Option<i32>,
    /// Why children are not sandboxed, when `abi` is `None`.
    pub off_reason: String,
    /// Said once at start-up: children run unsandboxed, or with fewer features than asked.
    pub warning: Option<String>,
    /// Canonical paths no child may reach: the clients directory, the state root, the
    /// package's configuration directory.
    pub protected: Vec<PathBuf>,
    /// The directory of the `mcpmux` executable (read and execute, for `mcp-echo`).
    pub exe_dir: Option<PathBuf>,
}

/// The kernel's Landlock support, probed without restricting anything.
pub fn probe() -> LandlockStatus {
    RestrictSelf::default()
        .no_new_privs(false)
        .apply()
        .map_or(LandlockStatus::NotImplemented, |status| status.landlock)
}

fn describe(status: LandlockStatus) -> String {
    match status {
        LandlockStatus::NotEnabled => "Landlock is built into the kernel but not enabled \
             (add landlock to the lsm= boot parameter)"
            .into(),
        LandlockStatus::NotImplemented => "the kernel has no Landlock".into(),
        LandlockStatus::Available { effective_abi, .. } => {
            format!(
                "the kernel's Landlock ABI is {} (signal scoping needs {SCOPE_ABI})",
                effective_abi as i32
            )
        }
    }
}

/// The kernel's ABI number, when Landlock works.
fn abi_of(status: LandlockStatus) -> Option<i32> {
    match status {
        // An ABI newer than the crate knows is used as the newest it knows.
        LandlockStatus::Available { effective_abi, .. } => Some(effective_abi as i32),
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => None,
    }
}

impl SandboxSettings {
    /// Decides from `mode` and the kernel's `status`; `Err` (the reason) when `required`
    /// cannot be met. `protected` are made canonical here (missing ones are skipped).
    pub fn decide(
        mode: Mode,
        status: LandlockStatus,
        protected: &[&Path],
        exe_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        let abi = abi_of(status);
        let mut settings = Self {
            abi: None,
            off_reason: String::new(),
            warning: None,
            protected: protected
                .iter()
                .copied()
                .chain([Path::new(PACKAGE_CONFIG)])
                .filter_map(|p| p.canonicalize().ok())
                .collect(),
            exe_dir,
        };
        match (mode, abi) {
            (Mode::Off, _) => settings.off_reason = "--sandbox off".into(),
            (Mode::Required, Some(n)) if n >= SCOPE_ABI => settings.abi = abi,
            (Mode::Required, _) => {
                return Err(format!(
                    "--sandbox required, but {}; use --sandbox auto to run without it",
                    describe(status)
                ));
            }
            (Mode::Auto, Some(n)) => {
                settings.abi = abi;
                if n < SCOPE_ABI {
                    settings.warning = Some(format!(
                        "children are sandboxed without signal and abstract-socket scoping: {}",
                        describe(status)
                    ));
                }
            }
            (Mode::Auto, None) => {
                settings.off_reason = describe(status);
                settings.warning = Some(format!(
                    "children run unsandboxed: {} (--sandbox auto)",
                    settings.off_reason
                ));
            }
        }
        Ok(settings)
    }
}

/// What one child's sandbox is, for the spawn log line, `/status` and error data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxReport {
    /// Restricted under Landlock ABI `abi`.
    Applied {
        /// The kernel's ABI.
        abi: i32,
    },
    /// Not sandboxed, and why.
    Off(String),
}

impl SandboxReport {
    /// Whether the child runs sandboxed.
    pub fn applied(&self) -> bool {
        matches!(self, Self::Applied { .. })
    }

    /// The features in force, by ABI.
    fn features(abi: i32) -> Vec<&'static str> {
        let mut features = vec!["filesystem"];
        if abi >= 3 {
            features.push("truncate");
        }
        if abi >= 5 {
            features.push("ioctl_dev");
        }
        if abi >= SCOPE_ABI {
            features.extend(["scoped_signals", "scoped_abstract_unix_sockets"]);
        }
        features.extend(["no_new_privs", "capabilities_dropped"]);
        features
    }

    /// The `/status` value: `{"abi": N, "applied": [...]}`, or `false`.
    pub fn status_json(&self) -> Value {
        match self {
            Self::Applied { abi } => json!({"abi": abi, "applied": Self::features(*abi)}),
            Self::Off(_) => Value::Bool(false),
        }
    }

    /// Why the child is not sandboxed.
    pub fn off_reason(&self) -> Option<&str> {
        match self {
            Self::Applied { .. } => None,
            Self::Off(why) => Some(why),
        }
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied { abi } => {
                write!(f, "landlock abi {abi}: {}", Self::features(*abi).join(", "))
            }
            Self::Off(why) => write!(f, "off ({why})"),
        }
    }
}

/// One child's ruleset, built in the daemon; applied in the child by `apply_in_child`.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<RulesetCreated>,
}

/// Builds the sandbox of a child running `program` with state directory `home`: `None`
/// with the reason when it runs unsandboxed.
pub fn prepare(
    settings: &SandboxSettings,
    spec: &SandboxSpec,
    program: &Path,
    home: &Path,
) -> Result<(Option<Prepared>, SandboxReport), io::Error> {
    let Some(abi) = settings.abi else {
        return Ok((None, SandboxReport::Off(settings.off_reason.clone())));
    };
    let (extra_read, extra_write) = match spec {
        SandboxSpec::Off => {
            let why = "the client file sets \"sandbox\": false".to_owned();
            return Ok((None, SandboxReport::Off(why)));
        }
        SandboxSpec::Default => (&[][..], &[][..]),
        SandboxSpec::Extra { read, write } => (&read[..], &write[..]),
    };
    let rules = policy(settings, program, home, extra_read, extra_write)?;
    let ruleset = build(&rules).map_err(io::Error::other)?;
    let prepared = Prepared {
        ruleset: Some(ruleset),
    };
    Ok((Some(prepared), SandboxReport::Applied { abi }))
}

/// Rights: read and execute.
fn read_exec() -> BitFlags<AccessFs> {
    AccessFs::from_read(TARGET_ABI)
}

/// Rights: read only (files and directories).
fn read_only() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Rights: everything.
fn all() -> BitFlags<AccessFs> {
    AccessFs::from_all(TARGET_ABI)
}

/// Rights on a device: read, write, truncate (`> /dev/null`), ioctl.
fn device() -> BitFlags<AccessFs> {
    AccessFs::from_file(TARGET_ABI) & !AccessFs::Execute
}

/// The default policy plus the client file's paths, as (canonical path, rights).
fn policy(
    settings: &SandboxSettings,
    program: &Path,
    home: &Path,
    extra_read: &[PathBuf],
    extra_write: &[PathBuf],
) -> io::Result<Vec<(PathBuf, BitFlags<AccessFs>)>> {
    let mut rules = Vec::new();
    let mut grant = |path: &Path, access| carve(path, access, &settings.protected, &mut rules);
    for tree in SYSTEM_TREES {
        grant(Path::new(tree), read_exec())?;
    }
    for tree in READ_TREES {
        grant(Path::new(tree), read_only())?;
    }
    let command_dirs = [
        program.parent().map(Path::to_path_buf),
        program
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        settings.exe_dir.clone(),
    ];
    for dir in command_dirs.iter().flatten() {
        grant(dir, read_exec())?;
    }
    for path in extra_read {
        grant(path, read_exec())?;
    }
    for path in extra_write {
        grant(path, all())?;
    }
    // Devices and the tenant's own directory are granted as they are, protected or not.
    for dev in DEVICES {
        if let Ok(path) = Path::new(dev).canonicalize() {
            rules.push((path, device()));
        }
    }
    rules.push((home.canonicalize()?, all()));
    if rules.len() > MAX_RULES {
        return Err(io::Error::other(format!(
            "the sandbox policy needs {} rules (at most {MAX_RULES}): a protected directory \
             lies in a directory with too many entries",
            rules.len()
        )));
    }
    Ok(rules)
}

/// Grants `path` (followed through symlinks; skipped when missing) with `access`, except
/// what lies in `protected`: an ancestor of a protected path is replaced by its entries,
/// recursively, so the protected path and nothing else is left out.
fn carve(
    path: &Path,
    access: BitFlags<AccessFs>,
    protected: &[PathBuf],
    rules: &mut Vec<(PathBuf, BitFlags<AccessFs>)>,
) -> io::Result<()> {
    let Ok(path) = path.canonicalize() else {
        return Ok(());
    };
    if protected.iter().any(|p| path.starts_with(p)) {
        return Ok(());
    }
    if !protected.iter().any(|p| p.starts_with(&path)) {
        rules.push((path, access));
        return Ok(());
    }
    for entry in std::fs::read_dir(&path)? {
        if rules.len() > MAX_RULES {
            break; // `policy` reports it
        }
        carve(&entry?.path(), access, protected, rules)?;
    }
    Ok(())
}

fn build(
    rules: &[(PathBuf, BitFlags<AccessFs>)],
) -> Result<RulesetCreated, landlock::RulesetError> {
    let mut ruleset = Ruleset::default()
        .handle_access(all())?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?
        .create()?;
    for (path, access) in rules {
        // A path that vanished since it was listed is simply not granted.
        if let Ok(fd) = PathFd::new(path) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, *access))?;
        }
    }
    Ok(ruleset)
}

impl Prepared {
    /// Runs in the forked child before exec, so it only makes system calls: drops every
    /// capability (bounding set, ambient, then effective, permitted and inheritable), sets
    /// `no_new_privs` and enters the Landlock domain. Allocates nothing; on the error path
    /// only the errno travels back.
    pub fn apply_in_child(&mut self) -> io::Result<()> {
        let Some(ruleset) = self.ruleset.take() else {
            return Ok(());
        };
        drop_capabilities().map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        match ruleset.restrict_self() {
            Ok(status) if status.ruleset != RulesetStatus::NotEnforced => Ok(()),
            // Fail closed: the daemon decided this kernel can sandbox.
            Ok(_) => Err(io::Error::from_raw_os_error(libc_enotsup())),
            Err(err) => {
                let errno = std::error::Error::source(&err)
                    .and_then(|e| e.downcast_ref::<io::Error>())
                    .and_then(io::Error::raw_os_error);
                Err(io::Error::from_raw_os_error(errno.unwrap_or(libc_eperm())))
            }
        }
    }
}

fn libc_enotsup() -> i32 {
    rustix::io::Errno::NOTSUP.raw_os_error()
}

fn libc_eperm() -> i32 {
    rustix::io::Errno::PERM.raw_os_error()
}

/// Empties the bounding set (needs `CAP_SETPCAP`, so first), the ambient set, then the
/// effective, permitted and inheritable sets: without them a root child gets no
/// capabilities back at exec, and `no_new_privs` keeps set-uid programs from adding any.
fn drop_capabilities() -> rustix::io::Result<()> {
    use rustix::thread::{
        capability_is_in_bounding_set, clear_ambient_capability_set,
        remove_capability_from_bounding_set, set_capabilities,
    };
    for bit in 0..u64::BITS {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        match capability_is_in_bounding_set(cap) {
            Ok(true) => remove_capability_from_bounding_set(cap)?,
            Ok(false) => {}
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    clear_ambient_capability_set()?;
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    set_capabilities(None, none)
}

/// `error.data` of a spawn the sandbox probably denied: names the sandbox and the fix.
pub fn denied_data(report: &SandboxReport, error: &str) -> Value {
    json!({
        "error": error,
        "sandbox": report.status_json(),
        "fix": "the sandbox denied the command something it needs (e.g. its interpreter, \
                in a tree the default policy does not grant): add that directory to \
                \"sandbox\": {\"read\": [...]} in the tenant's client file, \
                or set \"sandbox\": false",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAILABLE_V7: LandlockStatus = LandlockStatus::Available {
        effective_abi: ABI::V7,
        kernel_abi: None,
    };
    const AVAILABLE_V5: LandlockStatus = LandlockStatus::Available {
        effective_abi: ABI::V5,
        kernel_abi: None,
    };

    #[test]
    fn these_machines_have_landlock_with_scoping() {
        let abi = abi_of(probe());
        assert!(abi.is_some_and(|n| n >= SCOPE_ABI), "{:?}", probe());
    }

    #[test]
    fn required_refuses_a_kernel_without_landlock_or_scoping() {
        for (status, why) in [
            (LandlockStatus::NotImplemented, "the kernel has no Landlock"),
            (LandlockStatus::NotEnabled, "not enabled"),
            (AVAILABLE_V5, "ABI is 5 (signal scoping needs 6)"),
        ] {
            let err = SandboxSettings::decide(Mode::Required, status, &[], None).unwrap_err();
            assert!(err.starts_with("--sandbox required, but "), "{err}");
            assert!(err.contains(why), "{err}");
        }
        let ok = SandboxSettings::decide(Mode::Required, AVAILABLE_V7, &[], None).unwrap();
        assert_eq!((ok.abi, ok.warning), (Some(7), None));
    }

    #[test]
    fn auto_without_landlock_runs_unsandboxed_with_one_warning() {
        let s =
            SandboxSettings::decide(Mode::Auto, LandlockStatus::NotImplemented, &[], None).unwrap();
        assert_eq!(s.abi, None);
        assert_eq!(
            s.warning.as_deref(),
            Some("children run unsandboxed: the kernel has no Landlock (--sandbox auto)")
        );
        let weak = SandboxSettings::decide(Mode::Auto, AVAILABLE_V5, &[], None).unwrap();
        assert_eq!(weak.abi, Some(5));
        assert!(weak.warning.unwrap().contains("without signal"));
        let off = SandboxSettings::decide(Mode::Off, AVAILABLE_V7, &[], None).unwrap();
        assert_eq!((off.abi, off.warning), (None, None));
        assert_eq!(off.off_reason, "--sandbox off");
    }

    #[test]
    fn a_protected_directory_is_carved_out_by_granting_its_siblings() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        for dir in ["conf/clients", "conf/other", "data"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("conf/key"), "k").unwrap();
        let protected = [root.join("conf/clients")];
        let mut rules = Vec::new();
        carve(&root, read_exec(), &protected, &mut rules).unwrap();
        let mut granted: Vec<PathBuf> = rules.into_iter().map(|(p, _)| p).collect();
        granted.sort();
        let want = ["conf/key", "conf/other", "data"].map(|p| root.join(p));
        assert_eq!(granted, want);

        let mut inside = Vec::new();
        carve(&root.join("conf/clients"), all(), &protected, &mut inside).unwrap();
        assert!(inside.is_empty(), "a protected path is never granted");
    }

    #[test]
    fn report_names_the_abi_and_what_was_applied() {
        let on = SandboxReport::Applied { abi: 7 };
        assert_eq!(
            on.to_string(),
            "landlock abi 7: filesystem, truncate, ioctl_dev, scoped_signals, \
             scoped_abstract_unix_sockets, no_new_privs, capabilities_dropped"
        );
        assert_eq!(on.status_json()["abi"], 7);
        let off = SandboxReport::Off("--sandbox off".into());
        assert_eq!(off.status_json(), Value::Bool(false));
        assert_eq!(off.off_reason(), Some("--sandbox off"));
    }
}
