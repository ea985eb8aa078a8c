//! Micro-benchmarks of the per-request hot path: what mcpmux does to every message on
//! its way between the HTTP caller and the child, without I/O.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a short pass). The end-to-end
//! figures (latency, throughput, memory, scale) come from `cargo bench --bench load`.
//!
//! Each group mirrors one step of the relay:
//! - `request`: a caller's `tools/call` is parsed and its id replaced by the child's id
//!   (`Relay::call`), small and with a 64 KiB argument;
//! - `response`: the child's answer is parsed and the caller's id spliced back
//!   (`Relay::on_response`), small, with a 64 KiB text result and with a 64 KiB
//!   `tools/list` result (hundreds of nested objects);
//! - in both, `parse_no_limit` is the envelope parser without the depth limit
//!   (`parse_any_depth`), the code before the limit: `parse` against it is the limit's cost,
//!   and `depth_check` is that cost alone (`exceeds_depth`, what `parse` adds);
//! - `progress`: a request carrying `_meta.progressToken` gets id and token rewritten, and a
//!   `notifications/progress` from the child gets the caller's token back;
//! - `tenant`: the `X-Client-ID` header rules and the bearer-token check;
//! - `registry`: the tenant lookup every request makes, among 1,000 tenants;
//! - `metrics`: the two series every answered request updates, through the cached handles
//!   of `metrics::request` and, as the baseline, looked up in the recorder each time.

#![allow(
    clippy::unwrap_used,
    reason = "benchmark set-up on fixed inputs: a panic is a broken benchmark"
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mcpmux::clients::{ClientId, ClientSpec, Limits, Registry, TokenHash};
use mcpmux::http::tenant;
use mcpmux::mcp::envelope::{
    Kind, MAX_DEPTH, exceeds_depth, notified_progress_token, parse, parse_any_depth,
    progress_token, span_of, splice,
};
use sha2::{Digest, Sha256};

/// The size of the large payloads: a 64 KiB tool result or argument.
const LARGE: usize = 64 * 1024;

fn small_call() -> Vec<u8> {
    br#"{"jsonrpc":"2.0","id":1000017,"method":"tools/call","params":{"name":"echo","arguments":{"message":"m<1000017>"}}}"#.to_vec()
}

/// A caller request with a `LARGE`-byte string argument (escapes included, as real text has).
fn large_call() -> Vec<u8> {
    let text = filler(LARGE);
    format!(
        r#"{{"jsonrpc":"2.0","id":"req-7","method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{text}"}}}}}}"#
    )
    .into_bytes()
}

fn small_result() -> Vec<u8> {
    br#"{"jsonrpc":"2.0","id":4711,"result":{"content":[{"type":"text","text":"m<1000017>"}],"isError":false}}"#.to_vec()
}

/// A child response whose text content is `LARGE` bytes.
fn large_result() -> Vec<u8> {
    let text = filler(LARGE);
    format!(
        r#"{{"jsonrpc":"2.0","id":4711,"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}}}"#
    )
    .into_bytes()
}

/// A child's `tools/list` result of about `LARGE` bytes: many tools, each with a nested
/// input schema, so the message holds far more brackets than the depth limit.
fn large_tools_list() -> Vec<u8> {
    let mut tools = Vec::new();
    let mut len = 0;
    for i in 0.. {
        let tool = format!(
            r#"{{"name":"tool{i}","description":"Looks up \"{i}\" [records] {{fast}}.","inputSchema":{{"type":"object","properties":{{"query":{{"type":"string","description":"what to find"}},"limit":{{"type":"integer","minimum":1}},"tags":{{"type":"array","items":{{"type":"string"}}}}}},"required":["query"]}}}}"#
        );
        len += tool.len() + 1;
        tools.push(tool);
        if len >= LARGE {
            break;
        }
    }
    format!(
        r#"{{"jsonrpc":"2.0","id":4711,"result":{{"tools":[{}]}}}}"#,
        tools.join(",")
    )
    .into_bytes()
}

/// JSON string content of `len` bytes: prose with an escaped quote and newline every line.
fn filler(len: usize) -> String {
    let line = r#"The quick brown fox \"jumps\" over the lazy dog 0123456789.\n"#;
    line.repeat(len / line.len() + 1)[..len]
        .trim_end_matches('\\')
        .to_string()
}

/// What `Relay::call` does to a caller's request: envelope, child id, progress token.
fn rewrite_request(message: &[u8], child_id: u64) -> Vec<u8> {
    let env = parse(message).unwrap();
    debug_assert_eq!(env.kind, Kind::Request);
    let child_id_text = child_id.to_string();
    let mut edits = Vec::with_capacity(2);
    if let Some(span) = env.id.and_then(|id| span_of(message, id.get())) {
        edits.push((span, child_id_text.as_bytes()));
    }
    if let Some(span) = progress_token(env.params).and_then(|t| span_of(message, t.get())) {
        edits.push((span, child_id_text.as_bytes()));
    }
    splice(message, &mut edits)
}

/// What `Relay::on_response` does to a child's answer: envelope, id lookup, caller id back.
fn rewrite_response(line: &[u8], orig_id: &[u8]) -> Vec<u8> {
    let env = parse(line).unwrap();
    let id = env.id.unwrap();
    let child_id: u64 = id.get().parse().unwrap();
    black_box(child_id);
    let span = span_of(line, id.get()).unwrap();
    splice(line, &mut [(span, orig_id)])
}

/// What `Relay::on_progress` does to a child's progress notification.
fn rewrite_progress(line: &[u8], orig_token: &[u8]) -> Vec<u8> {
    let env = parse(line).unwrap();
    let token = notified_progress_token(env.params).unwrap();
    let n: u64 = token.get().parse().unwrap();
    black_box(n);
    let span = span_of(line, token.get()).unwrap();
    splice(line, &mut [(span, orig_token)])
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    for (name, message) in [("small", small_call()), ("64KiB", large_call())] {
        group.throughput(Throughput::Bytes(message.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", name), &message, |b, m| {
            b.iter(|| parse(black_box(m)).unwrap().kind);
        });
        group.bench_with_input(
            BenchmarkId::new("parse_no_limit", name),
            &message,
            |b, m| {
                b.iter(|| parse_any_depth(black_box(m)).unwrap().kind);
            },
        );
        group.bench_with_input(BenchmarkId::new("depth_check", name), &message, |b, m| {
            b.iter(|| exceeds_depth(black_box(m), MAX_DEPTH));
        });
        group.bench_with_input(BenchmarkId::new("parse+rewrite", name), &message, |b, m| {
            b.iter(|| rewrite_request(black_box(m), 1_000_017));
        });
    }
    group.finish();
}

fn response(c: &mut Criterion) {
    let mut group = c.benchmark_group("response");
    for (name, line) in [
        ("small", small_result()),
        ("64KiB", large_result()),
        ("64KiB_tools_list", large_tools_list()),
    ] {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", name), &line, |b, l| {
            b.iter(|| parse(black_box(l)).unwrap().kind);
        });
        group.bench_with_input(BenchmarkId::new("parse_no_limit", name), &line, |b, l| {
            b.iter(|| parse_any_depth(black_box(l)).unwrap().kind);
        });
        group.bench_with_input(BenchmarkId::new("depth_check", name), &line, |b, l| {
            b.iter(|| exceeds_depth(black_box(l), MAX_DEPTH));
        });
        group.bench_with_input(BenchmarkId::new("parse+rewrite", name), &line, |b, l| {
            b.iter(|| rewrite_response(black_box(l), br#""req-7""#));
        });
    }
    group.finish();
}

fn progress(c: &mut Criterion) {
    let mut group = c.benchmark_group("progress");
    let call = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"slow","arguments":{"ms":100},"_meta":{"progressToken":"caller-token-3"}}}"#.to_vec();
    group.bench_function("request_id_and_token", |b| {
        b.iter(|| rewrite_request(black_box(&call), 1_000_017));
    });
    let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1000017,"progress":3,"total":5}}"#.to_vec();
    group.bench_function("notification_token", |b| {
        b.iter(|| rewrite_progress(black_box(&note), br#""caller-token-3""#));
    });
    group.finish();
}

fn tenant_headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("tenant");
    let mut headers = HeaderMap::new();
    // A realistic request: the client's usual headers around the tenant header.
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
        (
            "mcp-session-id",
            "3f0c6d1e8a5b4c2d9e7f00112233445566778899aabbccddeeff001122334455",
        ),
        ("x-client-id", "Tenant0042"),
        ("authorization", "Bearer s3cret-token-of-tenant-42"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    group.bench_function("client_id", |b| {
        b.iter(|| tenant::client_id(black_box(&headers)).unwrap());
    });
    let digest: [u8; 32] = Sha256::digest(b"s3cret-token-of-tenant-42").into();
    let mut spec = spec_for(42);
    spec.token_sha256 = Some(TokenHash(digest));
    group.bench_function("authorize_bearer", |b| {
        b.iter(|| tenant::authorize(black_box(&headers), &spec, false).unwrap());
    });
    let open = spec_for(42);
    group.bench_function("authorize_open", |b| {
        b.iter(|| tenant::authorize(black_box(&headers), &open, true).unwrap());
    });
    group.finish();
}

fn spec_for(i: usize) -> ClientSpec {
    let id = ClientId::parse(&format!("tenant{i:04}")).unwrap();
    let mut content_hash = [0u8; 32];
    content_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
    ClientSpec {
        path: PathBuf::from(format!("/etc/mcpmux/clients/{id}.json")),
        id,
        command: "mcp-echo".into(),
        args: vec![],
        env: Default::default(),
        cwd: None,
        idle_ttl: Duration::from_secs(300),
        token_sha256: None,
        limits: Limits::default(),
        sandbox: Default::default(),
        content_hash,
    }
}

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    let registry = Registry::with_specs((0..1000).map(spec_for));
    let hit = ClientId::parse("tenant0042").unwrap();
    let miss = ClientId::parse("nosuchtenant").unwrap();
    group.bench_function("get_hit_of_1000", |b| {
        b.iter(|| registry.get(black_box(&hit)).unwrap());
    });
    group.bench_function("get_miss_of_1000", |b| {
        b.iter(|| registry.get(black_box(&miss)).is_none());
    });
    group.bench_function("header_to_spec", |b| {
        let mut headers = HeaderMap::new();
        headers.insert("x-client-id", HeaderValue::from_static("Tenant0042"));
        b.iter(|| {
            let id = tenant::client_id(black_box(&headers)).unwrap();
            registry.get(&id).unwrap()
        });
    });
    group.finish();
}

/// Sanity: the rewrites produce what the relay would send (checked once, not timed).
fn check_rewrites() {
    let out = rewrite_request(&small_call(), 5);
    assert!(out.starts_with(br#"{"jsonrpc":"2.0","id":5,"#));
    let out = rewrite_response(&large_result(), br#""req-7""#);
    assert!(out.starts_with(br#"{"jsonrpc":"2.0","id":"req-7","#));
    assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    let out = rewrite_request(&large_call(), 5);
    assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    let list = large_tools_list();
    assert!(serde_json::from_slice::<serde_json::Value>(&list).is_ok());
    let brackets = list.iter().filter(|&&b| b == b'{' || b == b'[').count();
    assert!(brackets > 10 * mcpmux::mcp::envelope::MAX_DEPTH);
}

/// What `metrics::request` did before it cached its handles: labels built and looked up
/// in the recorder on every call.
fn request_uncached(client_id: &str, method: &'static str, status: u16, took: Duration) {
    let labels = [
        ("client_id", client_id.to_string()),
        ("method", method.to_string()),
    ];
    metrics::histogram!("mcpmux_request_duration_seconds", &labels).record(took.as_secs_f64());
    let status = [
        ("client_id", client_id.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("mcpmux_requests_total", &status).increment(1);
}

fn metrics_request(c: &mut Criterion) {
    let handle = mcpmux::metrics::install().unwrap();
    // The recorder buffers every histogram sample until upkeep, as the daemon's 5 s task
    // does; without it millions of iterations would pile up in memory.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upkeep = {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                handle.run_upkeep();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut group = c.benchmark_group("metrics");
    let took = Duration::from_micros(150);
    group.bench_function("request_cached", |b| {
        b.iter(|| mcpmux::metrics::request(black_box("demo"), "tools/call", 200, took))
    });
    group.bench_function("request_uncached", |b| {
        b.iter(|| request_uncached(black_box("demo"), "tools/call", 200, took))
    });
    group.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    upkeep.join().unwrap();
    // Both must land in the same series (the recorder buffers samples until upkeep).
    handle.run_upkeep();
    let text = handle.render();
    assert!(
        text.contains(
            r#"mcpmux_requests_total{client_id="demo",method="tools/call",status="200"}"#
        )
    );
}

fn benches(c: &mut Criterion) {
    check_rewrites();
    request(c);
    response(c);
    progress(c);
    tenant_headers(c);
    registry(c);
    metrics_request(c);
}

criterion_group! {
    name = hot_path;
    // Short windows: the figures are stable to a few percent on a quiet machine, and a
    // full pass stays under a minute on two cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = benches
}
criterion_main!(hot_path);
