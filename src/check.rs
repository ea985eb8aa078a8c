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

/// `mcpmux hash-token`: reads a token from stdin (one line; surrounding whitespace
/// ignored) and prints its SHA-256 in hex, the value for `token_sha256`.
pub fn hash_token() -> ExitCode {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut input = String::new();
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_string(&mut input) {
        eprintln!("mcpmux: cannot read the token from stdin: {e}");
        return ExitCode::from(64);
    }
    let token = input.trim();
    if token.is_empty() {
        eprintln!("mcpmux: no token on stdin; usage: echo -n \"$TOKEN\" | mcpmux hash-token");
        return ExitCode::from(64);
    }
    println!("{}", hex::encode(Sha256::digest(token.as_bytes())));
    ExitCode::SUCCESS
}
