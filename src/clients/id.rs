//! The client id rule, shared by the `X-Client-ID` header and client file stems.
//!
//! An id is trimmed and lowercased, then must match `^[a-z0-9]{1,64}$` (DESIGN §1, §2).

use std::fmt;

/// Longest accepted client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// A validated tenant identifier: lowercase ASCII letters and digits, 1 to 64 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

/// Why a string is not a client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty after trimming.
    #[error("client id is empty")]
    Empty,
    /// Longer than [`MAX_CLIENT_ID_LEN`].
    #[error("client id is longer than {MAX_CLIENT_ID_LEN} characters")]
    TooLong,
    /// Holds a character outside `a-z0-9`.
    #[error("client id must contain only alphanumeric characters (a-z, 0-9)")]
    BadChar,
}

impl ClientId {
    /// Applies the rule: trim, lowercase, then `[a-z0-9]{1,64}`.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(IdError::Empty);
        }
        let id = trimmed.to_ascii_lowercase();
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(IdError::BadChar);
        }
        if id.len() > MAX_CLIENT_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        for (raw, want) in [("acme", "acme"), (" ACME1 ", "acme1"), ("\tz9\t", "z9")] {
            assert_eq!(
                ClientId::parse(raw).map(|i| i.0),
                Ok(want.to_string()),
                "{raw:?}"
            );
        }
        let longest = "a".repeat(MAX_CLIENT_ID_LEN);
        assert!(ClientId::parse(&longest).is_ok());
    }

    #[test]
    fn rejects_by_rule() {
        let cases = [
            ("", IdError::Empty),
            ("   ", IdError::Empty),
            ("a-b", IdError::BadChar),
            ("a b", IdError::BadChar),
            ("ä", IdError::BadChar),
            ("a.json", IdError::BadChar),
            (&"a".repeat(MAX_CLIENT_ID_LEN + 1), IdError::TooLong),
        ];
        for (raw, want) in cases {
            assert_eq!(ClientId::parse(raw), Err(want), "{raw:?}");
        }
    }
}
