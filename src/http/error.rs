//! Error answers: the tenant errors of DESIGN §1 (`{"error","code"}` bodies) and MCP
//! transport errors (a JSON-RPC error object with a `null` id, as the MCP spec allows).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::Body;
use crate::mcp::envelope;

/// DESIGN §1 message for a missing `X-Client-ID`.
pub const MSG_MISSING_CLIENT_ID: &str = "Missing X-Client-ID header. Provide client identifier.";
/// DESIGN §1 message for a repeated `X-Client-ID`.
pub const MSG_DUPLICATE_CLIENT_ID: &str =
    "Multiple X-Client-ID headers detected. Provide exactly one.";
/// DESIGN §1 message for a malformed `X-Client-ID`.
pub const MSG_INVALID_CLIENT_ID: &str =
    "Client ID must contain only alphanumeric characters (a-z, 0-9).";
/// Message for a missing or wrong bearer token.
pub const MSG_UNAUTHORIZED: &str =
    "Missing or invalid bearer token for this client. Send Authorization: Bearer <token>.";

/// A failure answered before MCP processing, with a DESIGN §1 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable `code`.
    pub code: &'static str,
    /// Human message.
    pub message: String,
    /// Seconds for `Retry-After` (503s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the given parts.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 403 `MISSING_CLIENT_ID`.
    pub fn missing_client_id() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "MISSING_CLIENT_ID",
            MSG_MISSING_CLIENT_ID,
        )
    }

    /// 400 `DUPLICATE_CLIENT_ID`.
    pub fn duplicate_client_id() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "DUPLICATE_CLIENT_ID",
            MSG_DUPLICATE_CLIENT_ID,
        )
    }

    /// 403 `INVALID_CLIENT_ID`.
    pub fn invalid_client_id() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "INVALID_CLIENT_ID",
            MSG_INVALID_CLIENT_ID,
        )
    }

    /// 403 `UNKNOWN_CLIENT`.
    pub fn unknown_client(id: &str) -> Self {
        let message = format!("Unknown client ID: {id}. Check X-Client-ID header value.");
        Self::new(StatusCode::FORBIDDEN, "UNKNOWN_CLIENT", message)
    }

    /// 401 `UNAUTHORIZED` (sent with `WWW-Authenticate: Bearer`).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", MSG_UNAUTHORIZED)
    }

    /// 401 `UNAUTHORIZED` for a tenant without a token while open tenants are not allowed.
    pub fn no_token_configured() -> Self {
        let message = "This client has no token configured; the operator must set token_sha256 in its client file.";
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message, "code": self.code }).to_string();
        let mut response = json_response(self.status, Bytes::from(body));
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A `application/json` response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// An MCP transport error: `status` with a JSON-RPC error body whose id is `null`.
pub fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    json_response(
        status,
        envelope::error_response("null", code, message, None).into(),
    )
}

/// An empty response with `status`.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
