//! What crosses the bridge between a stateless caller and a session-era child: the
//! synthetic `initialize` params, the `server/discover` result, and the result fields
//! 2026-07-28 requires that the child leaves out. Byte-level: the child's bytes are
//! copied or spliced, never re-serialized.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Admitted, CHILD_VERSION, META_SERVER_INFO, SUPPORTED_VERSIONS};
use crate::mcp::caps::ClientCaps;
use crate::mcp::envelope::{METHOD_NOT_FOUND, span_of, splice};
use crate::mcp::version::Revision;

/// Results that must carry `ttlMs` and `cacheScope` (2026-07-28 `CacheableResult`).
/// `server/discover` is one too, but mcpmux builds that result itself.
const CACHEABLE_METHODS: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

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

/// Methods whose calls may be answered with an `input_required` result (SEP-2322).
const ROUND_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// What a stateless caller of `method` can be asked in `input_required` rounds: the
/// capabilities it declared for this request, or `None` for methods that must not be
/// answered with `input_required`.
pub fn asks(method: &str, admitted: &Admitted<'_>) -> Option<ClientCaps> {
    if !ROUND_METHODS.contains(&method) {
        return None;
    }
    // 2026-07-28 capabilities read as the newest session-era ones (same shape).
    Some(ClientCaps::parse(
        Some(admitted.client_capabilities),
        Revision::NEWEST,
    ))
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
    #[serde(default, borrow, rename = "ttlMs", deserialize_with = "raw_present")]
    ttl_ms: Option<&'a RawValue>,
    #[serde(
        default,
        borrow,
        rename = "cacheScope",
        deserialize_with = "raw_present"
    )]
    cache_scope: Option<&'a RawValue>,
    #[serde(borrow, rename = "resultType")]
    result_type: Option<Cow<'a, str>>,
    /// `null` too: `Some` whenever the key is there.
    #[serde(default, borrow, rename = "_meta", deserialize_with = "raw_present")]
    meta: Option<&'a RawValue>,
}

/// The field's raw text, `null` included, whenever it is present.
fn raw_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct ResultMetaWire {
    #[serde(
        default,
        rename = "io.modelcontextprotocol/serverInfo",
        deserialize_with = "present"
    )]
    server_info: bool,
}

/// The child's final reply with what 2026-07-28 requires of a result and a session-era
/// child leaves out: `resultType` (SDKs of the era refuse results without it), on
/// complete results of the cacheable methods `ttlMs` and `cacheScope`, with the most
/// conservative values (as the SDKs default them), and `serverInfo` in `_meta` (a SHOULD
/// on every result) when the child's `initialize` gave one. An error whose code
/// 2026-07-28 forbids gets the era's code instead (see [`modern_code`]). Byte-exact
/// otherwise; non-object results pass unchanged, and so does a `_meta` that is not an
/// object or already names a server.
pub fn complete_reply(method: &str, reply: Bytes, server_info: Option<&[u8]>) -> Bytes {
    if let Some((span, code)) = retired_code(&reply) {
        return splice(&reply, &mut [(span, code.to_string().as_bytes())]).into();
    }
    let fixes = missing_fields(method, &reply, server_info);
    if fixes.is_empty() {
        return reply;
    }
    let mut edits: Vec<_> = fixes
        .iter()
        .map(|(range, text)| (range.clone(), text.as_bytes()))
        .collect();
    splice(&reply, &mut edits).into()
}

/// JSON-RPC "invalid params".
const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "internal error".
const INTERNAL_ERROR: i64 = -32603;

/// The code 2026-07-28 uses for a session-era code it forbids servers to emit: `-32002`
/// (resource not found) became `-32602`; `-32042` (URL elicitation required, 2025-11-25
/// only) has no successor as an error and becomes `-32603`.
pub fn modern_code(code: i64) -> Option<i64> {
    match code {
        -32002 => Some(INVALID_PARAMS),
        -32042 => Some(INTERNAL_ERROR),
        _ => None,
    }
}

/// Where the reply's error code sits and what replaces it, when it is a retired one.
fn retired_code(reply: &[u8]) -> Option<(std::ops::Range<usize>, i64)> {
    #[derive(Deserialize)]
    struct CodeWire<'a> {
        #[serde(borrow)]
        code: &'a RawValue,
    }
    let error = serde_json::from_slice::<ReplyWire<'_>>(reply).ok()?.error?;
    let code = serde_json::from_str::<CodeWire<'_>>(error.get()).ok()?.code;
    let modern = modern_code(code.get().parse().ok()?)?;
    Some((span_of(reply, code.get())?, modern)) // borrowed from `reply`, so it has a span
}

/// What to write where into the reply's `result` object (and its `_meta`): the fields
/// that are missing, and `0` / `"private"` over cache hints 2026-07-28 does not allow
/// (servers MUST give a `ttlMs` >= 0; SDKs refuse results with others).
fn missing_fields(
    method: &str,
    reply: &[u8],
    server_info: Option<&[u8]>,
) -> Vec<(std::ops::Range<usize>, String)> {
    let Some(result) = serde_json::from_slice::<ReplyWire<'_>>(reply)
        .ok()
        .and_then(|r| r.result)
    else {
        return Vec::new();
    };
    let Ok(has) = serde_json::from_str::<ResultFieldsWire<'_>>(result.get()) else {
        return Vec::new();
    };
    let Some(span) = span_of(reply, result.get()) else {
        return Vec::new();
    };
    let info = server_info.map(String::from_utf8_lossy);
    let mut inserts = Vec::with_capacity(2);
    let mut fields = Vec::with_capacity(4);
    if has.result_type.is_none() {
        fields.push(r#""resultType":"complete""#.to_owned());
    }
    // Only complete results are cacheable.
    let complete = has.result_type.as_deref().is_none_or(|t| t == "complete");
    if complete && CACHEABLE_METHODS.contains(&method) {
        match has.ttl_ms {
            None => fields.push(r#""ttlMs":0"#.to_owned()),
            Some(ttl) if !is_ttl(ttl) => inserts.extend(replace(reply, ttl, "0")),
            Some(_) => {}
        }
        match has.cache_scope {
            None => fields.push(r#""cacheScope":"private""#.to_owned()),
            Some(scope) if !matches!(scope.get(), r#""public""# | r#""private""#) => {
                inserts.extend(replace(reply, scope, r#""private""#));
            }
            Some(_) => {}
        }
    }
    match (has.meta, &info) {
        (None, Some(info)) => fields.push(format!(r#""_meta":{{"{META_SERVER_INFO}":{info}}}"#)),
        (Some(meta), Some(info)) => {
            let at = server_info_into(reply, meta, info);
            inserts.extend(at.map(|(at, text)| (at..at, text)));
        }
        (_, None) => {}
    }
    if !fields.is_empty() {
        let at = span.start + 1;
        inserts.push((at..at, first_keys(result.get(), &fields.join(","))));
    }
    inserts
}

/// A JSON number >= 0.
fn is_ttl(raw: &RawValue) -> bool {
    serde_json::from_str::<f64>(raw.get()).is_ok_and(|n| n >= 0.0)
}

/// The edit that writes `with` over `value` (which borrows from `reply`).
fn replace(reply: &[u8], value: &RawValue, with: &str) -> Option<(std::ops::Range<usize>, String)> {
    Some((span_of(reply, value.get())?, with.to_owned()))
}

/// Where and what to insert so the result's `_meta` names the server, unless it is not an
/// object or already does.
fn server_info_into(reply: &[u8], meta: &RawValue, info: &str) -> Option<(usize, String)> {
    if !meta.get().starts_with('{') {
        return None;
    }
    let named = serde_json::from_str::<ResultMetaWire>(meta.get()).ok()?;
    if named.server_info {
        return None;
    }
    let at = span_of(reply, meta.get())?.start + 1;
    let field = format!(r#""{META_SERVER_INFO}":{info}"#);
    Some((at, first_keys(meta.get(), &field)))
}

/// `fields` to put just after the `{` of `object`, with the comma the object's own keys
/// need.
fn first_keys(object: &str, fields: &str) -> String {
    let empty = object[1..].trim_start().starts_with('}');
    if empty {
        fields.to_owned()
    } else {
        format!("{fields},")
    }
}

#[derive(Deserialize)]
struct ErrorCodeWire {
    code: Option<i64>,
}

/// True when `reply` is a JSON-RPC error "method not found" (HTTP 404 in this era).
pub fn is_method_not_found(reply: &[u8]) -> bool {
    error_code(reply) == Some(METHOD_NOT_FOUND)
}

/// The code of `reply` when it is a JSON-RPC error (some map to an HTTP status in this era).
pub fn error_code(reply: &[u8]) -> Option<i64> {
    let error = serde_json::from_slice::<ReplyWire<'_>>(reply).ok()?.error?;
    serde_json::from_str::<ErrorCodeWire>(error.get())
        .ok()?
        .code
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn retired_error_codes_get_the_eras_codes() {
        let reply = |code: i64| {
            Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"Resource not found","data":{{"uri":"x://1"}}}}}}"#
            ))
        };
        for (from, to) in [
            (-32002, -32602),
            (-32042, -32603),
            (-32601, -32601),
            (-32001, -32001),
        ] {
            let got: Value =
                serde_json::from_slice(&complete_reply("resources/read", reply(from), Some(b"{}")))
                    .unwrap();
            assert_eq!(got["error"]["code"], to, "{from}");
            assert_eq!(
                got["error"]["data"],
                json!({"uri": "x://1"}),
                "the rest is untouched"
            );
        }
    }
    use crate::mcp::envelope;
    use crate::mcp::stateless::{
        META_CLIENT_CAPABILITIES, META_CLIENT_INFO, META_PROTOCOL_VERSION, STATELESS_VERSION,
        request_meta,
    };

    fn request(method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
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
                r#"{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"private","ttlMs":0,"resultType":"complete","prompts":[]}}"#,
            ),
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":5,"cacheScope":"public","resultType":"complete"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":5,"cacheScope":"public","resultType":"complete"}}"#,
            ),
            (
                "resources/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":-5,"cacheScope":"shared","resultType":"complete"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":0,"cacheScope":"private","resultType":"complete"}}"#,
            ),
            (
                "resources/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":2.5e3,"cacheScope":"public","resultType":"complete"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":2.5e3,"cacheScope":"public","resultType":"complete"}}"#,
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
            let got = complete_reply(method, Bytes::from_static(reply.as_bytes()), None);
            assert_eq!(String::from_utf8_lossy(&got), *want, "{method}: {reply}");
        }
    }

    #[test]
    fn results_name_the_server_in_meta_unless_they_do_already() {
        let info = br#"{"name":"s","version":"9"}"#;
        let cases: &[(&str, &str, &str)] = &[
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"s","version":"9"}},"content":[]}}"#,
            ),
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"k":2.50},"resultType":"complete"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"s","version":"9"},"k":2.50},"resultType":"complete"}}"#,
            ),
            (
                "tools/list",
                r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{ },"tools":[]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"s","version":"9"} },"tools":[]}}"#,
            ),
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"own","version":"1"}}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"own","version":"1"}}}}"#,
            ),
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","_meta":null}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","_meta":null}}"#,
            ),
            (
                "tools/call",
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"m"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"m"}}"#,
            ),
        ];
        for (method, reply, want) in cases {
            let got = complete_reply(method, Bytes::from_static(reply.as_bytes()), Some(info));
            assert_eq!(String::from_utf8_lossy(&got), *want, "{method}: {reply}");
            let parsed: Value = serde_json::from_slice(&got).unwrap();
            assert!(parsed.is_object(), "still JSON: {reply}");
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
}
