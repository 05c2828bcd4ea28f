//! Errors of the server core, and the one place they become HTTP status codes.
//!
//! Every fallible function in `custos-core` returns [`CoreError`]; the HTTP
//! layer calls [`CoreError::status`] and renders `{"errors":[...]}`. Messages
//! never contain secret values: callers put paths and field names in them,
//! never request bodies or tokens.

use thiserror::Error;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CoreError {
    /// 400: malformed input, failed validation, CAS mismatch.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a login whose credentials are wrong (Vault's
    /// `ErrInvalidCredentials`, with the method's own words); counted by login
    /// lockout.
    #[error("{0}")]
    InvalidCredentials(String),
    /// 403: missing/invalid token or ACL denial. Vault says "permission denied".
    #[error("permission denied")]
    PermissionDenied,
    /// 403 with a more specific reason (e.g. invalid token), still Vault's wording first.
    #[error("{0}")]
    Forbidden(String),
    /// 404 with a message (unknown path, unsupported path).
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not for this operation.
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// 412: a standby has not reached the `X-Vault-Index` the client
    /// asked for and was told not to forward (`crate::forward`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413 for oversize bodies.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 from health-style endpoints is a response, not an error; this is
    /// for rate limits.
    #[error("{0}")]
    TooManyRequests(String),
    /// 501: the server is not initialized.
    #[error("Vault is not initialized")]
    NotInitialized,
    /// 503: sealed.
    #[error("Vault is sealed")]
    Sealed,
    /// 503: the node cannot serve for another reason (no leader, disk guard).
    #[error("{0}")]
    Unavailable(String),
    /// 500: the audit broker could not record the request; nothing happened.
    #[error("audit: {0}")]
    Audit(String),
    /// 500: storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// 500: an internal invariant failed. Never put secrets in the message.
    #[error("internal error: {0}")]
    Internal(String),
    /// Not an answer: a standby asked to serve a read itself found, before
    /// doing or recording anything, that only the active node may serve it
    /// (`crate::forward` forwards it then). 503 should it ever reach a client.
    #[error("this request must be served by the active node")]
    ForwardToActive,
}

impl CoreError {
    pub fn status(&self) -> u16 {
        match self {
            CoreError::BadRequest(_) | CoreError::InvalidCredentials(_) => 400,
            CoreError::PermissionDenied | CoreError::Forbidden(_) => 403,
            CoreError::NotFound(_) => 404,
            CoreError::UnsupportedOperation => 405,
            CoreError::PreconditionFailed(_) => 412,
            CoreError::PayloadTooLarge(_) => 413,
            CoreError::TooManyRequests(_) => 429,
            CoreError::NotInitialized => 501,
            CoreError::Sealed | CoreError::Unavailable(_) | CoreError::ForwardToActive => 503,
            CoreError::Audit(_) | CoreError::Storage(_) | CoreError::Internal(_) => 500,
        }
    }

    /// Vault prefixes internal errors with "1 error occurred" lists; clients
    /// only look at the strings, so we send the message as the only error.
    pub fn messages(&self) -> Vec<String> {
        match self {
            CoreError::Audit(_) => vec!["internal error".to_string()],
            other => vec![other.to_string()],
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        CoreError::BadRequest(msg.into())
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        CoreError::Storage(e.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        CoreError::Internal(e.to_string())
    }
}
