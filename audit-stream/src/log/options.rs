//! Options of the local audit log and the parsers for their values.
//!
//! The `file` device reads them from its option map ([`crate::file`]):
//! `segment_size`, `segment_duration`, `min_free_bytes`,
//! `retention_max_age`, `retention_max_bytes`. Sizes accept a plain byte
//! count or a binary/decimal unit (`64MiB`, `500MB`, `1G`); durations use
//! humantime's syntax (`1h`, `30m`, `7days`, `90s`).

use std::time::Duration;

use crate::error::AuditError;

/// Default segment size before a roll: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default segment age before a roll: one hour.
pub const DEFAULT_SEGMENT_DURATION: Duration = Duration::from_secs(3600);
/// Default free-space floor of the disk guard: 256 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// When sealed segments may be deleted, once every sink acknowledged them.
/// With neither limit set nothing is ever deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete a segment whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// True when some limit is set (otherwise the log is kept forever).
    pub fn is_limited(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// How an [`super::AuditLog`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Roll to a new segment before one would grow past this many bytes.
    pub segment_size: u64,
    /// Roll to a new segment when the active one is older than this (checked
    /// when a batch is written: an idle log does not roll).
    pub segment_duration: Duration,
    /// Refuse appends when the file system has fewer free bytes (0: never).
    pub min_free_bytes: u64,
    /// Applied after every roll, against the checkpoints in
    /// [`super::LogDir::checkpoint_dir`].
    pub retention: Retention,
    /// Permissions of new segment files (`None`: 0600 before the umask).
    pub mode: Option<u32>,
    /// Written before each record (Vault's `prefix`; no `{` or line break).
    pub line_prefix: String,
    /// The `path` label of the log's metrics (the device's mount path).
    pub metrics_label: String,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            segment_duration: DEFAULT_SEGMENT_DURATION,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            retention: Retention::default(),
            mode: Some(0o600),
            line_prefix: String::new(),
            metrics_label: "file/".to_owned(),
        }
    }
}

fn invalid(name: &str, reason: String) -> AuditError {
    AuditError::InvalidOption {
        name: name.to_owned(),
        reason,
    }
}

/// Parse a byte size: `1048576`, `64MiB`, `64M` (binary), `500MB` (decimal),
/// `1GiB`, `512KiB`, `10KB`, with an optional space before the unit.
pub fn parse_size(name: &str, value: &str) -> Result<u64, AuditError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || invalid(name, format!("{value:?} is not a size such as 64MiB"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parse a duration such as `1h`, `30m`, `7days` or `1h 30m`.
pub fn parse_duration(name: &str, value: &str) -> Result<Duration, AuditError> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        invalid(
            name,
            format!("{value:?} is not a duration such as 1h or 30m"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("s", "1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("s", "64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("s", "64 M").unwrap(), 64 << 20);
        assert_eq!(parse_size("s", "500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("s", "0").unwrap(), 0);
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999T"] {
            assert!(
                matches!(parse_size("segment_size", bad), Err(AuditError::InvalidOption { ref name, .. }) if name == "segment_size"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("d", "1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_duration("d", "7days").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("d", "soon").is_err());
    }
}
