//! Several nodes behind a real HAProxy (DESIGN §6): signed session ids that any node resumes,
//! and the readiness-first drain. The balancer runs `deploy/haproxy/haproxy.cfg` itself, with
//! only its addresses and stats socket replaced; the callers are the Python `mcp` SDK's
//! `Client` objects in legacy mode (`tests/interop/scaleout_client.py`), kept alive across a
//! node's death, even those with a long call in flight on it (`--sse-after` has already
//! given that call SSE headers, so only the call fails). HAProxy comes from Debian (`.ci/run`
//! installs it when absent).
//!
//! Every wait polls a state (HAProxy's view of a server on its stats socket, a node's
//! `/status`, a driver's reply line) against a deadline; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, timeout};

use crate::interop::{ensure_setup, venv_python};
use crate::util::{
    Daemon, STOP_TIMEOUT, Signal, TempClients, admin_status, echo_spec, free_port, repo_root,
    serve_args, system_binary,
};

/// Bound for HAProxy to see a node change state (checks every 1 s, 2 to fall or rise).
const HAPROXY_STATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one driver command (every tenant's calls, or a load run).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(90);
/// The shared session key of a test's nodes.
const KEY: &str = "7c1f0e9a3b5d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4";
/// Tenants of each test: enough that every node gets some under consistent hashing.
const TENANTS: [&str; 9] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
];

/// A key file with mode 0600 in its own directory.
pub struct KeyFile {
    dir: tempfile::TempDir,
}

impl KeyFile {
    pub fn new(lines: &str) -> KeyFile {
        let dir = tempfile::tempdir().expect("a temp dir for the key file");
        let keys = KeyFile { dir };
        keys.write(lines, 0o600);
        keys
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("session.key")
    }

    pub fn write(&self, lines: &str, mode: u32) {
        std::fs::write(self.path(), lines).expect("write the key file");
        std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod the key file");
    }
}

/// One mcpmux node of the tier, restartable on the same ports.
pub struct Node {
    pub daemon: Daemon,
    pub tenant_port: u16,
    pub admin_port: u16,
}

impl Node {
    /// Starts a node on `ports` (tenant, admin), or on ephemeral ones.
    pub async fn start(
        clients: &TempClients,
        keys: &KeyFile,
        ports: Option<(u16, u16)>,
        extra: &[&str],
    ) -> Node {
        let (listen, admin) = match ports {
            Some((t, a)) => (format!("127.0.0.1:{t}"), format!("127.0.0.1:{a}")),
            None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
        };
        let key_path = keys.path();
        let dir = clients.path().to_str().expect("UTF-8 temp path");
        let mut args = serve_args(&listen, &admin, dir);
        args.extend([
            "--allow-open-tenants",
            "--session-key-file",
            key_path.to_str().expect("UTF-8 temp path"),
        ]);
        args.extend(extra);
        let daemon = Daemon::spawn(&args, &[]).await;
        let tenant_port = daemon.addr().port();
        let admin_port = daemon.admin_addr().await.port();
        Node {
            daemon,
            tenant_port,
            admin_port,
        }
    }

    /// Tenants with at least one session on this node.
    pub async fn tenants_with_sessions(&self) -> Vec<String> {
        let status = admin_status(&self.daemon).await;
        let tenants = status["tenants"].as_array().cloned().unwrap_or_default();
        tenants
            .iter()
            .filter(|t| t["sessions"].as_u64().unwrap_or(0) > 0)
            .filter_map(|t| t["client_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A clients directory with every test tenant running `mcp-echo`.
pub fn echo_tenants() -> TempClients {
    let clients = TempClients::new();
    for id in TENANTS {
        clients.write(id, &echo_spec());
    }
    clients
}

/// Three nodes sharing `keys`.
pub async fn three_nodes(clients: &TempClients, keys: &KeyFile, extra: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(clients, keys, None, extra).await);
    }
    nodes
}

/// HAProxy running `deploy/haproxy/haproxy.cfg` in front of the nodes, on loopback.
pub struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    pub port: u16,
}

/// Replaces `from` in `text`, which must occur: the recipe and this harness stay in step.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy/haproxy/haproxy.cfg must contain `{from}` (the harness rewrites it)"
    );
    text.replacen(from, to, 1)
}

impl Haproxy {
    /// The recipe with loopback addresses; `redispatch: false` drops `option redispatch`.
    pub async fn start(nodes: &[Node], redispatch: bool) -> Haproxy {
        // Installs HAProxy when absent (scripts/install-tools.sh, through the interop set-up).
        ensure_setup();
        let recipe = std::fs::read_to_string(repo_root().join("deploy/haproxy/haproxy.cfg"))
            .expect("deploy/haproxy/haproxy.cfg must be readable");
        let dir = tempfile::tempdir().expect("a temp dir for HAProxy");
        let socket = dir.path().join("haproxy.sock");
        let port = free_port();
        let mut cfg = replace_once(
            &recipe,
            "bind 0.0.0.0:8080",
            &format!("bind 127.0.0.1:{port}"),
        );
        cfg = replace_once(
            &cfg,
            "stats socket /run/haproxy/mcpmux.sock",
            &format!("stats socket {}", socket.display()),
        );
        for (n, node) in nodes.iter().enumerate() {
            let ip = format!("10.0.0.1{}", n + 1);
            cfg = replace_once(
                &cfg,
                &format!("{ip}:8080 check addr {ip}"),
                &format!(
                    "127.0.0.1:{} check addr 127.0.0.1 port {}",
                    node.tenant_port, node.admin_port
                ),
            );
        }
        if !redispatch {
            cfg = replace_once(&cfg, "option redispatch 1", "# no redispatch in this test");
        }
        // HAProxy's own log goes nowhere: the test reads its state from the stats socket.
        cfg = replace_once(&cfg, "log stdout format raw local0 info", "");
        // 20000 connections need more descriptors than a test process may have.
        cfg = replace_once(&cfg, "maxconn 20000", "maxconn 1000");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy must start (apt-get install haproxy; .ci/run does)");
        let haproxy = Haproxy {
            child,
            _dir: dir,
            socket,
            port,
        };
        for n in 1..=nodes.len() {
            haproxy.wait_status(&format!("node{n}"), "UP").await;
        }
        haproxy
    }

    /// `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// `show stat` on the runtime API: each server's status (`UP`, `DOWN`, `UP 1/2`, ...).
    async fn statuses(&self) -> Option<BTreeMap<String, String>> {
        let mut sock = tokio::net::UnixStream::connect(&self.socket).await.ok()?;
        sock.write_all(b"show stat\n").await.ok()?;
        let mut csv = String::new();
        sock.read_to_string(&mut csv).await.ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
        let mut out = BTreeMap::new();
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.get(px) == Some(&"mcpmux") {
                let (Some(name), Some(status)) = (fields.get(sv), fields.get(st)) else {
                    continue;
                };
                out.insert((*name).to_string(), (*status).to_string());
            }
        }
        Some(out)
    }

    /// Waits until HAProxy reports `server` with status `want` exactly.
    pub async fn wait_status(&self, server: &str, want: &str) {
        let deadline = Instant::now() + HAPROXY_STATE_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(statuses) = self.statuses().await {
                if statuses.get(server).map(String::as_str) == Some(want) {
                    return;
                }
                last = Some(statuses);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "HAProxy must mark {server} {want} within {HAPROXY_STATE_TIMEOUT:?}; last seen {last:?}"
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn haproxy_binary() -> &'static str {
    system_binary("/usr/sbin/haproxy", "haproxy")
}

/// `scaleout_client.py`: one SDK `Client` per tenant, commanded line by line.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Starts the driver and waits until every tenant's client is initialized.
    pub async fn start(url: &str, tenants: &[&str]) -> Driver {
        ensure_setup();
        let mut child = Command::new(venv_python())
            .arg(repo_root().join("tests/interop/scaleout_client.py"))
            .arg(url)
            .arg("--tenants")
            .arg(tenants.join(","))
            .arg("--timeout")
            .arg(DRIVER_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the interop venv's python must start");
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut driver = Driver {
            child,
            stdin,
            stdout,
        };
        driver.expect("ready").await;
        driver
    }

    /// Reads lines until one is event `event`, and returns it.
    pub async fn expect(&mut self, event: &str) -> Value {
        loop {
            let line = timeout(DRIVER_TIMEOUT, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!("the driver must report `{event}` within {DRIVER_TIMEOUT:?}")
                })
                .expect("read the driver's stdout");
            let Some(line) = line else {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "the driver ended before reporting `{event}` (status {status:?}; stderr above)"
                );
            };
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the driver must print JSON lines ({e}): {line}"));
            if message["event"] == event {
                return message;
            }
            assert_ne!(message["event"], "error", "driver: {message}");
        }
    }

    /// Sends one command.
    pub async fn send(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the driver");
    }

    /// `n` echo calls per tenant; the report.
    pub async fn call(&mut self, n: u64) -> Value {
        self.send(json!({"op": "call", "n": n})).await;
        self.expect("done").await
    }

    /// Closes every client and waits for the driver to exit.
    pub async fn quit(mut self) {
        self.send(json!({"op": "quit"})).await;
        self.expect("closed").await;
        let status = timeout(DRIVER_TIMEOUT, self.child.wait())
            .await
            .expect("the driver must exit after quit")
            .expect("wait on the driver");
        assert!(status.success(), "the driver must exit 0: {status}");
    }
}

/// Asserts a report shows `n` good calls and no error for every tenant, through one session
/// each and a single `initialize` each.
pub fn assert_clean(report: &Value, n: u64, sessions: &BTreeMap<String, Value>, when: &str) {
    for id in TENANTS {
        assert_eq!(
            report["errors"][id],
            json!([]),
            "{when}: {id}'s client must see no error: {report:#}"
        );
        assert_eq!(
            report["ok"][id], n,
            "{when}: {id} must make {n} good calls: {report:#}"
        );
        assert_eq!(
            report["initialize"][id], 1,
            "{when}: {id}'s client must not initialize again: {report:#}"
        );
        assert_eq!(
            &report["session_ids_seen"][id], &sessions[id],
            "{when}: {id}'s client must keep its one session id: {report:#}"
        );
    }
}

/// Which node holds each tenant's sessions (by index), asserting each tenant is on one node.
async fn placement(nodes: &[&Node]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for tenant in node.tenants_with_sessions().await {
            out.insert(tenant, n);
        }
    }
    out
}

/// The node holding the most tenants in `placement`, and those tenants.
fn busiest(placement: &BTreeMap<String, usize>) -> (usize, Vec<String>) {
    let victim = (0..3)
        .max_by_key(|n| placement.values().filter(|v| *v == n).count())
        .unwrap_or(0);
    let tenants = placement
        .iter()
        .filter(|(_, n)| **n == victim)
        .map(|(t, _)| t.clone())
        .collect();
    (victim, tenants)
}

/// Every node but `victim`.
fn survivors(nodes: &[Node], victim: usize) -> Vec<&Node> {
    let others = nodes.iter().enumerate().filter(|(n, _)| *n != victim);
    others.map(|(_, node)| node).collect()
}

fn session_ids(report: &Value) -> BTreeMap<String, Value> {
    TENANTS
        .iter()
        .map(|id| ((*id).to_string(), report["session_ids_seen"][id].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_keep_their_sessions_across_a_node_killed_and_restarted_behind_haproxy() {
    let clients = echo_tenants();
    let keys = KeyFile::new(&format!("{KEY}\n"));
    let mut nodes = three_nodes(&clients, &keys, &[]).await;
    let haproxy = Haproxy::start(&nodes, true).await;
    let mut driver = Driver::start(&haproxy.url(), &TENANTS).await;

    let warm = driver.call(2).await;
    let sessions = session_ids(&warm);
    assert_clean(&warm, 2, &sessions, "before any failure");
    let before = placement(&nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(
        before.len(),
        TENANTS.len(),
        "every tenant has its session on one node: {before:?}"
    );
    // The victim: the node holding the most tenants.
    let (victim, moved) = busiest(&before);
    assert!(!moved.is_empty());

    // Each moved tenant has a long call in flight on the victim when it dies. The child says
    // nothing for 6 s, so after --sse-after (1 s) the reply is already SSE: the client loses
    // that call only, not its `Client` (deploy/README.md, "A call in flight ...").
    driver
        .send(json!({"op": "slow", "tenants": moved, "ms": 6000}))
        .await;
    let streaming = driver.expect("streaming").await;
    for tenant in &moved {
        assert_eq!(
            streaming["content_types"][tenant.as_str()],
            "text/event-stream",
            "{tenant}'s silent call must be answered as SSE before the node dies: {streaming:#}"
        );
    }
    let (tenant_port, admin_port) = (nodes[victim].tenant_port, nodes[victim].admin_port);
    nodes[victim].daemon.signal(Signal::SIGKILL);
    nodes[victim]
        .daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("a SIGKILLed node exits");
    let server = format!("node{}", victim + 1);
    haproxy.wait_status(&server, "DOWN").await;

    driver.send(json!({"op": "slow_done"})).await;
    let lost = driver.expect("slow_done").await;
    for tenant in &moved {
        let outcome = lost["outcome"][tenant.as_str()]
            .as_str()
            .unwrap_or_default();
        assert!(
            outcome.starts_with("raised "),
            "{tenant}'s call in flight on the killed node fails: {lost:#}"
        );
    }
    let after_kill = driver.call(3).await;
    assert_clean(&after_kill, 3, &sessions, "after the node was killed");
    let now = placement(&survivors(&nodes, victim)).await;
    for tenant in &moved {
        assert!(
            now.contains_key(tenant),
            "{tenant}'s session must have been resumed on a surviving node: {now:?}"
        );
    }

    // The node comes back on its ports; its tenants hash back to it.
    nodes[victim] = Node::start(&clients, &keys, Some((tenant_port, admin_port)), &[]).await;
    haproxy.wait_status(&server, "UP").await;
    let after_return = driver.call(3).await;
    assert_clean(&after_return, 3, &sessions, "after the node returned");
    let returned = nodes[victim].tenants_with_sessions().await;
    for tenant in &moved {
        assert!(
            returned.contains(tenant),
            "{tenant} must be served by its own node again: {returned:?}"
        );
    }
    driver.quit().await;
    for node in &mut nodes {
        node.daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_behind_haproxy_without_redispatch_fails_no_request() {
    let clients = echo_tenants();
    let keys = KeyFile::new(&format!("{KEY}\n"));
    let mut nodes = three_nodes(&clients, &keys, &["--shutdown-delay", "3"]).await;
    let haproxy = Haproxy::start(&nodes, false).await;
    let mut driver = Driver::start(&haproxy.url(), &TENANTS).await;
    let warm = driver.call(1).await;
    let sessions = session_ids(&warm);
    assert_clean(&warm, 1, &sessions, "before the stop");
    let before = placement(&nodes.iter().collect::<Vec<_>>()).await;
    let (victim, moved) = busiest(&before);

    driver.send(json!({"op": "load", "secs": 10})).await;
    driver.expect("loading").await;
    nodes[victim].daemon.signal(Signal::SIGTERM);
    haproxy
        .wait_status(&format!("node{}", victim + 1), "DOWN")
        .await;
    let status = nodes[victim]
        .daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("the stopped node exits after its delay and drain");
    assert_eq!(status.code(), Some(0), "{status}");
    let load = driver.expect("done").await;
    for id in TENANTS {
        assert_eq!(
            load["errors"][id],
            json!([]),
            "{id}: no request may fail: {load:#}"
        );
        assert!(
            load["ok"][id].as_u64().unwrap_or(0) > 0,
            "{id} made calls: {load:#}"
        );
        assert_eq!(
            load["initialize"][id], 1,
            "{id} never re-initializes: {load:#}"
        );
        assert_eq!(
            load["session_ids_seen"][id], sessions[id],
            "{id} keeps its session: {load:#}"
        );
    }
    let now = placement(&survivors(&nodes, victim)).await;
    for tenant in &moved {
        assert!(
            now.contains_key(tenant),
            "{tenant} moved to a surviving node: {now:?}"
        );
    }
    driver.quit().await;
    for (n, node) in nodes.iter_mut().enumerate() {
        if n != victim {
            node.daemon.stop().await;
        }
    }
}
