//! The error type of the audit crate.
//!
//! Errors come from device configuration (bad options, short salts), from the
//! file device's writer (I/O on the audit log) and from the broker (no device
//! recorded an event). They flow up to the core, which turns a broker failure
//! into a 500 for the client (fail closed).
//!
//! No variant ever carries event content: an audit event holds tokens and
//! request bodies, and error messages end up in server logs. I/O errors keep
//! only their kind and the operating system's message.
//!
//! The type is `Clone` because the file device's group commit hands the same
//! outcome to every caller whose event was in a failed batch.

use std::io;

/// Everything that can go wrong while configuring an audit device or
/// recording an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// An option given to a device is unknown or has a bad value.
    #[error("invalid audit device option {name:?}: {reason}")]
    InvalidOption { name: String, reason: String },

    /// The `format` option names a format Custos does not write.
    #[error("unsupported audit format {0:?}: only \"json\" is supported")]
    UnsupportedFormat(String),

    /// A device salt was shorter than the minimum.
    #[error("audit salt too short: {got} bytes, need at least {min}")]
    SaltTooShort { got: usize, min: usize },

    /// An I/O operation on an audit log failed.
    #[error("audit log {op} failed ({kind}): {message}")]
    Io {
        /// What was being done: "open", "write", "fsync", ...
        op: &'static str,
        kind: io::ErrorKind,
        message: String,
    },

    /// An event could not be serialized (never expected for well-formed events).
    #[error("audit event could not be encoded: {0}")]
    Encode(String),

    /// The device was shut down; it records nothing any more.
    #[error("audit device is shut down")]
    Closed,

    /// A device with this path is already enabled.
    #[error("an audit device is already enabled at path {0:?}")]
    DuplicatePath(String),

    /// The audit log's file system has less free space than the
    /// `min_free_bytes` floor: the event was refused rather than risk losing
    /// audit (the core answers 503).
    #[error("audit log disk is nearly full: {free_bytes} bytes free, floor is {min_free_bytes}")]
    DiskFull {
        free_bytes: u64,
        min_free_bytes: u64,
    },

    /// A record of the local audit log failed its CRC or framing check.
    /// `line` counts from 1 within the segment file named `segment`.
    #[error("corrupt audit log record at {segment}:{line}")]
    CorruptRecord { segment: String, line: u64 },

    /// A shipper checkpoint file is missing fields, unreadable, or its sink
    /// name is not a plain name.
    #[error("audit checkpoint {sink:?}: {reason}")]
    Checkpoint { sink: String, reason: String },

    /// Devices are configured but none of them recorded the event.
    #[error("no audit device recorded the event ({failed} of {total} failed)")]
    NoDeviceRecorded { failed: usize, total: usize },
}

impl AuditError {
    /// Wrap an I/O error, keeping only its kind and message.
    pub fn io(op: &'static str, err: &io::Error) -> Self {
        AuditError::Io {
            op,
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    /// A short, content-free label for logs and metrics.
    pub fn kind_label(&self) -> &'static str {
        match self {
            AuditError::InvalidOption { .. } => "invalid_option",
            AuditError::UnsupportedFormat(_) => "unsupported_format",
            AuditError::SaltTooShort { .. } => "salt_too_short",
            AuditError::Io { .. } => "io",
            AuditError::Encode(_) => "encode",
            AuditError::Closed => "closed",
            AuditError::DuplicatePath(_) => "duplicate_path",
            AuditError::NoDeviceRecorded { .. } => "no_device_recorded",
            AuditError::DiskFull { .. } => "disk_full",
            AuditError::CorruptRecord { .. } => "corrupt_record",
            AuditError::Checkpoint { .. } => "checkpoint",
        }
    }

    /// True when the event was refused for lack of disk space: the
    /// `min_free_bytes` guard tripped, or a write hit ENOSPC.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            AuditError::DiskFull { .. }
                | AuditError::Io {
                    kind: io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded,
                    ..
                }
        )
    }
}
