//! Per-tenant state directories: `<state-dir>/<id>`, the child's default `cwd`, `HOME` and
//! `TMPDIR`, so no two tenants share a home, a temp dir or an npm cache.
//!
//! Owns where the state root is by default and how a tenant's directory is made (mode
//! 0700, never through a symlink). It does not own what a child may do there: that is the
//! sandbox's business.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::clients::ClientId;

/// Mode of every directory this module creates: the daemon's user only.
const DIR_MODE: u32 = 0o700;

/// The state root when `--state-dir` is not given: systemd's `$STATE_DIRECTORY` (the unit's
/// `StateDirectory=`; the first entry when it lists several), else `$XDG_STATE_HOME/mcpmux`,
/// else `$HOME/.local/state/mcpmux`. `None` when none of these is set.
pub fn default_root(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name| var(name).filter(|v| !v.is_empty());
    if let Some(dirs) = set("STATE_DIRECTORY") {
        return std::env::split_paths(&dirs).find(|d| !d.as_os_str().is_empty());
    }
    if let Some(xdg) = set("XDG_STATE_HOME") {
        return Some(PathBuf::from(xdg).join("mcpmux"));
    }
    set("HOME").map(|home| PathBuf::from(home).join(".local/state/mcpmux"))
}

/// Creates the state root (and its parents) if missing; the root itself gets mode 0700.
pub fn ensure_root(root: &Path) -> io::Result<()> {
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(root) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_dir(root),
        other => other,
    }
}

/// `<root>/<id>`, created with mode 0700 when missing. An existing entry must be a real
/// directory (not a symlink, which could point into another tenant's directory) owned by
/// the daemon's user; its mode is left as the operator set it.
pub fn tenant_dir(root: &Path, id: &ClientId) -> io::Result<PathBuf> {
    let dir = root.join(id.as_str());
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_dir(&dir).map(|()| dir),
        Err(e) => Err(e),
    }
}

fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(
            "exists but is not a directory (symlinks are refused)",
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "is owned by uid {}, not by mcpmux's uid {me}",
            meta.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn default_root_prefers_systemd_then_xdg_then_home() {
        let all = [
            ("STATE_DIRECTORY", "/var/lib/mcpmux:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(default_root(vars(&all)), Some("/var/lib/mcpmux".into()));
        assert_eq!(
            default_root(vars(&all[1..])),
            Some("/x/mcpmux".into()),
            "XDG_STATE_HOME"
        );
        assert_eq!(
            default_root(vars(&[("XDG_STATE_HOME", ""), ("HOME", "/h")])),
            Some("/h/.local/state/mcpmux".into()),
            "an empty variable counts as unset"
        );
        assert_eq!(default_root(vars(&[])), None);
    }

    #[test]
    fn tenant_dirs_are_created_0700_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/state");
        ensure_root(&root).unwrap();
        ensure_root(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        let id = ClientId::parse("acme").unwrap();
        let dir = tenant_dir(&root, &id).unwrap();
        assert_eq!(dir, root.join("acme"));
        assert_eq!(mode(&dir), 0o700);
        std::fs::write(dir.join("kept"), "x").unwrap();
        assert_eq!(
            tenant_dir(&root, &id).unwrap(),
            dir,
            "an existing dir is reused"
        );
        assert!(dir.join("kept").exists());
    }

    #[test]
    fn a_symlink_or_file_in_place_of_a_tenant_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("other")).unwrap();
        std::os::unix::fs::symlink("other", tmp.path().join("evil")).unwrap();
        std::fs::write(tmp.path().join("file"), "x").unwrap();
        for name in ["evil", "file"] {
            let id = ClientId::parse(name).unwrap();
            let err = tenant_dir(tmp.path(), &id).unwrap_err().to_string();
            assert_eq!(
                err, "exists but is not a directory (symlinks are refused)",
                "{name}"
            );
        }
    }
}
