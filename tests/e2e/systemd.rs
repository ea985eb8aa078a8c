//! systemd integration (DESIGN §5): the `sd_notify` messages a `Type=notify` unit relies on,
//! read from a test-owned `NOTIFY_SOCKET`, and socket activation through `LISTEN_FDS` /
//! `LISTEN_FDNAMES`, set up by `tests/fixtures/sd_exec.py` exactly as systemd would (the
//! listeners at descriptors 3 and 4, `LISTEN_PID` and `WATCHDOG_PID` naming the daemon).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use serde_json::Value;

use crate::util::{
    Daemon, NotifySocket, STOP_TIMEOUT, Signal, TempClients, admin_get, call_tool, echo_spec,
    initialize, isolated_command, notify_has, notify_value, repo_root,
};

/// Bound for one expected notification. Generous: the daemon sends each at once, but a
/// loaded 2-core CI machine may be slow to schedule it.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(20);
/// `WATCHDOG_USEC` given to the daemon: 200 ms, so pings come every 100 ms.
const WATCHDOG_USEC: &str = "200000";
/// Watchdog pings each test waits for: more than one proves they repeat.
const PINGS: usize = 3;

/// `CLOCK_MONOTONIC` now, in microseconds: the clock `MONOTONIC_USEC` is read from.
fn monotonic_usec() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC must be readable");
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

async fn configured_tenants(daemon: &Daemon) -> Vec<String> {
    let (status, body) = admin_get(daemon, "/status").await;
    assert_eq!(status, 200, "/status must answer 200: {body}");
    let status: Value = serde_json::from_str(&body).expect("/status must be JSON");
    let tenants = status["tenants"]
        .as_array()
        .expect("/status must list tenants");
    tenants
        .iter()
        .map(|t| t["client_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn notify_socket_gets_ready_reloading_with_monotonic_usec_stopping_and_watchdog_pings() {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    let mut notify = NotifySocket::bind();
    let env = [
        ("NOTIFY_SOCKET", notify.path()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ];
    let mut daemon = Daemon::start_with_env(&clients, &[], &env).await;

    let ready = notify
        .expect(
            "READY=1",
            NOTIFY_TIMEOUT,
            "READY=1 must be sent once the clients are loaded and the listeners bound",
        )
        .await;
    assert_eq!(
        notify_value(&ready, "STATUS"),
        Some("serving"),
        "READY=1 carries a STATUS line: {ready:?}"
    );
    assert_eq!(
        configured_tenants(&daemon).await,
        ["demo"],
        "at READY=1 the clients directory is loaded"
    );

    for _ in 0..PINGS {
        notify
            .expect(
                "WATCHDOG=1",
                NOTIFY_TIMEOUT,
                "with WATCHDOG_USEC set (and no WATCHDOG_PID) WATCHDOG=1 must be sent every WATCHDOG_USEC/2",
            )
            .await;
    }

    let before = monotonic_usec();
    daemon.signal(Signal::SIGHUP);
    let reloading = notify
        .expect(
            "RELOADING=1",
            NOTIFY_TIMEOUT,
            "SIGHUP must be announced with RELOADING=1",
        )
        .await;
    let after = monotonic_usec();
    let usec = notify_value(&reloading, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 must carry MONOTONIC_USEC: {reloading:?}"));
    let usec: u64 = usec
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC must be an integer ({e}): {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC must be CLOCK_MONOTONIC at the reload, between the test's readings \
         {before} (before SIGHUP) and {after} (after RELOADING=1), got {usec}"
    );
    notify
        .expect(
            "READY=1",
            NOTIFY_TIMEOUT,
            "after the rescan READY=1 must follow RELOADING=1",
        )
        .await;
    assert_eq!(
        configured_tenants(&daemon).await,
        ["demo"],
        "the daemon serves on after the reload"
    );

    daemon.signal(Signal::SIGTERM);
    notify
        .expect(
            "STOPPING=1",
            NOTIFY_TIMEOUT,
            "SIGTERM must be announced with STOPPING=1",
        )
        .await;
    let status = daemon
        .wait_exit(STOP_TIMEOUT)
        .await
        .expect("the daemon must exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "a clean stop exits 0: {status}");
    let known = ["READY=1", "RELOADING=1", "STOPPING=1", "WATCHDOG=1"];
    for datagram in &notify.seen {
        assert!(
            known.iter().any(|k| notify_has(datagram, k)),
            "every notification carries a known state, got {datagram:?}"
        );
    }
}

fn sd_exec() -> PathBuf {
    repo_root().join("tests/fixtures/sd_exec.py")
}

/// Descriptor links (`socket:[inode]`, paths, `pipe:[...]`) of `pid`'s open files by number.
fn fd_links(pid: u32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir} must be readable: {e}"));
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                link.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

fn link_of(links: &[(String, String)], fd: &str) -> String {
    let found = links.iter().find(|(n, _)| n == fd);
    let (_, link) = found.unwrap_or_else(|| panic!("descriptor {fd} must be open: {links:?}"));
    link.clone()
}

fn read_addresses(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .expect("sd_exec.py writes the bound addresses before it execs the daemon");
    serde_json::from_str(&text).expect("the addresses file must be JSON")
}

#[tokio::test]
async fn sockets_passed_by_name_serve_the_tenant_and_admin_endpoints_and_stay_out_of_children() {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    let scratch = tempfile::tempdir().expect("a scratch dir must be creatable");
    let addresses = scratch.path().join("addresses.json");
    // The flags name addresses the test holds: a daemon that bound its flags instead of
    // adopting the passed sockets would fail with "address in use".
    let held_mcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flag_mcp = held_mcp.local_addr().unwrap().to_string();
    let flag_admin = held_admin.local_addr().unwrap().to_string();
    let mut notify = NotifySocket::bind();

    let mut cmd = isolated_command("python3");
    cmd.arg(sd_exec())
        .args(["--addresses", addresses.to_str().unwrap()])
        // Admin first: the daemon must find its sockets by name, not by position.
        .args(["--socket", "admin", "--socket", "mcp"])
        .args(["--pid-env", "WATCHDOG_PID", "--"])
        .arg(env!("CARGO_BIN_EXE_mcpmux"))
        .args([
            "serve",
            "--listen",
            &flag_mcp,
            "--admin-listen",
            &flag_admin,
        ])
        .args(["--allow-open-tenants", "--clients"])
        .arg(clients.path())
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    let mut daemon = Daemon::spawn_command(cmd).await;
    let passed = read_addresses(&addresses);

    assert_eq!(
        daemon.addr().to_string(),
        passed["mcp"].as_str().unwrap(),
        "the tenant endpoint must be the socket named `mcp`, not --listen {flag_mcp}"
    );
    assert_eq!(
        daemon.admin_addr().await.to_string(),
        passed["admin"].as_str().unwrap(),
        "the admin endpoint must be the socket named `admin`, not --admin-listen {flag_admin}"
    );
    notify
        .expect(
            "READY=1",
            NOTIFY_TIMEOUT,
            "a socket-activated daemon must send READY=1",
        )
        .await;
    for _ in 0..PINGS {
        notify
            .expect(
                "WATCHDOG=1",
                NOTIFY_TIMEOUT,
                "WATCHDOG=1 must be sent when WATCHDOG_PID names the daemon",
            )
            .await;
    }

    let session = initialize(&daemon, "demo").await;
    let called = call_tool(&daemon, "demo", &session, "echo", json_msg("activated")).await;
    assert_eq!(
        called["result"]["content"][0]["text"], "activated",
        "the passed tenant socket must carry MCP: {called:#}"
    );
    assert_eq!(admin_get(&daemon, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = admin_get(&daemon, "/status").await;
    assert_eq!(status, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    let child = status["tenants"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("the demo tenant must have a running child: {status:#}"))
        as u32;

    // The listeners stay in the daemon: a child gets neither them nor the activation variables.
    let daemon_fds = fd_links(daemon.pid());
    let listeners = [link_of(&daemon_fds, "3"), link_of(&daemon_fds, "4")];
    assert!(
        listeners.iter().all(|l| l.starts_with("socket:")),
        "descriptors 3 and 4 of the daemon must be the adopted sockets: {listeners:?}"
    );
    let leaked: Vec<_> = fd_links(child)
        .into_iter()
        .filter(|(_, link)| listeners.contains(link))
        .collect();
    assert_eq!(
        leaked,
        [],
        "the child must not inherit the listening sockets"
    );
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|&b| b == 0)
        .filter_map(|kv| Some(String::from_utf8_lossy(kv.split(|&b| b == b'=').next()?).into()))
        .collect();
    for var in [
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_PID",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        assert!(
            !names.iter().any(|n| n == var),
            "the child's environment must not carry {var}: {names:?}"
        );
    }

    let status = daemon.stop().await;
    assert_eq!(status.code(), Some(0), "a clean stop exits 0: {status}");
}

fn json_msg(message: &str) -> Value {
    serde_json::json!({ "message": message })
}
