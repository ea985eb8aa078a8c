//! `mcpmux check [DIR]`: validate a clients directory the way the daemon would load it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::clients::{Defaults, load_dir};

/// Prints every bad file as `<path>: <reason>`; exits 1 if there is any.
pub fn run(dir: &Path) -> ExitCode {
    let clients_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let defaults = Defaults {
        clients_dir,
        idle_ttl: Duration::from_secs(300),
    };
    let (specs, errors) = load_dir(dir, &defaults);
    for error in &errors {
        eprintln!("mcpmux: {error}");
    }
    let mut ids: Vec<_> = specs.keys().map(|id| id.as_str().to_string()).collect();
    ids.sort();
    println!("{} client(s) valid: {}", ids.len(), ids.join(", "));
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("{} file(s) with errors", errors.len());
        ExitCode::FAILURE
    }
}
