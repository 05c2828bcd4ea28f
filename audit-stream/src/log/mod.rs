//! The durable local audit log: the source of truth for audit.
//!
//! Events come in as serialized JSON objects from the `file` device
//! ([`crate::file::FileDevice`], which hashes them first) through
//! [`AuditLog::append`]; they go out to shippers (Kafka, Elasticsearch),
//! `custos audit verify` and the audit query through [`LogReader`].
//!
//! * **Layout** ([`segment`]): a directory of segment files
//!   `audit-<first seq, 20 digits>.log`; the newest is the active one, and
//!   is also linked at the live name (`audit.log`), which moves to each new
//!   segment at a roll, so `tail -F audit.log` follows the whole log.
//! * **Records** ([`record`]): one line per record, itself a JSON object: the
//!   event with `"custos_seq":N,"custos_crc":"<crc32c hex>"` appended, so
//!   `tail -f` and `jq` work and every line carries its own checksum.
//! * **Group commit** ([`writer`]): one writer thread batches concurrent
//!   appends into one write and one `fdatasync`; `append` returns the
//!   record's sequence number only after the fsync that covers it.
//! * **Sync journal** ([`journal`]): that fsync is of a zero-filled journal
//!   holding the same bytes (an overwrite: no metadata to write), while a
//!   flusher thread syncs the segment in the background.
//! * **Recovery** ([`recovery`]): at open, the journal puts back what a
//!   power cut took from the segment, then a torn tail of the last segment is
//!   cut after the last complete, CRC-valid record; sequence numbers continue.
//! * **Roll**: by size (`segment_size`, 64 MiB) and age (`segment_duration`,
//!   1 h), and on [`AuditLog::roll`] (rotate, SIGHUP): a new segment is the
//!   rotation, no segment is renamed, nothing is lost.
//! * **Readers** ([`reader`]): from any sequence number, across segments,
//!   following the writer through a `watch` of the last durable sequence
//!   number, never yielding a record that is not yet fsynced.
//! * **Checkpoints** ([`checkpoint`]) per sink, written atomically, and
//!   **retention** ([`retention`]): a sealed segment is deleted only when every
//!   registered sink's checkpoint is past it and an age/size limit says so.
//! * **Disk guard**: under `min_free_bytes` free, appends fail with
//!   [`AuditError::DiskFull`] (the core answers 503) rather than risk audit.
//!   [`AuditLog::health`] says so before a request tries (`sys/health`).
//! * **Verify** ([`verify`]): CRCs, sequence gaps, torn tail, for
//!   `custos audit verify`.

pub mod checkpoint;
mod journal;
pub mod options;
pub mod reader;
mod record;
mod recovery;
pub mod retention;
pub mod segment;
pub mod verify;
mod writer;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

pub use checkpoint::Checkpoint;
pub use options::{LogOptions, Retention};
pub use reader::{LogReader, Record};
pub use retention::PruneReport;
pub use segment::{LogDir, SegmentInfo};
pub use verify::{VerifyReport, verify};

use crate::error::AuditError;
use crate::metrics;
use writer::{Command, Writer};

/// Check a line prefix (Vault's `prefix` option) before a device uses it:
/// no `{` or line break.
pub(crate) fn record_check_line_prefix(prefix: &str) -> Result<(), &'static str> {
    record::check_line_prefix(prefix)
}

/// Appends waiting for the writer before callers wait for room.
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// How long a failed group commit keeps [`AuditLog::health`] failing when no
/// commit has succeeded since. A failure that no live check can see (EIO,
/// ENOSPC under a quota) must not hold a node out of its load balancer
/// forever once traffic stops: after this long the node is offered traffic
/// again, and the next failure reports it anew.
pub const FAILURE_HOLD: Duration = Duration::from_secs(30);

/// The durable end of the log, published by the writer after every group
/// commit: every byte before `offset` in segment `segment`, and every record
/// up to `seq`, is fsynced. Readers never read past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurablePosition {
    /// The last fsynced record's sequence number (0: none yet).
    pub seq: u64,
    /// The first sequence number (name) of the segment holding it.
    pub segment: u64,
    /// Bytes of that segment that are fsynced.
    pub offset: u64,
}

/// Counters shared by the log handle and its writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    fsyncs: AtomicU64,
    records: AtomicU64,
    segments: AtomicU64,
    size_bytes: AtomicU64,
    free_bytes: AtomicU64,
    /// The `path` label of the metrics (the device's mount path).
    label: RwLock<String>,
    /// True while `last_failure` holds something (spares the success path
    /// the lock).
    failing: AtomicBool,
    /// The error of the last group commit and when, until one succeeds.
    last_failure: Mutex<Option<(Instant, AuditError)>>,
}

impl Shared {
    fn label(&self) -> String {
        match self.label.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_label(&self, label: &str) {
        match self.label.write() {
            Ok(mut l) => *l = label.to_owned(),
            Err(poisoned) => *poisoned.into_inner() = label.to_owned(),
        }
    }

    /// Remember a failed group commit for [`AuditLog::health`].
    fn record_failure(&self, e: &AuditError) {
        let mut last = match self.last_failure.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        *last = Some((Instant::now(), e.clone()));
        self.failing.store(true, Ordering::Release);
    }

    /// A group commit succeeded: forget the last failure.
    fn record_success(&self) {
        if !self.failing.swap(false, Ordering::AcqRel) {
            return;
        }
        match self.last_failure.lock() {
            Ok(mut l) => *l = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    /// The last failure, if it is more recent than [`FAILURE_HOLD`].
    fn recent_failure(&self) -> Option<AuditError> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let last = match self.last_failure.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_HOLD)
            .map(|(_, e)| e.clone())
    }

    /// Count the segments and their bytes again and publish the gauges.
    fn recount(&self, dir: &LogDir, label: &str) {
        let Ok(segments) = dir.segments() else {
            return;
        };
        let bytes: u64 = segments
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        self.segments
            .store(segments.len() as u64, Ordering::Relaxed);
        self.size_bytes.store(bytes, Ordering::Relaxed);
        metrics::device_gauge(metrics::LOG_SEGMENTS, label, segments.len() as f64);
        metrics::device_gauge(metrics::LOG_SIZE_BYTES, label, bytes as f64);
    }
}

/// The writer side of a local audit log. See the module documentation.
pub struct AuditLog {
    dir: LogDir,
    options: LogOptions,
    tx: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<(JoinHandle<()>, oneshot::Receiver<()>)>>,
    durable: watch::Receiver<DurablePosition>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("durable_seq", &self.durable_seq())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open the log in `dir` (created if missing, mode 0700), recover the
    /// last segment after a crash, and start the writer thread. Needs no
    /// async runtime.
    pub fn open(dir: impl Into<LogDir>, options: LogOptions) -> Result<AuditLog, AuditError> {
        let dir: LogDir = dir.into();
        record::check_line_prefix(&options.line_prefix).map_err(|reason| {
            AuditError::InvalidOption {
                name: "prefix".into(),
                reason: reason.into(),
            }
        })?;
        if options.segment_size == 0 {
            return Err(AuditError::InvalidOption {
                name: "segment_size".into(),
                reason: "must be greater than 0".into(),
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.dir())
            .map_err(|e| AuditError::io("create directory", &e))?;
        let label = options.metrics_label.clone();
        let replayed = journal::replay(&dir)?;
        if replayed.restored > 0 {
            tracing::warn!(
                device = %label,
                batches = replayed.restored,
                bytes = replayed.bytes,
                "audit log recovery put back acknowledged records a power cut had taken from the segment"
            );
            metrics::device_counter(
                metrics::LOG_JOURNAL_RESTORED,
                &label,
                replayed.restored as u64,
            );
        }
        let segments = dir.segments()?;
        let mut live_retry_at = None;
        let (file, seg_first, seg_len, seg_born, next_seq) = match segments.last() {
            Some(last) => {
                let r = recovery::recover_segment(&last.path, last.first_seq)?;
                if r.truncated > 0 {
                    tracing::warn!(
                        device = %label,
                        segment = %last.path.display(),
                        bytes = r.truncated,
                        "audit log recovery cut a torn tail (records never acknowledged)"
                    );
                    metrics::device_counter(metrics::LOG_RECOVERY_TRUNCATIONS, &label, 1);
                }
                let file = writer::open_segment(&last.path, options.mode)?;
                if !writer::publish_live(&dir, &last.path, &label) {
                    live_retry_at = Some(Instant::now());
                }
                // The segment is already durable; a link lost to a crash
                // before this sync is made again at the next open.
                let _ = segment::sync_dir(dir.dir());
                let born = file
                    .metadata()
                    .ok()
                    .and_then(|m| m.created().or_else(|_| m.modified()).ok())
                    .unwrap_or_else(SystemTime::now);
                (file, last.first_seq, r.len, born, r.next_seq)
            }
            None => {
                let path = dir.segment_path(1);
                let file = writer::open_segment(&path, options.mode)?;
                if !writer::publish_live(&dir, &path, &label) {
                    live_retry_at = Some(Instant::now());
                }
                segment::sync_dir(dir.dir())?;
                (file, 1, 0, SystemTime::now(), 1)
            }
        };
        let shared = Arc::new(Shared {
            label: RwLock::new(label.clone()),
            ..Shared::default()
        });
        shared.recount(&dir, &label);
        let last_durable = next_seq - 1;
        metrics::device_gauge(metrics::LOG_DURABLE_SEQ, &label, last_durable as f64);
        let (durable_tx, durable_rx) = watch::channel(DurablePosition {
            seq: last_durable,
            segment: seg_first,
            offset: seg_len,
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (exit_tx, exit_rx) = oneshot::channel::<()>();
        // Without a journal (it cannot be created here) each batch syncs
        // its segment, as durable and slower.
        let journal = journal::Journal::open(&dir, replayed.generation)
            .and_then(|j| Ok((j, journal::Flusher::start(&label)?)))
            .inspect_err(|e| {
                tracing::warn!(device = %label, error = %e, "audit log: no sync journal; syncing segments directly");
            })
            .ok();
        let w = Writer {
            dir: dir.clone(),
            opts: options.clone(),
            file: Some(Arc::new(file)),
            seg_first,
            seg_len,
            seg_born,
            next_seq,
            seg_len_unsure: false,
            torn_tail: false,
            live_retry_at,
            durable: durable_tx,
            shared: shared.clone(),
            journal,
            stale_journal: None,
            journal_stuck: None,
        };
        let handle = std::thread::Builder::new()
            .name("custos-audit-log".into())
            .spawn(move || {
                w.run(rx);
                drop(exit_tx);
            })
            .map_err(|e| AuditError::io("start writer", &e))?;
        Ok(AuditLog {
            dir,
            options,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some((handle, exit_rx))),
            durable: durable_rx,
            shared,
        })
    }

    /// Where the log lives.
    pub fn log_dir(&self) -> &LogDir {
        &self.dir
    }

    /// Where shipper checkpoints of this log are kept
    /// (`<dir>/<prefix>.checkpoints`).
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.checkpoint_dir()
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    /// Change the `path` label of the log's metrics.
    pub fn set_metrics_label(&self, label: &str) {
        self.shared.set_label(label);
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>, AuditError> {
        let guard = match self.tx.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.clone().ok_or(AuditError::Closed)
    }

    fn check(payload: &[u8]) -> Result<(), AuditError> {
        record::check_payload(payload).map_err(|e| AuditError::Encode(e.reason().into()))
    }

    /// Append `payload` (one serialized JSON object, no line break) and
    /// return its sequence number once it is fsynced.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, AuditError> {
        Self::check(&payload)?;
        let tx = self.sender()?;
        let (done, wait) = oneshot::channel();
        tx.send(Command::Append {
            payloads: vec![payload],
            done,
        })
        .await
        .map_err(|_| AuditError::Closed)?;
        sync_wait(wait).await.map_err(|_| AuditError::Closed)?
    }

    /// Append several records so that one group commit covers them all:
    /// they are queued as one command, get consecutive sequence numbers (in
    /// order) and are answered with one wake-up once all are durable.
    pub async fn append_many(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<u64>, AuditError> {
        for p in &payloads {
            Self::check(p)?;
        }
        let n = payloads.len() as u64;
        if n == 0 {
            return Ok(Vec::new());
        }
        let tx = self.sender()?;
        let (done, wait) = oneshot::channel();
        tx.send(Command::Append { payloads, done })
            .await
            .map_err(|_| AuditError::Closed)?;
        let first = sync_wait(wait).await.map_err(|_| AuditError::Closed)??;
        Ok((first..first + n).collect())
    }

    /// [`AuditLog::append`] for threads outside an async runtime (panics
    /// inside one, like tokio's blocking calls).
    pub fn append_blocking(&self, payload: Vec<u8>) -> Result<u64, AuditError> {
        Self::check(&payload)?;
        let tx = self.sender()?;
        let (done, wait) = oneshot::channel();
        tx.blocking_send(Command::Append {
            payloads: vec![payload],
            done,
        })
        .map_err(|_| AuditError::Closed)?;
        wait.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Seal the active segment and start a new one (`custos audit rotate`,
    /// SIGHUP). Records queued before the call are in the old segment;
    /// nothing is renamed or lost. Returns the new segment's first sequence
    /// number; when the active segment is still empty it stays active.
    pub async fn roll(&self) -> Result<u64, AuditError> {
        let tx = self.sender()?;
        let (done, wait) = oneshot::channel();
        tx.send(Command::Roll { done })
            .await
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    /// The sequence number of the last fsynced record (0: none yet).
    pub fn durable_seq(&self) -> u64 {
        self.durable.borrow().seq
    }

    /// A `watch` of the durable end of the log, updated after every group
    /// commit; closed when the log shuts down.
    pub fn subscribe(&self) -> watch::Receiver<DurablePosition> {
        self.durable.clone()
    }

    /// A reader from `from_seq` (inclusive) that follows this log's writer
    /// and yields only fsynced records.
    pub fn reader(&self, from_seq: u64) -> LogReader {
        LogReader::follow(self.dir.clone(), from_seq, self.subscribe())
    }

    /// Delete sealed segments that every sink acknowledged (last sequence
    /// number ≤ `min_checkpoint_seq`; `None` when no sink is registered) and
    /// that `retention` lets go. The active segment is never deleted.
    pub fn prune(
        &self,
        min_checkpoint_seq: Option<u64>,
        retention: &Retention,
    ) -> Result<PruneReport, AuditError> {
        let label = self.shared.label();
        let report = retention::prune(&self.dir, min_checkpoint_seq, retention, SystemTime::now())?;
        if !report.deleted.is_empty() {
            metrics::device_counter(
                metrics::LOG_SEGMENTS_PRUNED,
                &label,
                report.deleted.len() as u64,
            );
        }
        self.shared.recount(&self.dir, &label);
        Ok(report)
    }

    /// Can the log record an event right now? For `sys/health`, so a load
    /// balancer stops sending requests that would be refused. `Err` names
    /// the failure when:
    ///
    /// * the writer has stopped ([`AuditError::Closed`]);
    /// * the directory is gone or unreadable;
    /// * the disk guard would refuse the next batch: free space is measured
    ///   now (one `statvfs`), so the answer turns healthy as soon as space is
    ///   freed, without waiting for traffic;
    /// * the last group commit failed less than [`FAILURE_HOLD`] ago and none
    ///   has succeeded since (write or fsync errors no live check can see).
    pub fn health(&self) -> Result<(), AuditError> {
        if self.sender()?.is_closed() {
            return Err(AuditError::Closed);
        }
        fs::metadata(self.dir.dir()).map_err(|e| AuditError::io("stat directory", &e))?;
        let min = self.options.min_free_bytes;
        if min > 0
            && let Some(free) = writer::free_bytes(self.dir.dir())
            && free < min
        {
            return Err(AuditError::DiskFull {
                free_bytes: free,
                min_free_bytes: min,
            });
        }
        match self.shared.recent_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// fsync calls made so far (one per group-commit batch).
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Records appended and fsynced since the log was opened.
    pub fn records_written(&self) -> u64 {
        self.shared.records.load(Ordering::Relaxed)
    }

    /// Segment files at the last count (open, roll, prune).
    pub fn segment_count(&self) -> u64 {
        self.shared.segments.load(Ordering::Relaxed)
    }

    /// Bytes held by the segments (counted at open, roll and prune, plus
    /// what was appended since).
    pub fn size_bytes(&self) -> u64 {
        self.shared.size_bytes.load(Ordering::Relaxed)
    }

    /// Free bytes seen by the disk guard at the last batch (0 before one).
    pub fn free_bytes(&self) -> u64 {
        self.shared.free_bytes.load(Ordering::Relaxed)
    }

    /// Commit what is queued, stop the writer and wait for it; later appends
    /// fail with [`AuditError::Closed`]. Idempotent.
    pub async fn shutdown(&self) {
        match self.tx.write() {
            Ok(mut g) => drop(g.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        let writer = match self.writer.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((handle, exited)) = writer {
            // Resolves (with Err) when the writer thread drops its end on exit.
            let _ = exited.await;
            if handle.join().is_err() {
                tracing::error!(dir = %self.dir.dir().display(), "audit log writer panicked");
            }
        }
    }
}

/// Await the writer's answer (sent once the records are fsynced) inside an
/// `audit.sync_wait` span when the calling request is traced: a sampled
/// OpenTelemetry span is current (the server attaches one to a sampled
/// request's future and installs the global tracer provider). Otherwise —
/// always, when tracing is off — just await it.
async fn sync_wait<T>(wait: impl std::future::Future<Output = T>) -> T {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    if !opentelemetry::Context::map_current(|cx| cx.span().span_context().is_sampled()) {
        return wait.await;
    }
    let tracer = opentelemetry::global::tracer("custos");
    let mut span = tracer.start_with_context("audit.sync_wait", &opentelemetry::Context::current());
    let out = wait.await;
    span.end();
    out
}
