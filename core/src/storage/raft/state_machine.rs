//! The replicated key/value state machine and its snapshots on redb (`state.redb`).
//!
//! openraft feeds committed entries to [`RaftStateMachine::apply`]; each call
//! becomes one redb write transaction that applies every entry's
//! [`Command`], records `last_applied` and, for membership entries,
//! `last_membership`, and commits with `Durability::None`: visible to readers
//! at once, but not fsynced. That is safe because the Raft log is the durable
//! record (every entry is fsynced before it is committed) and the state
//! machine's `last_applied` commits atomically with the data: after a crash the
//! state machine reopens at its last durable `last_applied`, and openraft
//! replays the log from there. The log is only purged up to a snapshot, and
//! building a snapshot commits with `Durability::Immediate`, which makes every
//! earlier non-durable commit durable too — so no entry the state machine
//! still needs is ever purged. One fsync per write (the log's), not two.
//! Every [`DURABLE_EVERY`] apply batches one commit is durable anyway, because
//! redb reclaims the pages of non-durable commits only at a durable one.
//!
//! Tables: `kv` (key → value bytes; the values are already sealed by the
//! barrier), `sm_meta` (`last_applied`, `last_membership`, JSON) and `snapshot`
//! (`meta` as JSON and `data` in the [snapshot format](encode_snapshot)): the
//! current snapshot survives restarts, so a restarted leader can still send it.
//! [`RaftStorage`](super::RaftStorage) reads `kv` directly (`get`, `list`)
//! through redb read transactions, which never block the writer.
//!
//! Snapshot format (version 1), all integers big-endian:
//! `b"CUSTOSNP"`, `u32` version, `u32` header length, header (JSON
//! `SnapshotMeta`: last log id, membership, snapshot id), `u64` pair count,
//! then per pair `u32` key length, key (UTF-8), `u32` value length, value.
//! Pairs are in key order. Nothing after the last pair.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadTransaction, ReadableTable, Table, TableDefinition};

use super::{Command, CommandResponse, StoreError, TypeConfig, blocking};
use crate::metrics;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "last_membership";
const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

const MAGIC: &[u8; 8] = b"CUSTOSNP";
const FORMAT_VERSION: u32 = 1;

pub(crate) type Meta = SnapshotMeta<u64, BasicNode>;
type Membership = StoredMembership<u64, BasicNode>;

/// The state machine; cheap to clone (it is also its own snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    /// Applies committed without fsync since the last durable commit.
    unsynced: Arc<std::sync::atomic::AtomicU32>,
}

/// Every this many apply batches, commit durably: redb frees the pages of
/// non-durable commits only at a durable one, so without it the file and
/// memory grow with every write until the next snapshot.
const DURABLE_EVERY: u32 = 64;

/// redb's own page cache for `state.redb` (its default is 1 GiB). Pages
/// beyond it are read from the kernel's page cache, which does not count in
/// the server's resident set and is given back under memory pressure; with a
/// million stored secrets the default would pin most of the file in the heap.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

impl StateMachineStore {
    /// Open or create the state database at `path` and make sure its tables exist.
    pub fn open(path: &Path) -> Result<StateMachineStore, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(KV)?;
            txn.open_table(SM_META)?;
            txn.open_table(SNAPSHOT)?;
        }
        txn.commit()?;
        Ok(StateMachineStore {
            db: Arc::new(db),
            unsynced: Arc::default(),
        })
    }

    /// The database, shared with [`RaftStorage`](super::RaftStorage) for local reads.
    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.clone()
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

fn applied_state_in(txn: &ReadTransaction) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
    let meta = txn.open_table(SM_META)?;
    let last_applied = match meta.get(KEY_LAST_APPLIED)? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => None,
    };
    let membership = match meta.get(KEY_MEMBERSHIP)? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => Membership::default(),
    };
    Ok((last_applied, membership))
}

/// The log id of the last entry applied to the local state machine.
pub(crate) fn last_applied(db: &Database) -> Result<Option<LogId<u64>>, StoreError> {
    let txn = db.begin_read()?;
    Ok(applied_state_in(&txn)?.0)
}

/// Read one key from the local state machine.
pub(crate) fn get(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.begin_read()?;
    let kv = txn.open_table(KV)?;
    Ok(kv.get(key)?.map(|v| v.value().to_vec()))
}

/// Every key starting with `prefix`, in order: a range scan from `prefix`
/// that stops at the first key outside it.
pub(crate) fn keys_with_prefix(db: &Database, prefix: &str) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read()?;
    let kv = txn.open_table(KV)?;
    let mut out = Vec::new();
    for item in kv.range(prefix..)? {
        let (k, _) = item?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        out.push(k.to_string());
    }
    Ok(out)
}

/// The current snapshot's meta and bytes, if one was built or installed.
pub(crate) fn current_snapshot(db: &Database) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let (Some(meta), Some(data)) = (table.get(KEY_SNAP_META)?, table.get(KEY_SNAP_DATA)?) else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_slice(meta.value())?;
    Ok(Some((meta, data.value().to_vec())))
}

/// Serialize a snapshot: header then every pair of `kv` in key order.
fn encode_snapshot(
    meta: &Meta,
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<u8>, StoreError> {
    let header = json(meta)?;
    let mut out = Vec::with_capacity(64 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&len_u32(header.len())?.to_be_bytes());
    out.extend_from_slice(&header);
    let count_at = out.len();
    out.extend_from_slice(&0u64.to_be_bytes());
    let mut count: u64 = 0;
    for item in kv.iter()? {
        let (k, v) = item?;
        let (k, v) = (k.value().as_bytes(), v.value());
        out.extend_from_slice(&len_u32(k.len())?.to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&len_u32(v.len())?.to_be_bytes());
        out.extend_from_slice(v);
        count += 1;
    }
    out[count_at..count_at + 8].copy_from_slice(&count.to_be_bytes());
    Ok(out)
}

fn len_u32(n: usize) -> Result<u32, StoreError> {
    u32::try_from(n)
        .map_err(|_| StoreError::Format(format!("item of {n} bytes is too large for a snapshot")))
}

/// A parsed snapshot.
pub(crate) struct DecodedSnapshot {
    pub meta: Meta,
    pub pairs: Vec<(String, Vec<u8>)>,
}

/// Parse and validate snapshot bytes (see the module docs for the format).
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot, StoreError> {
    let mut r = Reader { bytes, pos: 0 };
    let (meta, count) = read_header(&mut r)?;
    let mut pairs = Vec::new();
    for _ in 0..count {
        let klen = r.u32()? as usize;
        let key = std::str::from_utf8(r.take(klen)?)
            .map_err(|_| StoreError::Format("snapshot key is not UTF-8".into()))?
            .to_string();
        let vlen = r.u32()? as usize;
        pairs.push((key, r.take(vlen)?.to_vec()));
    }
    if r.pos != bytes.len() {
        return Err(StoreError::Format(
            "trailing bytes after the last snapshot pair".into(),
        ));
    }
    Ok(DecodedSnapshot { meta, pairs })
}

/// The number of pairs a snapshot holds, from its header only.
pub(crate) fn snapshot_pair_count(bytes: &[u8]) -> Result<u64, StoreError> {
    let mut r = Reader { bytes, pos: 0 };
    Ok(read_header(&mut r)?.1)
}

fn read_header(r: &mut Reader<'_>) -> Result<(Meta, u64), StoreError> {
    if r.take(MAGIC.len())? != MAGIC {
        return Err(StoreError::Format(
            "not a Custos snapshot (bad magic)".into(),
        ));
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(StoreError::Format(format!(
            "unsupported snapshot format version {version}"
        )));
    }
    let header_len = r.u32()? as usize;
    let meta: Meta = serde_json::from_slice(r.take(header_len)?)?;
    let count = r.u64()?;
    Ok((meta, count))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| StoreError::Format("snapshot is truncated".into()))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
}

/// Store `meta`/`data` as the current snapshot unless a newer one is already there
/// (a slow build must not replace a snapshot installed meanwhile).
fn store_snapshot_in(
    table: &mut Table<&str, &[u8]>,
    meta: &Meta,
    data: &[u8],
    force: bool,
) -> Result<(), StoreError> {
    if !force && let Some(existing) = table.get(KEY_SNAP_META)? {
        let existing: Meta = serde_json::from_slice(existing.value())?;
        if existing.last_log_id > meta.last_log_id {
            return Ok(());
        }
    }
    let meta = json(meta)?;
    table.insert(KEY_SNAP_META, meta.as_slice())?;
    table.insert(KEY_SNAP_DATA, data)?;
    Ok(())
}

fn apply_command(kv: &mut Table<&str, &[u8]>, cmd: Command) -> Result<CommandResponse, StoreError> {
    match cmd {
        Command::Batch(ops) => {
            let n = ops.len();
            for op in ops {
                match op {
                    crate::storage::BatchOp::Put { key, value } => {
                        kv.insert(key.as_str(), value.as_slice())?;
                    }
                    crate::storage::BatchOp::Delete { key } => {
                        kv.remove(key.as_str())?;
                    }
                }
            }
            Ok(CommandResponse { applied: n })
        }
        Command::Restore(pairs) => {
            kv.retain(|_, _| false)?;
            let n = pairs.len();
            for (key, value) in pairs {
                kv.insert(key.as_str(), value.as_slice())?;
            }
            Ok(CommandResponse { applied: n })
        }
    }
}

fn apply_entries(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    durable: bool,
) -> Result<Vec<CommandResponse>, StoreError> {
    let mut txn = db.begin_write()?;
    // See the module docs: the log is durable, the state machine need not be
    // (except every DURABLE_EVERY batches, to let redb reclaim pages).
    if !durable {
        txn.set_durability(redb::Durability::None);
    }
    let mut out = Vec::with_capacity(entries.len());
    {
        let mut kv = txn.open_table(KV)?;
        let mut meta = txn.open_table(SM_META)?;
        let mut last_applied = None;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(CommandResponse::default()),
                EntryPayload::Normal(cmd) => out.push(apply_command(&mut kv, cmd)?),
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(entry.log_id), m));
                    out.push(CommandResponse::default());
                }
            }
        }
        if let Some(last_applied) = last_applied {
            meta.insert(KEY_LAST_APPLIED, json(&Some(last_applied))?.as_slice())?;
        }
        if let Some(membership) = membership {
            meta.insert(KEY_MEMBERSHIP, json(&membership)?.as_slice())?;
        }
    }
    // One commit per apply batch: data, last_applied and membership together.
    txn.commit()?;
    Ok(out)
}

fn build_snapshot_in(db: &Database) -> Result<(Meta, Vec<u8>), StoreError> {
    // One read transaction: the pairs and last_applied are one consistent view.
    let rtxn = db.begin_read()?;
    let (last_applied, last_membership) = applied_state_in(&rtxn)?;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let snapshot_id = match &last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, millis),
        None => format!("0-0-{millis}"),
    };
    let meta = Meta {
        last_log_id: last_applied,
        last_membership,
        snapshot_id,
    };
    let data = {
        let kv = rtxn.open_table(KV)?;
        encode_snapshot(&meta, &kv)?
    };
    drop(rtxn);

    let wtxn = db.begin_write()?;
    {
        let mut table = wtxn.open_table(SNAPSHOT)?;
        store_snapshot_in(&mut table, &meta, &data, false)?;
    }
    wtxn.commit()?;
    Ok((meta, data))
}

fn install_snapshot_in(db: &Database, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let decoded = decode_snapshot(data)?;
    let txn = db.begin_write()?;
    {
        let mut kv = txn.open_table(KV)?;
        kv.retain(|_, _| false)?;
        for (key, value) in &decoded.pairs {
            kv.insert(key.as_str(), value.as_slice())?;
        }
        let mut sm_meta = txn.open_table(SM_META)?;
        sm_meta.insert(KEY_LAST_APPLIED, json(&meta.last_log_id)?.as_slice())?;
        sm_meta.insert(KEY_MEMBERSHIP, json(&meta.last_membership)?.as_slice())?;
        let mut snap = txn.open_table(SNAPSHOT)?;
        store_snapshot_in(&mut snap, meta, data, true)?;
    }
    txn.commit()?;
    Ok(())
}

fn sm_read_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let db = self.db.clone();
        let (meta, data) = blocking(move || build_snapshot_in(&db))
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e)))
            })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let txn = self.db.begin_read().map_err(|e| sm_read_err(e.into()))?;
        applied_state_in(&txn).map_err(sm_read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let db = self.db.clone();
        let started = Instant::now();
        let n = self
            .unsynced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let durable = n >= DURABLE_EVERY;
        if durable {
            self.unsynced.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let res = blocking(move || apply_entries(&db, entries, durable)).await;
        metrics::histogram_record(
            metrics::RAFT_APPLY_SECONDS,
            &[],
            started.elapsed().as_secs_f64(),
        );
        res.map_err(sm_write_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let db = self.db.clone();
        let meta_owned = meta.clone();
        blocking(move || install_snapshot_in(&db, &meta_owned, &data))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
            })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = current_snapshot(&self.db).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)))
        })?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
