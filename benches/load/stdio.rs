//! The floor: the same backend driven directly over its stdin/stdout, with no gateway.
//! Sequentially (one request at a time, the latency floor) and pipelined (a window of
//! requests in flight, the throughput floor), plus spawn-to-initialized (the cold-start
//! floor).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::mcp;
use crate::stats::{Latency, Run};

/// Longest wait for any one line from the backend.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A backend process on pipes.
pub struct Backend {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
}

impl Backend {
    /// Starts `command` (no arguments), stderr discarded.
    pub fn spawn(command: &str) -> Result<Self, String> {
        let mut child = Command::new(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {command}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map_or(0, |p| p as i32)
    }

    async fn send(&mut self, line: &[u8]) -> Result<(), String> {
        self.stdin
            .write_all(line)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads lines until the response to `id`.
    async fn response(&mut self, id: u64) -> Result<String, String> {
        let want = id.to_string();
        loop {
            let line = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
                .await
                .map_err(|_| "backend did not answer in 30 s".to_string())?
                .map_err(|e| format!("read: {e}"))?
                .ok_or("backend closed stdout")?;
            let Ok(msg) = serde_json::from_str::<IdOnly<'_>>(&line) else {
                continue;
            };
            if msg.method.is_none() && msg.id.map(RawValue::get) == Some(want.as_str()) {
                return Ok(line);
            }
        }
    }

    /// `initialize`, its response, then `notifications/initialized`.
    pub async fn handshake(&mut self) -> Result<(), String> {
        let mut line = mcp::initialize(0).into_bytes();
        line.push(b'\n');
        self.send(&line).await?;
        let reply = self.response(0).await?;
        mcp::check(reply.as_bytes(), 0, false)?;
        self.send(format!("{}\n", mcp::INITIALIZED).as_bytes())
            .await
    }

    /// Closes stdin and waits for the exit (killed after 5 s).
    pub async fn close(self) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Spawn to `initialize` answered, directly: the child's own start-up time.
pub async fn cold(command: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut b = Backend::spawn(command)?;
    b.handshake().await?;
    let took = t.elapsed();
    b.close().await;
    Ok(took)
}

/// One request at a time for `warmup + duration`; latency of the measured part.
pub async fn sequential(
    command: &str,
    warmup: Duration,
    duration: Duration,
) -> Result<Run, String> {
    let mut b = Backend::spawn(command)?;
    b.handshake().await?;
    let pid = b.pid();
    let me = std::process::id() as i32;
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut lat = Vec::with_capacity(200_000);
    let mut line = Vec::with_capacity(256);
    let mut id = 1_000_000u64;
    let mut cpu0 = None;
    let mut errors = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= measure_from && cpu0.is_none() {
            cpu0 = Some((crate::procs::cpu_s(pid), crate::procs::cpu_s(me)));
        }
        id += 1;
        mcp::echo_call(&mut line, id);
        line.push(b'\n');
        let t = Instant::now();
        b.send(&line).await?;
        let reply = b.response(id).await?;
        let took = t.elapsed();
        if mcp::check(reply.as_bytes(), id, true).is_err() {
            errors += 1;
        } else if t >= measure_from {
            lat.push(took);
        }
    }
    let wall = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let (c0, d0) = cpu0.unwrap_or((0.0, 0.0));
    let cpu = crate::procs::cpu_s(pid) - c0;
    let driver = crate::procs::cpu_s(me) - d0;
    b.close().await;
    let n = lat.len();
    Ok(Run {
        rps: n as f64 / wall.max(1e-9),
        lat: Latency::of(lat),
        errors,
        gateway_cpu_us: None,
        backend_cpu_us: (n > 0).then(|| cpu * 1e6 / n as f64),
        driver_cpu_us: (n > 0).then(|| driver * 1e6 / n as f64),
    })
}

/// Keeps `window` requests in flight for `warmup + duration`: the backend's throughput.
pub async fn pipelined(
    command: &str,
    window: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Run, String> {
    let mut b = Backend::spawn(command)?;
    b.handshake().await?;
    let pid = b.pid();
    let me = std::process::id() as i32;
    let Backend {
        child,
        mut stdin,
        mut lines,
    } = b;
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let sem = Arc::new(Semaphore::new(window));
    let writer = {
        let (sent, sem) = (sent.clone(), sem.clone());
        tokio::spawn(async move {
            let mut id = 1_000_000u64;
            let mut line = Vec::with_capacity(256);
            loop {
                let Ok(permit) = sem.acquire().await else {
                    break;
                };
                permit.forget();
                if Instant::now() >= end {
                    break;
                }
                id += 1;
                mcp::echo_call(&mut line, id);
                line.push(b'\n');
                if let Ok(mut s) = sent.lock() {
                    s.insert(id, Instant::now());
                }
                if stdin.write_all(&line).await.is_err() {
                    break;
                }
            }
            stdin // kept open until the replies are read
        })
    };
    let mut lat = Vec::with_capacity(500_000);
    let mut errors = 0u64;
    let mut cpu0 = None;
    let mut last_done = measure_from;
    let mut writer = writer;
    let mut stdin = None;
    loop {
        let outstanding = sent.lock().map(|s| s.len()).unwrap_or(0);
        if stdin.is_some() && outstanding == 0 {
            break;
        }
        let line = tokio::select! {
            w = &mut writer, if stdin.is_none() => {
                stdin = Some(w.map_err(|e| format!("writer: {e}"))?);
                continue;
            }
            line = tokio::time::timeout(LINE_TIMEOUT, lines.next_line()) => line,
        };
        let line = match line {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return Err("backend closed stdout".into()),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err("backend stopped answering".into()),
        };
        let Ok(msg) = serde_json::from_str::<IdOnly<'_>>(&line) else {
            continue;
        };
        let Some(id) = msg.id.and_then(|i| i.get().parse::<u64>().ok()) else {
            continue;
        };
        if msg.method.is_some() {
            continue;
        }
        let at = sent.lock().ok().and_then(|mut s| s.remove(&id));
        sem.add_permits(1);
        let Some(at) = at else { continue };
        let done = Instant::now();
        if at < measure_from {
            continue;
        }
        if cpu0.is_none() {
            cpu0 = Some((crate::procs::cpu_s(pid), crate::procs::cpu_s(me)));
        }
        if mcp::check(line.as_bytes(), id, true).is_err() {
            errors += 1;
            continue;
        }
        last_done = last_done.max(done);
        lat.push(done - at);
    }
    let (c0, d0) = cpu0.unwrap_or((0.0, 0.0));
    let cpu = crate::procs::cpu_s(pid) - c0;
    let driver = crate::procs::cpu_s(me) - d0;
    let stdin = stdin.ok_or("writer did not finish")?;
    Backend {
        child,
        stdin,
        lines,
    }
    .close()
    .await;
    let wall = last_done
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let n = lat.len();
    Ok(Run {
        rps: n as f64 / wall.max(1e-9),
        lat: Latency::of(lat),
        errors,
        gateway_cpu_us: None,
        backend_cpu_us: (n > 0).then(|| cpu * 1e6 / n as f64),
        driver_cpu_us: (n > 0).then(|| driver * 1e6 / n as f64),
    })
}
