//! Browser-origin protection on the tenant port (README "Origin and Host"): loopback origins
//! pass by default, foreign ones are 403 wherever they appear, a DNS-rebinding request (Host
//! and Origin of a foreign name) is refused, and `--allowed-hosts` checks `Host` when given.
//! Raw HTTP, so each request carries exactly the `Host` and `Origin` headers written here.

use serde_json::{Value, json};

use crate::util::{
    ACCEPT_BOTH, Daemon, TempClients, assert_session_works, echo_spec, initialize,
    initialize_params, raw_http,
};

async fn demo_daemon(extra: &[&str]) -> (TempClients, Daemon) {
    let clients = TempClients::new();
    clients.write("demo", &echo_spec());
    let daemon = Daemon::start(&clients, extra).await;
    (clients, daemon)
}

/// POSTs `initialize` for tenant `demo` with exactly these `Host` and extra header lines;
/// returns the status and the JSON body (`Value::Null` when the body is not JSON).
async fn initialize_raw(daemon: &Daemon, host: &str, extra: &[&str]) -> (u16, Value) {
    let body =
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
    let body = serde_json::to_vec(&body).unwrap();
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nX-Client-ID: demo\r\nAccept: {ACCEPT_BOTH}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close",
        body.len()
    );
    for line in extra {
        head.push_str("\r\n");
        head.push_str(line);
    }
    let resp = raw_http(daemon.addr(), &head, &body).await;
    let json = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, json)
}

/// The request was refused with 403 and exactly `{error, code}` with this `code`.
fn assert_refused(got: &(u16, Value), code: &str, case: &str) {
    assert_eq!(
        (got.0, &got.1["code"]),
        (403, &json!(code)),
        "{case} must be refused with 403 {code}: {:?}",
        got.1
    );
    assert!(
        got.1.as_object().is_some_and(|o| o.len() == 2) && got.1["error"].is_string(),
        "the 403 body must be exactly {{error, code}}: {}",
        got.1
    );
}

fn assert_admitted(got: &(u16, Value), case: &str) {
    assert_eq!(
        got.0, 200,
        "{case} must be admitted and initialized: {:?}",
        got.1
    );
    assert!(
        got.1["result"]["protocolVersion"].is_string(),
        "{:?}",
        got.1
    );
}

#[tokio::test]
async fn loopback_origins_pass_by_default_and_foreign_ones_are_refused_in_any_position() {
    let (_clients, daemon) = demo_daemon(&[]).await;
    let own = daemon.addr().to_string();
    let port = daemon.addr().port();
    let own_origin = format!("Origin: http://{own}");
    let localhost = format!("Origin: http://localhost:{port}");
    for (case, origin) in [
        ("the listener's own loopback origin", own_origin.as_str()),
        ("a localhost origin", localhost.as_str()),
        (
            "an https [::1] origin on another port",
            "Origin: https://[::1]:3000",
        ),
        ("another 127/8 address", "Origin: http://127.1.2.3"),
    ] {
        assert_admitted(&initialize_raw(&daemon, &own, &[origin]).await, case);
    }
    let foreign = "Origin: http://evil.example";
    for (case, origins) in [
        ("a foreign origin", vec![foreign]),
        (
            "a look-alike of localhost",
            vec!["Origin: http://localhost.evil.example"],
        ),
        ("the opaque origin null", vec!["Origin: null"]),
        ("loopback then foreign", vec![own_origin.as_str(), foreign]),
        ("foreign then loopback", vec![foreign, own_origin.as_str()]),
    ] {
        let got = initialize_raw(&daemon, &own, &origins).await;
        assert_refused(&got, "FORBIDDEN_ORIGIN", case);
    }
    // DNS rebinding: evil.example re-pointed at 127.0.0.1, so the browser names it in both.
    let rebinding = initialize_raw(
        &daemon,
        &format!("evil.example:{port}"),
        &[&format!("Origin: http://evil.example:{port}")],
    )
    .await;
    assert_refused(
        &rebinding,
        "FORBIDDEN_ORIGIN",
        "Host and Origin evil.example",
    );
    // Nothing was lost: the tenant still serves a session.
    let session = initialize(&daemon, "demo").await;
    assert_session_works(&daemon, "demo", &session, "after the refusals").await;
}

#[tokio::test]
async fn allowed_origins_extend_the_loopback_default() {
    let (_clients, daemon) = demo_daemon(&["--allowed-origins", "https://app.example"]).await;
    let own = daemon.addr().to_string();
    let listed = initialize_raw(&daemon, &own, &["Origin: https://app.example"]).await;
    assert_admitted(&listed, "a listed origin");
    let loopback = initialize_raw(&daemon, &own, &["Origin: http://localhost"]).await;
    assert_admitted(&loopback, "a loopback origin beside the list");
    let pair = [
        "Origin: https://app.example",
        "Origin: https://app.example.evil",
    ];
    let got = initialize_raw(&daemon, &own, &pair).await;
    assert_refused(
        &got,
        "FORBIDDEN_ORIGIN",
        "a listed origin with an unlisted one",
    );
}

#[tokio::test]
async fn host_is_unchecked_by_default_and_checked_with_allowed_hosts() {
    let (_clients, open) = demo_daemon(&[]).await;
    // A reverse proxy passes its public name: accepted when --allowed-hosts is not given.
    assert_admitted(
        &initialize_raw(&open, "mcp.example", &[]).await,
        "a proxy's Host",
    );

    let (_clients, strict) =
        demo_daemon(&["--allowed-hosts", "mcp.example,other.example:8443"]).await;
    let port = strict.addr().port();
    for host in [
        strict.addr().to_string(),
        format!("localhost:{port}"),
        "mcp.example".to_string(),
        "MCP.example:443".to_string(),
        "other.example:8443".to_string(),
    ] {
        assert_admitted(
            &initialize_raw(&strict, &host, &[]).await,
            &format!("Host {host}"),
        );
    }
    for host in ["evil.example", "other.example:8444", "mcp.example.evil"] {
        let got = initialize_raw(&strict, host, &[]).await;
        assert_refused(&got, "FORBIDDEN_HOST", &format!("Host {host}"));
    }
    // The rebinding page's same-origin request, without Origin: only --allowed-hosts sees it.
    let got = initialize_raw(&strict, &format!("evil.example:{port}"), &[]).await;
    assert_refused(&got, "FORBIDDEN_HOST", "a rebinding name without Origin");
}
