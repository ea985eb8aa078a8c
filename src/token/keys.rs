//! The session key file (`--session-key-file`) and the ring of keys read from it.
//!
//! Format: one key per line, 64 hex characters (32 bytes); blank lines and lines starting
//! with `#` are skipped. The first key signs, every key verifies: to rotate, put the new key
//! first on every node (SIGHUP), and remove the old one once no session it signed is alive.
//! The file must be a regular file that no group or other user can read or write (mode 0600
//! or stricter): it is the secret that lets any holder mint sessions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{TAG_BYTES, prefix};
use crate::sync::lock;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Bytes per key.
pub const KEY_BYTES: usize = 32;
/// Keys one file may hold: a current key and a few being rotated out.
pub const MAX_KEYS: usize = 16;
/// Largest key file read (MAX_KEYS lines with comments to spare).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why a key file cannot be used; each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("{path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a regular file, or too large.
    #[error("{path}: {reason}")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Group or others may read or write it.
    #[error("{path}: mode {mode:04o} lets group or others access the key; chmod 600 it")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not 64 hex characters.
    #[error("{path}: line {line}: a key must be 64 hex characters (32 bytes)")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// No key at all, or more than [`MAX_KEYS`].
    #[error("{path}: {reason}")]
    Count {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One key, ready to MAC with (the keyed HMAC state is cloned per use, not re-derived).
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

impl Key {
    /// A key from 64 hex characters; `None` otherwise.
    pub fn parse(hex_text: &str) -> Option<Self> {
        let mut bytes = [0u8; KEY_BYTES];
        if hex_text.len() != 2 * KEY_BYTES {
            return None;
        }
        hex::decode_to_slice(hex_text, &mut bytes).ok()?;
        let mac = HmacSha256::new_from_slice(&bytes).ok()?;
        Some(Self { mac })
    }

    /// HMAC-SHA256 of `data`.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The HMAC state after `data`, to be continued with [`finish`].
    pub(super) fn mac_after(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac
    }

    /// True when `tag` is this key's HMAC of `data`; constant time in the tag's content.
    pub fn verifies(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    /// True when `tag` is the first [`TAG_BYTES`] of this key's HMAC of `data`; constant
    /// time in the tag's content.
    pub fn verifies_truncated(&self, data: &[u8], tag: &[u8; TAG_BYTES]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// The HMAC of what `mac` has seen and then `rest`.
pub(super) fn finish(mut mac: HmacSha256, rest: &[u8]) -> [u8; 32] {
    mac.update(rest);
    mac.finalize().into_bytes().into()
}

/// A non-empty set of keys: the signer (the file's first) and every key, signer included,
/// and the signer's cache of token heads.
#[derive(Debug)]
struct KeySet {
    signer: Key,
    all: Vec<Key>,
    heads: Mutex<prefix::Cache>,
}

impl KeySet {
    fn new(all: Vec<Key>) -> Option<Self> {
        let signer = all.first()?.clone();
        Some(Self {
            signer,
            all,
            heads: Mutex::default(),
        })
    }
}

/// The keys in force, re-read on SIGHUP.
#[derive(Debug)]
pub struct Keyring {
    path: Option<PathBuf>,
    keys: RwLock<Arc<KeySet>>,
}

impl Keyring {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Ok(Self {
            path: Some(path.to_owned()),
            keys: RwLock::new(Arc::new(read_key_file(path)?)),
        })
    }

    /// A ring of `keys` not backed by a file (tests, benchmarks); `None` when empty.
    pub fn from_keys(keys: Vec<Key>) -> Option<Self> {
        Some(Self {
            path: None,
            keys: RwLock::new(Arc::new(KeySet::new(keys)?)),
        })
    }

    /// Re-reads the file; on error the keys in force stay. Returns how many keys it holds.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let Some(path) = &self.path else {
            return Ok(self.current().all.len());
        };
        let keys = Arc::new(read_key_file(path)?);
        let count = keys.all.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        Ok(count)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The signing key (the file's first).
    pub fn signer(&self) -> Key {
        self.current().signer.clone()
    }

    /// The signing key's HMAC-SHA256 of `data` (no copy of the key beyond the one MAC).
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        self.current().signer.tag(data)
    }

    /// Appends the encoded head of a token for `tenant` whose payload starts with `json`,
    /// from the signer's cache (see [`prefix`]); returns the bytes of `json` it covers and
    /// the signer's HMAC state after what it appended.
    pub(super) fn head(&self, tenant: &str, json: &[u8], out: &mut Vec<u8>) -> (usize, HmacSha256) {
        let keys = self.current();
        lock(&keys.heads).head(&keys.signer, tenant, json, out)
    }

    /// True when any key's HMAC of `data` is `tag`. Every key is tried, so the time does not
    /// tell which one matched.
    pub fn verifies(&self, data: &[u8], tag: &[u8]) -> bool {
        self.current()
            .all
            .iter()
            .fold(false, |ok, key| key.verifies(data, tag) | ok)
    }

    /// As [`Keyring::verifies`], for a tag of the HMAC's first [`TAG_BYTES`].
    pub fn verifies_truncated(&self, data: &[u8], tag: &[u8; TAG_BYTES]) -> bool {
        self.current()
            .all
            .iter()
            .fold(false, |ok, key| key.verifies_truncated(data, tag) | ok)
    }
}

fn read_key_file(path: &Path) -> Result<KeySet, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_owned(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes; not a key file"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse_keys(path, &text)
}

fn parse_keys(path: &Path, text: &str) -> Result<KeySet, KeyFileError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = Key::parse(line).ok_or_else(|| KeyFileError::BadKey {
            path: path.to_owned(),
            line: n + 1,
        })?;
        keys.push(key);
    }
    let count_err = |reason: String| KeyFileError::Count {
        path: path.to_owned(),
        reason,
    };
    if keys.len() > MAX_KEYS {
        return Err(count_err(format!(
            "{} keys; at most {MAX_KEYS}",
            keys.len()
        )));
    }
    KeySet::new(keys).ok_or_else(|| count_err("no key in the file".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn write(dir: &tempfile::TempDir, text: &str, mode: u32) -> PathBuf {
        let path = dir.path().join("keys");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_first_key_signs_and_all_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &format!("# current\n{KEY_B}\n\n{KEY_A}\n"), 0o600);
        let ring = Keyring::load(&path).unwrap();
        let tag = ring.signer().tag(b"x");
        assert_eq!(tag, Key::parse(KEY_B).unwrap().tag(b"x"));
        assert!(ring.verifies(b"x", &Key::parse(KEY_A).unwrap().tag(b"x")));
        assert!(!ring.verifies(b"y", &tag));
        assert!(
            !ring.verifies(b"x", &tag[..31]),
            "a short tag never verifies"
        );
    }

    #[test]
    fn a_mode_letting_group_or_others_in_is_refused_and_0400_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            let path = write(&dir, KEY_A, mode);
            let err = Keyring::load(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Mode { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        let path = write(&dir, KEY_A, 0o400);
        assert!(Keyring::load(&path).is_ok());
    }

    #[test]
    fn bad_lines_and_empty_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let short = &KEY_A[..62];
        let not_hex = format!("{}zz", &KEY_A[..62]);
        for (text, needle) in [
            (
                format!("{KEY_A}\n{short}\n"),
                "line 2: a key must be 64 hex",
            ),
            (not_hex, "line 1: a key must be 64 hex"),
            ("# nothing\n\n".to_string(), "no key in the file"),
            (format!("{KEY_A}\n").repeat(MAX_KEYS + 1), "at most 16"),
        ] {
            let path = write(&dir, &text, 0o600);
            let err = Keyring::load(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let missing = dir.path().join("absent");
        let err = Keyring::load(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read it"), "{err}");
        let err = Keyring::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn reload_swaps_keys_and_a_bad_edit_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, KEY_A, 0o600);
        let ring = Keyring::load(&path).unwrap();
        let mint = |ring: &Keyring| {
            let params = super::super::ReducedParams::parse("{}").unwrap();
            let now = std::time::SystemTime::now();
            let life = std::time::Duration::from_secs(60);
            super::super::issue(ring, "acme", "2025-11-25", params, now, life)
                .unwrap()
                .0
        };
        let only_b = Keyring::from_keys(vec![Key::parse(KEY_B).unwrap()]).unwrap();
        let before = mint(&ring); // the ring now caches a head MAC'd with KEY_A
        write(&dir, &format!("{KEY_B}\n{KEY_A}\n"), 0o600);
        assert_eq!(ring.reload().unwrap(), 2);
        assert_eq!(
            ring.signer().tag(b"x"),
            Key::parse(KEY_B).unwrap().tag(b"x")
        );
        let now = std::time::SystemTime::now();
        let after = mint(&ring);
        assert!(
            super::super::verify(&only_b, &after, "acme", now).is_ok(),
            "after the reload the new first key signs, not a cached head of the old one"
        );
        assert!(super::super::verify(&only_b, &before, "acme", now).is_err());
        write(&dir, "garbage", 0o600);
        assert!(ring.reload().is_err());
        assert_eq!(
            ring.signer().tag(b"x"),
            Key::parse(KEY_B).unwrap().tag(b"x"),
            "a bad edit leaves the keys in force"
        );
    }
}
