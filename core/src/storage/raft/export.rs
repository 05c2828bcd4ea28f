//! A DR export of the state machine, read straight from `state.redb`.
//!
//! `GET sys/storage/raft/snapshot` and the automated snapshot agent
//! (`crate::raft_snapshot`) export everything applied. They used to have
//! openraft build its own snapshot file first (version 1, see
//! [`snapshot`](super::snapshot): the whole state written to disk and
//! fsynced) and then transcode that file into the archive's batched
//! `state.bin`: at one million secrets, half of a save's time went to the
//! file nobody downloads. A [`StateExport`] instead holds one redb read
//! transaction, a consistent view at one applied index that never blocks the
//! writer, and everything comes from it:
//!
//! - its size, before a byte is written (the tar header and `meta.json`
//!   carry it): from the pair count and the bytes of keys and values the
//!   state machine keeps count of as it writes them ([`StoredBytes`]; redb's
//!   own count walks every page of the table, which took 0.5–0.9 s at a
//!   million secrets), or redb's count where none is recorded yet;
//! - the batched file (version 2), section by section to a
//!   [`SectionSink`], from two cursors over the `kv` table, one over a
//!   batch's keys and value lengths and one trailing it over the same
//!   batch's values ([`StateExport::write_batched`]); a length that
//!   disagrees with the announced size fails the export rather than
//!   produce a damaged file;
//! - each pair in key order ([`StateExport::for_each_pair`]), for the
//!   agent's manifest digest, computed on another thread from the very same
//!   view.
//!
//! Only the live `kv` table is exported: pairs a restore is staging are not
//! state yet. Raft's own snapshot (what followers are sent) is untouched.
//!
//! The view lasts as long as the download: a slow client (or S3 upload)
//! keeps redb from reusing the pages that writes free meantime, so the
//! database file may grow by what was written during the export, and the
//! space is reused once it ends (bbolt behaves the same under OpenBao's
//! `snapshot save`, which streams from one read transaction too).

use std::io;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::snapshot::{BATCH_PAIRS, BatchedWriter, SectionSink, batched_head, batched_len};
use super::state_machine::{KV, Meta, SM_META, StoredBytes, for_each_pair_in, snapshot_meta_in};
use super::{SnapshotInfo, StoreError, snapshot_info};

/// One consistent view of the state machine, to export (see the module
/// docs). Holding it keeps redb from reusing the pages it reads, so it is
/// dropped once the export ends.
pub struct StateExport {
    txn: ReadTransaction,
    meta: Meta,
    count: u64,
    head: Vec<u8>,
    state_len: u64,
}

fn changed(what: &str) -> io::Error {
    io::Error::other(format!(
        "the exported state disagrees with its size: {what}"
    ))
}

fn redb_io(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(format!("reading the state machine: {}", e.into()))
}

impl StateExport {
    /// Open a view of everything `db` has applied.
    pub(crate) fn open(db: &Database) -> Result<StateExport, StoreError> {
        let txn = db.begin_read()?;
        let meta = snapshot_meta_in(&txn)?;
        let (count, pair_bytes) = {
            let kv = txn.open_table(KV)?;
            let recorded = StoredBytes::recorded(&txn.open_table(SM_META)?)?;
            let bytes = match recorded {
                Some(b) => b.kv,
                None => kv.stats()?.stored_bytes(),
            };
            (kv.len()?, bytes)
        };
        let head = batched_head(&meta, count)?;
        let state_len = batched_len(head.len(), count, pair_bytes);
        Ok(StateExport {
            txn,
            meta,
            count,
            head,
            state_len,
        })
    }

    /// What the view holds: its id, the last applied index and term, the
    /// pairs, and the bytes [`Self::write_batched`] writes.
    pub fn info(&self) -> SnapshotInfo {
        snapshot_info(&self.meta, self.count, self.state_len)
    }

    /// Write the view as a batched file (version 2) to `sink`. Blocking.
    pub(crate) fn write_batched(&self, sink: &mut impl SectionSink) -> io::Result<()> {
        let kv = self.txn.open_table(KV).map_err(redb_io)?;
        let mut keys = kv.iter().map_err(redb_io)?;
        let mut values = kv.iter().map_err(redb_io)?;
        let mut w = BatchedWriter::new(sink, &self.head)?;
        let mut left = self.count;
        while left > 0 {
            let n = left.min(u64::from(BATCH_PAIRS));
            for _ in 0..n {
                let (k, v) = keys
                    .next()
                    .ok_or_else(|| changed("fewer pairs"))?
                    .map_err(redb_io)?;
                w.key(k.value().as_bytes(), v.value().len())?;
            }
            w.end_keys()?;
            for _ in 0..n {
                let (_, v) = values
                    .next()
                    .ok_or_else(|| changed("fewer pairs"))?
                    .map_err(redb_io)?;
                w.value(v.value())?;
            }
            w.end_values()?;
            left -= n;
        }
        if keys.next().is_some() {
            return Err(changed("more pairs"));
        }
        if w.written() != self.state_len {
            return Err(changed(&format!(
                "{} bytes written, {} announced",
                w.written(),
                self.state_len
            )));
        }
        Ok(())
    }

    /// Call `f` with every pair of the view in key order. Blocking.
    pub fn for_each_pair<E: From<StoreError>>(
        &self,
        f: impl FnMut(&str, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for_each_pair_in(&self.txn, f)
    }
}
