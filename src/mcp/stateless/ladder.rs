//! The 2026-07-28 validation ladder: which error a stateless request gets, if any.
//!
//! First failure wins: required `_meta` (-32602), then headers against the body (-32020),
//! then the version (-32022). Pure functions over borrowed parts; nothing here knows HTTP.

use std::borrow::Cow;

use base64::Engine;
use serde_json::value::RawValue;

use super::{
    HEADER_MISMATCH, Header, Headers, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, RequestMeta,
    SESSION_ERA_VERSIONS, STATELESS_VERSION, SUPPORTED_VERSIONS, UNSUPPORTED_PROTOCOL_VERSION,
    as_str,
};
use crate::mcp::envelope::INVALID_PARAMS;

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
    pub(super) fn new(code: i64, message: impl Into<String>) -> Self {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::mcp::envelope;
    use crate::mcp::stateless::{CHILD_VERSION, request_meta};

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
}
