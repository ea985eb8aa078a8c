//! The admin listener (DESIGN §5): `/metrics` is Prometheus text exposition as the Prometheus
//! project's own parser reads it (`prometheus_client`, through `tests/interop/parse_metrics.py`
//! in the pinned interop venv), and its counters move with traffic; `/status` follows a child
//! through spawn, idle reap and crash; `/healthz`, `/readyz` and the admin port's own errors.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::interop::{ensure_setup, venv_python};
use crate::util::{
    Daemon, HTTP_TIMEOUT, NotifySocket, Signal, TempClients, admin_get, admin_status, call_tool,
    fake_child_spec, finish_call, initialize, open_slow_call, post, repo_root, tenant_status,
};

/// Bound for the daemon to notice an idle child (TTL 1 s) or a crash and log it.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one run of the metrics parser (a Python start and a small parse).
const PARSE_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample: its name (with `_total`, `_bucket` ... suffix) and labels.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` body: family types and help by family name, and every sample.
#[derive(Debug)]
struct Metrics {
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Metrics {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let hit = self
            .samples
            .iter()
            .find(|s| s.name == name && s.labels == want);
        hit.map(|s| s.value)
    }

    /// As [`Metrics::get`], panicking with what is there when the sample is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let same: Vec<_> = self.samples.iter().filter(|s| s.name == name).collect();
            panic!("/metrics must have {name}{labels:?}; samples of that name: {same:#?}")
        })
    }

    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// GETs `/metrics`, checks its content type, and parses it with the reference parser.
async fn scrape(daemon: &Daemon) -> Metrics {
    let url = format!("http://{}/metrics", daemon.admin_addr().await);
    let resp = daemon.http().get(url).send().await.expect("GET /metrics");
    assert_eq!(resp.status(), 200, "/metrics must answer 200");
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "/metrics must be served as Prometheus text format 0.0.4, got {ctype:?}"
    );
    let text = resp.text().await.expect("a /metrics body");
    parse_metrics(&text).await
}

async fn parse_metrics(text: &str) -> Metrics {
    let script = repo_root().join("tests/interop/parse_metrics.py");
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the interop venv's python must start");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = timeout(PARSE_TIMEOUT, child.wait_with_output())
        .await
        .expect("the metrics parser must finish within PARSE_TIMEOUT")
        .expect("the metrics parser must run");
    assert!(
        out.status.success(),
        "/metrics must parse as Prometheus text exposition: {}\n--- body ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
    let mut metrics = Metrics {
        types: BTreeMap::new(),
        help: BTreeMap::new(),
        samples: Vec::new(),
    };
    for family in parsed["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap().to_owned();
        metrics
            .types
            .insert(name.clone(), family["type"].as_str().unwrap().to_owned());
        metrics
            .help
            .insert(name, family["help"].as_str().unwrap_or_default().to_owned());
        for s in family["samples"].as_array().unwrap() {
            metrics.samples.push(Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                value: s["value"].as_f64().unwrap(),
            });
        }
    }
    metrics
}

/// Every histogram series of `family` is well formed: buckets cumulative, `+Inf` equal to
/// `_count`, `_sum` present.
fn assert_histograms_well_formed(metrics: &Metrics, family: &str) {
    let counts = metrics.all(&format!("{family}_count"));
    assert!(!counts.is_empty(), "{family} must have series");
    for count in counts {
        let series: Vec<_> = count.labels.iter().collect();
        let mut buckets: Vec<(f64, f64)> = metrics
            .all(&format!("{family}_bucket"))
            .into_iter()
            .filter(|b| series.iter().all(|(k, v)| b.labels.get(*k) == Some(*v)))
            .map(|b| {
                let le = &b.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, b.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} buckets must be cumulative for {series:?}: {buckets:?}"
        );
        let inf = buckets.last().filter(|(le, _)| le.is_infinite());
        assert_eq!(
            inf.map(|(_, v)| *v),
            Some(count.value),
            "{family}: the +Inf bucket must equal _count for {series:?}"
        );
        let labels: Vec<(&str, &str)> = series
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            metrics.get(&format!("{family}_sum"), &labels).is_some(),
            "{family}_sum must exist for {series:?}"
        );
    }
}

/// Writes a bad client file, SIGHUPs, and waits for the READY=1 that follows RELOADING=1:
/// the daemon sends it once the rescan (and its accounting) is done.
async fn reload_with_a_bad_file(daemon: &Daemon, clients: &TempClients, notify: &mut NotifySocket) {
    clients.write_raw("broken.json", "{ not json");
    daemon.signal(Signal::SIGHUP);
    let within = LIFECYCLE_TIMEOUT;
    notify
        .expect("RELOADING=1", within, "SIGHUP must start a reload")
        .await;
    notify
        .expect("READY=1", within, "a reload must end with READY=1")
        .await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests_spawns_and_reloads() {
    ensure_setup();
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    clients.write("quiet", &fake_child_spec(&[]));
    let mut notify = NotifySocket::bind();
    let daemon = Daemon::start_with_env(&clients, &[], &[("NOTIFY_SOCKET", notify.path())]).await;

    let idle = scrape(&daemon).await;
    assert_eq!(idle.value("mcpmux_tenants", &[]), 2.0, "two client files");
    assert_eq!(idle.value("mcpmux_children_alive", &[]), 0.0, "lazy start");

    let session = initialize(&daemon, "acme").await;
    for n in 0..2 {
        let called = call_tool(&daemon, "acme", &session, "echo", json!({"n": n})).await;
        assert!(called.get("result").is_some(), "{called:#}");
    }
    let unknown = post(&daemon, Some("nosuch"), None, &json!({})).await;
    assert_eq!(unknown.status(), 403);

    let busy = scrape(&daemon).await;
    for (family, kind) in [
        ("mcpmux_requests", "counter"),
        ("mcpmux_request_duration_seconds", "histogram"),
        ("mcpmux_child_spawns", "counter"),
        ("mcpmux_children_alive", "gauge"),
        ("mcpmux_tenants", "gauge"),
        ("mcpmux_sessions", "gauge"),
        ("mcpmux_inflight_requests", "gauge"),
    ] {
        assert_eq!(
            busy.types.get(family).map(String::as_str),
            Some(kind),
            "{family} must be declared a {kind}: {:?}",
            busy.types
        );
        assert!(
            !busy.help[family].is_empty(),
            "{family} must have a HELP line"
        );
    }
    let requests = |m: &Metrics, method: &str, status: &str| {
        m.get(
            "mcpmux_requests_total",
            &[
                ("client_id", "acme"),
                ("method", method),
                ("status", status),
            ],
        )
    };
    assert_eq!(requests(&busy, "initialize", "200"), Some(1.0));
    assert_eq!(
        requests(&busy, "notifications/initialized", "202"),
        Some(1.0)
    );
    assert_eq!(requests(&busy, "tools/call", "200"), Some(2.0));
    assert_eq!(
        busy.get(
            "mcpmux_requests_total",
            &[("client_id", "-"), ("method", "-"), ("status", "403")]
        ),
        Some(1.0),
        "a request for an unknown tenant is counted without its (untrusted) name"
    );
    assert!(
        busy.samples
            .iter()
            .all(|s| s.labels.get("client_id").is_none_or(|c| c != "nosuch")),
        "an unknown client id must never become a label value"
    );
    let acme = [("client_id", "acme")];
    assert_eq!(busy.value("mcpmux_child_spawns_total", &acme), 1.0);
    assert_eq!(busy.value("mcpmux_children_alive", &[]), 1.0);
    assert_eq!(busy.value("mcpmux_sessions", &acme), 1.0);
    assert_eq!(busy.value("mcpmux_inflight_requests", &acme), 0.0);
    let calls = [("client_id", "acme"), ("method", "tools/call")];
    assert_eq!(
        busy.value("mcpmux_request_duration_seconds_count", &calls),
        2.0,
        "every answered call is timed"
    );
    assert_histograms_well_formed(&busy, "mcpmux_request_duration_seconds");

    // Counters move with traffic, gauges follow the present.
    let mut stream = open_slow_call(&daemon, "acme", &session, 7, 2_000).await;
    let during = scrape(&daemon).await;
    assert_eq!(during.value("mcpmux_inflight_requests", &acme), 1.0);
    let done = finish_call(&mut stream, 7, "the slow call must finish").await;
    assert!(done.get("result").is_some(), "{done:#}");
    let after = scrape(&daemon).await;
    assert_eq!(requests(&after, "tools/call", "200"), Some(3.0));
    assert_eq!(after.value("mcpmux_inflight_requests", &acme), 0.0);
    assert_eq!(
        after.value("mcpmux_child_spawns_total", &acme),
        1.0,
        "the child is reused"
    );

    let reloads = after.get("mcpmux_reloads_total", &[]).unwrap_or(0.0);
    reload_with_a_bad_file(&daemon, &clients, &mut notify).await;
    let reloaded = scrape(&daemon).await;
    assert!(
        reloaded.value("mcpmux_reloads_total", &[]) > reloads,
        "a SIGHUP rescan must count as a reload"
    );
    assert!(
        reloaded.value("mcpmux_reload_errors_total", &[]) >= 1.0,
        "a bad file found by a rescan must count as a reload error"
    );
    assert_eq!(
        reloaded.value("mcpmux_tenants", &[]),
        2.0,
        "the bad file adds no tenant"
    );
}

#[tokio::test]
async fn status_follows_a_child_through_spawn_work_idle_reap_and_crash() {
    ensure_setup();
    let clients = TempClients::new();
    let mut napper = fake_child_spec(&[]);
    napper["idle_ttl_secs"] = json!(1);
    clients.write("napper", &napper);
    clients.write("crashy", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &[]).await;

    let status = admin_status(&daemon).await;
    assert_eq!(status["draining"], false, "{status:#}");
    for id in ["crashy", "napper"] {
        let t = tenant_status(&status, id);
        assert_eq!(
            (&t["state"], &t["pid"], &t["restarts"], &t["last_exit"]),
            (&json!("stopped"), &Value::Null, &json!(0), &Value::Null),
            "a configured tenant with no child yet: {t:#}"
        );
    }

    // Spawn: the status names the very process that answers.
    let session = initialize(&daemon, "napper").await;
    let called = call_tool(&daemon, "napper", &session, "pid", json!({})).await;
    let pid: u64 = called["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let status = admin_status(&daemon).await;
    let t = tenant_status(&status, "napper");
    assert_eq!(
        (&t["state"], &t["pid"], &t["sessions"], &t["inflight"]),
        (&json!("running"), &json!(pid), &json!(1), &json!(0)),
        "{t:#}"
    );
    assert!(t["uptime_secs"].as_f64().unwrap() >= 0.0, "{t:#}");

    // Work: a request in flight shows, and a busy child is not idle.
    let mut stream = open_slow_call(&daemon, "napper", &session, 5, 1_000).await;
    let status = admin_status(&daemon).await;
    let t = tenant_status(&status, "napper");
    assert_eq!(
        (&t["inflight"], &t["idle_secs"]),
        (&json!(1), &json!(0.0)),
        "{t:#}"
    );
    finish_call(&mut stream, 5, "the slow call must finish").await;

    // Idle reap after the 1 s TTL: no child, the exit recorded as a stop, the session kept.
    let mark = daemon.log_mark();
    let stopped = daemon
        .wait_for_log_after(mark, "child stopped client_id=napper", LIFECYCLE_TIMEOUT)
        .await;
    assert!(
        stopped.is_some(),
        "an idle child must be reaped after its 1 s TTL"
    );
    let status = admin_status(&daemon).await;
    let t = tenant_status(&status, "napper");
    assert_eq!(
        (&t["state"], &t["pid"], &t["sessions"], &t["restarts"]),
        (&json!("stopped"), &Value::Null, &json!(1), &json!(0)),
        "a reaped child is no crash: {t:#}"
    );
    assert_eq!(t["last_exit"]["reason"], "stopped", "{t:#}");

    // Crash: the exit with its status and stderr tail, and a restart counted.
    let crashing = initialize(&daemon, "crashy").await;
    let mark = daemon.log_mark();
    let crashed = call_tool(&daemon, "crashy", &crashing, "crash", json!({"code": 3})).await;
    assert!(crashed.get("error").is_some(), "{crashed:#}");
    let noticed = daemon
        .wait_for_log_after(
            mark,
            "child exited unexpectedly client_id=crashy",
            LIFECYCLE_TIMEOUT,
        )
        .await;
    assert!(noticed.is_some(), "the crash must be noticed");
    let status = admin_status(&daemon).await;
    let t = tenant_status(&status, "crashy");
    assert_eq!(t["pid"], Value::Null, "{t:#}");
    assert!(t["restarts"].as_u64().unwrap() >= 1, "{t:#}");
    let exit = &t["last_exit"];
    assert_eq!(
        (
            &exit["reason"],
            &exit["status"],
            &exit["exit_code"],
            &exit["signal"]
        ),
        (
            &json!("exited"),
            &json!("exit status 3"),
            &json!(3),
            &Value::Null
        ),
        "{t:#}"
    );
    let tail = exit["stderr_tail"].as_array().unwrap();
    assert!(
        tail.iter()
            .any(|l| l == "fake child crashing on purpose with code 3"),
        "last_exit.stderr_tail must hold the child's last stderr line: {t:#}"
    );
    assert!(exit["secs_ago"].as_f64().unwrap() >= 0.0, "{t:#}");

    // The next request gets a new child; the crash stays on record.
    let called = call_tool(&daemon, "crashy", &crashing, "pid", json!({})).await;
    let new_pid: u64 = called["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let status = admin_status(&daemon).await;
    let t = tenant_status(&status, "crashy");
    assert_eq!(
        (&t["state"], &t["pid"]),
        (&json!("running"), &json!(new_pid)),
        "{t:#}"
    );
    assert_eq!(t["last_exit"]["exit_code"], 3, "{t:#}");

    let metrics = scrape(&daemon).await;
    let crashy = [("client_id", "crashy")];
    let napper = [("client_id", "napper")];
    assert_eq!(metrics.value("mcpmux_child_crashes_total", &crashy), 1.0);
    assert_eq!(metrics.value("mcpmux_child_spawns_total", &crashy), 2.0);
    assert_eq!(metrics.value("mcpmux_child_reaps_total", &napper), 1.0);
    assert_eq!(
        metrics.get("mcpmux_child_crashes_total", &napper),
        None,
        "a reap is not a crash"
    );
    assert_eq!(metrics.value("mcpmux_children_alive", &[]), 1.0);
}

#[tokio::test]
async fn admin_port_answers_health_readiness_and_refuses_other_paths_and_methods() {
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &[]).await;
    assert_eq!(admin_get(&daemon, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(admin_get(&daemon, "/readyz").await, (200, "ready\n".into()));
    let (status, body) = admin_get(&daemon, "/mcp").await;
    assert_eq!(status, 404, "the admin port serves no MCP: {body}");

    let url = format!("http://{}/status", daemon.admin_addr().await);
    let resp = timeout(HTTP_TIMEOUT, daemon.http().post(url).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 405, "admin endpoints are read-only");
    assert_eq!(resp.headers()["allow"], "GET, HEAD");

    // Tenant names never appear on the tenant port: /status there is just a wrong path.
    let resp = daemon
        .http()
        .get(format!("http://{}/status", daemon.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("acme"), "{body}");
}
