//! kill -9 in the middle of a stream of KV writes: after restart and unseal,
//! every acknowledged write is there exactly once, and its audit events are
//! in the audit log (they were synced before the response left).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{config_server, init_unseal_mount, unseal};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = config_server(dir.path());
    init_unseal_mount(&mut s).await;

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let c = s.client();
        let base = s.url("secret/data/");
        let token = s.root_token.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000u32 {
                let key = format!("w{w}-{i}");
                let r = c
                    .post(format!("{base}{key}"))
                    .header("X-Vault-Token", &token)
                    .json(&json!({"data": {"value": format!("v-{key}")}}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().expect("lock").insert(key);
                    }
                    _ => break,
                }
            }
        }));
    }
    // Let a few hundred writes land, then pull the plug mid-stream.
    for _ in 0..600 {
        if acked.lock().expect("lock").len() >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 50,
        "too few writes before the kill: {}",
        acked.len()
    );
    eprintln!("{} writes acknowledged before kill -9", acked.len());

    let root = s.root_token.clone();
    let key = s.unseal_key.clone();
    drop(s);
    let mut s = config_server(dir.path());
    s.root_token = root;
    s.unseal_key = key;
    let c = s.client();
    let status: Value = c
        .get(s.url("sys/seal-status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status["sealed"],
        json!(true),
        "a restarted node comes back sealed"
    );
    unseal(&s).await;

    for key in &acked {
        let r = c
            .get(s.url(&format!("secret/data/{key}")))
            .header("X-Vault-Token", &s.root_token)
            .send()
            .await
            .expect("read");
        assert_eq!(r.status().as_u16(), 200, "acknowledged write {key} lost");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["data"]["data"]["value"], json!(format!("v-{key}")));
        assert_eq!(
            v["data"]["metadata"]["version"],
            json!(1),
            "{key} written more than once"
        );
    }

    // Every acknowledged write has its response event in the audit log.
    let mut audited = BTreeSet::new();
    for ev in crate::harness::read_audit_events(&dir.path().join("audit")) {
        if ev["type"] == json!("response")
            && let Some(p) = ev["request"]["path"]
                .as_str()
                .and_then(|p| p.strip_prefix("secret/data/"))
        {
            audited.insert(p.to_string());
        }
    }
    let missing: Vec<_> = acked.iter().filter(|k| !audited.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not audited: {missing:?}"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = config_server(dir.path());
    init_unseal_mount(&mut s).await;
    let c = s.client();
    let r = c
        .post(s.url("secret/data/graceful"))
        .header("X-Vault-Token", &s.root_token)
        .json(&json!({"data": {"v": "kept"}}))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status().as_u16(), 200);
    let pid = s.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let mut exited = None;
    for _ in 0..200 {
        if let Ok(Some(code)) = s.child.try_wait() {
            exited = Some(code);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = exited.expect("server exits on SIGTERM");
    assert!(code.success(), "clean exit on SIGTERM, got {code}");

    let (root, key) = (s.root_token.clone(), s.unseal_key.clone());
    drop(s);
    let mut s = config_server(dir.path());
    s.root_token = root;
    s.unseal_key = key;
    unseal(&s).await;
    let v: Value = s
        .client()
        .get(s.url("secret/data/graceful"))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    assert_eq!(v["data"]["data"]["v"], json!("kept"));
}
