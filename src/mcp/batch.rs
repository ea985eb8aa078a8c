//! JSON-RPC batches, which only 2025-03-26 allows: a POST body holding an array of
//! requests, notifications and responses, answered with one array of the responses.
//!
//! The body is split into its elements without re-serializing any of them, so each is
//! relayed byte-exact like a single message. An element that is not a JSON-RPC message is
//! answered in the array with an error (JSON-RPC 2.0 batch rules); the batch as a whole is
//! refused (HTTP 400) when it is empty or holds `initialize`, which must stand alone.

use std::ops::Range;

use serde_json::value::RawValue;

use super::envelope::{self, EnvelopeError, INVALID_REQUEST, Kind, span_of};

/// Why a batch is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not a JSON array.
    #[error("parse error: {0}")]
    Parse(String),
    /// `[]`.
    #[error("invalid request: an empty batch")]
    Empty,
    /// `initialize` must be sent alone.
    #[error("invalid request: initialize must not be part of a batch")]
    Initialize,
    /// The session's revision has no batches.
    #[error(
        "invalid request: batches (JSON arrays) are only accepted on protocol version 2025-03-26; this session uses {0}"
    )]
    NotThisRevision(String),
}

impl BatchError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => envelope::PARSE_ERROR,
            _ => INVALID_REQUEST,
        }
    }
}

/// One element of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// A message, by its byte range in the body, and its kind.
    Message(Range<usize>, Kind),
    /// Not a message: answered in the array with this JSON-RPC error (id `null`).
    Invalid(EnvelopeError),
}

/// True when `body` is a JSON array (by its first non-blank byte).
pub fn is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Splits a batch body into its elements.
pub fn split(body: &[u8]) -> Result<Vec<Element>, BatchError> {
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| BatchError::Parse(e.to_string()))?;
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(span) = span_of(body, item.get()) else {
            continue; // borrowed from `body`, so always found
        };
        let element = match envelope::parse(&body[span.clone()]) {
            Ok(env) if env.kind == Kind::Request && env.method.as_deref() == Some("initialize") => {
                return Err(BatchError::Initialize);
            }
            Ok(env) => Element::Message(span, env.kind),
            // A nested array is not a message either.
            Err(EnvelopeError::Batch) => Element::Invalid(EnvelopeError::Invalid(
                "a batch element must be a JSON-RPC object",
            )),
            Err(e) => Element::Invalid(e),
        };
        out.push(element);
    }
    Ok(out)
}

/// The answer to a batch: its responses in one JSON array (`None` when it held no request,
/// which is answered 202).
pub fn join(responses: &[impl AsRef<[u8]>]) -> Option<Vec<u8>> {
    if responses.is_empty() {
        return None;
    }
    let len: usize = responses.iter().map(|r| r.as_ref().len() + 1).sum();
    let mut out = Vec::with_capacity(len + 1);
    out.push(b'[');
    for (n, response) in responses.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(response.as_ref());
    }
    out.push(b']');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_split_byte_exact() {
        let body = br#" [ {"jsonrpc":"2.0","id":"a" ,"method":"ping"}, {"jsonrpc":"2.0","method":"notifications/x"},
            {"jsonrpc":"2.0","id":7,"result":{}}, 5, [1] ]"#;
        assert!(is_batch(body));
        let got = split(body).unwrap();
        assert_eq!(got.len(), 5);
        let Element::Message(first, Kind::Request) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            &body[first.clone()],
            br#"{"jsonrpc":"2.0","id":"a" ,"method":"ping"}"#
        );
        assert!(matches!(got[1], Element::Message(_, Kind::Notification)));
        assert!(matches!(got[2], Element::Message(_, Kind::Result)));
        assert!(matches!(&got[3], Element::Invalid(e) if e.code() == INVALID_REQUEST));
        assert!(matches!(&got[4], Element::Invalid(e) if e.code() == INVALID_REQUEST));
    }

    #[test]
    fn refused_batches() {
        assert_eq!(split(b"[]"), Err(BatchError::Empty));
        assert_eq!(split(b" [ ] "), Err(BatchError::Empty));
        let init = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"initialize","params":{}}]"#;
        assert_eq!(split(init), Err(BatchError::Initialize));
        assert!(matches!(split(b"[1,"), Err(BatchError::Parse(_))));
        assert!(!is_batch(br#" {"a":[1]}"#));
    }

    #[test]
    fn responses_join_into_one_array() {
        assert_eq!(
            join(&[&b"{\"id\":1}"[..], b"{\"id\":\"x\"}"]).unwrap(),
            b"[{\"id\":1},{\"id\":\"x\"}]"
        );
        let none: &[&[u8]] = &[];
        assert_eq!(join(none), None);
    }
}
