//! N concurrent MCP sessions doing `tools/call` against a Streamable HTTP endpoint.

use std::time::{Duration, Instant};

use crate::http::Endpoint;
use crate::mcp::{self, Session};
use crate::procs;
use crate::stats::{Latency, Run};

/// One load run's parameters.
#[derive(Debug, Clone)]
pub struct Spec {
    pub ep: Endpoint,
    /// `X-Client-ID`, for mcpmux.
    pub tenant: Option<String>,
    /// Workers, each with its own session and connection.
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The gateway's pid, for its CPU time (and its children's).
    pub gateway: Option<i32>,
    /// Sample the gateway's RSS at this interval (soak runs).
    pub rss_every: Option<Duration>,
}

/// What a run saw besides the figures.
#[derive(Debug, Default)]
pub struct Extra {
    /// Time to open all sessions.
    pub setup: Duration,
    /// (seconds since measuring began, gateway RSS KiB).
    pub rss: Vec<(f64, u64)>,
    /// First few failures.
    pub failures: Vec<String>,
}

struct WorkerOut {
    lat: Vec<Duration>,
    errors: u64,
    failures: Vec<String>,
    last_done: Option<Instant>,
}

/// Opens the sessions, runs the workers, and closes the sessions again.
pub async fn run(spec: &Spec) -> Result<(Run, Extra), String> {
    let t_setup = Instant::now();
    let mut opening = Vec::new();
    for i in 0..spec.concurrency {
        let (ep, tenant) = (spec.ep.clone(), spec.tenant.clone());
        opening.push(tokio::spawn(async move {
            mcp::open(&ep, tenant.as_deref(), i as u64 + 1).await
        }));
    }
    let mut sessions = Vec::new();
    for o in opening {
        sessions.push(o.await.map_err(|e| format!("session task: {e}"))??);
    }
    let setup = t_setup.elapsed();

    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut workers = Vec::new();
    for (w, session) in sessions.into_iter().enumerate() {
        workers.push(tokio::spawn(worker(session, w as u64, measure_from, end)));
    }
    let sampler = spec.gateway.map(|pid| {
        let every = spec.rss_every;
        tokio::spawn(sample(pid, measure_from, end, every))
    });

    let mut lat = Vec::new();
    let mut errors = 0;
    let mut failures = Vec::new();
    let mut last_done = measure_from;
    let mut sessions = Vec::new();
    for w in workers {
        let (out, session) = w.await.map_err(|e| format!("worker task: {e}"))?;
        lat.extend(out.lat);
        errors += out.errors;
        failures.extend(out.failures);
        if let Some(d) = out.last_done {
            last_done = last_done.max(d);
        }
        sessions.push(session);
    }
    let (cpu, rss) = match sampler {
        Some(s) => s.await.map_err(|e| format!("sampler: {e}"))?,
        None => (None, Vec::new()),
    };
    for mut s in sessions {
        s.delete().await;
    }
    failures.truncate(3);
    let n = lat.len();
    let wall = last_done
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let per_call = |s: f64| (n > 0).then(|| s * 1e6 / n as f64);
    let run = Run {
        rps: n as f64 / wall,
        lat: Latency::of(lat),
        errors,
        gateway_cpu_us: cpu.and_then(|(g, _, _)| per_call(g)),
        backend_cpu_us: cpu.and_then(|(_, c, _)| per_call(c)),
        driver_cpu_us: cpu.and_then(|(_, _, d)| per_call(d)),
    };
    Ok((
        run,
        Extra {
            setup,
            rss,
            failures,
        },
    ))
}

async fn worker(
    mut session: Session,
    w: u64,
    measure_from: Instant,
    end: Instant,
) -> (WorkerOut, Session) {
    let mut out = WorkerOut {
        lat: Vec::with_capacity(100_000),
        errors: 0,
        failures: Vec::new(),
        last_done: None,
    };
    let mut id = (w + 1) * 1_000_000_000;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        id += 1;
        let res = session.call(id).await;
        if t < measure_from {
            continue;
        }
        out.last_done = Some(Instant::now());
        match res {
            Ok(took) => out.lat.push(took),
            Err(e) => {
                out.errors += 1;
                if out.failures.len() < 3 {
                    out.failures.push(e);
                }
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (out, session)
}

/// CPU seconds of the gateway and of its descendants over the measured window, and RSS
/// samples when asked for.
async fn sample(
    pid: i32,
    measure_from: Instant,
    end: Instant,
    every: Option<Duration>,
) -> (Option<(f64, f64, f64)>, Vec<(f64, u64)>) {
    tokio::time::sleep_until(measure_from.into()).await;
    let me = std::process::id() as i32;
    let (g0, c0, d0) = (
        procs::cpu_s(pid),
        procs::descendants_cpu_s(pid),
        procs::cpu_s(me),
    );
    let mut rss = Vec::new();
    if let Some(every) = every {
        let mut next = measure_from;
        while next <= end {
            tokio::time::sleep_until(next.into()).await;
            rss.push((
                next.duration_since(measure_from).as_secs_f64(),
                procs::rss_kb(pid),
            ));
            next += every;
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let (g1, c1, d1) = (
        procs::cpu_s(pid),
        procs::descendants_cpu_s(pid),
        procs::cpu_s(me),
    );
    (Some((g1 - g0, c1 - c0, d1 - d0)), rss)
}

/// Runs `spec` and prints one line for it.
pub async fn run_and_print(label: &str, spec: &Spec) -> Result<(Run, Extra), String> {
    let (run, extra) = run(spec).await?;
    eprintln!(
        "  {label:<34} c={:<3} {}  (setup {:.0} ms)",
        spec.concurrency,
        run.human(),
        extra.setup.as_secs_f64() * 1e3
    );
    for f in &extra.failures {
        eprintln!("    failure: {f}");
    }
    Ok((run, extra))
}
