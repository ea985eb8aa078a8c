//! The stateless era (protocol 2026-07-28), bridged onto session-era children.
//!
//! Owns the MCP rules of that era, independent of HTTP: which requests belong to it, the
//! validation ladder (`_meta`, then headers against the body, then the version), the
//! `server/discover` result built from the child's cached `initialize` result, the
//! synthetic `initialize` params used when a stateless caller is a tenant's first, and
//! the fields 2026-07-28 requires on results that a session-era child leaves out. The
//! HTTP side (`http::stateless`) extracts headers and relays; the relay itself is
//! [`super::relay`].
//!
//! Invariant: only a request that really breaks a 2026-07-28 rule gets one of the
//! stateless-era error codes (-32020..-32022). Anything else that cannot be served is a
//! plain JSON-RPC error, so dual-era callers fall back to `initialize` (DESIGN §3).

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{Envelope, INVALID_PARAMS, Kind, span_of, splice};

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
/// 2026-07-28: the request's protocol version is not served (HTTP 400).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// `_meta` key of the request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of the caller's capabilities for this request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the caller's identity.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key of the server's identity on results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Results that must carry `ttlMs` and `cacheScope` (2026-07-28 `CacheableResult`).
/// `server/discover` is one too, but mcpmux builds that result itself.
const CACHEABLE_METHODS: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// Session-era methods that 2026-07-28 removed, and `subscriptions/listen`, which a
/// session-era child cannot serve: answered "method not found" without the child.
const NOT_IN_THIS_ERA: [&str; 5] = [
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
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
    /// `params.name` (the `Mcp-Name` source of `tools/call` and `prompts/get`).
    pub name: Option<&'a RawValue>,
    /// `params.uri` (the `Mcp-Name` source of `resources/read`).
    pub uri: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ParamsWire<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    uri: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaWire<'a> {
    #[serde(borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientInfo")]
    client_info: Option<&'a RawValue>,
}

/// Reads what this era needs from `params`; params that are not an object read as empty
/// (the ladder then refuses them for lacking `_meta`).
pub fn request_meta(params: Option<&RawValue>) -> RequestMeta<'_> {
    let Some(wire) = params.and_then(|p| serde_json::from_str::<ParamsWire<'_>>(p.get()).ok())
    else {
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
        name: wire.name,
        uri: wire.uri,
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

/// Why a stateless request is refused: the JSON-RPC error of an HTTP 400.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// JSON-RPC error code.
    pub code: i64,
    /// Human message.
    pub message: String,
    /// `error.data`, when the code defines one.
    pub data: Option<serde_json::Value>,
}

impl Rejection {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
}

/// A stateless request that passed the ladder.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    /// The caller's capabilities for this request (a JSON object).
    pub client_capabilities: &'a RawValue,
    /// The caller's identity, when it sent one.
    pub client_info: Option<&'a RawValue>,
}

/// The 2026-07-28 validation ladder, first failure wins: required `_meta` (-32602), then
/// headers against the body (-32020), then the version (-32022). Headers are checked
/// before the version so a caller that contradicts itself is told so.
pub fn validate<'a>(
    method: &str,
    headers: &Headers<'_>,
    meta: &RequestMeta<'a>,
) -> Result<Admitted<'a>, Rejection> {
    let (Some(version), Some(caps)) = (meta.protocol_version, meta.client_capabilities) else {
        return Err(missing_meta(meta));
    };
    let version = as_str(version);
    check_version_header(headers.version, version.as_deref())?;
    check_method_header(headers.method, method)?;
    check_name_header(headers.name, method, meta)?;
    let Some(version) = version else {
        let msg = format!("params._meta[\"{META_PROTOCOL_VERSION}\"] must be a string");
        return Err(Rejection::new(INVALID_PARAMS, msg));
    };
    if version != STATELESS_VERSION {
        return Err(unsupported(&version));
    }
    if !caps.get().starts_with('{') {
        let msg = format!("params._meta[\"{META_CLIENT_CAPABILITIES}\"] must be an object");
        return Err(Rejection::new(INVALID_PARAMS, msg));
    }
    Ok(Admitted {
        client_capabilities: caps,
        client_info: meta.client_info.filter(|info| info.get().starts_with('{')),
    })
}

fn missing_meta(meta: &RequestMeta<'_>) -> Rejection {
    if !meta.has_meta {
        let msg = format!(
            "params._meta must be an object carrying \"{META_PROTOCOL_VERSION}\" and \"{META_CLIENT_CAPABILITIES}\" (protocol {STATELESS_VERSION})"
        );
        return Rejection::new(INVALID_PARAMS, msg);
    }
    let missing: Vec<&str> = [
        (meta.protocol_version, META_PROTOCOL_VERSION),
        (meta.client_capabilities, META_CLIENT_CAPABILITIES),
    ]
    .iter()
    .filter(|(value, _)| value.is_none())
    .map(|(_, key)| *key)
    .collect();
    let msg = format!(
        "params._meta lacks the required key(s) {}",
        missing.join(", ")
    );
    Rejection::new(INVALID_PARAMS, msg)
}

fn header_value<'h>(header: Header<'h>, name: &str) -> Result<&'h str, Rejection> {
    match header {
        Header::Value(value) => Ok(value),
        Header::Absent => Err(Rejection::new(
            HEADER_MISMATCH,
            format!("{name} header is required (protocol {STATELESS_VERSION})"),
        )),
        Header::Malformed(why) => Err(Rejection::new(
            HEADER_MISMATCH,
            format!("{name} header {why}"),
        )),
    }
}

fn check_version_header(header: Header<'_>, body: Option<&str>) -> Result<(), Rejection> {
    let value = header_value(header, "MCP-Protocol-Version")?;
    if body == Some(value) {
        return Ok(());
    }
    let body = body.map_or_else(|| "a non-string".to_string(), |b| format!("`{b}`"));
    let msg = format!(
        "MCP-Protocol-Version header `{value}` does not match the body's _meta protocol version {body}"
    );
    Err(Rejection::new(HEADER_MISMATCH, msg))
}

fn check_method_header(header: Header<'_>, method: &str) -> Result<(), Rejection> {
    let value = header_value(header, "Mcp-Method")?;
    if value == method {
        return Ok(());
    }
    let msg = format!("Mcp-Method header `{value}` does not match the body's method `{method}`");
    Err(Rejection::new(HEADER_MISMATCH, msg))
}

/// `Mcp-Name` is required where the spec names a source for it (`tools/call`,
/// `prompts/get`: `params.name`; `resources/read`: `params.uri`) and the body has that
/// field; elsewhere it is not read.
fn check_name_header(
    header: Header<'_>,
    method: &str,
    meta: &RequestMeta<'_>,
) -> Result<(), Rejection> {
    let (field, source) = match method {
        "tools/call" | "prompts/get" => ("name", meta.name),
        "resources/read" => ("uri", meta.uri),
        _ => return Ok(()),
    };
    let Some(source) = source else {
        return Ok(()); // the child refuses the missing field with its own -32602
    };
    let value = header_value(header, "Mcp-Name")?;
    let Some(decoded) = decode_header_value(value) else {
        let msg = "Mcp-Name header is not valid `=?base64?...?=` (canonical base64 of UTF-8)";
        return Err(Rejection::new(HEADER_MISMATCH, msg));
    };
    if as_str(source).as_deref() == Some(decoded.as_ref()) {
        return Ok(());
    }
    let msg = format!(
        "Mcp-Name header `{decoded}` does not match the body's params.{field} {}",
        source.get()
    );
    Err(Rejection::new(HEADER_MISMATCH, msg))
}

/// A header value with the 2026-07-28 `=?base64?...?=` form undone; `None` when that
/// form wraps something other than canonical base64 of UTF-8.
pub fn decode_header_value(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(value));
    };
    // The standard engine rejects non-canonical padding and trailing bits.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .ok()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

fn unsupported(requested: &str) -> Rejection {
    let message = format!(
        "unsupported protocol version `{requested}`; this server speaks {STATELESS_VERSION} statelessly and {} through initialize",
        SESSION_ERA_VERSIONS.join(", ")
    );
    Rejection {
        code: UNSUPPORTED_PROTOCOL_VERSION,
        message,
        data: Some(serde_json::json!({
            "supported": SUPPORTED_VERSIONS,
            "requested": requested,
        })),
    }
}

/// Why `method` is not served in this era without asking the child, if it is not.
pub fn not_in_this_era(method: &str) -> Option<String> {
    if !NOT_IN_THIS_ERA.contains(&method) {
        return None;
    }
    if method == "subscriptions/listen" {
        return Some(
            "subscriptions/listen is not available through mcpmux: the child speaks a session-era protocol"
                .into(),
        );
    }
    Some(format!(
        "{method} is not part of protocol {STATELESS_VERSION}"
    ))
}

#[derive(serde::Serialize)]
struct SessionEraCaps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    experimental: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roots: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    elicitation: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ClientCapsWire<'a> {
    #[serde(borrow)]
    experimental: Option<&'a RawValue>,
    #[serde(borrow)]
    roots: Option<&'a RawValue>,
    #[serde(borrow)]
    sampling: Option<&'a RawValue>,
    #[serde(borrow)]
    elicitation: Option<&'a RawValue>,
}

/// `initialize` params for a child whose first caller is stateless: the newest
/// session-era version, the caller's capabilities where 2025-11-25 has the same
/// capability (`extensions` and anything newer are left out), and its `clientInfo`, or
/// mcpmux's own when it sent none.
pub fn init_params(admitted: &Admitted<'_>) -> String {
    let caps: Option<ClientCapsWire<'_>> =
        serde_json::from_str(admitted.client_capabilities.get()).ok();
    let caps = caps.map_or(
        SessionEraCaps {
            experimental: None,
            roots: None,
            sampling: None,
            elicitation: None,
        },
        |c| SessionEraCaps {
            experimental: c.experimental,
            roots: c.roots,
            sampling: c.sampling,
            elicitation: c.elicitation,
        },
    );
    let caps = serde_json::to_string(&caps).unwrap_or_else(|_| "{}".into());
    let info = admitted.client_info.map_or_else(
        || serde_json::json!({"name": "mcpmux", "version": env!("CARGO_PKG_VERSION")}).to_string(),
        |raw| raw.get().to_string(),
    );
    format!(r#"{{"protocolVersion":"{CHILD_VERSION}","capabilities":{caps},"clientInfo":{info}}}"#)
}

#[derive(Deserialize)]
struct InitResultWire<'a> {
    #[serde(borrow)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow, rename = "serverInfo")]
    server_info: Option<&'a RawValue>,
}

/// The `server/discover` result, from the child's raw `initialize` result: its
/// capabilities and instructions byte for byte, its `serverInfo` under `_meta`, every
/// version mcpmux serves, and cache hints that never outlive a child (a reload may
/// start one with other capabilities).
pub fn discover_result(init_result: &[u8]) -> Vec<u8> {
    let wire = serde_json::from_slice(init_result).unwrap_or(InitResultWire {
        capabilities: None,
        instructions: None,
        server_info: None,
    });
    let versions = serde_json::to_string(&SUPPORTED_VERSIONS).unwrap_or_else(|_| "[]".into());
    let mut out = format!(
        r#"{{"resultType":"complete","supportedVersions":{versions},"capabilities":{}"#,
        wire.capabilities.map_or("{}", RawValue::get)
    );
    if let Some(instructions) = wire.instructions {
        out.push_str(&format!(r#","instructions":{}"#, instructions.get()));
    }
    out.push_str(r#","ttlMs":0,"cacheScope":"private""#);
    if let Some(info) = wire.server_info {
        out.push_str(&format!(
            r#","_meta":{{"{META_SERVER_INFO}":{}}}"#,
            info.get()
        ));
    }
    out.push('}');
    out.into_bytes()
}

#[derive(Deserialize)]
struct ReplyWire<'a> {
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// Deserializes to true when the field is present at all, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

#[derive(Deserialize)]
struct ResultFieldsWire<'a> {
    #[serde(default, rename = "ttlMs", deserialize_with = "present")]
    ttl_ms: bool,
    #[serde(default, rename = "cacheScope", deserialize_with = "present")]
    cache_scope: bool,
    #[serde(borrow, rename = "resultType")]
    result_type: Option<Cow<'a, str>>,
}

/// The child's final reply with what 2026-07-28 requires of a result and a session-era
/// child leaves out: `resultType` (SDKs of the era refuse results without it), and on
/// complete results of the cacheable methods `ttlMs` and `cacheScope`, with the most
/// conservative values (as the SDKs default them). Byte-exact otherwise; errors and
/// non-object results pass unchanged.
pub fn complete_reply(method: &str, reply: Bytes) -> Bytes {
    match missing_fields(method, &reply) {
        Some((at, fields)) => splice(&reply, &mut [(at..at, fields.as_bytes())]).into(),
        None => reply,
    }
}

/// Where to insert which fields into the reply's `result` object, if any are missing.
fn missing_fields(method: &str, reply: &[u8]) -> Option<(usize, String)> {
    let result = serde_json::from_slice::<ReplyWire<'_>>(reply)
        .ok()?
        .result?;
    let has: ResultFieldsWire<'_> = serde_json::from_str(result.get()).ok()?;
    let mut fields = Vec::with_capacity(3);
    if has.result_type.is_none() {
        fields.push(r#""resultType":"complete""#);
    }
    // Only complete results are cacheable.
    let complete = has.result_type.is_none_or(|t| t == "complete");
    if complete && CACHEABLE_METHODS.contains(&method) {
        if !has.ttl_ms {
            fields.push(r#""ttlMs":0"#);
        }
        if !has.cache_scope {
            fields.push(r#""cacheScope":"private""#);
        }
    }
    if fields.is_empty() {
        return None;
    }
    let span = span_of(reply, result.get())?;
    let empty = result.get()[1..].trim_start().starts_with('}');
    let mut text = fields.join(",");
    if !empty {
        text.push(',');
    }
    Some((span.start + 1, text)) // just after the object's `{`
}

#[derive(Deserialize)]
struct ErrorCodeWire {
    code: Option<i64>,
}

/// True when `reply` is a JSON-RPC error "method not found" (HTTP 404 in this era).
pub fn is_method_not_found(reply: &[u8]) -> bool {
    let Some(error) = serde_json::from_slice::<ReplyWire<'_>>(reply)
        .ok()
        .and_then(|r| r.error)
    else {
        return false;
    };
    serde_json::from_str::<ErrorCodeWire>(error.get())
        .is_ok_and(|e| e.code == Some(super::envelope::METHOD_NOT_FOUND))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::mcp::envelope::{self, INVALID_PARAMS};

    const VERSION: Header<'static> = Header::Value(STATELESS_VERSION);

    /// A request, its version, method and name headers, and the ladder's verdict.
    type LadderCase = (
        String,
        Header<'static>,
        Header<'static>,
        Header<'static>,
        Result<(), i64>,
    );

    fn request(method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    }

    fn meta() -> Value {
        json!({
            META_PROTOCOL_VERSION: STATELESS_VERSION,
            META_CLIENT_CAPABILITIES: {},
        })
    }

    /// Runs the ladder on `text` with the given headers; `Ok(())` or the error code.
    fn ladder(
        text: &str,
        version: Header<'_>,
        method: Header<'_>,
        name: Header<'_>,
    ) -> Result<(), i64> {
        let env = envelope::parse(text.as_bytes()).unwrap();
        let meta = request_meta(env.params);
        let headers = Headers {
            version,
            method,
            name,
        };
        validate(env.method.as_deref().unwrap(), &headers, &meta)
            .map(|_| ())
            .map_err(|r| r.code)
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
    fn ladder_order_and_codes() {
        let call = |meta: Value| {
            request(
                "tools/call",
                json!({"name": "echo", "arguments": {}, "_meta": meta}),
            )
        };
        let ok = call(meta());
        let m = Header::Value("tools/call");
        let n = Header::Value("echo");
        let absent = Header::Absent;
        let cases: Vec<LadderCase> = vec![
            (ok.clone(), VERSION, m, n, Ok(())),
            // Required `_meta` comes first, even before headers.
            (
                request("tools/call", json!({"name": "echo"})),
                absent,
                absent,
                absent,
                Err(INVALID_PARAMS),
            ),
            (
                call(json!({META_PROTOCOL_VERSION: STATELESS_VERSION})),
                VERSION,
                m,
                n,
                Err(INVALID_PARAMS),
            ),
            (
                call(json!({META_CLIENT_CAPABILITIES: {}})),
                VERSION,
                m,
                n,
                Err(INVALID_PARAMS),
            ),
            // Then the headers against the body.
            (ok.clone(), absent, m, n, Err(HEADER_MISMATCH)),
            (
                ok.clone(),
                Header::Value("2025-11-25"),
                m,
                n,
                Err(HEADER_MISMATCH),
            ),
            (
                ok.clone(),
                Header::Malformed("is given more than once"),
                m,
                n,
                Err(HEADER_MISMATCH),
            ),
            (ok.clone(), VERSION, absent, n, Err(HEADER_MISMATCH)),
            (
                ok.clone(),
                VERSION,
                Header::Value("tools/list"),
                n,
                Err(HEADER_MISMATCH),
            ),
            (ok.clone(), VERSION, m, absent, Err(HEADER_MISMATCH)),
            (
                ok.clone(),
                VERSION,
                m,
                Header::Value("add"),
                Err(HEADER_MISMATCH),
            ),
            (
                ok.clone(),
                VERSION,
                m,
                Header::Value("=?base64?ZWNobw==?="),
                Ok(()),
            ),
            (
                ok.clone(),
                VERSION,
                m,
                Header::Value("=?base64?ZWNobw?="),
                Err(HEADER_MISMATCH),
            ),
            // A header mismatch wins over an unsupported version.
            (
                call(json!({META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}})),
                VERSION,
                m,
                n,
                Err(HEADER_MISMATCH),
            ),
            (
                call(json!({META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}})),
                Header::Value("2099-01-01"),
                m,
                n,
                Err(UNSUPPORTED_PROTOCOL_VERSION),
            ),
            (
                call(
                    json!({META_PROTOCOL_VERSION: STATELESS_VERSION, META_CLIENT_CAPABILITIES: []}),
                ),
                VERSION,
                m,
                n,
                Err(INVALID_PARAMS),
            ),
        ];
        for (text, v, m, n, want) in cases {
            assert_eq!(
                ladder(&text, v, m, n),
                want,
                "{text} with {v:?} {m:?} {n:?}"
            );
        }
    }

    #[test]
    fn mcp_name_is_read_only_where_the_spec_names_a_source() {
        let list = request("tools/list", json!({"_meta": meta()}));
        let m = Header::Value("tools/list");
        assert_eq!(ladder(&list, VERSION, m, Header::Absent), Ok(()));
        assert_eq!(ladder(&list, VERSION, m, Header::Value("whatever")), Ok(()));
        let read = request(
            "resources/read",
            json!({"uri": "file:///a b", "_meta": meta()}),
        );
        let m = Header::Value("resources/read");
        assert_eq!(
            ladder(&read, VERSION, m, Header::Value("file:///a b")),
            Ok(())
        );
        assert_eq!(
            ladder(&read, VERSION, m, Header::Value("file:///a")),
            Err(HEADER_MISMATCH)
        );
        let odd = request("prompts/get", json!({"name": 5, "_meta": meta()}));
        let m = Header::Value("prompts/get");
        assert_eq!(
            ladder(&odd, VERSION, m, Header::Value("5")),
            Err(HEADER_MISMATCH)
        );
    }

    #[test]
    fn unsupported_version_lists_every_served_version() {
        let r = unsupported("2099-01-01");
        assert_eq!(r.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(
            r.data,
            Some(
                json!({"supported": ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"], "requested": "2099-01-01"})
            )
        );
        assert_eq!(SESSION_ERA_VERSIONS, &SUPPORTED_VERSIONS[1..]);
        assert_eq!(CHILD_VERSION, "2025-11-25");
    }

    #[test]
    fn header_values_decode_the_base64_form() {
        assert_eq!(decode_header_value("echo").as_deref(), Some("echo"));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?not base64?="), None);
        assert_eq!(decode_header_value("=?base64?/w==?="), None, "not UTF-8");
        assert_eq!(
            decode_header_value("=?base64?ZWNobx==?="),
            None,
            "non-canonical"
        );
    }

    #[test]
    fn synthetic_initialize_keeps_session_era_capabilities_and_client_info() {
        let text = request(
            "server/discover",
            json!({"_meta": {
                META_PROTOCOL_VERSION: STATELESS_VERSION,
                META_CLIENT_CAPABILITIES: {"sampling": {"tools": {}}, "roots": {}, "extensions": {"x.y/z": {}}, "x-vendor": 1},
                META_CLIENT_INFO: {"name": "c", "version": "1", "x": [1]},
            }}),
        );
        let env = envelope::parse(text.as_bytes()).unwrap();
        let meta = request_meta(env.params);
        let admitted = Admitted {
            client_capabilities: meta.client_capabilities.unwrap(),
            client_info: meta.client_info,
        };
        let params: Value = serde_json::from_str(&init_params(&admitted)).unwrap();
        assert_eq!(
            params,
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {"roots": {}, "sampling": {"tools": {}}},
                "clientInfo": {"name": "c", "version": "1", "x": [1]},
            })
        );
        let anonymous = Admitted {
            client_capabilities: meta.client_capabilities.unwrap(),
            client_info: None,
        };
        let params: Value = serde_json::from_str(&init_params(&anonymous)).unwrap();
        assert_eq!(params["clientInfo"]["name"], "mcpmux");
    }

    #[test]
    fn discover_result_carries_the_child_fields_byte_for_byte() {
        let init = br#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{"listChanged":true},"x-vendor":{"k":[1,2.50]}},"serverInfo":{"name":"s","version":"9"},"instructions":"use \"echo\""}"#;
        let out = String::from_utf8(discover_result(init)).unwrap();
        assert!(
            out.contains(
                r#""capabilities":{"tools":{"listChanged":true},"x-vendor":{"k":[1,2.50]}}"#
            ),
            "{out}"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({
                "resultType": "complete",
                "supportedVersions": SUPPORTED_VERSIONS,
                "capabilities": {"tools": {"listChanged": true}, "x-vendor": {"k": [1, 2.5]}},
                "instructions": "use \"echo\"",
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {META_SERVER_INFO: {"name": "s", "version": "9"}},
            })
        );
        let bare: Value = serde_json::from_slice(&discover_result(b"{}")).unwrap();
        assert_eq!(bare["capabilities"], json!({}));
        assert!(bare.get("_meta").is_none() && bare.get("instructions").is_none());
    }

    #[test]
    fn results_get_result_type_and_cache_hints_only_where_missing() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":"a","result":{"tools":[],"x":1}}"#,
                r#"{"jsonrpc":"2.0","id":"a","result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","tools":[],"x":1}}"#,
            ),
            (
                "resources/read",
                r#"{"jsonrpc":"2.0","id":1,"result": { } }"#,
                r#"{"jsonrpc":"2.0","id":1,"result": {"resultType":"complete","ttlMs":0,"cacheScope":"private" } }"#,
            ),
            (
                "prompts/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":null,"resultType":"complete","prompts":[]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"private","ttlMs":null,"resultType":"complete","prompts":[]}}"#,
            ),
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":5,"cacheScope":"public","resultType":"complete"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":5,"cacheScope":"public","resultType":"complete"}}"#,
            ),
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required"}}"#,
            ),
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"vendor":{"a":2.50}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","content":[],"vendor":{"a":2.50}}}"#,
            ),
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"m"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"m"}}"#,
            ),
            (
                "x/y",
                r#"{"jsonrpc":"2.0","id":1,"result":[1]}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":[1]}"#,
            ),
        ];
        for (method, reply, want) in cases {
            let got = complete_reply(method, Bytes::from_static(reply.as_bytes()));
            assert_eq!(String::from_utf8_lossy(&got), *want, "{method}: {reply}");
        }
    }

    #[test]
    fn method_not_found_is_recognised() {
        assert!(is_method_not_found(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}}"#
        ));
        assert!(!is_method_not_found(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"m"}}"#
        ));
        assert!(!is_method_not_found(
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        ));
    }

    #[test]
    fn removed_methods_are_named() {
        assert!(not_in_this_era("ping").is_some());
        assert!(not_in_this_era("subscriptions/listen").is_some());
        assert!(not_in_this_era("tools/call").is_none());
    }
}
