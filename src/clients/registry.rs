//! The current set of tenants, and how a rescan turns into a [`Diff`] (DESIGN §2).
//!
//! Owns the published table (`Arc<HashMap<ClientId, Arc<ClientSpec>>>`) and the reload
//! rule; it does not watch anything (that is `watch.rs`) nor parse (that is `file.rs`).
//! Invariants: readers always see a whole table, swapped in one step; a tenant whose file
//! exists but is broken keeps its last good spec; a spec whose file did not change keeps
//! its `Arc`, so nothing downstream restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{ClientId, ClientSpec, Defaults, FileError, load_dir};

/// A table of tenants, as published by the registry.
pub type Tenants = HashMap<ClientId, Arc<ClientSpec>>;

/// What a reload changed. Each list is sorted by client id.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    /// Tenants that did not exist before.
    pub added: Vec<Arc<ClientSpec>>,
    /// Tenants whose file content changed (the new spec).
    pub changed: Vec<Arc<ClientSpec>>,
    /// Tenants whose file is gone.
    pub removed: Vec<ClientId>,
}

impl Diff {
    /// True when the reload changed nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The result of one rescan.
#[derive(Debug, Default, Clone)]
pub struct ReloadOutcome {
    /// Changes now in force.
    pub diff: Diff,
    /// Files that failed; each kept its last good version, if it had one.
    pub errors: Vec<FileError>,
}

/// Current tenants.
#[derive(Debug, Default)]
pub struct Registry {
    /// The published table; the lock is held only to clone or swap the `Arc`.
    current: RwLock<Arc<Tenants>>,
    /// Serialises reloads (each one reads, diffs and swaps) and holds the errors the last
    /// reload reported, so a file that stays broken is logged once, not at every rescan.
    reload: Mutex<HashSet<String>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding `specs`, without reading any directory (for tests and tools).
    pub fn with_specs(specs: impl IntoIterator<Item = ClientSpec>) -> Self {
        let table = specs
            .into_iter()
            .map(|s| (s.id.clone(), Arc::new(s)))
            .collect();
        Self {
            current: RwLock::new(Arc::new(table)),
            reload: Mutex::default(),
        }
    }

    /// The spec in force for `id`.
    pub fn get(&self, id: &ClientId) -> Option<Arc<ClientSpec>> {
        self.snapshot().get(id).cloned()
    }

    /// Every tenant in force.
    pub fn snapshot(&self) -> Arc<Tenants> {
        // A writer cannot panic while holding the lock (it only swaps an `Arc`), so a
        // poisoned lock still guards a whole table.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Number of tenants in force.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// True when no tenant is in force.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Rescans `defaults.clients_dir` and publishes the result in one swap. Blocks on the
    /// file system: call it from a blocking context.
    pub fn reload(&self, defaults: &Defaults) -> ReloadOutcome {
        let mut reported = self.reload.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        let (scanned, errors) = load_dir(&defaults.clients_dir, defaults);
        let next = merge(&old, scanned, &errors);
        let diff = diff(&old, &next);
        log_new_errors(&errors, &next, &mut reported);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        ReloadOutcome { diff, errors }
    }
}

/// The table to publish after a scan: the scanned specs, plus the last good spec of every
/// tenant whose file exists but failed. When the directory itself failed (an error with
/// no id), the scan says nothing about which files are gone, so every old tenant missing
/// from the scan is kept. A spec equal to the old one keeps the old `Arc`.
fn merge(old: &Tenants, scanned: Tenants, errors: &[FileError]) -> Tenants {
    let mut next: Tenants = scanned
        .into_iter()
        .map(|(id, spec)| {
            let same = old.get(&id).filter(|old_spec| *old_spec == &spec).cloned();
            (id, same.unwrap_or(spec))
        })
        .collect();
    let scan_incomplete = errors.iter().any(|e| e.id.is_none());
    for (id, spec) in old {
        let broken = errors.iter().any(|e| e.id.as_ref() == Some(id));
        if (broken || scan_incomplete) && !next.contains_key(id) {
            next.insert(id.clone(), Arc::clone(spec));
        }
    }
    next
}

/// Added, changed (content hash differs) and removed tenants between two tables.
fn diff(old: &Tenants, new: &Tenants) -> Diff {
    let mut diff = Diff::default();
    for (id, spec) in new {
        match old.get(id) {
            None => diff.added.push(Arc::clone(spec)),
            Some(before) if before.content_hash != spec.content_hash => {
                diff.changed.push(Arc::clone(spec));
            }
            Some(_) => {}
        }
    }
    diff.removed = old
        .keys()
        .filter(|id| !new.contains_key(*id))
        .cloned()
        .collect();
    diff.added.sort_by(|a, b| a.id.cmp(&b.id));
    diff.changed.sort_by(|a, b| a.id.cmp(&b.id));
    diff.removed.sort();
    diff
}

/// Warns about each error not already reported by the previous reload, then remembers
/// this reload's errors. A file fixed and broken again is reported again.
fn log_new_errors(errors: &[FileError], next: &Tenants, reported: &mut HashSet<String>) {
    let current: HashSet<String> = errors.iter().map(ToString::to_string).collect();
    for err in errors.iter().filter(|e| !reported.contains(&e.to_string())) {
        let kept_last_good = err.id.as_ref().is_some_and(|id| next.contains_key(id));
        tracing::warn!(
            file = %err.path.display(),
            reason = %err.reason,
            kept_last_good,
            "client file rejected"
        );
    }
    *reported = current;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::clients::Limits;

    fn spec(id: &str, content: &str) -> Arc<ClientSpec> {
        let id = ClientId::parse(id).unwrap();
        let mut content_hash = [0u8; 32];
        content_hash[..content.len()].copy_from_slice(content.as_bytes());
        Arc::new(ClientSpec {
            path: PathBuf::from(format!("/c/{id}.json")),
            id,
            command: "cmd".into(),
            args: vec![],
            env: Default::default(),
            cwd: Some(PathBuf::from("/c")),
            idle_ttl: Duration::from_secs(300),
            token_sha256: None,
            limits: Limits::default(),
            sandbox: Default::default(),
            content_hash,
        })
    }

    fn table(specs: &[(&str, &str)]) -> Tenants {
        specs
            .iter()
            .map(|(id, c)| (ClientId::parse(id).unwrap(), spec(id, c)))
            .collect()
    }

    fn bad(id: Option<&str>) -> FileError {
        FileError {
            path: PathBuf::from(format!("/c/{}.json", id.unwrap_or("dir"))),
            id: id.map(|i| ClientId::parse(i).unwrap()),
            reason: "broken".into(),
        }
    }

    fn ids(specs: &[Arc<ClientSpec>]) -> Vec<&str> {
        specs.iter().map(|s| s.id.as_str()).collect()
    }

    /// (name, old, scanned, bad ids (`None` = the directory), want: added, changed,
    /// removed, and the ids in force afterwards).
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, &'static str)],
        &'static [Option<&'static str>],
        [&'static [&'static str]; 4],
    );

    const CASES: &[Case] = &[
        ("empty to empty", &[], &[], &[], [&[], &[], &[], &[]]),
        (
            "first load adds all",
            &[],
            &[("a", "1"), ("b", "1")],
            &[],
            [&["a", "b"], &[], &[], &["a", "b"]],
        ),
        (
            "unchanged content is no change",
            &[("a", "1")],
            &[("a", "1")],
            &[],
            [&[], &[], &[], &["a"]],
        ),
        (
            "new content is a change",
            &[("a", "1")],
            &[("a", "2")],
            &[],
            [&[], &["a"], &[], &["a"]],
        ),
        (
            "missing file is removed",
            &[("a", "1"), ("b", "1")],
            &[("a", "1")],
            &[],
            [&[], &[], &["b"], &["a"]],
        ),
        (
            "broken edit keeps last good",
            &[("a", "1")],
            &[],
            &[Some("a")],
            [&[], &[], &[], &["a"]],
        ),
        (
            "broken new file is skipped",
            &[],
            &[],
            &[Some("a")],
            [&[], &[], &[], &[]],
        ),
        (
            "unreadable dir keeps all",
            &[("a", "1"), ("b", "1")],
            &[("a", "2")],
            &[None],
            [&[], &["a"], &[], &["a", "b"]],
        ),
        (
            "mixed",
            &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")],
            &[("a", "1"), ("b", "2"), ("e", "1")],
            &[Some("c")],
            [&["e"], &["b"], &["d"], &["a", "b", "c", "e"]],
        ),
    ];

    #[test]
    fn merge_and_diff_follow_the_reload_rule() {
        for (name, old, scanned, bad_ids, [added, changed, removed, in_force]) in CASES {
            let old = table(old);
            let errors: Vec<FileError> = bad_ids.iter().map(|id| bad(*id)).collect();
            let next = merge(&old, table(scanned), &errors);
            let diff = diff(&old, &next);
            assert_eq!(ids(&diff.added), *added, "{name}: added");
            assert_eq!(ids(&diff.changed), *changed, "{name}: changed");
            let removed_ids: Vec<&str> = diff.removed.iter().map(ClientId::as_str).collect();
            assert_eq!(removed_ids, *removed, "{name}: removed");
            let mut force: Vec<&str> = next.keys().map(ClientId::as_str).collect();
            force.sort();
            assert_eq!(force, *in_force, "{name}: in force");
            assert_eq!(
                diff.is_empty(),
                added.is_empty() && changed.is_empty() && removed.is_empty()
            );
        }
    }

    #[test]
    fn unchanged_spec_keeps_its_arc() {
        let old = table(&[("a", "1")]);
        let next = merge(&old, table(&[("a", "1")]), &[]);
        assert!(Arc::ptr_eq(
            &old[&ClientId::parse("a").unwrap()],
            &next[&ClientId::parse("a").unwrap()]
        ));
    }

    #[test]
    fn with_specs_get_len() {
        let registry = Registry::with_specs([(*spec("a", "1")).clone()]);
        assert_eq!(registry.len(), 1);
        assert!(!registry.is_empty());
        assert!(registry.get(&ClientId::parse("a").unwrap()).is_some());
        assert!(registry.get(&ClientId::parse("b").unwrap()).is_none());
        assert!(Registry::new().is_empty());
    }

    #[test]
    fn reload_reads_the_directory_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Defaults {
            clients_dir: dir.path().into(),
            idle_ttl: Duration::from_secs(9),
        };
        let registry = Registry::new();
        std::fs::write(dir.path().join("a.json"), r#"{"command": "x"}"#).unwrap();
        let first = registry.reload(&defaults);
        assert_eq!(ids(&first.diff.added), ["a"]);
        std::fs::write(dir.path().join("a.json"), r#"{"comand": "x"}"#).unwrap();
        let broken = registry.reload(&defaults);
        assert!(
            broken.diff.is_empty(),
            "a broken edit changes nothing: {broken:?}"
        );
        assert_eq!(broken.errors.len(), 1);
        assert_eq!(registry.len(), 1);
        std::fs::remove_file(dir.path().join("a.json")).unwrap();
        let gone = registry.reload(&defaults);
        assert_eq!(gone.diff.removed, [ClientId::parse("a").unwrap()]);
        assert!(registry.is_empty());
    }
}
