//! The local audit query index: postings per request path, in a small redb
//! database beside the local audit log (`<log dir>/<prefix>.index.redb`,
//! `audit.index.redb` by default).
//!
//! Data comes from the durable local log: [`run_indexer`] follows it with a
//! [`crate::log::LogReader`] that yields only fsynced records, from the
//! index's own persisted position. [`AuditIndex::apply`] adds each batch's
//! postings to an in-memory table (visible to queries at once), and every few
//! seconds [`AuditIndex::flush`] writes that table to redb in one sorted,
//! fsynced transaction together with the new position, so the index file and
//! its position never disagree; a crash loses only the in-memory postings,
//! which are indexed again from the log. Data goes out through [`AuditIndex::query`]:
//! one range scan over the key `(path, time, seq)` — the postings of one path
//! inside `[since, until]` — aggregated by [`super::Aggregator`].
//!
//! Only successful response events are indexed (a denied or failed read is
//! not a read). A [`super::Posting`] keeps what an answer shows (accessor
//! as the log has it, display name, policies, address, role, KV version), so
//! a query never reopens the log.
//!
//! The index is derived data: deleting the file rebuilds it from the log (as
//! far as retention kept the log). At open, [`AuditIndex::reconcile`] checks
//! that the last indexed record is still the same record in the log (same
//! sequence number, same digest); when the log is behind the index or holds
//! another record there (a fresh log in the same directory, a restore), the
//! index is cleared and rebuilt. Postings of segments deleted by retention
//! stay in the index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use super::view::EventView;
use super::{Aggregator, Posting, QueryAnswer, QueryError, QueryParams};
use crate::error::AuditError;
use crate::log::reader::{FOLLOW_BATCH, gather_unless_behind};
use crate::log::{AuditLog, LogDir, LogReader, Record};
use crate::metrics;

/// The index file name for the default log prefix.
pub const INDEX_FILE: &str = "audit.index.redb";

/// Bumped when the posting encoding changes; a mismatch rebuilds.
const FORMAT: u64 = 1;
/// New postings are held in memory and written to redb at least this often,
/// in one sorted, fsynced transaction. Postings of one path sit together in
/// the B-tree, so a commit per group commit would copy one leaf page per
/// posting (the first profile: the index took ~25% of the server's CPU
/// during kv-read); one flush every few seconds copies each leaf once.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// ... or as soon as this many postings are held (bounds the memory:
/// a posting is ~300 bytes).
const FLUSH_POSTINGS: usize = 65_536;
/// redb's page cache for the index (its default is 1 GiB): lookups touch few
/// pages, and the rest stays in the kernel's page cache, outside the heap.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// `(request path, event time in unix ns, log seq)` → JSON [`Posting`].
const POSTINGS: TableDefinition<(&str, i64, u64), &[u8]> = TableDefinition::new("postings");
/// `format`, `next_seq`, `last_seq`, `last_digest`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn idx_err(e: impl Into<redb::Error>) -> QueryError {
    QueryError::Index(e.into().to_string())
}

/// A digest of a record's event bytes, to recognise it again.
fn digest(event: &[u8]) -> u64 {
    u64::from(crc32c::crc32c(event)) | ((event.len() as u64) << 32)
}

/// The query index of one local audit log. See the module documentation.
pub struct AuditIndex {
    db: Database,
    path: PathBuf,
    /// The last indexed sequence number.
    indexed: watch::Sender<u64>,
    /// Postings indexed but not yet written to redb. Queries read redb and
    /// this under its lock, and a flush holds it until redb has committed,
    /// so a posting is always seen exactly once.
    mem: Mutex<MemTable>,
}

/// Postings held in memory since the last flush, in key order.
#[derive(Default)]
struct MemTable {
    postings: BTreeMap<(String, i64, u64), Posting>,
    /// Sequence number and digest of the last record applied.
    last: Option<(u64, u64)>,
    since: Option<Instant>,
}

impl std::fmt::Debug for AuditIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditIndex")
            .field("path", &self.path)
            .field("indexed_seq", &self.indexed_seq())
            .finish()
    }
}

impl AuditIndex {
    /// Where the index of the log in `dir` lives.
    pub fn path_for(dir: &LogDir) -> PathBuf {
        dir.dir().join(format!("{}.index.redb", dir.prefix()))
    }

    /// Open (or create) the index of the log in `dir`. An unreadable or
    /// foreign file is replaced by an empty index, which then rebuilds.
    pub fn open_for(dir: &LogDir) -> Result<AuditIndex, QueryError> {
        AuditIndex::open(&AuditIndex::path_for(dir))
    }

    /// Open (or create) the index file at `path`.
    pub fn open(path: &Path) -> Result<AuditIndex, QueryError> {
        let create = |p: &Path| redb::Builder::new().set_cache_size(CACHE_BYTES).create(p);
        let db = match create(path) {
            Ok(db) => db,
            Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => return Err(idx_err(e)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "audit index unreadable; rebuilding it");
                std::fs::remove_file(path)
                    .map_err(|io| QueryError::Index(format!("remove {}: {io}", path.display())))?;
                create(path).map_err(idx_err)?
            }
        };
        let index = AuditIndex {
            db,
            path: path.to_path_buf(),
            indexed: watch::channel(0).0,
            mem: Mutex::new(MemTable::default()),
        };
        if index.meta("format")?.is_some_and(|f| f != FORMAT) {
            index.clear()?;
        }
        let next = index.next_seq();
        index.indexed.send_replace(next.saturating_sub(1));
        Ok(index)
    }

    fn mem(&self) -> MutexGuard<'_, MemTable> {
        // A panic while holding the lock leaves a consistent map (inserts
        // and a swap); go on with it.
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the postings held in memory to redb, with the position after
    /// them, in one fsynced transaction. The worker flushes every
    /// [`FLUSH_EVERY`] and when it stops; postings lost in a crash are
    /// indexed again from the log (the position moves with them).
    pub fn flush(&self) -> Result<(), QueryError> {
        let mut mem = self.mem();
        self.flush_locked(&mut mem)
    }

    fn flush_locked(&self, mem: &mut MemTable) -> Result<(), QueryError> {
        let Some((last_seq, last_digest)) = mem.last else {
            return Ok(());
        };
        let postings = std::mem::take(&mut mem.postings);
        mem.last = None;
        mem.since = None;
        // On failure the postings are dropped and the position in redb stays
        // where it was: the worker re-reads the log from there.
        let mut txn = self.db.begin_write().map_err(idx_err)?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(POSTINGS).map_err(idx_err)?;
            for ((path, time, seq), p) in &postings {
                let bytes = serde_json::to_vec(p)
                    .map_err(|e| QueryError::Index(format!("encode posting: {e}")))?;
                table
                    .insert((path.as_str(), *time, *seq), bytes.as_slice())
                    .map_err(idx_err)?;
            }
            let mut meta = txn.open_table(META).map_err(idx_err)?;
            meta.insert("format", FORMAT).map_err(idx_err)?;
            meta.insert("next_seq", last_seq + 1).map_err(idx_err)?;
            meta.insert("last_seq", last_seq).map_err(idx_err)?;
            meta.insert("last_digest", last_digest).map_err(idx_err)?;
        }
        txn.commit().map_err(idx_err)?;
        ::metrics::counter!(metrics::INDEX_FLUSHES).increment(1);
        Ok(())
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, QueryError> {
        let txn = self.db.begin_read().map_err(idx_err)?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(idx_err(e)),
        };
        Ok(table.get(key).map_err(idx_err)?.map(|v| v.value()))
    }

    /// The next log sequence number to index (1 for an empty index).
    pub fn next_seq(&self) -> u64 {
        if let Some((seq, _)) = self.mem().last {
            return seq + 1;
        }
        self.flushed_next_seq()
    }

    /// The next sequence number after what redb holds.
    fn flushed_next_seq(&self) -> u64 {
        self.meta("next_seq").ok().flatten().unwrap_or(1).max(1)
    }

    /// The last indexed log sequence number (0: none).
    pub fn indexed_seq(&self) -> u64 {
        *self.indexed.borrow()
    }

    /// A `watch` of [`AuditIndex::indexed_seq`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.indexed.subscribe()
    }

    /// Number of postings held.
    pub fn postings(&self) -> Result<u64, QueryError> {
        let mem = self.mem();
        let txn = self.db.begin_read().map_err(idx_err)?;
        let flushed = match txn.open_table(POSTINGS) {
            Ok(t) => t.len().map_err(idx_err)?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(idx_err(e)),
        };
        Ok(flushed + mem.postings.len() as u64)
    }

    /// Drop every posting and start again from the first record.
    pub fn clear(&self) -> Result<(), QueryError> {
        let mut mem = self.mem();
        *mem = MemTable::default();
        let txn = self.db.begin_write().map_err(idx_err)?;
        txn.delete_table(POSTINGS).map_err(idx_err)?;
        txn.delete_table(META).map_err(idx_err)?;
        {
            let mut meta = txn.open_table(META).map_err(idx_err)?;
            meta.insert("format", FORMAT).map_err(idx_err)?;
            meta.insert("next_seq", 1).map_err(idx_err)?;
        }
        txn.commit().map_err(idx_err)?;
        self.indexed.send_replace(0);
        ::metrics::counter!(metrics::INDEX_REBUILDS).increment(1);
        Ok(())
    }

    /// Check the index against the log in `dir` whose durable end is
    /// `durable_seq`; clear it when the log no longer holds what the index
    /// was built from. Returns true when it was cleared.
    pub fn reconcile(&self, dir: &LogDir, durable_seq: u64) -> Result<bool, QueryError> {
        let Some(last) = self.meta("last_seq")?.filter(|s| *s > 0) else {
            return Ok(false);
        };
        let stale = if durable_seq < last {
            true
        } else {
            let want = self.meta("last_digest")?;
            let mut reader = LogReader::open(dir.clone(), last)?;
            match reader.try_next() {
                Ok(Some(rec)) if rec.seq == last => want != Some(digest(&rec.event)),
                // Retention removed it: nothing to compare against.
                Ok(Some(_)) | Ok(None) => false,
                Err(AuditError::CorruptRecord { .. }) => true,
                Err(e) => return Err(e.into()),
            }
        };
        if stale {
            tracing::warn!(path = %self.path.display(), "audit index does not match the log; rebuilding it");
            self.clear()?;
        }
        Ok(stale)
    }

    /// Index a batch of consecutive records and advance the position past
    /// the last one, in one transaction. Records before the position are
    /// skipped; records that are not successful responses only move the
    /// position. Returns the postings written.
    pub fn apply(&self, records: &[Record]) -> Result<usize, QueryError> {
        let Some(last) = records.last() else {
            return Ok(0);
        };
        let next = self.next_seq();
        if last.seq < next {
            return Ok(0);
        }
        // Decode outside the lock; queries only wait for the inserts.
        let mut postings = Vec::with_capacity(records.len());
        for rec in records.iter().filter(|r| r.seq >= next) {
            // Only response events become postings.
            let Some(parsed) = EventView::parse_unless_request(&rec.event) else {
                continue;
            };
            let ev = match parsed {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(seq = rec.seq, error = %e, "audit index: unparseable event skipped");
                    continue;
                }
            };
            if let Some(p) = Posting::from_event(&ev, rec.seq) {
                postings.push(((ev.request.path, p.time, rec.seq), p));
            }
        }
        let written = postings.len();
        let mut mem = self.mem();
        mem.postings.extend(postings);
        mem.last = Some((last.seq, digest(&last.event)));
        let since = *mem.since.get_or_insert_with(Instant::now);
        if mem.postings.len() >= FLUSH_POSTINGS || since.elapsed() >= FLUSH_EVERY {
            self.flush_locked(&mut mem)?;
        }
        drop(mem);
        self.indexed.send_replace(last.seq);
        ::metrics::gauge!(metrics::INDEX_SEQ).set(last.seq as f64);
        Ok(written)
    }

    /// Index every record of the log in `dir` not indexed yet, without a
    /// writer in this process (tests, tools). Returns the postings written.
    pub fn catch_up(&self, dir: &LogDir) -> Result<usize, QueryError> {
        let mut reader = LogReader::open(dir.clone(), self.next_seq())?;
        let mut written = 0;
        let mut batch = Vec::with_capacity(FOLLOW_BATCH);
        loop {
            let full = reader.fill_batch(&mut batch, "audit index")?;
            written += self.apply(&batch)?;
            batch.clear();
            if !full {
                self.flush()?;
                return Ok(written);
            }
        }
    }

    /// Wait until every record up to `seq` is indexed, at most `timeout`.
    /// Returns whether it is.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Answer a query from the postings of `q.path` in `[since, until]`.
    /// Blocking (redb reads); call it from `spawn_blocking` in async code.
    pub fn query(&self, q: &QueryParams) -> Result<QueryAnswer, QueryError> {
        q.validate()?;
        let mut agg = Aggregator::new(q);
        let path = q.path.as_str();
        // Hold the memtable while reading redb: a flush cannot move postings
        // from one to the other under us.
        let mem = self.mem();
        let lo = (path.to_string(), q.since, 0u64);
        let hi = (path.to_string(), q.until, u64::MAX);
        for p in mem.postings.range(lo..=hi).map(|(_, p)| p) {
            agg.push(p.clone());
        }
        let txn = self.db.begin_read().map_err(idx_err)?;
        let table = match txn.open_table(POSTINGS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(idx_err(e)),
        };
        if let Some(table) = table {
            let range = table
                .range((path, q.since, 0u64)..=(path, q.until, u64::MAX))
                .map_err(idx_err)?;
            for item in range {
                let (_, v) = item.map_err(idx_err)?;
                match serde_json::from_slice::<Posting>(v.value()) {
                    Ok(p) => agg.push(p),
                    Err(e) => return Err(QueryError::Index(format!("decode posting: {e}"))),
                }
            }
        }
        Ok(agg.finish("local"))
    }
}

/// The index worker: follows `log` from the index's position and indexes
/// every fsynced record until `stop` turns true or the log closes. Reading
/// and redb writes run on the blocking pool, never on the request path.
pub async fn run_indexer(index: Arc<AuditIndex>, log: Arc<AuditLog>, stop: watch::Receiver<bool>) {
    follow(index.clone(), log, stop).await;
    let joined = tokio::task::spawn_blocking(move || index.flush()).await;
    if let Ok(Err(e)) = joined {
        tracing::warn!(error = %e, "audit index: final durable commit failed (it re-indexes at start)");
    }
}

async fn follow(index: Arc<AuditIndex>, log: Arc<AuditLog>, mut stop: watch::Receiver<bool>) {
    match index.reconcile(log.log_dir(), log.durable_seq()) {
        Ok(true) => tracing::info!("audit index cleared; rebuilding from the local log"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "audit index check failed"),
    }
    let mut reader = Some(log.reader(index.next_seq()));
    let mut batch: Vec<Record> = Vec::with_capacity(FOLLOW_BATCH);
    // The last batch stopped at FOLLOW_BATCH records, not at the end of the log.
    let mut behind = false;
    loop {
        let Some(mut r) = reader.take() else { return };
        let first = tokio::select! {
            rec = r.next() => Some(rec),
            _ = tokio::time::sleep(FLUSH_EVERY) => None,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(first) = first else {
            // Idle: write what is held in memory.
            let idx = index.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || idx.flush()).await {
                tracing::warn!(error = %e, "audit index flush failed; re-reading the log");
                reader = Some(log.reader(index.next_seq()));
            } else {
                reader = Some(r);
            }
            continue;
        };
        match first {
            Ok(rec) => batch.push(rec),
            Err(AuditError::Closed) => return,
            Err(e @ AuditError::CorruptRecord { .. }) => {
                tracing::warn!(error = %e, "audit index: corrupt record passed over");
                reader = Some(r);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit index: reading the log failed; retrying");
                reader = Some(r);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
        // Let a busy log gather a larger batch: one transaction for many
        // group commits.
        gather_unless_behind(behind, &mut stop).await;
        let idx = index.clone();
        let mut b = std::mem::take(&mut batch);
        let joined = tokio::task::spawn_blocking(move || {
            let filled = r
                .fill_batch(&mut b, "audit index")
                .map_err(QueryError::from);
            let full = matches!(filled, Ok(true));
            let applied = idx.apply(&b);
            b.clear();
            (r, b, full, filled.and(applied))
        })
        .await;
        match joined {
            Ok((r, b, full, result)) => {
                reader = Some(r);
                batch = b;
                behind = full;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "audit index update failed; retrying");
                    // Re-read from the index's position.
                    reader = Some(log.reader(index.next_seq()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit index task failed");
                return;
            }
        }
    }
}
