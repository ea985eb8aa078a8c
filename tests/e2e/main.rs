//! End-to-end tests: the real `mcpmux` binary, real child processes, real MCP callers.
//!
//! One integration crate (ripgrep `tests/tests.rs`), so everything links once; each file below
//! is one area of behaviour, and `util` is the shared harness. Tests run in parallel: each gets
//! its own clients directory and ephemeral ports.
#![allow(
    clippy::unwrap_used,
    reason = "tests may unwrap: a panic is how a test reports failure"
)]

mod util;

mod admin;
mod edge;
mod fidelity;
mod h2_resets;
mod http_errors;
mod interop;
mod lifecycle;
mod limits;
mod listen;
mod manual;
mod modern_musts;
mod monitoring;
mod mux;
mod ops;
mod origin;
mod reload;
mod request_logs;
mod rounds;
mod sandbox;
mod scaleout;
mod session_caps;
mod session_era;
mod signed_sessions;
mod smoke;
mod sse_after;
mod stateless;
mod streams;
mod systemd;
mod tenant;
