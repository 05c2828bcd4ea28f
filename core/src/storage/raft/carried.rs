//! The Raft side of request events carried in write entries
//! ([`crate::storage::carry`]): which committed entries carry events that
//! may not be in the audit log yet, so that none is purged before the core
//! has made sure of them.
//!
//! Entries come in two ways: at open, a scan of the log after the
//! checkpoint (`audit-reconciled.json` in the Raft directory: every entry
//! at or below its index is known to have its events in the audit log), and
//! while running, each committed group that carried events (the group
//! writer). The core takes them out: a request whose audit pair was written
//! ([`CarriedLedger::audited`]), or events it put back into the audit log
//! after they were pending for [`RECONCILE_AFTER`] (the process is
//! restarted, the pair failed, or the request was dropped half-way). The
//! snapshot scheduler asks [`CarriedLedger::holds_snapshots`] before each
//! build. The checkpoint moves at unseal (once the scanned entries are
//! reconciled) and at a clean shutdown, only when nothing is pending and no
//! carrying group ended without being accounted for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use super::log_store::{self, LogStore};
use super::{Command, StoreError};
use crate::storage::carry::CarriedAudit;

/// The checkpoint file, in the Raft directory.
pub const CHECKPOINT_FILE: &str = "audit-reconciled.json";
/// Entries carrying events contain this (the wire name of
/// `Command::Audited`); only they are decoded by the scan at open.
const NEEDLE: &[u8] = b"\"audited\"";
/// A carried event whose pair is still not written after this long is put
/// back by the core's reconciliation, and holds snapshots back until then.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    raft_index: u64,
}

struct Pending {
    since: Option<Instant>,
    requests: Vec<CarriedAudit>,
}

#[derive(Default)]
struct Inner {
    /// Committed entries whose events may be missing from the audit log.
    pending: BTreeMap<u64, Pending>,
    /// The last index the scan at open looked at.
    scanned_to: u64,
}

/// See the module documentation.
pub struct CarriedLedger {
    /// The Raft directory, which holds [`CHECKPOINT_FILE`].
    dir: PathBuf,
    /// This node is its membership's only node (kept by the metrics watcher).
    sole: AtomicBool,
    /// A carrying group ended without being accounted for (its entry may be
    /// in the log): the checkpoint must not move past it.
    dirty: AtomicBool,
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CarriedLedger {
    /// Read the checkpoint in `dir` and scan `log` after it for entries
    /// carrying events that node `me` proposed (all pending, due at once).
    /// Entries another node proposed are its to reconcile, into its own
    /// audit log: a node that joined a former one-node cluster holds that
    /// node's carrying entries too, and must not put them in its log a
    /// second time. The proposer of an entry is the leader that created it
    /// (`log_id.leader_id.node_id`): only a leader proposes.
    pub fn open(dir: &Path, log: &LogStore, me: u64) -> Result<CarriedLedger, StoreError> {
        let path = dir.join(CHECKPOINT_FILE);
        let after = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Checkpoint>(&b)
                .map(|c| c.raft_index)
                .unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::Log(format!("reading {}: {e}", path.display()))),
        };
        let mut pending = BTreeMap::new();
        let last = log.scan_entries_containing(after, NEEDLE, |entry| {
            if entry.log_id.leader_id.node_id != me {
                return;
            }
            if let EntryPayload::Normal(Command::Audited(_, requests)) = entry.payload {
                pending.insert(
                    entry.log_id.index,
                    Pending {
                        since: None,
                        requests,
                    },
                );
            }
        })?;
        if !pending.is_empty() {
            tracing::warn!(
                entries = pending.len(),
                after,
                "raft log: writes whose request audit events may be missing from the audit log (checked at unseal)"
            );
        }
        Ok(CarriedLedger {
            dir: dir.to_path_buf(),
            sole: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                pending,
                scanned_to: last.unwrap_or(after),
            }),
        })
    }

    /// May writes carry their request events now? Only while this node is
    /// its membership's only node: a follower could otherwise hold a
    /// committed entry the proposer's own log lacks after a crash.
    pub fn enabled(&self) -> bool {
        self.sole.load(Ordering::Relaxed)
    }

    pub(super) fn set_sole(&self, sole: bool) {
        self.sole.store(sole, Ordering::Relaxed);
    }

    /// A group carrying `requests` was committed at `index`.
    pub(super) fn committed(&self, index: u64, requests: Vec<CarriedAudit>) {
        lock(&self.inner).pending.insert(
            index,
            Pending {
                since: Some(Instant::now()),
                requests,
            },
        );
    }

    /// A carrying group's entry may be in the log without being recorded here.
    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The request's events are in the audit log.
    pub fn audited(&self, index: u64, request_id: &str) {
        let mut inner = lock(&self.inner);
        if let Some(p) = inner.pending.get_mut(&index) {
            p.requests.retain(|r| r.request_id != request_id);
            if p.requests.is_empty() {
                inner.pending.remove(&index);
            }
        }
    }

    /// What the core should put back now: events pending for
    /// [`RECONCILE_AFTER`] (those found at open at once), by entry index.
    pub fn due(&self) -> Vec<(u64, CarriedAudit)> {
        let inner = lock(&self.inner);
        inner
            .pending
            .iter()
            .filter(|(_, p)| p.since.is_none_or(|t| t.elapsed() >= RECONCILE_AFTER))
            .flat_map(|(i, p)| p.requests.iter().map(|r| (*i, r.clone())))
            .collect()
    }

    /// How many entries are pending.
    pub fn pending_entries(&self) -> usize {
        lock(&self.inner).pending.len()
    }

    /// Must a snapshot (and the purge after it) wait? Yes while an entry is
    /// overdue, or close enough to the applied end that the purge, which
    /// keeps `trailing_logs` entries, could reach it.
    pub(super) fn holds_snapshots(&self, applied: u64, trailing_logs: u64) -> bool {
        let inner = lock(&self.inner);
        inner.pending.iter().any(|(i, p)| {
            p.since.is_none_or(|t| t.elapsed() >= RECONCILE_AFTER)
                || i.saturating_add(trailing_logs / 2) <= applied
        })
    }

    /// After the scan's entries were reconciled at unseal: move the
    /// checkpoint to the end of the scan when nothing found then is pending.
    pub fn store_scanned(&self) -> Result<(), StoreError> {
        let to = {
            let inner = lock(&self.inner);
            let first_pending = inner.pending.keys().next().copied();
            match first_pending {
                Some(i) if i <= inner.scanned_to => return Ok(()),
                _ => inner.scanned_to,
            }
        };
        self.store(to)
    }

    /// At a clean shutdown (Raft stopped): move the checkpoint to `last`
    /// when nothing is pending and every carrying group was accounted for.
    pub(super) fn store_at_shutdown(&self, last: u64) -> Result<(), StoreError> {
        if self.dirty.load(Ordering::Relaxed) || !lock(&self.inner).pending.is_empty() {
            return Ok(());
        }
        self.store(last)
    }

    fn store(&self, raft_index: u64) -> Result<(), StoreError> {
        log_store::replace_json(&self.dir, CHECKPOINT_FILE, &Checkpoint { raft_index })
    }
}
