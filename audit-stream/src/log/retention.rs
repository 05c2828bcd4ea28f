//! Retention: deleting whole sealed segments once nobody needs them.
//!
//! Called by the writer after every roll (with the checkpoints found in
//! [`super::LogDir::checkpoint_dir`] and the log's configured
//! [`Retention`]), and by anyone through [`super::AuditLog::prune`]. A
//! segment goes only when **both** hold:
//!
//! * every registered sink acknowledged all of it: its last sequence number
//!   (the next segment's first − 1) is at most the lowest checkpoint;
//! * retention lets it go: its newest record is older than `max_age`, or the
//!   log is larger than `max_bytes` (oldest first). With neither set the log
//!   is kept forever.
//!
//! Segments are deleted oldest first and pruning stops at the first one that
//! must stay, so the log never gets a hole. The newest segment (the active
//! one) is never deleted.
//!
//! The audit query index ([`crate::query::index`]) follows without being
//! told: it takes the first remaining segment's name as the first record it
//! may answer, before each query and every few seconds, and drops what lies
//! below (also after a crash between a deletion here and its pruning).

use std::fs;
use std::io;
use std::time::SystemTime;

use serde::Serialize;

use super::options::Retention;
use super::segment::{LogDir, sync_dir};
use crate::error::AuditError;

/// What a prune deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// First sequence numbers of the deleted segments, oldest first.
    pub deleted: Vec<u64>,
    pub bytes_freed: u64,
    /// Segments left.
    pub remaining: usize,
}

/// Delete the segments of `dir` that the checkpoints and `retention` allow,
/// judging ages against `now`.
pub fn prune(
    dir: &LogDir,
    min_checkpoint_seq: Option<u64>,
    retention: &Retention,
    now: SystemTime,
) -> Result<PruneReport, AuditError> {
    let segments = dir.segments()?;
    let mut report = PruneReport {
        remaining: segments.len(),
        ..PruneReport::default()
    };
    if !retention.is_limited() || segments.len() < 2 {
        return Ok(report);
    }
    let mut sizes = Vec::with_capacity(segments.len());
    for s in &segments {
        match fs::metadata(&s.path) {
            Ok(m) => sizes.push((m.len(), m.modified().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => sizes.push((0, None)),
            Err(e) => return Err(AuditError::io("stat segment", &e)),
        }
    }
    let mut total: u64 = sizes.iter().map(|(len, _)| len).sum();
    for (i, pair) in segments.windows(2).enumerate() {
        let (seg, next) = (&pair[0], &pair[1]);
        let last_seq = next.first_seq.saturating_sub(1);
        let acked = min_checkpoint_seq.is_none_or(|m| last_seq <= m);
        let (len, modified) = sizes[i];
        let too_old = match (retention.max_age, modified) {
            (Some(max), Some(m)) => now.duration_since(m).is_ok_and(|age| age > max),
            _ => false,
        };
        let too_big = retention.max_bytes.is_some_and(|max| total > max);
        if !(acked && (too_old || too_big)) {
            break;
        }
        match fs::remove_file(&seg.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io("delete segment", &e)),
        }
        tracing::info!(segment = %seg.path.display(), bytes = len, "audit log segment pruned");
        total = total.saturating_sub(len);
        report.deleted.push(seg.first_seq);
        report.bytes_freed += len;
        report.remaining -= 1;
    }
    if !report.deleted.is_empty() {
        sync_dir(dir.dir())?;
    }
    Ok(report)
}
