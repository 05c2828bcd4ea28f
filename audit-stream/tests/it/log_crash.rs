//! kill -9 while appending: every acknowledged record survives, exactly once.
//!
//! The parent test re-runs this test binary as a child process
//! (`child_writer`, selected with `--exact` and enabled by an environment
//! variable). The child appends from several tasks in a loop and prints
//! `ACK <seq> <writer> <i>` after each append returned. The parent SIGKILLs
//! it mid-stream, three times on the same directory, each time leaving half a
//! record at the tail as a power cut would (the next child must cut it), then
//! reopens the log and checks that every
//! acknowledged sequence number is there once, holding the acknowledged
//! event, and that `verify` finds the log clean.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::log::{AuditLog, LogDir, LogOptions, LogReader, verify};

const DIR_VAR: &str = "CUSTOS_TEST_LOG_CHILD_DIR";
const WRITERS: u64 = 8;

fn options() -> LogOptions {
    LogOptions {
        // Small segments: kills land around rolls too.
        segment_size: 256 * 1024,
        min_free_bytes: 0,
        ..LogOptions::default()
    }
}

/// The child: appends until killed. A no-op in a normal test run.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(AuditLog::open(std::path::PathBuf::from(dir), options()).unwrap());
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let pad = "x".repeat(500 + (i as usize * 37) % 3000);
                    let ev = format!(r#"{{"type":"request","w":{w},"i":{i},"pad":"{pad}"}}"#);
                    let seq = log.append(ev.into_bytes()).await.unwrap();
                    println!("ACK {seq} {w} {i}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Run one child until it acknowledged `target` records, SIGKILL it, and
/// return everything it acknowledged: seq -> (writer, i).
fn run_and_kill(dir: &std::path::Path, target: usize) -> HashMap<u64, (u64, u64)> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "log_crash::child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Watchdog: never hang the suite if the child stops printing.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let stdout = child.stdout.take().unwrap();
    let mut acked = HashMap::new();
    let mut killed = false;
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["ACK", seq, w, i] = parts[..]
            && let (Ok(seq), Ok(w), Ok(i)) = (seq.parse(), w.parse(), i.parse())
        {
            assert!(acked.insert(seq, (w, i)).is_none(), "seq {seq} acked twice");
        }
        if !killed && (acked.len() >= target || started.elapsed() > Duration::from_secs(60)) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let _ = child.wait();
    assert!(killed, "the child exited on its own");
    acked
}

#[test]
fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = HashMap::new();
    let mut torn = 0;
    for round in 0..3 {
        let got = run_and_kill(dir.path(), 1500);
        torn += usize::from(verify(dir.path()).unwrap().torn_tail);
        // SIGKILL never tears a write(2) into the page cache; a power cut
        // can. Leave half a record, as one would, for the next child to cut.
        let last = LogDir::new(dir.path()).segments().unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last.path).unwrap();
        f.write_all(br#"{"type":"request","w":0,"i":123,"pad":"xxxxxxxx"#)
            .unwrap();
        assert!(!got.is_empty(), "round {round}: nothing acknowledged");
        for (seq, ev) in got {
            assert!(
                acked.insert(seq, ev).is_none(),
                "seq {seq} reused after a crash"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::open(dir.path(), options()).unwrap();
        let last = log.durable_seq();
        assert_eq!(log.append(b"{}".to_vec()).await.unwrap(), last + 1);
        log.shutdown().await;
    });
    let report = verify(dir.path()).unwrap();
    assert!(
        report.crc_errors.is_empty() && !report.torn_tail,
        "{report:?}"
    );
    let mut on_disk = HashMap::new();
    let mut reader = LogReader::open(dir.path(), 1).unwrap();
    let mut prev = 0;
    while let Some(r) = reader.try_next().unwrap() {
        assert!(r.seq > prev, "seq {} after {prev}", r.seq);
        prev = r.seq;
        let v = r.json().unwrap();
        on_disk.insert(r.seq, (v["w"].as_u64(), v["i"].as_u64()));
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|(seq, (w, i))| on_disk.get(seq) != Some(&(Some(*w), Some(*i))))
        .map(|(seq, _)| *seq)
        .collect();
    println!(
        "{} acknowledged over 3 kills ({torn} left a torn tail), {} records on disk, {} segments",
        acked.len(),
        on_disk.len(),
        report.segments
    );
    assert!(
        missing.is_empty(),
        "acknowledged but missing or different: {missing:?}"
    );
}
