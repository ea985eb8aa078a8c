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
//!
//! What the child sends on its own reaches the sessions concerned, each on exactly one of
//! its SSE streams ([`stream`]): progress and the child's requests on the reply stream of
//! the request they belong to, notifications on the GET stream, resource updates only to
//! subscribers and log messages by each session's own level ([`interest`], [`control`]).

pub mod admission;
pub mod batch;
pub mod call;
pub mod caps;
pub mod control;
pub mod depth;
pub mod envelope;
pub mod exit;
pub mod id_hash;
pub mod interest;
pub mod listen;
pub mod relay;
pub mod reverse;
pub mod rounds;
pub mod session;
mod slot;
pub mod stateless;
pub mod stream;
pub mod tasks;
pub mod version;
