//! The production [`PhysicalStore`]: Raft (openraft 0.9, storage-v2) with the
//! log in append-only segment files and the state machine on redb.
//!
//! # Data flow of a write
//!
//! [`RaftStorage::batch`] wraps the operations (already sealed by the barrier)
//! in one [`Command::Batch`] and proposes it with `Raft::client_write`:
//!
//! 1. **propose**: the leader's `RaftCore` assigns the entry a log id;
//! 2. **log fsync**: [`LogStore::append`] writes it at the end of the active
//!    segment file in `raft-log/` and reports it flushed only after its
//!    `fdatasync` returned;
//! 3. **commit**: once a quorum (one node: itself) has it on disk, the entry is
//!    committed;
//! 4. **apply**: [`StateMachineStore::apply`] applies the batch to
//!    `state.redb` in one transaction together with `last_applied` (and
//!    `last_membership` for membership entries), not fsynced: the log is the
//!    durable record (see the state machine's docs);
//! 5. `client_write` returns only now, so an acknowledged write is durable in
//!    the log and visible to the next read.
//!
//! # Reads
//!
//! `get` and `list` read the local state machine through redb read
//! transactions (MVCC, never blocked by the writer). On a single node the local
//! state machine is the leader's, and because `batch` returns only after
//! apply, a read that follows a write always sees it. A follower's reads may
//! be stale: [`RaftStorage::progress`] says which index it applied and how
//! far its caches followed, and `crate::forward` serves a standby read only
//! once the index the client asks for is reached.
//!
//! # Types
//!
//! [`TypeConfig`] is declared with `openraft::declare_raft_types!`:
//! `D = Command` (the replicated write), `R = CommandResponse`, `NodeId = u64`,
//! `Node = CustosNode` (its `addr` is the node's API address, as
//! `BasicNode`'s was, plus its cluster address and name), entries are
//! `openraft::Entry`, snapshots [`SnapshotData`] (a snapshot file, or one
//! written when first read), runtime tokio.
//!
//! # Files
//!
//! `dir/raft-log/` ([`LogStore`]: segment files of entries, and `meta.json`
//! with the vote and purge point) and `dir/state.redb`
//! ([`StateMachineStore`]: key/values, applied state) with, once a follower
//! needed one, the current snapshot beside it in `dir/raft-snapshot.bin`
//! ([`snapshot`]). Two
//! stores because they have different lifecycles: the log is appended,
//! truncated and purged constantly, the state machine is the data; a DR
//! restore or a rebuilt follower replaces one without touching the other, and
//! each write only fsyncs the log. A `raft-log.redb` of earlier versions is
//! migrated into `raft-log/` at open.
//!
//! Snapshots are built when [`snapshot_scheduler`] says so — at least
//! [`SNAPSHOT_EVERY`] entries since the last one, and no sooner than
//! [`SNAPSHOT_MIN_INTERVAL`] or ten times the last build's duration — and on
//! demand before a node joins after a restore staged outside the log
//! ([`RaftStorage::prepare_for_new_member`]). A build is a durable commit
//! that records the point Raft may purge its log to; the state is copied to
//! a snapshot file only when a follower is sent one (see `state_machine`).
//! Snapshots are the state machine's contents, i.e. barrier ciphertext,
//! restorable only with the original unseal keys. A DR restore ([`restore`]) replaces the whole
//! key space through ordinary Raft entries: pairs staged in chunks, then
//! swapped in by one commit entry.
//!
//! # Clusters
//!
//! RPCs between nodes go through [`HttpNetwork`] (see [`network`]). A node
//! opened with `bootstrap` and no Raft state initializes a one-node cluster
//! and waits to lead it (a lone server, as before clusters); a node opened
//! without `bootstrap` (it has `retry_join`) stays uninitialized until a
//! leader adds it (`crate::cluster`). A member of a multi-voter membership
//! does not wait for a leader at open: elections need its peers.
//!
//! The cluster port is mutual TLS ([`tls`]): [`RaftStorage::cluster_tls`]
//! holds what this node serves and presents, loaded while it is unsealed
//! ([`RaftStorage::install_cluster_tls`]). A member of a multi-voter
//! membership without it (restarted, still sealed) stands for no election:
//! it could reach nobody and would only raise its term.

pub mod carried;
pub mod export;
mod log_store;
pub mod network;
mod redb_format;
pub mod restore;
pub(crate) mod snapshot;
mod snapshot_data;
mod state_machine;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use export::StateExport;
pub use log_store::LogStore;
pub use network::{CustosNode, HttpNetwork};
pub use snapshot::SNAPSHOT_FILE;
pub use snapshot_data::SnapshotData;
pub use state_machine::{ApplyProgress, Invalidation, StateMachineStore, is_cached_key};

use super::carry::{self, CarriedAudit};
use super::{BatchOp, PhysicalStore};
use crate::error::{CoreError, Result};
use crate::metrics;
use carried::CarriedLedger;

openraft::declare_raft_types!(
    /// Custos' Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = CustosNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft type alias used throughout the server.
pub type CustosRaft = Raft<TypeConfig>;

/// Directory of the Raft log's segment files inside the data directory.
pub const LOG_DIR: &str = "raft-log";
/// The Raft log of versions before segment files, migrated at open.
pub const LEGACY_LOG_FILE: &str = "raft-log.redb";
/// File name of the state machine database inside the data directory.
pub const STATE_FILE: &str = "state.redb";
/// Build a snapshot (and allow purging the log) after this many entries…
pub const SNAPSHOT_EVERY: u64 = 10_000;
/// …but not sooner than this after the previous one…
pub const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// …nor sooner than this many times the previous build's duration, so that
/// building snapshots takes at most about a tenth of the time.
const SNAPSHOT_COST_FACTOR: u32 = 10;
/// How often [`snapshot_scheduler`] looks.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(2);

/// The snapshot knobs of Vault's `storage "raft"` stanza: build a snapshot
/// after `threshold` entries (`snapshot_threshold`, default
/// [`SNAPSHOT_EVERY`]) but no sooner than `interval` after the previous one
/// (`snapshot_interval`, default [`SNAPSHOT_MIN_INTERVAL`]), and keep
/// `trailing_logs` entries behind a snapshot when purging the log (default
/// 1000); a follower further behind than that catches up by an
/// install-snapshot instead of log replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTuning {
    pub threshold: u64,
    pub trailing_logs: u64,
    pub interval: Duration,
}

impl Default for SnapshotTuning {
    fn default() -> Self {
        SnapshotTuning {
            threshold: SNAPSHOT_EVERY,
            trailing_logs: 1000,
            interval: SNAPSHOT_MIN_INTERVAL,
        }
    }
}

/// The tuning of the Raft storage this process opens next: the server sets
/// it from its config before opening (one node per process).
static SNAPSHOT_TUNING: std::sync::RwLock<Option<SnapshotTuning>> = std::sync::RwLock::new(None);

/// Set the snapshot knobs for the Raft storage opened after this call.
pub fn set_snapshot_tuning(t: SnapshotTuning) {
    *SNAPSHOT_TUNING.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
}

fn snapshot_tuning() -> SnapshotTuning {
    SNAPSHOT_TUNING
        .read()
        .map(|t| t.unwrap_or_default())
        .unwrap_or_default()
}
/// How long [`RaftStorage::open`] waits for this node to become leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long an on-demand snapshot build may take
/// ([`RaftStorage::build_current_snapshot`]).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// One replicated write: the `D` of [`TypeConfig`].
///
/// In the log it is JSON with base64 values (see `CommandWire`). `Debug`
/// prints keys and value sizes only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "CommandWire", try_from = "CommandWire")]
pub enum Command {
    /// Apply these writes atomically.
    Batch(Vec<BatchOp>),
    /// A [`Command::Batch`] that also carries the request audit events of
    /// the writes in it, as the file devices encoded them (see
    /// [`crate::storage::carry`]); applied exactly like a batch.
    Audited(Vec<BatchOp>, Vec<CarriedAudit>),
    /// Replace the whole key space by these pairs (restore of a snapshot,
    /// replicated like any write so every node and the log agree).
    Restore(Vec<(String, Vec<u8>)>),
    /// Begin staging the streamed restore with this id: what an unfinished
    /// earlier restore staged is dropped (see [`restore`]).
    RestoreBegin(String),
    /// Stage these pairs for the restore with this id (live data untouched).
    RestoreChunk(String, Vec<(String, Vec<u8>)>),
    /// Replace the whole key space by the pairs staged for this id, in one
    /// transaction; refused (nothing changes) unless exactly this many are staged.
    RestoreCommit(String, u64),
    /// Drop everything staged.
    RestoreAbort,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Batch(ops) | Command::Audited(ops, _) => {
                if let Command::Audited(_, events) = self {
                    write!(f, "Audited({} request events) ", events.len())?;
                }
                let mut l = f.debug_list();
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => {
                            l.entry(&format_args!("put {key} ({} bytes)", value.len()))
                        }
                        BatchOp::Delete { key } => l.entry(&format_args!("delete {key}")),
                    };
                }
                l.finish()
            }
            Command::Restore(pairs) => write!(f, "Restore({} pairs)", pairs.len()),
            Command::RestoreBegin(id) => write!(f, "RestoreBegin({id})"),
            Command::RestoreChunk(id, pairs) => {
                write!(f, "RestoreChunk({id}, {} pairs)", pairs.len())
            }
            Command::RestoreCommit(id, n) => write!(f, "RestoreCommit({id}, {n} pairs)"),
            Command::RestoreAbort => write!(f, "RestoreAbort"),
        }
    }
}

/// The JSON shape of a [`Command`] in the log: values base64, a missing value
/// in a batch means delete.
#[derive(Serialize, Deserialize)]
enum CommandWire {
    #[serde(rename = "batch")]
    Batch(Vec<PairWire>),
    #[serde(rename = "audited")]
    Audited {
        ops: Vec<PairWire>,
        audit: Vec<CarriedWire>,
    },
    #[serde(rename = "restore")]
    Restore(Vec<PairWire>),
    #[serde(rename = "restore_begin")]
    RestoreBegin { id: String },
    #[serde(rename = "restore_chunk")]
    RestoreChunk { id: String, pairs: Vec<PairWire> },
    #[serde(rename = "restore_commit")]
    RestoreCommit { id: String, count: u64 },
    #[serde(rename = "restore_abort")]
    RestoreAbort,
}

/// One request's carried audit event: its id and each device's bytes.
#[derive(Serialize, Deserialize)]
struct CarriedWire {
    id: String,
    ev: Vec<EncodedWire>,
}

/// One device's copy: mount path, its log's durable sequence number when
/// encoded, and the event deflated and base64'd ([`carry::CarriedEvent`]).
#[derive(Serialize, Deserialize)]
struct EncodedWire {
    d: String,
    s: u64,
    z: String,
}

#[derive(Serialize, Deserialize)]
struct PairWire {
    k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn pairs_wire(pairs: Vec<(String, Vec<u8>)>) -> Vec<PairWire> {
    use base64::Engine;
    pairs
        .into_iter()
        .map(|(k, v)| PairWire {
            k,
            v: Some(b64().encode(v)),
        })
        .collect()
}

fn ops_wire(ops: Vec<BatchOp>) -> Vec<PairWire> {
    use base64::Engine;
    ops.into_iter()
        .map(|op| match op {
            BatchOp::Put { key, value } => PairWire {
                k: key,
                v: Some(b64().encode(value)),
            },
            BatchOp::Delete { key } => PairWire { k: key, v: None },
        })
        .collect()
}

fn ops_from_wire(
    pairs: Vec<PairWire>,
    decode: impl Fn(&str, &str) -> std::result::Result<Vec<u8>, String>,
) -> std::result::Result<Vec<BatchOp>, String> {
    pairs
        .into_iter()
        .map(|p| match p.v {
            Some(v) => Ok(BatchOp::Put {
                value: decode(&p.k, &v)?,
                key: p.k,
            }),
            None => Ok(BatchOp::Delete { key: p.k }),
        })
        .collect()
}

impl From<Command> for CommandWire {
    fn from(c: Command) -> Self {
        match c {
            Command::Batch(ops) => CommandWire::Batch(ops_wire(ops)),
            Command::Audited(ops, audit) => CommandWire::Audited {
                ops: ops_wire(ops),
                audit: audit
                    .into_iter()
                    .map(|c| CarriedWire {
                        id: c.request_id,
                        ev: c
                            .events
                            .into_iter()
                            .map(|e| EncodedWire {
                                d: e.device,
                                s: e.log_seq,
                                z: e.deflated,
                            })
                            .collect(),
                    })
                    .collect(),
            },
            Command::Restore(pairs) => CommandWire::Restore(pairs_wire(pairs)),
            Command::RestoreBegin(id) => CommandWire::RestoreBegin { id },
            Command::RestoreChunk(id, pairs) => CommandWire::RestoreChunk {
                id,
                pairs: pairs_wire(pairs),
            },
            Command::RestoreCommit(id, count) => CommandWire::RestoreCommit { id, count },
            Command::RestoreAbort => CommandWire::RestoreAbort,
        }
    }
}

impl TryFrom<CommandWire> for Command {
    type Error = String;

    fn try_from(w: CommandWire) -> std::result::Result<Self, String> {
        use base64::Engine;
        let decode = |k: &str, v: &str| {
            b64()
                .decode(v)
                .map_err(|_| format!("bad base64 value for {k}"))
        };
        match w {
            CommandWire::Batch(pairs) => ops_from_wire(pairs, decode).map(Command::Batch),
            CommandWire::Audited { ops, audit } => {
                let carried = audit
                    .into_iter()
                    .map(|c| CarriedAudit {
                        request_id: c.id,
                        events: c
                            .ev
                            .into_iter()
                            .map(|e| carry::CarriedEvent {
                                device: e.d,
                                log_seq: e.s,
                                deflated: e.z,
                            })
                            .collect(),
                    })
                    .collect();
                ops_from_wire(ops, decode).map(|ops| Command::Audited(ops, carried))
            }
            CommandWire::Restore(pairs) => pairs_from_wire(pairs, decode).map(Command::Restore),
            CommandWire::RestoreBegin { id } => Ok(Command::RestoreBegin(id)),
            CommandWire::RestoreChunk { id, pairs } => {
                pairs_from_wire(pairs, decode).map(|p| Command::RestoreChunk(id, p))
            }
            CommandWire::RestoreCommit { id, count } => Ok(Command::RestoreCommit(id, count)),
            CommandWire::RestoreAbort => Ok(Command::RestoreAbort),
        }
    }
}

fn pairs_from_wire(
    pairs: Vec<PairWire>,
    decode: impl Fn(&str, &str) -> std::result::Result<Vec<u8>, String>,
) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    pairs
        .into_iter()
        .map(|p| match p.v {
            Some(v) => Ok((p.k.clone(), decode(&p.k, &v)?)),
            None => Err(format!("restore pair {} has no value", p.k)),
        })
        .collect()
}

/// What applying one entry did: the `R` of [`TypeConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// Operations (or restored pairs) applied; 0 for blank and membership entries.
    pub applied: usize,
    /// Why the entry changed nothing (a restore commit whose staged pairs
    /// were not all there); `None` when it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Errors of the redb stores, before they become openraft's `StorageError`
/// or [`CoreError::Storage`]. Never contain values, only keys and causes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Boxed: `redb::Error` is large and this travels in every `Result`.
    #[error("redb: {0}")]
    Redb(Box<redb::Error>),
    #[error("encoding: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("snapshot format: {0}")]
    Format(String),
    #[error("raft log: {0}")]
    Log(String),
    #[error("raft snapshot: {0}")]
    SnapshotFile(String),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("redb file format upgrade: {0}")]
    Upgrade(String),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Redb(Box::new(e))
    }
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        CoreError::Storage(e.to_string())
    }
}

/// Run blocking redb work (fsyncs) on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> std::result::Result<T, StoreError>
where
    F: FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Raft state for `sys/leader`, `sys/ha-status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    pub node_id: u64,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    /// Ids of every node in the current membership (voters and learners).
    pub members: Vec<u64>,
}

/// Describes an exported state ([`StateExport::info`], for the archive's
/// `meta.json` and the DR manifest) or a restored one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    /// Raft index and term of the last entry the snapshot contains.
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// Number of key/value pairs in the snapshot.
    pub key_count: u64,
    /// Size of the snapshot bytes.
    pub size: u64,
}

fn snapshot_info(meta: &state_machine::Meta, key_count: u64, size: u64) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: meta.snapshot_id.clone(),
        last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or_default(),
        last_log_term: meta
            .last_log_id
            .map(|l| l.leader_id.term)
            .unwrap_or_default(),
        key_count,
        size,
    }
}

/// The Raft-replicated key/value store on redb. See the module docs.
///
/// Call [`RaftStorage::shutdown`] before dropping the last handle: openraft's
/// tasks hold the databases until Raft is shut down, and the directory cannot
/// be opened again while they do.
pub struct RaftStorage {
    node_id: u64,
    raft: CustosRaft,
    /// The state machine database, for local reads.
    state: Arc<Database>,
    /// The current snapshot, for DR exports.
    snapshots: Arc<snapshot::SnapshotFile>,
    /// The log database, held by openraft; watched to know when it is closed.
    log_db: Weak<dyn std::any::Any + Send + Sync>,
    leader_rx: watch::Receiver<Option<u64>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// Writes waiting to be proposed; see [`group_writer`].
    write_tx: mpsc::Sender<PendingWrite>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// What applied entries of other nodes change in cached keys.
    invalidations: broadcast::Sender<Arc<Invalidation>>,
    /// Set while this leader hands leadership over ([`Self::step_down`]).
    stepping_down: AtomicBool,
    /// Applied index and how far the caches followed ([`ApplyProgress`]).
    progress: Arc<ApplyProgress>,
    /// The cluster port's TLS, loaded while unsealed ([`tls`]).
    cluster_tls: Arc<tls::ClusterTls>,
    /// Serializes joins with restores staged outside the log (taken by
    /// [`Self::stage_restore`] and [`Self::prepare_for_new_member`]).
    membership_gate: Arc<tokio::sync::Mutex<()>>,
    /// Committed entries carrying request audit events not yet known to
    /// be in the audit log ([`carried`]).
    carried: Arc<CarriedLedger>,
}

/// One caller's atomic batch, waiting for the group writer.
struct PendingWrite {
    ops: Vec<BatchOp>,
    /// Its request's audit event, when it carries one ([`carry`]).
    carried: Option<CarriedAudit>,
    bytes: usize,
    /// Answered with the index of the entry that applied it.
    done: oneshot::Sender<Result<u64>>,
    /// The caller's `raft.write` span when its request is traced.
    trace: Option<opentelemetry::Context>,
}

/// At most this many callers' batches share one Raft entry…
const GROUP_MAX_WRITES: usize = 256;
/// …and at most about this many bytes of values.
const GROUP_MAX_BYTES: usize = 4 * 1024 * 1024;

/// At most this many groups are proposed and not yet applied at once.
const PIPELINE_DEPTH: usize = 2;

/// Group commit for Raft: callers queue their batches; this task proposes
/// everything queued as ONE entry (one log append, one fsync), applied in one
/// state-machine transaction, and answers every caller with the outcome.
///
/// Up to [`PIPELINE_DEPTH`] groups are in flight at once, so the log can
/// fsync group N+1 while the state machine applies group N (one group at a
/// time left the log idle during every apply and the state machine idle
/// during every fsync). When every slot is busy, new writes queue and form
/// the next, larger group, so the cost of an fsync is shared by all
/// concurrent writers. Each caller's batch stays atomic (the whole entry is).
/// Groups in flight together may reach the log in either order: none of
/// their callers has been answered yet, so no caller can have ordered one
/// before the other; a write that was acknowledged is applied before any
/// group formed after it, and every caller is answered only after its own
/// entry is applied.
async fn group_writer(
    raft: CustosRaft,
    ledger: Arc<CarriedLedger>,
    mut rx: mpsc::Receiver<PendingWrite>,
) {
    // Dropping the set (the writer aborted at shutdown) aborts the groups in
    // flight; their callers see the dropped reply as "shutting down".
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= PIPELINE_DEPTH {
            in_flight.join_next().await;
            continue;
        }
        let Some(first) = rx.recv().await else { break };
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while group.len() < GROUP_MAX_WRITES && bytes < GROUP_MAX_BYTES {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.bytes;
                    group.push(w);
                }
                Err(_) => break,
            }
        }
        in_flight.spawn(commit_group(raft.clone(), ledger.clone(), group));
    }
    while in_flight.join_next().await.is_some() {}
}

/// Propose one group as one entry and answer each of its callers.
async fn commit_group(raft: CustosRaft, ledger: Arc<CarriedLedger>, group: Vec<PendingWrite>) {
    let mut ops = Vec::with_capacity(group.iter().map(|w| w.ops.len()).sum());
    let mut waiters = Vec::with_capacity(group.len());
    let mut traced = Vec::new();
    let mut carried = Vec::new();
    for w in group {
        ops.extend(w.ops);
        waiters.push(w.done);
        traced.extend(w.trace);
        carried.extend(w.carried);
    }
    metrics::histogram_record(metrics::RAFT_WRITE_GROUP, &[], waiters.len() as f64);
    let started = Instant::now();
    let res = if carried.is_empty() {
        raft.client_write(Command::Batch(ops)).await
    } else {
        // Until it is recorded in the ledger, this entry is unaccounted
        // for: if this task is dropped (shutdown) or the write fails (it
        // may be in the log all the same), the checkpoint stays put.
        let unaccounted = DirtyOnDrop(&ledger);
        let res = raft
            .client_write(Command::Audited(ops, carried.clone()))
            .await;
        if let Ok(written) = &res {
            ledger.committed(written.log_id.index, carried);
            std::mem::forget(unaccounted);
        }
        res
    };
    metrics::histogram_record(
        metrics::RAFT_COMMIT_SECONDS,
        &[],
        started.elapsed().as_secs_f64(),
    );
    if let (Ok(written), true) = (&res, crate::traces::enabled()) {
        crate::traces::raft_io_spans(written.log_id.index, &traced);
    }
    let res = res.map(|w| w.log_id.index).map_err(write_error_to_core);
    for done in waiters {
        let _ = done.send(match &res {
            Ok(index) => Ok(*index),
            Err(e) => Err(clone_error(e)),
        });
    }
}

/// Marks the ledger dirty when dropped (see [`commit_group`]).
struct DirtyOnDrop<'a>(&'a CarriedLedger);

impl Drop for DirtyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.mark_dirty();
    }
}

/// The same error for every caller of a failed group.
fn clone_error(e: &CoreError) -> CoreError {
    match e {
        CoreError::Unavailable(m) => CoreError::Unavailable(m.clone()),
        CoreError::Storage(m) => CoreError::Storage(m.clone()),
        other => CoreError::Storage(other.to_string()),
    }
}

/// The leader's heartbeat to each follower, in ms.
///
/// openraft 0.9 has no pre-vote; a follower that heard from its leader
/// starts an election only `election_timeout_max` (its leader lease, during
/// which it also refuses to vote for anyone else) plus its own randomized
/// `election_timeout` after the last heartbeat. With 1–2 s timeouts that was
/// 3–4 s after a leader died (the 3.4–3.7 s the first failover test
/// measured); with these it is 0.9–1.2 s, and a step-down (which waits out
/// the lease) about 0.7 s.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Lower bound of the randomized election timeout, in ms.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;
/// Upper bound of the randomized election timeout, and the leader lease, in ms.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 600;

/// The timings of a node without cluster networking (no `cluster_addr`,
/// no `retry_join`): it has no failover to speed up, and its own vote and
/// log fsyncs must fit in an election timeout even on a starved machine
/// (with the cluster timings a single node under heavy parallel load could
/// time out its own elections and miss its start-up wait).
const SINGLE_NODE_TIMINGS: (u64, u64, u64) = (250, 1000, 2000);

fn raft_config(clustered: bool) -> Result<Config> {
    let (heartbeat_interval, election_timeout_min, election_timeout_max) = if clustered {
        (
            HEARTBEAT_INTERVAL_MS,
            ELECTION_TIMEOUT_MIN_MS,
            ELECTION_TIMEOUT_MAX_MS,
        )
    } else {
        SINGLE_NODE_TIMINGS
    };
    Config {
        cluster_name: "custos".to_string(),
        heartbeat_interval,
        election_timeout_min,
        election_timeout_max,
        // Decided by `snapshot_scheduler`, which also weighs the build cost.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: snapshot_tuning().trailing_logs,
        purge_batch_size: 256,
        // Snapshots travel to followers in chunks of this size, each within
        // this time (see `network`).
        snapshot_max_chunk_size: network::SNAPSHOT_CHUNK as u64,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(CoreError::internal)
}

fn fatal_to_core(e: Fatal<u64>) -> CoreError {
    match e {
        Fatal::Stopped => CoreError::Unavailable("raft is stopped".to_string()),
        other => CoreError::Storage(format!("raft: {other}")),
    }
}

pub(crate) fn write_error_to_core(
    e: RaftError<u64, ClientWriteError<u64, CustosNode>>,
) -> CoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(id) => CoreError::Unavailable(format!("not the leader; the leader is node {id}")),
            None => CoreError::Unavailable("no leader".to_string()),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            CoreError::Storage(format!("raft membership: {e}"))
        }
        RaftError::Fatal(f) => fatal_to_core(f),
    }
}

impl RaftStorage {
    /// Open (or create) the stores in `dir`, start Raft, initialize a
    /// one-node cluster `{node_id: api_addr}` if this directory never was, and
    /// wait (up to 10 s) until this node leads and has applied its whole log,
    /// so writes and reads work as soon as this returns.
    pub async fn open(dir: &Path, node_id: u64, api_addr: String) -> Result<Arc<RaftStorage>> {
        let node = CustosNode {
            addr: api_addr,
            ..CustosNode::default()
        };
        Self::open_with(dir, node_id, node, true).await
    }

    /// [`Self::open`] for a cluster member: `node` is how peers reach this
    /// node. With `bootstrap` an uninitialized directory becomes a one-node
    /// cluster as in [`Self::open`]; without it (a node with `retry_join`) it
    /// stays uninitialized until a leader adds this node. Waits to lead only
    /// when this node is its membership's only voter.
    pub async fn open_with(
        dir: &Path,
        node_id: u64,
        node: CustosNode,
        bootstrap: bool,
    ) -> Result<Arc<RaftStorage>> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| CoreError::Storage(format!("creating {}: {e}", dir.display())))?;
        // The ledger's scan reads the log before openraft runs, so no
        // snapshot can purge an entry it must find.
        let (log, ledger) = {
            let (legacy, path) = (dir.join(LEGACY_LOG_FILE), dir.join(LOG_DIR));
            let dir = dir.to_path_buf();
            blocking(move || {
                LogStore::migrate_redb(&legacy, &path)?;
                let log = LogStore::open(&path)?;
                let ledger = CarriedLedger::open(&dir, &log, node_id)?;
                Ok((log, Arc::new(ledger)))
            })
            .await?
        };
        let (invalidations, _) = broadcast::channel(1024);
        let sm = {
            let path = dir.join(STATE_FILE);
            blocking(move || StateMachineStore::open(&path))
                .await?
                .announce_to(node_id, invalidations.clone())
        };
        let (state, snapshots, last_build) = (sm.db(), sm.snapshots(), sm.last_build_micros());
        let progress = sm.progress();
        let log_db = log.liveness();

        let config = Arc::new(raft_config(!node.cluster_addr.is_empty())?);
        let cluster_tls = Arc::new(tls::ClusterTls::default());
        let network = HttpNetwork::new(node_id, cluster_tls.clone());
        let raft = Raft::new(node_id, config, network, log, sm)
            .await
            .map_err(fatal_to_core)?;

        let (leader_tx, leader_rx) = watch::channel(None);
        let watcher = tokio::spawn(watch_metrics(raft.metrics(), leader_tx, ledger.clone()));
        let scheduler = tokio::spawn(snapshot_scheduler(raft.clone(), last_build, ledger.clone()));
        let (write_tx, write_rx) = mpsc::channel(4 * GROUP_MAX_WRITES);
        let writer = tokio::spawn(group_writer(raft.clone(), ledger.clone(), write_rx));
        let storage = Arc::new(RaftStorage {
            node_id,
            raft,
            state,
            snapshots,
            log_db,
            leader_rx,
            watcher: Mutex::new(Some(watcher)),
            scheduler: Mutex::new(Some(scheduler)),
            write_tx,
            writer: Mutex::new(Some(writer)),
            invalidations,
            stepping_down: AtomicBool::new(false),
            progress,
            cluster_tls,
            membership_gate: Arc::default(),
            carried: ledger,
        });
        if let Err(e) = storage.start(node, bootstrap).await {
            storage.shutdown().await;
            return Err(e);
        }
        Ok(storage)
    }

    async fn start(&self, node: CustosNode, bootstrap: bool) -> Result<()> {
        let node_id = self.node_id;
        if !self.raft.is_initialized().await.map_err(fatal_to_core)? {
            if !bootstrap {
                tracing::info!(node_id, "no Raft state: waiting to be added to a cluster");
                return Ok(());
            }
            tracing::info!(node_id, "initializing a one-node Raft cluster");
            let members = BTreeMap::from([(node_id, node)]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| CoreError::Storage(format!("raft initialize: {e}")))?;
        }
        // Metrics trail `initialize` and the loading of a stored membership.
        let _ = self
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_some()
                },
                "a membership",
            )
            .await;
        let sole_voter = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            voters == [node_id]
        };
        if !sole_voter {
            tracing::info!(
                node_id,
                "member of a multi-node Raft cluster: not waiting for a leader"
            );
            // No cluster TLS until unsealed: no elections until then.
            if !self.cluster_tls.is_loaded() {
                self.raft.runtime_config().elect(false);
            }
            return Ok(());
        }
        // A re-opened node that led before (its committed vote is its own)
        // resumes as leader at once and commits and applies whatever its log
        // holds beyond the state machine; otherwise it elects itself after an
        // election timeout.
        self.raft
            .wait(Some(LEADER_WAIT))
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.current_leader == Some(node_id)
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                },
                "leader with the whole log applied",
            )
            .await
            .map_err(|e| CoreError::Unavailable(format!("no leader: {e}")))?;
        // The leader watch is fed by a task; let it catch up so callers see
        // the leader `open` just waited for.
        let mut leader = self.leader_rx.clone();
        let _ = tokio::time::timeout(LEADER_WAIT, leader.wait_for(|l| *l == Some(node_id))).await;
        // A restore a crash interrupted before its commit left pairs staged.
        self.drop_stale_restore().await
    }

    /// Stop Raft and wait (bounded) until its tasks released the databases, so
    /// the directory can be opened again in this process.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Queued writes now fail ("storage is shutting down"); the group
        // writer and the snapshot scheduler hold Raft handles, so stop them
        // before waiting for release.
        for task in [&self.writer, &self.scheduler] {
            let task = task.lock().ok().and_then(|mut t| t.take());
            if let Some(t) = task {
                t.abort();
                let _ = t.await;
            }
        }
        let watcher = self.watcher.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = watcher {
            let _ = w.await;
        }
        // Applies commit without fsync (the log is the durable record); make
        // the state machine durable on a clean shutdown so the next start has
        // nothing to replay.
        let flushed = self
            .state
            .begin_write()
            .map_err(|e| e.to_string())
            .and_then(|t| t.commit().map_err(|e| e.to_string()));
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "flushing the state machine at shutdown");
        }
        let last = self
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or_default();
        if let Err(e) = self.carried.store_at_shutdown(last) {
            tracing::warn!(error = %e, "storing the audit reconciliation checkpoint");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.log_db.strong_count() > 0 || Arc::strong_count(&self.state) > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Entries carrying request audit events, for the core's reconciliation.
    pub fn carried(&self) -> &Arc<CarriedLedger> {
        &self.carried
    }

    /// The openraft handle (for the HA issue: membership changes, RPC handlers).
    pub fn raft(&self) -> &CustosRaft {
        &self.raft
    }

    /// Voters in the Raft configuration as this node sees it.
    pub fn voter_count(&self) -> usize {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    pub fn leader_id(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        RaftStatus {
            node_id: self.node_id,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            leader_id: m.current_leader,
            is_leader: m.state == ServerState::Leader && m.current_leader == Some(self.node_id),
            members: m.membership_config.nodes().map(|(id, _)| *id).collect(),
        }
    }

    /// The current leader id, updated on every change (`None`: no leader).
    pub fn watch_leader(&self) -> watch::Receiver<Option<u64>> {
        self.leader_rx.clone()
    }

    /// What each apply batch changes in cached keys, for entries other
    /// nodes proposed (see [`Invalidation`]). Nothing is computed while
    /// nobody subscribes.
    pub fn subscribe_invalidations(&self) -> broadcast::Receiver<Arc<Invalidation>> {
        self.invalidations.subscribe()
    }

    /// The cluster port's TLS of this node ([`tls`]).
    pub fn cluster_tls(&self) -> &Arc<tls::ClusterTls> {
        &self.cluster_tls
    }

    /// Load the cluster TLS (unsealed, or joining): the listener serves it,
    /// RPCs use it, and this node stands for elections again.
    pub fn install_cluster_tls(&self, m: &tls::ClusterTlsMaterial) -> Result<()> {
        if self.cluster_tls.install(m)? {
            tracing::info!(node_id = self.node_id, "cluster TLS loaded");
        }
        self.raft.runtime_config().elect(true);
        Ok(())
    }

    /// Forget the cluster TLS (sealed): the cluster port refuses
    /// connections and, in a multi-voter cluster, this node stands for no
    /// election until [`Self::install_cluster_tls`].
    pub fn forget_cluster_tls(&self) {
        if !self.cluster_tls.is_loaded() {
            return;
        }
        self.cluster_tls.forget();
        if self.voter_count() > 1 {
            self.raft.runtime_config().elect(false);
        }
        tracing::info!(node_id = self.node_id, "cluster TLS forgotten (sealed)");
    }

    /// The applied index and how far this node's caches followed it, for
    /// reads served by a standby (`crate::forward`).
    pub fn progress(&self) -> &Arc<ApplyProgress> {
        &self.progress
    }

    /// Is this leader handing leadership over ([`Self::step_down`])?
    pub fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(Ordering::Relaxed)
    }

    /// Hand leadership to the most up-to-date other voter; returns its id
    /// once it leads (or an error, leadership unchanged or unknown).
    ///
    /// openraft 0.9 has no leader transfer, and a follower refuses to vote
    /// while its leader lease (`election_timeout_max` since the leader's last
    /// message) runs. So the leader stops its heartbeats, waits out the
    /// lease, and asks the target to start an election at once over the
    /// cluster listener (`POST /raft/elect`); the target's log is the
    /// longest, so the others grant it their votes. Takes about the lease
    /// (0.6 s). Meanwhile `crate::forward` holds the requests that reach this
    /// node and sends them to the new leader once there is one.
    pub async fn step_down(&self) -> Result<u64> {
        let me = self.node_id;
        if !self.is_leader() {
            return Err(CoreError::Unavailable("not the active node".into()));
        }
        let target = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let best = m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| **id != me && voters.contains(id))
                    .max_by_key(|(_, matched)| matched.map(|l| l.index))
                    .map(|(id, _)| *id)
            });
            best.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| (id, n.clone()))
            })
        };
        let Some((target, node)) = target else {
            return Err(CoreError::bad_request(
                "step-down: no other voter to hand leadership to",
            ));
        };
        if self.stepping_down.swap(true, Ordering::SeqCst) {
            return Err(CoreError::Unavailable("already stepping down".into()));
        }
        tracing::info!(target, "stepping down: handing leadership over");
        let started = Instant::now();
        self.raft.runtime_config().heartbeat(false);
        let moved = async {
            let lease = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS + 50);
            tokio::time::sleep(lease).await;
            let mut leader = self.leader_rx.clone();
            for _ in 0..3 {
                network::request_election(&self.cluster_tls, &node)
                    .await
                    .map_err(|e| CoreError::Unavailable(format!("step-down: {e}")))?;
                let waited = tokio::time::timeout(
                    Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS),
                    leader.wait_for(|l| l.is_some_and(|l| l != me)),
                )
                .await;
                if let Ok(Ok(l)) = waited
                    && let Some(l) = *l
                {
                    return Ok(l);
                }
            }
            Err(CoreError::Unavailable(
                "step-down: no other node took leadership".into(),
            ))
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        self.stepping_down.store(false, Ordering::SeqCst);
        if let Ok(l) = &moved {
            tracing::info!(
                leader = l,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "stepped down"
            );
        }
        moved
    }

    async fn propose(&self, cmd: Command) -> Result<CommandResponse> {
        let started = Instant::now();
        // openraft's client_write waits for a quorum forever; a leader that
        // lost its majority (e.g. 3 of 5 voters down) answers instead.
        let res = match tokio::time::timeout(COMMIT_WAIT, self.raft.client_write(cmd)).await {
            Ok(res) => res,
            Err(_) => return Err(no_quorum()),
        };
        metrics::histogram_record(
            metrics::RAFT_COMMIT_SECONDS,
            &[],
            started.elapsed().as_secs_f64(),
        );
        res.map(|r| r.data).map_err(write_error_to_core)
    }

    /// Build a Raft snapshot covering everything applied so far and wait
    /// until it is the current one.
    pub(crate) async fn build_current_snapshot(&self) -> Result<()> {
        // Everything acknowledged is applied to the state machine: take its
        // applied index (metrics may trail it) as the floor for the snapshot.
        let target = state_machine::last_applied(&self.state)?.map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(fatal_to_core)?;
        self.raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(|m| m.snapshot.map(|s| s.index) >= target, "snapshot built")
            .await
            .map_err(|e| CoreError::Storage(format!("snapshot: {e}")))?;
        Ok(())
    }

    /// Build a snapshot of everything applied so far and return its bytes (the
    /// format is described in `state_machine`) with what the DR manifest needs.
    pub async fn snapshot_bytes(&self) -> Result<(Vec<u8>, SnapshotInfo)> {
        use tokio::io::AsyncReadExt;
        self.build_current_snapshot().await?;
        let snapshot = self
            .raft
            .get_snapshot()
            .await
            .map_err(|e| CoreError::Storage(format!("raft snapshot: {e}")))?
            .ok_or_else(|| CoreError::Storage("no snapshot available".to_string()))?;
        let mut data = Vec::new();
        let mut reader = snapshot.snapshot;
        reader
            .read_to_end(&mut data)
            .await
            .map_err(|e| CoreError::Storage(format!("reading the Raft snapshot: {e}")))?;
        let key_count = snapshot::snapshot_pair_count(&data)?;
        let info = snapshot_info(&snapshot.meta, key_count, data.len() as u64);
        Ok((data, info))
    }

    /// Replace the whole key space by the contents of a snapshot produced by
    /// [`Self::snapshot_bytes`] (possibly on another cluster). The restore is one
    /// replicated entry, so it is atomic, durable and keeps this cluster's own
    /// membership and log; the data stays sealed under the source's keys.
    pub async fn restore_snapshot_bytes(&self, bytes: &[u8]) -> Result<SnapshotInfo> {
        let decoded = snapshot::decode_snapshot(bytes)
            .map_err(|e| CoreError::BadRequest(format!("invalid snapshot: {e}")))?;
        let info = snapshot_info(
            &decoded.meta,
            decoded.pairs.len() as u64,
            bytes.len() as u64,
        );
        self.propose(Command::Restore(decoded.pairs)).await?;
        tracing::info!(snapshot_id = %info.snapshot_id, keys = info.key_count, "snapshot restored");
        Ok(info)
    }
}

/// Trigger snapshots (openraft's own policy is off): once [`SNAPSHOT_EVERY`]
/// entries were applied since the last snapshot, but no sooner than
/// [`SNAPSHOT_MIN_INTERVAL`] or [`SNAPSHOT_COST_FACTOR`] times the last
/// build's duration after the previous trigger. A snapshot copies the whole
/// state; with a million secrets, one every 10,000 entries would keep a core
/// busy (hashicorp/raft, under Vault, likewise checks its 8,192-entry
/// threshold only every two minutes). Ends when Raft shuts down.
async fn snapshot_scheduler(
    raft: CustosRaft,
    last_build_micros: Arc<AtomicU64>,
    ledger: Arc<CarriedLedger>,
) {
    let tuning = snapshot_tuning();
    let mut metrics_rx = raft.metrics();
    let mut last_trigger = Instant::now();
    loop {
        tokio::time::sleep(SNAPSHOT_CHECK).await;
        if metrics_rx.has_changed().is_err() {
            return;
        }
        let (applied, snapshot) = {
            let m = metrics_rx.borrow_and_update();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let since = match (applied, snapshot) {
            (Some(a), Some(s)) => a.saturating_sub(s),
            (Some(a), None) => a + 1,
            (None, _) => 0,
        };
        let last_build = Duration::from_micros(last_build_micros.load(Ordering::Relaxed));
        let gap = tuning.interval.max(last_build * SNAPSHOT_COST_FACTOR);
        if since < tuning.threshold || last_trigger.elapsed() < gap {
            continue;
        }
        // Entries whose request events may not be in the audit log yet
        // stay in the log until the core has put them back.
        if ledger.holds_snapshots(applied.unwrap_or_default(), tuning.trailing_logs) {
            tracing::debug!("snapshot deferred: carried audit events pending");
            continue;
        }
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        last_trigger = Instant::now();
    }
}

/// How long a write waits to be committed by a majority of the voters
/// before it is answered 503 (see [`RaftStorage::propose`]).
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// The answer to a write not committed within [`COMMIT_WAIT`].
fn no_quorum() -> CoreError {
    CoreError::Unavailable(format!(
        "no quorum: the write was not committed within {} s because fewer than a majority of the voters answer the active node; it is not acknowledged (it may still be applied if they return)",
        COMMIT_WAIT.as_secs()
    ))
}

/// A follower not heard from for this long is not healthy (Vault
/// autopilot's default `last_contact_threshold`).
const LAST_CONTACT_THRESHOLD: Duration = Duration::from_secs(10);

/// Follow openraft's metrics: publish leader changes and the Raft gauges,
/// and (each second, on the leader) each follower's lag and last contact.
/// Ends when Raft shuts down (the metrics channel closes).
async fn watch_metrics(
    mut rx: watch::Receiver<RaftMetrics<u64, CustosNode>>,
    leader_tx: watch::Sender<Option<u64>>,
    ledger: Arc<CarriedLedger>,
) {
    let mut last_leader: Option<u64> = None;
    let mut followers: Vec<u64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (leader, term, applied) = {
            let m = rx.borrow_and_update();
            publish_cluster(&m, &mut followers);
            let membership = m.membership_config.membership();
            ledger.set_sole(membership.nodes().count() == 1 && membership.voter_ids().eq([m.id]));
            (
                m.current_leader,
                m.current_term,
                m.last_applied.map(|l| l.index),
            )
        };
        metrics::gauge_set(metrics::RAFT_TERM, &[], term as f64);
        metrics::gauge_set(
            metrics::RAFT_LAST_INDEX,
            &[],
            applied.unwrap_or_default() as f64,
        );
        if leader != last_leader {
            if leader.is_some() {
                metrics::counter_inc(metrics::CORE_LEADER_CHANGES, &[]);
            }
            tracing::info!(leader = ?leader, previous = ?last_leader, "raft leader changed");
            last_leader = leader;
            leader_tx.send_replace(leader);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// The cluster gauges from one metrics snapshot: leader, voters, and on the
/// leader each follower's lag and last contact (series of followers that
/// left, or of a node that stopped leading, are zeroed rather than left
/// stale: `followers` remembers which were published).
fn publish_cluster(m: &RaftMetrics<u64, CustosNode>, followers: &mut Vec<u64>) {
    let is_leader = m.current_leader == Some(m.id);
    metrics::gauge_set(
        metrics::RAFT_HAS_LEADER,
        &[],
        f64::from(u8::from(m.current_leader.is_some())),
    );
    metrics::gauge_set(metrics::RAFT_IS_LEADER, &[], f64::from(u8::from(is_leader)));
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    metrics::gauge_set(metrics::RAFT_VOTERS, &[], voters.len() as f64);
    let replication = match (&m.replication, is_leader) {
        (Some(r), true) => r,
        _ => {
            for peer in followers.drain(..) {
                let p = peer.to_string();
                metrics::gauge_set(metrics::RAFT_FOLLOWER_LAG, &[("peer", p.clone())], 0.0);
                metrics::gauge_set(metrics::RAFT_FOLLOWER_CONTACT, &[("peer", p.clone())], 0.0);
            }
            return;
        }
    };
    let last = m.last_log_index.unwrap_or_default();
    let contacts = network::last_contacts();
    let mut healthy = 1usize; // the leader
    let mut now: Vec<u64> = Vec::new();
    for (peer, matched) in replication.iter() {
        if *peer == m.id {
            continue;
        }
        let p = peer.to_string();
        let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or_default());
        metrics::gauge_set(
            metrics::RAFT_FOLLOWER_LAG,
            &[("peer", p.clone())],
            lag as f64,
        );
        let since = contacts.get(peer).copied();
        metrics::gauge_set(
            metrics::RAFT_FOLLOWER_CONTACT,
            &[("peer", p.clone())],
            since.map_or(f64::from(u32::MAX), |d| d.as_secs_f64()),
        );
        if voters.contains(peer) && since.is_some_and(|d| d < LAST_CONTACT_THRESHOLD) {
            healthy += 1;
        }
        now.push(*peer);
    }
    metrics::gauge_set(metrics::RAFT_HEALTHY_VOTERS, &[], healthy as f64);
    *followers = now;
}

#[async_trait]
impl PhysicalStore for RaftStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(state_machine::get(&self.state, key)?)
    }

    async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let bytes = ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value } => key.len() + value.len(),
                BatchOp::Delete { key } => key.len(),
            })
            .sum();
        let (done, wait) = oneshot::channel();
        let closed = || CoreError::Unavailable("storage is shutting down".into());
        // Traced: this write's `raft.write` span, with the group's log
        // append and apply as its children (see `commit_group`).
        let trace = crate::traces::child("raft.write");
        let carried = if self.carried.enabled() {
            carry::take()
        } else {
            None
        };
        let carries = carried.is_some();
        let pending = PendingWrite {
            ops,
            carried,
            bytes,
            done,
            trace: trace.clone(),
        };
        let res = match self.write_tx.send(pending).await {
            // A leader that lost its majority never commits: answer 503
            // rather than hold the caller forever (see COMMIT_WAIT).
            Ok(()) => match tokio::time::timeout(COMMIT_WAIT, wait).await {
                Ok(r) => r.map_err(|_| closed()).and_then(|r| r),
                Err(_) => Err(no_quorum()),
            },
            Err(_) => Err(closed()),
        };
        if let Some(cx) = trace {
            use opentelemetry::trace::TraceContextExt as _;
            cx.span().end();
        }
        let index = res?;
        if carries {
            carry::committed_at(index);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.list_page(prefix, "", 0).await
    }

    async fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        Ok(state_machine::list_level(
            &self.state,
            prefix,
            after,
            limit,
        )?)
    }
}
