//! Tests of the Raft storage: openraft's storage conformance suite against the
//! segment-file log store and the redb state machine, the log's own crash and
//! migration cases, then the [`RaftStorage`] behaviour a
//! server relies on (restart keeps everything, one-level `list`, atomic
//! batches, snapshot export and restore).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::testing::{StoreBuilder, Suite};
use openraft::{LogId, StorageError};
use tempfile::TempDir;

use super::snapshot::decode_snapshot;
use super::*;

/// Builds both stores in a fresh temporary directory; the `TempDir` is the
/// guard that keeps it alive for the duration of one suite test.
struct FileStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FileStoreBuilder {
    async fn build(
        &self,
    ) -> std::result::Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let to_storage = |e: StoreError| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        };
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        // Small segments, so the suite's truncates and purges cross segments.
        let log = LogStore::open_with(&dir.path().join(LOG_DIR), 512).map_err(to_storage)?;
        let sm = StateMachineStore::open(&dir.path().join(STATE_FILE)).map_err(to_storage)?;
        Ok((dir, log, sm))
    }
}

/// The suite runs each case on its own tokio runtime, so this is a plain test.
#[test]
fn openraft_storage_conformance_suite() {
    if let Err(e) = Suite::test_all(FileStoreBuilder) {
        panic!("storage suite failed: {e}");
    }
}

fn put(key: &str, value: &[u8]) -> BatchOp {
    BatchOp::Put {
        key: key.to_string(),
        value: value.to_vec(),
    }
}

fn del(key: &str) -> BatchOp {
    BatchOp::Delete {
        key: key.to_string(),
    }
}

async fn open(dir: &TempDir) -> Arc<RaftStorage> {
    match RaftStorage::open(dir.path(), 1, "127.0.0.1:8200".to_string()).await {
        Ok(s) => s,
        Err(e) => panic!("open: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_leads_and_restart_keeps_everything() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    assert!(store.is_leader());
    assert_eq!(store.leader_id(), Some(1));
    assert_eq!(*store.watch_leader().borrow(), Some(1));
    let status = store.status();
    assert_eq!(status.members, vec![1]);
    assert!(status.is_leader);

    store.put("sys/a", b"one".to_vec()).await?;
    store.put("sys/b", b"two".to_vec()).await?;
    store.put("sys/c", b"three".to_vec()).await?;
    store.delete("sys/b").await?;
    assert_eq!(store.get("sys/a").await?, Some(b"one".to_vec()));
    let applied_before = store.status().last_applied_index;
    let term_before = store.status().term;
    store.shutdown().await;
    drop(store);

    let store = open(&dir).await;
    assert!(store.is_leader());
    assert_eq!(store.get("sys/a").await?, Some(b"one".to_vec()));
    assert_eq!(store.get("sys/b").await?, None);
    assert_eq!(store.get("sys/c").await?, Some(b"three".to_vec()));
    assert_eq!(store.list("sys/").await?, vec!["a", "c"]);
    let status = store.status();
    assert!(status.last_applied_index >= applied_before);
    assert!(status.term >= term_before);
    // Writes work straight after re-open.
    store.put("sys/d", b"four".to_vec()).await?;
    assert_eq!(store.get("sys/d").await?, Some(b"four".to_vec()));
    store.shutdown().await;
    Ok(())
}

/// Paginated listing seeks past folders instead of reading their keys; it
/// must list exactly what the plain one-level listing does, page by page:
/// for every prefix, every `after` (items, the spaces between them, folder
/// names with and without their slash, nothing) and several limits, the
/// Raft store answers what filtering the full listing answers
/// ([`crate::storage::page_of`]), and walking pages of any size gives the
/// whole listing back. Names that sort around `/` (`c-x`, `c/`, `c0`), a key
/// equal to its folder's name, and deep folders are in the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_listing_equals_the_full_listing_filtered() -> Result<()> {
    use crate::storage::{one_level, page_of};
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    let keys = [
        "m/a",
        "m/b",
        "m/c",
        "m/c-x",
        "m/c/d",
        "m/c/e/f",
        "m/c0",
        "m/d/e/f/g",
        "m/d/h",
        "m/e/",
        "m/e/x",
        "m/z",
        "n",
        "n/",
        "n/a",
    ];
    store
        .batch(keys.iter().map(|k| put(k, b"v")).collect())
        .await?;
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    for prefix in ["", "m/", "m/c/", "m/d/", "m/e/", "n/", "zz/", "m/c"] {
        let full = one_level(prefix, sorted.iter().copied());
        assert_eq!(store.list(prefix).await?, full, "list {prefix:?}");
        let mut afters: Vec<String> = vec![String::new(), "~".into(), " ".into()];
        for item in &full {
            afters.push(item.clone());
            afters.push(item.trim_end_matches('/').to_string());
            afters.push(format!("{item}!"));
            afters.push(format!("{}/", item.trim_end_matches('/')));
        }
        for after in &afters {
            for limit in [0, 1, 2, 5] {
                assert_eq!(
                    store.list_page(prefix, after, limit).await?,
                    page_of(full.clone(), after, limit),
                    "list_page({prefix:?}, after {after:?}, limit {limit})"
                );
            }
        }
        for size in [1, 2, 3] {
            let (mut walked, mut after) = (Vec::new(), String::new());
            loop {
                let page = store.list_page(prefix, &after, size).await?;
                match page.last() {
                    Some(last) => after = last.clone(),
                    None => break,
                }
                walked.extend(page);
            }
            assert_eq!(walked, full, "pages of {size} under {prefix:?}");
        }
    }
    // Pairs a restore of an earlier version staged in `kv` list nowhere.
    let staged = format!("{}m/x", restore::STAGE_PREFIX);
    store.batch(vec![put(&staged, b"s")]).await?;
    assert_eq!(store.list("").await?, vec!["m/", "n", "n/"]);
    assert_eq!(store.list_page("", "", 1).await?, vec!["m/"]);
    store.shutdown().await;
    Ok(())
}

/// A crash after the log fsync but before apply: the entry is in
/// the Raft log only. On re-open it is committed and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_but_unapplied_entry_is_applied_on_reopen() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    store.put("x/before", b"1".to_vec()).await?;
    store.shutdown().await;
    drop(store);

    {
        let log = LogStore::open(&dir.path().join(LOG_DIR))?;
        let last = log
            .log_state()?
            .last_log_id
            .ok_or(CoreError::Internal("empty log".into()))?;
        let log_id = LogId::new(last.leader_id, last.index + 1);
        log.append_blocking(vec![entry(log_id, vec![put("x/after", b"2")])])?;
    }

    let store = open(&dir).await;
    assert_eq!(store.get("x/before").await?, Some(b"1".to_vec()));
    assert_eq!(store.get("x/after").await?, Some(b"2".to_vec()));
    store.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_one_level_and_bounded_by_prefix() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    store
        .batch(vec![
            put("a/b", b"1"),
            put("a/c/d", b"2"),
            put("a/c/e", b"3"),
            put("a/f", b"4"),
            put("ab", b"5"),
            put("a0", b"6"),
            put("b/x", b"7"),
        ])
        .await?;
    assert_eq!(store.list("a/").await?, vec!["b", "c/", "f"]);
    assert_eq!(store.list("a/c/").await?, vec!["d", "e"]);
    assert_eq!(store.list("").await?, vec!["a/", "a0", "ab", "b/"]);
    assert!(store.list("zz/").await?.is_empty());
    assert!(store.list("a/b/").await?.is_empty());
    store.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_one_entry_and_readers_never_see_half_of_it() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    store.put("p/k0", b"0".to_vec()).await?;

    // One batch is one log entry (read the state machine's own applied
    // index: the metrics trail the write's response).
    let applied =
        |s: &RaftStorage| state_machine::last_applied(&s.state).map(|l| l.map(|l| l.index));
    let before = applied(&store)?.unwrap_or_default();
    store
        .batch(vec![put("q/x", b"x"), put("q/y", b"y"), del("q/x")])
        .await?;
    assert_eq!(applied(&store)?, Some(before + 1));
    assert_eq!(store.list("q/").await?, vec!["y"]);

    // Each batch moves p/k{i-1} to p/k{i}; a list (one read transaction)
    // must always see exactly one key.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !done.load(Ordering::Relaxed) {
                let keys = store.list("p/").await?;
                assert_eq!(keys.len(), 1, "saw a half-applied batch: {keys:?}");
                checks += 1;
                tokio::task::yield_now().await;
            }
            Ok::<u64, CoreError>(checks)
        })
    };
    for i in 1..=40 {
        store
            .batch(vec![
                del(&format!("p/k{}", i - 1)),
                put(&format!("p/k{i}"), b"v"),
            ])
            .await?;
    }
    done.store(true, Ordering::Relaxed);
    let checks = reader.await.map_err(CoreError::internal)??;
    assert!(checks > 0);
    assert_eq!(store.list("p/").await?, vec!["k40"]);
    store.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_export_and_restore_on_a_fresh_node() -> Result<()> {
    let src_dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let src = open(&src_dir).await;
    src.batch(vec![
        put("core/keyring", b"ring"),
        put("logical/m/secret", &[0u8, 255, 7]),
    ])
    .await?;
    let (bytes, info) = src.snapshot_bytes().await?;
    assert_eq!(info.key_count, 2);
    assert_eq!(info.size, bytes.len() as u64);
    // Index 0 initializes the cluster, 1 is the leader's blank entry, 2 the batch.
    assert_eq!(info.last_log_index, 2, "{info:?}");
    assert_eq!(info.last_log_term, 1);
    src.shutdown().await;

    let dst_dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let dst = open(&dst_dir).await;
    dst.put("stale/key", b"old".to_vec()).await?;
    let restored = dst.restore_snapshot_bytes(&bytes).await?;
    assert_eq!(restored, info);
    assert_eq!(dst.get("core/keyring").await?, Some(b"ring".to_vec()));
    assert_eq!(dst.get("logical/m/secret").await?, Some(vec![0u8, 255, 7]));
    assert_eq!(
        dst.get("stale/key").await?,
        None,
        "restore replaces the key space"
    );

    // Garbage is refused and changes nothing.
    let err = dst.restore_snapshot_bytes(b"not a snapshot").await;
    assert!(matches!(err, Err(CoreError::BadRequest(_))));
    let truncated = &bytes[..bytes.len() - 1];
    assert!(matches!(
        dst.restore_snapshot_bytes(truncated).await,
        Err(CoreError::BadRequest(_))
    ));
    assert_eq!(dst.get("core/keyring").await?, Some(b"ring".to_vec()));

    // The restore survives a restart (it went through the log and the state machine).
    dst.shutdown().await;
    drop(dst);
    let dst = open(&dst_dir).await;
    assert_eq!(dst.get("logical/m/secret").await?, Some(vec![0u8, 255, 7]));
    dst.shutdown().await;
    Ok(())
}

#[test]
fn snapshot_decoder_rejects_every_truncation() {
    let meta = state_machine::Meta::default();
    let header = serde_json::to_vec(&meta).unwrap_or_default();
    let mut bytes = b"CUSTOSNP".to_vec();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&(header.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(b"k");
    bytes.extend_from_slice(&2u32.to_be_bytes());
    bytes.extend_from_slice(b"vv");
    let decoded = decode_snapshot(&bytes).map_err(|e| e.to_string());
    assert_eq!(
        decoded.map(|d| d.pairs),
        Ok(vec![("k".to_string(), b"vv".to_vec())])
    );
    for n in 0..bytes.len() {
        assert!(
            decode_snapshot(&bytes[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(decode_snapshot(&trailing).is_err());
}

/// `cmd` as the log stores it (JSON), asserting it decodes back to itself.
fn log_json_round_trip(cmd: &Command) -> String {
    let json = serde_json::to_string(cmd).unwrap_or_default();
    let back: Command = serde_json::from_str(&json)
        .map_err(|e| e.to_string())
        .unwrap_or(Command::Batch(vec![]));
    assert_eq!(&back, cmd);
    json
}

#[test]
fn command_log_encoding_round_trips_and_debug_hides_values() {
    let cmd = Command::Batch(vec![put("a", b"secret-value"), del("b")]);
    let json = log_json_round_trip(&cmd);
    assert!(!json.contains("secret-value"));
    let dbg = format!("{cmd:?}");
    assert!(
        dbg.contains("put a (12 bytes)") && dbg.contains("delete b"),
        "{dbg}"
    );
    assert!(!dbg.contains("secret"));

    log_json_round_trip(&Command::Restore(vec![("k".to_string(), vec![1, 2, 3])]));
}

// ----- the log store on its own -----

fn entry(log_id: LogId<u64>, ops: Vec<BatchOp>) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id,
        payload: openraft::EntryPayload::Normal(Command::Batch(ops)),
    }
}

fn lid(index: u64) -> LogId<u64> {
    LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
}

/// Entries `from..=to`, each one put of `k<index>`.
fn entries(from: u64, to: u64) -> Vec<openraft::Entry<TypeConfig>> {
    (from..=to)
        .map(|i| {
            entry(
                lid(i),
                vec![put(&format!("k{i}"), format!("v{i}").as_bytes())],
            )
        })
        .collect()
}

fn indexes(log: &LogStore) -> Result<Vec<u64>> {
    Ok(log.entries(..)?.iter().map(|e| e.log_id.index).collect())
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    v.sort();
    v
}

#[test]
fn log_reopens_across_segments_and_cuts_a_torn_tail() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let dir = tmp.path().join(LOG_DIR);
    {
        let log = LogStore::open_with(&dir, 300)?;
        for chunk in [(1, 4), (5, 5), (6, 12), (13, 20)] {
            log.append_blocking(entries(chunk.0, chunk.1))?;
        }
        assert_eq!(indexes(&log)?, (1..=20).collect::<Vec<_>>());
        assert_eq!(log.entries(5..8)?.len(), 3);
    }
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "small segments roll over: {segs:?}");
    // A crash mid-append: half a record after the last one, in the
    // preallocated zeroes.
    let last = segs
        .last()
        .cloned()
        .ok_or(CoreError::Internal("no segment".into()))?;
    let bytes = std::fs::read(&last).map_err(CoreError::internal)?;
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .map_err(CoreError::internal)?;
        f.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, b'{'], end)
            .map_err(CoreError::internal)?;
    }
    let log = LogStore::open_with(&dir, 300)?;
    assert_eq!(indexes(&log)?, (1..=20).collect::<Vec<_>>());
    assert_eq!(
        std::fs::metadata(&last).map_err(CoreError::internal)?.len(),
        end
    );
    let back = log.entries(20..=20)?;
    assert!(matches!(
        &back[0].payload,
        openraft::EntryPayload::Normal(Command::Batch(ops))
            if matches!(&ops[0], BatchOp::Put { key, value } if key == "k20" && value == b"v20")
    ));
    log.append_blocking(entries(21, 22))?;
    drop(log);
    let log = LogStore::open_with(&dir, 300)?;
    assert_eq!(log.log_state()?.last_log_id, Some(lid(22)));
    Ok(())
}

/// The committed log id survives a reopen (a killed process); one past the
/// log's end is cut back to the last entry held; a damaged record, or one
/// naming an entry this log holds under another term, is none.
#[test]
fn committed_survives_reopen_and_is_checked_against_the_log() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let dir = tmp.path().join(LOG_DIR);
    {
        let log = LogStore::open_with(&dir, 300)?;
        assert_eq!(log.read_committed_now()?, None, "nothing saved yet");
        log.append_blocking(entries(1, 10))?;
        log.save_committed_now(Some(lid(4)))?;
        log.save_committed_now(Some(lid(7)))?;
    }
    let log = LogStore::open_with(&dir, 300)?;
    assert_eq!(log.read_committed_now()?, Some(lid(7)));
    // Saved past what the log holds (entries not durable): the last entry.
    log.save_committed_now(Some(lid(15)))?;
    assert_eq!(log.read_committed_now()?, Some(lid(10)));
    // An entry of another term at that index: not vouched for.
    let other = LogId::new(openraft::CommittedLeaderId::new(2, 1), 9);
    log.save_committed_now(Some(other))?;
    assert_eq!(log.read_committed_now()?, None);
    // A damaged record: none, not an error.
    log.save_committed_now(Some(lid(8)))?;
    drop(log);
    let path = dir.join("committed");
    let mut bytes = std::fs::read(&path).map_err(CoreError::internal)?;
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).map_err(CoreError::internal)?;
    let log = LogStore::open_with(&dir, 300)?;
    assert_eq!(log.read_committed_now()?, None);
    Ok(())
}

#[test]
fn a_damaged_record_before_the_last_segment_is_an_error() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let dir = tmp.path().join(LOG_DIR);
    LogStore::open_with(&dir, 300)?.append_blocking(entries(1, 20))?;
    LogStore::open_with(&dir, 300)?.append_blocking(entries(21, 40))?;
    let first = segments(&dir)[0].clone();
    let mut bytes = std::fs::read(&first).map_err(CoreError::internal)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&first, bytes).map_err(CoreError::internal)?;
    let err = LogStore::open_with(&dir, 300).err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("damaged")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn truncate_purge_and_vote_survive_reopen() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let dir = tmp.path().join(LOG_DIR);
    let log = LogStore::open_with(&dir, 400)?;
    log.append_blocking(entries(1, 30))?;
    log.truncate_blocking(20)?;
    assert_eq!(log.log_state()?.last_log_id, Some(lid(19)));
    log.purge_blocking(lid(10))?;
    let vote = openraft::Vote::new(3, 1);
    log.save_vote_blocking(vote)?;
    let before = segments(&dir).len();
    drop(log);

    let log = LogStore::open_with(&dir, 400)?;
    let state = log.log_state()?;
    assert_eq!(state.last_purged_log_id, Some(lid(10)));
    assert_eq!(state.last_log_id, Some(lid(19)));
    assert_eq!(indexes(&log)?, (11..=19).collect::<Vec<_>>());
    assert_eq!(log.state()?.meta.vote, Some(vote));
    // Appending continues where the truncation left off.
    log.append_blocking(entries(20, 24))?;
    // Purging past the end (a snapshot installed) empties the log; the next
    // entry follows the purge point.
    log.purge_blocking(lid(40))?;
    assert!(segments(&dir).len() <= before);
    assert_eq!(log.log_state()?.last_log_id, Some(lid(40)));
    assert!(indexes(&log)?.is_empty());
    log.append_blocking(entries(41, 44))?;
    // An append over existing entries replaces them and everything after.
    log.append_blocking(vec![entry(lid(42), vec![put("k42", b"new")])])?;
    drop(log);
    let log = LogStore::open_with(&dir, 400)?;
    assert_eq!(indexes(&log)?, vec![41, 42]);
    assert!(matches!(
        &log.entries(42..)?[0].payload,
        openraft::EntryPayload::Normal(Command::Batch(ops))
            if matches!(&ops[0], BatchOp::Put { value, .. } if value == b"new")
    ));
    assert_eq!(log.log_state()?.last_purged_log_id, Some(lid(40)));
    Ok(())
}

/// Data directories of earlier versions hold the log in `raft-log.redb`; it is
/// copied to segment files at open, with its vote and purge point.
#[test]
fn the_redb_log_of_earlier_versions_is_migrated() -> Result<()> {
    // Earlier versions wrote it with redb 2, in redb's file format v2.
    use redb2::TableDefinition;
    const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let legacy = tmp.path().join(LEGACY_LOG_FILE);
    let vote = openraft::Vote::new(2, 1);
    {
        let db = redb2::Database::create(&legacy).map_err(CoreError::storage)?;
        let txn = db.begin_write().map_err(CoreError::storage)?;
        {
            let mut logs = txn.open_table(LOGS).map_err(CoreError::storage)?;
            for e in entries(5, 9) {
                let bytes = serde_json::to_vec(&e).map_err(CoreError::storage)?;
                logs.insert(e.log_id.index, bytes.as_slice())
                    .map_err(CoreError::storage)?;
            }
            let mut meta = txn.open_table(META).map_err(CoreError::storage)?;
            let v = serde_json::to_vec(&vote).map_err(CoreError::storage)?;
            meta.insert("vote", v.as_slice())
                .map_err(CoreError::storage)?;
            let p = serde_json::to_vec(&lid(4)).map_err(CoreError::storage)?;
            meta.insert("last_purged", p.as_slice())
                .map_err(CoreError::storage)?;
        }
        txn.commit().map_err(CoreError::storage)?;
    }
    let dir = tmp.path().join(LOG_DIR);
    LogStore::migrate_redb(&legacy, &dir)?;
    assert!(!legacy.exists());
    assert!(legacy.with_extension("redb.migrated").exists());
    // A second open finds nothing left to migrate.
    LogStore::migrate_redb(&legacy, &dir)?;
    let log = LogStore::open(&dir)?;
    assert_eq!(indexes(&log)?, (5..=9).collect::<Vec<_>>());
    assert_eq!(log.log_state()?.last_purged_log_id, Some(lid(4)));
    assert_eq!(log.state()?.meta.vote, Some(vote));
    Ok(())
}

/// Building a snapshot records a snapshot point and writes no file; the
/// file beside `state.redb` is written when the current snapshot is first
/// read (for a follower), every reader of it gets the same one, it stays the
/// current one after a reopen until a newer snapshot point leaves it behind
/// (then it is removed), an older snapshot committed late never replaces
/// it, and leftovers of an interrupted write are removed at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_files_are_written_only_when_read() -> Result<()> {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use tokio::io::AsyncReadExt;
    async fn read(s: openraft::storage::Snapshot<TypeConfig>) -> Result<Vec<u8>> {
        let mut data = s.snapshot;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .await
            .map_err(CoreError::internal)?;
        Ok(bytes)
    }
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let path = tmp.path().join(STATE_FILE);
    let file = tmp.path().join(SNAPSHOT_FILE);
    let to_core = |e: StorageError<u64>| CoreError::Storage(e.to_string());
    let mut sm = StateMachineStore::open(&path)?;
    assert!(sm.get_current_snapshot().await.map_err(to_core)?.is_none());
    sm.apply(entries(1, 50)).await.map_err(to_core)?;
    let built = sm.build_snapshot().await.map_err(to_core)?.meta;
    assert_eq!(built.last_log_id, Some(lid(50)));
    assert!(!file.exists(), "a build writes no file");

    // Handed out but never read (openraft's start-up): nothing written.
    let unread = sm.get_current_snapshot().await.map_err(to_core)?;
    assert_eq!(unread.map(|s| s.meta), Some(built.clone()));
    assert!(!file.exists(), "an unread snapshot writes no file");

    // Two readers (two followers) of the same snapshot share one write.
    let first = sm.get_current_snapshot().await.map_err(to_core)?;
    let second = sm.get_current_snapshot().await.map_err(to_core)?;
    let (first, second) = (
        first.ok_or_else(|| CoreError::Storage("no snapshot".into()))?,
        second.ok_or_else(|| CoreError::Storage("no snapshot".into()))?,
    );
    assert_eq!((&first.meta, &second.meta), (&built, &built));
    let bytes = read(first).await?;
    assert_eq!(read(second).await?, bytes);
    let decoded = decode_snapshot(&bytes)?;
    assert_eq!(decoded.meta, built);
    assert_eq!(decoded.pairs.len(), 50);
    assert_eq!(
        decoded.pairs.first(),
        Some(&("k1".to_string(), b"v1".to_vec()))
    );
    assert_eq!(std::fs::read(&file).map_err(CoreError::internal)?, bytes);

    // An older snapshot committed late (a slow write) does not replace it.
    let stale_meta = state_machine::Meta {
        last_log_id: Some(lid(10)),
        ..built.clone()
    };
    let snapshots = sm.snapshots();
    let (stale_path, mut out) = snapshots.create("stale")?;
    std::io::Write::write_all(&mut out, b"older").map_err(CoreError::internal)?;
    snapshot::sync(out, &stale_path)?;
    let (current, _) = snapshots.commit(&stale_path, &stale_meta, false)?;
    assert_eq!(current.last_log_id, Some(lid(50)));
    assert!(!stale_path.exists());

    // A crash mid-write leaves a .tmp file: the next open removes it, and
    // the current snapshot file is still the one handed out.
    drop(snapshots);
    drop(sm);
    let leftover = tmp.path().join(format!("{SNAPSHOT_FILE}.1-7-0.tmp"));
    std::fs::write(&leftover, b"partial").map_err(CoreError::internal)?;
    let mut sm = StateMachineStore::open(&path)?;
    assert!(!leftover.exists());
    let current = sm.get_current_snapshot().await.map_err(to_core)?;
    assert_eq!(current.map(|s| s.meta), Some(built.clone()));

    // A newer snapshot point leaves the file behind: it is removed, and the
    // current snapshot is the state machine at that point.
    sm.apply(entries(51, 80)).await.map_err(to_core)?;
    let newer = sm.build_snapshot().await.map_err(to_core)?.meta;
    assert_eq!(newer.last_log_id, Some(lid(80)));
    assert!(!file.exists(), "a file older than the snapshot point goes");
    let current = sm
        .get_current_snapshot()
        .await
        .map_err(to_core)?
        .ok_or_else(|| CoreError::Storage("no snapshot".into()))?;
    assert_eq!(current.meta, newer);
    let decoded = decode_snapshot(&read(current).await?)?;
    assert_eq!((decoded.meta, decoded.pairs.len()), (newer, 80));
    Ok(())
}

/// Earlier versions kept the snapshot inside `state.redb`; at open it moves
/// to the snapshot file and the table is dropped.
#[test]
fn a_snapshot_kept_in_state_redb_moves_to_its_file() -> Result<()> {
    use redb::ReadableDatabase;
    // Those versions wrote state.redb with redb 2, in redb's file format v2.
    use redb2::TableDefinition;
    const LEGACY: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let path = tmp.path().join(STATE_FILE);
    let meta = state_machine::Meta {
        last_log_id: Some(lid(7)),
        snapshot_id: "1-7-0".to_string(),
        ..Default::default()
    };
    let mut data = Vec::new();
    let mut w = snapshot::SnapshotWriter::new(&mut data, &meta, 1)?;
    w.pair("k", b"v")?;
    w.finish()?;
    {
        let db = redb2::Database::create(&path).map_err(CoreError::storage)?;
        let txn = db.begin_write().map_err(CoreError::storage)?;
        {
            let mut t = txn.open_table(LEGACY).map_err(CoreError::storage)?;
            let m = serde_json::to_vec(&meta).map_err(CoreError::storage)?;
            t.insert("meta", m.as_slice()).map_err(CoreError::storage)?;
            t.insert("data", data.as_slice())
                .map_err(CoreError::storage)?;
        }
        txn.commit().map_err(CoreError::storage)?;
    }
    let sm = StateMachineStore::open(&path)?;
    let (current, bytes) = sm
        .snapshots()
        .read_current()?
        .ok_or_else(|| CoreError::Storage("no snapshot after migration".into()))?;
    assert_eq!(current, meta);
    assert_eq!(bytes, data);
    let db = sm.db();
    let txn = db.begin_read().map_err(CoreError::storage)?;
    let legacy: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("snapshot");
    assert!(
        txn.open_table(legacy).is_err(),
        "the legacy table is dropped"
    );
    Ok(())
}

/// A `state.redb` written by a version that used redb 2 (file format v2,
/// which redb 5 does not read) is upgraded in place at open: its pairs, its
/// applied index and its stored-bytes count come through, and it opens
/// again afterwards as an ordinary file.
#[test]
fn a_state_redb_of_redb_2_is_upgraded_in_place() -> Result<()> {
    use redb::{ReadableDatabase, ReadableTable};
    const KV2: redb2::TableDefinition<&str, &[u8]> = redb2::TableDefinition::new("kv");
    const META2: redb2::TableDefinition<&str, &[u8]> = redb2::TableDefinition::new("sm_meta");
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let path = tmp.path().join(STATE_FILE);
    let pairs: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| (format!("logical/m/k{i:04}"), vec![i as u8; 100 + i % 300]))
        .collect();
    {
        let db = redb2::Database::create(&path).map_err(CoreError::storage)?;
        let txn = db.begin_write().map_err(CoreError::storage)?;
        {
            let mut kv = txn.open_table(KV2).map_err(CoreError::storage)?;
            for (k, v) in &pairs {
                kv.insert(k.as_str(), v.as_slice())
                    .map_err(CoreError::storage)?;
            }
            let mut meta = txn.open_table(META2).map_err(CoreError::storage)?;
            let applied = serde_json::to_vec(&lid(42)).map_err(CoreError::storage)?;
            meta.insert("last_applied", applied.as_slice())
                .map_err(CoreError::storage)?;
        }
        txn.commit().map_err(CoreError::storage)?;
    }
    let check = |sm: &StateMachineStore| -> Result<()> {
        let txn = sm.db().begin_read().map_err(CoreError::storage)?;
        let kv = txn
            .open_table(state_machine::KV)
            .map_err(CoreError::storage)?;
        let read: Vec<(String, Vec<u8>)> = kv
            .iter()
            .map_err(CoreError::storage)?
            .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
            .collect::<std::result::Result<_, _>>()
            .map_err(CoreError::storage)?;
        assert_eq!(read, pairs);
        let meta = txn
            .open_table(state_machine::SM_META)
            .map_err(CoreError::storage)?;
        let stored = state_machine::StoredBytes::recorded(&meta)?
            .ok_or_else(|| CoreError::Storage("no stored-bytes record".into()))?;
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!((stored.kv, stored.stage), (bytes as u64, 0));
        Ok(())
    };
    let sm = StateMachineStore::open(&path)?;
    assert_eq!(sm.progress().applied(), 42);
    check(&sm)?;
    drop(sm);
    check(&StateMachineStore::open(&path)?)?;
    Ok(())
}

/// A section sink that writes a file.
struct ToFile(std::fs::File);

impl super::snapshot::SectionSink for ToFile {
    fn keys(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, b)
    }
    fn values(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, b)
    }
}

/// Write the node's exported state (the `state.bin` of a DR archive) to `path`.
async fn export_to(store: &RaftStorage, path: &std::path::Path) -> Result<SnapshotInfo> {
    let state = store.open_export().await?;
    let mut out = ToFile(std::fs::File::create(path).map_err(CoreError::internal)?);
    state.write_batched(&mut out).map_err(CoreError::internal)?;
    Ok(state.info())
}

/// An export is one view: the size it announces before writing is the size
/// it writes (values empty, small and over a redb page, and many batches),
/// it reads back pair for pair, and writes after it opened are not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_one_view_of_its_announced_size() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    let value = |i: usize| vec![(i % 251) as u8; [0, 1, 90, 5_000, 70_000][i % 5]];
    let n = snapshot::BATCH_PAIRS as usize * 2 + 17;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| put(&format!("logical/m/{i:06}"), &value(*i)))
            .collect();
        store.batch(ops).await?;
    }
    let state = store.open_export().await?;
    store
        .batch(vec![put("logical/m/later", b"x"), del("logical/m/000000")])
        .await?;
    let path = dir.path().join("exported.bin");
    let mut out = ToFile(std::fs::File::create(&path).map_err(CoreError::internal)?);
    state.write_batched(&mut out).map_err(CoreError::internal)?;
    drop(out);
    let info = state.info();
    assert_eq!(info.key_count, n as u64);
    let written = std::fs::metadata(&path).map_err(CoreError::internal)?.len();
    assert_eq!(written, info.size);
    let (_, count, mut reader) = super::restore::PairReader::open(&path)?;
    assert_eq!(count, n as u64);
    let mut i = 0;
    while let Some((k, v)) = reader.next_pair()? {
        assert_eq!((k, v), (format!("logical/m/{i:06}"), value(i)));
        i += 1;
    }
    assert_eq!(i, n);
    let mut seen = 0;
    state.for_each_pair(|_, _| {
        seen += 1;
        Ok::<_, CoreError>(())
    })?;
    assert_eq!(seen, n);
    Ok(())
}

/// Stage `state` for a restore on `dst`: straight into the state machine as
/// a lone node does (`direct`), or through the log as in a cluster.
async fn stage(
    dst: &RaftStorage,
    state: &std::path::Path,
    info: SnapshotInfo,
    direct: bool,
) -> Result<super::restore::StagedRestore> {
    if direct {
        dst.stage_restore(state, info).await
    } else {
        dst.stage_through_log(state, info).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_restore_stages_then_swaps_in_one_entry() -> Result<()> {
    streamed_restore_case(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_stages_its_restore_outside_the_log() -> Result<()> {
    streamed_restore_case(true).await
}

async fn streamed_restore_case(direct: bool) -> Result<()> {
    let src_dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let src = open(&src_dir).await;
    src.batch(vec![
        put("core/seal/config", b"cfg"),
        put("core/seal/keyring", b"ring"),
        put("logical/m/a", b"A"),
        put("logical/m/b", b"B"),
    ])
    .await?;
    let state = src_dir.path().join("exported.bin");
    let info = export_to(&src, &state).await?;
    assert_eq!(info.key_count, 4);
    src.shutdown().await;

    let dst_dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let dst = open(&dst_dir).await;
    dst.batch(vec![put("logical/m/a", b"old"), put("stale/key", b"x")])
        .await?;
    let checked = dst.check_state_file(&state).await?;
    assert_eq!(checked.key_count, 4);

    // Staged, not committed: live data untouched, staged pairs invisible,
    // and a restart (crash before the commit) keeps the old state.
    let staged = stage(&dst, &state, checked.clone(), direct).await?;
    assert_eq!(dst.get("logical/m/a").await?, Some(b"old".to_vec()));
    assert_eq!(dst.list("").await?, vec!["logical/", "stale/"]);
    dst.shutdown().await;
    drop((dst, staged));
    let dst = open(&dst_dir).await;
    assert_eq!(dst.get("logical/m/a").await?, Some(b"old".to_vec()));
    assert_eq!(dst.get("stale/key").await?, Some(b"x".to_vec()));
    assert!(
        !state_machine::any_staged(&dst.state)?,
        "the interrupted restore's pairs are dropped at open"
    );

    // A commit that does not find every pair staged changes nothing.
    let refused = dst
        .propose(Command::RestoreCommit("no-such-restore".into(), 4))
        .await?;
    assert!(refused.refused.is_some(), "{refused:?}");
    assert_eq!(dst.get("logical/m/a").await?, Some(b"old".to_vec()));

    let staged = stage(&dst, &state, checked, direct).await?;
    dst.commit_restore(staged).await?;
    assert_eq!(dst.get("logical/m/a").await?, Some(b"A".to_vec()));
    assert_eq!(dst.get("logical/m/b").await?, Some(b"B".to_vec()));
    assert_eq!(dst.get("stale/key").await?, None);
    assert_eq!(dst.list("").await?, vec!["core/", "logical/"]);
    assert!(
        !state_machine::any_staged(&dst.state)?,
        "nothing left staged"
    );
    // Only a restore staged outside the log must be covered by a snapshot
    // before a node may join; that purges the log past its commit.
    assert_eq!(state_machine::direct_restore_pending(&dst.state)?, direct);
    dst.shutdown().await;
    drop(dst);
    let dst = open(&dst_dir).await;
    assert_eq!(dst.get("logical/m/b").await?, Some(b"B".to_vec()));
    assert_eq!(state_machine::direct_restore_pending(&dst.state)?, direct);
    let applied = dst.progress.applied();
    drop(dst.prepare_for_new_member().await?);
    assert!(!state_machine::direct_restore_pending(&dst.state)?);
    if direct {
        let purged = dst.raft.metrics().borrow().purged.map(|p| p.index);
        assert!(purged >= Some(applied), "{purged:?} < {applied}");
    }
    assert_eq!(dst.get("logical/m/b").await?, Some(b"B".to_vec()));

    // A state without a keyring, or damaged, is refused before anything.
    let bare = dst_dir.path().join("bare.bin");
    dst.batch(vec![del("core/seal/keyring")]).await?;
    export_to(&dst, &bare).await?;
    let err = dst.check_state_file(&bare).await;
    assert!(
        matches!(&err, Err(CoreError::BadRequest(m)) if m.contains("core/seal/keyring")),
        "{err:?}"
    );
    let bytes = std::fs::read(&state).map_err(CoreError::internal)?;
    std::fs::write(&bare, &bytes[..bytes.len() - 3]).map_err(CoreError::internal)?;
    assert!(matches!(
        dst.check_state_file(&bare).await,
        Err(CoreError::BadRequest(_))
    ));
    dst.shutdown().await;
    Ok(())
}

#[test]
fn restore_commands_round_trip_through_the_log_encoding() {
    let cmds = [
        Command::RestoreBegin("r1".into()),
        Command::RestoreChunk("r1".into(), vec![("k".into(), vec![0, 1, 255])]),
        Command::RestoreCommit("r1".into(), 1),
        Command::RestoreAbort,
    ];
    for cmd in cmds {
        let json = serde_json::to_string(&cmd).unwrap_or_default();
        let back: std::result::Result<Command, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(cmd), "{json}");
    }
}

// ----- request audit events carried in entries (carried.rs) -----

fn carried_request(id: &str) -> CarriedAudit {
    CarriedAudit {
        request_id: id.into(),
        events: vec![crate::storage::carry::CarriedEvent::deflate(
            &custos_audit::EncodedEvent {
                device: "file/".into(),
                log_seq: 41,
                bytes: format!(
                    r#"{{"type":"request","request":{{"id":"{id}","client_token":"hmac-sha256:ab"}}}}"#
                )
                .into_bytes(),
            },
        )],
    }
}

#[test]
fn audited_entries_round_trip_and_debug_shows_no_event() {
    let cmd = Command::Audited(vec![put("a", b"secret-value")], vec![carried_request("r1")]);
    let json = log_json_round_trip(&cmd);
    assert!(json.starts_with(r#"{"audited":"#), "{json}");
    assert!(!json.contains("secret-value"));
    let dbg = format!("{cmd:?}");
    assert!(
        dbg.contains("Audited(1 request events)") && dbg.contains("put a (12 bytes)"),
        "{dbg}"
    );
    assert!(!dbg.contains("hmac") && !dbg.contains("secret"), "{dbg}");
}

#[test]
fn the_ledger_finds_carrying_entries_after_its_checkpoint_and_holds_snapshots_until_audited()
-> Result<()> {
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let log_dir = tmp.path().join(LOG_DIR);
    let audited = |i: u64, ids: &[&str]| openraft::Entry {
        log_id: lid(i),
        payload: openraft::EntryPayload::Normal(Command::Audited(
            vec![put(&format!("k{i}"), b"v")],
            ids.iter().map(|id| carried_request(id)).collect(),
        )),
    };
    {
        let log = LogStore::open(&log_dir)?;
        log.append_blocking(entries(1, 3))?;
        log.append_blocking(vec![audited(4, &["r4a", "r4b"]), audited(5, &["r5"])])?;
        log.append_blocking(entries(6, 7))?;
        let ledger = CarriedLedger::open(tmp.path(), &log, 1)?;
        let due: Vec<(u64, String)> = ledger
            .due()
            .into_iter()
            .map(|(i, c)| (i, c.request_id))
            .collect();
        assert_eq!(
            due,
            [(4, "r4a".into()), (4, "r4b".into()), (5, "r5".into())],
            "only carrying entries, all due at once after a restart"
        );
        assert!(ledger.holds_snapshots(7, 1000), "found at open: overdue");
        ledger.audited(4, "r4a");
        ledger.audited(5, "r5");
        assert_eq!(ledger.pending_entries(), 1);
        // The checkpoint stays put while something it covers is pending.
        ledger.store_scanned()?;
        assert!(!tmp.path().join(carried::CHECKPOINT_FILE).exists());
        ledger.audited(4, "r4b");
        assert!(!ledger.holds_snapshots(7, 1000));
        ledger.store_scanned()?;
        // A fresh entry near the end of the log does not hold a snapshot;
        // one the purge could reach does.
        ledger.committed(8, vec![carried_request("r8")]);
        assert!(!ledger.holds_snapshots(9, 1000));
        assert!(ledger.holds_snapshots(600, 1000));
        assert!(ledger.due().is_empty(), "not due before RECONCILE_AFTER");
    }
    // Reopened: nothing at or below the checkpoint (7) is scanned again.
    let log = LogStore::open(&log_dir)?;
    log.append_blocking(vec![audited(8, &["r8"])])?;
    let ledger = CarriedLedger::open(tmp.path(), &log, 1)?;
    let due: Vec<u64> = ledger.due().into_iter().map(|(i, _)| i).collect();
    assert_eq!(due, [8]);
    // A clean shutdown with something pending keeps the checkpoint.
    ledger.store_at_shutdown(8)?;
    let cp = std::fs::read_to_string(tmp.path().join(carried::CHECKPOINT_FILE))
        .map_err(CoreError::internal)?;
    assert_eq!(cp, r#"{"raft_index":7}"#);
    ledger.audited(8, "r8");
    ledger.mark_dirty();
    ledger.store_at_shutdown(8)?;
    let cp = std::fs::read_to_string(tmp.path().join(carried::CHECKPOINT_FILE))
        .map_err(CoreError::internal)?;
    assert_eq!(
        cp, r#"{"raft_index":7}"#,
        "a group unaccounted for keeps it too"
    );
    Ok(())
}

#[test]
fn the_ledger_takes_only_the_carrying_entries_this_node_proposed() -> Result<()> {
    // Node 1 was a one-node cluster and carried request events; node 2
    // joined and received those entries by replication, then node 2 led.
    // Each node's scan finds only its own: the other's events belong in the
    // other's audit log (putting them in this one would audit them twice).
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let carrying = |term: u64, proposer: u64, i: u64, id: &str| openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, proposer), i),
        payload: openraft::EntryPayload::Normal(Command::Audited(
            vec![put(&format!("k{i}"), b"v")],
            vec![carried_request(id)],
        )),
    };
    let log = LogStore::open(&tmp.path().join(LOG_DIR))?;
    log.append_blocking(vec![
        carrying(1, 1, 1, "r1"),
        carrying(1, 1, 2, "r2"),
        carrying(2, 2, 3, "r3"),
    ])?;
    let due = |me: u64| -> Result<Vec<String>> {
        let ledger = CarriedLedger::open(tmp.path(), &log, me)?;
        Ok(ledger
            .due()
            .into_iter()
            .map(|(_, c)| c.request_id)
            .collect())
    };
    assert_eq!(due(1)?, ["r1", "r2"]);
    assert_eq!(due(2)?, ["r3"]);
    assert!(due(3)?.is_empty());
    // The scan still covers the whole log: a node with nothing of its own
    // pending moves its checkpoint past the others' entries.
    let ledger = CarriedLedger::open(tmp.path(), &log, 3)?;
    ledger.store_scanned()?;
    let cp = std::fs::read_to_string(tmp.path().join(carried::CHECKPOINT_FILE))
        .map_err(CoreError::internal)?;
    assert_eq!(cp, r#"{"raft_index":3}"#);
    Ok(())
}

#[tokio::test]
async fn a_damaged_carried_event_is_passed_over_and_releases_its_entry() -> Result<()> {
    use crate::audit::{AuditTableRole, build_broker, reconcile_carried};
    use crate::config::{AuditDeviceConfig, AuditDeviceKind};
    let tmp = tempfile::tempdir().map_err(CoreError::internal)?;
    let carrying = |i: u64, request: CarriedAudit| openraft::Entry {
        log_id: lid(i),
        payload: openraft::EntryPayload::Normal(Command::Audited(
            vec![put(&format!("k{i}"), b"v")],
            vec![request],
        )),
    };
    let mut damaged = carried_request("r5");
    damaged.events[0].deflated = "not base64, not deflate".into();
    let log = LogStore::open(&tmp.path().join(LOG_DIR))?;
    log.append_blocking(vec![
        carrying(4, carried_request("r4")),
        carrying(5, damaged),
        carrying(6, carried_request("r6")),
    ])?;
    let ledger = CarriedLedger::open(tmp.path(), &log, 1)?;
    assert_eq!(ledger.pending_entries(), 3);

    let barrier = Arc::new(crate::barrier::Barrier::new(Arc::new(
        crate::storage::memory::MemoryStore::new(),
    )));
    barrier.initialize(&[7u8; 32]).await?;
    let system = crate::storage::StorageView::new(barrier, "sys/");
    let audit_dir = tmp.path().join("audit");
    let device = AuditDeviceConfig {
        kind: AuditDeviceKind::File,
        path: "file/".into(),
        description: String::new(),
        local: false,
        options: [("file_path".to_owned(), audit_dir.display().to_string())].into(),
    };
    let broker = build_broker(&[device], &system, AuditTableRole::Record, &[1; 32]).await?;

    // The two good events are put back; the damaged one is reported and
    // passed over instead of failing the pass (which held every entry, and
    // the snapshots behind them, for good).
    assert_eq!(reconcile_carried(&broker, &ledger, "n1").await?, 2);
    assert_eq!(ledger.pending_entries(), 0);
    assert!(!ledger.holds_snapshots(6, 1000));
    let audit_log = broker
        .get("file/")
        .and_then(|d| d.local_log())
        .ok_or_else(|| CoreError::internal("no local log"))?;
    let mut reader = audit_log.reader(1);
    let mut ids = Vec::new();
    while let Some(rec) = reader.try_next().map_err(CoreError::internal)? {
        let ev = rec.json().map_err(CoreError::internal)?;
        ids.push(ev["request"]["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids, ["r4", "r6"]);
    broker.shutdown().await;
    Ok(())
}
