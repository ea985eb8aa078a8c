//! The rest of what 2026-07-28 asks of a server, bridged onto a session-era child (the
//! README's "Stateless callers" table): `serverInfo` on results, `Mcp-Param-*` headers
//! checked against the child's tool schemas, and the request-timeout code.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::stateless::{Probe, refusal};
use crate::util::{
    ChildLog, Daemon, TempClients, call_tool, fake_child_spec, initialize, logged_fake_child_spec,
};

const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
const CAPS: &str = "io.modelcontextprotocol/clientCapabilities";

async fn fake_daemon(args: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(args));
    let daemon = Daemon::start(&clients, &[]).await;
    (clients, daemon)
}

#[tokio::test]
async fn stateless_results_name_the_childs_server_in_meta() {
    let (_clients, daemon) = fake_daemon(&[]).await;
    // The fake child's `initialize` says `fake-child` / `1` and it sets no `_meta` itself.
    let child = json!({"name": "fake-child", "version": "1"});

    let listed = Probe::valid(json!(1), "tools/list", json!({}))
        .answer(&daemon, "acme")
        .await;
    assert_eq!(listed["result"]["_meta"][SERVER_INFO], child, "{listed:#}");
    assert!(listed["result"]["tools"].is_array(), "{listed:#}");

    let params = json!({"name": "echo", "arguments": {"k": [1, 2]}});
    let called = Probe::valid(json!("c"), "tools/call", params)
        .answer(&daemon, "acme")
        .await;
    assert_eq!(
        called["result"]["_meta"],
        json!({SERVER_INFO: child}),
        "{called:#}"
    );
    assert_eq!(called["result"]["echo"]["arguments"], json!({"k": [1, 2]}));

    // An input_required round is a result too.
    let params = json!({"name": "ask", "arguments": {"method": "roots/list", "ms": 2000}});
    let asked = Probe::valid(json!("r"), "tools/call", params)
        .meta(CAPS, Some(json!({"roots": {}})))
        .answer(&daemon, "acme")
        .await;
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked:#}");
    assert_eq!(asked["result"]["_meta"][SERVER_INFO], child, "{asked:#}");

    // Errors are not results: nothing is added.
    let read = Probe::valid(json!(2), "resources/read", json!({"uri": "test://none"}))
        .answer(&daemon, "acme")
        .await;
    assert_eq!(
        read["error"],
        json!({"code": -32602, "message": "Resource not found", "data": {"uri": "test://none"}}),
        "{read:#}"
    );

    // The session era gets the child's bytes, as before.
    let session = initialize(&daemon, "acme").await;
    let got = call_tool(&daemon, "acme", &session, "echo", json!({})).await;
    assert!(got["result"].get("_meta").is_none(), "{got:#}");
}

/// A stateless `tools/call` of `tool` with `arguments` and the `Mcp-Param-*` headers given.
fn call(id: u64, tool: &str, arguments: Value, params: &[(&'static str, &str)]) -> Probe {
    let body = json!({"name": tool, "arguments": arguments});
    let mut probe = Probe::valid(json!(id), "tools/call", body);
    for (name, value) in params {
        probe = probe.again(name, value);
    }
    probe
}

/// `Mcp-Param-*` headers to send.
type Headers = Vec<(&'static str, &'static str)>;

/// `route`'s arguments with every declared parameter set.
fn route_args() -> Value {
    json!({"region": "us-west1", "opts": {"limit": 42, "dry": true}, "query": "q"})
}

const ROUTE_HEADERS: [(&str, &str); 3] = [
    ("Mcp-Param-Region", "us-west1"),
    ("Mcp-Param-Limit", "42"),
    ("Mcp-Param-Dry", "true"),
];

/// Sends `probe` and expects it served by the child's `route` (or `bad_route`) tool.
async fn routed(daemon: &Daemon, probe: &Probe) -> Value {
    let answer = probe.answer(daemon, "acme").await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "routed",
        "{answer:#}"
    );
    answer["result"]["arguments"].clone()
}

/// Sends `probe` and expects 400 with a -32020 saying `message`.
async fn mismatch(daemon: &Daemon, probe: &Probe, message: &str) {
    let (status, error) = refusal(probe.send(daemon, "acme").await, &probe.body["id"]).await;
    assert_eq!(
        (status, error),
        (400, json!({"code": -32020, "message": message})),
        "{:#}",
        probe.body
    );
}

#[tokio::test]
async fn mcp_param_headers_must_mirror_what_the_childs_tool_schema_declares() {
    let log = ChildLog::new();
    let clients = TempClients::new();
    let spec = logged_fake_child_spec(&log, &["--header-tools", "--tools-page-size", "4"]);
    clients.write("acme", &spec);
    let daemon = Daemon::start(&clients, &[]).await;

    // Every declared value mirrored: served, the body untouched.
    let args = routed(&daemon, &call(1, "route", route_args(), &ROUTE_HEADERS)).await;
    assert_eq!(args, route_args());
    // Integers compare numerically; values outside the plain-ASCII set travel base64.
    let encoded = [
        ("Mcp-Param-Region", "=?base64?IHBhZGRlZCA=?="),
        ("Mcp-Param-Limit", "42.0"),
    ];
    let padded = json!({"region": " padded ", "opts": {"limit": 42}});
    assert_eq!(
        routed(&daemon, &call(2, "route", padded.clone(), &encoded)).await,
        padded
    );
    // Absent and null values expect no header.
    let sparse = json!({"region": "eu", "opts": {"limit": null}});
    routed(
        &daemon,
        &call(3, "route", sparse, &[("Mcp-Param-Region", "eu")]),
    )
    .await;

    let region = "Mcp-Param-Region";
    let cases: [(Value, Headers, &str); 5] = [
        (
            route_args(),
            vec![(region, "eu-west1"), ROUTE_HEADERS[1], ROUTE_HEADERS[2]],
            "Mcp-Param-Region header `eu-west1` does not match the body's arguments.region \"us-west1\"",
        ),
        (
            route_args(),
            vec![ROUTE_HEADERS[0], ROUTE_HEADERS[1]],
            "Mcp-Param-Dry header is required: tool `route` mirrors arguments.opts.dry into it, and the body sets arguments.opts.dry to true",
        ),
        (
            route_args(),
            vec![
                ROUTE_HEADERS[0],
                ("Mcp-Param-Limit", "41"),
                ROUTE_HEADERS[2],
            ],
            "Mcp-Param-Limit header `41` does not match the body's arguments.opts.limit 42",
        ),
        (
            json!({"region": "a"}),
            vec![(region, "=?base64?YQ?=")],
            "Mcp-Param-Region header is not valid `=?base64?...?=` (canonical base64 of UTF-8)",
        ),
        (
            json!({"region": "a"}),
            vec![(region, "a"), (region, "a")],
            "Mcp-Param-Region header is given more than once",
        ),
    ];
    for (n, (args, headers, message)) in cases.into_iter().enumerate() {
        mismatch(
            &daemon,
            &call(10 + n as u64, "route", args, &headers),
            message,
        )
        .await;
    }
    // Not visible ASCII is malformed too.
    let probe = call(20, "route", json!({"region": "é"}), &[]);
    let resp = probe
        .send_with(&daemon, "acme", &[(region, b"\xc3\xa9".as_slice())])
        .await;
    let (status, error) = refusal(resp, &json!(20)).await;
    assert_eq!(
        (status, error),
        (
            400,
            json!({"code": -32020, "message": "Mcp-Param-Region header is not visible ASCII"})
        )
    );

    // Nothing declared, or declared against the spec's rules: headers are not read.
    let echo = call(30, "echo", json!({"region": "x"}), &[(region, "other")]);
    let echoed = echo.answer(&daemon, "acme").await;
    assert_eq!(echoed["result"]["content"][0]["text"], "ok", "{echoed:#}");
    routed(&daemon, &call(31, "bad_route", json!({"rows": ["r"]}), &[])).await;

    // The refused calls never reached the child; the list was read once, page by page.
    assert_eq!(
        log.tool_calls("route").len(),
        3,
        "only the served calls reach the child"
    );
    let cursors: Vec<Value> = log
        .with_method("tools/list")
        .iter()
        .map(|m| m["params"]["cursor"].clone())
        .collect();
    assert_eq!(cursors.first(), Some(&Value::Null), "{cursors:?}");
    let mut unique = cursors.clone();
    unique.dedup();
    assert_eq!(
        unique, cursors,
        "one read of the list, following its cursors: {cursors:?}"
    );
    assert!(
        cursors.len() >= 5,
        "{} tools in pages of 4: {cursors:?}",
        21
    );

    // A session-era caller of the same tenant sends no such headers and is served.
    let session = initialize(&daemon, "acme").await;
    let got = call_tool(&daemon, "acme", &session, "route", route_args()).await;
    assert_eq!(got["result"]["content"][0]["text"], "routed", "{got:#}");
}

#[tokio::test]
async fn a_changed_tool_list_is_read_again_and_a_new_child_starts_afresh() {
    let clients = TempClients::new();
    let spec = fake_child_spec(&["--header-tools"]);
    clients.write("acme", &spec);
    let daemon = Daemon::start(&clients, &[]).await;
    let region = [("Mcp-Param-Region", "eu")];
    let zone = [("Mcp-Param-Zone", "eu")];
    let args = json!({"region": "eu"});
    routed(&daemon, &call(1, "route", args.clone(), &region)).await;

    // The child renames the header and says its list changed.
    let renamed = call(2, "rename_header", json!({"header": "Zone"}), &[])
        .answer(&daemon, "acme")
        .await;
    assert_eq!(renamed["result"]["content"][0]["text"], "renamed to Zone");
    let required = "Mcp-Param-Zone header is required: tool `route` mirrors arguments.region into it, and the body sets arguments.region to \"eu\"";
    mismatch(&daemon, &call(3, "route", args.clone(), &region), required).await;
    routed(&daemon, &call(4, "route", args.clone(), &zone)).await;

    // A new child (the client file changed) declares `Region` again, and is read afresh.
    let mut changed = spec.clone();
    changed["description"] = json!("v2");
    clients.write("acme", &changed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = call(5, "route", args.clone(), &region);
        let resp = probe.send(&daemon, "acme").await;
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new child must be started and read"
        );
        let (_, error) = refusal(resp, &json!(5)).await;
        assert_eq!(
            error["message"], required,
            "the old child's list until then"
        );
        tokio::task::yield_now().await;
    }
    let missing = "Mcp-Param-Region header is required: tool `route` mirrors arguments.region into it, and the body sets arguments.region to \"eu\"";
    mismatch(&daemon, &call(6, "route", args, &zone), missing).await;
}

#[tokio::test]
async fn a_child_whose_tool_list_fails_gets_no_unchecked_stateless_calls() {
    let (_clients, daemon) = fake_daemon(&["--tools-list-error"]).await;
    let probe = call(1, "echo", json!({}), &[]);
    let answer = probe.answer(&daemon, "acme").await;
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "cannot check Mcp-Param headers: the child's tools/list failed: tools/list failing on purpose"}})
    );
    // The child's own answers still reach everyone else.
    let listed = Probe::valid(json!(2), "tools/list", json!({}))
        .answer(&daemon, "acme")
        .await;
    assert_eq!(
        listed["error"]["message"], "tools/list failing on purpose",
        "{listed:#}"
    );
    let session = initialize(&daemon, "acme").await;
    let got = call_tool(&daemon, "acme", &session, "echo", json!({})).await;
    assert_eq!(got["result"]["content"][0]["text"], "ok", "{got:#}");
}

#[tokio::test]
async fn a_stateless_request_timeout_is_an_internal_error_not_a_retired_code() {
    let clients = TempClients::new();
    clients.write("acme", &fake_child_spec(&[]));
    let daemon = Daemon::start(&clients, &["--request-timeout", "1"]).await;
    let slow = json!({"name": "slow", "arguments": {"ms": 60_000, "steps": 1}});

    // 2026-07-28 retires -32000..-32019, and the SDKs raise -32001 themselves, locally.
    let answer = Probe::valid(json!(1), "tools/call", slow.clone())
        .answer(&daemon, "acme")
        .await;
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "request timed out after 1 s without progress"}})
    );
    // The session era keeps the code its SDKs use.
    let session = initialize(&daemon, "acme").await;
    let got = call_tool(
        &daemon,
        "acme",
        &session,
        "slow",
        json!({"ms": 60_000, "steps": 1}),
    )
    .await;
    assert_eq!(got["error"]["code"], -32001, "{got:#}");
    // Nothing else is held up.
    let echo = Probe::valid(
        json!(2),
        "tools/call",
        json!({"name": "echo", "arguments": {}}),
    )
    .answer(&daemon, "acme")
    .await;
    assert_eq!(echo["result"]["content"][0]["text"], "ok", "{echo:#}");
}

#[tokio::test]
async fn a_childs_negative_ttl_reaches_stateless_callers_as_zero() {
    let (_clients, daemon) = fake_daemon(&["--list-ttl", "-5"]).await;
    let listed = Probe::valid(json!(1), "tools/list", json!({}))
        .answer(&daemon, "acme")
        .await;
    let result = &listed["result"];
    assert_eq!(
        (&result["ttlMs"], &result["cacheScope"]),
        (&json!(0), &json!("private")),
        "servers MUST give a ttlMs >= 0: {listed:#}"
    );
    assert!(result["tools"].is_array(), "{listed:#}");
    // The session era gets the child's bytes.
    let session = initialize(&daemon, "acme").await;
    let got = crate::util::rpc(&daemon, "acme", &session, "tools/list", json!({})).await;
    assert_eq!(got["result"]["ttlMs"], -5, "{got:#}");
}

#[tokio::test]
async fn the_ts_sdk_mirrors_the_declared_headers_and_mcpmux_accepts_them() {
    let (_clients, daemon) = fake_daemon(&["--header-tools"]).await;
    let url = daemon.url();
    let args = [url.as_str(), "acme", "50"];
    let summary =
        crate::interop::node_summary("ts_param_headers.mjs", &args, Duration::from_secs(60)).await;
    let tools = summary["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "route"), "{summary:#}");
    assert!(
        !tools.iter().any(|t| t == "bad_route"),
        "the SDK drops a tool whose declarations break the rules, as mcpmux assumes: {summary:#}"
    );
    // `route` declares region, opts.limit and opts.dry: a call without matching headers
    // would have been refused, so the SDK's (a base64 one among them) passed the check.
    assert_eq!(summary["routed"]["is_error"], false, "{summary:#}");
    assert_eq!(
        summary["routed"]["content"][0]["text"], "routed",
        "{summary:#}"
    );
    assert_eq!(
        summary["routed"]["arguments"],
        json!({"region": "Hello, 世界", "opts": {"limit": 42, "dry": false}, "query": "q"})
    );
}
