//! The durable local log on its own: group commit, crash recovery, segment
//! roll, readers following the writer, checkpoints, retention, the disk
//! guard, a real ENOSPC on a tiny tmpfs, and `verify`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use custos_audit::AuditError;
use custos_audit::log::{
    AuditLog, Checkpoint, DurablePosition, LogDir, LogOptions, LogReader, Record, Retention, verify,
};
use tokio::sync::watch;

/// No disk guard (CI disks may be nearly full), small segments where asked.
fn opts() -> LogOptions {
    LogOptions {
        min_free_bytes: 0,
        ..LogOptions::default()
    }
}

fn payload(i: u64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"request","i":{i},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

fn field_i(r: &Record) -> u64 {
    r.json().unwrap()["i"].as_u64().unwrap()
}

/// Every record on disk, in order, failing on any damaged record.
fn read_all(dir: &Path) -> Vec<Record> {
    let mut reader = LogReader::open(dir, 1).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.try_next().unwrap() {
        out.push(r);
    }
    out
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    LogDir::new(dir)
        .segments()
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_and_hands_out_distinct_durable_seqs() {
    const N: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(dir.path(), opts()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..N {
        let log = log.clone();
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let seq = log.append(payload(i, 200)).await.unwrap();
            // On return the record is in the file and counted durable.
            assert!(log.durable_seq() >= seq);
            if i % 100 == 0 {
                let first = LogReader::open(dir.as_path(), seq)
                    .unwrap()
                    .try_next()
                    .unwrap()
                    .expect("record on disk when append returns");
                assert_eq!((first.seq, field_i(&first)), (seq, i));
            }
            (seq, i)
        }));
    }
    let mut seqs = HashSet::new();
    let mut by_seq = std::collections::HashMap::new();
    for t in tasks {
        let (seq, i) = t.await.unwrap();
        assert!(seqs.insert(seq), "seq {seq} handed out twice");
        by_seq.insert(seq, i);
    }
    assert_eq!(seqs, (1..=N).collect::<HashSet<_>>());
    let fsyncs = log.fsync_count();
    println!("{N} concurrent appends, {fsyncs} fsyncs");
    assert!((1..N / 2).contains(&fsyncs), "fsyncs = {fsyncs}");
    assert_eq!(log.records_written(), N);
    assert_eq!(log.durable_seq(), N);

    let records = read_all(dir.path());
    assert_eq!(records.len() as u64, N);
    for (k, r) in records.iter().enumerate() {
        assert_eq!(r.seq, k as u64 + 1);
        assert_eq!(
            by_seq[&r.seq],
            field_i(r),
            "record {} holds another event",
            r.seq
        );
    }
    log.shutdown().await;
    assert_eq!(log.append(payload(0, 0)).await, Err(AuditError::Closed));
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        (report.first_seq, report.last_seq, report.records),
        (Some(1), Some(N), N)
    );
}

#[tokio::test]
async fn append_rejects_what_is_not_a_one_line_object() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    for bad in [&b"[1]"[..], b"", b"{\"a\":\n1}", b"not json"] {
        assert!(matches!(
            log.append(bad.to_vec()).await,
            Err(AuditError::Encode(_))
        ));
    }
    assert_eq!(log.append(b"{}".to_vec()).await.unwrap(), 1);
    log.shutdown().await;
}

/// Write `n` records, close the log, and return the last segment's path.
async fn write_and_close(dir: &Path, n: u64) -> PathBuf {
    let log = AuditLog::open(dir, opts()).unwrap();
    for i in 1..=n {
        assert_eq!(log.append(payload(i, 50)).await.unwrap(), i);
    }
    log.shutdown().await;
    segment_paths(dir).pop().unwrap()
}

#[tokio::test]
async fn recovery_cuts_garbage_and_partial_tails_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_and_close(dir.path(), 10).await;
    let clean_len = fs::metadata(&seg).unwrap().len();

    // Garbage lines and a partial record after the last good record.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"\x00\x00\x00\x00\ngarbage line\n{\"type\":\"request\",\"i\":11,\"custos_se")
        .unwrap();
    drop(f);
    assert!(verify(dir.path()).unwrap().torn_tail);
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.durable_seq(), 10);
    assert_eq!(fs::metadata(&seg).unwrap().len(), clean_len);
    assert_eq!(log.append(payload(11, 50)).await.unwrap(), 11);
    log.shutdown().await;
    let records = read_all(dir.path());
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert!(verify(dir.path()).unwrap().is_clean());
}

#[tokio::test]
async fn recovery_after_a_cut_mid_record_keeps_every_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_and_close(dir.path(), 10).await;
    let text = fs::read(&seg).unwrap();
    // A torn tail is a batch that was never acknowledged, so never in the
    // sync journal either (the next test has acknowledged records lost).
    fs::remove_file(dir.path().join("audit.journal/sync")).unwrap();
    // Cut record 10 in the middle, then separately only its newline.
    let start_of_10 = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    for cut in [start_of_10 + 7, text.len() - 1] {
        fs::write(&seg, &text[..cut]).unwrap();
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        assert_eq!(log.durable_seq(), 9);
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, start_of_10);
        log.shutdown().await;
        let seqs: Vec<u64> = read_all(dir.path()).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    }
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.append(payload(99, 1)).await.unwrap(), 10);
    log.shutdown().await;
}

#[tokio::test]
async fn acknowledged_records_a_power_cut_took_from_the_segment_come_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_and_close(dir.path(), 10).await;
    let text = fs::read(&seg).unwrap();
    // A power cut after the journal's sync: the segment's own pages (synced
    // only in the background) lost everything after record 3, and record 4
    // is half there.
    let end_of_3 = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(2)
        .unwrap()
        .0
        + 1;
    fs::write(&seg, &text[..end_of_3 + 20]).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.durable_seq(), 10, "every acknowledged record is back");
    assert_eq!(fs::read(&seg).unwrap(), text);
    assert_eq!(log.append(payload(11, 50)).await.unwrap(), 11);
    log.shutdown().await;
    let seqs: Vec<u64> = read_all(dir.path()).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert!(verify(dir.path()).unwrap().is_clean());

    // Opened again: nothing to put back, nothing cut.
    let before = fs::read(&seg).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.durable_seq(), 11);
    log.shutdown().await;
    assert_eq!(fs::read(&seg).unwrap(), before);
}

#[tokio::test]
async fn segments_roll_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        LogOptions {
            segment_size: 4096,
            ..opts()
        },
    )
    .unwrap();
    for i in 1..=60 {
        log.append(payload(i, 400)).await.unwrap();
    }
    log.shutdown().await;
    let segments = LogDir::new(dir.path()).segments().unwrap();
    assert!(segments.len() >= 7, "{} segments", segments.len());
    for s in &segments {
        assert!(fs::metadata(&s.path).unwrap().len() <= 4096);
        // Each segment is named for its first record.
        let first = LogReader::open(dir.path(), s.first_seq)
            .unwrap()
            .try_next()
            .unwrap()
            .unwrap();
        assert_eq!(first.seq, s.first_seq);
        assert_eq!(first.segment, s.first_seq);
    }
    let seqs: Vec<u64> = read_all(dir.path()).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());

    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        LogOptions {
            segment_duration: Duration::from_millis(50),
            ..opts()
        },
    )
    .unwrap();
    log.append(payload(1, 1)).await.unwrap();
    log.append(payload(2, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    log.append(payload(3, 1)).await.unwrap();
    log.shutdown().await;
    let firsts: Vec<u64> = LogDir::new(dir.path())
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.first_seq)
        .collect();
    assert_eq!(firsts, vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crosses_segments_and_wakes_on_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        AuditLog::open(
            dir.path(),
            LogOptions {
                segment_size: 2048,
                ..opts()
            },
        )
        .unwrap(),
    );
    let mut reader = log.reader(1);
    // Nothing yet: `next` waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), reader.next())
            .await
            .is_err()
    );
    let follower = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match reader.next().await {
                Ok(r) => got.push((r.seq, field_i(&r))),
                Err(AuditError::Closed) => return got,
                Err(e) => panic!("reader failed: {e}"),
            }
        }
    });
    for i in 1..=100 {
        log.append(payload(i, 300)).await.unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if i == 50 {
            log.roll().await.unwrap();
        }
    }
    assert!(LogDir::new(dir.path()).segments().unwrap().len() > 5);
    log.shutdown().await;
    let got = follower.await.unwrap();
    assert_eq!(got, (1..=100).map(|i| (i, i)).collect::<Vec<_>>());

    // A reader can start in the middle.
    let mut mid = LogReader::open(dir.path(), 42).unwrap();
    assert_eq!(mid.try_next().unwrap().unwrap().seq, 42);
    assert_eq!(mid.position(), 43);
}

#[tokio::test]
async fn a_follower_never_reads_past_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    write_and_close(dir.path(), 5).await;
    let seg = segment_paths(dir.path()).pop().unwrap();
    let text = fs::read(&seg).unwrap();
    let ends: Vec<u64> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i as u64 + 1)
        .collect();
    // Pretend only records 1..=3 are fsynced.
    let (tx, rx) = watch::channel(DurablePosition {
        seq: 3,
        segment: 1,
        offset: ends[2],
    });
    let mut reader = LogReader::follow(LogDir::new(dir.path()), 1, rx);
    let mut seqs = Vec::new();
    while let Some(r) = reader.try_next().unwrap() {
        seqs.push(r.seq);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    // Half of record 4 durable is still nothing.
    tx.send_replace(DurablePosition {
        seq: 3,
        segment: 1,
        offset: ends[2] + 10,
    });
    assert!(reader.try_next().unwrap().is_none());
    tx.send_replace(DurablePosition {
        seq: 5,
        segment: 1,
        offset: ends[4],
    });
    assert_eq!(reader.next().await.unwrap().seq, 4);
    assert_eq!(reader.next().await.unwrap().seq, 5);
    drop(tx);
    assert_eq!(reader.next().await, Err(AuditError::Closed));
}

#[tokio::test]
async fn readers_report_a_damaged_record_once_and_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_and_close(dir.path(), 5).await;
    let text = fs::read_to_string(&seg).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replace("\"i\":3", "\"i\":8");
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let mut reader = LogReader::open(dir.path(), 1).unwrap();
    assert_eq!(reader.try_next().unwrap().unwrap().seq, 1);
    assert_eq!(reader.try_next().unwrap().unwrap().seq, 2);
    let err = reader.try_next().unwrap_err();
    assert!(
        matches!(&err, AuditError::CorruptRecord { segment, line: 3 } if segment == "audit-00000000000000000001.log"),
        "{err}"
    );
    assert_eq!(reader.try_next().unwrap().unwrap().seq, 4);
    // Starting after the damage, it is not reported.
    let mut later = LogReader::open(dir.path(), 5).unwrap();
    assert_eq!(later.try_next().unwrap().unwrap().seq, 5);

    let report = verify(dir.path()).unwrap();
    assert_eq!(
        report.crc_errors,
        vec![("audit-00000000000000000001.log".to_owned(), 3)]
    );
    assert_eq!(report.gaps, vec![(3, 3)]);
    assert_eq!(report.records, 4);
    assert!(!report.is_clean());
}

#[test]
fn checkpoints_store_atomically_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("audit.checkpoints");
    assert_eq!(Checkpoint::load(&cp, "kafka").unwrap(), 0);
    assert_eq!(Checkpoint::get(&cp, "kafka").unwrap(), None);
    assert_eq!(Checkpoint::min(&cp).unwrap(), None);
    Checkpoint::store(&cp, "kafka", 41).unwrap();
    Checkpoint::store(&cp, "kafka", 42).unwrap();
    assert_eq!(Checkpoint::load(&cp, "kafka").unwrap(), 42);
    // A mount path works as a sink name.
    assert_eq!(Checkpoint::register(&cp, "es/", 7).unwrap(), 7);
    assert_eq!(Checkpoint::register(&cp, "es", 99).unwrap(), 7);
    assert_eq!(
        Checkpoint::list(&cp).unwrap(),
        vec![("es".to_owned(), 7), ("kafka".to_owned(), 42)]
    );
    assert_eq!(Checkpoint::min(&cp).unwrap(), Some(7));
    // A temporary file left by a crash between write and rename changes nothing.
    fs::write(cp.join(".kafka.json.tmp"), b"{\"sink\":\"kafka\",\"se").unwrap();
    assert_eq!(Checkpoint::load(&cp, "kafka").unwrap(), 42);
    assert_eq!(Checkpoint::list(&cp).unwrap().len(), 2);
    Checkpoint::store(&cp, "kafka", 43).unwrap();
    let names: Vec<String> = fs::read_dir(&cp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    Checkpoint::remove(&cp, "es").unwrap();
    Checkpoint::remove(&cp, "es").unwrap();
    assert_eq!(Checkpoint::min(&cp).unwrap(), Some(43));

    for bad in ["", "../x", "a/b", ".hidden", "a b"] {
        assert!(
            matches!(
                Checkpoint::store(&cp, bad, 1),
                Err(AuditError::Checkpoint { .. })
            ),
            "{bad:?}"
        );
    }
    fs::write(cp.join("broken.json"), b"not json").unwrap();
    assert!(matches!(
        Checkpoint::load(&cp, "broken"),
        Err(AuditError::Checkpoint { .. })
    ));
}

/// A log with segments starting at 1, 11, 21, 31 (the last one active).
async fn four_segments(dir: &Path, options: LogOptions) -> AuditLog {
    let log = AuditLog::open(dir, options).unwrap();
    for i in 1..=31 {
        log.append(payload(i, 10)).await.unwrap();
        if i % 10 == 0 {
            log.roll().await.unwrap();
        }
    }
    log
}

fn firsts(dir: &Path) -> Vec<u64> {
    LogDir::new(dir)
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.first_seq)
        .collect()
}

#[tokio::test]
async fn prune_respects_checkpoints_retention_and_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = four_segments(dir.path(), opts()).await;
    assert_eq!(firsts(dir.path()), vec![1, 11, 21, 31]);
    assert_eq!(log.segment_count(), 4);
    let any_size = Retention {
        max_age: None,
        max_bytes: Some(1),
    };
    // No retention limit: nothing goes, whatever the sinks say.
    let r = log.prune(Some(u64::MAX), &Retention::default()).unwrap();
    assert!(r.deleted.is_empty());
    // A sink at 15 has acknowledged segment 1..=10 only.
    let r = log.prune(Some(15), &any_size).unwrap();
    assert_eq!(r.deleted, vec![1]);
    assert_eq!(firsts(dir.path()), vec![11, 21, 31]);
    // At exactly 20 the second segment is acknowledged.
    let r = log.prune(Some(20), &any_size).unwrap();
    assert_eq!(r.deleted, vec![11]);
    // Everything acknowledged: the active segment still stays.
    let r = log.prune(None, &any_size).unwrap();
    assert_eq!(r.deleted, vec![21]);
    assert_eq!(firsts(dir.path()), vec![31]);
    assert_eq!(log.prune(None, &any_size).unwrap().remaining, 1);
    assert_eq!(log.segment_count(), 1);
    // Readers from an old checkpoint start at the oldest retained record.
    let mut reader = LogReader::open(dir.path(), 5).unwrap();
    assert_eq!(reader.try_next().unwrap().unwrap().seq, 31);
    log.shutdown().await;

    // Age: only segments whose newest record is older than max_age.
    let dir = tempfile::tempdir().unwrap();
    let log = four_segments(dir.path(), opts()).await;
    let week = Retention {
        max_age: Some(Duration::from_secs(7 * 86400)),
        max_bytes: None,
    };
    assert!(log.prune(None, &week).unwrap().deleted.is_empty());
    let old = SystemTime::now() - Duration::from_secs(8 * 86400);
    for p in &segment_paths(dir.path())[..2] {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // Also aged, but the sink has only acknowledged up to 12.
    assert_eq!(log.prune(Some(12), &week).unwrap().deleted, vec![1]);
    assert_eq!(log.prune(Some(31), &week).unwrap().deleted, vec![11]);
    assert_eq!(firsts(dir.path()), vec![21, 31]);
    log.shutdown().await;
}

#[tokio::test]
async fn rolls_apply_retention_with_the_registered_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        retention: Retention {
            max_age: None,
            max_bytes: Some(1),
        },
        ..opts()
    };
    let cp = LogDir::new(dir.path()).checkpoint_dir();
    Checkpoint::store(&cp, "kafka", 0).unwrap();
    let log = four_segments(dir.path(), options).await;
    // A sink at 0 holds everything back.
    assert_eq!(firsts(dir.path()), vec![1, 11, 21, 31]);
    Checkpoint::store(&cp, "kafka", 25).unwrap();
    log.append(payload(32, 1)).await.unwrap();
    log.roll().await.unwrap();
    assert_eq!(firsts(dir.path()), vec![21, 31, 33]);
    log.shutdown().await;
}

/// True when `a` and `b` name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    let (a, b) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[tokio::test]
async fn the_live_name_is_the_active_segment_across_rolls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("audit.log");
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    // There from the start, before any record, so `tail -F` can open it.
    assert!(same_file(&live, &segment_paths(dir.path())[0]));
    log.append(payload(1, 1)).await.unwrap();
    log.roll().await.unwrap();
    log.append(payload(2, 1)).await.unwrap();
    let segs = segment_paths(dir.path());
    assert_eq!(segs.len(), 2);
    assert!(same_file(&live, &segs[1]));
    assert_eq!(fs::metadata(&segs[0]).unwrap().nlink(), 1);
    let text = fs::read_to_string(&live).unwrap();
    assert!(
        text.contains(r#""i":2"#) && !text.contains(r#""i":1"#),
        "{text}"
    );
    log.shutdown().await;

    // A crash between a roll and its link left the name on the sealed
    // segment: opening the log puts it back on the active one.
    fs::remove_file(&live).unwrap();
    fs::hard_link(&segs[0], &live).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert!(same_file(&live, &segs[1]));
    assert_eq!(fs::metadata(&segs[0]).unwrap().nlink(), 1);
    // Readers, verify and recovery go by segment names: nothing doubled.
    assert_eq!(read_all(dir.path()).len(), 2);
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.last_seq, Some(2));
    // Size rolls move it too.
    log.shutdown().await;
    let log = AuditLog::open(
        dir.path(),
        LogOptions {
            segment_size: 300,
            ..opts()
        },
    )
    .unwrap();
    for i in 3..=10 {
        log.append(payload(i, 100)).await.unwrap();
    }
    let segs = segment_paths(dir.path());
    assert!(segs.len() > 4, "{segs:?}");
    assert!(same_file(&live, segs.last().unwrap()));
    log.shutdown().await;
    assert_eq!(read_all(dir.path()).len(), 10);
}

#[tokio::test]
async fn health_says_whether_the_log_can_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.health(), Ok(()));
    log.shutdown().await;
    assert_eq!(log.health(), Err(AuditError::Closed));
    // Under the disk guard's floor: known before any append is tried.
    let log = AuditLog::open(
        dir.path(),
        LogOptions {
            min_free_bytes: u64::MAX,
            ..opts()
        },
    )
    .unwrap();
    assert!(
        matches!(
            log.health(),
            Err(AuditError::DiskFull {
                min_free_bytes: u64::MAX,
                ..
            })
        ),
        "{:?}",
        log.health()
    );
    log.shutdown().await;
}

#[tokio::test]
async fn disk_guard_refuses_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        LogOptions {
            min_free_bytes: u64::MAX,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let err = log.append(payload(1, 1)).await.unwrap_err();
    assert!(matches!(err, AuditError::DiskFull { .. }), "{err}");
    assert!(log.free_bytes() > 0);
    assert_eq!(log.durable_seq(), 0);
    log.shutdown().await;
    // The refused record took no sequence number.
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.append(payload(1, 1)).await.unwrap(), 1);
    log.shutdown().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_leaves_the_log_consistent() {
    let Some(tmpfs) = Tmpfs::mount("256k") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = tmpfs.path().join("audit");
    let filler = tmpfs.path().join("filler");
    fs::write(&filler, vec![0u8; 64 * 1024]).unwrap();
    let log = AuditLog::open(&dir, opts()).unwrap();
    let mut acked = Vec::new();
    let err = loop {
        match log.append(payload(acked.len() as u64 + 1, 3000)).await {
            Ok(seq) => acked.push(seq),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "the tmpfs never filled up");
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(
        matches!(
            err,
            AuditError::Io {
                kind: std::io::ErrorKind::StorageFull,
                ..
            }
        ),
        "{err}"
    );
    // Still full: still refused, nothing torn.
    assert!(
        log.append(payload(0, 3000))
            .await
            .unwrap_err()
            .is_disk_full()
    );
    // No floor to check live (min_free_bytes 0): the failed commit tells.
    assert!(log.health().unwrap_err().is_disk_full());
    let report = verify(&dir).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.last_seq, acked.last().copied());
    // Space comes back: the sequence continues without a gap.
    fs::remove_file(&filler).unwrap();
    let next = log.append(payload(0, 10)).await.unwrap();
    assert_eq!(next, acked.len() as u64 + 1);
    assert_eq!(log.health(), Ok(()));
    log.shutdown().await;
    let seqs: Vec<u64> = read_all(&dir).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=next).collect::<Vec<_>>());

    // With a floor, the guard trips before the disk is actually full.
    let guarded = AuditLog::open(
        &dir,
        LogOptions {
            min_free_bytes: 128 * 1024,
            ..opts()
        },
    )
    .unwrap();
    let err = loop {
        if let Err(e) = guarded.append(payload(0, 3000)).await {
            break e;
        }
    };
    assert!(matches!(err, AuditError::DiskFull { .. }), "{err}");
    guarded.shutdown().await;
    assert!(verify(&dir).unwrap().is_clean());
}
