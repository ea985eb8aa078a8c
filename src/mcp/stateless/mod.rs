//! The stateless era (protocol 2026-07-28), bridged onto session-era children.
//!
//! Owns the MCP rules of that era, independent of HTTP: which requests belong to it
//! (here), the validation ladder (`ladder`: `_meta`, then headers against the body,
//! then the version), and what crosses the bridge (`bridge`: the `server/discover`
//! result built from the child's cached `initialize` result, the synthetic `initialize`
//! params used when a stateless caller is a tenant's first, and the fields 2026-07-28
//! requires on results that a session-era child leaves out), and `Mcp-Param-*` headers
//! checked against the child's tool schemas (`param_headers`). The HTTP side
//! (`http::stateless`) extracts headers and relays; the relay itself is [`super::relay`].
//!
//! Invariant: only a request that really breaks a 2026-07-28 rule gets one of the
//! stateless-era error codes (-32020..-32022). Anything else that cannot be served is a
//! plain JSON-RPC error, so dual-era callers fall back to `initialize` (DESIGN §3).

mod bridge;
mod ladder;
mod param_headers;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{self, Envelope, Kind};
use super::interest::Level;

pub use bridge::{
    asks, complete_reply, discover_result, error_code, init_params, is_method_not_found,
};
pub use ladder::{Admitted, Rejection, decode_header_value, validate};
pub use param_headers::{Declared, ToolHeaders, check as check_param_headers};

/// The stateless protocol version mcpmux serves.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Every version served, newest first: the stateless one, then the session-era ones
/// (reached through `initialize`). Advertised by `server/discover` and in -32022 errors,
/// so a dual-era caller that prefers a session-era version knows to fall back.
pub const SUPPORTED_VERSIONS: [&str; 5] = [
    STATELESS_VERSION,
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];
/// Initialize-era protocol versions; a caller asking for one in `initialize` gets it.
pub const SESSION_ERA_VERSIONS: &[&str] = match SUPPORTED_VERSIONS.split_first() {
    Some((_, rest)) => rest,
    None => &[],
};
/// The version a synthetic `initialize` asks a child for: the newest session-era one.
pub const CHILD_VERSION: &str = SUPPORTED_VERSIONS[1];

/// 2026-07-28: HTTP headers missing, malformed or not matching the body (HTTP 400).
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: serving the request needs a client capability it did not declare (HTTP 400).
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// 2026-07-28: the request's protocol version is not served (HTTP 400).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// `_meta` key of the request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of the caller's capabilities for this request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the caller's identity.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key of the least severe log message a request wants on its reply.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// `_meta` key of the server's identity on results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Session-era methods that 2026-07-28 removed: answered "method not found" without the
/// child.
const NOT_IN_THIS_ERA: [&str; 4] = [
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// One routing header as the transport received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    /// Not sent.
    Absent,
    /// Sent once, as visible ASCII.
    Value(&'a str),
    /// Sent more than once, or not visible ASCII; the reason completes "the header ...".
    Malformed(&'static str),
}

/// The headers 2026-07-28 mirrors from the body.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    /// `MCP-Protocol-Version`.
    pub version: Header<'a>,
    /// `Mcp-Method`.
    pub method: Header<'a>,
    /// `Mcp-Name`.
    pub name: Header<'a>,
}

/// The parts of a request's `params` this era reads, borrowed from its bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestMeta<'a> {
    /// `params._meta` was present and an object.
    pub has_meta: bool,
    /// `_meta["io.modelcontextprotocol/protocolVersion"]`, as written.
    pub protocol_version: Option<&'a RawValue>,
    /// `_meta["io.modelcontextprotocol/clientCapabilities"]`, as written.
    pub client_capabilities: Option<&'a RawValue>,
    /// `_meta["io.modelcontextprotocol/clientInfo"]`, as written.
    pub client_info: Option<&'a RawValue>,
    /// `_meta["io.modelcontextprotocol/logLevel"]`, as written.
    pub log_level: Option<&'a RawValue>,
    /// `params.name` (the `Mcp-Name` source of `tools/call` and `prompts/get`).
    pub name: Option<&'a RawValue>,
    /// `params.uri` (the `Mcp-Name` source of `resources/read`).
    pub uri: Option<&'a RawValue>,
    /// `params.arguments` (what `Mcp-Param-*` headers mirror in `tools/call`).
    pub arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaWire<'a> {
    #[serde(borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientInfo")]
    client_info: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/logLevel")]
    log_level: Option<&'a RawValue>,
}

/// Reads what this era needs from `params`; params that are not an object read as empty
/// (the ladder then refuses them for lacking `_meta`).
pub fn request_meta(params: Option<&RawValue>) -> RequestMeta<'_> {
    let Some(wire) = envelope::params_head(params) else {
        return RequestMeta::default();
    };
    let meta = wire
        .meta
        .and_then(|m| serde_json::from_str::<MetaWire<'_>>(m.get()).ok());
    RequestMeta {
        has_meta: meta.is_some(),
        protocol_version: meta.as_ref().and_then(|m| m.protocol_version),
        client_capabilities: meta.as_ref().and_then(|m| m.client_capabilities),
        client_info: meta.as_ref().and_then(|m| m.client_info),
        log_level: meta.as_ref().and_then(|m| m.log_level),
        name: wire.name,
        uri: wire.uri,
        arguments: wire.arguments,
    }
}

/// A JSON string's value; `None` for any other JSON.
fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

/// True when a sessionless message belongs to the stateless era: a request (other than
/// `initialize`) or notification whose version header or `_meta` names a version that
/// is not a session-era one. Everything else keeps the session-era rules, whose errors
/// carry no stateless-era code, so a dual-era caller falls back to `initialize`.
pub fn is_stateless(env: &Envelope<'_>, version: Header<'_>, meta: &RequestMeta<'_>) -> bool {
    let candidate = match env.kind {
        Kind::Request => env.method.as_deref() != Some("initialize"),
        Kind::Notification => true,
        Kind::Result | Kind::Error => false, // 2026-07-28 callers never send responses
    };
    let modern = |v: &str| !SESSION_ERA_VERSIONS.contains(&v);
    let header_modern = matches!(version, Header::Value(v) if modern(v));
    // A version in `_meta` that is not even a string is still a stateless-era claim;
    // the ladder refuses it with the right error.
    let meta_modern = meta
        .protocol_version
        .is_some_and(|raw| as_str(raw).is_none_or(|v| modern(&v)));
    candidate && (header_modern || meta_modern)
}

/// The log level a request opted in to: `Ok(None)` without the opt-in, `Err` for a value
/// that names no level (the spec says: reject with -32602).
pub fn log_level(meta: &RequestMeta<'_>) -> Result<Option<Level>, String> {
    let Some(raw) = meta.log_level else {
        return Ok(None);
    };
    match as_str(raw).as_deref().and_then(Level::parse) {
        Some(level) => Ok(Some(level)),
        None => Err(format!(
            "{META_LOG_LEVEL} must be one of debug, info, notice, warning, error, critical, alert, emergency; got {}",
            raw.get().chars().take(64).collect::<String>()
        )),
    }
}

/// Why `method` is not served in this era without asking the child, if it is not.
pub fn not_in_this_era(method: &str) -> Option<String> {
    if !NOT_IN_THIS_ERA.contains(&method) {
        return None;
    }
    Some(format!(
        "{method} is not part of protocol {STATELESS_VERSION}"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::mcp::envelope;

    const VERSION: Header<'static> = Header::Value(STATELESS_VERSION);

    fn request(method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    }

    fn meta() -> Value {
        json!({
            META_PROTOCOL_VERSION: STATELESS_VERSION,
            META_CLIENT_CAPABILITIES: {},
        })
    }

    #[test]
    fn era_follows_the_version_claims_of_sessionless_messages() {
        let with_meta = request("tools/list", json!({"_meta": meta()}));
        let legacy_meta = request(
            "tools/list",
            json!({"_meta": {META_PROTOCOL_VERSION: "2025-11-25"}}),
        );
        let odd_meta = request("tools/list", json!({"_meta": {META_PROTOCOL_VERSION: 7}}));
        let plain = request("tools/list", json!({}));
        let init = request("initialize", json!({"_meta": meta()}));
        let response = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let note = r#"{"jsonrpc":"2.0","method":"notifications/x"}"#;
        let cases: &[(&str, Header<'_>, bool)] = &[
            (&with_meta, Header::Absent, true),
            (&with_meta, Header::Value("2025-11-25"), true),
            (&plain, VERSION, true),
            (&plain, Header::Value("2099-01-01"), true),
            (&odd_meta, Header::Absent, true),
            (note, VERSION, true),
            (&plain, Header::Absent, false),
            (&plain, Header::Value("2025-11-25"), false),
            (&plain, Header::Malformed("is given more than once"), false),
            (&legacy_meta, Header::Value("2025-11-25"), false),
            (&init, VERSION, false),
            (response, VERSION, false),
            (note, Header::Absent, false),
        ];
        for (text, header, want) in cases {
            let env = envelope::parse(text.as_bytes()).unwrap();
            let meta = request_meta(env.params);
            assert_eq!(
                is_stateless(&env, *header, &meta),
                *want,
                "{text} with {header:?}"
            );
        }
    }

    #[test]
    fn removed_methods_are_named() {
        assert!(not_in_this_era("ping").is_some());
        assert!(not_in_this_era("subscriptions/listen").is_none(), "bridged");
        assert!(not_in_this_era("tools/call").is_none());
    }
}
