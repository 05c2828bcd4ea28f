//! The Raft log and vote on redb (`raft-log.redb`).
//!
//! openraft hands this store the entries the leader proposes
//! ([`RaftLogStorage::append`]), the votes of elections
//! ([`RaftLogStorage::save_vote`]), and later asks it to drop a conflicting
//! tail ([`RaftLogStorage::truncate`]) or a prefix already covered by a
//! snapshot ([`RaftLogStorage::purge`]). Replication and apply read entries
//! back through [`RaftLogReader`].
//!
//! Layout: table `logs` maps the log index (`u64`) to the JSON-encoded
//! `Entry` (command values are base64 inside, see [`super::Command`]); table
//! `log_meta` holds the `vote` and the `last_purged` log id. Every write is
//! one redb write transaction committed with redb's default
//! `Durability::Immediate`, i.e. fsynced before `commit` returns; `append`
//! reports [`LogFlushed`] only after that commit, so openraft never counts an
//! entry as persisted that a power cut could take back. The blocking redb work
//! runs on tokio's blocking pool so fsyncs do not stall the async workers.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};

use super::{StoreError, TypeConfig, blocking};
use crate::metrics;

pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";

/// The log store; cheap to clone (it is its own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Open or create the log database at `path` and make sure its tables exist.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOGS)?;
            txn.open_table(LOG_META)?;
        }
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// The database handle (used to watch for it being released at shutdown).
    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOG_META)?;
        match table.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        }
    }

    fn entries<RB: RangeBounds<u64>>(
        db: &Database,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for item in table.range(range)? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    fn log_state(db: &Database) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<u64>> = Self::read_meta(db, KEY_LAST_PURGED)?;
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let last = match table.last()? {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }
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
        LogStore::entries(&self.db, range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        LogStore::log_state(&self.db).map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG_META)?;
                table.insert(KEY_VOTE, bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        LogStore::read_meta(&self.db, KEY_VOTE)
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
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| write_err(e.into()))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let started = Instant::now();
        let res = blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            // Durability::Immediate (redb's default): fsynced when this returns.
            txn.commit()?;
            Ok(())
        })
        .await;
        metrics::histogram_record(
            metrics::RAFT_APPEND_SECONDS,
            &[],
            started.elapsed().as_secs_f64(),
        );
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

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(LOG_META)?;
                let previous: Option<LogId<u64>> = match meta.get(KEY_LAST_PURGED)? {
                    Some(v) => Some(serde_json::from_slice(v.value())?),
                    None => None,
                };
                // Purging never moves backwards.
                if previous.is_none_or(|p| p.index < log_id.index) {
                    let bytes = serde_json::to_vec(&log_id)?;
                    meta.insert(KEY_LAST_PURGED, bytes.as_slice())?;
                }
                let mut table = txn.open_table(LOGS)?;
                table.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }
}
