//! What the session caps (`--max-sessions-per-tenant`, `--max-sessions`) cost, without I/O.
//!
//! Run: `cargo bench --bench session_caps` (add `-- --quick` for a short pass).
//!
//! - `touch`: one request's use of a session (in use, then idle again as the most recently
//!   used), among 1,000 and among 100,000 idle sessions;
//! - `admit_at_cap`: `initialize` at a full cap of 1,000 and of 100,000 idle sessions, which
//!   ends the least recently used one and seats the new one.
//!
//! Both are O(log n): the 100,000 figures should stay within a small factor of the 1,000
//! ones (a scan per initialize would make them about 100 times slower).

#![allow(
    clippy::unwrap_used,
    reason = "benchmark set-up on fixed inputs: a panic is a broken benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mcpmux::mcp::admission::{Admission, Use};
use mcpmux::mcp::caps::ClientCaps;
use mcpmux::mcp::session::Sessions;

const SIZES: [usize; 2] = [1_000, 100_000];

/// A tenant at a full cap of `n` idle sessions, `s0` the least recently used.
fn full(n: usize) -> Arc<Sessions> {
    let sessions = Arc::new(Sessions::new("acme", Arc::new(Admission::new(n, n))));
    for i in 0..n {
        let id = format!("s{i}");
        drop(sessions.insert(id.into(), "2025-11-25".into(), ClientCaps::default()));
    }
    sessions
}

fn touch(c: &mut Criterion) {
    let mut group = c.benchmark_group("touch");
    for n in SIZES {
        let sessions = full(n);
        let session = sessions.get(&format!("s{}", n / 2)).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| drop(black_box(sessions.enter(&session, Use::Call))));
        });
    }
    group.finish();
}

fn admit_at_cap(c: &mut Criterion) {
    let mut group = c.benchmark_group("admit_at_cap");
    for n in SIZES {
        let sessions = full(n);
        let mut next = n;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                next += 1;
                let id: Arc<str> = format!("s{next}").into();
                let admitted = sessions.insert(id, "2025-11-25".into(), ClientCaps::default());
                drop(black_box(admitted.unwrap()));
            });
        });
        assert_eq!(sessions.len(), n, "each admission evicted one");
    }
    group.finish();
}

criterion_group!(benches, touch, admit_at_cap);
criterion_main!(benches);
