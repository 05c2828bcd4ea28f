//! Whole-state export and streamed restore, both through Raft.
//!
//! **Export.** [`RaftStorage::open_export`] opens a consistent view of
//! everything applied ([`StateExport`]), which the caller streams out as
//! the batched state file; nothing is read into memory or written to disk.
//!
//! **Restore.** A restore replaces the whole key space, and in a cluster
//! every node must do it at the same point of the log. openraft's own
//! snapshot installation cannot serve here: it runs only on followers and
//! ignores a snapshot older than what is committed, and a DR snapshot is
//! older by design. So a restore is a sequence of ordinary Raft entries,
//! replicated and replayed like any write:
//!
//! 1. `RestoreBegin(id)` drops whatever an unfinished earlier restore staged
//!    and records `id` as the restore being staged;
//! 2. `RestoreChunk(id, pairs)` entries (about [`CHUNK_BYTES`] each, up to
//!    [`CHUNKS_IN_FLIGHT`] proposed at a time so their log appends share
//!    fsyncs) stage the pairs in the state machine's own `kv_restore` table,
//!    in key order into an empty table, so live data is untouched and memory
//!    holds a few chunks. The staged pairs travel in Raft snapshots under
//!    [`STAGE_PREFIX`]`<id>/` (a prefix that sorts before every live key), so
//!    a follower that catches up by snapshot mid-restore has them too;
//! 3. `RestoreCommit(id, count)` swaps them in, in one redb write
//!    transaction: the live `kv` table is deleted and `kv_restore` renamed to
//!    it — no per-key copy, so the commit's cost does not grow with the
//!    number of pairs. It is refused, changing nothing, unless `id` is the
//!    restore being staged and exactly `count` pairs are staged.
//!
//! **A lone node** (the leader of a membership with no other node, voter or
//! learner: a single server, a restore drill's node) stages the pairs
//! straight into `kv_restore` instead ([`RaftStorage::stage_direct`]), and
//! only `RestoreCommit` goes through the log: the pairs are written once
//! instead of encoded into entries, fsynced in the log and applied. The
//! state file is checked as it is staged, so it can be staged while an
//! upload is still arriving. No other node exists to replay the pairs, and
//! none may join meanwhile: the restore holds the membership gate
//! ([`DirectRestore`]) until its commit, and a join takes it too and first
//! has a snapshot cover the restore and the log purged up to it
//! ([`RaftStorage::prepare_for_new_member`]), so a new node installs the
//! snapshot and never replays that commit.
//!
//! Versions before `kv_restore` staged pairs in `kv` under [`STAGE_PREFIX`];
//! a begin or an abort drops any such leftovers.
//!
//! A crash (kill -9) anywhere leaves the old state or the new one: before
//! the commit entry is in the log the live keys were never touched (staged
//! leftovers are dropped when the node next opens), and the commit is one
//! transaction, replayed from the log after a crash if its apply was not yet
//! durable. The input is checked completely ([`RaftStorage::check_state_file`])
//! before the first entry is proposed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::export::StateExport;
use super::snapshot::read_state_header;
use super::state_machine::{self, Meta};
use super::{
    Command, RaftStorage, SNAPSHOT_WAIT, SnapshotInfo, StoreError, blocking, fatal_to_core,
    snapshot_info,
};
use crate::error::{CoreError, Result};

/// Prefix of pairs staged by a restore in progress (`\0` sorts before every
/// live key, none of which starts with it).
pub const STAGE_PREFIX: &str = "\u{0}restore/";
/// A restore chunk holds about this many bytes of pairs…
const CHUNK_BYTES: usize = 1 << 20;
/// …and at most this many pairs.
const CHUNK_PAIRS: usize = 4096;
/// Restore chunks proposed and not yet applied, at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Keys a restored state must hold, or no unseal key could ever open it.
const REQUIRED_KEYS: &[&str] = &["core/seal/config", "core/seal/keyring"];

/// A restore whose pairs are staged, waiting for [`RaftStorage::commit_restore`].
#[derive(Debug)]
pub struct StagedRestore {
    id: String,
    count: u64,
    /// What the restored snapshot is.
    pub info: SnapshotInfo,
    /// Held from a direct stage until its commit or abort: no node joins
    /// in between ([`RaftStorage::prepare_for_new_member`]).
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

fn bad(msg: impl std::fmt::Display) -> StoreError {
    StoreError::Format(format!("state.bin: {msg}"))
}

/// Reads a state file (the snapshot format of [`snapshot`](super::snapshot),
/// version 1 or 2) one pair at a time, every length checked against what is
/// left of the file before anything is allocated.
pub(crate) struct PairReader<R: Read = File> {
    r: BufReader<R>,
    /// Bytes of the file not read yet.
    left: u64,
    /// Pairs the header announced and not read yet.
    pairs_left: u64,
    /// A version 2 file's batch size, and the keys and value lengths of the
    /// current batch not yet returned (in reverse order).
    batch: Option<(u64, Vec<(String, u64)>)>,
}

impl PairReader<File> {
    pub(crate) fn open(path: &Path) -> std::result::Result<(Meta, u64, PairReader), StoreError> {
        let (file, len) = open_state_file(path)?;
        Self::new(file, len)
    }
}

/// The state file at `path`, opened, and its length.
fn open_state_file(path: &Path) -> std::result::Result<(File, u64), StoreError> {
    let file = File::open(path).map_err(|e| bad(format!("opening: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| bad(format!("reading: {e}")))?
        .len();
    Ok((file, len))
}

impl<R: Read> PairReader<R> {
    /// Read the header of a state file of `len` bytes from `input` at its
    /// first byte: what it is, how many pairs follow, and the reader of them.
    pub(crate) fn new(
        input: R,
        len: u64,
    ) -> std::result::Result<(Meta, u64, PairReader<R>), StoreError> {
        let mut r = BufReader::with_capacity(1 << 20, input);
        let mut counted = Counted {
            inner: &mut r,
            read: 0,
        };
        let header = read_state_header(&mut counted).map_err(|e| bad(e.to_string()))?;
        let pos = counted.read;
        let reader = PairReader {
            r,
            left: len.saturating_sub(pos),
            pairs_left: header.count,
            batch: header.batch.map(|b| (u64::from(b), Vec::new())),
        };
        Ok((header.meta, header.count, reader))
    }

    fn take(&mut self, n: u64) -> std::result::Result<Vec<u8>, StoreError> {
        if n > self.left {
            return Err(bad("truncated (a length runs past the end)"));
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| bad(format!("reading: {e}")))?;
        self.left -= n;
        Ok(buf)
    }

    fn len(&mut self) -> std::result::Result<u64, StoreError> {
        let b = self.take(4)?;
        Ok(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    }

    fn key(&mut self) -> std::result::Result<String, StoreError> {
        let klen = self.len()?;
        String::from_utf8(self.take(klen)?).map_err(|_| bad("a key is not UTF-8"))
    }

    /// The next pair a restore stages: [`Self::next_pair`], skipping the
    /// leftovers of a restore that was being staged when the snapshot was
    /// taken (under [`STAGE_PREFIX`]: nobody's data).
    pub(crate) fn next_restorable(
        &mut self,
    ) -> std::result::Result<Option<(String, Vec<u8>)>, StoreError> {
        loop {
            match self.next_pair()? {
                Some((key, _)) if key.starts_with(STAGE_PREFIX) => {}
                other => return Ok(other),
            }
        }
    }

    /// The next pair in key order, `None` after the last one.
    pub(crate) fn next_pair(
        &mut self,
    ) -> std::result::Result<Option<(String, Vec<u8>)>, StoreError> {
        if self.pairs_left == 0 {
            return if self.left == 0 {
                Ok(None)
            } else {
                Err(bad("trailing bytes after the last pair"))
            };
        }
        let (key, vlen) = match self.batch.take() {
            None => {
                let key = self.key()?;
                (key, self.len()?)
            }
            Some((size, mut pending)) => {
                if pending.is_empty() {
                    // A new batch: its keys section, then its values.
                    let n = self.pairs_left.min(size);
                    let mut vlens = 0u64;
                    for _ in 0..n {
                        let key = self.key()?;
                        let vlen = self.len()?;
                        vlens += vlen;
                        if vlens > self.left {
                            return Err(bad("truncated (a length runs past the end)"));
                        }
                        pending.push((key, vlen));
                    }
                    pending.reverse();
                }
                let next = pending.pop();
                self.batch = Some((size, pending));
                next.ok_or_else(|| bad("empty batch"))?
            }
        };
        let value = self.take(vlen)?;
        self.pairs_left -= 1;
        Ok(Some((key, value)))
    }
}

/// Counts the bytes read through it (the header's length).
struct Counted<'a, R: Read> {
    inner: &'a mut R,
    read: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Which of [`REQUIRED_KEYS`] a state file's pairs held.
#[derive(Default)]
struct RequiredKeys([bool; REQUIRED_KEYS.len()]);

impl RequiredKeys {
    fn saw(&mut self, key: &str) {
        if let Some(i) = REQUIRED_KEYS.iter().position(|k| *k == key) {
            self.0[i] = true;
        }
    }

    /// An error naming the first required key the file did not hold.
    fn check(&self) -> std::result::Result<(), StoreError> {
        match self.0.iter().position(|f| !f) {
            Some(i) => Err(bad(format!(
                "holds no {} (not an initialized Custos state)",
                REQUIRED_KEYS[i]
            ))),
            None => Ok(()),
        }
    }
}

/// Read the whole state file: format, every length, the keys a node needs.
fn check_state(path: &Path) -> std::result::Result<(Meta, u64), StoreError> {
    let (meta, count, mut reader) = PairReader::open(path)?;
    let mut found = RequiredKeys::default();
    while let Some((key, _)) = reader.next_pair()? {
        found.saw(&key);
    }
    found.check()?;
    Ok((meta, count))
}

/// A checked state file's error as the 400 it is; the store's own failures
/// (disk, database) stay what they are.
fn input_error(e: StoreError) -> CoreError {
    match e {
        StoreError::Format(_) => CoreError::BadRequest(e.to_string()),
        other => other.into(),
    }
}

/// The right to stage a restore straight into this node's state machine,
/// outside the log ([`RaftStorage::direct_restore`]): it holds the
/// membership gate, so no node joins until the restore is committed or
/// aborted.
pub struct DirectRestore {
    gate: tokio::sync::OwnedMutexGuard<()>,
}

impl RaftStorage {
    /// The data directory (where a restore spools its upload).
    pub fn data_dir(&self) -> PathBuf {
        self.snapshots.dir().to_path_buf()
    }

    /// A view of everything applied so far, to export ([`StateExport`]).
    pub async fn open_export(&self) -> Result<StateExport> {
        let db = self.state.clone();
        Ok(blocking(move || StateExport::open(&db)).await?)
    }

    /// Check a state file completely without touching anything; a damaged
    /// one is a 400 naming what is wrong.
    pub async fn check_state_file(&self, path: &Path) -> Result<SnapshotInfo> {
        let p = path.to_path_buf();
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
        let (meta, count) = blocking(move || check_state(&p))
            .await
            .map_err(input_error)?;
        Ok(snapshot_info(&meta, count, size))
    }

    /// Stage the pairs of the state file at `path` (checked by
    /// [`Self::check_state_file`]) through Raft; live data is untouched
    /// until [`Self::commit_restore`]. On failure the staged pairs are dropped.
    ///
    /// A node that is its cluster's only member stages the pairs straight
    /// into its state machine ([`Self::stage_direct`]); otherwise they go
    /// through the log ([`Self::stage_through_log`]).
    pub async fn stage_restore(&self, path: &Path, info: SnapshotInfo) -> Result<StagedRestore> {
        if let Some(direct) = self.direct_restore().await {
            let p = path.to_path_buf();
            return self.stage_direct(direct, move || open_state_file(&p)).await;
        }
        self.stage_through_log(path, info).await
    }

    /// If this node is its cluster's only member, the right to stage a
    /// restore outside the log ([`Self::stage_direct`]); `None` if other
    /// nodes must replay it (stage through the log).
    pub async fn direct_restore(&self) -> Option<DirectRestore> {
        let gate = self.membership_gate.clone().lock_owned().await;
        self.sole_member().then_some(DirectRestore { gate })
    }

    /// Whether this node is the leader of a membership holding no other
    /// node, voter or learner.
    fn sole_member(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.node_id)
            && m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .eq([self.node_id])
    }

    /// Stage the pairs of a state file in this node's state machine without
    /// the log: no other node exists to replay them, and `direct` (held
    /// until the commit or the abort) keeps it so. Only `RestoreCommit` goes
    /// through the log, so a restore writes its pairs once instead of twice
    /// (log and state) and skips encoding them as entries. Before the next
    /// node joins, a snapshot covers the restore and the log before it is
    /// purged ([`Self::prepare_for_new_member`]).
    ///
    /// `open`, run on the blocking thread that stages, yields the state
    /// file and its length: a file on disk, or the file as an upload
    /// arrives (`crate::raft_snapshot`), so that staging need not wait for
    /// the whole upload. The file is checked as it is staged — format,
    /// every length, the keys a node needs — so it is read once; a failure
    /// drops whatever was staged (live data was never touched) and is a
    /// 400 naming the check.
    pub async fn stage_direct<R, F>(&self, direct: DirectRestore, open: F) -> Result<StagedRestore>
    where
        R: Read,
        F: FnOnce() -> std::result::Result<(R, u64), StoreError> + Send + 'static,
    {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (db, i) = (self.state.clone(), id.clone());
        let staged = blocking(move || {
            let (input, len) = open()?;
            let (meta, count, mut reader) = PairReader::new(input, len)?;
            let mut found = RequiredKeys::default();
            let staged = state_machine::stage_direct(&db, &i, || {
                let next = reader.next_restorable()?;
                if let Some((key, _)) = &next {
                    found.saw(key);
                }
                Ok(next)
            })?;
            found.check()?;
            Ok((snapshot_info(&meta, count, len), staged))
        })
        .await;
        match staged {
            Ok((info, count)) => Ok(StagedRestore {
                id,
                count,
                info,
                _gate: Some(direct.gate),
            }),
            Err(e) => {
                if let Err(abort) = self.abort_restore().await {
                    tracing::warn!(error = %abort, "dropping a failed restore's staged pairs");
                }
                Err(input_error(e))
            }
        }
    }

    /// Before a node joins: take the membership gate (so no restore
    /// stages outside the log meanwhile) and, if a restore staged outside
    /// the log ([`Self::stage_direct`]) is not yet covered, build a snapshot
    /// of everything applied and purge the log up to it, so the new node
    /// installs the snapshot instead of replaying a `RestoreCommit` whose
    /// pairs never were in the log. Hold the returned guard across the
    /// membership change.
    pub async fn prepare_for_new_member(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let gate = self.membership_gate.clone().lock_owned().await;
        let db = self.state.clone();
        if !blocking(move || state_machine::direct_restore_pending(&db)).await? {
            return Ok(gate);
        }
        tracing::info!("covering a direct restore with a snapshot before a node joins");
        self.build_current_snapshot().await?;
        let upto = self
            .raft
            .metrics()
            .borrow()
            .snapshot
            .map(|s| s.index)
            .unwrap_or_default();
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(fatal_to_core)?;
        self.raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(|m| m.purged.map(|p| p.index) >= Some(upto), "log purged")
            .await
            .map_err(|e| CoreError::Storage(format!("purging the log: {e}")))?;
        let db = self.state.clone();
        blocking(move || state_machine::clear_direct_restore(&db)).await?;
        Ok(gate)
    }

    /// Call `f` with every pair this node has applied, in key order, from
    /// one consistent read of the state machine. Blocking: run it on a
    /// blocking thread.
    pub fn for_each_pair(&self, f: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        state_machine::for_each_pair(&self.state, f)
    }

    /// Stage through Raft entries: `RestoreBegin`, then `RestoreChunk`s,
    /// which every node applies.
    pub(crate) async fn stage_through_log(
        &self,
        path: &Path,
        info: SnapshotInfo,
    ) -> Result<StagedRestore> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.propose(Command::RestoreBegin(id.clone())).await?;
        match self.stage_chunks(&id, path).await {
            Ok(count) => Ok(StagedRestore {
                id,
                count,
                info,
                _gate: None,
            }),
            Err(e) => {
                if let Err(abort) = self.abort_restore().await {
                    tracing::warn!(error = %abort, "dropping a failed restore's staged pairs");
                }
                Err(e)
            }
        }
    }

    async fn stage_chunks(&self, id: &str, path: &Path) -> Result<u64> {
        let (tx, mut rx) =
            mpsc::channel::<std::result::Result<Vec<(String, Vec<u8>)>, StoreError>>(2);
        let p = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || {
            let read = (|| {
                let (_, _, mut reader) = PairReader::open(&p)?;
                let (mut chunk, mut bytes) = (Vec::new(), 0usize);
                while let Some((key, value)) = reader.next_restorable()? {
                    bytes += key.len() + value.len();
                    chunk.push((key, value));
                    if bytes >= CHUNK_BYTES || chunk.len() >= CHUNK_PAIRS {
                        if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                            return Ok(());
                        }
                        bytes = 0;
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.blocking_send(Ok(chunk));
                }
                Ok(())
            })();
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut count = 0u64;
        let mut result = Ok(());
        let mut in_flight = FuturesUnordered::new();
        let mut reading = true;
        while reading || !in_flight.is_empty() {
            tokio::select! {
                chunk = rx.recv(), if reading && in_flight.len() < CHUNKS_IN_FLIGHT => {
                    match chunk {
                        Some(Ok(c)) => {
                            count += c.len() as u64;
                            in_flight.push(self.propose(Command::RestoreChunk(id.to_string(), c)));
                        }
                        Some(Err(e)) => {
                            result = Err(CoreError::BadRequest(e.to_string()));
                            reading = false;
                        }
                        None => reading = false,
                    }
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(e) = done {
                        result = Err(e);
                        reading = false;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        drop(in_flight);
        drop(rx);
        let _ = reader.await;
        result.map(|()| count)
    }

    /// Swap the staged pairs in as the whole key space (one Raft entry,
    /// one transaction).
    pub async fn commit_restore(&self, staged: StagedRestore) -> Result<SnapshotInfo> {
        let resp = self
            .propose(Command::RestoreCommit(staged.id.clone(), staged.count))
            .await?;
        if let Some(why) = resp.refused {
            return Err(CoreError::Storage(format!("restore refused: {why}")));
        }
        tracing::info!(
            snapshot_id = %staged.info.snapshot_id,
            keys = staged.count,
            "snapshot restored"
        );
        Ok(staged.info)
    }

    /// Drop every staged pair (a restore that will not be committed).
    pub async fn abort_restore(&self) -> Result<()> {
        self.propose(Command::RestoreAbort).await.map(|_| ())
    }

    /// At open, before anyone can start a restore: drop what a restore
    /// interrupted before its commit (kill -9) left staged.
    pub(super) async fn drop_stale_restore(&self) -> Result<()> {
        let db = self.state.clone();
        if blocking(move || state_machine::any_staged(&db)).await? {
            tracing::info!("dropping the pairs an interrupted restore staged");
            self.abort_restore().await?;
        }
        Ok(())
    }
}
