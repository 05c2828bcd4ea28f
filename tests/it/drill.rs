//! `custos drill run --config drill.hcl` end to end: a real `server --dev`
//! holds secrets, its snapshot agent ships a snapshot to a local directory
//! (a `snapshot-auto` config written through the API, due at once), the
//! server stops, and the real binary restores that snapshot into a node of
//! its own. Checked: exit codes (0 passed, 2 failed, 1 bad config), the
//! report files, the stdout summary and the stderr line naming the first
//! failed check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{BIN, Server, dev_server};

async fn call(s: &Server, method: reqwest::Method, path: &str, body: Value) {
    let r = s
        .client()
        .request(method, s.url(path))
        .header("X-Vault-Token", &s.root_token)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

fn drill(config: &Path) -> Output {
    Command::new(BIN)
        .args(["drill", "run", "--config"])
        .arg(config)
        .env("CUSTOS_LOG", "warn")
        .output()
        .expect("run custos drill")
}

fn reports(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "json"));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_run_restores_what_the_snapshot_agent_shipped() {
    let s = dev_server();
    let put = reqwest::Method::POST;
    for v in 1..=3 {
        call(
            &s,
            put.clone(),
            "secret/data/app/db",
            json!({"data": {"password": format!("e2e-{v}")}}),
        )
        .await;
    }
    call(
        &s,
        put.clone(),
        "secret/delete/app/db",
        json!({"versions": [1]}),
    )
    .await;
    // Keys of one version (read back in one request each): live, deleted
    // (present as deleted) and destroyed (not counted).
    for name in ["one", "gone", "burnt"] {
        call(
            &s,
            put.clone(),
            &format!("secret/data/app/{name}"),
            json!({"data": {"v": name}}),
        )
        .await;
    }
    call(
        &s,
        put.clone(),
        "secret/delete/app/gone",
        json!({"versions": [1]}),
    )
    .await;
    call(
        &s,
        put.clone(),
        "secret/destroy/app/burnt",
        json!({"versions": [1]}),
    )
    .await;
    call(
        &s,
        put.clone(),
        "sys/mounts/transit",
        json!({"type": "transit"}),
    )
    .await;
    call(&s, put.clone(), "transit/keys/orders", json!({})).await;
    call(&s, put.clone(), "transit/keys/orders/rotate", json!({})).await;
    let root = s.dir.parent().expect("dir").to_path_buf();
    let snaps = root.join("e2e-snapshots");
    call(
        &s,
        put.clone(),
        "sys/storage/raft/snapshot-auto/config/e2e",
        json!({"storage_type": "local", "path_prefix": snaps, "interval": 3600, "retain": 2}),
    )
    .await;
    // A new configuration with no snapshot yet is due at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        let found = std::fs::read_dir(&snaps).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        });
        if let Some(m) = found {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot shipped:\n{}",
            s.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let snapshot = PathBuf::from(
        manifest
            .to_string_lossy()
            .replace(".manifest.json", ".snap"),
    );
    let keys = root.join("unseal-keys.txt");
    std::fs::write(&keys, format!("{}\n", s.unseal_key)).unwrap();
    drop(s); // the source is gone: the drill never talks to it

    let report_dir = root.join("reports");
    let config = root.join("drill.hcl");
    std::fs::write(
        &config,
        format!(
            r#"source {{
  storage_type = "local"
  path_prefix  = "{}"
}}
unseal {{
  key_shares_file = "{}"
}}
rto_target = "15m"
report_dir = "{}"
work_dir   = "{}"
"#,
            snaps.display(),
            keys.display(),
            report_dir.display(),
            root.join("work").display()
        ),
    )
    .unwrap();

    let out = drill(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("Restore drill PASSED\n"), "{stdout}");
    for line in [
        "[ok] kv secret/: 4 secrets, 5 versions read (of which 2 deleted, present as deleted)",
        "[ok] state_digest:",
        "[ok] transit_canaries: 1 ",
        "  report:    ",
    ] {
        assert!(stdout.contains(line), "{line:?} not in\n{stdout}");
    }
    let files = reports(&report_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(report["result"], "passed");
    assert_eq!(report["first_failure"], Value::Null);
    assert_eq!(report["secrets_verified"], 4);
    assert_eq!(report["versions_verified"], 5);
    assert_eq!(report["rto_target_seconds"], 900.0);
    assert!(
        report["snapshot_key"]
            .as_str()
            .is_some_and(|k| snapshot.ends_with(k)),
        "{report}"
    );
    for phase in ["download", "restore", "unseal", "verify"] {
        assert!(report["phase_seconds"][phase].as_f64().is_some(), "{phase}");
    }
    let txt = std::fs::read_to_string(files[0].with_extension("txt")).unwrap();
    assert!(stdout.starts_with(&txt), "txt:\n{txt}\nstdout:\n{stdout}");
    // A copy of the JSON sits next to the snapshot.
    let uploaded = report["uploaded_as"].as_str().expect("uploaded_as");
    assert!(snaps.join(uploaded).exists(), "{uploaded}");

    // A corrupted object: exit 2, the sha256 check named on stdout and stderr.
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&snapshot, bytes).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a report of its own second
    let out = drill(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("Restore drill FAILED\n"), "{stdout}");
    assert!(
        stdout.contains("first failed check: snapshot_sha256: snapshot sha256 "),
        "{stdout}"
    );
    assert!(
        stderr.contains("restore drill failed: snapshot_sha256: "),
        "{stderr}"
    );
    assert_eq!(reports(&report_dir).len(), 2);

    // A config mistake: exit 1, file, line and field named, nothing run.
    let bad = root.join("bad.hcl");
    std::fs::write(
        &bad,
        "source {\n  storage_type = \"local\"\n  path_prefix = \"/x\"\n}\nunseal { key_shares_file = \"k\" }\nrto_targt = \"1m\"\n",
    )
    .unwrap();
    let out = drill(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.hcl:6: rto_targt: "), "{stderr}");
    assert_eq!(reports(&report_dir).len(), 2);
}
