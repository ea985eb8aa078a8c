//! Multi round-trip requests (2026-07-28, SEP-2322) bridged onto a session-era child.
//!
//! A session-era child asks its caller things (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) with requests of its own, in the middle of a call.
//! A stateless caller cannot be sent requests; instead its call is answered with an
//! `input_required` result carrying the child's request, and the call is *parked* here,
//! still running at the child. The caller's retry (same method and params, plus
//! `inputResponses` and the `requestState` mcpmux minted) resumes the parked call: the
//! answer goes to the child under the child's own id, and the retry's reply carries
//! whatever the call does next (its result, or another round).
//!
//! `requestState` is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`, the
//! key random per process. The payload names the tenant, the parked call, an expiry and a
//! digest of the request's method and params (without `_meta`, `inputResponses` and
//! `requestState`), so a state is good only for its tenant, its request and its time; the
//! parked call is taken out on use, so a state is good for one retry.
//!
//! Invariant: a parked call is resumed at most once per state, and one that nobody
//! resumes before its expiry is dropped — its pending child request gets an error and the
//! call a `notifications/cancelled` at the child.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::call::{Call, CallEvent};
use super::envelope::{self, Kind};
use crate::sync::lock;

/// Parked calls per tenant; beyond it the child's request is refused.
pub const MAX_PARKED: usize = 1024;
/// Longest `requestState` accepted (ours are about 200 bytes).
const MAX_STATE_BYTES: usize = 1024;

/// Params keys that carry a round's answers rather than the request itself.
const ROUND_KEYS: [&str; 3] = ["_meta", "inputResponses", "requestState"];

/// Why a retry's `requestState` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not minted by this process, or altered.
    #[error("requestState is not one this server issued, or it was altered")]
    Forged,
    /// Minted for another tenant.
    #[error("requestState was issued to another client")]
    OtherTenant,
    /// Past its expiry.
    #[error("requestState has expired; send the request again without it")]
    Expired,
    /// Presented with another method or changed params.
    #[error(
        "requestState was issued for a different request; retry with the original method and params"
    )]
    Mismatch,
    /// Already used (each state is good for one retry).
    #[error("requestState was already used; each one is good for one retry")]
    Replayed,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Tenant id.
    t: String,
    /// Parked call.
    n: u64,
    /// Expiry, Unix milliseconds.
    e: u64,
    /// Hex digest of method and params.
    d: String,
}

/// A call waiting for its caller's retry.
struct Parked {
    call: Call,
    /// The key of the child's request in `inputRequests` (its caller-side id).
    key: String,
    /// That input request, `{"method":...,"params":...}`, for asking again.
    request: Bytes,
    digest: [u8; 32],
}

/// A resumed call and what its retry must do for the child.
pub struct Resumed {
    /// The call, still running at the child.
    pub call: Call,
    /// The key whose answer the child waits for.
    pub key: String,
    request: Bytes,
    digest: [u8; 32],
}

/// One tenant's parked calls.
pub struct Rounds {
    tenant: String,
    /// How long a caller has to retry.
    ttl: Duration,
    next: AtomicU64,
    parked: Mutex<HashMap<u64, Parked>>,
}

impl std::fmt::Debug for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rounds")
            .field("tenant", &self.tenant)
            .field("parked", &self.len())
            .finish()
    }
}

/// The per-process HMAC key; `None` when the OS has no randomness to give.
fn secret() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).ok().map(|()| key)
    })
    .as_ref()
}

fn mac(key: &[u8; 32], payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(payload);
    mac
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Digest of a request's method and params without the round's own keys, so a retry
/// matches its original whatever answers and `_meta` it carries.
pub fn request_digest(method: &str, params: Option<&RawValue>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    let value = params.and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok());
    if let Some(serde_json::Value::Object(mut map)) = value {
        for key in ROUND_KEYS {
            map.remove(key);
        }
        hasher.update(serde_json::Value::Object(map).to_string().as_bytes());
    } else if let Some(params) = params {
        hasher.update(params.get().as_bytes());
    }
    hasher.finalize().into()
}

/// The round fields of a retry's params, borrowed.
#[derive(Deserialize, Default)]
pub struct RoundFields<'a> {
    /// `requestState`, as written.
    #[serde(borrow, rename = "requestState")]
    pub request_state: Option<&'a RawValue>,
    /// `inputResponses`, as written.
    #[serde(borrow, rename = "inputResponses")]
    pub input_responses: Option<&'a RawValue>,
}

/// Reads `requestState` and `inputResponses` from `params`.
pub fn round_fields(params: Option<&RawValue>) -> RoundFields<'_> {
    params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default()
}

/// The raw answer for `key` in an `inputResponses` object; unknown keys are ignored, as
/// the spec says.
pub fn response_for<'a>(responses: Option<&'a RawValue>, key: &str) -> Option<&'a RawValue> {
    let map: HashMap<String, &RawValue> = serde_json::from_str(responses?.get()).ok()?;
    map.get(key).copied()
}

impl Rounds {
    /// No parked calls for `tenant`; callers get `ttl` to retry.
    pub fn new(tenant: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            tenant: tenant.to_owned(),
            ttl,
            next: AtomicU64::new(1),
            parked: Mutex::default(),
        })
    }

    /// Calls parked now.
    pub fn len(&self) -> usize {
        lock(&self.parked).len()
    }

    /// True when no call is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks `call`, whose child just sent `request` (a request line whose id is the
    /// caller-side id); returns the `input_required` reply for the call's current caller.
    /// `Err` gives the call back when it cannot be parked (not a request mcpmux can put in
    /// `inputRequests`, too many parked, no randomness): the caller then refuses it.
    pub fn park(
        self: &Arc<Self>,
        call: Call,
        request: &[u8],
        digest: [u8; 32],
    ) -> Result<Bytes, Call> {
        let Some((key, input)) = input_request(request) else {
            return Err(call);
        };
        self.park_as(call, key, input, digest)
    }

    /// Parks a resumed call again, asking the same thing (its retry lacked the answer).
    pub fn ask_again(self: &Arc<Self>, resumed: Resumed) -> Result<Bytes, Call> {
        self.park_as(resumed.call, resumed.key, resumed.request, resumed.digest)
    }

    fn park_as(
        self: &Arc<Self>,
        mut call: Call,
        key: String,
        request: Bytes,
        digest: [u8; 32],
    ) -> Result<Bytes, Call> {
        let Some(secret) = secret() else {
            return Err(call);
        };
        if self.len() >= MAX_PARKED {
            return Err(call);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let payload = Payload {
            t: self.tenant.clone(),
            n,
            e: unix_ms(SystemTime::now() + self.ttl),
            d: hex::encode(digest),
        };
        let payload = match serde_json::to_vec(&payload) {
            Ok(bytes) => bytes,
            Err(_) => return Err(call),
        };
        let tag = mac(secret, &payload).finalize().into_bytes();
        let state = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        );
        call.park(); // progress while parked reaches nobody
        let reply = input_required(call.orig_id(), &key, &request, &state);
        let parked = Parked {
            call,
            key,
            request,
            digest,
        };
        lock(&self.parked).insert(n, parked);
        let rounds = Arc::downgrade(self);
        let ttl = self.ttl;
        // Owned by the parked call: ends at its expiry, when it is dropped unless resumed.
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            expire(&rounds, n);
        });
        Ok(reply)
    }

    /// Takes the call `state` parks, checking the state against this tenant, the retry's
    /// method and params (`digest`) and the clock.
    pub fn resume(&self, state: &str, digest: &[u8; 32]) -> Result<Resumed, StateError> {
        let payload = self.verify(state)?;
        if payload.t != self.tenant {
            return Err(StateError::OtherTenant);
        }
        if unix_ms(SystemTime::now()) > payload.e {
            return Err(StateError::Expired);
        }
        if payload.d != hex::encode(digest) {
            return Err(StateError::Mismatch);
        }
        let parked = lock(&self.parked)
            .remove(&payload.n)
            .ok_or(StateError::Replayed)?;
        Ok(Resumed {
            call: parked.call,
            key: parked.key,
            request: parked.request,
            digest: parked.digest,
        })
    }

    fn verify(&self, state: &str) -> Result<Payload, StateError> {
        if state.len() > MAX_STATE_BYTES {
            return Err(StateError::Forged);
        }
        let secret = secret().ok_or(StateError::Forged)?;
        let (payload, tag) = state.split_once('.').ok_or(StateError::Forged)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| StateError::Forged)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| StateError::Forged)?;
        // Constant time: the comparison must not reveal how much of a forged tag matched.
        mac(secret, &payload)
            .verify_slice(&tag)
            .map_err(|_| StateError::Forged)?;
        serde_json::from_slice(&payload).map_err(|_| StateError::Forged)
    }
}

/// Drops a parked call nobody resumed: its child request gets an error, then the call is
/// cancelled at the child (dropping it does that).
fn expire(rounds: &Weak<Rounds>, n: u64) {
    let Some(rounds) = rounds.upgrade() else {
        return;
    };
    let Some(mut parked) = lock(&rounds.parked).remove(&n) else {
        return; // resumed in time
    };
    debug!(client_id = %rounds.tenant, key = %parked.key, "caller never retried its input_required round; cancelling the call");
    let relay = parked.call.relay().clone();
    let owner = parked.call.input_owner();
    relay.refuse_input(&owner, &parked.key, "the caller did not answer in time");
    // Further requests the child sent while the call was parked wait in its queue.
    while let Some(CallEvent::Related(message)) = parked.call.try_next() {
        if let Some((key, _)) = input_request(&message) {
            relay.refuse_input(&owner, &key, "the caller did not answer in time");
        }
    }
}

/// The key and `{"method","params"}` object of a child's request line, when it is one
/// that may go in `inputRequests`.
fn input_request(line: &[u8]) -> Option<(String, Bytes)> {
    let env = envelope::parse(line).ok()?;
    if env.kind != Kind::Request {
        return None;
    }
    let method = env.method.as_deref()?;
    if !matches!(
        method,
        "sampling/createMessage" | "elicitation/create" | "roots/list"
    ) {
        return None;
    }
    let key = env.id?.get().trim_matches('"').to_owned();
    let method = serde_json::Value::from(method).to_string();
    let object = match env.params {
        Some(params) => format!(r#"{{"method":{method},"params":{}}}"#, params.get()),
        None => format!(r#"{{"method":{method}}}"#),
    };
    Some((key, object.into()))
}

/// The `input_required` reply under the caller's `id`.
fn input_required(id: &[u8], key: &str, request: &[u8], state: &str) -> Bytes {
    let mut out = Vec::with_capacity(request.len() + state.len() + 128);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id);
    out.extend_from_slice(br#","result":{"resultType":"input_required","inputRequests":{"#);
    out.extend_from_slice(serde_json::Value::from(key).to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(request);
    out.extend_from_slice(br#"},"requestState":"#);
    out.extend_from_slice(serde_json::Value::from(state).to_string().as_bytes());
    out.extend_from_slice(b"}}");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_the_rounds_own_keys_and_nothing_else() {
        let params = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let base = request_digest(
            "tools/call",
            Some(&params(r#"{"name":"a","arguments":{"x":1}}"#)),
        );
        let retry = params(
            r#"{"name":"a","arguments":{"x":1},"_meta":{"p":1},"inputResponses":{"k":{}},"requestState":"s"}"#,
        );
        assert_eq!(request_digest("tools/call", Some(&retry)), base);
        let changed = params(r#"{"name":"a","arguments":{"x":2}}"#);
        assert_ne!(request_digest("tools/call", Some(&changed)), base);
        let other = params(r#"{"name":"a","arguments":{"x":1}}"#);
        assert_ne!(request_digest("prompts/get", Some(&other)), base);
    }

    #[test]
    fn states_that_were_not_minted_here_are_forged() {
        let rounds = Rounds::new("acme", Duration::from_secs(60));
        let digest = [0; 32];
        for state in ["", "x", "a.b", "e30.AAAA", &"A".repeat(4096)] {
            assert_eq!(
                rounds.resume(state, &digest).err(),
                Some(StateError::Forged),
                "{state:?}"
            );
        }
    }

    #[test]
    fn input_required_carries_the_childs_request_under_its_key() {
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{"maxTokens":5}}"#;
        let (key, request) = input_request(line).unwrap();
        assert_eq!(key, "7");
        let reply = input_required(b"\"r1\"", &key, &request, "s.t");
        let value: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"jsonrpc":"2.0","id":"r1","result":{
                "resultType":"input_required",
                "inputRequests":{"7":{"method":"sampling/createMessage","params":{"maxTokens":5}}},
                "requestState":"s.t"}})
        );
        let ping = br#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#;
        assert!(
            input_request(ping).is_none(),
            "only sampling, elicitation and roots"
        );
    }
}
