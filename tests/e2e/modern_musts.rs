//! The rest of what 2026-07-28 asks of a server, bridged onto a session-era child (the
//! README's "Stateless callers" table): `serverInfo` on results, `Mcp-Param-*` headers
//! checked against the child's tool schemas, and the request-timeout code.

use serde_json::json;

use crate::stateless::Probe;
use crate::util::{Daemon, TempClients, call_tool, fake_child_spec, initialize};

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
