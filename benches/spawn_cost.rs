//! What the sandbox adds to a child's cold start: spawn until the child's first stdout line,
//! with and without its Landlock domain (ruleset built in the daemon, applied between fork and
//! exec, capabilities dropped). Median of 15 runs each, the two interleaved so that load on
//! the shared machine hits both alike; the figure is the difference of the medians and their
//! ratio (README "Performance"). Run: `cargo bench --bench spawn_cost`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mcpmux::child::sandbox::{self, Mode, SandboxSettings};
use mcpmux::child::{self, ChildEvent, ChildSettings};
use mcpmux::clients::{ClientId, ClientSpec, Limits, SandboxSpec};

const RUNS: usize = 15;
/// Starts discarded before measuring (page cache, first ruleset).
const WARMUP: usize = 3;

fn spec(command: &str, args: &[&str]) -> ClientSpec {
    ClientSpec {
        id: ClientId::parse("bench").expect("a valid id"),
        path: PathBuf::from("/nonexistent/bench.json"),
        command: command.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Default::default(),
        cwd: None,
        idle_ttl: Duration::from_secs(300),
        token_sha256: None,
        limits: Limits::default(),
        sandbox: SandboxSpec::Default,
        content_hash: [0; 32],
    }
}

/// Spawn to first stdout line; the child is then stopped and reaped (not timed).
async fn cold_start(spec: &ClientSpec, settings: &ChildSettings) -> Duration {
    let started = Instant::now();
    let (handle, mut events) = child::spawn(spec, settings).expect("the child must start");
    match events.recv().await {
        Some(ChildEvent::Line(_)) => {}
        other => panic!("expected a first line, got {other:?}"),
    }
    let took = started.elapsed();
    handle.stop();
    handle.stopped().await;
    took
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let state = tempfile::tempdir().expect("a temp state root");
    let status = sandbox::probe();
    let settings = |mode| ChildSettings {
        max_line_bytes: 1 << 20,
        stop_grace: Duration::from_secs(1),
        state_dir: state.path().to_path_buf(),
        sandbox: SandboxSettings::decide(mode, status, &[state.path()], None)
            .expect("auto and off always decide"),
    };
    let (on, off) = (settings(Mode::Auto), settings(Mode::Off));
    assert!(
        on.sandbox.abi.is_some(),
        "this kernel has no Landlock: {status:?}"
    );
    let children = [
        ("sh -c 'echo ready'", spec("/bin/sh", &["-c", "echo ready"])),
        (
            "python3 -c 'print(1)'",
            spec("/usr/bin/python3", &["-c", "print(1)"]),
        ),
    ];
    println!("spawn_cost: cold start to first stdout line, median of {RUNS} (Landlock {status:?})");
    for (name, spec) in &children {
        let (mut sandboxed, mut plain) = (Vec::new(), Vec::new());
        runtime.block_on(async {
            for i in 0..WARMUP + RUNS {
                let a = cold_start(spec, &on).await;
                let b = cold_start(spec, &off).await;
                if i >= WARMUP {
                    sandboxed.push(a);
                    plain.push(b);
                }
            }
        });
        let (a, b) = (median(&mut sandboxed), median(&mut plain));
        let delta_ms = (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
        println!(
            "  {name:<24} sandboxed {:>7.3} ms  unsandboxed {:>7.3} ms  delta {delta_ms:+.3} ms  ratio {:.3}",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64(),
        );
    }
}
