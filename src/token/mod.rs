//! Signed session ids (`--session-key-file`): an `Mcp-Session-Id` any node sharing the key
//! file can verify and resume (DESIGN §6).
//!
//! A token is `m1.<payload>.<tag>`, both parts unpadded URL-safe base64 (visible ASCII).
//! The payload is JSON naming the tenant, the negotiated protocol revision, the caller's
//! `initialize` params reduced to what a fresh child needs (`protocolVersion`,
//! `capabilities`, `clientInfo`), a 128-bit nonce from the OS CSPRNG, the issue time and an
//! absolute expiry (Unix seconds: tokens cross machines, so wall-clock time). The tag is
//! HMAC-SHA256 over `m1.<payload>` with the first key of the ring; any key of the ring
//! verifies, in constant time, so keys rotate without a flag day.
//!
//! Not here: what a node does with a verified token (the session lookup), and the record of
//! ids a node ended itself ([`ended`]).

pub mod ended;
pub mod keys;
mod service;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use ended::Ended;
pub use keys::{KeyFileError, Keyring};
pub use service::{EndMark, ResumeRefused, SessionTokens};

/// Version prefix of every token; a new layout gets a new prefix.
const PREFIX: &str = "m1.";
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload<'a> {
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
/// is per-request and is dropped to keep the token small.
#[derive(Serialize, Deserialize)]
struct ReducedParams<'a> {
    #[serde(
        rename = "protocolVersion",
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    protocol_version: Option<&'a RawValue>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    capabilities: Option<&'a RawValue>,
    #[serde(rename = "clientInfo", borrow, skip_serializing_if = "Option::is_none")]
    client_info: Option<&'a RawValue>,
}

/// Unix seconds of `at`.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Claims {
    /// Claims for a new session of `tenant` at revision `version`, from the caller's raw
    /// `initialize` params, issued now and valid for `lifetime`.
    pub fn new(
        tenant: &str,
        version: &str,
        init_params: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, IssueError> {
        let reduced: ReducedParams<'_> =
            serde_json::from_str(init_params).map_err(|_| IssueError::Params)?;
        let params = serde_json::to_string(&reduced).map_err(|_| IssueError::Params)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)?;
        let issued = unix_secs(now);
        Ok(Self {
            tenant: tenant.to_owned(),
            version: version.to_owned(),
            params,
            nonce,
            issued,
            expires: issued.saturating_add(lifetime.as_secs()),
        })
    }

    fn encode_payload(&self) -> String {
        let params = RawValue::from_string(self.params.clone())
            .unwrap_or_else(|_| RawValue::NULL.to_owned());
        let payload = Payload {
            t: self.tenant.as_str().into(),
            v: self.version.as_str().into(),
            p: &params,
            n: hex::encode(self.nonce).into(),
            i: self.issued,
            e: self.expires,
        };
        // Serializing owned strings and numbers cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    fn decode_payload(encoded: &str) -> Result<Self, TokenError> {
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed)?;
        let payload: Payload<'_> =
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

/// Signs `claims` with the ring's first key.
pub fn sign(ring: &Keyring, claims: &Claims) -> Result<String, IssueError> {
    let mut token = String::with_capacity(256);
    token.push_str(PREFIX);
    token.push_str(&claims.encode_payload());
    let tag = ring.signer().tag(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag));
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IssueError::TooLong(token.len()));
    }
    Ok(token)
}

/// Verifies `token` for a request of `tenant` at `now`: the tag against every key of the
/// ring (constant time per key), then the tenant and the expiry.
pub fn verify(
    ring: &Keyring,
    token: &str,
    tenant: &str,
    now: SystemTime,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES || !token.starts_with(PREFIX) {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    if !ring.verifies(signed.as_bytes(), &tag) {
        return Err(TokenError::BadSignature);
    }
    let claims = Claims::decode_payload(&signed[PREFIX.len()..])?;
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
            &"m1.".repeat(2000),
        ] {
            assert!(verify(&ring, bad, "acme", now).is_err(), "{bad:?}");
        }
        // Validly signed but not our JSON: still refused.
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(b"[1,2]"));
        let tag = URL_SAFE_NO_PAD.encode(ring.signer().tag(signed.as_bytes()));
        let token = format!("{signed}.{tag}");
        assert_eq!(
            verify(&ring, &token, "acme", now),
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
    }
}
