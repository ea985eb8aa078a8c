//! Signed session ids (`--session-key-file`): an `Mcp-Session-Id` any node sharing the key
//! file can verify and resume (DESIGN §6).
//!
//! A token is `m2.<payload>.<tag>`, both parts unpadded URL-safe base64 (visible ASCII).
//! The payload is bytes: a flags byte (0), the tenant and the negotiated protocol revision
//! (each a length byte and UTF-8), the caller's `initialize` params reduced to what a fresh
//! child needs (`protocolVersion`, `capabilities`, `clientInfo`; JSON, byte for byte), then
//! a 128-bit nonce from the OS CSPRNG, the issue time and an absolute expiry (Unix seconds,
//! 8 bytes big-endian each: tokens cross machines, so wall-clock time). The tag is
//! HMAC-SHA256 over `m2.<payload>` with the first key of the ring, truncated to its first
//! 128 bits (RFC 2104 §5); any key of the ring verifies, in constant time, so keys rotate
//! without a flag day. The id travels in a header on every request, so it is kept short:
//! 177 bytes for a minimal client and 288 for the Python SDK's params, against 318 and 422 in
//! the JSON layout before it.
//!
//! `m1.` tokens (a JSON payload and the whole 256-bit tag, issued by the previous release)
//! still verify, so sessions move to upgraded nodes during a rolling upgrade.
//!
//! Not here: what a node does with a verified token (the session lookup), and the record of
//! ids a node ended itself ([`ended`]).

pub mod ended;
pub mod keys;
mod prefix;
mod service;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::mcp::caps::ClientCaps;
use crate::mcp::version::Revision;

pub use ended::Ended;
pub use keys::{KeyFileError, Keyring};
pub use service::{EndMark, ResumeRefused, SessionTokens};

/// Version prefix of every token issued; a new layout gets a new prefix.
const PREFIX: &str = "m2.";
/// The previous layout's prefix, verified only.
const M1_PREFIX: &str = "m1.";
/// Bytes of CSPRNG nonce per token (128 bits).
pub const NONCE_BYTES: usize = 16;
/// Longest token issued or accepted, in bytes: it travels in a header on every request.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a signed session id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The tenant the session belongs to.
    pub tenant: String,
    /// The protocol revision negotiated with the caller.
    pub version: String,
    /// The caller's `initialize` params, reduced (see the module doc); raw JSON.
    pub params: String,
    /// Random, unique per session.
    pub nonce: [u8; NONCE_BYTES],
    /// Issue time, Unix seconds.
    pub issued: u64,
    /// Absolute expiry, Unix seconds: no node accepts the token from then on.
    pub expires: u64,
}

/// Why a token is refused. Every case is the same `404 session not found` to the caller;
/// the variant is for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this layout (a node-local id, truncated, bad base64, bad JSON).
    #[error("not a signed session id")]
    Malformed,
    /// No key of the ring made this tag: altered, or signed with an unknown key.
    #[error("signature does not verify with any key")]
    BadSignature,
    /// Past its absolute expiry.
    #[error("expired")]
    Expired,
    /// Signed for another tenant than the request's `X-Client-ID`.
    #[error("issued for another tenant")]
    OtherTenant,
}

/// Why no token could be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The OS random source failed.
    #[error("no randomness for a session nonce: {0}")]
    Random(#[from] getrandom::Error),
    /// The `initialize` params are not a JSON object.
    #[error("initialize params are not a JSON object")]
    Params,
    /// The token would exceed [`MAX_TOKEN_BYTES`] (a very large `capabilities` or
    /// `clientInfo`).
    #[error("a signed session id would be {0} bytes, over the {MAX_TOKEN_BYTES} limit")]
    TooLong(usize),
    /// The tenant id or the protocol revision is over [`MAX_FIELD_BYTES`] (never so for a
    /// valid client id).
    #[error("a tenant id or protocol revision over {MAX_FIELD_BYTES} bytes cannot be signed")]
    FieldTooLong,
}

/// Longest tenant id or protocol revision a token holds (its length is one byte).
pub const MAX_FIELD_BYTES: usize = 255;
/// Bytes of the payload after the params: nonce, issue time, expiry.
const TAIL_BYTES: usize = NONCE_BYTES + 16;

/// The `m1` payload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct M1Payload<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    v: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    p: &'a RawValue,
    #[serde(borrow)]
    n: std::borrow::Cow<'a, str>,
    i: u64,
    e: u64,
}

/// The fields of `initialize` params a fresh child needs; the rest (`_meta`, vendor fields)
/// is per-request and is dropped to keep the token small. Each is the caller's JSON, byte
/// for byte.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct ReducedParams<'a> {
    /// `protocolVersion`.
    #[serde(rename = "protocolVersion", borrow)]
    pub protocol_version: Option<&'a RawValue>,
    /// `capabilities`.
    #[serde(borrow)]
    pub capabilities: Option<&'a RawValue>,
    /// `clientInfo`.
    #[serde(rename = "clientInfo", borrow)]
    pub client_info: Option<&'a RawValue>,
}

impl<'a> ReducedParams<'a> {
    /// The fields of raw `initialize` params; `None` when they are not a JSON object.
    pub fn parse(init_params: &'a str) -> Option<Self> {
        serde_json::from_str(init_params).ok()
    }

    /// At least the bytes [`ReducedParams::write`] appends (a buffer's capacity).
    #[cfg(test)]
    fn len_bound(&self) -> usize {
        let field =
            |name: &str, v: Option<&RawValue>| v.map_or(0, |v| name.len() + 4 + v.get().len());
        2 + field("protocolVersion", self.protocol_version)
            + field("capabilities", self.capabilities)
            + field("clientInfo", self.client_info)
    }

    /// Appends them as one JSON object (`{}` when none is present).
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (name, value) in [
            ("protocolVersion", self.protocol_version),
            ("capabilities", self.capabilities),
            ("clientInfo", self.client_info),
        ] {
            let Some(value) = value else { continue };
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
    }
}

/// Unix seconds of `at`.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh nonce from the OS CSPRNG.
fn nonce() -> Result<[u8; NONCE_BYTES], IssueError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

impl Claims {
    /// What the caller can answer, from the capabilities its params carry at its revision
    /// (the oldest when the revision is unknown).
    pub fn caps(&self) -> ClientCaps {
        let revision = Revision::parse(&self.version).unwrap_or(Revision::R2024_11_05);
        let raw = ReducedParams::parse(&self.params).and_then(|p| p.capabilities);
        ClientCaps::parse(raw, revision)
    }

    /// The fields a token of these claims is encoded from.
    #[cfg(test)]
    fn fields(&self) -> Result<Fields<'_>, IssueError> {
        Ok(Fields {
            tenant: &self.tenant,
            version: &self.version,
            params: ReducedParams::parse(&self.params).ok_or(IssueError::Params)?,
            nonce: &self.nonce,
            issued: self.issued,
            expires: self.expires,
        })
    }

    /// Claims for a new session of `tenant` at revision `version`, from the caller's raw
    /// `initialize` params, issued now and valid for `lifetime`. Tests build tokens from
    /// these; the daemon mints with [`issue`], which builds no claims.
    #[cfg(test)]
    pub fn new(
        tenant: &str,
        version: &str,
        init_params: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, IssueError> {
        let reduced = ReducedParams::parse(init_params).ok_or(IssueError::Params)?;
        let mut params = Vec::with_capacity(reduced.len_bound());
        reduced.write(&mut params);
        let issued = unix_secs(now);
        Ok(Self {
            tenant: tenant.to_owned(),
            version: version.to_owned(),
            // Raw JSON slices and ASCII punctuation: UTF-8 throughout.
            params: String::from_utf8(params).map_err(|_| IssueError::Params)?,
            nonce: nonce()?,
            issued,
            expires: issued.saturating_add(lifetime.as_secs()),
        })
    }

    /// The claims of an `m2` payload (base64).
    fn decode_payload(encoded: &str) -> Result<Self, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed)?;
        let [flags, more @ ..] = bytes.as_slice() else {
            return Err(TokenError::Malformed);
        };
        let mut rest = more;
        if flags & !VERSION_IMPLIED != 0 {
            return Err(TokenError::Malformed); // a later layout's flag
        }
        let tenant = take_field(&mut rest)?;
        let version = take_field(&mut rest)?;
        let split = rest
            .len()
            .checked_sub(TAIL_BYTES)
            .ok_or(TokenError::Malformed)?;
        let (params, tail) = rest.split_at(split);
        let params = std::str::from_utf8(params).map_err(|_| TokenError::Malformed)?;
        let params = if flags & VERSION_IMPLIED != 0 {
            // Only a revision that needs no escapes is left out (`names_string`): quoted as
            // it is, it restores the params byte for byte.
            with_version_first(params, version)?
        } else {
            params.to_owned()
        };
        if ReducedParams::parse(&params).is_none() {
            return Err(TokenError::Malformed);
        }
        let (nonce, times) = tail.split_at(NONCE_BYTES);
        let (issued, expires) = times.split_at(8);
        let secs = |b: &[u8]| {
            <[u8; 8]>::try_from(b)
                .map(u64::from_be_bytes)
                .map_err(|_| TokenError::Malformed)
        };
        Ok(Self {
            tenant: tenant.to_owned(),
            version: version.to_owned(),
            params,
            nonce: nonce.try_into().map_err(|_| TokenError::Malformed)?,
            issued: secs(issued)?,
            expires: secs(expires)?,
        })
    }

    /// The claims of an `m1` payload (base64 of JSON).
    fn decode_m1_payload(encoded: &str) -> Result<Self, TokenError> {
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed)?;
        let payload: M1Payload<'_> =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let mut nonce = [0u8; NONCE_BYTES];
        hex::decode_to_slice(payload.n.as_bytes(), &mut nonce)
            .map_err(|_| TokenError::Malformed)?;
        Ok(Self {
            tenant: payload.t.into_owned(),
            version: payload.v.into_owned(),
            params: payload.p.get().to_owned(),
            nonce,
            issued: payload.i,
            expires: payload.e,
        })
    }
}

/// Flag: the params' `protocolVersion` is the negotiated revision, and left out.
const VERSION_IMPLIED: u8 = 1;

/// True when `raw` is the JSON string of `s` with nothing escaped.
fn names_string(raw: &str, s: &str) -> bool {
    raw.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .is_some_and(|inner| inner == s)
}

/// `params` (a JSON object written by [`ReducedParams::write`] without `protocolVersion`)
/// with `"protocolVersion":"<version>"` put back first, as `write` orders it.
fn with_version_first(params: &str, version: &str) -> Result<String, TokenError> {
    let rest = params.strip_prefix('{').ok_or(TokenError::Malformed)?;
    let sep = if rest == "}" { "" } else { "," };
    Ok(format!(r#"{{"protocolVersion":"{version}"{sep}{rest}"#))
}

/// Takes a length byte and that many bytes of UTF-8 off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a str, TokenError> {
    let [len, more @ ..] = *rest else {
        return Err(TokenError::Malformed);
    };
    let len = usize::from(*len);
    if more.len() < len {
        return Err(TokenError::Malformed);
    }
    let (field, more) = more.split_at(len);
    *rest = more;
    std::str::from_utf8(field).map_err(|_| TokenError::Malformed)
}

/// Appends a length byte and `s`.
fn put_field(out: &mut Vec<u8>, s: &str) -> Result<(), IssueError> {
    let len = u8::try_from(s.len()).map_err(|_| IssueError::FieldTooLong)?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// What a token is made of, borrowed: the claims without their owned copies.
struct Fields<'a> {
    tenant: &'a str,
    version: &'a str,
    params: ReducedParams<'a>,
    nonce: &'a [u8; NONCE_BYTES],
    issued: u64,
    expires: u64,
}

impl Fields<'_> {
    /// Appends the payload up to the nonce (flags, tenant, revision, params): the part every
    /// session of a tenant and client has in common.
    fn payload_head(&self, out: &mut Vec<u8>) -> Result<(), IssueError> {
        // The caller nearly always asks for the revision it gets: then it is written once.
        let implied = self
            .params
            .protocol_version
            .is_some_and(|raw| names_string(raw.get(), self.version));
        out.push(if implied { VERSION_IMPLIED } else { 0 });
        put_field(out, self.tenant)?;
        put_field(out, self.version)?;
        if implied {
            ReducedParams {
                protocol_version: None,
                ..self.params
            }
            .write(out);
        } else {
            self.params.write(out);
        }
        Ok(())
    }

    /// Appends the rest of the payload: the nonce, the times.
    fn payload_tail(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.nonce);
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
    }

    /// `m1.<payload>.<tag>`. The head of the payload comes encoded and MAC'd from the key's
    /// cache ([`prefix`]); only the rest (the last bytes of the head that do not fill a
    /// base64 group, the nonce, the times) is encoded and MAC'd here. Built in this
    /// thread's scratch buffers, so the one allocation is the id itself.
    fn sign(&self, ring: &Keyring) -> Result<Arc<str>, IssueError> {
        with_scratch(|json, token| {
            self.payload_head(json)?;
            let head_len = json.len();
            self.payload_tail(json);
            let body_len = PREFIX.len() + base64_len(json.len());
            let len = body_len + 1 + base64_len(TAG_BYTES);
            if len > MAX_TOKEN_BYTES {
                return Err(IssueError::TooLong(len));
            }
            let (aligned, mac) = ring.head(self.tenant, &json[..head_len], token);
            let start = token.len();
            token.resize(len, 0);
            // Both slices are sized by `base64_len`, so neither encode can run short.
            let short = |_| IssueError::TooLong(len);
            URL_SAFE_NO_PAD
                .encode_slice(&json[aligned..], &mut token[start..body_len])
                .map_err(short)?;
            let tag = keys::finish(mac, &token[start..body_len]);
            token[body_len] = b'.';
            URL_SAFE_NO_PAD
                .encode_slice(&tag[..TAG_BYTES], &mut token[body_len + 1..])
                .map_err(short)?;
            // Base64 and ASCII punctuation only.
            let text = std::str::from_utf8(token).map_err(|_| IssueError::TooLong(len))?;
            Ok(Arc::from(text))
        })
    }
}

/// Scratch capacity a thread keeps between tokens; a larger one (huge params) is let go.
const SCRATCH_KEEP: usize = 2 * MAX_TOKEN_BYTES;

thread_local! {
    /// The payload JSON and the token being built, reused token after token.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on this thread's two scratch buffers, emptied.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (json, token) = &mut *bufs;
            json.clear();
            token.clear();
            let out = f(json, token);
            for buf in [json, token] {
                if buf.capacity() > SCRATCH_KEEP {
                    *buf = Vec::new();
                }
            }
            out
        }
        // Not re-entered today; if it ever is, fresh buffers do.
        Err(_) => f(&mut Vec::new(), &mut Vec::new()),
    })
}

/// Bytes of a token's tag: HMAC-SHA256 truncated to 128 bits.
pub(crate) const TAG_BYTES: usize = 16;
/// Bytes of an `m1` token's tag: the whole HMAC-SHA256.
const M1_TAG_BYTES: usize = 32;

/// Length of `n` bytes as unpadded base64.
const fn base64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Signs `claims` with the ring's first key (tests; the daemon mints with [`issue`]).
#[cfg(test)]
pub fn sign(ring: &Keyring, claims: &Claims) -> Result<String, IssueError> {
    let token = claims.fields()?.sign(ring)?;
    Ok(token.as_ref().to_owned())
}

/// A signed id for a new session of `tenant` at `version` from the caller's `initialize`
/// fields, issued at `now` for `lifetime`, without building [`Claims`]: its nonce and expiry.
pub(crate) fn issue(
    ring: &Keyring,
    tenant: &str,
    version: &str,
    params: ReducedParams<'_>,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(Arc<str>, [u8; NONCE_BYTES], u64), IssueError> {
    let nonce = nonce()?;
    let issued = unix_secs(now);
    let expires = issued.saturating_add(lifetime.as_secs());
    let token = Fields {
        tenant,
        version,
        params,
        nonce: &nonce,
        issued,
        expires,
    }
    .sign(ring)?;
    Ok((token, nonce, expires))
}

/// Verifies `token` for a request of `tenant` at `now`: the tag against every key of the
/// ring (constant time per key), then the tenant and the expiry.
pub fn verify(
    ring: &Keyring,
    token: &str,
    tenant: &str,
    now: SystemTime,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let m1 = token.starts_with(M1_PREFIX);
    if !m1 && !token.starts_with(PREFIX) {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut tag_bytes = [0u8; M1_TAG_BYTES];
    let tag_len = URL_SAFE_NO_PAD
        .decode_slice(tag, &mut tag_bytes)
        .map_err(|_| TokenError::Malformed)?;
    // Both prefixes are three bytes; "m1." alone splits into a body shorter than that.
    let payload = signed.get(PREFIX.len()..).ok_or(TokenError::Malformed)?;
    let claims = if m1 {
        if tag_len != M1_TAG_BYTES || !ring.verifies(signed.as_bytes(), &tag_bytes) {
            return Err(TokenError::BadSignature);
        }
        Claims::decode_m1_payload(payload)?
    } else {
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&tag_bytes[..TAG_BYTES]);
        if tag_len != TAG_BYTES || !ring.verifies_truncated(signed.as_bytes(), &tag) {
            return Err(TokenError::BadSignature);
        }
        Claims::decode_payload(payload)?
    };
    if claims.tenant != tenant {
        return Err(TokenError::OtherTenant);
    }
    if unix_secs(now) >= claims.expires {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::Key;

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const PARAMS: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"x-vendor":{"a":1}},"clientInfo":{"name":"t","version":"1"},"_meta":{"big":"dropped"}}"#;

    fn ring(keys: &[&str]) -> Keyring {
        Keyring::from_keys(keys.iter().map(|k| Key::parse(k).unwrap()).collect()).unwrap()
    }

    fn claims(now: SystemTime) -> Claims {
        Claims::new("acme", "2025-11-25", PARAMS, now, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn a_signed_token_is_visible_ascii_and_verifies_to_its_claims() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let issued = claims(now);
        let token = sign(&ring, &issued).unwrap();
        assert!(token.bytes().all(|b| b.is_ascii_graphic()), "{token}");
        assert!(http::HeaderValue::from_str(&token).is_ok());
        let got = verify(&ring, &token, "acme", now).unwrap();
        assert_eq!(got, issued);
        assert_eq!(got.expires - got.issued, 3600);
        let params: serde_json::Value = serde_json::from_str(&got.params).unwrap();
        assert_eq!(
            params,
            serde_json::json!({"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"x-vendor":{"a":1}},"clientInfo":{"name":"t","version":"1"}}),
            "capabilities are kept byte for byte, per-request _meta is dropped"
        );
    }

    #[test]
    fn an_id_issued_from_parsed_fields_carries_what_claims_new_reduces() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let life = Duration::from_secs(3600);
        // A tenant needing JSON escapes, and params with nested strings and whitespace.
        let tenant = "a\"b\\c\u{1}é";
        let fields = ReducedParams::parse(PARAMS).unwrap();
        let (token, nonce, expires) =
            issue(&ring, tenant, "2025-11-25", fields, now, life).unwrap();
        let got = verify(&ring, &token, tenant, now).unwrap();
        assert_eq!(got.tenant, tenant);
        assert_eq!((got.nonce, got.expires), (nonce, expires));
        assert_eq!(got.expires - got.issued, 3600);
        let reduced = Claims::new(tenant, "2025-11-25", PARAMS, now, life).unwrap();
        assert_eq!(got.params, reduced.params, "one reduction for both paths");
        let none = ReducedParams::parse("{}").unwrap();
        let (token, ..) = issue(&ring, "acme", "2025-11-25", none, now, life).unwrap();
        assert_eq!(verify(&ring, &token, "acme", now).unwrap().params, "{}");
    }

    /// The token of `claims` encoded whole, without the cache of heads.
    fn encoded_whole(ring: &Keyring, claims: &Claims) -> String {
        let fields = claims.fields().unwrap();
        let mut payload = Vec::new();
        fields.payload_head(&mut payload).unwrap();
        fields.payload_tail(&mut payload);
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&payload));
        let tag = ring.signer().tag(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]))
    }

    /// `claims` as the previous release signed them: `m1.`, JSON, the whole tag.
    fn m1_token(ring: &Keyring, claims: &Claims) -> String {
        let json = format!(
            r#"{{"t":{},"v":{},"p":{},"n":"{}","i":{},"e":{}}}"#,
            serde_json::Value::from(claims.tenant.as_str()),
            serde_json::Value::from(claims.version.as_str()),
            claims.params,
            hex::encode(claims.nonce),
            claims.issued,
            claims.expires,
        );
        let signed = format!("{M1_PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(ring.signer().tag(signed.as_bytes()));
        format!("{signed}.{tag}")
    }

    #[test]
    fn an_m1_token_of_the_previous_release_still_verifies_and_its_alterations_do_not() {
        let now = SystemTime::now();
        let stranger = ring(&[KEY_B]);
        let ring = ring(&[KEY_A]);
        let issued = claims(now);
        let old = m1_token(&ring, &issued);
        assert_eq!(verify(&ring, &old, "acme", now), Ok(issued.clone()));
        assert_eq!(
            verify(&ring, &old, "other", now),
            Err(TokenError::OtherTenant)
        );
        assert_eq!(
            verify(&stranger, &old, "acme", now),
            Err(TokenError::BadSignature)
        );
        // An m1 body under a 128-bit tag, or an m2 body under a whole tag: neither layout's.
        let (body, _) = old.rsplit_once('.').unwrap();
        let short = URL_SAFE_NO_PAD.encode(&ring.signer().tag(body.as_bytes())[..TAG_BYTES]);
        assert_eq!(
            verify(&ring, &format!("{body}.{short}"), "acme", now),
            Err(TokenError::BadSignature)
        );
        let new = sign(&ring, &issued).unwrap();
        let (body, _) = new.rsplit_once('.').unwrap();
        let whole = URL_SAFE_NO_PAD.encode(ring.signer().tag(body.as_bytes()));
        assert_eq!(
            verify(&ring, &format!("{body}.{whole}"), "acme", now),
            Err(TokenError::BadSignature)
        );
        let after = now + Duration::from_secs(3600);
        assert_eq!(verify(&ring, &old, "acme", after), Err(TokenError::Expired));
    }

    #[test]
    fn a_typical_clients_token_is_under_seven_tenths_of_the_m1_layout() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        // What the Python SDK sends.
        let params = r#"{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}},"clientInfo":{"name":"mcp","version":"2.3.0"}}"#;
        let claims = Claims::new(
            "acme-corp",
            "2025-11-25",
            params,
            now,
            Duration::from_secs(86_400),
        )
        .unwrap();
        let (new, old) = (sign(&ring, &claims).unwrap(), m1_token(&ring, &claims));
        assert!(new.starts_with("m2."), "{new}");
        assert!(
            new.len() * 10 <= old.len() * 7,
            "{} bytes against {}",
            new.len(),
            old.len()
        );
    }

    #[test]
    fn a_cached_head_gives_the_token_encoding_it_whole_gives() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let life = Duration::from_secs(3600);
        // Tenants of every length mod 3 put the head's end at every offset in a base64 group;
        // two params per tenant make the cache replace its entry, then hit it.
        for tenant in ["a", "ab", "abc", "abcd"] {
            // The caller's revision left out (it is the negotiated one) or kept (it is not).
            for params in [
                PARAMS,
                r#"{"protocolVersion":"2025-06-18"}"#,
                r#"{"protocolVersion":"2025-11-25"}"#,
                r#"{"capabilities":{}}"#,
                PARAMS,
            ] {
                for _ in 0..2 {
                    let claims = Claims::new(tenant, "2025-11-25", params, now, life).unwrap();
                    let token = sign(&ring, &claims).unwrap();
                    assert_eq!(token, encoded_whole(&ring, &claims), "{tenant} {params}");
                    assert_eq!(verify(&ring, &token, tenant, now).unwrap(), claims);
                }
            }
        }
    }

    #[test]
    fn nonces_are_128_bits_and_differ_between_sessions() {
        let now = SystemTime::now();
        let (a, b) = (claims(now), claims(now));
        assert_eq!(a.nonce.len() * 8, 128);
        assert_ne!(a.nonce, b.nonce);
        let ring = ring(&[KEY_A]);
        assert_ne!(sign(&ring, &a).unwrap(), sign(&ring, &b).unwrap());
    }

    #[test]
    fn altering_any_single_byte_is_refused() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let token = sign(&ring, &claims(now)).unwrap();
        for at in 0..token.len() {
            for replacement in [b'A', b'z', b'0', b'-', b'_', b'.'] {
                let mut bytes = token.clone().into_bytes();
                if bytes[at] == replacement {
                    continue;
                }
                bytes[at] = replacement;
                let altered = String::from_utf8(bytes).unwrap();
                assert!(
                    verify(&ring, &altered, "acme", now).is_err(),
                    "byte {at} set to {:?} must not verify: {altered}",
                    replacement as char
                );
            }
        }
    }

    #[test]
    fn a_token_signed_by_an_unknown_key_is_refused() {
        let now = SystemTime::now();
        let token = sign(&ring(&[KEY_B]), &claims(now)).unwrap();
        assert_eq!(
            verify(&ring(&[KEY_A]), &token, "acme", now),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_token_is_refused_from_its_expiry_on() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let token = sign(&ring, &claims(now)).unwrap();
        let just_before = now + Duration::from_secs(3599);
        assert!(verify(&ring, &token, "acme", just_before).is_ok());
        let at_expiry = now + Duration::from_secs(3600);
        assert_eq!(
            verify(&ring, &token, "acme", at_expiry),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_presented_for_another_tenant_is_refused() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        let token = sign(&ring, &claims(now)).unwrap();
        assert_eq!(
            verify(&ring, &token, "other", now),
            Err(TokenError::OtherTenant)
        );
    }

    #[test]
    fn rotation_new_key_first_signs_and_the_old_one_still_verifies() {
        let now = SystemTime::now();
        let old = sign(&ring(&[KEY_A]), &claims(now)).unwrap();
        let rotated = ring(&[KEY_B, KEY_A]);
        assert!(verify(&rotated, &old, "acme", now).is_ok());
        let new = sign(&rotated, &claims(now)).unwrap();
        assert!(verify(&ring(&[KEY_B]), &new, "acme", now).is_ok());
        assert_eq!(
            verify(&ring(&[KEY_A]), &new, "acme", now),
            Err(TokenError::BadSignature),
            "the first key signs"
        );
    }

    #[test]
    fn node_local_ids_and_garbage_are_malformed_not_a_panic() {
        let now = SystemTime::now();
        let ring = ring(&[KEY_A]);
        for bad in [
            "",
            "m1.",
            "m1..",
            "0123abcd",
            "m1.!!!.???",
            "m2.",
            "m2..",
            "m2.AAAA.AAAA",
            &"m1.".repeat(2000),
        ] {
            assert!(verify(&ring, bad, "acme", now).is_err(), "{bad:?}");
        }
        // Validly signed but not our layout: still refused.
        let mut wrong_lengths = vec![0u8, 200, b'a'];
        wrong_lengths.extend([0u8; TAIL_BYTES]);
        let mut unknown_flags = vec![0x80u8, 4];
        unknown_flags.extend_from_slice(b"acme\x0a2025-11-25{}");
        unknown_flags.extend([0u8; TAIL_BYTES]);
        let mut params_not_json = vec![0u8, 4];
        params_not_json.extend_from_slice(b"acme\x0a2025-11-25{");
        params_not_json.extend([0u8; TAIL_BYTES]);
        let no_tail = b"\x00\x04acme\x0a2025-11-25{}".to_vec();
        for payload in [
            b"[1,2]".to_vec(),
            wrong_lengths,
            unknown_flags,
            params_not_json,
            no_tail,
        ] {
            let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&payload));
            let tag = ring.signer().tag(signed.as_bytes());
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]));
            assert_eq!(
                verify(&ring, &token, "acme", now),
                Err(TokenError::Malformed),
                "{payload:?}"
            );
        }
        let signed = format!("{M1_PREFIX}{}", URL_SAFE_NO_PAD.encode(b"[1,2]"));
        let tag = URL_SAFE_NO_PAD.encode(ring.signer().tag(signed.as_bytes()));
        assert_eq!(
            verify(&ring, &format!("{signed}.{tag}"), "acme", now),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn params_that_are_not_an_object_or_too_large_are_not_signed() {
        let now = SystemTime::now();
        let life = Duration::from_secs(60);
        assert!(matches!(
            Claims::new("acme", "2025-11-25", "[1]", now, life),
            Err(IssueError::Params)
        ));
        let big = format!(
            r#"{{"protocolVersion":"2025-11-25","clientInfo":{{"name":"{}","version":"1"}}}}"#,
            "x".repeat(MAX_TOKEN_BYTES)
        );
        let claims = Claims::new("acme", "2025-11-25", &big, now, life).unwrap();
        assert!(matches!(
            sign(&ring(&[KEY_A]), &claims),
            Err(IssueError::TooLong(_))
        ));
        let long_revision = "9".repeat(MAX_FIELD_BYTES + 1);
        let claims = Claims::new("acme", &long_revision, "{}", now, life).unwrap();
        assert!(matches!(
            sign(&ring(&[KEY_A]), &claims),
            Err(IssueError::FieldTooLong)
        ));
        let at_limit = "9".repeat(MAX_FIELD_BYTES);
        let claims = Claims::new("acme", &at_limit, "{}", now, life).unwrap();
        let token = sign(&ring(&[KEY_A]), &claims).unwrap();
        assert_eq!(verify(&ring(&[KEY_A]), &token, "acme", now), Ok(claims));
    }
}
