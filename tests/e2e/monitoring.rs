//! The shipped monitoring (issue 14): the alert rules (`deploy/prometheus/mcpmux-rules.yml`)
//! pass their `promtool test rules` unit tests and fire in a real Prometheus that scrapes a
//! live daemon with a crash-looping tenant; every query of the Grafana dashboard
//! (`deploy/grafana/mcpmux.json`) parses with `promtool` and names only metrics that a live
//! daemon exports. Needs Debian's `prometheus` package (the interop set-up installs it when absent).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::interop::ensure_setup;
use crate::util::{
    Daemon, STARTUP_TIMEOUT, Signal, TempClients, admin_get, call_tool, echo_spec, fake_child_spec,
    initialize, initialize_params, messages, post, repo_root, response_to,
};

/// Bound for Prometheus to see a crash loop and fire: the loop needs about 15 s of crashes
/// (backoff 0, 1, 2, 4, 8 s), then a few 1 s scrape and evaluation rounds.
const ALERT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for the daemon to have exported every series the dashboard names.
const METRICS_TIMEOUT: Duration = Duration::from_secs(30);

fn rules_path() -> std::path::PathBuf {
    repo_root().join("deploy/prometheus/mcpmux-rules.yml")
}

/// Runs `promtool args`, bounded; returns (success, stdout + stderr).
async fn promtool(args: &[&str]) -> (bool, String) {
    // Installs promtool when absent (scripts/install-tools.sh, through the interop set-up).
    ensure_setup();
    let mut cmd = Command::new("promtool");
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = timeout(STARTUP_TIMEOUT, cmd.output())
        .await
        .expect("promtool must finish")
        .unwrap_or_else(|e| panic!("promtool must run (apt-get install prometheus): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_unit_tests_of_the_alert_rules_pass() {
    let rules = rules_path();
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]).await;
    assert!(
        ok && out.contains("SUCCESS: 8 rules found"),
        "promtool check rules: {out}"
    );
    let tests = repo_root().join("deploy/prometheus/mcpmux-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]).await;
    assert!(ok && out.contains("SUCCESS"), "promtool test rules: {out}");
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------------

/// A Prometheus server on a loopback port, storing into a temporary directory; killed on drop.
struct Prometheus {
    _child: Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    async fn start(target: std::net::SocketAddr, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules_file = dir.path().join("rules.yml");
        std::fs::write(&rules_file, rules).unwrap();
        // YAML is a superset of JSON.
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [rules_file],
            "scrape_configs": [{"job_name": "mcpmux", "static_configs": [{"targets": [target.to_string()]}]}],
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        // A port the kernel just handed out; Prometheus cannot listen on port 0 and say which.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ensure_setup();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus must start (apt-get install prometheus): {e}"));
        let prometheus = Prometheus {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus must be ready on port {port}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>`'s `data`.
    async fn api(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }
}

/// The shipped rules with every `for:` cut to 1 s, so a test sees them fire in seconds;
/// the expressions and windows are the shipped ones.
fn rules_with_short_for() -> String {
    let rules = std::fs::read_to_string(rules_path()).unwrap();
    let lines: Vec<String> = rules
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 1s"),
            _ => line.to_string(),
        })
        .collect();
    assert!(lines.iter().filter(|l| l.trim() == "for: 1s").count() >= 7);
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_crash_loop_alert_for_a_crash_looping_tenant_only() {
    let clients = TempClients::new();
    clients.write("steady", &echo_spec());
    clients.write("looping", &fake_child_spec(&["--crash-on-start"]));
    let daemon = Daemon::start(&clients, &[]).await;
    let prometheus = Prometheus::start(daemon.admin_addr().await, &rules_with_short_for()).await;

    let session = initialize(&daemon, "steady").await;
    let deadline = Instant::now() + ALERT_TIMEOUT;
    let firing = loop {
        // The looping tenant's callers keep asking, so its child keeps being restarted.
        assert_initialize_fails(&daemon, "looping").await;
        let answer = call_tool(
            &daemon,
            "steady",
            &session,
            "echo",
            json!({"message": "hi"}),
        )
        .await;
        assert!(
            answer.get("result").is_some(),
            "the steady tenant keeps serving: {answer}"
        );
        let alerts = prometheus.api("alerts").await;
        let crash_loops: Vec<Value> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == "McpmuxTenantCrashLoop")
            .cloned()
            .collect();
        if crash_loops.iter().any(|a| a["state"] == "firing") {
            break crash_loops;
        }
        if Instant::now() > deadline {
            let up = prometheus.api("query?query=up").await;
            let crashes = prometheus
                .api("query?query=mcpmux_child_crashes_total")
                .await;
            panic!(
                "no firing crash-loop alert in {ALERT_TIMEOUT:?}: {alerts}\nup: {up}\ncrashes: {crashes}"
            );
        }
        sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(firing.len(), 1, "one tenant loops: {firing:?}");
    let labels = &firing[0]["labels"];
    assert_eq!(labels["client_id"], "looping");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["instance"], daemon.admin_addr().await.to_string());
    let summary = firing[0]["annotations"]["summary"].as_str().unwrap();
    assert_eq!(summary, "mcpmux tenant looping is in a crash loop");
    // The rule's value is the crash count it saw, which the daemon's own counter backs.
    let value: f64 = firing[0]["value"].as_str().unwrap().parse().unwrap();
    assert!(value > 3.0, "fired above 3 crashes: {value}");
    let (_, metrics) = admin_get(&daemon, "/metrics").await;
    let crashes = metric_value(
        &metrics,
        r#"mcpmux_child_crashes_total{client_id="looping"}"#,
    );
    assert!(crashes > 3.0, "the daemon counted the crashes: {metrics}");
}

/// An `initialize` to `client_id`, whose child cannot start, gets a JSON-RPC error (the
/// start failed) or a 503 (restarts are backing off).
async fn assert_initialize_fails(daemon: &Daemon, client_id: &str) {
    let init =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let resp = post(daemon, Some(client_id), None, &init).await;
    match resp.status().as_u16() {
        503 => {}
        200 => {
            let answer = response_to(&messages(resp).await, &json!(0)).clone();
            assert!(
                answer.get("error").is_some(),
                "{client_id} cannot initialize: {answer}"
            );
        }
        other => panic!("{client_id}'s initialize: unexpected status {other}"),
    }
}

/// The value of the sample line that starts with `series` (labels exactly as rendered).
fn metric_value(exposition: &str, series: &str) -> f64 {
    let line = exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{series} not exported:\n{exposition}"));
    line[series.len()..].trim().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------------------------

/// Every PromQL expression of the dashboard, Grafana's variables replaced by values
/// Prometheus accepts, and the metric the tenant variable lists.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = var["query"]["query"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's; its METRIC must exist all the same.
            let inner = query.strip_prefix("label_values(").unwrap();
            exprs.push(inner.split(',').next().unwrap().trim().to_string());
        }
    }
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$client_id", ".*")
        })
        .collect()
}

/// The `mcpmux_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mcpmux_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names (histogram series included) in a Prometheus text exposition.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_parses_and_names_only_metrics_a_live_daemon_exports() {
    let path = repo_root().join("deploy/grafana/mcpmux.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 15,
        "the dashboard has its panels: {queries:?}"
    );

    // promtool parses every query as the expression of a recording rule.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()]).await;
    assert!(ok, "a dashboard query does not parse: {out}");

    // A daemon that has done everything the dashboard draws: served calls (requests,
    // latency, sessions, in-flight), started and reaped a child (--idle-ttl 1), failed to
    // start one (crashes, start failures) and rescanned a bad file (reload errors).
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    clients.write(
        "broken",
        &json!({"command": "/nonexistent/mcpmux-e2e-no-such-child"}),
    );
    let daemon = Daemon::start(&clients, &["--idle-ttl", "1"]).await;
    let session = initialize(&daemon, "demo").await;
    let answer = call_tool(&daemon, "demo", &session, "echo", json!({"message": "hi"})).await;
    assert!(answer.get("result").is_some(), "{answer}");
    assert_initialize_fails(&daemon, "broken").await;
    clients.write_raw("bad.json", "{ not json");
    daemon.signal(Signal::SIGHUP);

    let wanted: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    let deadline = Instant::now() + METRICS_TIMEOUT;
    loop {
        let (status, body) = admin_get(&daemon, "/metrics").await;
        assert_eq!(status, 200);
        let exported = exported_names(&body);
        let missing: Vec<&String> = wanted.difference(&exported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard names metrics the daemon does not export: {missing:?}\n{body}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    // Every shipped metric is on the dashboard, too.
    let (_, body) = admin_get(&daemon, "/metrics").await;
    let families: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    for family in &families {
        let drawn = wanted.iter().any(|w| w.starts_with(family.as_str()));
        assert!(drawn, "{family} is exported but not on the dashboard");
    }
    assert!(Path::new(&path).exists());
}
