//! Tests of the Raft storage: openraft's storage conformance suite against the
//! redb log store and state machine, then the [`RaftStorage`] behaviour a
//! server relies on (restart keeps everything, one-level `list`, atomic
//! batches, snapshot export and restore).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::state_machine::decode_snapshot;
use super::*;

/// Builds both stores in a fresh temporary directory; the `TempDir` is the
/// guard that keeps it alive for the duration of one suite test.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(
        &self,
    ) -> std::result::Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let to_storage = |e: StoreError| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        };
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        let log = LogStore::open(&dir.path().join(LOG_FILE)).map_err(to_storage)?;
        let sm = StateMachineStore::open(&dir.path().join(STATE_FILE)).map_err(to_storage)?;
        Ok((dir, log, sm))
    }
}

/// The suite runs each case on its own tokio runtime, so this is a plain test.
#[test]
fn openraft_storage_conformance_suite() {
    if let Err(e) = Suite::test_all(RedbStoreBuilder) {
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

/// A crash after the log fsync but before apply: the entry is in
/// `raft-log.redb` only. On re-open it is committed and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_but_unapplied_entry_is_applied_on_reopen() -> Result<()> {
    let dir = tempfile::tempdir().map_err(CoreError::internal)?;
    let store = open(&dir).await;
    store.put("x/before", b"1".to_vec()).await?;
    store.shutdown().await;
    drop(store);

    {
        let db = redb::Database::open(dir.path().join(LOG_FILE)).map_err(CoreError::storage)?;
        let txn = db.begin_write().map_err(CoreError::storage)?;
        {
            use redb::ReadableTable;
            let mut logs = txn
                .open_table(log_store::LOGS)
                .map_err(CoreError::storage)?;
            let last: openraft::Entry<TypeConfig> = {
                let (_, v) = logs
                    .last()
                    .map_err(CoreError::storage)?
                    .ok_or(CoreError::Internal("empty log".into()))?;
                serde_json::from_slice(v.value()).map_err(CoreError::storage)?
            };
            let mut log_id = last.log_id;
            log_id.index += 1;
            let entry = openraft::Entry::<TypeConfig> {
                log_id,
                payload: openraft::EntryPayload::Normal(Command::Batch(vec![put("x/after", b"2")])),
            };
            let bytes = serde_json::to_vec(&entry).map_err(CoreError::storage)?;
            logs.insert(log_id.index, bytes.as_slice())
                .map_err(CoreError::storage)?;
        }
        txn.commit().map_err(CoreError::storage)?;
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

#[test]
fn command_log_encoding_round_trips_and_debug_hides_values() {
    let cmd = Command::Batch(vec![put("a", b"secret-value"), del("b")]);
    let json = serde_json::to_string(&cmd).unwrap_or_default();
    assert!(!json.contains("secret-value"));
    let back: Command = serde_json::from_str(&json)
        .map_err(|e| e.to_string())
        .unwrap_or(Command::Batch(vec![]));
    assert_eq!(back, cmd);
    let dbg = format!("{cmd:?}");
    assert!(
        dbg.contains("put a (12 bytes)") && dbg.contains("delete b"),
        "{dbg}"
    );
    assert!(!dbg.contains("secret"));

    let restore = Command::Restore(vec![("k".to_string(), vec![1, 2, 3])]);
    let json = serde_json::to_string(&restore).unwrap_or_default();
    let back: Command = serde_json::from_str(&json)
        .map_err(|e| e.to_string())
        .unwrap_or(Command::Batch(vec![]));
    assert_eq!(back, restore);
}
