//! Errors of the destination layer (local directory and S3), classified so an
//! operator reads what to fix and the agent can label metrics.
//!
//! S3 SDK errors come in through `destination::s3` and are sorted here into
//! access denied (403, `InvalidAccessKeyId`, `SignatureDoesNotMatch`), a
//! missing bucket, an unreachable endpoint, and the rest. Each variant maps to
//! one bounded [`ErrorKind`]. Messages name the endpoint, bucket, key or
//! config field at fault, never a credential.

use std::{io, path::PathBuf};

/// Every way a destination operation fails.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// A config field is missing or malformed.
    #[error("invalid destination config: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },

    /// An object key that cannot be stored (empty, absolute, `..`, ...).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// The endpoint refused the credentials or the key lacks permission.
    #[error(
        "access denied by S3 endpoint {endpoint} for bucket {bucket:?} during {operation} ({code}): \
         check aws_access_key_id/aws_secret_access_key and the key's permissions on the bucket"
    )]
    AccessDenied {
        endpoint: String,
        bucket: String,
        operation: &'static str,
        code: String,
    },

    /// The bucket does not exist at this endpoint.
    #[error(
        "S3 bucket {bucket:?} does not exist at {endpoint}: check aws_s3_bucket \
         (and aws_s3_endpoint/aws_s3_region)"
    )]
    NoSuchBucket { endpoint: String, bucket: String },

    /// The object does not exist.
    #[error("object {key:?} not found in {destination}")]
    NotFound { destination: String, key: String },

    /// No connection to the endpoint (refused, DNS, TLS, reset) after retries.
    #[error(
        "S3 endpoint {endpoint} unreachable during {operation}: {detail}; \
         check aws_s3_endpoint and that the service is up"
    )]
    Unreachable {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },

    /// The endpoint accepted the connection but did not answer in time.
    #[error("S3 endpoint {endpoint} timed out during {operation}")]
    Timeout {
        endpoint: String,
        operation: &'static str,
    },

    /// Any other answer from S3.
    #[error(
        "S3 {operation} on {endpoint} (bucket {bucket:?}) failed: HTTP {status} {code}: {message}"
    )]
    Service {
        endpoint: String,
        bucket: String,
        operation: &'static str,
        status: u16,
        code: String,
        message: String,
    },

    /// `get_small` found an object larger than the caller allows.
    #[error("object {key:?} is {size} bytes, more than the {max_bytes} allowed")]
    TooLarge {
        key: String,
        size: u64,
        max_bytes: u64,
    },

    /// The stream being uploaded failed; the upload was abandoned.
    #[error("reading the data to upload to {key:?} failed: {source}")]
    Source {
        key: String,
        #[source]
        source: io::Error,
    },

    /// Reading a downloaded object failed midway.
    #[error("download of {key:?} failed: {source}")]
    Download {
        key: String,
        #[source]
        source: io::Error,
    },

    /// A local file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The data does not match its manifest.
    #[error("checksum mismatch for {key:?}: the manifest says {expected}, the data is {actual}")]
    Integrity {
        key: String,
        expected: String,
        actual: String,
    },

    /// A manifest is missing a field or is not JSON.
    #[error("manifest {key:?} is unusable: {message}")]
    Manifest { key: String, message: String },
}

/// A bounded classification of [`DestinationError`], for metric labels and
/// status fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Config,
    AccessDenied,
    NoSuchBucket,
    NotFound,
    Unreachable,
    Timeout,
    Service,
    TooLarge,
    Source,
    Io,
    Integrity,
    Manifest,
}

impl ErrorKind {
    /// A stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::NoSuchBucket => "no_such_bucket",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Service => "service",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Source => "source",
            ErrorKind::Io => "io",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Manifest => "manifest",
        }
    }

    /// Every kind, for declaring metric label values up front.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Config,
        ErrorKind::AccessDenied,
        ErrorKind::NoSuchBucket,
        ErrorKind::NotFound,
        ErrorKind::Unreachable,
        ErrorKind::Timeout,
        ErrorKind::Service,
        ErrorKind::TooLarge,
        ErrorKind::Source,
        ErrorKind::Io,
        ErrorKind::Integrity,
        ErrorKind::Manifest,
    ];
}

impl DestinationError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DestinationError::Config { .. } | DestinationError::InvalidKey { .. } => {
                ErrorKind::Config
            }
            DestinationError::AccessDenied { .. } => ErrorKind::AccessDenied,
            DestinationError::NoSuchBucket { .. } => ErrorKind::NoSuchBucket,
            DestinationError::NotFound { .. } => ErrorKind::NotFound,
            DestinationError::Unreachable { .. } => ErrorKind::Unreachable,
            DestinationError::Timeout { .. } => ErrorKind::Timeout,
            DestinationError::Service { .. } => ErrorKind::Service,
            DestinationError::TooLarge { .. } => ErrorKind::TooLarge,
            DestinationError::Source { .. } => ErrorKind::Source,
            DestinationError::Download { .. } => ErrorKind::Unreachable,
            DestinationError::Io { .. } => ErrorKind::Io,
            DestinationError::Integrity { .. } => ErrorKind::Integrity,
            DestinationError::Manifest { .. } => ErrorKind::Manifest,
        }
    }

    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DestinationError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

/// The messages of an error and its sources, joined with ": " (hyper and the
/// SDK put the useful part, e.g. "Connection refused", deep in the chain).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = e.source();
    }
    out
}
