//! Metric names and recording helpers; every label set is built here.
//!
//! Counters and histograms go through the `metrics` facade into a Prometheus recorder
//! installed by the daemon. Gauges describing current state (children alive, sessions,
//! in-flight requests) are set from the pool right before each scrape, so they can never
//! drift from the truth. Label values are bounded: the method label is one of the MCP
//! methods below or `other`, and requests not admitted to a tenant use client_id `-`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often recorded histogram samples are folded into their buckets.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Latency buckets, in seconds: sub-millisecond relays up to minutes-long tool calls.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// Methods that get their own label value.
const KNOWN_METHODS: [&str; 24] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "response",
    "stream",
];

/// The method label for `method` (bounded cardinality).
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Installs the global recorder; returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("mcpmux_request_duration_seconds".into()),
            &LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        "mcpmux_requests_total",
        "HTTP requests by tenant, MCP method and status"
    );
    metrics::describe_histogram!(
        "mcpmux_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to response headers"
    );
    metrics::describe_counter!("mcpmux_child_spawns_total", "Children started");
    metrics::describe_counter!(
        "mcpmux_child_sandboxed_spawns_total",
        "Children started in a Landlock sandbox"
    );
    metrics::describe_counter!(
        "mcpmux_child_crashes_total",
        "Children that exited unexpectedly or failed to start"
    );
    metrics::describe_counter!(
        "mcpmux_child_start_failures_total",
        "Children that could not be started or failed to initialize"
    );
    metrics::describe_counter!(
        "mcpmux_child_reaps_total",
        "Children stopped after their idle TTL"
    );
    metrics::describe_counter!("mcpmux_reloads_total", "Rescans of the clients directory");
    metrics::describe_counter!(
        "mcpmux_reload_errors_total",
        "Client files that failed to load on a rescan"
    );
    metrics::describe_gauge!("mcpmux_children_alive", "Children running now");
    metrics::describe_gauge!("mcpmux_tenants", "Tenants configured");
    metrics::describe_gauge!("mcpmux_sessions", "Open MCP sessions by tenant");
    metrics::describe_gauge!("mcpmux_inflight_requests", "Requests in flight by tenant");
    metrics::describe_gauge!("mcpmux_children_max", "The --max-children cap");
    metrics::describe_gauge!(
        "mcpmux_sessions_max_per_tenant",
        "Sessions one tenant may have open at once"
    );
    metrics::describe_gauge!(
        "mcpmux_sessions_max",
        "Sessions all tenants together may have open at once (--max-sessions)"
    );
    metrics::describe_counter!(
        "mcpmux_sessions_evicted_total",
        "Idle sessions ended to admit a new one at a session cap, by the evicted session's tenant and cap"
    );
    metrics::describe_counter!(
        "mcpmux_sessions_refused_total",
        "initialize (or resumption) refused with 503: at a session cap with every session in use"
    );
    metrics::describe_gauge!("mcpmux_connections_open", "Open connections by port");
    metrics::describe_gauge!(
        "mcpmux_connections_max",
        "Connection budget by port (--max-connections on the tenant port)"
    );
    metrics::describe_counter!(
        "mcpmux_connections_accepted_total",
        "Connections accepted, by port (before the budget decides)"
    );
    metrics::describe_counter!(
        "mcpmux_connections_evicted_total",
        "Connections without a complete request head closed to admit a newer one"
    );
    metrics::describe_counter!(
        "mcpmux_connections_rejected_total",
        "Connections closed at accept: the budget was full and none could be evicted"
    );
    metrics::describe_counter!(
        "mcpmux_connections_timed_out_total",
        "Connections closed by a deadline: stage head, idle or body"
    );
    metrics::describe_counter!(
        "mcpmux_accept_errors_total",
        "Failed accepts by kind (fd_limit: EMFILE/ENFILE, the loop backs off)"
    );
}

/// The connection metrics of one listener (`port` is `tenant` or `admin`), resolved once.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections accepted.
    pub accepted: Counter,
    /// Waiting connections evicted for a newcomer.
    pub evicted: Counter,
    /// Newcomers closed at once.
    pub rejected: Counter,
    /// Closed for want of a request head.
    pub head_timeouts: Counter,
    /// Closed after idling.
    pub idle_timeouts: Counter,
    /// Requests answered 408.
    pub body_timeouts: Counter,
    /// EMFILE / ENFILE at accept.
    pub fd_limit_errors: Counter,
    /// Other accept failures.
    pub accept_errors: Counter,
}

impl ConnMetrics {
    /// The handles for listener `port` with a budget of `max` connections.
    pub fn new(port: &'static str, max: usize) -> Self {
        gauge!("mcpmux_connections_max", "port" => port).set(max as f64);
        let timed_out = |stage: &'static str| counter!("mcpmux_connections_timed_out_total", "port" => port, "stage" => stage);
        let accept_error = |kind: &'static str| counter!("mcpmux_accept_errors_total", "port" => port, "kind" => kind);
        Self {
            open: gauge!("mcpmux_connections_open", "port" => port),
            accepted: counter!("mcpmux_connections_accepted_total", "port" => port),
            evicted: counter!("mcpmux_connections_evicted_total", "port" => port),
            rejected: counter!("mcpmux_connections_rejected_total", "port" => port),
            head_timeouts: timed_out("head"),
            idle_timeouts: timed_out("idle"),
            body_timeouts: timed_out("body"),
            fd_limit_errors: accept_error("fd_limit"),
            accept_errors: accept_error("other"),
        }
    }
}

/// Folds recorded histogram samples into their buckets every [`UPKEEP_PERIOD`] until
/// `shutdown`. The recorder buffers every sample until upkeep runs; with only `/metrics`
/// running it, a daemon nobody scrapes grew by about 18 bytes per request, without bound.
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// The two series one answered request updates.
struct RequestSeries {
    duration: Histogram,
    total: Counter,
}

/// Handles by client_id, then (method, status): the recorder's lookup builds label
/// strings and hashes the whole key, which cost more than the update itself on every
/// request. One map per thread, so no lock is shared between the workers (a worker
/// preempted while holding one would stall the other). Bounded like the recorder's own
/// registry, which keeps every series it has seen: client_ids are configured tenants or
/// `-`, methods and statuses are fixed sets.
type RequestSeriesMap = HashMap<Box<str>, HashMap<(&'static str, u16), RequestSeries>>;

thread_local! {
    static REQUEST_SERIES: RefCell<RequestSeriesMap> = RefCell::new(HashMap::new());
}

/// One answered HTTP request.
pub fn request(client_id: &str, method: &'static str, status: u16, took: Duration) {
    let record = |series: &RequestSeries| {
        series.duration.record(took.as_secs_f64());
        series.total.increment(1);
    };
    REQUEST_SERIES.with_borrow_mut(|map| {
        if let Some(series) = map.get(client_id).and_then(|m| m.get(&(method, status))) {
            record(series);
            return;
        }
        let made = request_series(client_id, method, status);
        record(&made);
        map.entry(client_id.into())
            .or_default()
            .insert((method, status), made);
    });
}

fn request_series(client_id: &str, method: &'static str, status: u16) -> RequestSeries {
    let labels = [
        ("client_id", client_id.to_string()),
        ("method", method.to_string()),
    ];
    let duration = histogram!("mcpmux_request_duration_seconds", &labels);
    let status = [
        ("client_id", client_id.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    let total = counter!("mcpmux_requests_total", &status);
    RequestSeries { duration, total }
}

/// A child was started (and whether in a sandbox).
pub fn spawned(client_id: &str, sandboxed: bool) {
    counter!("mcpmux_child_spawns_total", "client_id" => client_id.to_string()).increment(1);
    if sandboxed {
        counter!("mcpmux_child_sandboxed_spawns_total", "client_id" => client_id.to_string())
            .increment(1);
    }
}

/// A child crashed or could not start.
pub fn crashed(client_id: &str) {
    counter!("mcpmux_child_crashes_total", "client_id" => client_id.to_string()).increment(1);
}

/// A child could not be started, or failed its initialize handshake.
pub fn start_failed(client_id: &str) {
    counter!("mcpmux_child_start_failures_total", "client_id" => client_id.to_string())
        .increment(1);
}

/// A signed session this node had never seen was resumed.
pub fn session_resumed(client_id: &str) {
    counter!("mcpmux_sessions_resumed_total", "client_id" => client_id.to_string()).increment(1);
}

/// A child was reaped for idleness.
pub fn reaped(client_id: &str) {
    counter!("mcpmux_child_reaps_total", "client_id" => client_id.to_string()).increment(1);
}

/// A rescan finished with `errors` bad files.
pub fn reloaded(errors: usize) {
    counter!("mcpmux_reloads_total").increment(1);
    counter!("mcpmux_reload_errors_total").increment(errors as u64);
}

/// Current state of one tenant, set before a scrape.
pub fn tenant_state(client_id: &str, sessions: usize, inflight: usize) {
    gauge!("mcpmux_sessions", "client_id" => client_id.to_string()).set(sessions as f64);
    gauge!("mcpmux_inflight_requests", "client_id" => client_id.to_string()).set(inflight as f64);
}

/// Daemon-wide state, set before a scrape.
pub fn totals(tenants: usize, children_alive: usize) {
    gauge!("mcpmux_tenants").set(tenants as f64);
    gauge!("mcpmux_children_alive").set(children_alive as f64);
}

/// The caps alerts compare against (children at `--max-children`, sessions near their cap),
/// set once at start.
pub fn limits(max_children: usize, max_sessions_per_tenant: usize, max_sessions: usize) {
    gauge!("mcpmux_children_max").set(max_children as f64);
    gauge!("mcpmux_sessions_max_per_tenant").set(max_sessions_per_tenant as f64);
    gauge!("mcpmux_sessions_max").set(max_sessions as f64);
}

/// An idle session of `client_id` was ended to make room at `cap` (`tenant`, `global`).
pub fn session_evicted(client_id: &str, cap: &'static str) {
    let labels = [
        ("client_id", client_id.to_string()),
        ("cap", cap.to_string()),
    ];
    counter!("mcpmux_sessions_evicted_total", &labels).increment(1);
}

/// A new session of `client_id` was refused at `cap`: every session under it was in use.
pub fn session_refused(client_id: &str, cap: &'static str) {
    let labels = [
        ("client_id", client_id.to_string()),
        ("cap", cap.to_string()),
    ];
    counter!("mcpmux_sessions_refused_total", &labels).increment(1);
}
