//! mcpmux: many tenants' stdio MCP servers behind one Streamable HTTP endpoint.
//!
//! # Layout
//! - [`cli`], [`settings`]: flags and their validated form.
//! - [`clients`]: client files, the registry of tenants, live reload.
//! - [`child`]: supervised stdio processes (spawn, framing, stderr, stop sequence).
//! - [`mcp`]: envelopes, sessions and the relay that multiplexes sessions onto a child.
//! - [`pool`]: one child per tenant: single-flight start, backoff, reaping.
//! - [`http`]: the `/mcp` endpoint.
//! - [`token`]: signed session ids any node can resume (`--session-key-file`).
//! - [`admin`], [`metrics`], [`systemd`]: operations.
//! - [`daemon`], [`check`]: the two commands; [`manual`]: the man page and completions.

pub mod admin;
pub mod check;
pub mod child;
pub mod cli;
pub mod clients;
pub mod daemon;
pub mod http;
pub mod logging;
pub mod manual;
pub mod mcp;
pub mod metrics;
pub mod pool;
pub mod settings;
pub mod shutdown;
pub mod sync;
pub mod systemd;
pub mod token;
