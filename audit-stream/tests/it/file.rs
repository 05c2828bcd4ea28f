//! The file device: line format, hashing, group commit, failures, rotation,
//! shutdown, crash recovery — over the durable log in a temporary directory.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use custos_audit::log::Retention;
use custos_audit::{AuditDevice, AuditError, FileDevice, FileOptions, LogDir, hmac_sha256};

use crate::support::{ACCESSOR, SECRET, TOKEN, read_log, request_event, response_event, salt};

/// Options for tests: no disk guard (CI disks may be nearly full).
fn no_guard() -> FileOptions {
    FileOptions {
        min_free_bytes: 0,
        ..FileOptions::default()
    }
}

/// The segment files (`audit-<seq>.log`), without the live name `audit.log`.
fn segment_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") && n.contains('-'))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn writes_one_hashed_json_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    // A directory path: the device writes its segments inside it.
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap();
    assert_eq!(dev.dir(), dir.path());
    // A path ending in '/' names a directory too, created if missing.
    let named = dir.path().join("new-dir/");
    let dev2 = FileDevice::open(named, salt(), no_guard()).unwrap();
    assert_eq!(dev2.dir(), dir.path().join("new-dir/"));
    dev2.shutdown().await;
    assert_eq!(dev.record(&request_event("req-1")).await.unwrap(), 1);
    dev.log(&response_event("req-1")).await.unwrap();
    dev.shutdown().await;

    assert_eq!(
        segment_names(dir.path()),
        vec!["audit-00000000000000000001.log"]
    );
    // `audit.log` in the directory is the live log: the active segment.
    assert_eq!(
        std::fs::read(dir.path().join("audit.log")).unwrap(),
        std::fs::read(dir.path().join("audit-00000000000000000001.log")).unwrap()
    );
    let (text, lines) = read_log(dir.path());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custos_seq"], 1);
    assert_eq!(lines[1]["custos_seq"], 2);
    assert!(
        lines[1]["custos_crc"]
            .as_str()
            .is_some_and(|c| c.len() == 8)
    );
    for raw in [SECRET, TOKEN, ACCESSOR] {
        assert!(!text.contains(raw), "{raw} must not appear in the log");
    }
    let s = salt();
    let (req, resp) = (&lines[0], &lines[1]);
    assert_eq!(req["type"], "request");
    assert_eq!(resp["type"], "response");
    assert_eq!(req["auth"]["client_token"], hmac_sha256(&s, TOKEN));
    assert_eq!(req["auth"]["accessor"], hmac_sha256(&s, ACCESSOR));
    assert_eq!(
        req["request"]["client_token_accessor"],
        hmac_sha256(&s, ACCESSOR)
    );
    assert_eq!(
        req["request"]["data"]["data"]["password"],
        hmac_sha256(&s, SECRET)
    );
    assert_eq!(req["request"]["data"]["data"]["retries"], 3);
    assert_eq!(req["request"]["path"], "secret/data/app");
    assert_eq!(
        resp["response"]["auth"]["client_token"],
        hmac_sha256(&s, TOKEN)
    );
    assert_eq!(
        resp["response"]["data"]["data"]["password"],
        hmac_sha256(&s, SECRET)
    );
    assert_eq!(
        resp["response"]["wrap_info"]["token"],
        hmac_sha256(&s, TOKEN)
    );
    assert_eq!(dev.hash(SECRET), hmac_sha256(&s, SECRET));

    let mode = std::fs::metadata(dir.path().join("audit-00000000000000000001.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn options_raw_accessor_prefix_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/raw.log");
    let mut opts = BTreeMap::new();
    opts.insert("file_path".to_owned(), path.display().to_string());
    opts.insert("log_raw".to_owned(), "true".to_owned());
    opts.insert("prefix".to_owned(), "AUDIT: ".to_owned());
    opts.insert("mode".to_owned(), "0640".to_owned());
    opts.insert("min_free_bytes".to_owned(), "0".to_owned());
    let dev = FileDevice::from_options("raw/", "unhashed", &opts, salt()).unwrap();
    assert_eq!(dev.path(), "raw/");
    assert_eq!(dev.kind(), "file");
    assert_eq!(dev.description(), "unhashed");
    assert_eq!(dev.options(), opts);
    dev.log(&request_event("req-raw")).await.unwrap();
    dev.shutdown().await;
    // A file-like path: its parent is the directory, its stem the prefix,
    // and the path itself the live log.
    let seg = dir.path().join("sub/raw-00000000000000000001.log");
    let text = std::fs::read_to_string(&seg).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let line = text.strip_prefix("AUDIT: ").expect("prefix");
    let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(v["request"]["data"]["data"]["password"], SECRET);
    assert_eq!(v["custos_seq"], 1);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // The reader strips the prefix and the log's members.
    let rec = custos_audit::LogReader::open(LogDir::with_prefix(dir.path().join("sub"), "raw"), 1)
        .unwrap()
        .try_next()
        .unwrap()
        .unwrap();
    assert_eq!(rec.seq, 1);
    let ev = rec.json().unwrap();
    assert_eq!(ev["request"]["id"], "req-raw");
    assert!(ev.get("custos_seq").is_none());

    // hmac_accessor=false keeps accessors clear but still hashes tokens.
    let path2 = dir.path().join("acc.log");
    let o = FileOptions {
        hmac_accessor: false,
        ..no_guard()
    };
    let dev2 = FileDevice::open(path2.clone(), salt(), o).unwrap();
    dev2.log(&request_event("req-acc")).await.unwrap();
    dev2.shutdown().await;
    let (text, lines) = read_log(LogDir::with_prefix(dir.path(), "acc"));
    assert!(!text.contains(TOKEN));
    assert_eq!(lines[0]["auth"]["accessor"], ACCESSOR);
}

#[test]
fn bad_options_are_rejected() {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert!(matches!(
        FileOptions::from_map(&map(&[("file_path", "/tmp/x"), ("format", "jsonx")])),
        Err(AuditError::UnsupportedFormat(f)) if f == "jsonx"
    ));
    assert!(matches!(
        FileOptions::from_map(&map(&[("format", "json")])),
        Err(AuditError::InvalidOption { name, .. }) if name == "file_path"
    ));
    assert!(matches!(
        FileOptions::from_map(&map(&[("file_path", "/tmp/x"), ("mode", "rw")])),
        Err(AuditError::InvalidOption { name, .. }) if name == "mode"
    ));
    assert!(matches!(
        FileOptions::from_map(&map(&[("file_path", "/tmp/x"), ("log_raw", "yes")])),
        Err(AuditError::InvalidOption { name, .. }) if name == "log_raw"
    ));
    assert!(matches!(
        FileOptions::from_map(&map(&[("file_path", "/tmp/x"), ("bogus", "1")])),
        Err(AuditError::InvalidOption { name, .. }) if name == "bogus"
    ));
    for (name, value) in [
        ("segment_size", "0"),
        ("segment_size", "big"),
        ("segment_duration", "soon"),
        ("min_free_bytes", "-1"),
        ("retention_max_age", "forever"),
        ("retention_max_bytes", "lots"),
        ("prefix", "{"),
        ("prefix", "a\nb"),
    ] {
        assert!(
            matches!(
                FileOptions::from_map(&map(&[("file_path", "/tmp/x"), (name, value)])),
                Err(AuditError::InvalidOption { name: n, .. }) if n == name
            ),
            "{name}={value:?} accepted"
        );
    }
    let (p, o) = FileOptions::from_map(&map(&[
        ("file_path", "/tmp/x"),
        ("mode", "0"),
        ("hmac_accessor", "false"),
        ("segment_size", "1MiB"),
        ("segment_duration", "10m"),
        ("min_free_bytes", "0"),
        ("retention_max_age", "7days"),
        ("retention_max_bytes", "10GiB"),
    ]))
    .unwrap();
    assert_eq!(p, std::path::PathBuf::from("/tmp/x"));
    assert_eq!(o.mode, None);
    assert!(!o.hmac_accessor);
    assert_eq!(o.segment_size, 1 << 20);
    assert_eq!(o.segment_duration, Duration::from_secs(600));
    assert_eq!(o.min_free_bytes, 0);
    assert_eq!(
        o.retention,
        Retention {
            max_age: Some(Duration::from_secs(7 * 86400)),
            max_bytes: Some(10 << 30),
        }
    );
    let (_, d) = FileOptions::from_map(&map(&[("file_path", "/tmp/x")])).unwrap();
    assert_eq!(d.segment_size, 64 << 20);
    assert_eq!(d.segment_duration, Duration::from_secs(3600));
    assert_eq!(d.min_free_bytes, 256 << 20);
    assert_eq!(d.retention, Retention::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logs_share_fsyncs() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap());
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            dev.record(&request_event(&format!("req-{i}"))).await
        }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap().unwrap()));
    }
    assert_eq!(seqs, (1..=N as u64).collect::<HashSet<_>>());
    // Every call returned after its line was synced.
    assert_eq!(dev.events_written(), N as u64);
    let fsyncs = dev.fsync_count();
    println!("{N} concurrent events, {fsyncs} fsyncs");
    assert!(fsyncs >= 1 && fsyncs < N as u64, "fsyncs = {fsyncs}");
    dev.shutdown().await;

    let (_, lines) = read_log(dir.path());
    assert_eq!(lines.len(), N);
    let ids: HashSet<_> = lines
        .iter()
        .map(|l| l["request"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), N);
}

#[tokio::test]
async fn unwritable_file_errors_until_it_can_write_again() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("logs");
    let dev = FileDevice::open(logdir.join("audit.log"), salt(), no_guard()).unwrap();
    dev.log(&request_event("before")).await.unwrap();

    std::fs::remove_dir_all(&logdir).unwrap();
    let err = dev.reopen().await.unwrap_err();
    assert!(matches!(err, AuditError::Io { op: "open", .. }), "{err}");
    let err = dev.log(&request_event("lost")).await.unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    // The error names neither the event nor its secrets.
    assert!(!err.to_string().contains(SECRET) && !err.to_string().contains(TOKEN));

    // Once the directory is back, the next write starts a segment there;
    // the failed event used no sequence number.
    std::fs::create_dir_all(&logdir).unwrap();
    assert_eq!(dev.record(&request_event("after")).await.unwrap(), 2);
    dev.shutdown().await;
    let (_, lines) = read_log(&logdir);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request"]["id"], "after");
    assert_eq!(lines[0]["custos_seq"], 2);
}

#[tokio::test]
async fn a_deleted_active_segment_is_replaced_not_written_blind() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap();
    dev.log(&request_event("one")).await.unwrap();
    for name in segment_names(dir.path()) {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    // Vault would keep writing into the unlinked file; the log starts anew.
    assert_eq!(dev.record(&request_event("two")).await.unwrap(), 2);
    dev.shutdown().await;
    assert_eq!(
        segment_names(dir.path()),
        vec!["audit-00000000000000000002.log"]
    );
    let (_, lines) = read_log(dir.path());
    assert_eq!(lines[0]["request"]["id"], "two");
    // The live name moved to the new segment.
    let live = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        live.contains("\"two\"") && !live.contains("\"one\""),
        "{live}"
    );
}

#[tokio::test]
async fn reopen_rolls_to_a_new_segment_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap());
    dev.log(&request_event("one")).await.unwrap();
    dev.reopen().await.unwrap();
    // Rotating an empty segment starts no new one.
    dev.reopen().await.unwrap();
    dev.log(&request_event("two")).await.unwrap();
    assert_eq!(
        segment_names(dir.path()),
        vec![
            "audit-00000000000000000001.log",
            "audit-00000000000000000002.log"
        ]
    );
    // Rotations racing with appends lose nothing and duplicate nothing.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            if i % 20 == 0 {
                dev.reopen().await.map(|()| 0)
            } else {
                dev.record(&request_event(&format!("r-{i}"))).await
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    dev.shutdown().await;
    let (_, lines) = read_log(dir.path());
    assert_eq!(lines.len(), 2 + 190);
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["custos_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=192).collect::<Vec<_>>());
    assert!(segment_names(dir.path()).len() > 2);
    let report = custos_audit::log::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn disk_guard_refuses_events_with_a_distinct_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = FileOptions {
        min_free_bytes: u64::MAX,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), o).unwrap();
    let err = dev.log(&request_event("full")).await.unwrap_err();
    assert!(
        matches!(err, AuditError::DiskFull { free_bytes, min_free_bytes: u64::MAX } if free_bytes > 0),
        "{err}"
    );
    assert!(err.is_disk_full());
    assert_eq!(err.kind_label(), "disk_full");
    assert_eq!(dev.events_written(), 0);
    assert!(dev.audit_log().free_bytes() > 0);
    dev.shutdown().await;
    assert!(read_log(dir.path()).1.is_empty());
}

#[tokio::test]
async fn shutdown_flushes_and_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            dev.log(&request_event(&format!("q-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    dev.shutdown().await;
    assert_eq!(
        dev.log(&request_event("late")).await,
        Err(AuditError::Closed)
    );
    assert_eq!(dev.reopen().await, Err(AuditError::Closed));
    dev.shutdown().await; // idempotent
    assert_eq!(read_log(dir.path()).1.len(), 50);
}

#[tokio::test]
async fn a_torn_tail_from_a_crash_is_cut_and_the_sequence_continues() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap();
    dev.log(&request_event("before-crash")).await.unwrap();
    dev.shutdown().await;
    // A crash mid-write leaves half a record.
    let seg = dir.path().join("audit-00000000000000000001.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(
        &mut f,
        b"{\"time\":\"2024-01-01T00:00:00Z\",\"type\":\"requ",
    )
    .unwrap();
    drop(f);
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), no_guard()).unwrap();
    assert_eq!(dev.record(&request_event("after-crash")).await.unwrap(), 2);
    dev.shutdown().await;
    let (_, lines) = read_log(dir.path());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["request"]["id"], "before-crash");
    assert_eq!(lines[1]["request"]["id"], "after-crash");
}
