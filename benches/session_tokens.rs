//! What signed session ids (`--session-key-file`) cost on the request path, without I/O.
//!
//! Run: `cargo bench --bench session_tokens` (add `-- --quick` for a short pass).
//!
//! - `lookup`: a request of a session this node holds (`Sessions::get` among 1,000 sessions)
//!   against one whose signed id this node has never seen and resumes: verify the token
//!   (HMAC-SHA256 with a two-key ring, tenant, expiry, the ended-id record), read the
//!   caller's capabilities and insert the session. The difference is what a resume adds to a
//!   request on a node that already runs the tenant's child (target: under 50 µs).
//! - `issue`: the session id `initialize` mints, node-local random (256 bits, hex) against a
//!   signed token; set against the whole `initialize` exchange (a child round trip) by the
//!   load bench, this is what signing adds.

#![allow(
    clippy::unwrap_used,
    reason = "benchmark set-up on fixed inputs: a panic is a broken benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mcpmux::mcp::caps::ClientCaps;
use mcpmux::mcp::session::{Sessions, new_session_id};
use mcpmux::token::keys::Key;
use mcpmux::token::{Keyring, SessionTokens};

const KEY_NEW: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const KEY_OLD: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0af9e8d7c6b5a4938271605f4e3d2c1b0a";
/// The `initialize` params the Python SDK sends (sampling, elicitation, roots declared).
const PARAMS: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}},"clientInfo":{"name":"mcp","version":"2.3.0"}}"#;
/// Sessions a tenant holds while being measured.
const HELD: usize = 1_000;

fn tokens() -> SessionTokens {
    let keys = vec![Key::parse(KEY_NEW).unwrap(), Key::parse(KEY_OLD).unwrap()];
    SessionTokens::with_ring(
        Keyring::from_keys(keys).unwrap(),
        Duration::from_secs(86_400),
    )
}

/// A tenant's sessions with `HELD` signed sessions in it; returns one of their ids.
fn held_sessions(tokens: &SessionTokens) -> (Arc<Sessions>, Arc<str>) {
    let sessions = Arc::new(Sessions::default());
    let mut last = Arc::from("");
    for _ in 0..HELD {
        let (id, mark) = tokens.issue("acme", "2025-11-25", PARAMS).unwrap();
        let in_use = sessions
            .insert(id.clone(), "2025-11-25".into(), ClientCaps::default())
            .unwrap();
        in_use.session().mark_signed(|| mark);
        last = id;
    }
    (sessions, last)
}

/// Ends a resumed session when dropped (criterion drops outputs outside the timing).
struct Resumed(Arc<Sessions>, Arc<str>);

impl Drop for Resumed {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

fn lookup(c: &mut Criterion) {
    let tokens = tokens();
    let (sessions, known) = held_sessions(&tokens);
    let mut group = c.benchmark_group("lookup");
    group.bench_function("known", |b| {
        b.iter(|| black_box(sessions.get(black_box(&known)).unwrap()));
    });
    // Each resumed session ends, and the record of ended ids holds at most 100,000: past
    // that it refuses every token expiring no later than the ones it let go. Tokens that all
    // expire in the same second would then be refused, so each expires a second later.
    let lifetime = std::cell::Cell::new(86_400);
    group.bench_function("unknown_resumed", |b| {
        b.iter_batched(
            // A fresh token each time, signed with the ring's second (old) key, the slower
            // case: both keys are tried.
            || {
                lifetime.set(lifetime.get() + 1);
                let old = SessionTokens::with_ring(
                    Keyring::from_keys(vec![Key::parse(KEY_OLD).unwrap()]).unwrap(),
                    Duration::from_secs(lifetime.get()),
                );
                old.issue("acme", "2025-11-25", PARAMS).unwrap().0
            },
            |id| {
                let claims = tokens.resumable(&id, "acme").unwrap();
                let caps = claims.caps();
                let in_use = sessions
                    .insert(id.clone(), claims.version.clone(), caps)
                    .unwrap();
                in_use.session().mark_signed(|| tokens.mark(&claims));
                // Dropped after timing: the map stays at HELD sessions.
                Resumed(sessions.clone(), id)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn issue(c: &mut Criterion) {
    let tokens = tokens();
    let mut group = c.benchmark_group("issue");
    group.bench_function("random_id", |b| {
        b.iter(|| black_box(new_session_id().unwrap()))
    });
    group.bench_function("signed_id", |b| {
        b.iter(|| {
            black_box(
                tokens
                    .issue("acme", "2025-11-25", black_box(PARAMS))
                    .unwrap(),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, lookup, issue);
criterion_main!(benches);
