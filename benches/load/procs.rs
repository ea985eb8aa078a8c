//! Processes under test: the mcpmux daemon and the peer gateways (started, found ready,
//! stopped with their whole process group), and what `/proc` says about them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The release binaries this bench was built with (`cargo bench` builds them).
pub const MCPMUX: &str = env!("CARGO_BIN_EXE_mcpmux");
pub const MCP_ECHO: &str = env!("CARGO_BIN_EXE_mcp-echo");

/// Lines of a process's stderr kept for failure reports.
const TAIL: usize = 40;

/// A process started by the bench, in its own process group, killed with it on drop.
pub struct Proc {
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `cmd` in a new process group; stderr (and stdout) lines go to a tail buffer
    /// and, when they match `ready`, through the returned channel.
    fn spawn(
        name: &str,
        mut cmd: Command,
        ready: Option<&'static str>,
    ) -> Result<(Self, mpsc::Receiver<String>), String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let outs: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().ok_or("no stdout")?),
            Box::new(child.stderr.take().ok_or("no stderr")?),
        ];
        for out in outs {
            let (tail, tx) = (tail.clone(), tx.clone());
            // Drained for the process's whole life: a full pipe would stall it.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if ready.is_some_and(|r| line.contains(r)) {
                        let _ = tx.send(line.clone());
                    }
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == TAIL {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        let proc = Self { child, tail };
        Ok((proc, rx))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The last lines it wrote, for error messages.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, a grace period, then SIGKILL for the whole group.
    pub fn stop(mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills what is left of the group.
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mcpmux daemon.
pub struct Daemon {
    pub proc: Proc,
    /// `http://ADDR/mcp`.
    pub url: String,
}

impl Daemon {
    /// Starts `mcpmux serve` on ephemeral ports over `clients`, with `extra` flags.
    /// `MCPMUX_BENCH_WRAP` (e.g. `valgrind --tool=massif`) runs the daemon under a tool;
    /// figures taken that way are for profiles, not for the table.
    pub fn start(clients: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::start_bin(Path::new(MCPMUX), clients, extra)
    }

    /// Like [`Daemon::start`], with another build of mcpmux (an A/B baseline).
    pub fn start_bin(bin: &Path, clients: &Path, extra: &[&str]) -> Result<Self, String> {
        let wrap = std::env::var("MCPMUX_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--clients")
        .arg(clients)
        .args([
            "--allow-open-tenants",
            "--shutdown-grace",
            "1",
            "--stop-grace",
            "0.5",
        ])
        .args(extra)
        // Info keeps the listening lines and drops the per-request debug line.
        .env("RUST_LOG", "info");
        Self::from_command("mcpmux", cmd)
    }

    /// Starts the HTTP floor server (this binary, re-executed; see `floor.rs`).
    pub fn start_floor() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(crate::floor::FLAG);
        Self::from_command("http floor", cmd)
    }

    /// Starts the relay floor server (this bench binary, `relay_floor.rs`) with its child.
    pub fn start_relay_floor() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(crate::relay_floor::FLAG);
        Self::from_command("relay floor", cmd)
    }

    /// Runs `cmd` and waits for its `listening on http://ADDR/mcp` line.
    fn from_command(name: &str, cmd: Command) -> Result<Self, String> {
        let (proc, rx) = Proc::spawn(name, cmd, Some("listening on http://"))?;
        let mut url = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| format!("{name} did not report its address:\n{}", proc.tail()))?;
            if line.contains("admin listening") {
                continue;
            }
            url = line
                .split("http://")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|addr| format!("http://{addr}"));
        }
        Ok(Self {
            proc,
            url: url.unwrap_or_default(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn stop(self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

/// A peer gateway, when installed (`scripts/bench-peers.sh`).
pub struct Peer {
    pub name: &'static str,
    cmd: Command,
    /// URL of its MCP endpoint once started.
    pub url: String,
}

/// Where `scripts/bench-peers.sh` installs the peers: `$CARGO_TARGET_DIR/bench-peers`.
pub fn peers_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("bench-peers")
}

/// The installed peers, each set up to serve `mcp-echo` on `port`.
pub fn peers(first_port: u16) -> (Vec<Peer>, Vec<String>) {
    let dir = peers_dir();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let sg = dir.join("node_modules/supergateway/dist/index.js");
    if sg.is_file() {
        let port = first_port;
        let mut cmd = Command::new("node");
        cmd.arg(&sg)
            .args([
                "--stdio",
                MCP_ECHO,
                "--outputTransport",
                "streamableHttp",
                "--stateful",
            ])
            .args(["--port", &port.to_string(), "--logLevel", "none"]);
        found.push(Peer {
            name: "supergateway",
            cmd,
            url: format!("http://127.0.0.1:{port}/mcp"),
        });
    } else {
        missing.push(format!("supergateway ({} not found)", sg.display()));
    }
    let mp = dir.join("venv/bin/mcp-proxy");
    if mp.is_file() {
        let port = first_port + 1;
        let mut cmd = Command::new(&mp);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--named-server", "echo", MCP_ECHO, "--log-level", "WARNING"]);
        found.push(Peer {
            name: "mcp-proxy",
            cmd,
            url: format!("http://127.0.0.1:{port}/servers/echo/mcp"),
        });
    } else {
        missing.push(format!("mcp-proxy ({} not found)", mp.display()));
    }
    (found, missing)
}

impl Peer {
    pub fn start(self) -> Result<(Proc, String), String> {
        let (proc, _rx) = Proc::spawn(self.name, self.cmd, None)?;
        Ok((proc, self.url))
    }
}

/// `VmRSS` of one process, in KiB.
pub fn rss_kb(pid: i32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

fn status_field(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

struct Stat {
    ppid: i32,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        ticks: t(11) + t(12),
    })
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on Linux).
const HZ: f64 = 100.0;

/// CPU seconds used so far by one process (its own threads only).
pub fn cpu_s(pid: i32) -> f64 {
    stat(pid).map_or(0.0, |s| s.ticks as f64 / HZ)
}

/// CPU seconds used so far by the live threads of one process, at the scheduler's
/// nanosecond resolution (`/proc/PID/task/*/schedstat`) rather than in clock ticks, whose
/// 10 ms hide a few µs per handshake; threads that exited meanwhile are not counted. Falls
/// back to [`cpu_s`] when schedstat is not available.
pub fn cpu_s_fine(pid: i32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cpu_s(pid);
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            return cpu_s(pid);
        };
        let Some(run) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        else {
            return cpu_s(pid);
        };
        ns += run;
    }
    ns as f64 / 1e9
}

/// Every live descendant of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                && let Some(st) = stat(pid)
            {
                parent.push((pid, st.ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, _) in parent.iter().filter(|(_, pp)| *pp == p) {
            out.push(*pid);
            frontier.push(*pid);
        }
    }
    out
}

/// CPU seconds of all descendants of `root` (not `root` itself).
pub fn descendants_cpu_s(root: i32) -> f64 {
    descendants(root).into_iter().map(cpu_s).sum()
}

/// Raises this process's soft open-files limit to the hard one (the daemons it starts
/// inherit it); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// The 1-minute load average, to show how busy the shared machine was.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
