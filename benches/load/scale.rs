//! Scale runs on a clients directory of 1,000 tenants: memory with 100 live children,
//! idle sessions and idle GET streams, reload latency, and cold start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpmux::clients::{Defaults, Registry};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::{Conn, Endpoint};
use crate::mcp::{self, Session};
use crate::procs::{self, Daemon};
use crate::stats::{Spread, median_of};

/// Tenants in the scale directory.
pub const TENANTS: usize = 1000;
/// Tenants with a live child in the memory run.
pub const LIVE: usize = 100;

/// The client id of tenant `i`.
pub fn tenant(i: usize) -> String {
    format!("t{i:04}")
}

const FILE: &str = r#"{"command":"mcp-echo"}"#;

/// Writes `n` client files running `mcp-echo` (found beside the mcpmux binary).
pub fn write_clients(dir: &Path, n: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for i in 0..n {
        let path = dir.join(format!("{}.json", tenant(i)));
        std::fs::write(&path, FILE).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Replaces a client file the way editors and config tools do: write aside, rename over.
fn replace_file(dir: &Path, id: &str, body: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A file for `id` that now demands a bearer token: requests without one get 401.
fn with_token() -> String {
    // sha256("bench") — any value works, no request presents the token.
    r#"{"command":"mcp-echo","token_sha256":"1b32c28cb38c05480eccc1bd60ff97029b57a05c96718b96dad7e9d84894f549"}"#
        .to_string()
}

/// Memory figures of one scale run.
#[derive(Debug, Default)]
pub struct Memory {
    pub idle_kb: u64,
    pub live_kb: u64,
    pub children: usize,
    pub sessions: usize,
    pub per_session_kb: f64,
    pub streams: usize,
    pub per_stream_kb: f64,
    pub after_streams_closed_kb: u64,
    pub reopened_kb: u64,
    pub after_second_close_kb: u64,
}

impl Memory {
    pub fn json(&self) -> Value {
        json!({
            "rss_kb_1000_tenants_no_children": self.idle_kb,
            "rss_kb_1000_tenants_100_children": self.live_kb,
            "live_children": self.children,
            "idle_sessions": self.sessions,
            "kb_per_idle_session": crate::stats::round3(self.per_session_kb),
            "idle_get_streams": self.streams,
            "kb_per_idle_get_stream": crate::stats::round3(self.per_stream_kb),
            "rss_kb_after_streams_closed": self.after_streams_closed_kb,
            "rss_kb_streams_reopened": self.reopened_kb,
            "rss_kb_after_second_close": self.after_second_close_kb,
        })
    }
}

/// RSS once it stops moving (allocations settle after a burst), at most `limit`.
pub async fn settled_rss(pid: i32, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = procs::rss_kb(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = procs::rss_kb(pid);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// 1,000 tenants configured; 100 live children; then `sessions` idle sessions and as
/// many idle GET streams on them.
pub async fn memory(dir: &Path, sessions: usize, streams: usize) -> Result<Memory, String> {
    let daemon = Daemon::start(dir, &[])?;
    let res = memory_on(&daemon, sessions, streams).await;
    if res.is_err() {
        eprintln!("mcpmux log tail:\n{}", daemon.proc.tail());
    }
    daemon.stop();
    res
}

async fn memory_on(daemon: &Daemon, sessions: usize, streams: usize) -> Result<Memory, String> {
    let pid = daemon.pid();
    let ep = Endpoint::parse(&daemon.url)?;
    let mut m = Memory {
        idle_kb: settled_rss(pid, Duration::from_secs(3)).await,
        ..Memory::default()
    };

    // 100 tenants get a child: a session and one call each.
    let gate = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..LIVE {
        let (ep, gate) = (ep.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let mut s = mcp::open(&ep, Some(&tenant(i)), 1).await?;
            s.call(2).await?;
            s.conn.close();
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("task: {e}"))??;
    }
    m.children = procs::descendants(pid).len();
    m.live_kb = settled_rss(pid, Duration::from_secs(5)).await;
    eprintln!(
        "  1,000 tenants: RSS {} KiB idle, {} KiB with {} live children",
        m.idle_kb, m.live_kb, m.children
    );

    // Idle sessions, spread over the live tenants, opened over a few connections.
    let before = settled_rss(pid, Duration::from_secs(3)).await;
    let headers = open_sessions(&ep, sessions).await?;
    m.sessions = headers.len();
    let after = settled_rss(pid, Duration::from_secs(5)).await;
    m.per_session_kb = after.saturating_sub(before) as f64 / m.sessions.max(1) as f64;
    eprintln!(
        "  {} idle sessions: RSS {before} -> {after} KiB, {:.2} KiB each",
        m.sessions, m.per_session_kb
    );

    // Idle GET streams, one connection each, on those sessions; opened, closed, and opened
    // and closed once more: a second round that does not grow RSS shows that what stays
    // after closing is the allocator keeping freed memory, not a leak.
    let streams = streams.min(headers.len());
    let before = settled_rss(pid, Duration::from_secs(3)).await;
    for cycle in 0..2 {
        let stop = CancellationToken::new();
        let holders = open_streams(&ep, &headers[..streams], &stop).await?;
        let open = settled_rss(pid, Duration::from_secs(5)).await;
        stop.cancel();
        for h in holders {
            let _ = h.await;
        }
        let closed = settled_rss(pid, Duration::from_secs(5)).await;
        if cycle == 0 {
            m.streams = streams;
            m.per_stream_kb = open.saturating_sub(before) as f64 / streams.max(1) as f64;
            m.after_streams_closed_kb = closed;
        } else {
            m.reopened_kb = open;
            m.after_second_close_kb = closed;
        }
        eprintln!(
            "  {streams} idle GET streams (round {}): RSS {before} -> {open} KiB, {:.2} KiB each; {closed} KiB after closing them",
            cycle + 1,
            open.saturating_sub(before) as f64 / streams.max(1) as f64,
        );
    }
    Ok(m)
}

/// Opens `sessions` idle sessions spread over the [`LIVE`] tenants, over a few
/// connections; returns the header block of each.
pub async fn open_sessions(ep: &Endpoint, sessions: usize) -> Result<Vec<Vec<u8>>, String> {
    let conns = 8;
    let per_conn = sessions.div_ceil(conns);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let ep = ep.clone();
        let range = (c * per_conn)..((c + 1) * per_conn).min(sessions);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(&ep);
            let mut out = Vec::with_capacity(range.len());
            for k in range {
                let hs = mcp::handshake(&mut conn, Some(&tenant(k % LIVE)), k as u64).await?;
                out.push(hs.headers);
            }
            Ok::<_, String>(out)
        }));
    }
    let mut headers = Vec::with_capacity(sessions);
    for t in tasks {
        headers.extend(t.await.map_err(|e| format!("task: {e}"))??);
    }
    Ok(headers)
}

/// Opens one GET stream per header block, each on its own connection, and keeps reading
/// them until `stop`.
async fn open_streams(
    ep: &Endpoint,
    headers: &[Vec<u8>],
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<u64>>, String> {
    let gate = Arc::new(Semaphore::new(128));
    let mut opening = Vec::new();
    for h in headers {
        let (ep, gate, stop, h) = (ep.clone(), gate.clone(), stop.clone(), h.clone());
        opening.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut conn = Conn::new(&ep);
            let status = conn.open_stream(&h).await?;
            drop(permit);
            if status != 200 {
                return Err(format!("GET stream: HTTP {status}"));
            }
            Ok(tokio::spawn(conn.hold(stop)))
        }));
    }
    let mut holders = Vec::with_capacity(headers.len());
    let mut failed = Vec::new();
    for o in opening {
        match o.await.map_err(|e| format!("task: {e}"))? {
            Ok(h) => holders.push(h),
            Err(e) => failed.push(e),
        }
    }
    if let Some(e) = failed.first() {
        stop.cancel();
        return Err(format!(
            "{} of {} GET streams failed; first: {e}",
            failed.len(),
            headers.len()
        ));
    }
    Ok(holders)
}

/// Reload figures.
#[derive(Debug, Default)]
pub struct Reload {
    /// Write of one file to its effect on requests, debounce included (ms).
    pub one_file_ms: Vec<f64>,
    /// SIGHUP to effect: a full rescan of the directory (ms).
    pub sighup_ms: Vec<f64>,
    /// `Registry::reload` of the directory in-process, no change (ms).
    pub rescan_ms: Vec<f64>,
}

impl Reload {
    pub fn json(&self) -> Value {
        json!({
            "one_file_changed_to_applied_ms": Spread(self.one_file_ms.clone()).json(),
            "sighup_full_rescan_to_applied_ms": Spread(self.sighup_ms.clone()).json(),
            "in_process_full_rescan_ms": Spread(self.rescan_ms.clone()).json(),
        })
    }
}

/// Polls `tenant` until the probe answers `want`; returns when it did.
async fn until_status(conn: &mut Conn, tenant: &str, want: u16) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = Session::probe(conn, tenant).await?;
        if status == want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{tenant}: still HTTP {status} after 10 s, want {want}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reload latency: one changed file (watcher + debounce), and SIGHUP's full rescan.
pub async fn reload(dir: &Path, rounds: usize) -> Result<Reload, String> {
    let mut r = Reload::default();
    // In-process: what one full rescan of 1,000 files costs.
    let registry = Registry::new();
    let defaults = Defaults {
        clients_dir: dir.to_path_buf(),
        idle_ttl: Duration::from_secs(300),
    };
    let first = registry.reload(&defaults);
    if first.diff.added.len() != TENANTS {
        return Err(format!(
            "in-process rescan loaded {} tenants, want {TENANTS}",
            first.diff.added.len()
        ));
    }
    for _ in 0..(rounds * 4).max(10) {
        let t = Instant::now();
        let _ = registry.reload(&defaults);
        r.rescan_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // One changed file, default debounce (200 ms).
    let daemon = Daemon::start(dir, &[])?;
    let ep = Endpoint::parse(&daemon.url)?;
    let mut conn = Conn::new(&ep);
    tokio::time::sleep(Duration::from_secs(1)).await; // the watcher's first rescan
    let res = async {
        for k in 0..rounds {
            let id = tenant(500 + k);
            until_status(&mut conn, &id, 400).await?;
            let t = Instant::now();
            replace_file(dir, &id, &with_token())?;
            let seen = until_status(&mut conn, &id, 401).await?;
            r.one_file_ms
                .push(seen.duration_since(t).as_secs_f64() * 1e3);
            replace_file(dir, &id, FILE)?;
            until_status(&mut conn, &id, 400).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok::<_, String>(())
    }
    .await;
    daemon.stop();
    res?;

    // SIGHUP: the watcher's debounce is set far out, so only the signal rescans in time.
    let daemon = Daemon::start(dir, &["--reload-debounce-ms", "60000"])?;
    let ep = Endpoint::parse(&daemon.url)?;
    let mut conn = Conn::new(&ep);
    // The watcher rescans once as it starts, after the daemon reports its address.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = async {
        for k in 0..rounds {
            let id = tenant(600 + k);
            until_status(&mut conn, &id, 400).await?;
            replace_file(dir, &id, &with_token())?;
            // Let the watcher see the event and settle into its (long) debounce.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = Session::probe(&mut conn, &id).await?;
            if status != 400 {
                return Err(format!(
                    "HTTP {status} before SIGHUP: the change applied without it (debounce not in effect?)"
                ));
            }
            let t = Instant::now();
            daemon.proc.signal(Signal::SIGHUP);
            let seen = until_status(&mut conn, &id, 401).await?;
            r.sighup_ms.push(seen.duration_since(t).as_secs_f64() * 1e3);
            replace_file(dir, &id, FILE)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            daemon.proc.signal(Signal::SIGHUP);
            until_status(&mut conn, &id, 400).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    daemon.stop();
    res?;
    eprintln!(
        "  reload: one file {} ms (debounce 200 ms included); SIGHUP full rescan {} ms; in-process rescan {} ms",
        Spread(r.one_file_ms.clone()).show(1),
        Spread(r.sighup_ms.clone()).show(1),
        Spread(r.rescan_ms.clone()).show(1)
    );
    Ok(r)
}

/// Cold-start figures (ms), one pair per iteration.
#[derive(Debug, Default)]
pub struct Cold {
    pub direct_ms: Vec<f64>,
    pub mcpmux_ms: Vec<f64>,
}

impl Cold {
    pub fn overhead_ms(&self) -> Vec<f64> {
        self.mcpmux_ms
            .iter()
            .zip(&self.direct_ms)
            .map(|(m, d)| m - d)
            .collect()
    }

    pub fn json(&self) -> Value {
        json!({
            "direct_spawn_to_initialized_ms": self.direct_ms.iter().map(|v| crate::stats::round3(*v)).collect::<Vec<_>>(),
            "mcpmux_first_initialize_ms": self.mcpmux_ms.iter().map(|v| crate::stats::round3(*v)).collect::<Vec<_>>(),
            "overhead_ms": Spread(self.overhead_ms()).json(),
        })
    }
}

/// The first request of a tenant (its `initialize`, which starts the child) against the
/// child's own spawn-plus-initialize, alternating so drift hits both alike.
pub async fn cold(dir: &Path, iterations: usize) -> Result<Cold, String> {
    let daemon = Daemon::start(dir, &[])?;
    let ep = Endpoint::parse(&daemon.url)?;
    let mut conn = Conn::new(&ep);
    let mut c = Cold::default();
    let res = async {
        Session::probe(&mut conn, &tenant(0)).await?; // connection open and warm
        for i in 0..iterations {
            let direct = direct_cold().await?;
            let hs = mcp::handshake(&mut conn, Some(&tenant(TENANTS - 1 - i)), 1).await?;
            c.direct_ms.push(direct.as_secs_f64() * 1e3);
            c.mcpmux_ms.push(hs.init.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, String>(())
    }
    .await;
    daemon.stop();
    res?;
    eprintln!(
        "  cold start: direct {:.2} ms, through mcpmux {:.2} ms, overhead {} ms (median [min–max])",
        median_of(&c.direct_ms),
        median_of(&c.mcpmux_ms),
        Spread(c.overhead_ms()).show_signed(2)
    );
    Ok(c)
}

/// One direct cold start of the backend, timed by a fresh helper process.
async fn direct_cold() -> Result<Duration, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let out = tokio::process::Command::new(exe)
        .arg(crate::floor::COLD_FLAG)
        .output()
        .await
        .map_err(|e| format!("cold floor helper: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms: f64 = text.trim().parse().map_err(|_| {
        format!(
            "cold floor helper said {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(Duration::from_secs_f64(ms / 1e3))
}

/// A fresh scale directory under `base`.
pub fn scale_dir(base: &Path) -> Result<PathBuf, String> {
    let dir = base.join("clients-1000");
    let _ = std::fs::remove_dir_all(&dir);
    write_clients(&dir, TENANTS)?;
    Ok(dir)
}
