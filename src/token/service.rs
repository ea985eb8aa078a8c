//! Signed sessions as the daemon uses them: the key ring, the token lifetime and the record
//! of ids this node ended, behind one handle shared by every request.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{
    Claims, Ended, IssueError, KeyFileError, Keyring, NONCE_BYTES, ReducedParams, TokenError,
    unix_secs,
};
use crate::sync::lock;

/// `--session-key-file` in force: mint, verify, and remember ended ids.
#[derive(Debug)]
pub struct SessionTokens {
    ring: Keyring,
    lifetime: Duration,
    ended: Arc<Mutex<Ended>>,
}

/// Why a presented id is not resumed (each is a 404 to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// The token itself is bad.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// This node ended that session (DELETE, expiry, eviction).
    #[error("this node ended that session")]
    EndedHere,
}

impl SessionTokens {
    /// Loads the key file; tokens live for `lifetime`.
    pub fn load(path: &Path, lifetime: Duration) -> Result<Self, KeyFileError> {
        Ok(Self::with_ring(Keyring::load(path)?, lifetime))
    }

    /// Over a ring built elsewhere (tests, benchmarks).
    pub fn with_ring(ring: Keyring, lifetime: Duration) -> Self {
        Self {
            ring,
            lifetime,
            ended: Arc::default(),
        }
    }

    /// Re-reads the key file (SIGHUP); on error the keys in force stay.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        self.ring.reload()
    }

    /// A signed id for a new session from the caller's raw `initialize` params, and the
    /// mark that records its end.
    pub fn issue(
        &self,
        tenant: &str,
        version: &str,
        init_params: &str,
    ) -> Result<(Arc<str>, EndMark), IssueError> {
        let params = ReducedParams::parse(init_params).ok_or(IssueError::Params)?;
        self.issue_reduced(tenant, version, params)
    }

    /// As [`SessionTokens::issue`], from params the caller has parsed already.
    pub fn issue_reduced(
        &self,
        tenant: &str,
        version: &str,
        params: ReducedParams<'_>,
    ) -> Result<(Arc<str>, EndMark), IssueError> {
        let (token, nonce, expires) = super::issue(
            &self.ring,
            tenant,
            version,
            params,
            SystemTime::now(),
            self.lifetime,
        )?;
        let mark = EndMark {
            nonce,
            expires,
            ended: self.ended.clone(),
        };
        Ok((token, mark))
    }

    /// The claims of `token` when this node may resume it for `tenant` now.
    pub fn resumable(&self, token: &str, tenant: &str) -> Result<Claims, ResumeRefused> {
        let claims = super::verify(&self.ring, token, tenant, SystemTime::now())?;
        if lock(&self.ended).was_ended(&claims.nonce, claims.expires) {
            return Err(ResumeRefused::EndedHere);
        }
        Ok(claims)
    }

    /// The mark for a session resumed from `claims`; make it only once the session exists
    /// (dropping it records the id as ended).
    pub fn mark(&self, claims: &Claims) -> EndMark {
        EndMark {
            nonce: claims.nonce,
            expires: claims.expires,
            ended: self.ended.clone(),
        }
    }

    /// Ended ids remembered now.
    pub fn ended_len(&self) -> usize {
        lock(&self.ended).len()
    }
}

/// Attached to a signed session: records the id as ended on this node when dropped (the
/// session store drops it as the session leaves, for whatever reason).
#[derive(Debug)]
pub struct EndMark {
    nonce: [u8; NONCE_BYTES],
    expires: u64,
    ended: Arc<Mutex<Ended>>,
}

impl EndMark {
    /// True from the token's absolute expiry on: the session ends on every node.
    pub fn is_expired(&self) -> bool {
        unix_secs(SystemTime::now()) >= self.expires
    }
}

impl Drop for EndMark {
    fn drop(&mut self) {
        lock(&self.ended).end(self.nonce, self.expires, unix_secs(SystemTime::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::keys::Key;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const PARAMS: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{}}"#;

    fn tokens() -> SessionTokens {
        let ring = Keyring::from_keys(vec![Key::parse(KEY).unwrap()]).unwrap();
        SessionTokens::with_ring(ring, Duration::from_secs(600))
    }

    #[test]
    fn an_id_this_node_ended_is_never_resumed_here_but_a_live_one_is() {
        let tokens = tokens();
        let (id, mark) = tokens.issue("acme", "2025-11-25", PARAMS).unwrap();
        assert!(!mark.is_expired());
        let claims = tokens.resumable(&id, "acme").unwrap();
        assert_eq!(claims.version, "2025-11-25");
        assert!(
            tokens.resumable(&id, "acme").is_ok(),
            "checking records nothing"
        );
        drop(tokens.mark(&claims)); // a resumed copy that ends counts
        assert_eq!(
            tokens.resumable(&id, "acme").unwrap_err(),
            ResumeRefused::EndedHere
        );
        drop(mark);
        assert_eq!(tokens.ended_len(), 1, "one id, recorded once");
        assert!(matches!(
            tokens.resumable(&id, "other"),
            Err(ResumeRefused::Token(TokenError::OtherTenant))
        ));
        let (other, _live) = tokens.issue("acme", "2025-11-25", PARAMS).unwrap();
        assert!(tokens.resumable(&other, "acme").is_ok());
    }
}
