//! JSON-RPC envelopes read only as far as routing needs, and byte-exact rewriting.
//!
//! A message is parsed into borrowed [`RawValue`]s: `id`, `method`, `params`. Nothing is
//! re-serialized; a rewrite splices new bytes over the exact span of the value it
//! replaces, so unknown and vendor fields (even at the top level) and key order survive.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

pub use super::depth::exceeds_depth;

/// What a message is, by JSON-RPC shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result`.
    Result,
    /// Has `error` (and an `id`, or `null` when the request could not be read).
    Error,
}

/// A message's routing fields, borrowed from its bytes.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Its shape.
    pub kind: Kind,
    /// The `id`, exactly as written; `None` for notifications and id-less errors.
    pub id: Option<&'a RawValue>,
    /// The `method` of a request or notification.
    pub method: Option<Cow<'a, str>>,
    /// The `params`, untouched.
    pub params: Option<&'a RawValue>,
}

/// Deepest nesting accepted in a message, which is itself level 1 (DESIGN §7). The
/// relay skips over `params` and `result` without descending, so without this check a
/// deeper message would reach the child, whose parser may drop it without a word.
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON at all (JSON-RPC -32700).
    #[error("parse error: {0}")]
    Parse(String),
    /// Nested deeper than [`MAX_DEPTH`] (JSON-RPC -32700, as parsers that refuse it say).
    #[error("parse error: nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A JSON array: batches are not accepted (2025-06-18 and later forbid them).
    #[error("invalid request: batches (JSON arrays) are not supported")]
    Batch,
    /// JSON, but not a valid JSON-RPC 2.0 message (JSON-RPC -32600).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl EnvelopeError {
    /// The JSON-RPC error code for this failure.
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) | Self::TooDeep => PARSE_ERROR,
            Self::Batch | Self::Invalid(_) => INVALID_REQUEST,
        }
    }
}

/// JSON-RPC: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: invalid params.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: internal error (used for child failures and timeouts).
pub const INTERNAL_ERROR: i64 = -32603;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    /// `Some(None)` is an explicit `null`, which only an error response may carry.
    #[serde(borrow, default, deserialize_with = "nullable")]
    id: Option<Option<&'a RawValue>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    /// `Some(None)` is an explicit `null`: a valid result (JSON-RPC leaves its value to
    /// the method), so it must not read as absent.
    #[serde(borrow, default, deserialize_with = "nullable")]
    result: Option<Option<&'a RawValue>>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<&'de RawValue>>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(Some)
}

/// Reads one message's envelope; `bytes` must hold exactly one JSON object nested no
/// deeper than [`MAX_DEPTH`].
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if exceeds_depth(bytes, MAX_DEPTH) {
        return Err(EnvelopeError::TooDeep);
    }
    parse_any_depth(bytes)
}

/// As [`parse`], at any depth: for reading the id of a message already refused as too
/// deep, so the request it answers can be failed.
pub fn parse_any_depth(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if first_non_space(bytes) == Some(b'[') {
        // Tell a batch apart from garbage that merely starts with '['.
        return match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(_) => Err(EnvelopeError::Batch),
            Err(e) => Err(EnvelopeError::Parse(e.to_string())),
        };
    }
    let wire: Wire<'_> = serde_json::from_slice(bytes).map_err(|e| classify(bytes, e))?;
    if wire.jsonrpc.as_deref() != Some("2.0") {
        return Err(EnvelopeError::Invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match wire.id {
        Some(Some(id)) => Some(check_id(id)?),
        Some(None) if wire.error.is_none() => {
            return Err(EnvelopeError::Invalid(
                "\"id\" must be a string or an integer",
            ));
        }
        _ => None,
    };
    let kind = match (&wire.method, wire.result, wire.error) {
        (Some(_), None, None) if id.is_some() => Kind::Request,
        (Some(_), None, None) => Kind::Notification,
        (None, Some(_), None) if id.is_some() => Kind::Result,
        (None, None, Some(_)) => Kind::Error,
        (None, Some(_), None) => return Err(EnvelopeError::Invalid("a result needs an \"id\"")),
        (None, None, None) => {
            return Err(EnvelopeError::Invalid(
                "needs \"method\", \"result\" or \"error\"",
            ));
        }
        _ => {
            return Err(EnvelopeError::Invalid(
                "\"method\", \"result\" and \"error\" exclude each other",
            ));
        }
    };
    Ok(Envelope {
        kind,
        id,
        method: wire.method,
        params: wire.params,
    })
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Valid JSON of the wrong shape is an invalid request; anything else a parse error.
fn classify(bytes: &[u8], err: serde_json::Error) -> EnvelopeError {
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(_) if err.is_data() => EnvelopeError::Invalid(shape_hint(bytes)),
        _ => EnvelopeError::Parse(err.to_string()),
    }
}

fn shape_hint(bytes: &[u8]) -> &'static str {
    match first_non_space(bytes) {
        Some(b'{') => "a field has the wrong type, or is given twice",
        _ => "a message must be a JSON object",
    }
}

/// An id is a string or an integer (JSON-RPC; MCP forbids `null`).
fn check_id(id: &RawValue) -> Result<&RawValue, EnvelopeError> {
    let text = id.get();
    let ok = match text.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => !text.contains(['.', 'e', 'E']),
        _ => false,
    };
    if ok {
        Ok(id)
    } else {
        Err(EnvelopeError::Invalid(
            "\"id\" must be a string or an integer",
        ))
    }
}

/// `message` as one line, for the child's newline-delimited framing. In valid JSON a raw CR
/// or LF can only be whitespace between tokens, so each becomes a space: the meaning and every
/// byte offset stay the same. Bytes that are not valid JSON are returned unchanged, for the
/// parser to reject.
pub fn one_line(message: Bytes) -> Bytes {
    let is_break = |b: &u8| matches!(b, b'\n' | b'\r');
    if !message.iter().any(is_break) || serde_json::from_slice::<&RawValue>(&message).is_err() {
        return message;
    }
    let flat: Vec<u8> = message
        .iter()
        .map(|b| if is_break(b) { b' ' } else { *b })
        .collect();
    flat.into()
}

/// The byte range of `inner` inside `outer`, when `inner` was borrowed from it.
pub fn span_of(outer: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// Copies `src` with each range replaced by its bytes; ranges must not overlap.
pub fn splice(src: &[u8], edits: &mut [(Range<usize>, &[u8])]) -> Vec<u8> {
    edits.sort_by_key(|(range, _)| range.start);
    let grow: usize = edits.iter().map(|(_, with)| with.len()).sum();
    let mut out = Vec::with_capacity(src.len() + grow);
    let mut at = 0;
    for (range, with) in edits.iter() {
        out.extend_from_slice(&src[at..range.start]);
        out.extend_from_slice(with);
        at = range.end;
    }
    out.extend_from_slice(&src[at..]);
    out
}

#[derive(Deserialize)]
struct ParamsHeadWire<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    uri: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

/// The top-level fields of a message's `params` that mcpmux reads, each borrowed as written
/// (any JSON): `_meta`, the `name` / `uri` that 2026-07-28 mirrors into `Mcp-Name`, and the
/// tool `arguments` that `Mcp-Param-*` headers mirror.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamsHead<'a> {
    /// `params._meta`.
    pub meta: Option<&'a RawValue>,
    /// `params.name`.
    pub name: Option<&'a RawValue>,
    /// `params.uri`.
    pub uri: Option<&'a RawValue>,
    /// `params.arguments`.
    pub arguments: Option<&'a RawValue>,
}

/// Reads [`ParamsHead`] without descending into anything else; `None` when `params` are
/// absent or not an object.
pub fn params_head(params: Option<&RawValue>) -> Option<ParamsHead<'_>> {
    let wire: ParamsHeadWire<'_> = serde_json::from_str(params?.get()).ok()?;
    Some(ParamsHead {
        meta: wire.meta,
        name: wire.name,
        uri: wire.uri,
        arguments: wire.arguments,
    })
}

#[derive(Deserialize)]
struct MetaOnly<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<ProgressMeta<'a>>,
}

#[derive(Deserialize)]
struct ProgressMeta<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// `params._meta.progressToken` of a request, when it has one.
pub fn progress_token<'a>(params: Option<&'a RawValue>) -> Option<&'a RawValue> {
    let params = params?;
    if !params.get().contains("progressToken") {
        return None; // The common case costs one substring scan, not a parse.
    }
    let meta: MetaOnly<'a> = serde_json::from_str(params.get()).ok()?;
    meta.meta?.progress_token
}

#[derive(Deserialize)]
struct ProgressParams<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// `params.progressToken` of a `notifications/progress`.
pub fn notified_progress_token<'a>(params: Option<&'a RawValue>) -> Option<&'a RawValue> {
    serde_json::from_str::<ProgressParams<'a>>(params?.get())
        .ok()?
        .progress_token
}

#[derive(Deserialize)]
struct CancelParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

/// `params.requestId` of a `notifications/cancelled`.
pub fn cancelled_request_id<'a>(params: Option<&'a RawValue>) -> Option<&'a RawValue> {
    serde_json::from_str::<CancelParams<'a>>(params?.get())
        .ok()?
        .request_id
}

/// A JSON-RPC error response; `id` is raw JSON (`null` when unknown).
pub fn error_response(
    id: &str,
    code: i64,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Vec<u8> {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let (Some(data), Some(obj)) = (data, error.as_object_mut()) {
        obj.insert("data".into(), data.clone());
    }
    let error = error.to_string();
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_turns_breaks_between_tokens_into_spaces() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{\"a\":1}", b"{\"a\":1}"),
            (b"{\r\n \"a\": [1,\n2]\n}\n", b"{   \"a\": [1, 2] } "),
            // Not JSON (a raw LF inside a string): left for the parser to reject.
            (b"{\"a\":\"x\ny\"}", b"{\"a\":\"x\ny\"}"),
        ];
        for (input, want) in cases {
            let got = one_line(Bytes::copy_from_slice(input));
            assert_eq!(&got[..], *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn kinds() {
        let cases: &[(&str, Kind)] = &[
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                Kind::Request,
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"x","params":{}}"#,
                Kind::Request,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Kind::Notification,
            ),
            (r#"{"jsonrpc":"2.0","id":7,"result":{}}"#, Kind::Result),
            // Found by the property tests: a null result is still a result.
            (r#"{"jsonrpc":"2.0","id":7,"result":null}"#, Kind::Result),
            (
                r#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"m"}}"#,
                Kind::Error,
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#,
                Kind::Error,
            ),
            (
                r#" {"jsonrpc":"2.0","id":-3,"method":"m","x-vendor":[1]} "#,
                Kind::Request,
            ),
        ];
        for (text, kind) in cases {
            let env = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(env.kind, *kind, "{text}");
        }
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, i64)] = &[
            ("{not json", PARSE_ERROR),
            ("", PARSE_ERROR),
            ("[1, 2", PARSE_ERROR),
            (r#"[{"jsonrpc":"2.0","method":"a"}]"#, INVALID_REQUEST),
            (r#"{"id":1,"method":"a"}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"a"}"#,
                INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"a"}"#,
                INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"a"}"#,
                INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
                INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","result":{}}"#,
                INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","result":{}}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}"#,
                INVALID_REQUEST,
            ),
            ("42", INVALID_REQUEST),
        ];
        for (text, code) in cases {
            let err = parse(text.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{text} parsed"));
            assert_eq!(err.code(), *code, "{text}: {err}");
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let cases: &[(&str, usize, bool)] = &[
            (r#"{"a":1}"#, 1, false),
            (r#"{"a":[1]}"#, 1, true),
            (r#"{"a":[1]}"#, 2, false),
            // Brackets in strings, escaped quotes and backslashes do not nest.
            (r#"{"a":"[[[{{{","b":"\"[[","c":"\\"}"#, 1, false),
            (r#"{"a":"\\\\","b":[[]]}"#, 2, true),
            (r#"[[[]],[[]]]"#, 3, false),
            (r#"[[[[]]]]"#, 3, true),
        ];
        for (text, max, deeper) in cases {
            assert_eq!(
                exceeds_depth(text.as_bytes(), *max),
                *deeper,
                "{text} vs {max}"
            );
        }
        let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(!exceeds_depth(at_limit.as_bytes(), MAX_DEPTH));
        let over = format!("[{at_limit}]");
        assert!(exceeds_depth(over.as_bytes(), MAX_DEPTH));
        let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{at_limit}}}"#);
        assert_eq!(parse(msg.as_bytes()).err(), Some(EnvelopeError::TooDeep));
        let env = parse_any_depth(msg.as_bytes()).unwrap();
        assert_eq!(env.id.map(RawValue::get), Some("1"));
    }

    #[test]
    fn id_splice_is_byte_exact() {
        let text = br#"{"jsonrpc":"2.0", "id" : "a\"b" ,"method":"x","params":{"k":[1,2.50,"\u00e9"]},"zz":1}"#;
        let env = parse(text).unwrap();
        let id = env.id.unwrap();
        assert_eq!(id.get(), r#""a\"b""#);
        let span = span_of(text, id.get()).unwrap();
        let out = splice(text, &mut [(span, b"42")]);
        let want = br#"{"jsonrpc":"2.0", "id" : 42 ,"method":"x","params":{"k":[1,2.50,"\u00e9"]},"zz":1}"#;
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
    }

    #[test]
    fn progress_tokens_found_where_the_spec_puts_them() {
        let req = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s","_meta":{"progressToken":"tok-1","x":2}}}"#;
        let env = parse(req).unwrap();
        let tok = progress_token(env.params).unwrap();
        assert_eq!(tok.get(), r#""tok-1""#);
        assert!(
            span_of(req, tok.get()).is_some(),
            "token must borrow from the message"
        );
        let none = br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"progressToken":1}}"#;
        assert!(progress_token(parse(none).unwrap().params).is_none());
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1}}"#;
        assert_eq!(
            notified_progress_token(parse(note).unwrap().params)
                .unwrap()
                .get(),
            "9"
        );
        let cancel =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r"}}"#;
        assert_eq!(
            cancelled_request_id(parse(cancel).unwrap().params)
                .unwrap()
                .get(),
            r#""r""#
        );
    }

    #[test]
    fn error_response_shape() {
        let out = error_response(
            "\"x\"",
            INTERNAL_ERROR,
            "boom",
            Some(&serde_json::json!({"a":1})),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"jsonrpc":"2.0","id":"x","error":{"code":-32603,"message":"boom","data":{"a":1}}})
        );
    }
}
