//! The writer thread of the local audit log: group commit, segment roll,
//! disk guard.
//!
//! [`super::AuditLog::append`] sends its payloads (one, or a request's whole
//! set of events) and one oneshot through a bounded channel. This thread owns the active segment: it takes everything queued
//! (up to a batch limit), checks the disk guard, rolls to a new segment if the
//! active one is full or old, gives each record the next sequence number,
//! writes the batch with one `write_all`, makes it durable with one
//! `fdatasync` (of the sync journal, [`super::journal`], which also holds the
//! batch; of the segment itself when there is no journal), publishes the
//! durable end (last sequence number, segment, byte offset) on a `watch`
//! channel (readers follow it and never read past it) and
//! then completes every oneshot with the sequence number of its first record. Many
//! concurrent appends therefore share one fsync, and the next batch queues up
//! while the current one is being synced.
//!
//! On a write or fsync error (ENOSPC, EIO) every caller of the batch gets the
//! error, and the segment is cut back to where the batch started, so the log
//! stays a clean sequence of records and the sequence numbers are reused. If
//! even the cut fails, the batch's sequence numbers are burnt (a gap that
//! `verify` shows, never a duplicate) and the next batch starts with a newline
//! so the torn bytes stay on a line of their own.
//!
//! If the active segment was deleted under the server (its name no longer
//! leads to the file being written), the next batch starts a new segment
//! instead of writing into a file nobody can read; if the directory is gone
//! too, appends fail (the request fails closed) until it is back.
//!
//! Every new active segment (at open and at each roll) is also published
//! under the log's live name ([`super::segment::publish_live`], `audit.log`)
//! before the directory fsync that makes the segment durable. A failure to
//! publish is logged and retried, and never fails an append: the segments
//! are the log, the live name a view of it.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::checkpoint::Checkpoint;
use super::journal::{Flusher, Journal};
use super::options::LogOptions;
use super::retention;
use super::segment::{self, LogDir, sync_dir};
use super::{DurablePosition, Shared, record};
use crate::error::AuditError;
use crate::metrics;

/// Most records in one group-commit batch.
const MAX_BATCH_RECORDS: usize = 4096;
/// Most payload bytes in one batch (a batch may exceed it by one record).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Bytes a record adds to its payload at most: the two members and newline.
const RECORD_OVERHEAD: usize = 64;
/// How often a live name that could not be published is tried again.
const LIVE_RETRY: Duration = Duration::from_secs(10);

pub(crate) type Done = oneshot::Sender<Result<u64, AuditError>>;

pub(crate) enum Command {
    /// Append records with consecutive sequence numbers; answered with the
    /// first one once all are durable.
    Append { payloads: Vec<Vec<u8>>, done: Done },
    /// Start a new segment (rotate / SIGHUP); answered with its first
    /// sequence number. A no-op when the active segment is empty.
    Roll { done: Done },
}

/// Open (creating) a segment file for appending, with `mode`.
pub(crate) fn open_segment(path: &Path, mode: Option<u32>) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(mode.unwrap_or(0o600))
        .open(path)
        .map_err(|e| AuditError::io("open", &e))?;
    if let Some(mode) = mode {
        // The open mode is filtered by the umask; set it explicitly, as Vault does.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| AuditError::io("chmod", &e))?;
    }
    Ok(file)
}

/// Publish `seg` under the live name of `dir` (see
/// [`segment::publish_live`]), logging the outcome. Returns false when it
/// failed; the caller fsyncs the directory.
pub(crate) fn publish_live(dir: &LogDir, seg: &Path, label: &str) -> bool {
    match segment::publish_live(dir, seg) {
        Ok(moved) => {
            if let Some(aside) = moved {
                tracing::warn!(
                    device = %label,
                    live = %dir.live_path().display(),
                    moved_to = %aside.display(),
                    "a file that was not an audit segment held the audit log's live name; moved it aside"
                );
            }
            true
        }
        Err(e) => {
            tracing::error!(
                device = %label,
                live = %dir.live_path().display(),
                error = %e,
                "cannot point the audit log's live name at the active segment (the log itself is unaffected)"
            );
            false
        }
    }
}

/// Free bytes available to unprivileged users on the file system of `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(crate) struct Writer {
    pub dir: LogDir,
    pub opts: LogOptions,
    /// The active segment; `None` only after opening one failed.
    pub file: Option<Arc<File>>,
    pub seg_first: u64,
    pub seg_len: u64,
    /// The segment may be longer than `seg_len` (a failed write could not
    /// be cut off, or a roll that failed ended a torn line first), so the
    /// next batch reads its length from the file first.
    /// (Not on every batch: a `stat` makes the kernel take fine-grained
    /// timestamps from then on, and those turn every later write to the
    /// journal into an inode update its sync must write too.)
    pub seg_len_unsure: bool,
    pub seg_born: SystemTime,
    pub next_seq: u64,
    /// A torn line may end the segment: start the next batch with a newline.
    pub torn_tail: bool,
    /// When to try publishing the live name again (`None`: it is in place).
    pub live_retry_at: Option<Instant>,
    pub durable: watch::Sender<DurablePosition>,
    pub shared: Arc<Shared>,
    /// The sync journal and the thread syncing the active segment behind
    /// it; `None`: each batch syncs its segment.
    pub journal: Option<(Journal, Flusher)>,
    /// A journal retired after a failure that could not be removed yet: it
    /// may hold a batch that failed, and goes once a segment sync succeeds.
    pub stale_journal: Option<Journal>,
    /// Why appends are refused for good, if they are: a retired journal
    /// could not be removed (replaying it at the next open could write over
    /// acknowledged records), or the flusher's sync of the segment failed
    /// (the journal must stay as it is for the next open's replay).
    pub journal_stuck: Option<&'static str>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch: Vec<(Vec<Vec<u8>>, Done)> = Vec::new();
            let mut bytes = 0usize;
            let mut records = 0usize;
            let mut roll = None;
            match first {
                Command::Append { payloads, done } => {
                    bytes += payloads.iter().map(Vec::len).sum::<usize>();
                    records += payloads.len();
                    batch.push((payloads, done));
                    while records < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(Command::Append { payloads, done }) => {
                                bytes += payloads.iter().map(Vec::len).sum::<usize>();
                                records += payloads.len();
                                batch.push((payloads, done));
                            }
                            Ok(Command::Roll { done }) => {
                                roll = Some(done);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Command::Roll { done } => roll = Some(done),
            }
            if !batch.is_empty() {
                self.commit(batch, records, bytes);
            }
            if let Some(done) = roll {
                let label = self.shared.label();
                // An empty, still linked active segment is already "rotated".
                let result = if self.seg_len == 0 && self.active_is_linked() {
                    Ok(self.seg_first)
                } else {
                    self.roll(&label).map(|()| self.seg_first)
                };
                let _ = done.send(result);
            }
        }
        // Channel closed and drained: every queued record has been committed.
    }

    fn commit(&mut self, batch: Vec<(Vec<Vec<u8>>, Done)>, records: usize, payload_bytes: usize) {
        let label = self.shared.label();
        let n = records as u64;
        let started = Instant::now();
        let result = self.write_batch(&batch, records, payload_bytes, &label);
        match &result {
            Ok(_) => {
                self.shared.record_success();
                metrics::device_histogram(
                    metrics::FSYNC_SECONDS,
                    &label,
                    started.elapsed().as_secs_f64(),
                );
                metrics::device_histogram(metrics::GROUP_COMMIT_EVENTS, &label, n as f64);
            }
            Err(e) => {
                self.shared.record_failure(e);
                if e.is_disk_full() {
                    metrics::device_counter(metrics::LOG_DISK_FULL, &label, 1);
                }
                tracing::error!(
                    device = %label,
                    records = n,
                    error_kind = e.kind_label(),
                    error = %e,
                    "audit log append failed"
                );
            }
        }
        let mut offset = 0u64;
        for (payloads, done) in batch {
            // A caller that gave up no longer listens; nothing to do.
            let _ = done.send(result.clone().map(|first| first + offset));
            offset += payloads.len() as u64;
        }
    }

    /// Refuse the batch when free space is under the floor; keep the gauge.
    fn disk_guard(&self, label: &str) -> Result<(), AuditError> {
        let Some(free) = free_bytes(self.dir.dir()) else {
            // Cannot tell (e.g. the directory is gone): the write will say.
            return Ok(());
        };
        self.shared.free_bytes.store(free, Ordering::Relaxed);
        metrics::device_gauge(metrics::LOG_DISK_FREE, label, free as f64);
        let min = self.opts.min_free_bytes;
        if min > 0 && free < min {
            return Err(AuditError::DiskFull {
                free_bytes: free,
                min_free_bytes: min,
            });
        }
        Ok(())
    }

    /// True when there is an active segment and its name still leads to it
    /// (a link count would not do: the live name is a second link).
    fn active_is_linked(&self) -> bool {
        let Some(f) = self.file.as_deref() else {
            return false;
        };
        let named = self.dir.segment_path(self.seg_first);
        match (
            segment::file_id(Some(f), &named),
            segment::file_id(None, &named),
        ) {
            (Ok(open), Ok(named)) => open == named,
            _ => false,
        }
    }

    /// Publish the active segment under the live name; on failure, try
    /// again after [`LIVE_RETRY`].
    fn publish_live(&mut self, label: &str) {
        let seg = self.dir.segment_path(self.seg_first);
        self.live_retry_at =
            (!publish_live(&self.dir, &seg, label)).then(|| Instant::now() + LIVE_RETRY);
    }

    /// Make sure there is an active segment that is still linked in the
    /// directory, and roll when it is full or old.
    fn prepare_segment(&mut self, incoming: usize, label: &str) -> Result<(), AuditError> {
        if !self.active_is_linked() {
            if self.file.is_some() {
                tracing::error!(
                    device = %label,
                    segment = %self.dir.segment_path(self.seg_first).display(),
                    "active audit segment was deleted; starting a new one"
                );
            }
            self.file = None;
            return self.roll(label);
        }
        if self.live_retry_at.is_some_and(|at| Instant::now() >= at) {
            self.publish_live(label);
            // Best effort, like the link itself.
            let _ = sync_dir(self.dir.dir());
        }
        let full = self.seg_len + incoming as u64 > self.opts.segment_size;
        let old = SystemTime::now()
            .duration_since(self.seg_born)
            .is_ok_and(|age| age >= self.opts.segment_duration);
        if self.seg_len > 0 && (full || old) {
            self.roll(label)?;
        }
        Ok(())
    }

    fn write_batch(
        &mut self,
        batch: &[(Vec<Vec<u8>>, Done)],
        records: usize,
        payload_bytes: usize,
        label: &str,
    ) -> Result<u64, AuditError> {
        if self.journal_stuck.is_none() && self.journal.as_ref().is_some_and(|(_, f)| f.failed()) {
            self.journal_stuck = Some(
                "a background sync of the audit segment failed; restart the server once the disk is healthy (the sync journal puts back what the segment lost)",
            );
        }
        if let Some(why) = self.journal_stuck {
            return Err(AuditError::io("audit journal", &std::io::Error::other(why)));
        }
        self.disk_guard(label)?;
        let prefix_len = self.opts.line_prefix.len();
        let estimate = payload_bytes + records * (RECORD_OVERHEAD + prefix_len) + 1;
        self.prepare_segment(estimate, label)?;
        let prefix = self.opts.line_prefix.as_bytes();
        let mut buf = Vec::with_capacity(estimate);
        if self.torn_tail {
            buf.push(b'\n');
        }
        let first = self.next_seq;
        for (i, payload) in batch.iter().flat_map(|(p, _)| p).enumerate() {
            record::encode(prefix, payload, first + i as u64, &mut buf);
        }
        let n = records as u64;
        let Some(file) = self.file.clone() else {
            return Err(AuditError::Closed);
        };
        // After a failed cut the file may be longer than what we
        // acknowledged, and a later cut must never reach back into
        // acknowledged records: take the real length then.
        if self.seg_len_unsure {
            self.seg_len = file
                .metadata()
                .map_err(|e| AuditError::io("stat segment", &e))?
                .len();
            self.seg_len_unsure = false;
        }
        let result = (&*file)
            .write_all(&buf)
            .map_err(|e| AuditError::io("write", &e))
            .and_then(|()| {
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                metrics::device_counter(metrics::FSYNC, label, 1);
                self.make_durable(&file, self.seg_len, &buf, label)
            });
        match result {
            Ok(()) => {
                self.torn_tail = false;
                self.seg_len += buf.len() as u64;
                self.next_seq += n;
                let last = self.next_seq - 1;
                self.durable.send_replace(DurablePosition {
                    seq: last,
                    segment: self.seg_first,
                    offset: self.seg_len,
                });
                self.shared.records.fetch_add(n, Ordering::Relaxed);
                self.shared
                    .size_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                metrics::device_counter(metrics::LOG_RECORDS, label, n);
                metrics::device_counter(metrics::LOG_BYTES, label, buf.len() as u64);
                metrics::device_gauge(metrics::LOG_DURABLE_SEQ, label, last as f64);
                metrics::device_gauge(
                    metrics::LOG_SIZE_BYTES,
                    label,
                    self.shared.size_bytes.load(Ordering::Relaxed) as f64,
                );
                Ok(first)
            }
            Err(e) => {
                // Cut off what this batch may have written, so the segment
                // ends with the last acknowledged record again.
                let cut = file
                    .set_len(self.seg_len)
                    .and_then(|()| file.sync_data())
                    .is_ok();
                if !cut {
                    self.torn_tail = true;
                    self.seg_len_unsure = true;
                    // Complete records of this batch may be on disk: never
                    // hand their sequence numbers out a second time.
                    self.next_seq += n;
                }
                Err(e)
            }
        }
    }

    /// Make `buf`, just written to the active segment `file` at `offset`,
    /// durable: through the journal when there is one (see
    /// [`super::journal`] for what happens when it fails), else by syncing
    /// the segment.
    fn make_durable(
        &mut self,
        file: &Arc<File>,
        offset: u64,
        buf: &[u8],
        label: &str,
    ) -> Result<(), AuditError> {
        let sync_segment = || file.sync_data().map_err(|e| AuditError::io("fsync", &e));
        if let Some(stale) = self.stale_journal.take() {
            if let Err(e) = sync_segment() {
                self.stale_journal = Some(stale);
                return Err(e);
            }
            return self.retire_journal(stale, label);
        }
        let seg = self.seg_first;
        let Some((journal, flusher)) = self.journal.as_mut() else {
            return sync_segment();
        };
        flusher.written(seg, file, offset + buf.len() as u64);
        if !journal.can_hold(buf.len()) {
            // Larger than the whole journal: the segment's own sync covers
            // it and everything before it.
            return sync_segment();
        }
        let journaled = (|| {
            if !journal.fits(buf.len()) {
                // This half is full: what the other half holds must be
                // durable in its segment (the active one) before its records
                // may be overwritten. The flusher has usually seen to it.
                if let Some((covered, end)) = journal.other_covers()
                    && !flusher.synced_to(covered, end)
                {
                    sync_segment()?;
                }
                journal.switch();
            }
            journal.commit(seg, offset, buf)
        })();
        let Err(e) = journaled else {
            return Ok(());
        };
        metrics::device_counter(metrics::LOG_JOURNAL_FAILURES, label, 1);
        tracing::error!(
            device = %label,
            error = %e,
            "audit log: the sync journal failed; syncing segments directly from now on"
        );
        let Some((journal, _flusher)) = self.journal.take() else {
            return Err(e);
        };
        match sync_segment() {
            Ok(()) => self.retire_journal(journal, label),
            Err(e) => {
                // Acknowledged batches may be durable only in the journal:
                // keep it until a segment sync succeeds.
                self.stale_journal = Some(journal);
                Err(e)
            }
        }
    }

    /// Remove a failed journal once the segment is durable without it.
    fn retire_journal(&mut self, journal: Journal, label: &str) -> Result<(), AuditError> {
        let path = journal.path().to_path_buf();
        journal.remove(&self.dir).inspect_err(|e| {
            self.journal_stuck = Some(
                "a failed sync journal could not be removed; restart the server once the disk is healthy",
            );
            tracing::error!(
                device = %label,
                journal = %path.display(),
                error = %e,
                "audit log: a failed sync journal cannot be removed; refusing appends"
            );
        })
    }

    /// Make sure every byte the journal holds is durable in its segment,
    /// so that the next generation may start at either half (at a roll:
    /// both halves cover the segment being closed, or older ones).
    fn settle_journal(&mut self) -> Result<(), AuditError> {
        let Some((journal, flusher)) = self.journal.as_mut() else {
            return Ok(());
        };
        let unsynced = [journal.covers(), journal.other_covers()]
            .into_iter()
            .flatten()
            .any(|(covered, end)| covered == self.seg_first && !flusher.synced_to(covered, end));
        if unsynced && let Some(f) = self.file.as_deref() {
            f.sync_data().map_err(|e| AuditError::io("fsync", &e))?;
        }
        Ok(())
    }

    /// Start a new segment named for the next sequence number, then apply
    /// retention.
    fn roll(&mut self, label: &str) -> Result<(), AuditError> {
        if let Some(mut f) = self.file.as_deref()
            && self.torn_tail
        {
            // Best effort: end the torn line so the sealed segment ends cleanly.
            // The newline (written or not) leaves the segment's length
            // unknown if this roll fails and the segment stays active.
            self.seg_len_unsure = true;
            if f.write_all(b"\n").and_then(|()| f.sync_data()).is_ok() {
                self.torn_tail = false;
            }
        }
        self.settle_journal()?;
        let path = self.dir.segment_path(self.next_seq);
        let file = open_segment(&path, self.opts.mode)?;
        // One directory fsync covers the new segment and its live name.
        let live_ok = publish_live(&self.dir, &path, label);
        if let Err(e) = sync_dir(self.dir.dir()) {
            // The old segment stays active; the next batch points the live
            // name back at it.
            self.live_retry_at = Some(Instant::now());
            return Err(e);
        }
        self.live_retry_at = (!live_ok).then(|| Instant::now() + LIVE_RETRY);
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(Arc::new(file));
        if let Some((journal, _)) = self.journal.as_mut() {
            journal.settled();
        }
        self.seg_first = self.next_seq;
        self.seg_len = len;
        self.seg_len_unsure = false;
        self.seg_born = SystemTime::now();
        self.torn_tail = false;
        metrics::device_counter(metrics::LOG_SEGMENT_ROLLS, label, 1);
        self.apply_retention(label);
        self.shared.recount(&self.dir, label);
        Ok(())
    }

    /// Delete what retention and the sinks' checkpoints allow. Failures are
    /// logged: they never fail an append.
    fn apply_retention(&self, label: &str) {
        if !self.opts.retention.is_limited() {
            return;
        }
        let outcome = Checkpoint::min(&self.dir.checkpoint_dir()).and_then(|min| {
            retention::prune(&self.dir, min, &self.opts.retention, SystemTime::now())
        });
        match outcome {
            Ok(report) => {
                if !report.deleted.is_empty() {
                    metrics::device_counter(
                        metrics::LOG_SEGMENTS_PRUNED,
                        label,
                        report.deleted.len() as u64,
                    );
                }
            }
            Err(e) => {
                tracing::error!(device = %label, error = %e, "audit log retention failed");
            }
        }
    }
}
