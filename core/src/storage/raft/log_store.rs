//! The Raft log and vote: append-only segment files in `raft-log/`.
//!
//! openraft hands this store the entries the leader proposes
//! ([`RaftLogStorage::append`]), the votes of elections
//! ([`RaftLogStorage::save_vote`]), and later asks it to drop a conflicting
//! tail ([`RaftLogStorage::truncate`]) or a prefix already covered by a
//! snapshot ([`RaftLogStorage::purge`]). Replication and apply read entries
//! back through [`RaftLogReader`] (the state machine's apply reads every entry
//! once, from the page cache).
//!
//! # Why files and not a database
//!
//! A Raft log is written at its end and cut at either end, never updated in
//! place. On redb every append was a copy-on-write B-tree commit: new leaf,
//! branch and allocator pages, then an fsync of all of them — about 0.9 ms per
//! append on these disks and ~13% of the server's CPU under writes. An append
//! here is one `write` of the encoded entries at the end of the active
//! segment and one `fdatasync` (~0.2 ms).
//!
//! # Layout
//!
//! - `meta.json`: `{"vote": …, "last_purged": …}`, replaced atomically (write
//!   `meta.json.tmp`, fsync, rename, fsync the directory).
//! - `committed`: the last committed log id this node knows of
//!   ([`RaftLogStorage::save_committed`]), one record (`u32` length, `u32`
//!   CRC-32C, JSON `LogId`, little-endian) rewritten in place at offset 0
//!   and not fsynced: it survives a killed process (the page cache), and a
//!   power cut can only make it older or unreadable (then ignored), which is
//!   safe — it is a hint that lets a restarted node re-apply its own
//!   committed entries at once, before it hears from a leader. Without it a
//!   restarted node whose last state-machine commits were not durable came
//!   back behind (even uninitialized) and, sealed, could not learn the commit
//!   index from a leader over the cluster port's TLS, so it never caught up.
//! - `<first index, 20 digits>.seg`: [`SEGMENT_MAGIC`] (8 bytes) and the
//!   format version (`u32`), then records: `u32` body length, `u32` CRC-32C of
//!   the body, body. The body is `u32` length + the JSON [`LogId`], then the
//!   JSON `Entry` (command values are base64 inside, see [`super::Command`]).
//!   All integers little-endian. A segment is closed at [`SEGMENT_BYTES`] and
//!   a new one started; creating a segment fsyncs the directory. Segments
//!   grow in zeroed [`PREALLOCATE`] steps; zeroes where a record header
//!   would be mark the end of the records.
//!
//! # Durability and recovery
//!
//! `append` reports [`LogFlushed`] only after its `fdatasync` returned, so
//! openraft never counts an entry as persisted that a power cut could take
//! back. At open every segment is read and checked: a torn or corrupt record
//! at the end of the *last* segment (a crash mid-append, never acknowledged) is
//! cut off; anywhere else it is an error, as are indexes that go backwards.
//! Entries at or below `last_purged` are skipped. An append at an index the
//! log already holds replaces that entry and everything after it (openraft
//! truncates first anyway), so records are always in index order on disk. `truncate` deletes later segments
//! before cutting the one holding the truncation point, so a crash at any step
//! leaves a prefix of the log. `purge` records `last_purged` durably first,
//! then deletes the segments it covers. A failed write or fsync poisons the
//! store: every later call fails (after a failed fsync the page cache may
//! claim data the disk does not hold).
//!
//! Logs of earlier versions (`raft-log.redb`) are copied into this format once,
//! at open ([`LogStore::migrate_redb`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::{StoreError, TypeConfig, blocking};
use crate::metrics;

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"CUSTOSRL";
const SEGMENT_VERSION: u32 = 1;
const SEGMENT_HEADER: u64 = 12;
/// A segment is closed once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Segments grow by this many zeroed bytes at a time, so that an append
/// overwrites allocated blocks and its `fdatasync` changes no metadata (no
/// journal commit: ~150 µs instead of ~220 µs on these disks, and no queueing
/// behind the audit log's own journal commits).
const PREALLOCATE: u64 = 4 * 1024 * 1024;
/// Record framing: body length and CRC-32C.
const RECORD_HEADER: usize = 8;
/// No single record is larger than this (a group is at most ~4 MiB of values,
/// base64 in JSON); a larger length field is corruption, not an allocation.
const MAX_RECORD: usize = 256 * 1024 * 1024;
const META_FILE: &str = "meta.json";
const COMMITTED_FILE: &str = "committed";
/// A `committed` record longer than this is damage, not a log id.
const MAX_COMMITTED: usize = 512;

/// The log store; cheap to clone (it is its own log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// What readers see; held only for lookups and updates, never across I/O
    /// except the brief reads of [`LogStore::entries`].
    state: Mutex<State>,
    /// The active segment's append handle; appends, truncates and purges take
    /// it (openraft calls them one at a time; the lock makes it certain).
    writer: Mutex<Writer>,
    poisoned: AtomicBool,
    /// The `committed` file, rewritten in place (see the module docs).
    committed: Mutex<File>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
}

#[derive(Default, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) vote: Option<Vote<u64>>,
    last_purged: Option<LogId<u64>>,
}

pub(super) struct State {
    pub(super) meta: Meta,
    /// Open segments by first index, for reads.
    segments: BTreeMap<u64, Arc<File>>,
    /// Where each live entry is, by index.
    locs: BTreeMap<u64, Loc>,
}

#[derive(Clone, Copy)]
struct Loc {
    log_id: LogId<u64>,
    segment: u64,
    offset: u64,
    len: u32,
}

struct Writer {
    /// First index of the active segment, its handle and its length (the
    /// end of the last record).
    segment: u64,
    file: Arc<File>,
    len: u64,
    /// The file's size: zeroes from `len` to here.
    allocated: u64,
}

impl Writer {
    /// Make sure `len + extra` bytes are allocated and zeroed (durably), so
    /// the append that follows only overwrites.
    fn reserve(&mut self, dir: &Path, extra: u64) -> Result<(), StoreError> {
        let need = self.len + extra;
        if need <= self.allocated {
            return Ok(());
        }
        let target = need.div_ceil(PREALLOCATE) * PREALLOCATE;
        let zeros = vec![0u8; (target - self.allocated).min(PREALLOCATE) as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|e| io_err("extending", &segment_path(dir, self.segment), e))?;
            at += n as u64;
        }
        self.file
            .sync_data()
            .map_err(|e| io_err("extending", &segment_path(dir, self.segment), e))?;
        self.allocated = target;
        Ok(())
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Log(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, offset: u64, why: &str) -> StoreError {
    StoreError::Log(format!(
        "{} at byte {offset}: {why} (the Raft log is damaged; restore this node from a snapshot)",
        path.display()
    ))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

/// Encode one entry as a framed record.
fn encode(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    let id = serde_json::to_vec(&entry.log_id)?;
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(&id);
    serde_json::to_writer(&mut *out, entry)?;
    let body = &out[start + RECORD_HEADER..];
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_RECORD)
        .ok_or_else(|| StoreError::Log(format!("log entry of {} bytes", body.len())))?;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The log id at the front of a record body.
fn body_log_id(body: &[u8]) -> Option<LogId<u64>> {
    let n = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    serde_json::from_slice(body.get(4..4 + n)?).ok()
}

fn body_entry(body: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    let n = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(usize::MAX);
    let json = body
        .get(4usize.saturating_add(n)..)
        .ok_or_else(|| StoreError::Log("log record without an entry".into()))?;
    Ok(serde_json::from_slice(json)?)
}

/// One segment read at open: its records' log ids and places, and where its
/// valid data ends (`None` if a record is torn or corrupt before the end).
struct Scanned {
    records: Vec<(LogId<u64>, u64, u32)>,
    valid_len: u64,
    torn: Option<String>,
}

fn scan_segment(path: &Path) -> Result<Scanned, StoreError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io_err("reading", path, e))?;
    if data.len() < SEGMENT_HEADER as usize
        || &data[..8] != SEGMENT_MAGIC
        || data[8..12] != SEGMENT_VERSION.to_le_bytes()
    {
        // A segment whose header never reached the disk holds no record.
        return Ok(Scanned {
            records: Vec::new(),
            valid_len: 0,
            torn: (!data.is_empty()).then(|| "bad segment header".to_string()),
        });
    }
    let mut records = Vec::new();
    let mut pos = SEGMENT_HEADER as usize;
    let mut torn = None;
    while pos < data.len() {
        // Zeroes: the preallocated rest of the segment.
        if data[pos..].iter().take(RECORD_HEADER).all(|b| *b == 0) {
            break;
        }
        let Some(head) = data.get(pos..pos + RECORD_HEADER) else {
            torn = Some("truncated record header".to_string());
            break;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let body_at = pos + RECORD_HEADER;
        let Some(body) = data
            .get(body_at..body_at + len)
            .filter(|_| len <= MAX_RECORD)
        else {
            torn = Some("truncated record".to_string());
            break;
        };
        if crc32c::crc32c(body) != crc {
            torn = Some("checksum mismatch".to_string());
            break;
        }
        let Some(log_id) = body_log_id(body) else {
            torn = Some("unreadable log id".to_string());
            break;
        };
        records.push((log_id, body_at as u64, len as u32));
        pos = body_at + len;
    }
    Ok(Scanned {
        records,
        valid_len: pos as u64,
        torn,
    })
}

fn create_segment(dir: &Path, first: u64) -> Result<Writer, StoreError> {
    let path = segment_path(dir, first);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("creating", &path, e))?;
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    file.write_all(&header)
        .and_then(|_| file.sync_data())
        .map_err(|e| io_err("writing", &path, e))?;
    sync_dir(dir)?;
    Ok(Writer {
        segment: first,
        file: Arc::new(file),
        len: SEGMENT_HEADER,
        allocated: SEGMENT_HEADER,
    })
}

impl LogStore {
    /// Open or create the log in directory `dir`, checking every record.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        LogStore::open_with(dir, SEGMENT_BYTES)
    }

    /// [`LogStore::open`], closing segments at `segment_bytes`.
    pub(super) fn open_with(dir: &Path, segment_bytes: u64) -> Result<LogStore, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let meta: Meta = match fs::read(dir.join(META_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(io_err("reading", &dir.join(META_FILE), e)),
        };
        let _ = fs::remove_file(dir.join(format!("{META_FILE}.tmp")));
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
            let name = item.map_err(|e| io_err("listing", dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let purged = meta.last_purged.map(|l| l.index);
        let mut state = State {
            meta,
            segments: BTreeMap::new(),
            locs: BTreeMap::new(),
        };
        let mut writer = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let last_segment = i + 1 == firsts.len();
            let scanned = scan_segment(&path)?;
            if let Some(why) = &scanned.torn {
                if !last_segment {
                    return Err(corrupt(&path, scanned.valid_len, why));
                }
                tracing::warn!(
                    segment = %path.display(),
                    at = scanned.valid_len,
                    reason = %why,
                    "cutting a torn record off the end of the Raft log (a crash mid-append; it was never acknowledged)"
                );
            }
            for (log_id, offset, len) in scanned.records {
                if purged.is_some_and(|p| log_id.index <= p) {
                    continue;
                }
                if let Some((&prev, _)) = state.locs.last_key_value()
                    && log_id.index <= prev
                {
                    return Err(corrupt(
                        &path,
                        offset,
                        &format!("index {} after index {prev}", log_id.index),
                    ));
                }
                state.locs.insert(
                    log_id.index,
                    Loc {
                        log_id,
                        segment: first,
                        offset,
                        len,
                    },
                );
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("opening", &path, e))?;
            if last_segment && scanned.valid_len >= SEGMENT_HEADER {
                if scanned.torn.is_some() {
                    file.set_len(scanned.valid_len)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| io_err("cutting", &path, e))?;
                }
                let allocated = file
                    .metadata()
                    .map_err(|e| io_err("reading", &path, e))?
                    .len();
                let file = Arc::new(file);
                state.segments.insert(first, file.clone());
                writer = Some(Writer {
                    segment: first,
                    file,
                    len: scanned.valid_len,
                    allocated,
                });
            } else if last_segment {
                // Its header never reached the disk: nothing in it.
                fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
            } else {
                state.segments.insert(first, Arc::new(file));
            }
        }
        let writer = match writer {
            Some(w) => w,
            None => {
                let next = state
                    .locs
                    .last_key_value()
                    .map(|(i, _)| *i)
                    .or(purged)
                    .map_or(0, |i| i + 1);
                let w = create_segment(dir, next)?;
                state.segments.insert(w.segment, w.file.clone());
                w
            }
        };
        let committed_path = dir.join(COMMITTED_FILE);
        let committed = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&committed_path)
            .map_err(|e| io_err("opening", &committed_path, e))?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: Mutex::new(state),
                writer: Mutex::new(writer),
                poisoned: AtomicBool::new(false),
                committed: Mutex::new(committed),
                segment_bytes,
            }),
        })
    }

    /// Copy a log of an earlier version (`raft-log.redb`: tables `logs` and
    /// `log_meta`) into `dir`, then rename it `raft-log.redb.migrated`. Does
    /// nothing if `legacy` does not exist. Idempotent: a crash before the
    /// rename leaves the redb file in place, and the copy starts over.
    pub fn migrate_redb(legacy: &Path, dir: &Path) -> Result<(), StoreError> {
        use redb::{ReadableDatabase, ReadableTable, TableDefinition};
        const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
        const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
        if !legacy.exists() {
            return Ok(());
        }
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| io_err("removing", dir, e))?;
        }
        let db = super::redb_format::open(legacy)?;
        let txn = db.begin_read()?;
        let meta = match txn.open_table(LOG_META) {
            Ok(t) => {
                let read = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
                    Ok(t.get(k)?.map(|v| v.value().to_vec()))
                };
                Meta {
                    vote: read("vote")?
                        .map(|b| serde_json::from_slice(&b))
                        .transpose()?,
                    last_purged: read("last_purged")?
                        .map(|b| serde_json::from_slice(&b))
                        .transpose()?,
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Meta::default(),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        match txn.open_table(LOGS) {
            Ok(t) => {
                for item in t.iter()? {
                    let (_, v) = item?;
                    entries.push(serde_json::from_slice::<Entry<TypeConfig>>(v.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        drop(txn);
        drop(db);
        let count = entries.len();
        fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        write_meta(dir, &meta)?;
        let store = LogStore::open(dir)?;
        if let Some(first) = entries.first() {
            let mut w = store.inner.writer.lock().map_err(poisoned_lock)?;
            // Start the segment at the first entry (the empty one `open`
            // made is named after the purge point).
            fs::remove_file(segment_path(dir, w.segment))
                .map_err(|e| io_err("removing", dir, e))?;
            *w = create_segment(dir, first.log_id.index)?;
            let mut st = store.inner.state.lock().map_err(poisoned_lock)?;
            st.segments.clear();
            st.segments.insert(w.segment, w.file.clone());
        }
        store.append_blocking(entries)?;
        drop(store);
        let done = legacy.with_extension("redb.migrated");
        fs::rename(legacy, &done).map_err(|e| io_err("renaming", legacy, e))?;
        if let Some(parent) = legacy.parent() {
            sync_dir(parent)?;
        }
        tracing::info!(entries = count, from = %legacy.display(), to = %dir.display(), "migrated the Raft log to segment files");
        Ok(())
    }

    /// A handle that is alive as long as openraft holds this store (used to
    /// wait for it being released at shutdown).
    pub(crate) fn liveness(&self) -> std::sync::Weak<dyn std::any::Any + Send + Sync> {
        let inner: Arc<dyn std::any::Any + Send + Sync> = self.inner.clone();
        Arc::downgrade(&inner)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Log(format!(
                "the Raft log in {} failed a write earlier; restart the server",
                self.inner.dir.display()
            )));
        }
        Ok(())
    }

    pub(super) fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.inner.state.lock().map_err(poisoned_lock)
    }

    pub(super) fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let picked = self.locate(range)?;
        let mut out = Vec::with_capacity(picked.len());
        let mut buf = Vec::new();
        for (loc, file) in picked {
            self.read_record(&loc, &file, &mut buf)?;
            out.push(body_entry(&buf)?);
        }
        Ok(out)
    }

    /// Where the entries in `range` are, with their segments' handles (taken
    /// under the lock, read after it).
    fn locate<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<(Loc, Arc<File>)>, StoreError> {
        self.check()?;
        let st = self.state()?;
        st.locs
            .range(range)
            .map(|(_, l)| {
                let file = st
                    .segments
                    .get(&l.segment)
                    .cloned()
                    .ok_or_else(|| StoreError::Log(format!("segment {} missing", l.segment)))?;
                Ok((*l, file))
            })
            .collect()
    }

    /// Read the record body at `loc` into `buf`.
    fn read_record(&self, loc: &Loc, file: &File, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        buf.resize(loc.len as usize, 0);
        file.read_exact_at(buf, loc.offset)
            .map_err(|e| io_err("reading", &segment_path(&self.inner.dir, loc.segment), e))
    }

    /// Call `f` with each entry after `after` whose record contains
    /// `needle`, in index order, reading one record at a time (only those
    /// are decoded). Returns the last index looked at.
    pub(super) fn scan_entries_containing(
        &self,
        after: u64,
        needle: &[u8],
        mut f: impl FnMut(Entry<TypeConfig>),
    ) -> Result<Option<u64>, StoreError> {
        let mut last = None;
        let mut buf = Vec::new();
        for (loc, file) in self.locate(after.saturating_add(1)..)? {
            self.read_record(&loc, &file, &mut buf)?;
            if buf.windows(needle.len()).any(|w| w == needle) {
                f(body_entry(&buf)?);
            }
            last = Some(loc.log_id.index);
        }
        Ok(last)
    }

    pub(super) fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        self.check()?;
        let st = self.state()?;
        let purged = st.meta.last_purged;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: st.locs.last_key_value().map(|(_, l)| l.log_id).or(purged),
        })
    }

    /// Write `entries` at the end of the log and fsync. Blocking.
    pub(super) fn append_blocking(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<(), StoreError> {
        self.check()?;
        if entries.is_empty() {
            return Ok(());
        }
        let at = entries[0].log_id.index;
        // An append over existing entries replaces them and everything after
        // (openraft truncates first; this keeps the file in index order even
        // if it did not).
        let overlaps = self
            .state()?
            .locs
            .last_key_value()
            .is_some_and(|(last, _)| *last >= at);
        if overlaps {
            self.truncate_blocking(at)?;
        }
        let mut w = self.inner.writer.lock().map_err(poisoned_lock)?;
        if w.len >= self.inner.segment_bytes {
            // Closed: give back its preallocated tail (zeroes read as the
            // end of the records anyway, so this needs no fsync).
            let _ = w.file.set_len(w.len);
            let next = entries[0].log_id.index;
            let fresh = create_segment(&self.inner.dir, next)?;
            self.state()?.segments.insert(next, fresh.file.clone());
            *w = fresh;
        }
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for entry in &entries {
            let at = buf.len();
            encode(entry, &mut buf)?;
            locs.push(Loc {
                log_id: entry.log_id,
                segment: w.segment,
                offset: w.len + (at + RECORD_HEADER) as u64,
                len: (buf.len() - at - RECORD_HEADER) as u32,
            });
        }
        let path = segment_path(&self.inner.dir, w.segment);
        if let Err(e) = w.reserve(&self.inner.dir, buf.len() as u64) {
            self.inner.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        let written = w
            .file
            .write_all_at(&buf, w.len)
            .and_then(|_| w.file.sync_data());
        if let Err(e) = written {
            self.inner.poisoned.store(true, Ordering::Release);
            return Err(io_err("appending to", &path, e));
        }
        w.len += buf.len() as u64;
        self.state()?
            .locs
            .extend(locs.into_iter().map(|l| (l.log_id.index, l)));
        Ok(())
    }

    /// Drop every entry at or after `index`. Blocking.
    pub(super) fn truncate_blocking(&self, index: u64) -> Result<(), StoreError> {
        self.check()?;
        let mut w = self.inner.writer.lock().map_err(poisoned_lock)?;
        let (cut_segment, cut_at, later) = {
            let st = self.state()?;
            let Some(loc) = st.locs.range(index..).next().map(|(_, l)| *l) else {
                return Ok(());
            };
            let later: Vec<u64> = st
                .segments
                .range(loc.segment + 1..)
                .map(|(f, _)| *f)
                .collect();
            (loc.segment, loc.offset - RECORD_HEADER as u64, later)
        };
        // Later segments first (newest first), so a crash leaves a prefix.
        for first in later.iter().rev() {
            let path = segment_path(&self.inner.dir, *first);
            fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
        }
        if !later.is_empty() {
            sync_dir(&self.inner.dir)?;
        }
        let mut st = self.state()?;
        for first in &later {
            st.segments.remove(first);
        }
        let file = st
            .segments
            .get(&cut_segment)
            .cloned()
            .ok_or_else(|| StoreError::Log(format!("segment {cut_segment} missing")))?;
        let path = segment_path(&self.inner.dir, cut_segment);
        if let Err(e) = file.set_len(cut_at).and_then(|_| file.sync_all()) {
            self.inner.poisoned.store(true, Ordering::Release);
            return Err(io_err("cutting", &path, e));
        }
        st.locs.split_off(&index);
        *w = Writer {
            segment: cut_segment,
            file,
            len: cut_at,
            allocated: cut_at,
        };
        Ok(())
    }

    /// Drop every entry up to and including `log_id`. Blocking.
    pub(super) fn purge_blocking(&self, log_id: LogId<u64>) -> Result<(), StoreError> {
        self.check()?;
        let mut w = self.inner.writer.lock().map_err(poisoned_lock)?;
        let (meta_bytes, doomed, past_end) = {
            let st = self.state()?;
            // Purging never moves backwards.
            if st.meta.last_purged.is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            let meta = Meta {
                vote: st.meta.vote,
                last_purged: Some(log_id),
            };
            let past_end = st
                .locs
                .last_key_value()
                .is_none_or(|(last, _)| *last <= log_id.index);
            // A segment is wholly purged if the next segment starts at or
            // before the first index kept; the active one only if nothing in
            // the log survives the purge.
            let starts: Vec<u64> = st.segments.keys().copied().collect();
            let doomed: Vec<u64> = starts
                .iter()
                .enumerate()
                .filter(|(i, _)| match starts.get(i + 1) {
                    Some(next) => *next <= log_id.index + 1,
                    None => past_end,
                })
                .map(|(_, f)| *f)
                .collect();
            (meta, doomed, past_end)
        };
        write_meta(&self.inner.dir, &meta_bytes)?;
        let mut st = self.state()?;
        st.meta = meta_bytes;
        st.locs = st.locs.split_off(&(log_id.index + 1));
        for first in &doomed {
            st.segments.remove(first);
        }
        drop(st);
        if past_end {
            // Everything is gone: the next entry is `log_id.index + 1`.
            let fresh = create_segment(&self.inner.dir, log_id.index + 1)?;
            self.state()?
                .segments
                .insert(fresh.segment, fresh.file.clone());
            *w = fresh;
        }
        for first in doomed.iter().filter(|f| **f != w.segment) {
            let path = segment_path(&self.inner.dir, *first);
            fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
        }
        Ok(())
    }

    pub(super) fn save_vote_blocking(&self, vote: Vote<u64>) -> Result<(), StoreError> {
        self.check()?;
        let _w = self.inner.writer.lock().map_err(poisoned_lock)?;
        let meta = {
            let st = self.state()?;
            Meta {
                vote: Some(vote),
                last_purged: st.meta.last_purged,
            }
        };
        write_meta(&self.inner.dir, &meta)?;
        self.state()?.meta = meta;
        Ok(())
    }
}

impl LogStore {
    /// Record `committed` in the `committed` file (not fsynced, see the
    /// module docs). One small positional write: no blocking pool needed.
    pub(super) fn save_committed_now(
        &self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StoreError> {
        let Some(committed) = committed else {
            return Ok(());
        };
        let body = serde_json::to_vec(&committed)?;
        let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let file = self.inner.committed.lock().map_err(poisoned_lock)?;
        file.write_all_at(&record, 0)
            .map_err(|e| io_err("writing", &self.inner.dir.join(COMMITTED_FILE), e))
    }

    /// The committed log id last saved, as far as this log holds it: a
    /// damaged record is none, and one past the local log's end (its entries
    /// were not durable) is cut back to the last local entry — every entry up
    /// to a committed one that this node holds is committed too.
    pub(super) fn read_committed_now(&self) -> Result<Option<LogId<u64>>, StoreError> {
        let mut bytes = Vec::new();
        {
            let mut file = self.inner.committed.lock().map_err(poisoned_lock)?;
            let _ = io::Seek::rewind(&mut *file);
            file.read_to_end(&mut bytes)
                .map_err(|e| io_err("reading", &self.inner.dir.join(COMMITTED_FILE), e))?;
        }
        if bytes.len() < RECORD_HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(body) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
            return Ok(None);
        };
        if len > MAX_COMMITTED || crc32c::crc32c(body) != crc {
            return Ok(None);
        }
        let Ok(saved) = serde_json::from_slice::<LogId<u64>>(body) else {
            return Ok(None);
        };
        let st = self.state()?;
        if let Some((_, last)) = st.locs.last_key_value()
            && last.log_id.index < saved.index
        {
            return Ok(Some(last.log_id));
        }
        match st.locs.get(&saved.index) {
            Some(loc) if loc.log_id == saved => Ok(Some(saved)),
            // Not in the log as saved: purged (a snapshot covers it) or
            // something this node cannot vouch for; openraft starts from
            // what the state machine applied.
            _ => Ok(None),
        }
    }
}

fn poisoned_lock<T>(_: std::sync::PoisonError<T>) -> StoreError {
    StoreError::Log("the Raft log's lock is poisoned".into())
}

/// Replace `meta.json` atomically and durably.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    replace_json(dir, META_FILE, meta)
}

/// Replace `dir/name` by `value` as JSON, atomically and durably: write
/// `name.tmp`, fsync, rename, fsync the directory.
pub(super) fn replace_json(
    dir: &Path,
    name: &str,
    value: &impl Serialize,
) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec(value)?;
    let mut f = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("writing", &tmp, e))?;
    fs::rename(&tmp, dir.join(name)).map_err(|e| io_err("renaming", &tmp, e))?;
    sync_dir(dir)
}

fn read_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        self.entries(range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.log_state().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let store = self.clone();
        let vote = *vote;
        blocking(move || store.save_vote_blocking(vote))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.check()
            .and_then(|_| Ok(self.state()?.meta.vote))
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let store = self.clone();
        let started = Instant::now();
        let traced = crate::traces::enabled().then(|| {
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            (indexes, std::time::SystemTime::now())
        });
        let res = blocking(move || store.append_blocking(entries)).await;
        metrics::histogram_record(
            metrics::RAFT_APPEND_SECONDS,
            &[],
            started.elapsed().as_secs_f64(),
        );
        if let Some((indexes, at)) = traced {
            let stage = crate::traces::RaftStage::Append;
            crate::traces::raft_io(stage, indexes, at, std::time::SystemTime::now());
        }
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.save_committed_now(committed).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.check()
            .and_then(|_| self.read_committed_now())
            .map_err(read_err)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let store = self.clone();
        blocking(move || store.truncate_blocking(log_id.index))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let store = self.clone();
        blocking(move || store.purge_blocking(log_id))
            .await
            .map_err(write_err)
    }
}
