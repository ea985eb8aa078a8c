//! Tenants as the rest of the crate sees them: [`ClientId`] and [`ClientSpec`].
//!
//! Owns the client-file schema (DESIGN §2), the directory scan, the registry of current
//! specs (swapped atomically on reload) and the watcher that drives reloads. Nothing
//! outside this module sees the raw serde structs; a [`ClientSpec`] is always valid.

mod file;
mod id;
mod registry;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use file::{
    FileError, MAX_FILE_BYTES, MAX_IDLE_TTL_SECS, id_for_file_name, load_dir, parse_file,
};
pub use id::{ClientId, IdError, MAX_CLIENT_ID_LEN};
pub use registry::{Diff, Registry, ReloadOutcome, Tenants};
pub use watch::{ReloadHandle, WatchConfig, spawn_watcher};

/// Daemon-wide defaults that a client file may override.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The clients directory: a relative `cwd` is taken from it.
    pub clients_dir: PathBuf,
    /// Idle TTL for files without `idle_ttl_secs`.
    pub idle_ttl: Duration,
}

/// One tenant's validated configuration, built from `<clients-dir>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// The tenant, from the file stem.
    pub id: ClientId,
    /// The file this spec was read from.
    pub path: PathBuf,
    /// Program to run, as written (resolved at spawn time, DESIGN §4).
    pub command: String,
    /// Arguments, passed without a shell.
    pub args: Vec<String>,
    /// Environment the file gives; the child gets only this plus PATH, HOME, TMPDIR, LANG.
    pub env: BTreeMap<String, Secret>,
    /// Working directory of the child from the file's `cwd`; `None`: its state directory.
    pub cwd: Option<PathBuf>,
    /// Idle time after which the child is stopped.
    pub idle_ttl: Duration,
    /// SHA-256 of the tenant's bearer token, when the file sets one.
    pub token_sha256: Option<TokenHash>,
    /// Per-child resource limits (`rlimit_*` fields).
    pub limits: Limits,
    /// The file's `sandbox` field.
    pub sandbox: SandboxSpec,
    /// SHA-256 of the file's bytes: a reload whose hash is unchanged restarts nothing.
    pub content_hash: [u8; 32],
}

/// A client file's `sandbox` field: paths added to the default policy, or opting out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SandboxSpec {
    /// No `sandbox` field (or `true`): the default policy.
    #[default]
    Default,
    /// `{"read": [...], "write": [...]}`: absolute, existing paths added to the policy.
    Extra {
        /// Read and execute.
        read: Vec<PathBuf>,
        /// Read, write and execute.
        write: Vec<PathBuf>,
    },
    /// `false`: this tenant's child runs unsandboxed.
    Off,
}

/// Resource limits applied to a tenant's child; `None` leaves the daemon's own limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `rlimit_as`: address space in bytes.
    pub address_space: Option<u64>,
    /// `rlimit_nofile`: open file descriptors.
    pub open_files: Option<u64>,
    /// `rlimit_nproc`: processes of the child's user.
    pub processes: Option<u64>,
}

/// A string that never reaches a log: `Debug` prints `MASKED`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// The SHA-256 of a bearer token, as 32 bytes; `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(MASKED)")
    }
}
