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

/// A KV write on a one-node server carries its request audit event in its
/// Raft entry and writes it to the audit log with the response event (two
/// syncs per write, not three). Here the process is aborted after that
/// entry was appended and applied and before the audit pair was written
/// (the test-build failpoint `CUSTOS_FAILPOINT=after-raft-append@<path>`),
/// while other writers run: after restart and unseal the write is there and
/// its request event is in the audit log exactly once, put back from the
/// Raft log and marked `reconciled`; every write has exactly one request
/// event; a second restart adds nothing; `custos audit verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_applied_before_its_audit_pair_is_reconciled_after_a_crash() {
    use crate::harness::{start_with_config_env, write_config};
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let failpoint = [("CUSTOS_FAILPOINT", "after-raft-append@secret/data/boom")];
    let mut s = start_with_config_env(dir.path(), &cfg, &failpoint);
    init_unseal_mount(&mut s).await;
    let c = s.client();
    let (base, token, wc) = (s.url("secret/data/"), s.root_token.clone(), c.clone());
    let write = move |key: String| {
        let (c, url, token) = (wc.clone(), format!("{base}{key}"), token.clone());
        async move {
            c.post(url)
                .header("X-Vault-Token", token)
                .json(&json!({"data": {"value": format!("v-{key}")}}))
                .send()
                .await
        }
    };
    for i in 0..20 {
        let r = write(format!("k{i}")).await.expect("write");
        assert_eq!(r.status().as_u16(), 200);
    }
    // Writers running when the process dies.
    let mut writers = Vec::new();
    for w in 0..4 {
        let write = write.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                if write(format!("w{w}-{i}")).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        write("boom".into()).await.is_err(),
        "the write that hits the failpoint gets no answer"
    );
    let status = s.child.wait().expect("wait");
    assert!(!status.success(), "aborted at the failpoint: {status:?}");
    for w in writers {
        let _ = w.await;
    }

    let (root, key) = (s.root_token.clone(), s.unseal_key.clone());
    drop(s);
    let restart = || {
        let mut s = start_with_config_env(dir.path(), &cfg, &[]);
        s.root_token = root.clone();
        s.unseal_key = key.clone();
        s
    };
    let s = restart();
    unseal(&s).await;
    let r = c
        .get(s.url("secret/data/boom"))
        .header("X-Vault-Token", &s.root_token)
        .send()
        .await
        .expect("read");
    assert_eq!(
        r.status().as_u16(),
        200,
        "the write was applied before the abort"
    );

    let requests_by_key = || {
        let mut by_key: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for ev in crate::harness::read_audit_events(&dir.path().join("audit")) {
            if ev["type"] == json!("request")
                && ev["request"]["operation"] != json!("read")
                && let Some(k) = ev["request"]["path"]
                    .as_str()
                    .and_then(|p| p.strip_prefix("secret/data/"))
            {
                by_key.entry(k.to_string()).or_default().push(ev);
            }
        }
        by_key
    };
    let by_key = requests_by_key();
    let boom = by_key
        .get("boom")
        .expect("boom's request event was put back");
    assert_eq!(boom.len(), 1, "exactly once: {boom:?}");
    assert!(
        boom[0]["reconciled"]["raft_index"]
            .as_u64()
            .is_some_and(|i| i > 0),
        "marked as put back from the Raft log: {}",
        boom[0]
    );
    for (k, evs) in &by_key {
        assert_eq!(evs.len(), 1, "{k} has {} request events", evs.len());
    }
    for i in 0..20 {
        let evs = &by_key[&format!("k{i}")];
        assert!(
            evs[0].get("reconciled").is_none(),
            "k{i} was audited at the time"
        );
    }
    // Every write that applied has its request event, and every request
    // event is of a write that applied (the writers' too).
    let listed: Value = c
        .request(
            reqwest::Method::from_bytes(b"LIST").expect("method"),
            s.url("secret/metadata/"),
        )
        .header("X-Vault-Token", &s.root_token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let stored: std::collections::BTreeSet<String> = listed["data"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let audited: std::collections::BTreeSet<String> = by_key.keys().cloned().collect();
    assert_eq!(stored, audited, "stored keys and audited writes differ");
    let reconciled = by_key
        .values()
        .filter(|e| e[0].get("reconciled").is_some())
        .count();
    eprintln!("{reconciled} request events put back after the abort");
    let counted = crate::harness::metrics_text(&s)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(r#"custos_audit_reconciled_events_total{path="file/"}"#))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(counted, Some(reconciled as f64), "counted in the metric");

    let verify = std::process::Command::new(crate::harness::BIN)
        .args(["audit", "verify", "--dir"])
        .arg(dir.path().join("audit"))
        .output()
        .expect("run custos audit verify");
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // A clean restart: nothing is put back twice.
    drop(s);
    let s = restart();
    unseal(&s).await;
    assert_eq!(requests_by_key(), by_key, "a second start adds nothing");
}
