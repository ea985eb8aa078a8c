//! `subscriptions/listen` (2026-07-28, SEP-2575) through mcpmux: the acknowledgment with
//! the honored filter, tagged change notifications for exactly what was asked, one
//! subscribe and one unsubscribe at the child per URI however many streams come and go,
//! and the graceful end when the tenant goes.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::stateless::Probe;
use crate::util::{ChildLog, Daemon, HTTP_TIMEOUT, SseStream, TempClients, logged_fake_child_spec};

const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// Bound for the child to see what mcpmux sent it, and for a dropped stream to be noticed
/// (at worst at the next keep-alive, 15 s).
const CHILD_WAIT: Duration = Duration::from_secs(40);

fn listen(id: Value, notifications: Value) -> Probe {
    Probe::valid(
        id,
        "subscriptions/listen",
        json!({"notifications": notifications}),
    )
}

/// Opens a listen stream and returns it after checking its acknowledgment.
async fn open(daemon: &Daemon, id: Value, notifications: Value, honored: &Value) -> SseStream {
    let resp = listen(id.clone(), notifications).send(daemon, "acme").await;
    assert_eq!(resp.status(), 200);
    let mut stream = SseStream::new(resp);
    let ack = stream
        .next_message(HTTP_TIMEOUT, "the listen acknowledgment")
        .await;
    assert_eq!(
        ack,
        json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
               "params": {"_meta": {SUBSCRIPTION_ID: id}, "notifications": honored}}),
        "the first message acknowledges the honored filter"
    );
    stream
}

/// A stateless call of the fake child's tool `name`.
async fn call(daemon: &Daemon, name: &str, arguments: Value) {
    let probe = Probe::valid(
        json!("c"),
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    );
    let answer = probe.answer(daemon, "acme").await;
    assert!(answer["result"].is_object(), "{answer:#}");
}

/// Waits until the child received `count` messages with `method` for `uri`.
async fn child_saw(log: &ChildLog, method: &str, uri: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + CHILD_WAIT;
    loop {
        let seen: Vec<Value> = log
            .with_method(method)
            .into_iter()
            .filter(|m| m["params"]["uri"] == uri)
            .collect();
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fake_daemon(log: &ChildLog) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("acme", &logged_fake_child_spec(log, &[]));
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

#[tokio::test]
async fn listen_delivers_exactly_what_was_asked_tagged_with_its_id() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log).await;
    let asked = json!({"toolsListChanged": true, "bogusFilter": true, "resourceSubscriptions": ["test://a"]});
    let honored = json!({"toolsListChanged": true, "resourceSubscriptions": ["test://a"]});
    let mut stream = open(&daemon, json!("l1"), asked, &honored).await;
    assert_eq!(
        child_saw(&log, "resources/subscribe", "test://a", 1)
            .await
            .len(),
        1
    );

    call(&daemon, "updated", json!({"uri": "test://b"})).await; // not asked for
    call(&daemon, "updated", json!({"uri": "test://a"})).await;
    call(&daemon, "notify", json!({"marker": "m"})).await; // list_changed and a log message
    let updated = stream
        .next_message(HTTP_TIMEOUT, "the resource update")
        .await;
    assert_eq!(
        updated,
        json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
               "params": {"_meta": {SUBSCRIPTION_ID: "l1"}, "uri": "test://a"}}),
    );
    let changed = stream
        .next_message(HTTP_TIMEOUT, "the tools list change")
        .await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed:#}"
    );
    assert_eq!(
        changed["params"]["_meta"][SUBSCRIPTION_ID], "l1",
        "{changed:#}"
    );
    assert_eq!(
        changed["params"]["_meta"]["marker"], "m",
        "the child's own _meta stays: {changed:#}"
    );
}

#[tokio::test]
async fn ten_thousand_listen_streams_come_and_go_with_one_subscribe_and_one_unsubscribe() {
    let log = ChildLog::new();
    let (_clients, daemon) = fake_daemon(&log).await;
    let filter = json!({"resourceSubscriptions": ["test://x"]});
    let anchor = open(&daemon, json!(0), filter.clone(), &filter).await;
    assert_eq!(
        child_saw(&log, "resources/subscribe", "test://x", 1)
            .await
            .len(),
        1
    );

    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let mut after_warmup = 0;
    for n in 1..=10_000u32 {
        let stream = open(&daemon, json!(n), filter.clone(), &filter).await;
        drop(stream);
        if n == 1_000 {
            after_warmup = rss();
        }
    }
    let grown_kib = rss().saturating_sub(after_warmup);
    assert!(
        grown_kib < 32 * 1024,
        "9,000 more listen streams opened and dropped must not grow the daemon by {grown_kib} KiB"
    );
    drop(anchor);
    let unsubscribed = child_saw(&log, "resources/unsubscribe", "test://x", 1).await;
    assert_eq!(
        unsubscribed.len(),
        1,
        "one unsubscribe once the last listener left"
    );
    let subscribed = child_saw(&log, "resources/subscribe", "test://x", 1).await;
    assert_eq!(subscribed.len(), 1, "one subscribe for all 10,001 streams");
}

#[tokio::test]
async fn listen_streams_end_gracefully_when_the_tenant_is_removed() {
    let log = ChildLog::new();
    let (clients, daemon) = fake_daemon(&log).await;
    let mut stream = open(
        &daemon,
        json!(7),
        json!({"toolsListChanged": true}),
        &json!({"toolsListChanged": true}),
    )
    .await;
    clients.remove("acme");
    let end = stream
        .next_message(HTTP_TIMEOUT, "the listen request's response")
        .await;
    assert_eq!(
        end,
        json!({"jsonrpc": "2.0", "id": 7, "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: 7}}}),
    );
    assert!(
        stream.next_event(HTTP_TIMEOUT, "").await.is_none(),
        "and then the stream ends"
    );
}
