//! DESIGN §1 steps 1–2: which tenant a request names, and whether it may speak for it.
//! Runs on headers only, before any body is read.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::clients::{ClientId, ClientSpec, IdError};

/// The tenant header.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

/// Applies the header rules in the order of DESIGN §1.
pub fn client_id(headers: &HeaderMap) -> Result<ClientId, ApiError> {
    let mut values = headers.get_all(CLIENT_ID_HEADER).iter();
    let Some(value) = values.next() else {
        return Err(ApiError::missing_client_id());
    };
    if values.next().is_some() {
        return Err(ApiError::duplicate_client_id());
    }
    // Opaque (non-UTF-8) bytes cannot be alphanumeric.
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| ApiError::invalid_client_id())?;
    if text.trim().is_empty() {
        return Err(ApiError::missing_client_id());
    }
    if text.contains(',') {
        return Err(ApiError::duplicate_client_id());
    }
    ClientId::parse(text).map_err(|e| match e {
        IdError::Empty => ApiError::missing_client_id(),
        IdError::TooLong | IdError::BadChar => ApiError::invalid_client_id(),
    })
}

/// Checks `Authorization: Bearer <token>` against the tenant's token hash. A tenant
/// without one is served only when the operator allows open tenants.
pub fn authorize(headers: &HeaderMap, spec: &ClientSpec, allow_open: bool) -> Result<(), ApiError> {
    let Some(expected) = &spec.token_sha256 else {
        return if allow_open {
            Ok(())
        } else {
            Err(ApiError::no_token_configured())
        };
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(ApiError::unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Constant time: the comparison must not reveal how many bytes matched.
    if bool::from(digest.ct_eq(&expected.0)) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CLIENT_ID_HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn header_rules_in_design_order() {
        type Case<'a> = (&'a [&'a [u8]], Result<&'a str, &'a str>);
        let cases: &[Case<'_>] = &[
            (&[], Err("MISSING_CLIENT_ID")),
            (&[b"   "], Err("MISSING_CLIENT_ID")),
            (&[b"a", b"a"], Err("DUPLICATE_CLIENT_ID")),
            (&[b"a,b"], Err("DUPLICATE_CLIENT_ID")),
            (&[b"a-b"], Err("INVALID_CLIENT_ID")),
            (&[b"\xff"], Err("INVALID_CLIENT_ID")),
            (&[b"  Acme "], Ok("acme")),
        ];
        for (values, want) in cases {
            let got = client_id(&headers(values));
            let got = got.as_ref().map(|id| id.as_str()).map_err(|e| e.code);
            assert_eq!(got, *want, "{values:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(
            client_id(&headers(&[long.as_bytes()])).map_err(|e| e.code),
            Err("INVALID_CLIENT_ID")
        );
    }
}
