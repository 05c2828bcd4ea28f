//! Automated snapshots (`sys/storage/raft/snapshot-auto`, Vault
//! Enterprise's API) end to end through the real server: the dev server's
//! local schedule, the API's checks, shipping to S3 — a real Garage started
//! by scripts/test.sh (`CUSTOS_TEST_S3*`; two instances stand for two
//! regions) — with a checked copy to the second region, retention, an S3
//! outage that the next success catches up, and kill -9 between the upload
//! and the manifest.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use custos_dr::destination::Destination;
use custos_dr::layout::{self, Catalog};
use custos_dr::manifest::Manifest;
use custos_dr::{S3Config, S3Destination, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Server, dev_server, init_unseal_mount, start_with_config_env, write_config};

const SECRET: &str = "AutoSnapSecret-7c1e9a";
const API: &str = "sys/storage/raft/snapshot-auto";

async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = s.client();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = c
        .request(m, s.url(path))
        .header("X-Vault-Token", &s.root_token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn status(s: &Server, name: &str) -> Value {
    let (code, v) = call(s, "GET", &format!("{API}/status/{name}"), None).await;
    assert_eq!(code, 200, "{v}");
    v["data"].clone()
}

/// Wait until `done(status)` holds for configuration `name`.
async fn wait_status(s: &Server, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = status(s, name).await;
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} did not happen; status {st}\n{}",
            s.output()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sha256_file(p: &Path) -> String {
    format!(
        "{:x}",
        Sha256::digest(std::fs::read(p).expect("read snapshot"))
    )
}

/// Every byte of a gzip'd tar archive, unpacked (to look for plaintext).
fn unpacked(archive: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for e in tar.entries().expect("tar") {
        let mut e = e.expect("entry");
        e.read_to_end(&mut out).expect("read entry");
    }
    out
}

async fn put_secret(s: &Server, path: &str, value: &str) {
    let (code, v) = call(
        s,
        "POST",
        &format!("secret/data/{path}"),
        Some(json!({"data": {"password": value}})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
}

#[tokio::test]
async fn dev_server_ships_local_snapshots_with_manifests_and_the_api_checks_its_input() {
    let s = dev_server();
    // The dev server's own schedule runs at start.
    let st = wait_status(&s, "dev-local", "a first snapshot", |st| {
        st["last_snapshot_url"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    })
    .await;
    assert_eq!(st["consecutive_errors_since_last_success"], 0, "{st}");
    let dev_dir = s.dir.join("snapshots");
    let dev_snaps: Vec<_> = std::fs::read_dir(&dev_dir)
        .expect("snapshots dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        dev_snaps.iter().any(|n| n.ends_with(".snap")),
        "{dev_snaps:?}"
    );
    assert!(
        dev_snaps.iter().any(|n| n.ends_with(".manifest.json")),
        "{dev_snaps:?}"
    );

    // A configuration of our own, into another directory, with a secret in.
    put_secret(&s, "app/db", SECRET).await;
    put_secret(&s, "app/db", "second-version").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snaps");
    let (code, v) = call(
        &s,
        "POST",
        &format!("{API}/config/mine"),
        Some(json!({"storage_type": "local", "path_prefix": path.display().to_string(),
            "interval": "1h", "retain": 2, "local_max_space": 1_000_000_000u64, "file_prefix": "custos"})),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let st = wait_status(&s, "mine", "a snapshot", |st| {
        st["last_snapshot_url"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    })
    .await;
    let dest = custos_dr::LocalDestination::open(&path).expect("open");
    let cat = Catalog::load(&dest, "").await.expect("catalog");
    let newest = cat.newest_good().expect("a good snapshot");
    assert!(newest.key().starts_with("custos-"), "{}", newest.key());
    let manifest = Manifest::parse(
        &dest
            .get_small(&newest.manifest_key(), 1 << 20)
            .await
            .expect("manifest"),
    )
    .expect("parse");
    let snap_path = path.join(newest.key());
    assert_eq!(manifest.sha256, sha256_file(&snap_path));
    assert_eq!(st["last_snapshot_sha256"], json!(manifest.sha256));
    assert_eq!(
        manifest.bytes,
        std::fs::metadata(&snap_path).expect("meta").len()
    );
    assert_eq!(manifest.config, "mine");
    let kv = manifest
        .state
        .mounts
        .iter()
        .find(|m| m.path == "secret/")
        .expect("secret/ in the manifest");
    assert_eq!(
        (kv.secrets, kv.versions, kv.kv_version),
        (1, 2, 2),
        "{kv:?}"
    );
    // Values stay barrier-encrypted inside the archive.
    let bytes = std::fs::read(&snap_path).expect("read");
    let plain = unpacked(&bytes);
    assert!(
        !plain.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "a secret is in clear in the snapshot"
    );

    // LIST, read (credentials never shown), delete.
    let (code, v) = call(&s, "LIST", &format!("{API}/config"), None).await;
    assert_eq!(code, 200, "{v}");
    let names: BTreeSet<String> = serde_json::from_value(v["data"]["keys"].clone()).expect("keys");
    assert!(
        names.contains("mine") && names.contains("dev-local"),
        "{names:?}"
    );
    let (code, v) = call(&s, "GET", &format!("{API}/config/mine"), None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["interval"], 3600);
    assert_eq!(v["data"]["retain"], 2);

    // Bad input: a 400 naming the field, nothing stored.
    for (body, field) in [
        (
            json!({"storage_type": "ftp", "interval": 60}),
            "storage_type",
        ),
        (
            json!({"storage_type": "local", "interval": 60}),
            "path_prefix",
        ),
        (
            json!({"storage_type": "local", "path_prefix": "/tmp/x"}),
            "interval",
        ),
        (
            json!({"storage_type": "aws-s3", "interval": 60}),
            "aws_s3_bucket",
        ),
        (
            json!({"storage_type": "local", "path_prefix": "/tmp/x", "schedule": "every tuesday"}),
            "schedule",
        ),
        (
            json!({"storage_type": "local", "path_prefix": "/tmp/x", "interval": 60, "retain": "many"}),
            "retain",
        ),
    ] {
        let (code, v) = call(&s, "POST", &format!("{API}/config/bad"), Some(body.clone())).await;
        assert_eq!(code, 400, "{body} → {v}");
        assert!(
            v.to_string().contains(field),
            "{body} → {v} should name {field}"
        );
    }
    let (code, _) = call(&s, "GET", &format!("{API}/config/bad"), None).await;
    assert_eq!(code, 404);
    let (code, _) = call(&s, "GET", &format!("{API}/status/bad"), None).await;
    assert_eq!(code, 404);

    // sudo is needed, as in Vault.
    let (code, v) = call(
        &s,
        "POST",
        "sys/policies/acl/snap-no-sudo",
        Some(json!({"policy": "path \"sys/storage/raft/snapshot-auto/*\" { capabilities = [\"create\", \"read\", \"update\", \"list\"] }"})),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let (_, t) = call(
        &s,
        "POST",
        "auth/token/create",
        Some(json!({"policies": ["snap-no-sudo"]})),
    )
    .await;
    let token = t["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = s
        .client()
        .post(s.url(&format!("{API}/config/nosudo")))
        .header("X-Vault-Token", token)
        .json(&json!({"storage_type": "local", "path_prefix": "/tmp/x", "interval": 60}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 403);

    let (code, _) = call(&s, "DELETE", &format!("{API}/config/mine"), None).await;
    assert_eq!(code, 204);
    let (code, _) = call(&s, "GET", &format!("{API}/status/mine"), None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn kill_9_between_upload_and_manifest_leaves_no_good_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let cfg = write_config(&dir);
    let snaps = dir.join("snaps");
    let mut s = start_with_config_env(&dir, &cfg, &[]);
    init_unseal_mount(&mut s).await;
    put_secret(&s, "k", SECRET).await;
    // Restart with the failpoint, then configure: the first run dies after
    // the snapshot object is complete and before its manifest.
    s.kill9();
    let (unseal_key, root) = (s.unseal_key.clone(), s.root_token.clone());
    let mut s = start_with_config_env(&dir, &cfg, &[("CUSTOS_DR_FAILPOINT", "after-upload")]);
    s.unseal_key = unseal_key.clone();
    s.root_token = root.clone();
    crate::harness::unseal(&s).await;
    let (code, v) = call(
        &s,
        "POST",
        &format!("{API}/config/crash"),
        Some(json!({"storage_type": "local", "path_prefix": snaps.display().to_string(), "interval": "1h"})),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the failpoint never fired:\n{}",
            s.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dest = custos_dr::LocalDestination::open(&snaps).expect("open");
    let cat = Catalog::load(&dest, "").await.expect("catalog");
    assert_eq!(cat.snapshots.len(), 1, "the snapshot object was written");
    assert!(
        cat.newest_good().is_none(),
        "a snapshot without a manifest counts as good"
    );

    // Back without the failpoint: the configuration is still there (it is
    // replicated state) and the next run writes a good snapshot.
    let mut s = start_with_config_env(&dir, &cfg, &[]);
    s.unseal_key = unseal_key;
    s.root_token = root;
    crate::harness::unseal(&s).await;
    wait_status(&s, "crash", "a snapshot after the crash", |st| {
        st["last_snapshot_url"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    })
    .await;
    let cat = Catalog::load(&dest, "").await.expect("catalog");
    let good: Vec<_> = cat.good().collect();
    assert_eq!(good.len(), 1, "{:?}", cat.snapshots);
    assert_eq!(
        cat.snapshots.len(),
        2,
        "the crashed one waits out its grace period"
    );
}

/// Garage's S3 endpoints from scripts/test.sh, or `None` (skip) outside CI.
fn garage() -> Option<(S3Config, S3Config)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("CUSTOS_TEST_S3") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but CUSTOS_TEST_S3 is unset: scripts/test.sh starts Garage"
        );
        eprintln!("skipping: CUSTOS_TEST_S3 is unset (scripts/test.sh starts Garage)");
        return None;
    };
    let cfg = |endpoint: String, p: &str| S3Config {
        aws_s3_bucket: var(&format!("CUSTOS_TEST_S3{p}_BUCKET")).expect("bucket"),
        aws_s3_region: var(&format!("CUSTOS_TEST_S3{p}_REGION")).expect("region"),
        aws_s3_endpoint: Some(endpoint),
        aws_s3_force_path_style: true,
        aws_s3_server_side_encryption: false,
        aws_s3_kms_key: None,
        aws_access_key_id: var(&format!("CUSTOS_TEST_S3{p}_ACCESS_KEY")),
        aws_secret_access_key: var(&format!("CUSTOS_TEST_S3{p}_SECRET_KEY")).map(SecretString::new),
        aws_session_token: None,
    };
    let copy_endpoint = var("CUSTOS_TEST_S3_COPY_ENDPOINT").expect("copy endpoint");
    Some((cfg(endpoint, ""), cfg(copy_endpoint, "_COPY")))
}

fn api_fields(c: &S3Config, prefix: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(format!("{prefix}aws_s3_bucket"), json!(c.aws_s3_bucket));
    m.insert(format!("{prefix}aws_s3_region"), json!(c.aws_s3_region));
    m.insert(format!("{prefix}aws_s3_endpoint"), json!(c.aws_s3_endpoint));
    m.insert(format!("{prefix}aws_s3_force_path_style"), json!(true));
    m.insert(
        format!("{prefix}aws_access_key_id"),
        json!(c.aws_access_key_id),
    );
    m.insert(
        format!("{prefix}aws_secret_access_key"),
        json!(
            c.aws_secret_access_key
                .as_ref()
                .map(|k| k.expose().to_string())
        ),
    );
    m
}

#[tokio::test]
async fn s3_snapshots_copy_to_a_second_region_keep_retain_and_catch_up_after_an_outage() {
    let Some((primary, copy)) = garage() else {
        return;
    };
    let s = dev_server();
    put_secret(&s, "s3/app", SECRET).await;
    let prefix = format!("it-{}", uuid_like());
    let mut body = api_fields(&primary, "");
    body.extend(api_fields(&copy, "copy_to_"));
    body.insert("storage_type".into(), json!("aws-s3"));
    body.insert("path_prefix".into(), json!(prefix));
    body.insert("interval".into(), json!(10));
    body.insert("retain".into(), json!(2));
    // The copy's endpoint is down at first (a closed port): the primary
    // succeeds, the copy fails, and the status says so.
    let real_copy_endpoint = body["copy_to_aws_s3_endpoint"].clone();
    body.insert(
        "copy_to_aws_s3_endpoint".into(),
        json!("http://127.0.0.1:9"),
    );
    let (code, v) = call(
        &s,
        "POST",
        &format!("{API}/config/s3"),
        Some(Value::Object(body.clone())),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let st = wait_status(&s, "s3", "a copy failure", |st| {
        st["copy_last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(
        st["last_snapshot_url"]
            .as_str()
            .unwrap_or("")
            .starts_with("s3://"),
        "{st}"
    );
    let err = st["copy_last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("127.0.0.1:9"),
        "the error names the endpoint: {err}"
    );
    let secret_key = primary
        .aws_secret_access_key
        .as_ref()
        .map(|k| k.expose().to_string())
        .unwrap_or_default();
    assert!(
        !st.to_string().contains(&secret_key),
        "a credential in the status"
    );
    let (_, shown) = call(&s, "GET", &format!("{API}/config/s3"), None).await;
    assert!(
        !shown.to_string().contains(&secret_key),
        "a credential in a config read"
    );

    // The copy comes back: the next runs catch up, and retention keeps 2.
    body.insert("copy_to_aws_s3_endpoint".into(), real_copy_endpoint);
    let (code, v) = call(
        &s,
        "POST",
        &format!("{API}/config/s3"),
        Some(Value::Object(body)),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let src = S3Destination::new(&primary).await.expect("primary");
    let dst = S3Destination::new(&copy).await.expect("copy");
    let list_prefix = format!("{prefix}/");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = Catalog::load(&src, &list_prefix)
            .await
            .expect("list primary");
        let b = Catalog::load(&dst, &list_prefix).await.expect("list copy");
        let good_a: Vec<String> = a.good().map(|e| e.key().to_string()).collect();
        let good_b: Vec<String> = b.good().map(|e| e.key().to_string()).collect();
        let st = status(&s, "s3").await;
        if good_a.len() == 2 && good_b == good_a && st["copy_last_error"] == json!("") {
            // Every copied snapshot matches its manifest, byte for byte.
            for key in &good_b {
                let m = Manifest::parse(
                    &dst.get_small(&layout::manifest_key(key), 1 << 20)
                        .await
                        .expect("m"),
                )
                .expect("manifest");
                let mut body = dst.download(key).await.expect("download");
                let mut h = Sha256::new();
                use futures::StreamExt;
                while let Some(chunk) = body.next().await {
                    h.update(chunk.expect("chunk"));
                }
                assert_eq!(format!("{:x}", h.finalize()), m.sha256, "{key}");
                assert_eq!(&m.snapshot_key, key);
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up: primary {good_a:?}, copy {good_b:?}, status {st}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Metrics name the configuration, never the bucket or a key.
    let metrics = crate::harness::metrics_text(&s).await;
    assert!(
        metrics.contains(
            "custos_snapshot_last_success_timestamp_seconds{config=\"s3\",destination=\"copy\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("custos_snapshot_failures_total{config=\"s3\",destination=\"copy\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&primary.aws_s3_bucket),
        "a bucket name in the metrics"
    );
    let (code, _) = call(&s, "DELETE", &format!("{API}/config/s3"), None).await;
    assert_eq!(code, 204);
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}")
}
