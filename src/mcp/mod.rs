//! MCP relaying, independent of HTTP: envelopes, sessions, the per-child relay.
//!
//! # Theory of operation
//! One child per tenant serves every session of that tenant. The child is initialized
//! once, by mcpmux, with the first session's `initialize` params; later sessions are
//! answered from the cached result, and a replacement child (after a reap, crash or
//! reload) gets the same handshake replayed, so sessions outlive children. Requests get
//! child-side ids (see [`relay`]), so equal ids from different sessions never collide.
//! Stateless-era (2026-07-28) callers are bridged onto the same child ([`stateless`]):
//! their requests are relayed without a session, and `server/discover` is answered
//! from the cached `initialize` result.

pub mod envelope;
pub mod relay;
pub mod reverse;
pub mod session;
pub mod stateless;
