//! Client files: `<clients-dir>/<id>.json` → [`ClientSpec`] (DESIGN §2).
//!
//! Owns the file schema, the file-name rule and the directory scan. Parsing runs in two
//! stages: serde reads the bytes into [`RawClientFile`] (strict: unknown or repeated keys
//! are errors), then [`RawClientFile::into_spec`] validates each field into the newtypes
//! of [`ClientSpec`]. Invariant: every error names its file and field, and a bad file
//! never stops the others from loading. What to do with a bad file on a live reload
//! (keep the last good version) is the registry's business, not this module's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{
    ClientId, ClientSpec, Defaults, Limits, MAX_CLIENT_ID_LEN, SandboxSpec, Secret, TokenHash,
};

/// Largest client file read, in bytes: a client file is a few hundred bytes, and a huge
/// file dropped into the directory by mistake must not eat the daemon's memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Largest accepted `idle_ttl_secs` (one year): effectively "never idle", and small enough
/// that adding it to any instant cannot overflow.
pub const MAX_IDLE_TTL_SECS: u64 = 365 * 24 * 60 * 60;

/// The extension every client file carries (compared case-insensitively).
const EXTENSION: &str = ".json";

/// A byte-order mark some editors put at the start of a UTF-8 file; serde_json rejects it.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A client file (or the clients directory) that could not be read or validated.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    /// The offending file, or the clients directory when it could not be listed.
    pub path: PathBuf,
    /// The tenant the file is for; `None` when the directory itself failed, in which case
    /// the scan is incomplete.
    pub id: Option<ClientId>,
    /// What is wrong with it, and the fix when known.
    pub reason: String,
}

/// The client id a file name stands for: the name, ASCII-lowercased, must match
/// `^[a-z0-9]{1,64}\.json$`. Anything else (editor temp and backup files such as
/// `.x.json.swp`, `x.json~`, `.#x.json`, `#x.json#`, `4913`, `sedXXXXXX`, and
/// Kubernetes' `..data`) is not a client file and gives `None`.
pub fn id_for_file_name(name: &str) -> Option<ClientId> {
    let lower = name.to_ascii_lowercase();
    let stem = lower.strip_suffix(EXTENSION)?;
    let fits = (1..=MAX_CLIENT_ID_LEN).contains(&stem.len())
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !fits {
        return None;
    }
    ClientId::parse(stem).ok()
}

/// Parses and validates one client file's bytes; `path`'s file name gives the id.
pub fn parse_file(path: &Path, bytes: &[u8], defaults: &Defaults) -> Result<ClientSpec, FileError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(id) = id_for_file_name(name) else {
        let reason = "file name must be <id>.json, the id being 1 to 64 of a-z and 0-9";
        return Err(file_error(path, None, reason));
    };
    RawClientFile::from_bytes(bytes)
        .and_then(|raw| raw.into_spec(id.clone(), path, bytes, defaults))
        .map_err(|reason| file_error(path, Some(id), reason))
}

/// Scans `dir` (following symlinks, for the directory and for each entry), skipping names
/// that do not fit `<id>.json` (editor temp files among them). Returns the valid specs and
/// one error per bad file, sorted by path.
///
/// Two names for one id (`Acme.json` and `acme.json`) are an error for both and neither is
/// loaded: picking one would depend on directory order. A directory that cannot be listed
/// gives one error for the directory, with `id: None`.
pub fn load_dir(
    dir: &Path,
    defaults: &Defaults,
) -> (HashMap<ClientId, Arc<ClientSpec>>, Vec<FileError>) {
    let candidates = match list_client_files(dir) {
        Ok(candidates) => candidates,
        Err(err) => {
            let reason = format!("cannot read the clients directory: {err}");
            return (HashMap::new(), vec![file_error(dir, None, reason)]);
        }
    };
    let mut specs = HashMap::new();
    let mut errors = Vec::new();
    for (id, paths) in candidates {
        match paths.as_slice() {
            [path] => match load_file(path, defaults) {
                Ok(spec) => {
                    specs.insert(id, Arc::new(spec));
                }
                Err(err) => errors.push(err),
            },
            _ => errors.extend(duplicate_errors(&id, &paths)),
        }
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    (specs, errors)
}

/// The directory's client files, grouped by the id their name stands for.
fn list_client_files(dir: &Path) -> io::Result<BTreeMap<ClientId, Vec<PathBuf>>> {
    let mut by_id: BTreeMap<ClientId, Vec<PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        // A name that is not UTF-8 cannot be `<id>.json`.
        let Some(id) = name.to_str().and_then(id_for_file_name) else {
            continue;
        };
        by_id.entry(id).or_default().push(dir.join(name));
    }
    for paths in by_id.values_mut() {
        paths.sort();
    }
    Ok(by_id)
}

/// Reads (through symlinks) and parses one client file.
fn load_file(path: &Path, defaults: &Defaults) -> Result<ClientSpec, FileError> {
    let bytes = read_capped(path).map_err(|reason| {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(id_for_file_name);
        file_error(path, id, reason)
    })?;
    parse_file(path, &bytes, defaults)
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`].
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let cannot_read = |err: io::Error| format!("cannot read the file: {err}");
    // Checked before opening: opening a FIFO named `x.json` would block the scan.
    if !fs::metadata(path).map_err(cannot_read)?.is_file() {
        return Err("not a regular file (or a symlink to one)".to_string());
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

/// One error per file claiming `id`, each naming the others.
fn duplicate_errors(id: &ClientId, paths: &[PathBuf]) -> Vec<FileError> {
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
    paths
        .iter()
        .map(|path| {
            let others: Vec<String> = paths
                .iter()
                .filter(|p| *p != path)
                .filter_map(name)
                .collect();
            let reason = format!(
                "client id \"{id}\" is also claimed by {}; keep one file per id \
                 (names are compared in lowercase)",
                others.join(", ")
            );
            file_error(path, Some(id.clone()), reason)
        })
        .collect()
}

fn file_error(path: &Path, id: Option<ClientId>, reason: impl Into<String>) -> FileError {
    FileError {
        path: path.to_path_buf(),
        id,
        reason: reason.into(),
    }
}

/// Generates `deserialize_with` functions that put the field name in front of serde's
/// message, because serde's type errors ("invalid type: string, expected u64") do not
/// say which field is wrong.
macro_rules! named_fields {
    ($($fn_name:ident: $field:literal => $ty:ty;)*) => {$(
        fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            <$ty>::deserialize(d).map_err(|e| de::Error::custom(format_args!("\"{}\": {e}", $field)))
        }
    )*};
}

named_fields! {
    de_command: "command" => String;
    de_args: "args" => Vec<String>;
    de_env: "env" => BTreeMap<String, String>;
    de_opt_string_cwd: "cwd" => Option<String>;
    de_idle_ttl: "idle_ttl_secs" => Option<u64>;
    de_token: "token_sha256" => Option<String>;
    de_rlimit_as: "rlimit_as" => Option<u64>;
    de_rlimit_nofile: "rlimit_nofile" => Option<u64>;
    de_rlimit_nproc: "rlimit_nproc" => Option<u64>;
    de_type: "type" => Option<String>;
    de_description: "description" => Option<String>;
    de_sandbox: "sandbox" => Option<Value>;
}

/// A client file as written: an `mcpServers` entry plus mcpmux's own fields. Only this
/// module sees it; [`RawClientFile::into_spec`] turns it into a [`ClientSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientFile {
    /// Program to run (required, non-empty).
    #[serde(deserialize_with = "de_command")]
    command: String,
    #[serde(default, deserialize_with = "de_args")]
    args: Vec<String>,
    #[serde(default, deserialize_with = "de_env")]
    env: BTreeMap<String, String>,
    /// Relative paths are taken from the clients directory.
    #[serde(default, deserialize_with = "de_opt_string_cwd")]
    cwd: Option<String>,
    #[serde(default, deserialize_with = "de_idle_ttl")]
    idle_ttl_secs: Option<u64>,
    #[serde(default, deserialize_with = "de_token")]
    token_sha256: Option<String>,
    #[serde(default, deserialize_with = "de_rlimit_as")]
    rlimit_as: Option<u64>,
    #[serde(default, deserialize_with = "de_rlimit_nofile")]
    rlimit_nofile: Option<u64>,
    #[serde(default, deserialize_with = "de_rlimit_nproc")]
    rlimit_nproc: Option<u64>,
    /// `false`, `true`, or `{"read": [paths], "write": [paths]}`.
    #[serde(default, deserialize_with = "de_sandbox")]
    sandbox: Option<Value>,
    /// Accepted so an `mcpServers` entry can be pasted as is; must be `"stdio"`.
    #[serde(default, rename = "type", deserialize_with = "de_type")]
    kind: Option<String>,
    /// Accepted and ignored: a note for operators, common in `mcpServers` entries.
    #[serde(default, deserialize_with = "de_description")]
    #[allow(
        dead_code,
        reason = "read only to accept the field; mcpmux has no use for it"
    )]
    description: Option<String>,
}

impl RawClientFile {
    /// Stage one: bytes → raw fields. JSON syntax errors carry their line and column.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        let mut json = serde_json::Deserializer::from_slice(text);
        let object = json
            .deserialize_map(UniqueKeys)
            .and_then(|object| json.end().map(|()| object))
            .map_err(|err| match err.classify() {
                serde_json::error::Category::Data => err.to_string(),
                _ => format!("invalid json: {err}"),
            })?;
        Self::deserialize(Value::Object(object)).map_err(|err| err.to_string())
    }

    /// Stage two: raw fields → a valid spec, or the first field that is wrong.
    fn into_spec(
        self,
        id: ClientId,
        path: &Path,
        bytes: &[u8],
        defaults: &Defaults,
    ) -> Result<ClientSpec, String> {
        check_kind(self.kind.as_deref())?;
        Ok(ClientSpec {
            id,
            path: path.to_path_buf(),
            command: check_command(self.command)?,
            args: check_args(self.args)?,
            env: check_env(self.env)?,
            cwd: resolve_cwd(self.cwd, &defaults.clients_dir)?,
            idle_ttl: idle_ttl(self.idle_ttl_secs, defaults.idle_ttl)?,
            token_sha256: self.token_sha256.as_deref().map(token_hash).transpose()?,
            limits: Limits {
                address_space: positive("rlimit_as", self.rlimit_as)?,
                open_files: positive("rlimit_nofile", self.rlimit_nofile)?,
                processes: positive("rlimit_nproc", self.rlimit_nproc)?,
            },
            sandbox: check_sandbox(self.sandbox)?,
            content_hash: Sha256::digest(bytes).into(),
        })
    }
}

/// Reads the top-level JSON object, rejecting a key given twice: `serde_json::Value` would
/// silently keep the last one, and a repeated key is as likely a mistake as a misspelt one.
struct UniqueKeys;

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one JSON object (like an \"mcpServers\" entry)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate field \"{key}\"")));
            }
            object.insert(key, map.next_value()?);
        }
        Ok(object)
    }
}

fn check_kind(kind: Option<&str>) -> Result<(), String> {
    match kind {
        None | Some("stdio") => Ok(()),
        Some(other) => Err(format!(
            "\"type\" is \"{other}\" but must be \"stdio\" (mcpmux runs stdio servers only); \
             or omit it"
        )),
    }
}

fn check_command(command: String) -> Result<String, String> {
    if command.trim().is_empty() {
        return Err("\"command\" must not be empty: give the program to run, e.g. \"npx\"".into());
    }
    no_nul("command", &command)?;
    Ok(command)
}

fn check_args(args: Vec<String>) -> Result<Vec<String>, String> {
    args.iter().try_for_each(|arg| no_nul("args", arg))?;
    Ok(args)
}

/// Names must be settable with `execve`; values are secrets and never quoted back.
fn check_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, String> {
    env.into_iter()
        .map(|(name, value)| {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!(
                    "\"env\" name \"{}\" is not a variable name (non-empty, no \"=\", no NUL)",
                    name.escape_debug()
                ));
            }
            if value.contains('\0') {
                return Err(format!("\"env\" value of \"{name}\" must not contain NUL"));
            }
            Ok((name, Secret(value)))
        })
        .collect()
}

/// `None` (no `cwd`) runs the child in its tenant's state directory.
fn resolve_cwd(cwd: Option<String>, clients_dir: &Path) -> Result<Option<PathBuf>, String> {
    let Some(cwd) = cwd else {
        return Ok(None);
    };
    if cwd.is_empty() {
        return Err(
            "\"cwd\" must not be empty; omit it to run in the tenant's state directory".into(),
        );
    }
    no_nul("cwd", &cwd)?;
    // `join` keeps an absolute `cwd` as is and puts a relative one under the directory.
    Ok(Some(clients_dir.join(cwd)))
}

/// `sandbox`: a boolean, or an object with only `read` and `write`, each a list of absolute
/// paths that exist now.
fn check_sandbox(value: Option<Value>) -> Result<SandboxSpec, String> {
    let object = match value {
        None | Some(Value::Bool(true)) => return Ok(SandboxSpec::Default),
        Some(Value::Bool(false)) => return Ok(SandboxSpec::Off),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(
                "\"sandbox\" must be false, true, or {\"read\": [paths], \"write\": [paths]}"
                    .into(),
            );
        }
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "read" | "write"))
    {
        return Err(format!(
            "\"sandbox\": unknown field `{key}`, expected `read` or `write`"
        ));
    }
    let paths = |field: &str| -> Result<Vec<PathBuf>, String> {
        let Some(list) = object.get(field) else {
            return Ok(Vec::new());
        };
        let name = format!("\"sandbox.{field}\"");
        let Value::Array(items) = list else {
            return Err(format!("{name} must be a list of absolute paths"));
        };
        items
            .iter()
            .map(|item| {
                let Value::String(path) = item else {
                    return Err(format!("{name} must be a list of absolute paths"));
                };
                no_nul("sandbox", path)?;
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(format!(
                        "{name}: \"{}\" is not an absolute path",
                        path.display()
                    ));
                }
                if !path.exists() {
                    return Err(format!("{name}: \"{}\" does not exist", path.display()));
                }
                Ok(path)
            })
            .collect()
    };
    Ok(SandboxSpec::Extra {
        read: paths("read")?,
        write: paths("write")?,
    })
}

fn idle_ttl(secs: Option<u64>, default: Duration) -> Result<Duration, String> {
    match secs {
        None => Ok(default),
        Some(secs @ 1..=MAX_IDLE_TTL_SECS) => Ok(Duration::from_secs(secs)),
        Some(_) => Err(format!(
            "\"idle_ttl_secs\" must be a whole number of seconds from 1 to {MAX_IDLE_TTL_SECS}; \
             omit it for the default ({}s)",
            default.as_secs()
        )),
    }
}

fn token_hash(hex_text: &str) -> Result<TokenHash, String> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut hash).map_err(|_| {
        "\"token_sha256\" must be 64 hex characters (sha256 of the token, \
         e.g. from `printf %s \"$TOKEN\" | sha256sum`)"
            .to_string()
    })?;
    Ok(TokenHash(hash))
}

fn positive(field: &str, value: Option<u64>) -> Result<Option<u64>, String> {
    match value {
        Some(0) => Err(format!(
            "\"{field}\" must be a positive integer; omit it for no limit"
        )),
        other => Ok(other),
    }
}

/// Strings handed to `execve` cannot hold NUL.
fn no_nul(field: &str, text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!("\"{field}\" must not contain NUL characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clients");
    const TOKEN_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn defaults(dir: &Path) -> Defaults {
        Defaults {
            clients_dir: dir.to_path_buf(),
            idle_ttl: Duration::from_secs(300),
        }
    }

    fn parse(json: &str) -> Result<ClientSpec, FileError> {
        parse_file(
            Path::new("/clients/acme.json"),
            json.as_bytes(),
            &defaults(Path::new("/clients")),
        )
    }

    fn reason(json: &str) -> String {
        match parse(json) {
            Ok(spec) => panic!("{json} must be rejected, got {spec:?}"),
            Err(err) => err.reason,
        }
    }

    #[test]
    fn minimal_file_gets_the_defaults() {
        let json = r#"{"command": "mcp-echo"}"#;
        let spec = parse(json).unwrap();
        assert_eq!(spec.id.as_str(), "acme");
        assert_eq!(spec.path, Path::new("/clients/acme.json"));
        assert_eq!(spec.command, "mcp-echo");
        assert!(spec.args.is_empty() && spec.env.is_empty());
        assert_eq!(spec.cwd, None, "no cwd: the tenant's state directory");
        assert_eq!(spec.idle_ttl, Duration::from_secs(300));
        assert_eq!(spec.token_sha256, None);
        assert_eq!(spec.limits, Limits::default());
        let want: [u8; 32] = Sha256::digest(json.as_bytes()).into();
        assert_eq!(spec.content_hash, want);
    }

    #[test]
    fn every_field_is_read() {
        let json = format!(
            r#"{{"type": "stdio", "description": "memory", "command": "npx",
                "args": ["-y", "pkg"], "env": {{"K": "v"}}, "cwd": "/srv/acme",
                "idle_ttl_secs": 60, "token_sha256": "{}",
                "rlimit_as": 1000000, "rlimit_nofile": 256, "rlimit_nproc": 32}}"#,
            TOKEN_HEX.to_uppercase()
        );
        let spec = parse(&json).unwrap();
        assert_eq!(spec.args, ["-y", "pkg"]);
        assert_eq!(spec.env.get("K"), Some(&Secret("v".into())));
        assert_eq!(spec.cwd.as_deref(), Some(Path::new("/srv/acme")));
        assert_eq!(spec.idle_ttl, Duration::from_secs(60));
        let mut token = [0u8; 32];
        hex::decode_to_slice(TOKEN_HEX, &mut token).unwrap();
        assert_eq!(
            spec.token_sha256,
            Some(TokenHash(token)),
            "hex is case-insensitive"
        );
        let limits = Limits {
            address_space: Some(1_000_000),
            open_files: Some(256),
            processes: Some(32),
        };
        assert_eq!(spec.limits, limits);
    }

    #[test]
    fn relative_cwd_is_under_the_clients_dir() {
        assert_eq!(
            parse(r#"{"command": "x", "cwd": "data/acme"}"#)
                .unwrap()
                .cwd
                .as_deref(),
            Some(Path::new("/clients/data/acme"))
        );
        assert_eq!(
            parse(r#"{"command": "x", "cwd": "/abs"}"#)
                .unwrap()
                .cwd
                .as_deref(),
            Some(Path::new("/abs"))
        );
    }

    #[test]
    fn sandbox_field_adds_paths_or_opts_out() {
        let spec = |json: &str| parse(json).unwrap().sandbox;
        assert_eq!(spec(r#"{"command": "x"}"#), SandboxSpec::Default);
        assert_eq!(
            spec(r#"{"command": "x", "sandbox": true}"#),
            SandboxSpec::Default
        );
        assert_eq!(
            spec(r#"{"command": "x", "sandbox": false}"#),
            SandboxSpec::Off
        );
        assert_eq!(
            spec(
                r#"{"command": "x", "sandbox": {"read": ["/usr", "/etc/hostname"], "write": ["/tmp"]}}"#
            ),
            SandboxSpec::Extra {
                read: vec!["/usr".into(), "/etc/hostname".into()],
                write: vec!["/tmp".into()],
            }
        );
        assert_eq!(
            spec(r#"{"command": "x", "sandbox": {}}"#),
            SandboxSpec::Extra {
                read: vec![],
                write: vec![],
            }
        );
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        let spec = parse("\u{feff}{\"command\": \"x\"}").unwrap();
        assert_eq!(spec.command, "x");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let json = format!(
            r#"{{"command": "x", "env": {{"K": "hunter2"}}, "token_sha256": "{TOKEN_HEX}"}}"#
        );
        let shown = format!("{:?}", parse(&json).unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("9f86"),
            "{shown}"
        );
    }

    #[test]
    fn each_bad_field_is_named_in_its_error() {
        let cases = [
            (
                r#"{"comand": "x"}"#,
                "unknown field `comand`, expected one of `command`",
            ),
            (r#"{"args": []}"#, "missing field `command`"),
            (r#"{"command": ""}"#, "\"command\" must not be empty"),
            (
                r#"{"command": 7}"#,
                "\"command\": invalid type: integer `7`, expected a string",
            ),
            (
                r#"{"command": "a\u0000b"}"#,
                "\"command\" must not contain NUL",
            ),
            (
                r#"{"command": "x", "args": "-y"}"#,
                "\"args\": invalid type: string",
            ),
            (
                r#"{"command": "x", "args": [1]}"#,
                "\"args\": invalid type: integer",
            ),
            (
                r#"{"command": "x", "args": ["a\u0000"]}"#,
                "\"args\" must not contain NUL",
            ),
            (
                r#"{"command": "x", "env": []}"#,
                "\"env\": invalid type: sequence",
            ),
            (
                r#"{"command": "x", "env": {"A": 1}}"#,
                "\"env\": invalid type: integer",
            ),
            (
                r#"{"command": "x", "env": {"": "1"}}"#,
                "\"env\" name \"\" is not a variable name",
            ),
            (
                r#"{"command": "x", "env": {"A=B": "1"}}"#,
                "\"env\" name \"A=B\"",
            ),
            (
                r#"{"command": "x", "env": {"A": "\u0000"}}"#,
                "\"env\" value of \"A\" must not contain NUL",
            ),
            (
                r#"{"command": "x", "cwd": ""}"#,
                "\"cwd\" must not be empty",
            ),
            (r#"{"command": "x", "cwd": 1}"#, "\"cwd\": invalid type"),
            (
                r#"{"command": "x", "idle_ttl_secs": 0}"#,
                "\"idle_ttl_secs\" must be a whole number of seconds from 1",
            ),
            (
                r#"{"command": "x", "idle_ttl_secs": 31536001}"#,
                "\"idle_ttl_secs\" must be a whole number",
            ),
            (
                r#"{"command": "x", "idle_ttl_secs": -1}"#,
                "\"idle_ttl_secs\": invalid value: integer `-1`",
            ),
            (
                r#"{"command": "x", "idle_ttl_secs": 1.5}"#,
                "\"idle_ttl_secs\": invalid type: floating point",
            ),
            (
                r#"{"command": "x", "token_sha256": "abc"}"#,
                "\"token_sha256\" must be 64 hex characters",
            ),
            (
                r#"{"command": "x", "token_sha256": 5}"#,
                "\"token_sha256\": invalid type",
            ),
            (
                r#"{"command": "x", "rlimit_as": 0}"#,
                "\"rlimit_as\" must be a positive integer",
            ),
            (
                r#"{"command": "x", "rlimit_nofile": 0}"#,
                "\"rlimit_nofile\" must be a positive integer",
            ),
            (
                r#"{"command": "x", "rlimit_nproc": 0}"#,
                "\"rlimit_nproc\" must be a positive integer",
            ),
            (
                r#"{"command": "x", "rlimit_nproc": "8"}"#,
                "\"rlimit_nproc\": invalid type",
            ),
            (
                r#"{"command": "x", "type": "sse"}"#,
                "\"type\" is \"sse\" but must be \"stdio\"",
            ),
            (
                r#"{"command": "x", "description": false}"#,
                "\"description\": invalid type: boolean",
            ),
            (
                r#"{"command": "x", "sandbox": "off"}"#,
                "\"sandbox\" must be false, true, or {\"read\": [paths], \"write\": [paths]}",
            ),
            (
                r#"{"command": "x", "sandbox": {"reed": ["/usr"]}}"#,
                "\"sandbox\": unknown field `reed`, expected `read` or `write`",
            ),
            (
                r#"{"command": "x", "sandbox": {"read": "/usr"}}"#,
                "\"sandbox.read\" must be a list of absolute paths",
            ),
            (
                r#"{"command": "x", "sandbox": {"write": [1]}}"#,
                "\"sandbox.write\" must be a list of absolute paths",
            ),
            (
                r#"{"command": "x", "sandbox": {"read": ["usr/lib"]}}"#,
                "\"sandbox.read\": \"usr/lib\" is not an absolute path",
            ),
            (
                r#"{"command": "x", "sandbox": {"write": ["/nonexistent/mcpmux"]}}"#,
                "\"sandbox.write\": \"/nonexistent/mcpmux\" does not exist",
            ),
            (
                r#"{"command": "x", "command": "y"}"#,
                "duplicate field \"command\"",
            ),
            (
                r#"{"command": "x",}"#,
                "invalid json: trailing comma at line 1 column 17",
            ),
            (
                r#"{"command": "x"} []"#,
                "invalid json: trailing characters",
            ),
            ("", "invalid json: EOF while parsing"),
            (r#"["x"]"#, "expected one JSON object"),
        ];
        for (json, want) in cases {
            let got = reason(json);
            assert!(got.contains(want), "{json}\n  got:  {got}\n  want: {want}");
            assert!(
                got.starts_with(|c: char| !c.is_uppercase()),
                "lowercase: {got}"
            );
        }
    }

    #[test]
    fn error_display_is_path_then_reason() {
        let err = parse(r#"{"comand": "x"}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/clients/acme.json: unknown field"),
            "{err}"
        );
        assert_eq!(err.id, ClientId::parse("acme").ok());
    }

    #[test]
    fn file_name_rule() {
        for (name, want) in [
            ("acme.json", Some("acme")),
            ("Acme.JSON", Some("acme")),
            ("a1.json", Some("a1")),
        ] {
            assert_eq!(
                id_for_file_name(name).as_ref().map(ClientId::as_str),
                want,
                "{name}"
            );
        }
        let long = format!("{}.json", "a".repeat(MAX_CLIENT_ID_LEN + 1));
        let ignored = [
            ".acme.json.swp",
            ".acme.json.swx",
            "acme.json~",
            ".#acme.json",
            "#acme.json#",
            "4913",
            "sedAb12Cd",
            "..data",
            "..2026_01_01",
            "acme.json.tmp",
            "a-b.json",
            ".json",
            " a.json",
            "acme.txt",
            "ä.json",
            &long,
        ];
        for name in ignored {
            assert_eq!(id_for_file_name(name), None, "{name}");
        }
        let err =
            parse_file(Path::new("/c/a-b.json"), b"{}", &defaults(Path::new("/c"))).unwrap_err();
        assert!(err.reason.contains("file name must be <id>.json"), "{err}");
    }

    #[test]
    fn valid_fixtures_all_load() {
        let dir = Path::new(FIXTURES).join("valid");
        let (specs, errors) = load_dir(&dir, &defaults(&dir));
        assert!(errors.is_empty(), "{errors:#?}");
        let mut ids: Vec<&str> = specs.keys().map(ClientId::as_str).collect();
        ids.sort();
        assert_eq!(ids, ["full", "minimal", "mixedcase", "pasted"]);
        let full = &specs[&ClientId::parse("full").unwrap()];
        assert!(full.token_sha256.is_some() && full.limits.processes == Some(64));
        assert_eq!(
            specs[&ClientId::parse("pasted").unwrap()].cwd,
            Some(dir.join("pasted-data"))
        );
    }

    #[test]
    fn each_invalid_fixture_gives_exactly_one_error_naming_it() {
        let cases = [
            ("argsnotarray.json", "\"args\": invalid type"),
            ("commandnull.json", "\"command\": invalid type: null"),
            ("cwdempty.json", "\"cwd\" must not be empty"),
            ("descriptionnumber.json", "\"description\": invalid type"),
            ("dirnamed.json", "not a regular file"),
            ("duplicatekey.json", "duplicate field \"command\""),
            ("empty.json", "invalid json: EOF"),
            ("emptycommand.json", "\"command\" must not be empty"),
            ("envbadname.json", "\"env\" name \"A=B\""),
            ("envnumber.json", "\"env\": invalid type: integer"),
            ("mcpservers.json", "unknown field `mcpServers`"),
            ("missingcommand.json", "missing field `command`"),
            (
                "rlimitaszero.json",
                "\"rlimit_as\" must be a positive integer",
            ),
            (
                "rlimitnofilefloat.json",
                "\"rlimit_nofile\": invalid type: floating point",
            ),
            (
                "rlimitnprocnegative.json",
                "\"rlimit_nproc\": invalid value",
            ),
            ("syntax.json", "invalid json: trailing comma"),
            (
                "tokennothex.json",
                "\"token_sha256\" must be 64 hex characters",
            ),
            (
                "tokenshort.json",
                "\"token_sha256\" must be 64 hex characters",
            ),
            ("toplevelarray.json", "expected one JSON object"),
            ("trailing.json", "invalid json: trailing characters"),
            ("truncated.json", "invalid json: EOF while parsing a string"),
            ("ttlnegative.json", "\"idle_ttl_secs\": invalid value"),
            ("ttlstring.json", "\"idle_ttl_secs\": invalid type: string"),
            (
                "ttltoolarge.json",
                "\"idle_ttl_secs\" must be a whole number",
            ),
            ("ttlzero.json", "\"idle_ttl_secs\" must be a whole number"),
            ("typesse.json", "\"type\" is \"sse\""),
            ("unknownfield.json", "unknown field `comand`"),
        ];
        let dir = Path::new(FIXTURES).join("invalid");
        let (specs, errors) = load_dir(&dir, &defaults(&dir));
        assert!(specs.is_empty(), "{specs:#?}");
        let got: Vec<(String, &str)> = errors
            .iter()
            .map(|e| {
                (
                    e.path.file_name().unwrap().to_string_lossy().into_owned(),
                    e.reason.as_str(),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names, want,
            "one error per invalid file, none for ignored names"
        );
        for ((name, reason), (_, want)) in got.iter().zip(cases) {
            assert!(
                reason.contains(want),
                "{name}\n  got:  {reason}\n  want: {want}"
            );
        }
        for err in &errors {
            assert!(
                err.to_string().starts_with(&err.path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn temp_names_symlinks_and_duplicates_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, body: &str| fs::write(dir.path().join(name), body).unwrap();
        put("good.json", r#"{"command": "x"}"#);
        for temp in [
            ".good.json.swp",
            "good.json~",
            ".#good.json",
            "#good.json#",
            "4913",
            "sed1x2Y3z",
        ] {
            put(temp, "garbage");
        }
        put("Dup.json", r#"{"command": "x"}"#);
        put("dup.json", r#"{"command": "x"}"#);
        fs::create_dir(dir.path().join("..2026_01")).unwrap();
        put("..2026_01/linked.json", r#"{"command": "y"}"#);
        symlink("..2026_01", dir.path().join("..data")).unwrap();
        symlink("..data/linked.json", dir.path().join("linked.json")).unwrap();
        symlink("nowhere.json", dir.path().join("dangling.json")).unwrap();

        let (specs, errors) = load_dir(dir.path(), &defaults(dir.path()));
        let mut ids: Vec<&str> = specs.keys().map(ClientId::as_str).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["good", "linked"],
            "symlinked file loads, duplicates do not"
        );
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{reasons:#?}");
        assert!(
            reasons[0].contains("Dup.json: client id \"dup\" is also claimed by dup.json"),
            "{reasons:#?}"
        );
        assert!(
            reasons[1].contains("dangling.json: cannot read the file"),
            "{reasons:#?}"
        );
        assert!(
            reasons[2].contains("dup.json: client id \"dup\" is also claimed by Dup.json"),
            "{reasons:#?}"
        );
        assert_eq!(errors[1].id, ClientId::parse("dangling").ok());
    }

    #[test]
    fn symlinked_directory_is_followed() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("real")).unwrap();
        fs::write(root.path().join("real/a.json"), r#"{"command": "x"}"#).unwrap();
        symlink("real", root.path().join("clients")).unwrap();
        let clients = root.path().join("clients");
        let (specs, errors) = load_dir(&clients, &defaults(&clients));
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(
            specs[&ClientId::parse("a").unwrap()].path,
            clients.join("a.json")
        );
    }

    #[test]
    fn missing_directory_is_one_error_without_id() {
        let dir = Path::new("/nonexistent/mcpmux-clients");
        let (specs, errors) = load_dir(dir, &defaults(dir));
        assert!(specs.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].id, None);
        assert!(
            errors[0]
                .to_string()
                .starts_with("/nonexistent/mcpmux-clients: cannot read the clients directory")
        );
    }

    #[test]
    fn oversized_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let big = format!(
            r#"{{"command": "x", "description": "{}"}}"#,
            "a".repeat(MAX_FILE_BYTES as usize)
        );
        fs::write(dir.path().join("big.json"), big).unwrap();
        let (specs, errors) = load_dir(dir.path(), &defaults(dir.path()));
        assert!(specs.is_empty());
        assert!(errors[0].reason.contains("larger than"), "{errors:#?}");
    }
}
