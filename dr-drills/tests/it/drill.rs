//! Restore drills end to end, in-process: a source cluster ships a
//! snapshot ([`crate::fixture`]) to a local directory or to Garage, and
//! `custos_dr::drill::run` restores it into a fresh node and checks it.
//! Each failure case asserts that the report names the right first check.

use std::path::Path;

use custos_dr::drill::{self, config::DrillConfig, report::Outcome};
use custos_dr::{Destination, LocalDestination, S3Destination, layout};

use crate::fixture::{KV1_KEYS, KV2_NAMED, SourceCluster};

const BULK: usize = 20;

/// A drill.hcl for a local directory source.
fn local_config(dir: &Path, snapshots: &Path, keys: &Path, extra: &str) -> DrillConfig {
    let text = format!(
        r#"
source {{
  storage_type = "local"
  path_prefix  = "{}"
}}
unseal {{ key_shares_file = "{}" }}
rto_target       = "15m"
report_dir       = "{}"
work_dir         = "{}"
metrics_textfile = "{}"
{extra}
"#,
        snapshots.display(),
        keys.display(),
        dir.join("reports").display(),
        dir.join("work").display(),
        dir.join("textfile/custos_drill.prom").display(),
    );
    let file = dir.join("drill.hcl");
    std::fs::write(&file, text).unwrap();
    drill::load_config(&file).unwrap_or_else(|e| panic!("{e}"))
}

fn names(r: &custos_dr::drill::report::Report) -> Vec<&str> {
    r.checks.iter().map(|c| c.name.as_str()).collect()
}

fn first_failure(r: &custos_dr::drill::report::Report) -> (&str, &str) {
    let c = r.first_failed().expect("a failed check");
    (c.name.as_str(), c.detail.as_str())
}

/// The work dir holds nothing once a drill ended (node and download gone).
fn assert_work_dir_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir.join("work"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in work dir: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_passes_from_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(BULK).await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let (key, manifest) = source.ship(&dest, "").await;
    let cfg = local_config(dir.path(), &snaps, &source.keys_file(dir.path()), "");
    source.stop().await;

    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(r.result, Outcome::Passed, "{}", r.summary());
    assert_eq!(done.exit_code(), drill::EXIT_PASSED);
    assert_eq!(r.snapshot_key.as_deref(), Some(key.as_str()));
    assert_eq!(
        names(r),
        [
            "snapshot",
            "snapshot_sha256",
            "restore",
            "unseal",
            "state_digest",
            "kv kv1/",
            "kv secret/",
            "transit_canaries",
            "policies",
            "token_store",
            "rto"
        ]
    );
    // secret/: app/db (v2 deleted, v3; v1 destroyed), app/api (2), team/x/y, bulk.
    let kv2 = manifest
        .state
        .mounts
        .iter()
        .find(|m| m.path == "secret/")
        .unwrap();
    assert_eq!(kv2.secrets, KV2_NAMED + BULK as u64);
    assert_eq!(kv2.versions, 2 + 2 + 1 + BULK as u64);
    assert_eq!(r.secrets_verified, kv2.secrets + KV1_KEYS);
    assert_eq!(r.versions_verified, kv2.versions + KV1_KEYS);
    let kv_check = r.checks.iter().find(|c| c.name == "kv secret/").unwrap();
    assert!(
        kv_check.detail.contains("of which 1 deleted"),
        "{kv_check:?}"
    );
    let canaries = r
        .checks
        .iter()
        .find(|c| c.name == "transit_canaries")
        .unwrap();
    assert!(
        canaries.detail.starts_with("1 transit canaries"),
        "{canaries:?}"
    );
    assert!(r.phase_seconds.verify.is_some() && r.rto_seconds > 0.0);
    assert!(r.first_failure.is_none());

    // The report: JSON + txt in report_dir, JSON next to the snapshot.
    let json_path = done.json_path.clone().expect("report written");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json["result"], "passed");
    assert_eq!(json["snapshot_key"], key.as_str());
    assert_eq!(json["rto_target_seconds"], 900.0);
    assert!(json["phase_seconds"]["restore"].as_f64().is_some());
    let txt = std::fs::read_to_string(json_path.with_extension("txt")).unwrap();
    assert_eq!(txt, r.summary());
    assert!(txt.starts_with("Restore drill PASSED"), "{txt}");
    let uploaded = r
        .uploaded_as
        .clone()
        .expect("uploaded next to the snapshot");
    assert!(uploaded.starts_with(layout::snapshot_stem(&key).unwrap()));
    let copy = dest.get_small(&uploaded, 1 << 20).await.unwrap();
    let copy: serde_json::Value = serde_json::from_slice(&copy).unwrap();
    assert_eq!(copy["result"], "passed");
    // A companion of the snapshot, not a snapshot.
    let cat = layout::Catalog::load(&dest, "").await.unwrap();
    assert_eq!(cat.snapshots.len(), 1);
    assert_eq!(cat.snapshots[0].companions.len(), 1);

    // Metrics textfile.
    let prom = std::fs::read_to_string(dir.path().join("textfile/custos_drill.prom")).unwrap();
    for line in [
        "custos_drill_last_result 1",
        "custos_drill_rto_target_seconds 900",
        "custos_drill_phase_seconds{phase=\"restore\"}",
        "custos_drill_last_success_timestamp_seconds",
        "custos_drill_runs_total{result=\"passed\"}",
    ] {
        assert!(prom.contains(line), "{line} missing from\n{prom}");
    }
    assert!(!prom.contains("custos_core_"), "{prom}");
    assert_work_dir_empty(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_passes_from_garage_s3() {
    let Some(env) = crate::support::s3_env("drill_passes_from_garage_s3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(BULK).await;
    let dest = S3Destination::new(&env.primary).await.unwrap();
    let prefix = crate::support::unique_prefix("drill");
    let prefix = prefix.trim_end_matches('/');
    let (key, _) = source.ship(&dest, prefix).await;
    let keys = source.keys_file(dir.path());
    source.stop().await;
    let s3 = &env.primary;
    let text = format!(
        r#"
source {{
  storage_type            = "aws-s3"
  path_prefix             = "{prefix}"
  aws_s3_bucket           = "{}"
  aws_s3_region           = "{}"
  aws_s3_endpoint         = "{}"
  aws_s3_force_path_style = true
  aws_access_key_id       = "{}"
  aws_secret_access_key   = "{}"
}}
unseal {{ key_shares_file = "{}" }}
report_dir = "{}"
work_dir   = "{}"
"#,
        s3.aws_s3_bucket,
        s3.aws_s3_region,
        s3.aws_s3_endpoint.as_deref().unwrap(),
        s3.aws_access_key_id.as_deref().unwrap(),
        s3.aws_secret_access_key.as_ref().unwrap().expose(),
        keys.display(),
        dir.path().join("reports").display(),
        dir.path().join("work").display(),
    );
    let file = dir.path().join("drill.hcl");
    std::fs::write(&file, text).unwrap();
    let cfg = drill::load_config(&file).unwrap();
    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(r.result, Outcome::Passed, "{}", r.summary());
    assert_eq!(r.snapshot_key.as_deref(), Some(key.as_str()));
    assert!(
        r.destination.contains(&s3.aws_s3_bucket),
        "{}",
        r.destination
    );
    let uploaded = r.uploaded_as.clone().expect("uploaded");
    let copy = dest.get_small(&uploaded, 1 << 20).await.unwrap();
    assert!(!copy.is_empty());
    for k in [uploaded, layout::manifest_key(&key), key] {
        dest.delete(&k).await.unwrap();
    }
    assert_work_dir_empty(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_fails_the_checksum_and_never_opens_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(0).await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let (key, _) = source.ship(&dest, "").await;
    let cfg = local_config(dir.path(), &snaps, &source.keys_file(dir.path()), "");
    source.stop().await;
    // Flip one byte in the middle of the object.
    let path = snaps.join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(done.exit_code(), drill::EXIT_FAILED);
    let (name, detail) = first_failure(r);
    assert_eq!(name, "snapshot_sha256");
    assert!(detail.contains("does not match its manifest"), "{detail}");
    assert!(r.phase_seconds.restore.is_none(), "a node was opened");
    assert!(!names(r).contains(&"restore"));
    assert!(
        r.first_failure
            .as_deref()
            .unwrap()
            .starts_with("snapshot_sha256: snapshot sha256 ")
    );
    assert!(done.json_path.is_some());
    let prom = std::fs::read_to_string(dir.path().join("textfile/custos_drill.prom")).unwrap();
    assert!(prom.contains("custos_drill_last_result 0"), "{prom}");
    assert_work_dir_empty(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_unseal_keys_fail_the_unseal_check() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(0).await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    source.ship(&dest, "").await;
    let keys = source.keys_file(dir.path());
    source.stop().await;
    // Another share of the right length.
    let wrong = base64::engine::general_purpose::STANDARD.encode([0x5au8; 33]);
    std::fs::write(&keys, format!("{wrong}\n")).unwrap();
    let cfg = local_config(dir.path(), &snaps, &keys, "");

    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(done.exit_code(), drill::EXIT_FAILED);
    let (name, detail) = first_failure(r);
    assert_eq!(name, "unseal", "{}", r.summary());
    assert!(detail.contains("do not unseal"), "{detail}");
    assert!(
        !detail.contains(&wrong),
        "a key share leaked into the report"
    );
    assert!(names(r).contains(&"restore"));
    assert_work_dir_empty(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_manifest_digest_names_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(0).await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let (_, mut manifest) = source.ship(&dest, "").await;
    let m = manifest
        .state
        .mounts
        .iter_mut()
        .find(|m| m.path == "kv1/")
        .unwrap();
    m.sha256 = "0".repeat(64);
    source.write_manifest(&dest, &manifest).await;
    let cfg = local_config(dir.path(), &snaps, &source.keys_file(dir.path()), "");
    source.stop().await;

    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(done.exit_code(), drill::EXIT_FAILED);
    let (name, detail) = first_failure(r);
    assert_eq!(name, "state_digest", "{}", r.summary());
    assert!(detail.starts_with("mount kv1/: digest "), "{detail}");
    // The other checks still ran and passed.
    assert!(
        r.checks
            .iter()
            .filter(|c| c.name != "state_digest")
            .all(|c| c.passed),
        "{}",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_a_manifest_is_never_picked() {
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(0).await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let (older, _) = source.ship(&dest, "").await;
    source
        .put_test_secret("secret/data/later", "written after the first snapshot")
        .await;
    let (newer, _) = source.ship(&dest, "").await;
    assert_ne!(older, newer);
    // The newer one's upload "never finished": no manifest.
    dest.delete(&layout::manifest_key(&newer)).await.unwrap();
    let keys = source.keys_file(dir.path());
    source.stop().await;

    let cfg = local_config(dir.path(), &snaps, &keys, "");
    let done = drill::run(&cfg).await;
    assert_eq!(
        done.report.result,
        Outcome::Passed,
        "{}",
        done.report.summary()
    );
    assert_eq!(done.report.snapshot_key.as_deref(), Some(older.as_str()));

    // Named explicitly, it is refused too.
    let name = newer.clone();
    let cfg = local_config(dir.path(), &snaps, &keys, "");
    let cfg = DrillConfig {
        source: custos_dr::drill::config::SourceConfig {
            snapshot: Some(name),
            ..cfg.source
        },
        ..cfg
    };
    let done = drill::run(&cfg).await;
    let (check, detail) = first_failure(&done.report);
    assert_eq!(check, "snapshot");
    assert!(detail.contains("has no manifest"), "{detail}");

    // Without any manifest, nothing is picked.
    dest.delete(&layout::manifest_key(&older)).await.unwrap();
    let cfg = local_config(dir.path(), &snaps, &keys, "");
    let done = drill::run(&cfg).await;
    let (check, detail) = first_failure(&done.report);
    assert_eq!(check, "snapshot");
    assert!(
        detail.contains("2 snapshot(s) without a manifest"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expired_since_the_snapshot_does_not_fail_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let source = SourceCluster::start(0).await;
    source.create_token("2s").await;
    let snaps = dir.path().join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let (_, manifest) = source.ship(&dest, "").await;
    let cfg = local_config(dir.path(), &snaps, &source.keys_file(dir.path()), "");
    source.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let done = drill::run(&cfg).await;
    let r = &done.report;
    assert_eq!(r.result, Outcome::Passed, "{}", r.summary());
    let tokens = r.checks.iter().find(|c| c.name == "token_store").unwrap();
    assert!(
        tokens
            .detail
            .contains(&format!("of the manifest's {}", manifest.state.tokens)),
        "{tokens:?}"
    );
}

/// Not a test: ships a snapshot of `CUSTOS_DRILL_MEASURE_SECRETS` (default
/// 100,000) one-version KV v2 secrets to `$CUSTOS_DRILL_MEASURE_DIR/snapshots`
/// with the unseal key in `keys.txt` beside it, for measuring a drill with
/// the release binary under `/usr/bin/time -v`:
///
/// ```text
/// CUSTOS_DRILL_MEASURE_DIR=/tmp/drill-100k cargo test -p custos-dr --test it \
///   measure_fixture -- --ignored --nocapture
/// /usr/bin/time -v target/release/custos drill run --config /tmp/drill-100k/drill.hcl
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement fixture, run by hand"]
async fn measure_fixture() {
    let Ok(out) = std::env::var("CUSTOS_DRILL_MEASURE_DIR") else {
        eprintln!("skipping: CUSTOS_DRILL_MEASURE_DIR is not set");
        return;
    };
    let n: usize = std::env::var("CUSTOS_DRILL_MEASURE_SECRETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let out = Path::new(&out);
    let source = SourceCluster::start(0).await;
    let t = std::time::Instant::now();
    source.put_many("secret/data/bulk", n).await;
    eprintln!("wrote {n} secrets in {:.1}s", t.elapsed().as_secs_f64());
    let snaps = out.join("snapshots");
    let dest = LocalDestination::open(&snaps).unwrap();
    let t = std::time::Instant::now();
    let (key, m) = source.ship(&dest, "").await;
    eprintln!(
        "shipped {key}: {} bytes in {:.1}s",
        m.bytes,
        t.elapsed().as_secs_f64()
    );
    let keys = source.keys_file(out);
    source.stop().await;
    std::fs::write(
        out.join("drill.hcl"),
        format!(
            "source {{\n  storage_type = \"local\"\n  path_prefix = \"{}\"\n}}\nunseal {{ key_shares_file = \"{}\" }}\nreport_dir = \"{}\"\nwork_dir = \"{}\"\n",
            snaps.display(),
            keys.display(),
            out.join("reports").display(),
            out.join("work").display()
        ),
    )
    .unwrap();
}
