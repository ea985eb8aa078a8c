//! Property tests of the parsers that strangers feed: the JSON-RPC envelope parser and id
//! splicing (callers and children), the depth limit, and client files (operators).
//!
//! For arbitrary JSON: rewriting a message's id and restoring it gives back the original
//! bytes, and the payload bytes around the id never change; no input makes a parser panic.
#![allow(
    clippy::unwrap_used,
    reason = "tests may unwrap: a panic is how a test reports failure"
)]

use std::path::Path;
use std::time::Duration;

use mcpmux::clients::{Defaults, parse_file};
use mcpmux::mcp::envelope::{
    EnvelopeError, Kind, MAX_DEPTH, exceeds_depth, one_line, parse, span_of, splice,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Strings with what JSON escapes: quotes, backslashes, brackets, control and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop::string::string_regex(r#"([a-z0-9 {}\[\]",:\\\n\t]|é|𝄞|\u{0}){0,12}"#).unwrap()
}

/// As [`text`] without NUL, which `execve` cannot pass (client files refuse it).
fn exec_text() -> impl Strategy<Value = String> {
    prop::string::string_regex(r#"([a-z0-9 {}\[\]",:\\\n\t]|é|𝄞){0,12}"#).unwrap()
}

/// Arbitrary JSON values, nested up to a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON-RPC id: a string or an integer.
fn rpc_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ]
}

/// `value` as JSON text, compact or pretty.
fn render(value: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(value).unwrap()
    } else {
        serde_json::to_vec(value).unwrap()
    }
}

/// A request or a response carrying `payload`, with an id, as JSON text.
fn message() -> impl Strategy<Value = (Vec<u8>, Kind)> {
    (rpc_id(), json_value(), any::<bool>(), any::<bool>(), text()).prop_map(
        |(id, payload, is_request, pretty, extra)| {
            let mut msg = if is_request {
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": payload})
            } else {
                json!({"jsonrpc": "2.0", "id": id, "result": payload})
            };
            // Unknown top-level fields must survive too.
            msg["x-vendor"] = Value::from(extra);
            let kind = if is_request {
                Kind::Request
            } else {
                Kind::Result
            };
            (render(&msg, pretty), kind)
        },
    )
}

/// `depth` levels of alternating arrays and objects (the outermost is level 1), with
/// brackets inside a string at the bottom that must not count.
fn nested(depth: usize) -> String {
    let mut out = String::from(r#""[[{{""#);
    for level in 0..depth {
        out = if level % 2 == 0 {
            format!("[{out}]")
        } else {
            format!(r#"{{"k":{out}}}"#)
        };
    }
    out
}

/// How deeply `value` nests: a scalar is 0, an array or object one more than its deepest
/// member (so a message is level 1), as serde_json's own tree says.
fn value_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `value` inside `levels` arrays and objects, with brackets, quotes and backslashes in
/// the objects' keys and in a padding string `pad` bytes long (so that long texts, with
/// and without many brackets, take the scan's other paths), none of which may count.
fn wrapped(value: Value, levels: usize, pad: usize, pad_brackets: bool) -> Value {
    let pattern = if pad_brackets {
        r#"[{"\\ab}]"#
    } else {
        r#"ab"\\cd"#
    };
    let filler: String = pattern.chars().cycle().take(pad).collect();
    let mut out = value;
    for level in 0..levels {
        out = if level % 2 == 0 {
            json!([out, filler])
        } else {
            json!({"[{\"": out})
        };
    }
    out
}

/// The depth rule spelled out byte by byte, for texts that are not JSON at all.
fn reference_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => in_string = true,
            _ => {}
        }
        if depth > max {
            return true;
        }
    }
    false
}

/// Texts made mostly of the bytes the depth scan looks at.
fn bracket_soup() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"{}[]\"\\".to_vec()),
        1 => prop::sample::select(b"a :,\n".to_vec()),
        1 => any::<u8>(),
    ];
    // Long texts with brackets sparse and dense: the two ways of counting them.
    let sparse = prop_oneof![200 => Just(b'a'), 1 => byte.clone()];
    prop_oneof![
        prop::collection::vec(byte.clone(), 0..300),
        prop::collection::vec(byte, 4000..4300),
        prop::collection::vec(sparse, 4000..4300),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rewriting_then_restoring_an_id_gives_back_the_original_bytes(
        (bytes, kind) in message(),
        child_id in any::<u64>(),
    ) {
        let env = parse(&bytes).unwrap();
        prop_assert_eq!(env.kind, kind);
        let id = env.id.unwrap();
        let original_id = id.get().as_bytes().to_vec();
        let span = span_of(&bytes, id.get()).unwrap();
        let child_text = child_id.to_string();
        let rewritten = splice(&bytes, &mut [(span.clone(), child_text.as_bytes())]);

        // The child sees its own id, and every other byte unchanged.
        let seen = parse(&rewritten).unwrap();
        let seen_id = seen.id.unwrap();
        prop_assert_eq!(seen_id.get(), child_text.as_str());
        prop_assert_eq!(&rewritten[..span.start], &bytes[..span.start]);
        prop_assert_eq!(&rewritten[span.start + child_text.len()..], &bytes[span.end..]);

        // And the caller gets the original back, byte for byte.
        let back_span = span_of(&rewritten, seen_id.get()).unwrap();
        let restored = splice(&rewritten, &mut [(back_span, &original_id[..])]);
        prop_assert_eq!(restored, bytes);
    }

    #[test]
    fn one_line_keeps_a_message_equal_and_free_of_line_breaks((bytes, _) in message()) {
        let flat = one_line(bytes.clone().into());
        prop_assert!(!flat.contains(&b'\n') && !flat.contains(&b'\r'));
        prop_assert_eq!(flat.len(), bytes.len());
        let a: Value = serde_json::from_slice(&flat).unwrap();
        let b: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn no_bytes_make_the_envelope_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&bytes);
        let _ = one_line(bytes.clone().into());
        let _ = exceeds_depth(&bytes, 3);
    }

    #[test]
    fn no_near_json_makes_the_envelope_parser_panic(
        (bytes, _) in message(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        // Truncated, and with one byte replaced: the shapes a careless caller sends.
        let at = cut.index(bytes.len());
        let _ = parse(&bytes[..at]);
        let mut changed = bytes.clone();
        changed[at] = byte;
        let _ = parse(&changed);
        let _ = exceeds_depth(&changed, MAX_DEPTH);
    }

    #[test]
    fn depth_is_refused_exactly_above_the_limit(depth in 100usize..160) {
        let text = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}}}"#, nested(depth - 1));
        let too_deep = depth > MAX_DEPTH;
        prop_assert_eq!(exceeds_depth(text.as_bytes(), MAX_DEPTH), too_deep);
        match parse(text.as_bytes()) {
            Err(EnvelopeError::TooDeep) => prop_assert!(too_deep),
            Ok(_) => prop_assert!(!too_deep),
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn depth_scan_agrees_with_the_parsed_tree(
        value in json_value(),
        levels in prop_oneof![0usize..8, 120usize..132],
        pad in prop_oneof![0usize..40, 4000usize..4200],
        pad_brackets in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        let value = wrapped(value, levels, pad, pad_brackets);
        let depth = value_depth(&value);
        let text = render(&value, pretty);
        for max in [depth.saturating_sub(1), depth, depth + 1, MAX_DEPTH, 0, 1, 2] {
            prop_assert_eq!(exceeds_depth(&text, max), depth > max, "depth {} vs max {}", depth, max);
        }
    }

    #[test]
    fn depth_scan_agrees_with_the_byte_rule_on_any_text(
        bytes in bracket_soup(),
        max in prop_oneof![0usize..12, 100usize..140],
    ) {
        prop_assert_eq!(exceeds_depth(&bytes, max), reference_exceeds(&bytes, max));
    }

    #[test]
    fn no_client_file_makes_the_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_file(Path::new("/nonexistent/acme.json"), &bytes, &defaults());
    }

    #[test]
    fn no_client_file_fields_make_the_parser_panic(
        fields in prop::collection::btree_map(client_field(), json_value(), 0..8),
    ) {
        let file = Value::Object(fields.into_iter().collect());
        let _ = parse_file(Path::new("/nonexistent/acme.json"), &render(&file, false), &defaults());
    }

    #[test]
    fn valid_client_files_parse_to_what_they_say(
        args in prop::collection::vec(exec_text(), 0..4),
        env in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", exec_text(), 0..4),
        idle in 1u64..1_000_000,
        nofile in prop::option::of(1u64..1_000_000),
    ) {
        let mut file = json!({"command": "mcp-echo", "args": args, "env": env, "idle_ttl_secs": idle});
        if let Some(n) = nofile {
            file["rlimit_nofile"] = n.into();
        }
        let spec = parse_file(Path::new("/nonexistent/acme.json"), &render(&file, true), &defaults());
        let spec = spec.unwrap();
        prop_assert_eq!(spec.id.as_str(), "acme");
        prop_assert_eq!(spec.command, "mcp-echo");
        prop_assert_eq!(spec.args, args);
        let got_env: Vec<_> = spec.env.keys().cloned().collect();
        let want_env: Vec<_> = env.keys().cloned().collect();
        prop_assert_eq!(got_env, want_env);
        prop_assert_eq!(spec.idle_ttl, Duration::from_secs(idle));
        prop_assert_eq!(spec.limits.open_files, nofile);
    }
}

/// Field names of a client file, known and unknown.
fn client_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("command".to_owned()),
        Just("args".to_owned()),
        Just("env".to_owned()),
        Just("cwd".to_owned()),
        Just("idle_ttl_secs".to_owned()),
        Just("token_sha256".to_owned()),
        Just("rlimit_as".to_owned()),
        Just("rlimit_nofile".to_owned()),
        Just("rlimit_nproc".to_owned()),
        text(),
    ]
}

fn defaults() -> Defaults {
    Defaults {
        clients_dir: "/nonexistent".into(),
        idle_ttl: Duration::from_secs(300),
    }
}

#[test]
fn a_hundred_thousand_levels_are_refused_without_exhausting_the_stack() {
    let depth = 100_000;
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(parse(text.as_bytes()).err(), Some(EnvelopeError::TooDeep));
    assert_eq!(EnvelopeError::TooDeep.code(), -32700);
}
