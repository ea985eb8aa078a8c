//! The head of a token, encoded and MAC'd once per key and per tenant's `initialize`
//! params, not once per session.
//!
//! A token's payload starts with what every session of a tenant, at one revision and with
//! one client's params, has in common (flags, tenant, revision, params); only the nonce and
//! the times after it differ. That head is most of the token, so base64-encoding it and running
//! it through HMAC-SHA256 was most of what signing cost. This cache keeps, per tenant, the
//! last head seen: its base64 up to a whole number of 3-byte groups (so the rest encodes on
//! its own and the two concatenate to the base64 of the whole), and the keyed HMAC state
//! after those bytes. The token is byte for byte what encoding it whole would give.
//!
//! It lives with the key set, so a reloaded key file starts an empty cache. Bounded:
//! [`SLOTS`] entries of one head each, and a head is under the token limit.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::keys::{HmacSha256, Key};
use super::{PREFIX, base64_len};

/// Entries kept; tenants share one by a hash of their id (a collision only costs a miss).
pub const SLOTS: usize = 64;

/// One head, encoded and MAC'd.
#[derive(Clone)]
struct Entry {
    /// The payload's head, whole: what a later head must equal to reuse this one.
    json: Vec<u8>,
    /// Bytes of `json` that `encoded` covers (a multiple of 3).
    aligned: usize,
    /// The token prefix and the base64 of `json[..aligned]`.
    encoded: Vec<u8>,
    /// The signing key's HMAC state after `encoded`.
    mac: HmacSha256,
}

/// See the module doc.
pub struct Cache {
    slots: Vec<Option<Entry>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.slots.iter().flatten().count();
        write!(f, "prefix::Cache({held} of {SLOTS})")
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            slots: vec![None; SLOTS],
        }
    }
}

/// FNV-1a of the tenant: which slot its heads use.
fn slot(tenant: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % SLOTS as u64) as usize
}

impl Cache {
    /// Appends the token prefix and the base64 of the longest 3-byte-aligned start of `json` (the
    /// payload's head) to `out`; returns how many bytes of `json` that covers and `key`'s
    /// HMAC state after what was appended.
    pub fn head(
        &mut self,
        key: &Key,
        tenant: &str,
        json: &[u8],
        out: &mut Vec<u8>,
    ) -> (usize, HmacSha256) {
        let at = slot(tenant);
        if let Some(Some(entry)) = self.slots.get(at)
            && entry.json == json
        {
            out.extend_from_slice(&entry.encoded);
            return (entry.aligned, entry.mac.clone());
        }
        let aligned = json.len() - json.len() % 3;
        let mut encoded = vec![0u8; PREFIX.len() + base64_len(aligned)];
        encoded[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        // Sized by `base64_len`: the encode cannot run short; if it did, the head would
        // simply not be cached and the token is encoded whole.
        if URL_SAFE_NO_PAD
            .encode_slice(&json[..aligned], &mut encoded[PREFIX.len()..])
            .is_err()
        {
            out.extend_from_slice(PREFIX.as_bytes());
            return (0, key.mac_after(PREFIX.as_bytes()));
        }
        let mac = key.mac_after(&encoded);
        out.extend_from_slice(&encoded);
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some(Entry {
                json: json.to_vec(),
                aligned,
                encoded,
                mac: mac.clone(),
            });
        }
        (aligned, mac)
    }
}
