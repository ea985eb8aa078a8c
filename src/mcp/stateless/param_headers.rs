//! `Mcp-Param-*` headers (2026-07-28, SEP-2243). A tool's `inputSchema` may mark
//! properties with `x-mcp-header`; a 2026-07-28 caller then mirrors those argument values
//! into `Mcp-Param-{name}` headers, and a server that reads the body must refuse
//! (`-32020`, HTTP 400) a call whose mirrored headers are missing, malformed or do not
//! match it. A session-era child knows nothing of this, so the bridge checks: it reads the
//! child's `tools/list` once per child and again after `notifications/tools/list_changed`,
//! keeps only the declarations (bounded), and checks each stateless `tools/call` against
//! them.
//!
//! Read and checked as the TypeScript SDK's server does: a tool whose declarations break
//! the spec's constraints is one conforming clients drop from their list, and is not
//! checked; a body value that is absent, `null` or not a primitive expects no header;
//! integers compare numerically. Headers nobody declared are ignored (the spec: forward
//! and otherwise ignore them).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tracing::warn;

use super::ladder::Rejection;
use super::{HEADER_MISMATCH, Header, decode_header_value};
use crate::mcp::envelope::METHOD_NOT_FOUND;

/// Pages of the child's `tools/list` read at most; tools beyond them are not checked.
pub const MAX_PAGES: usize = 32;
/// Tools with declarations kept per child at most; further ones are not checked.
pub const MAX_DECLARING_TOOLS: usize = 1024;
/// Declarations per tool at most; a tool with more is not checked.
pub const MAX_DECLARATIONS: usize = 64;

const X_MCP_HEADER: &str = "x-mcp-header";
/// Keywords whose subschemas are not statically reachable (the chain may pass only
/// through `properties`): an `x-mcp-header` under one makes the tool invalid.
const UNREACHABLE: [&str; 19] = [
    "items",
    "prefixItems",
    "contains",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "propertyNames",
    "patternProperties",
    "dependentSchemas",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "$defs",
    "definitions",
    "$ref",
];
/// Those of [`UNREACHABLE`] whose value maps names to subschemas.
const NAMED_SUBSCHEMAS: [&str; 4] = [
    "patternProperties",
    "dependentSchemas",
    "$defs",
    "definitions",
];
/// Largest integer a header can mirror exactly (JavaScript's safe range).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// One parameter a tool mirrors into a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The `{name}` of `Mcp-Param-{name}`, as declared.
    pub header: String,
    /// The chain of `properties` keys leading to the parameter in `arguments`.
    pub path: Vec<String>,
    /// Declared `integer` (compared numerically).
    pub integer: bool,
}

/// What a child's tool list declares: the valid declarations of each tool that has any.
#[derive(Debug, Default)]
pub struct Declared {
    tools: HashMap<String, Vec<Declaration>>,
}

impl Declared {
    /// The declarations of tool `name`, if it has any.
    pub fn of(&self, name: &str) -> Option<&[Declaration]> {
        self.tools.get(name).map(Vec::as_slice)
    }
}

/// One child's declarations, read from its `tools/list` when first needed and again after
/// it said its list changed.
#[derive(Debug, Default)]
pub struct ToolHeaders {
    /// Counts the child's `notifications/tools/list_changed`.
    changes: AtomicU64,
    /// The declarations and the count of changes they were read after.
    cached: tokio::sync::Mutex<Option<(u64, Arc<Declared>)>>,
}

impl ToolHeaders {
    /// The child's tool list changed: the next call reads it again.
    pub fn invalidate(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The declarations, reading the child's list with `page` (given the cursor, it returns
    /// the child's reply to `tools/list`) unless what is cached is still current. Callers
    /// that arrive while it is read wait for that one read. `Err` says why the list could
    /// not be read.
    pub async fn get<F, Fut>(&self, page: F) -> Result<Arc<Declared>, String>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: Future<Output = Bytes>,
    {
        let mut cached = self.cached.lock().await;
        // Read before the list: a change during the read makes the next call read again.
        let now = self.changes.load(Ordering::Acquire);
        if let Some((at, declared)) = cached.as_ref()
            && *at == now
        {
            return Ok(declared.clone());
        }
        let declared = Arc::new(read_list(page).await?);
        *cached = Some((now, declared.clone()));
        Ok(declared)
    }
}

#[derive(Deserialize)]
struct PageReply {
    result: Option<Page>,
    error: Option<ErrorWire>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ErrorWire {
    code: Option<i64>,
    message: Option<String>,
}

async fn read_list<F, Fut>(mut page: F) -> Result<Declared, String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Bytes>,
{
    let mut declared = Declared::default();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let reply = page(cursor.take()).await;
        let reply: PageReply = serde_json::from_slice(&reply)
            .map_err(|e| format!("the child's tools/list reply is not one: {e}"))?;
        let page = match (reply.result, reply.error) {
            (Some(page), _) => page,
            // A child without tools/list declares nothing.
            (None, Some(e)) if e.code == Some(METHOD_NOT_FOUND) => return Ok(declared),
            (None, Some(e)) => {
                let why = e.message.unwrap_or_default();
                return Err(format!("the child's tools/list failed: {why}"));
            }
            (None, None) => return Err("the child's tools/list reply is empty".into()),
        };
        for tool in &page.tools {
            add_tool(&mut declared, tool);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(declared),
        }
    }
    warn!(
        pages = MAX_PAGES,
        "the child's tools/list has more pages; Mcp-Param headers of tools beyond them are not checked"
    );
    Ok(declared)
}

fn add_tool(declared: &mut Declared, tool: &Value) {
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return;
    };
    let Some(found) = tool.get("inputSchema").and_then(scan) else {
        // Conforming clients drop such a tool (and send no headers for it).
        warn!(
            tool = name,
            "the child's tool declares x-mcp-header against the spec's rules; its Mcp-Param headers are not checked"
        );
        return;
    };
    if found.is_empty() {
        return;
    }
    if found.len() > MAX_DECLARATIONS || declared.tools.len() >= MAX_DECLARING_TOOLS {
        warn!(
            tool = name,
            "too many x-mcp-header declarations to keep; this tool's Mcp-Param headers are not checked"
        );
        return;
    }
    declared.tools.insert(name.to_owned(), found);
}

/// The declarations of one `inputSchema`, or `None` when one breaks the spec's
/// constraints (the whole tool is then invalid).
pub fn scan(schema: &Value) -> Option<Vec<Declaration>> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut path = Vec::new();
    visit(schema, &mut path, true, &mut found, &mut seen).then_some(found)
}

/// Walks one schema node (depth is bounded by the JSON parser's nesting limit); false
/// when a declaration is invalid.
fn visit(
    node: &Value,
    path: &mut Vec<String>,
    reachable: bool,
    found: &mut Vec<Declaration>,
    seen: &mut HashSet<String>,
) -> bool {
    let Some(schema) = node.as_object() else {
        return true;
    };
    if let Some(raw) = schema.get(X_MCP_HEADER) {
        if !reachable || path.is_empty() {
            return false;
        }
        let Some(header) = raw.as_str().filter(|h| is_token(h)) else {
            return false;
        };
        let kind = schema.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("string" | "integer" | "boolean")) {
            return false;
        }
        if !seen.insert(header.to_ascii_lowercase()) {
            return false; // case-insensitively unique within the schema
        }
        found.push(Declaration {
            header: header.to_owned(),
            path: path.clone(),
            integer: kind == Some("integer"),
        });
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            path.push(key.clone());
            let valid = visit(child, path, reachable, found, seen);
            path.pop();
            if !valid {
                return false;
            }
        }
    }
    for keyword in UNREACHABLE {
        let Some(sub) = schema.get(keyword) else {
            continue;
        };
        let branches: Vec<&Value> = match sub {
            Value::Array(items) => items.iter().collect(),
            Value::Object(named) if NAMED_SUBSCHEMAS.contains(&keyword) => named.values().collect(),
            other => vec![other],
        };
        for branch in branches {
            path.push(format!("<{keyword}>"));
            let valid = visit(branch, path, false, found, seen);
            path.pop();
            if !valid {
                return false;
            }
        }
    }
    true
}

/// RFC 9110 `token` (`1*tchar`).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a `tools/call` of `tool` whose `arguments` the body carries against its
/// declarations; `header` gives one request header by its lowercase name.
pub fn check<'h>(
    tool: &str,
    declarations: &[Declaration],
    arguments: Option<&Value>,
    header: impl Fn(&str) -> Header<'h>,
) -> Result<(), Rejection> {
    for declaration in declarations {
        let Some(body) = value_at(arguments, &declaration.path) else {
            continue; // absent or null: no header expected
        };
        let Some(want) = mirrored(body) else {
            continue; // not a primitive: the child's own validation refuses it
        };
        let name = format!("Mcp-Param-{}", declaration.header);
        let at = format!("arguments.{}", declaration.path.join("."));
        let sent = match header(&name.to_ascii_lowercase()) {
            Header::Value(sent) => sent,
            Header::Absent => {
                let msg = format!(
                    "{name} header is required: tool `{tool}` mirrors {at} into it, and the body sets {at} to {body}"
                );
                return Err(Rejection::new(HEADER_MISMATCH, msg));
            }
            Header::Malformed(why) => {
                return Err(Rejection::new(
                    HEADER_MISMATCH,
                    format!("{name} header {why}"),
                ));
            }
        };
        let Some(decoded) = decode_header_value(sent) else {
            let msg =
                format!("{name} header is not valid `=?base64?...?=` (canonical base64 of UTF-8)");
            return Err(Rejection::new(HEADER_MISMATCH, msg));
        };
        let equal = match body {
            Value::Number(n) if declaration.integer && is_decimal(&decoded) => {
                decoded.parse::<f64>().ok() == n.as_f64()
            }
            _ => decoded == want,
        };
        if !equal {
            let msg = format!("{name} header `{decoded}` does not match the body's {at} {body}");
            return Err(Rejection::new(HEADER_MISMATCH, msg));
        }
    }
    Ok(())
}

/// The value at `path` in `arguments`; `None` when absent or `null`.
fn value_at<'v>(arguments: Option<&'v Value>, path: &[String]) -> Option<&'v Value> {
    let mut node = arguments?;
    for key in path {
        node = node.as_object()?.get(key)?;
    }
    (!node.is_null()).then_some(node)
}

/// How a client mirrors a primitive body value; `None` for values it mirrors not at all
/// (objects, arrays, integers beyond the safe range).
fn mirrored(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let f = n.as_f64()?;
            let integral = n.is_i64() || n.is_u64() || f.fract() == 0.0;
            (!integral || f.abs() <= MAX_SAFE_INTEGER).then(|| n.to_string())
        }
        _ => None,
    }
}

/// `-?digits(.digits)?`, the only header form compared numerically.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && all_digits(fraction)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn route_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "opts": {"type": "object", "properties": {
                    "limit": {"type": "integer", "x-mcp-header": "Limit"},
                }},
                "query": {"type": "string"},
            },
        })
    }

    #[test]
    fn declarations_are_read_where_the_spec_allows_them_only() {
        let found = scan(&route_schema()).unwrap();
        let paths: Vec<_> = found
            .iter()
            .map(|d| (d.header.as_str(), d.path.join("."), d.integer))
            .collect();
        // In key order (serde_json's map).
        assert_eq!(
            paths,
            [
                ("Limit", "opts.limit".into(), true),
                ("Region", "region".into(), false)
            ]
        );
        assert_eq!(scan(&json!({"type": "object"})), Some(vec![]));
        let invalid = [
            json!({"properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "A"}}}}),
            json!({"properties": {"a": {"oneOf": [{"type": "string", "x-mcp-header": "A"}]}}}),
            json!({"$defs": {"x": {"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}}}),
            json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": ""}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": 1}}}),
            json!({"properties": {
                "a": {"type": "string", "x-mcp-header": "Dup"},
                "b": {"type": "string", "x-mcp-header": "dUP"},
            }}),
            json!({"type": "object", "x-mcp-header": "Root"}),
        ];
        for schema in invalid {
            assert_eq!(scan(&schema), None, "{schema}");
        }
    }

    /// Request headers by lowercase name.
    type Headers = &'static [(&'static str, &'static str)];

    fn checked(arguments: Value, headers: &[(&str, &'static str)]) -> Result<(), String> {
        let declarations = scan(&route_schema()).unwrap();
        let header = |name: &str| {
            let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
            match (values.next(), values.next()) {
                (None, _) => Header::Absent,
                (Some(v), None) => Header::Value(v),
                (Some(_), Some(_)) => Header::Malformed("is given more than once"),
            }
        };
        check("route", &declarations, Some(&arguments), header).map_err(|r| {
            assert_eq!(r.code, HEADER_MISMATCH);
            r.message
        })
    }

    #[test]
    fn headers_must_mirror_what_the_body_sets() {
        let both = [("mcp-param-region", "us-west1"), ("mcp-param-limit", "42")];
        let args = json!({"region": "us-west1", "opts": {"limit": 42}, "query": "q"});
        assert_eq!(checked(args.clone(), &both), Ok(()));
        assert_eq!(
            checked(
                json!({"region": "us-west1", "opts": {"limit": 42}}),
                &[
                    ("mcp-param-region", "us-west1"),
                    ("mcp-param-limit", "42.0")
                ]
            ),
            Ok(()),
            "integers compare numerically"
        );
        let encoded = [("mcp-param-region", "=?base64?IHBhZGRlZCA=?=")];
        assert_eq!(checked(json!({"region": " padded "}), &encoded), Ok(()));
        assert_eq!(
            checked(json!({"region": null, "query": "q"}), &[]),
            Ok(()),
            "null expects none"
        );
        assert_eq!(
            checked(json!({"query": "q"}), &[("mcp-param-region", "x")]),
            Ok(()),
            "absent expects none"
        );
        assert_eq!(
            checked(json!({"region": ["a"]}), &[]),
            Ok(()),
            "not mirrorable"
        );

        let cases: &[(Value, Headers, &str)] = &[
            (
                json!({"region": "us-west1"}),
                &[],
                "Mcp-Param-Region header is required: tool `route` mirrors arguments.region into it, and the body sets arguments.region to \"us-west1\"",
            ),
            (
                json!({"region": "us-west1"}),
                &[("mcp-param-region", "eu")],
                "Mcp-Param-Region header `eu` does not match the body's arguments.region \"us-west1\"",
            ),
            (
                json!({"opts": {"limit": 42}}),
                &[("mcp-param-limit", "43")],
                "Mcp-Param-Limit header `43` does not match the body's arguments.opts.limit 42",
            ),
            (
                json!({"opts": {"limit": 42}}),
                &[("mcp-param-limit", "0x2a")],
                "Mcp-Param-Limit header `0x2a` does not match the body's arguments.opts.limit 42",
            ),
            (
                json!({"region": "a"}),
                &[("mcp-param-region", "=?base64?!!?=")],
                "Mcp-Param-Region header is not valid `=?base64?...?=` (canonical base64 of UTF-8)",
            ),
            (
                json!({"region": "a"}),
                &[("mcp-param-region", "a"), ("mcp-param-region", "a")],
                "Mcp-Param-Region header is given more than once",
            ),
        ];
        for (args, headers, want) in cases {
            assert_eq!(
                checked(args.clone(), headers),
                Err((*want).to_owned()),
                "{args} {headers:?}"
            );
        }
    }

    #[test]
    fn numbers_mirror_only_within_the_safe_range() {
        assert_eq!(
            mirrored(&json!(9_007_199_254_740_991_u64)).as_deref(),
            Some("9007199254740991")
        );
        assert_eq!(mirrored(&json!(9_007_199_254_740_993_u64)), None);
        assert_eq!(mirrored(&json!(true)).as_deref(), Some("true"));
        assert!(is_decimal("-42.50") && is_decimal("7"));
        assert!(!is_decimal("1e3") && !is_decimal(" 4") && !is_decimal("4.") && !is_decimal("-"));
    }

    #[tokio::test]
    async fn the_list_is_read_once_per_change_following_cursors() {
        let headers = ToolHeaders::default();
        let pages = std::sync::Mutex::new(Vec::new());
        let page = |cursor: Option<String>| {
            pages.lock().unwrap().push(cursor.clone());
            let body = match cursor.as_deref() {
                None => {
                    json!({"tools": [{"name": "plain", "inputSchema": {"type": "object"}}], "nextCursor": "2"})
                }
                _ => json!({"tools": [{"name": "route", "inputSchema": route_schema()}]}),
            };
            let reply = json!({"jsonrpc": "2.0", "id": 0, "result": body}).to_string();
            std::future::ready(Bytes::from(reply))
        };
        let first = headers.get(page).await.unwrap();
        assert_eq!(first.of("route").map(<[_]>::len), Some(2));
        assert!(first.of("plain").is_none());
        headers.get(page).await.unwrap();
        assert_eq!(pages.lock().unwrap().len(), 2, "cached: no second read");
        headers.invalidate();
        headers.get(page).await.unwrap();
        assert_eq!(
            *pages.lock().unwrap(),
            [None, Some("2".into()), None, Some("2".into())]
        );

        let failing = |_| {
            let reply =
                json!({"jsonrpc": "2.0", "id": 0, "error": {"code": -32603, "message": "boom"}});
            std::future::ready(Bytes::from(reply.to_string()))
        };
        headers.invalidate();
        assert_eq!(
            headers.get(failing).await.unwrap_err(),
            "the child's tools/list failed: boom"
        );
        let absent = |_| {
            let reply =
                json!({"jsonrpc": "2.0", "id": 0, "error": {"code": -32601, "message": "no"}});
            std::future::ready(Bytes::from(reply.to_string()))
        };
        assert!(headers.get(absent).await.unwrap().of("route").is_none());
    }
}
