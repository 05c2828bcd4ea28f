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
//! per bucket, one range scan over the key `(path hash, time, seq)` — the
//! postings of one path inside `[since, until]` — aggregated by
//! [`super::Aggregator`].
//!
//! Only successful response events are indexed (a denied or failed read is
//! not a read). A [`super::Posting`] keeps what an answer shows (accessor
//! as the log has it, display name, policies, address, role, KV version), so
//! a query never reopens the log.
//!
//! **On disk** (format 2): the strings that repeat are kept once.
//! `profiles` maps what a posting says about who asked (operation,
//! accessor, display name, policies, address, role, entity) to a small id,
//! and `profile_of` back. A request path is kept as a 128-bit hash (SHA-256
//! of a random per-file salt and the path, truncated): no path table to
//! look up or grow, and two paths share a hash with odds of ~n²/2¹²⁹.
//! Postings live in one table per **bucket** of 2^[`BUCKET_BITS`] log
//! sequence numbers (`p<bucket>`), keyed by `(path hash u128, time i64, seq −
//! bucket start u16)` → a few varint bytes (profile id, KV version, transit
//! key versions); `buckets` holds each bucket's posting count and time span,
//! so a query skips buckets outside its range.
//!
//! **Retention**: the index follows the log. Its *floor* is the first
//! sequence number the log still holds (the first segment's name, read from
//! the log directory); a query never answers a posting below it, and
//! [`AuditIndex::prune_step`] drops, a bounded amount of work at a time, every
//! bucket wholly below it (`delete_table`: freeing pages, no per-posting
//! work) and then the profile ids no remaining bucket uses (each keeps the
//! last bucket that used it). The worker moves the floor and prunes
//! every few seconds and at start ([`AuditIndex::reconcile`]), so a crash
//! between a segment's deletion and the pruning only delays it; the query
//! service moves the floor before each query. At most one bucket's postings
//! below the floor stay on disk.
//!
//! The index is derived data: deleting the file rebuilds it from the log (as
//! far as retention kept the log), and a file of another format is replaced
//! by an empty one at open, which then rebuilds — once. At open,
//! [`AuditIndex::reconcile`] checks that the last indexed record is still the
//! same record in the log (same sequence number, same digest); when the log is
//! behind the index or holds another record there (a fresh log in the same
//! directory, a restore), the index is cleared and rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tokio::sync::watch;

use super::view::EventView;
use super::{Aggregator, Posting, QueryAnswer, QueryError, QueryParams};
use crate::error::AuditError;
use crate::log::reader::{FOLLOW_BATCH, gather_unless_behind};
use crate::log::{AuditLog, LogDir, LogReader, Record};
use crate::metrics;

/// The index file name for the default log prefix.
pub const INDEX_FILE: &str = "audit.index.redb";

/// Bumped when the file layout changes; a file of another format is replaced
/// at open and rebuilt from the log. 1: `(path, time, seq)` → JSON posting.
const FORMAT: u64 = 2;
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
/// Log sequence numbers per bucket (postings table): about one 64 MiB
/// segment of kv-read events. Retention frees the index a bucket at a time.
/// Tests open an index with smaller buckets ([`AuditIndex::open_with_bucket_bits`]);
/// the file remembers its bucket size.
pub const BUCKET_BITS: u32 = 16;
/// At most this many buckets dropped per prune step.
const PRUNE_BUCKETS_PER_STEP: usize = 4;
/// At most this many profile entries looked at per prune step.
const PRUNE_SCAN_PER_STEP: usize = 8192;
/// How often the worker moves the floor to the log's first record and prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// encoded profile → (profile id, last bucket with a posting of it).
const PROFILES: TableDefinition<&[u8], (u32, u32)> = TableDefinition::new("profiles");
/// profile id → encoded profile.
const PROFILE_OF: TableDefinition<u32, &[u8]> = TableDefinition::new("profile_of");
/// bucket → (postings, earliest time, latest time).
const BUCKETS: TableDefinition<u32, (u64, i64, i64)> = TableDefinition::new("buckets");
/// `format`, `bucket_bits`, `path_salt_0`/`_1`, `next_seq`, `last_seq`,
/// `last_digest`, `floor_seq`, `postings`, `next_profile_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The postings of one bucket: (path hash, event time in unix ns, seq −
/// bucket start) → encoded rest (see [`encode_value`]).
type BucketKey = (u128, i64, u16);

/// The key of a request path: SHA-256 of the file's salt and the path,
/// truncated to 128 bits.
fn path_key(salt: &[u8; 16], path: &str) -> u128 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(path.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_be_bytes(k)
}

fn bucket_name(bucket: u32) -> String {
    format!("p{bucket:08x}")
}

fn bucket_table(name: &str) -> TableDefinition<'_, BucketKey, &'static [u8]> {
    TableDefinition::new(name)
}

/// A cheap, fixed permutation of a bucket key (splitmix64's finaliser).
fn scramble(path: u128, time: i64, lo: u16) -> u64 {
    let mut z = (path as u64) ^ (time as u64).rotate_left(17) ^ u64::from(lo);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn bucket_of(seq: u64, bits: u32) -> Option<u32> {
    u32::try_from(seq >> bits).ok()
}

fn idx_err(e: impl Into<redb::Error>) -> QueryError {
    QueryError::Index(e.into().to_string())
}

/// A digest of a record's event bytes, to recognise it again.
fn digest(event: &[u8]) -> u64 {
    u64::from(crc32c::crc32c(event)) | ((event.len() as u64) << 32)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(buf: &mut &[u8]) -> Option<String> {
    let len = usize::try_from(get_varint(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// What postings repeat: who asked, and how. Interned once per index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Profile {
    operation: String,
    accessor: String,
    display_name: String,
    policies: Vec<String>,
    remote_address: String,
    role: String,
    entity_id: String,
}

impl Profile {
    fn encode(p: &Posting) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        put_str(&mut out, &p.operation);
        put_str(&mut out, &p.accessor);
        put_str(&mut out, &p.display_name);
        put_varint(&mut out, p.policies.len() as u64);
        for policy in &p.policies {
            put_str(&mut out, policy);
        }
        put_str(&mut out, &p.remote_address);
        put_str(&mut out, &p.role);
        put_str(&mut out, &p.entity_id);
        out
    }

    fn decode(mut buf: &[u8]) -> Option<Profile> {
        let b = &mut buf;
        let operation = get_str(b)?;
        let accessor = get_str(b)?;
        let display_name = get_str(b)?;
        let n = get_varint(b)?;
        let mut policies = Vec::new();
        for _ in 0..n {
            policies.push(get_str(b)?);
        }
        Some(Profile {
            operation,
            accessor,
            display_name,
            policies,
            remote_address: get_str(b)?,
            role: get_str(b)?,
            entity_id: get_str(b)?,
        })
    }

    fn posting(
        &self,
        seq: u64,
        time: i64,
        version: Option<u64>,
        key_versions: Vec<u64>,
    ) -> Posting {
        Posting {
            seq,
            time,
            operation: self.operation.clone(),
            accessor: self.accessor.clone(),
            display_name: self.display_name.clone(),
            policies: self.policies.clone(),
            remote_address: self.remote_address.clone(),
            role: self.role.clone(),
            entity_id: self.entity_id.clone(),
            version,
            key_versions,
        }
    }
}

/// A posting's value: profile id, KV version + 1 (0: none), then the transit
/// key versions (count, each), left out when there are none.
fn encode_value(profile: u32, p: &Posting) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    put_varint(&mut out, u64::from(profile));
    put_varint(&mut out, p.version.map_or(0, |v| v.saturating_add(1)));
    if !p.key_versions.is_empty() {
        put_varint(&mut out, p.key_versions.len() as u64);
        for v in &p.key_versions {
            put_varint(&mut out, *v);
        }
    }
    out
}

/// (profile id, KV version, key versions) of a posting's value.
fn decode_value(mut buf: &[u8]) -> Option<(u32, Option<u64>, Vec<u64>)> {
    let b = &mut buf;
    let profile = u32::try_from(get_varint(b)?).ok()?;
    let version = get_varint(b)?.checked_sub(1);
    let mut key_versions = Vec::new();
    if !b.is_empty() {
        let n = get_varint(b)?;
        for _ in 0..n {
            key_versions.push(get_varint(b)?);
        }
    }
    Some((profile, version, key_versions))
}

/// The first sequence number the log in `dir` still holds (the first
/// segment's name), or `None` when it has no segment.
fn log_first_seq(dir: &LogDir) -> Result<Option<u64>, QueryError> {
    Ok(dir.segments()?.first().map(|s| s.first_seq))
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
    /// The first log sequence number queries may answer (the log's first
    /// record); postings below it are left out and pruned.
    floor: AtomicU64,
    /// Where the id sweep of [`AuditIndex::prune_step`] stands.
    sweep: Mutex<Sweep>,
    /// Log sequence numbers per bucket: 2^bits.
    bits: u32,
    /// Salt of the path hashes (see [`path_key`]).
    salt: [u8; 16],
}

/// Postings held in memory since the last flush, in key order.
#[derive(Default)]
struct MemTable {
    postings: BTreeMap<(String, i64, u64), Posting>,
    /// Sequence number and digest of the last record applied.
    last: Option<(u64, u64)>,
    since: Option<Instant>,
}

/// The sweep of profile ids no bucket uses any more: restarted each
/// time buckets are dropped, one chunk per prune step.
#[derive(Default)]
struct Sweep {
    /// The floor bucket the sweep is for; `None`: nothing to sweep.
    floor_bucket: Option<u32>,
    /// The next profile to look at.
    profile: Option<Vec<u8>>,
}

impl std::fmt::Debug for AuditIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditIndex")
            .field("path", &self.path)
            .field("indexed_seq", &self.indexed_seq())
            .finish()
    }
}

/// What [`AuditIndex::prune_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Buckets dropped.
    pub buckets: usize,
    /// Postings dropped with them.
    pub postings: u64,
    /// Profile ids dropped.
    pub ids: usize,
    /// More remains to do.
    pub more: bool,
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

    /// Open (or create) the index file at `path`. A file of another format
    /// (an older Custos) is replaced by an empty one, which then rebuilds.
    pub fn open(path: &Path) -> Result<AuditIndex, QueryError> {
        AuditIndex::open_with_bucket_bits(path, BUCKET_BITS)
    }

    /// [`AuditIndex::open`] with buckets of 2^`bits` sequence numbers
    /// (1 to 16), so that tests see retention drop buckets without writing
    /// 65,536 records. A file made with another bucket size is replaced.
    pub fn open_with_bucket_bits(path: &Path, bits: u32) -> Result<AuditIndex, QueryError> {
        if !(1..=16).contains(&bits) {
            return Err(QueryError::Index(format!(
                "bucket bits {bits} not in 1..=16"
            )));
        }
        let create = |p: &Path| redb::Builder::new().set_cache_size(CACHE_BYTES).create(p);
        let replace = |why: &str| -> Result<Database, QueryError> {
            tracing::warn!(path = %path.display(), reason = why, "audit index replaced; rebuilding it from the log");
            std::fs::remove_file(path)
                .map_err(|io| QueryError::Index(format!("remove {}: {io}", path.display())))?;
            ::metrics::counter!(metrics::INDEX_REBUILDS).increment(1);
            create(path).map_err(idx_err)
        };
        let mut db = match create(path) {
            Ok(db) => db,
            Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => return Err(idx_err(e)),
            Err(e) => replace(&e.to_string())?,
        };
        let (format, file_bits) = (read_meta(&db, "format")?, read_meta(&db, "bucket_bits")?);
        if format.is_some_and(|f| f != FORMAT) || file_bits.is_some_and(|b| b != u64::from(bits)) {
            drop(db);
            db = replace(&format!(
                "format {format:?} with buckets of 2^{file_bits:?}, this server writes {FORMAT} with 2^{bits}"
            ))?;
        }
        let floor = read_meta(&db, "floor_seq")?.unwrap_or(1).max(1);
        // The file's salt; a new file draws one.
        let salt = match (
            read_meta(&db, "path_salt_0")?,
            read_meta(&db, "path_salt_1")?,
        ) {
            (Some(a), Some(b)) => ((u128::from(a) << 64) | u128::from(b)).to_be_bytes(),
            _ => rand::random::<[u8; 16]>(),
        };
        let index = AuditIndex {
            db,
            path: path.to_path_buf(),
            indexed: watch::channel(0).0,
            mem: Mutex::new(MemTable::default()),
            floor: AtomicU64::new(floor),
            // A sweep cut short by a restart is done again.
            sweep: Mutex::new(Sweep {
                floor_bucket: bucket_of(floor, bits).filter(|b| *b > 0),
                ..Sweep::default()
            }),
            bits,
            salt,
        };
        if index.meta("format")?.is_none() {
            let txn = index.db.begin_write().map_err(idx_err)?;
            {
                let mut meta = txn.open_table(META).map_err(idx_err)?;
                index.write_identity(&mut meta)?;
            }
            txn.commit().map_err(idx_err)?;
        }
        let next = index.next_seq();
        index.indexed.send_replace(next.saturating_sub(1));
        index.publish_size();
        Ok(index)
    }

    /// Write what a file of this format says about itself: the format,
    /// the bucket size and the path salt.
    fn write_identity(&self, meta: &mut redb::Table<&str, u64>) -> Result<(), QueryError> {
        meta.insert("format", FORMAT).map_err(idx_err)?;
        meta.insert("bucket_bits", u64::from(self.bits))
            .map_err(idx_err)?;
        let salt = u128::from_be_bytes(self.salt);
        meta.insert("path_salt_0", (salt >> 64) as u64)
            .map_err(idx_err)?;
        meta.insert("path_salt_1", salt as u64).map_err(idx_err)?;
        Ok(())
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
        txn.set_durability(Durability::Immediate).map_err(idx_err)?;
        let added = write_postings(&txn, &postings, self.floor(), self.bits, &self.salt)?;
        {
            let mut meta = txn.open_table(META).map_err(idx_err)?;
            let held = meta
                .get("postings")
                .map_err(idx_err)?
                .map_or(0, |v| v.value());
            meta.insert("postings", held + added).map_err(idx_err)?;
            meta.insert("format", FORMAT).map_err(idx_err)?;
            meta.insert("next_seq", last_seq + 1).map_err(idx_err)?;
            meta.insert("last_seq", last_seq).map_err(idx_err)?;
            meta.insert("last_digest", last_digest).map_err(idx_err)?;
        }
        txn.commit().map_err(idx_err)?;
        ::metrics::counter!(metrics::INDEX_FLUSHES).increment(1);
        self.publish_size();
        Ok(())
    }

    /// Publish the file size and the postings held.
    fn publish_size(&self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            ::metrics::gauge!(metrics::INDEX_BYTES).set(m.len() as f64);
        }
        if let Ok(Some(n)) = self.meta("postings") {
            ::metrics::gauge!(metrics::INDEX_POSTINGS).set(n as f64);
        }
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// redb's account of the file: (allocated pages, leaf pages, branch
    /// pages, stored bytes, metadata bytes, fragmented bytes, page size) —
    /// for measurements.
    pub fn storage_stats(&self) -> Result<[u64; 7], QueryError> {
        let txn = self.db.begin_write().map_err(idx_err)?;
        let s = txn.stats().map_err(idx_err)?;
        let out = [
            s.allocated_pages(),
            s.leaf_pages(),
            s.branch_pages(),
            s.stored_bytes(),
            s.metadata_bytes(),
            s.fragmented_bytes(),
            s.page_size() as u64,
        ];
        txn.abort().map_err(idx_err)?;
        Ok(out)
    }

    /// Bytes of the index file.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, QueryError> {
        read_meta(&self.db, key)
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

    /// The first log sequence number answers may include: the first record
    /// the log held when the floor last moved.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Move the floor up to `first_seq` (the log's first record after
    /// retention); it never moves down. Queries leave out postings below it
    /// at once; [`AuditIndex::prune_step`] removes them from the file.
    pub fn set_floor(&self, first_seq: u64) {
        self.floor.fetch_max(first_seq, Ordering::AcqRel);
    }

    /// Move the floor to the first record the log in `dir` holds.
    pub fn follow_retention(&self, dir: &LogDir) -> Result<u64, QueryError> {
        if let Some(first) = log_first_seq(dir)? {
            self.set_floor(first);
        }
        Ok(self.floor())
    }

    /// Number of postings held (in the file, and in memory not yet flushed).
    pub fn postings(&self) -> Result<u64, QueryError> {
        let mem = self.mem();
        let flushed = self.meta("postings")?.unwrap_or(0);
        Ok(flushed + mem.postings.len() as u64)
    }

    /// Profiles (who asked, and how) the file holds ids for.
    pub fn profiles(&self) -> Result<u64, QueryError> {
        let txn = self.db.begin_read().map_err(idx_err)?;
        match open_read(&txn, PROFILE_OF)? {
            Some(t) => t.len().map_err(idx_err),
            None => Ok(0),
        }
    }

    /// Drop every posting and start again from the first record. The floor
    /// goes back to 1: the log may be another one now (a fresh log in the
    /// same directory, a restore); [`AuditIndex::follow_retention`] moves it
    /// to that log's first record.
    pub fn clear(&self) -> Result<(), QueryError> {
        let mut mem = self.mem();
        *mem = MemTable::default();
        self.floor.store(1, Ordering::Release);
        let txn = self.db.begin_write().map_err(idx_err)?;
        let tables: Vec<_> = txn.list_tables().map_err(idx_err)?.collect();
        for table in tables {
            txn.delete_table(table).map_err(idx_err)?;
        }
        {
            let mut meta = txn.open_table(META).map_err(idx_err)?;
            self.write_identity(&mut meta)?;
            meta.insert("next_seq", 1).map_err(idx_err)?;
            meta.insert("floor_seq", self.floor()).map_err(idx_err)?;
        }
        txn.commit().map_err(idx_err)?;
        *self.sweep.lock().unwrap_or_else(|e| e.into_inner()) = Sweep::default();
        self.indexed.send_replace(0);
        ::metrics::counter!(metrics::INDEX_REBUILDS).increment(1);
        self.publish_size();
        Ok(())
    }

    /// Check the index against the log in `dir` whose durable end is
    /// `durable_seq`; clear it when the log no longer holds what the index
    /// was built from. Then move the floor to the log's first record and
    /// prune what retention deleted (also what a crash between a segment's
    /// deletion and the pruning left). Returns true when it was cleared.
    pub fn reconcile(&self, dir: &LogDir, durable_seq: u64) -> Result<bool, QueryError> {
        let stale = self.stale(dir, durable_seq)?;
        if stale {
            tracing::warn!(path = %self.path.display(), "audit index does not match the log; rebuilding it");
            self.clear()?;
        }
        self.follow_retention(dir)?;
        while self.prune_step()?.more {}
        Ok(stale)
    }

    fn stale(&self, dir: &LogDir, durable_seq: u64) -> Result<bool, QueryError> {
        let Some(last) = self.meta("last_seq")?.filter(|s| *s > 0) else {
            return Ok(false);
        };
        if durable_seq < last {
            return Ok(true);
        }
        let want = self.meta("last_digest")?;
        let mut reader = LogReader::open(dir.clone(), last)?;
        match reader.try_next() {
            Ok(Some(rec)) if rec.seq == last => Ok(want != Some(digest(&rec.event))),
            // Retention removed it: nothing to compare against.
            Ok(Some(_)) | Ok(None) => Ok(false),
            Err(AuditError::CorruptRecord { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// One bounded step of pruning below the floor: drop up to
    /// `PRUNE_BUCKETS_PER_STEP` (4) buckets wholly below it, or else sweep up
    /// to `PRUNE_SCAN_PER_STEP` (8,192) profile ids for ones no remaining
    /// bucket uses. One write transaction; call again while `more`.
    pub fn prune_step(&self) -> Result<PruneStep, QueryError> {
        let floor = self.floor();
        let Some(floor_bucket) = bucket_of(floor, self.bits) else {
            return Ok(PruneStep::default());
        };
        let mut step = PruneStep::default();
        let mut sweep = self.sweep.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.db.begin_write().map_err(idx_err)?;
        // Lost in a crash, a prune is done again at the next open.
        txn.set_durability(Durability::None).map_err(idx_err)?;
        let stored_floor = {
            let meta = txn.open_table(META).map_err(idx_err)?;
            meta.get("floor_seq")
                .map_err(idx_err)?
                .map_or(1, |v| v.value())
        };
        let doomed: Vec<(u32, u64)> = {
            let buckets = txn.open_table(BUCKETS).map_err(idx_err)?;
            let mut out = Vec::new();
            for item in buckets.range(..floor_bucket).map_err(idx_err)? {
                let (b, v) = item.map_err(idx_err)?;
                out.push((b.value(), v.value().0));
                if out.len() > PRUNE_BUCKETS_PER_STEP {
                    break;
                }
            }
            out
        };
        if !doomed.is_empty() {
            step.more = doomed.len() > PRUNE_BUCKETS_PER_STEP;
            let mut buckets = txn.open_table(BUCKETS).map_err(idx_err)?;
            for (b, count) in doomed.iter().take(PRUNE_BUCKETS_PER_STEP) {
                let name = bucket_name(*b);
                txn.delete_table(bucket_table(&name)).map_err(idx_err)?;
                buckets.remove(*b).map_err(idx_err)?;
                step.buckets += 1;
                step.postings += count;
            }
            // Ids may have lost their last user: sweep them (again).
            *sweep = Sweep {
                floor_bucket: Some(floor_bucket),
                ..Sweep::default()
            };
            step.more = true;
        } else if let Some(fb) = sweep.floor_bucket {
            step.ids = sweep_ids(&txn, &mut sweep, fb)?;
            step.more = sweep.floor_bucket.is_some();
        }
        if step.buckets == 0 && step.ids == 0 && stored_floor >= floor {
            // Nothing changed: do not commit an empty transaction.
            txn.abort().map_err(idx_err)?;
            return Ok(step);
        }
        {
            let mut meta = txn.open_table(META).map_err(idx_err)?;
            let held = meta
                .get("postings")
                .map_err(idx_err)?
                .map_or(0, |v| v.value());
            meta.insert("postings", held.saturating_sub(step.postings))
                .map_err(idx_err)?;
            meta.insert("floor_seq", floor.max(stored_floor))
                .map_err(idx_err)?;
        }
        txn.commit().map_err(idx_err)?;
        if step.buckets > 0 {
            tracing::info!(
                buckets = step.buckets,
                postings = step.postings,
                floor,
                "audit index pruned after log retention"
            );
            ::metrics::counter!(metrics::INDEX_PRUNED_POSTINGS).increment(step.postings);
        }
        self.publish_size();
        Ok(step)
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
    /// writer in this process (tests, tools), after moving the floor to the
    /// log's first record. Returns the postings written.
    pub fn catch_up(&self, dir: &LogDir) -> Result<usize, QueryError> {
        self.follow_retention(dir)?;
        let mut reader = LogReader::open(dir.clone(), self.next_seq())?;
        let mut written = 0;
        let mut batch = Vec::with_capacity(FOLLOW_BATCH);
        loop {
            let full = reader.fill_batch(&mut batch, "audit index")?;
            written += self.apply(&batch)?;
            batch.clear();
            if !full {
                self.flush()?;
                while self.prune_step()?.more {}
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

    /// Answer a query from the postings of `q.path` in `[since, until]` at
    /// or above the floor. Blocking (redb reads); call it from
    /// `spawn_blocking` in async code.
    pub fn query(&self, q: &QueryParams) -> Result<QueryAnswer, QueryError> {
        q.validate()?;
        let mut agg = Aggregator::new(q);
        let path = q.path.as_str();
        let floor = self.floor();
        // Hold the memtable while reading redb: a flush cannot move postings
        // from one to the other under us.
        let mem = self.mem();
        let lo = (path.to_string(), q.since, 0u64);
        let hi = (path.to_string(), q.until, u64::MAX);
        for p in mem.postings.range(lo..=hi).map(|(_, p)| p) {
            if p.seq >= floor {
                agg.push(p.clone());
            }
        }
        let txn = self.db.begin_read().map_err(idx_err)?;
        let path_id = path_key(&self.salt, path);
        let (Some(buckets), Some(profile_of)) =
            (open_read(&txn, BUCKETS)?, open_read(&txn, PROFILE_OF)?)
        else {
            return Ok(agg.finish("local"));
        };
        let floor_bucket = bucket_of(floor, self.bits).unwrap_or(u32::MAX);
        let mut profiles: HashMap<u32, Profile> = HashMap::new();
        for item in buckets.range(floor_bucket..).map_err(idx_err)? {
            let (b, span) = item.map_err(idx_err)?;
            let (bucket, (_, earliest, latest)) = (b.value(), span.value());
            if latest < q.since || earliest > q.until {
                continue;
            }
            let name = bucket_name(bucket);
            let Some(table) = open_read(&txn, bucket_table(&name))? else {
                continue;
            };
            let base = u64::from(bucket) << self.bits;
            let range = table
                .range((path_id, q.since, 0u16)..=(path_id, q.until, u16::MAX))
                .map_err(idx_err)?;
            for item in range {
                let (k, v) = item.map_err(idx_err)?;
                let (_, time, lo) = k.value();
                let seq = base | u64::from(lo);
                if seq < floor {
                    continue;
                }
                let (pid, version, key_versions) = decode_value(v.value())
                    .ok_or_else(|| QueryError::Index(format!("undecodable posting {seq}")))?;
                let profile = match profiles.entry(pid) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let bytes = profile_of
                            .get(pid)
                            .map_err(idx_err)?
                            .ok_or_else(|| QueryError::Index(format!("missing profile {pid}")))?;
                        e.insert(Profile::decode(bytes.value()).ok_or_else(|| {
                            QueryError::Index(format!("undecodable profile {pid}"))
                        })?)
                    }
                };
                agg.push(profile.posting(seq, time, version, key_versions));
            }
        }
        Ok(agg.finish("local"))
    }
}

fn read_meta(db: &Database, key: &str) -> Result<Option<u64>, QueryError> {
    let txn = db.begin_read().map_err(idx_err)?;
    let Some(table) = open_read(&txn, META)? else {
        return Ok(None);
    };
    Ok(table.get(key).map_err(idx_err)?.map(|v| v.value()))
}

/// Open a table for reading; `None` when it does not exist (yet).
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, QueryError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(idx_err(e)),
    }
}

/// Write `postings` (in `(path, time, seq)` order) to `txn`: profiles
/// interned, paths hashed with `salt`, then the postings of each bucket.
/// Postings below `floor` (the log no longer holds them) are left out.
/// Returns the postings added.
fn write_postings(
    txn: &WriteTransaction,
    postings: &BTreeMap<(String, i64, u64), Posting>,
    floor: u64,
    bits: u32,
    salt: &[u8; 16],
) -> Result<u64, QueryError> {
    let mut meta = txn.open_table(META).map_err(idx_err)?;
    let mut next_profile = meta
        .get("next_profile_id")
        .map_err(idx_err)?
        .map_or(0, |v| v.value());
    let mut rows: Vec<(u32, BucketKey, Vec<u8>)> = Vec::with_capacity(postings.len());
    {
        let mut profiles = txn.open_table(PROFILES).map_err(idx_err)?;
        let mut profile_of = txn.open_table(PROFILE_OF).map_err(idx_err)?;
        // Postings come sorted by path: one hash per path.
        let mut current: Option<(&str, u128)> = None;
        // Profiles seen in this flush: (id, last bucket).
        let mut seen: HashMap<Vec<u8>, (u32, u32)> = HashMap::new();
        for ((path, time, seq), p) in postings {
            if *seq < floor {
                continue;
            }
            let Some(bucket) = bucket_of(*seq, bits) else {
                return Err(QueryError::Index(format!(
                    "sequence number {seq} out of range"
                )));
            };
            let key = match current {
                Some((cur, key)) if cur == path.as_str() => key,
                _ => path_key(salt, path),
            };
            current = Some((path.as_str(), key));

            let encoded = Profile::encode(p);
            let (prof, mut last, mut dirty) = match seen.get(&encoded) {
                Some(&(id, last)) => (id, last, false),
                None => match profiles
                    .get(encoded.as_slice())
                    .map_err(idx_err)?
                    .map(|v| v.value())
                {
                    Some((id, last)) => (id, last, false),
                    None => {
                        let id = u32::try_from(next_profile).map_err(|_| {
                            QueryError::Index(
                                "profile ids exhausted; delete the index file to rebuild it".into(),
                            )
                        })?;
                        next_profile += 1;
                        profile_of.insert(id, encoded.as_slice()).map_err(idx_err)?;
                        (id, bucket, true)
                    }
                },
            };
            if last < bucket {
                last = bucket;
                dirty = true;
            }
            if dirty {
                profiles
                    .insert(encoded.as_slice(), (prof, last))
                    .map_err(idx_err)?;
            }
            let value = encode_value(prof, p);
            seen.insert(encoded, (prof, last));
            let lo = (*seq & ((1 << bits) - 1)) as u16;
            rows.push((bucket, (key, *time, lo), value));
        }
    }
    meta.insert("next_profile_id", next_profile)
        .map_err(idx_err)?;
    drop(meta);
    // By bucket, and inside a bucket in a scrambled order: redb splits a
    // full leaf in half, so keys inserted in order leave every leaf half
    // empty, while keys in random order fill leaves to ~70%.
    rows.sort_unstable_by_key(|(bucket, (path, time, lo), _)| {
        (*bucket, scramble(*path, *time, *lo))
    });
    let mut added = 0;
    let mut buckets = txn.open_table(BUCKETS).map_err(idx_err)?;
    for group in rows.chunk_by(|a, b| a.0 == b.0) {
        let bucket = group[0].0;
        let name = bucket_name(bucket);
        let mut table = txn.open_table(bucket_table(&name)).map_err(idx_err)?;
        let (mut count, mut earliest, mut latest) = buckets
            .get(bucket)
            .map_err(idx_err)?
            .map_or((0, i64::MAX, i64::MIN), |v| v.value());
        for (_, key, value) in group {
            if table
                .insert(*key, value.as_slice())
                .map_err(idx_err)?
                .is_none()
            {
                count += 1;
                added += 1;
            }
            earliest = earliest.min(key.1);
            latest = latest.max(key.1);
        }
        buckets
            .insert(bucket, (count, earliest, latest))
            .map_err(idx_err)?;
    }
    Ok(added)
}

/// One chunk of the id sweep: profiles whose last bucket is below
/// `floor_bucket` (every posting using them was dropped) go. Clears
/// `sweep.floor_bucket` when done. Returns the ids dropped.
fn sweep_ids(
    txn: &WriteTransaction,
    sweep: &mut Sweep,
    floor_bucket: u32,
) -> Result<usize, QueryError> {
    let mut profiles = txn.open_table(PROFILES).map_err(idx_err)?;
    let mut profile_of = txn.open_table(PROFILE_OF).map_err(idx_err)?;
    let mut doomed = Vec::new();
    let mut next = None;
    {
        let start = sweep.profile.clone().unwrap_or_default();
        let mut budget = PRUNE_SCAN_PER_STEP;
        for item in profiles.range(start.as_slice()..).map_err(idx_err)? {
            let (k, v) = item.map_err(idx_err)?;
            if budget == 0 {
                next = Some(k.value().to_vec());
                break;
            }
            budget -= 1;
            let (id, last) = v.value();
            if last < floor_bucket {
                doomed.push((k.value().to_vec(), id));
            }
        }
    }
    for (k, id) in &doomed {
        profiles.remove(k.as_slice()).map_err(idx_err)?;
        profile_of.remove(*id).map_err(idx_err)?;
    }
    if next.is_none() {
        sweep.floor_bucket = None;
    }
    sweep.profile = next;
    Ok(doomed.len())
}

/// The index worker: follows `log` from the index's position and indexes
/// every fsynced record until `stop` turns true or the log closes. Reading
/// and redb writes run on the blocking pool, never on the request path;
/// every `PRUNE_EVERY` (5 s) it moves the floor to the log's first record and
/// prunes below it (a bounded round).
pub async fn run_indexer(index: Arc<AuditIndex>, log: Arc<AuditLog>, stop: watch::Receiver<bool>) {
    follow(index.clone(), log, stop).await;
    let joined = tokio::task::spawn_blocking(move || index.flush()).await;
    if let Ok(Err(e)) = joined {
        tracing::warn!(error = %e, "audit index: final durable commit failed (it re-indexes at start)");
    }
}

/// Move the index's floor to the log's first record and prune below it, at
/// most `PRUNE_ROUND_STEPS` bounded steps (the rest at the next round).
fn prune_round(index: &AuditIndex, dir: &LogDir) {
    if let Err(e) = index.follow_retention(dir) {
        tracing::warn!(error = %e, "audit index: reading the log's first segment failed");
        return;
    }
    for _ in 0..PRUNE_ROUND_STEPS {
        match index.prune_step() {
            Ok(step) if step.more => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "audit index prune failed; retrying later");
                return;
            }
        }
    }
}

/// Bounded steps per worker prune round.
const PRUNE_ROUND_STEPS: usize = 16;

async fn follow(index: Arc<AuditIndex>, log: Arc<AuditLog>, mut stop: watch::Receiver<bool>) {
    let (idx, dir, durable) = (index.clone(), log.log_dir().clone(), log.durable_seq());
    match tokio::task::spawn_blocking(move || idx.reconcile(&dir, durable)).await {
        Ok(Ok(true)) => tracing::info!("audit index cleared; rebuilding from the local log"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "audit index check failed"),
        Err(e) => tracing::warn!(error = %e, "audit index check failed"),
    }
    // tokio's clock, so a test with a paused clock sees the rounds.
    let mut pruned_at = tokio::time::Instant::now();
    let mut reader = Some(log.reader(index.next_seq()));
    let mut batch: Vec<Record> = Vec::with_capacity(FOLLOW_BATCH);
    // The last batch stopped at FOLLOW_BATCH records, not at the end of the log.
    let mut behind = false;
    loop {
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = tokio::time::Instant::now();
            let (idx, dir) = (index.clone(), log.log_dir().clone());
            if let Err(e) = tokio::task::spawn_blocking(move || prune_round(&idx, &dir)).await {
                tracing::warn!(error = %e, "audit index prune task failed");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(version: Option<u64>, key_versions: Vec<u64>) -> Posting {
        Posting {
            seq: 7,
            time: -5,
            operation: "update".into(),
            accessor: "hmac-sha256:ab".into(),
            display_name: "approle".into(),
            policies: vec!["default".into(), "app".into()],
            remote_address: "10.0.0.1".into(),
            role: "web".into(),
            entity_id: "e-1".into(),
            version,
            key_versions,
        }
    }

    #[test]
    fn postings_round_trip_through_profile_and_value() {
        for p in [
            posting(None, vec![]),
            posting(Some(0), vec![]),
            posting(Some(u64::MAX), vec![1, 300, u64::MAX]),
            posting(Some(3), vec![2]),
        ] {
            let profile = Profile::decode(&Profile::encode(&p)).unwrap();
            let value = encode_value(42, &p);
            let (id, version, kv) = decode_value(&value).unwrap();
            assert_eq!(id, 42);
            // u64::MAX has no "+ 1": kept as the largest version instead.
            let want = p.version.map(|v| v.min(u64::MAX - 1));
            assert_eq!(version, want);
            let back = profile.posting(p.seq, p.time, p.version, kv);
            assert_eq!(back, p);
        }
        // A read of version 1 by a known client: two bytes.
        assert_eq!(encode_value(5, &posting(Some(1), vec![])).len(), 2);
    }

    #[test]
    fn truncated_bytes_do_not_decode() {
        let p = posting(Some(900), vec![1, 2]);
        let value = encode_value(70_000, &p);
        for cut in 0..value.len() - 1 {
            if let Some((id, ..)) = decode_value(&value[..cut]) {
                // A prefix may be a complete shorter value, never garbage.
                assert_eq!(id, 70_000);
            }
        }
        let profile = Profile::encode(&p);
        for cut in 0..profile.len() {
            assert!(Profile::decode(&profile[..cut]).is_none(), "cut {cut}");
        }
        assert!(get_varint(&mut &[0xff; 11][..]).is_none());
    }

    #[test]
    fn path_keys_depend_on_the_salt() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert_eq!(path_key(&a, "secret/data/x"), path_key(&a, "secret/data/x"));
        assert_ne!(path_key(&a, "secret/data/x"), path_key(&a, "secret/data/y"));
        assert_ne!(path_key(&a, "secret/data/x"), path_key(&b, "secret/data/x"));
    }
}
