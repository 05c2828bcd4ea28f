//! The file device: line format, hashing, group commit, failures, shutdown.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use custos_audit::{AuditDevice, AuditError, FileDevice, FileOptions, hmac_sha256};

use crate::support::{ACCESSOR, SECRET, TOKEN, read_lines, request_event, response_event, salt};

#[tokio::test]
async fn writes_one_hashed_json_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    // A directory path: the device writes audit.log inside it.
    let dev = FileDevice::open(dir.path().to_path_buf(), salt(), FileOptions::default()).unwrap();
    assert_eq!(dev.file_path(), dir.path().join("audit.log"));
    // A path ending in '/' names a directory too, created if missing.
    let named = dir.path().join("new-dir/");
    let dev2 = FileDevice::open(named, salt(), FileOptions::default()).unwrap();
    assert_eq!(
        dev2.file_path(),
        dir.path().join("new-dir").join("audit.log")
    );
    dev2.shutdown().await;
    dev.log(&request_event("req-1")).await.unwrap();
    dev.log(&response_event("req-1")).await.unwrap();
    dev.shutdown().await;

    let (text, lines) = read_lines(dev.file_path());
    assert_eq!(lines.len(), 2);
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

    let mode = std::fs::metadata(dev.file_path())
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
    let dev = FileDevice::from_options("raw/", "unhashed", &opts, salt()).unwrap();
    assert_eq!(dev.path(), "raw/");
    assert_eq!(dev.kind(), "file");
    assert_eq!(dev.description(), "unhashed");
    assert_eq!(dev.options(), opts);
    dev.log(&request_event("req-raw")).await.unwrap();
    dev.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.strip_prefix("AUDIT: ").expect("prefix");
    let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(v["request"]["data"]["data"]["password"], SECRET);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // hmac_accessor=false keeps accessors clear but still hashes tokens.
    let path2 = dir.path().join("acc.log");
    let o = FileOptions {
        hmac_accessor: false,
        ..FileOptions::default()
    };
    let dev2 = FileDevice::open(path2.clone(), salt(), o).unwrap();
    dev2.log(&request_event("req-acc")).await.unwrap();
    dev2.shutdown().await;
    let (text, lines) = read_lines(&path2);
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
    let (p, o) = FileOptions::from_map(&map(&[
        ("file_path", "/tmp/x"),
        ("mode", "0"),
        ("hmac_accessor", "false"),
    ]))
    .unwrap();
    assert_eq!(p, std::path::PathBuf::from("/tmp/x"));
    assert_eq!(o.mode, None);
    assert!(!o.hmac_accessor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logs_share_fsyncs() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(
        FileDevice::open(dir.path().join("audit.log"), salt(), FileOptions::default()).unwrap(),
    );
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            dev.log(&request_event(&format!("req-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Every call returned after its line was synced.
    assert_eq!(dev.events_written(), N as u64);
    let fsyncs = dev.fsync_count();
    println!("{N} concurrent events, {fsyncs} fsyncs");
    assert!(fsyncs >= 1 && fsyncs < N as u64, "fsyncs = {fsyncs}");
    dev.shutdown().await;

    let (_, lines) = read_lines(dev.file_path());
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
    let dev = FileDevice::open(logdir.join("audit.log"), salt(), FileOptions::default()).unwrap();
    dev.log(&request_event("before")).await.unwrap();

    std::fs::remove_dir_all(&logdir).unwrap();
    let err = dev.reopen().await.unwrap_err();
    assert!(matches!(err, AuditError::Io { op: "open", .. }), "{err}");
    let err = dev.log(&request_event("lost")).await.unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    // The error names neither the event nor its secrets.
    assert!(!err.to_string().contains(SECRET) && !err.to_string().contains(TOKEN));

    // Once the directory is back, the next write opens the file again.
    std::fs::create_dir_all(&logdir).unwrap();
    dev.log(&request_event("after")).await.unwrap();
    dev.shutdown().await;
    let (_, lines) = read_lines(&logdir.join("audit.log"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request"]["id"], "after");
}

#[tokio::test]
async fn reopen_follows_a_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let dev = FileDevice::open(path.clone(), salt(), FileOptions::default()).unwrap();
    dev.log(&request_event("one")).await.unwrap();
    std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
    dev.reopen().await.unwrap();
    dev.log(&request_event("two")).await.unwrap();
    dev.shutdown().await;
    assert_eq!(
        read_lines(&dir.path().join("audit.log.1")).1[0]["request"]["id"],
        "one"
    );
    let (_, lines) = read_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request"]["id"], "two");
}

#[tokio::test]
async fn disk_full_is_returned_to_the_caller() {
    let full = std::path::PathBuf::from("/dev/full");
    if !full.exists() {
        eprintln!("skipping: /dev/full not present");
        return;
    }
    // mode None: never chmod a device node.
    let opts = FileOptions {
        mode: None,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(full, salt(), opts).unwrap();
    let err = dev.log(&request_event("full")).await.unwrap_err();
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
    assert_eq!(dev.events_written(), 0);
    dev.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_and_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(
        FileDevice::open(dir.path().join("audit.log"), salt(), FileOptions::default()).unwrap(),
    );
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
    assert_eq!(read_lines(dev.file_path()).1.len(), 50);
}

#[tokio::test]
async fn a_torn_last_line_from_a_crash_stays_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, "{\"time\":\"2024-01-01T00:00:00Z\",\"type\":\"requ").unwrap();
    let dev = FileDevice::open(path.clone(), salt(), FileOptions::default()).unwrap();
    dev.log(&request_event("after-crash")).await.unwrap();
    dev.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["request"]["id"], "after-crash");
}
