//! The current set of tenants, swapped atomically on reload. (Stub: to be implemented.)

use std::collections::HashMap;
use std::sync::Arc;

use super::{ClientId, ClientSpec, Defaults, FileError};

/// What a reload changed.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    /// Tenants that did not exist before.
    pub added: Vec<Arc<ClientSpec>>,
    /// Tenants whose file content changed (the new spec).
    pub changed: Vec<Arc<ClientSpec>>,
    /// Tenants whose file is gone.
    pub removed: Vec<ClientId>,
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
    _todo: (),
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The spec in force for `id`.
    pub fn get(&self, id: &ClientId) -> Option<Arc<ClientSpec>> {
        let _ = id;
        todo!()
    }

    /// Every tenant in force.
    pub fn snapshot(&self) -> Arc<HashMap<ClientId, Arc<ClientSpec>>> {
        todo!()
    }

    /// Rescans the directory and publishes the result in one swap.
    pub fn reload(&self, defaults: &Defaults) -> ReloadOutcome {
        let _ = defaults;
        todo!()
    }
}
