//! Restore drills: prove that a shipped snapshot restores, unseals with the
//! source cluster's keys and holds every secret, and measure how long that
//! takes against the RTO target (`custos drill run|serve --config drill.hcl`).
//!
//! Data flow of one drill ([`run`]):
//!
//! ```text
//! drill.hcl ─ config ─▶ source: destination (local dir | S3) ─ Catalog ─▶ newest good
//!                        snapshot (or `snapshot = ...`) + its manifest
//!   download ─▶ <work>/custos-drill-dl-*/snapshot.snap, SHA-256 + size vs manifest
//!   restore  ─▶ node: fresh core in <work>/custos-drill-*, init 1-of-1, unseal,
//!               restore_archive(force) ─▶ sealed under the source keyring
//!   unseal   ─▶ the source's key shares (unseal.key_shares_file)
//!   verify   ─▶ digest per mount vs manifest, every KV version read back,
//!               transit canaries, policies, token store
//!   report   ─▶ report_dir/custos-drill-<ts>.{json,txt}, stdout, and
//!               <snapshot stem>.drill-<ts>.json next to the snapshot
//!   metrics  ─▶ custos_drill_* (serve: /metrics; run: metrics_textfile)
//! ```
//!
//! The first failed check ends the drill early when nothing after it can
//! run (no snapshot, a checksum mismatch: the node is then never opened, a
//! failed restore or unseal); the verify checks all run and the report
//! names the first that failed. The drill node and the downloaded file live
//! in temporary directories removed when the drill ends. [`serve`] runs
//! [`run`] on the config's schedule and serves the metrics until shut down.

pub mod config;
pub mod metrics;
pub mod node;
pub mod report;
pub mod source;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use config::{DrillConfig, StorageType};
use node::{DrillNode, KeyShares};
use report::{Check, ManifestSummary, Outcome, Phases, Report};

pub use config::{ConfigError, load as load_config};

/// Exit status of `drill run`: the drill passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit status of `drill run`: the config is unusable (nothing ran).
pub const EXIT_CONFIG: u8 = 1;
/// Exit status of `drill run`: the drill failed (the report says why).
pub const EXIT_FAILED: u8 = 2;

/// Report format version.
pub const REPORT_VERSION: u32 = 1;

/// A finished drill: its report and where it was written.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    pub json_path: Option<PathBuf>,
    /// Why the local report files could not be written, if they could not.
    pub write_error: Option<String>,
}

impl Finished {
    pub fn exit_code(&self) -> u8 {
        if self.report.passed() {
            EXIT_PASSED
        } else {
            EXIT_FAILED
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn stamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(&f).unwrap_or_default()
}

/// Run one drill, then publish it: report files, the upload next to the
/// snapshot, metrics (and the textfile when configured).
pub async fn run(cfg: &DrillConfig) -> Finished {
    let handle = metrics::install();
    let started = OffsetDateTime::now_utc();
    let ts = stamp(started);
    let mut report = Report {
        report_version: REPORT_VERSION,
        started: rfc3339(started),
        finished: String::new(),
        source: match cfg.source.storage_type {
            StorageType::Local => "local".into(),
            StorageType::AwsS3 => "aws-s3".into(),
        },
        destination: String::new(),
        snapshot_key: None,
        manifest: None,
        phase_seconds: Phases::default(),
        rto_seconds: 0.0,
        rto_target_seconds: cfg.rto_target.as_secs_f64(),
        checks: Vec::new(),
        result: Outcome::Failed,
        first_failure: None,
        secrets_verified: 0,
        versions_verified: 0,
        memory: None,
        uploaded_as: None,
        custos_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let dest = drill(cfg, &mut report).await;
    report.rto_seconds = report.phase_seconds.list().iter().map(|(_, s)| s).sum();
    if report.first_failed().is_none() {
        report
            .checks
            .push(if report.rto_seconds <= report.rto_target_seconds {
                Check::pass(
                    "rto",
                    format!(
                        "{:.2}s, within the {:.0}s target",
                        report.rto_seconds, report.rto_target_seconds
                    ),
                )
            } else {
                Check::fail(
                    "rto",
                    format!(
                        "{:.2}s, over the {:.0}s target",
                        report.rto_seconds, report.rto_target_seconds
                    ),
                )
            });
    }
    let finished = OffsetDateTime::now_utc();
    report.finished = rfc3339(finished);
    report.conclude();

    // Next to the snapshot first, so the local files say where it went.
    if let (Some(dest), Some(key)) = (&dest, report.snapshot_key.clone()) {
        let companion = crate::layout::companion_key(&key, &format!(".drill-{ts}.json"));
        report.uploaded_as = Some(companion.clone());
        if let Err(e) = dest
            .put_small(&companion, bytes::Bytes::from(report.to_json()))
            .await
        {
            tracing::warn!(key = %companion, error = %e, "uploading the drill report next to the snapshot failed");
            report.uploaded_as = None;
        }
    }
    let (json_path, write_error) = match report.write_files(&cfg.report_dir, &ts) {
        Ok(p) => (Some(p), None),
        Err(e) => (
            None,
            Some(format!(
                "writing the report to {}: {e}",
                cfg.report_dir.display()
            )),
        ),
    };
    metrics::record(&metrics::Measured {
        finished_unix: finished.unix_timestamp_nanos() as f64 / 1e9,
        passed: report.passed(),
        rto_seconds: report.rto_seconds,
        rto_target_seconds: report.rto_target_seconds,
        phases: report.phase_seconds.list(),
        secrets_verified: report.secrets_verified,
        memory_growth_bytes: report.memory.as_ref().map(|m| m.growth_bytes),
    });
    if let Some(path) = &cfg.metrics_textfile
        && let Err(e) = metrics::write_textfile(path, &metrics::render(&handle))
    {
        tracing::warn!(path = %path.display(), error = %e, "writing the metrics textfile failed");
    }
    tracing::info!(
        result = ?report.result,
        rto_seconds = report.rto_seconds,
        first_failure = report.first_failure.as_deref().unwrap_or(""),
        "restore drill finished"
    );
    Finished {
        report,
        json_path,
        write_error,
    }
}

/// The drill itself: fills `report`'s checks and phases. Returns the
/// source destination when one was opened (to upload the report).
async fn drill(
    cfg: &DrillConfig,
    report: &mut Report,
) -> Option<Arc<dyn crate::destination::Destination>> {
    macro_rules! fail {
        ($name:expr, $detail:expr) => {{
            report.checks.push(Check::fail($name, $detail));
        }};
    }
    let shares = match KeyShares::load(&cfg.key_shares_file) {
        Ok(s) => s,
        Err(e) => {
            fail!(
                "unseal",
                format!("cannot read the source's key shares: {e}")
            );
            return None;
        }
    };
    let dest = match source::open(&cfg.source).await {
        Ok(d) => d,
        Err(e) => {
            fail!("snapshot", format!("opening the source: {e}"));
            return None;
        }
    };
    report.destination = dest.describe();
    let picked = match source::pick(dest.as_ref(), &cfg.source).await {
        Ok(p) => p,
        Err(e) => {
            fail!("snapshot", e);
            return Some(dest);
        }
    };
    report.snapshot_key = Some(picked.key.clone());
    report.manifest = Some(ManifestSummary::of(&picked.key, &picked.manifest));
    report.checks.push(Check::pass(
        "snapshot",
        if cfg.source.snapshot.is_some() {
            format!(
                "{} (named in the config), manifest {}",
                picked.key, picked.manifest_key
            )
        } else {
            format!(
                "{}: the newest of {} snapshot(s) with a manifest",
                picked.key, picked.good_snapshots
            )
        },
    ));
    let manifest = picked.manifest;

    // download
    let staging = {
        let mut b = tempfile::Builder::new();
        b.prefix("custos-drill-dl-");
        match &cfg.work_dir {
            Some(w) => std::fs::create_dir_all(w).and_then(|_| b.tempdir_in(w)),
            None => b.tempdir(),
        }
    };
    let staging = match staging {
        Ok(d) => d,
        Err(e) => {
            fail!("download", format!("creating a work directory: {e}"));
            return Some(dest);
        }
    };
    let file = staging.path().join("snapshot.snap");
    let t = Instant::now();
    let got = source::download(dest.as_ref(), &picked.key, &file).await;
    report.phase_seconds.download = Some(t.elapsed().as_secs_f64());
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            fail!("download", e);
            return Some(dest);
        }
    };
    if got.sha256 != manifest.sha256 || got.bytes != manifest.bytes {
        fail!(
            "snapshot_sha256",
            format!(
                "snapshot sha256 {} ({} bytes) does not match its manifest ({}, {} bytes): the object is corrupt or was replaced",
                got.sha256, got.bytes, manifest.sha256, manifest.bytes
            )
        );
        return Some(dest);
    }
    report.checks.push(Check::pass(
        "snapshot_sha256",
        format!(
            "{} bytes, sha256 {} as the manifest says",
            got.bytes, got.sha256
        ),
    ));

    // restore
    let t = Instant::now();
    let node = match DrillNode::open(cfg.work_dir.as_deref()).await {
        Ok(n) => n,
        Err(e) => {
            report.phase_seconds.restore = Some(t.elapsed().as_secs_f64());
            fail!("restore", e);
            return Some(dest);
        }
    };
    let node_open_rss = report::proc_status_bytes("VmRSS");
    let restored = node.restore(&file).await;
    report.phase_seconds.restore = Some(t.elapsed().as_secs_f64());
    drop(staging);
    match restored {
        Ok(unsealed) => report.checks.push(Check::pass(
            "restore",
            format!(
                "restored into a fresh node in {}{}",
                node.dir().display(),
                if unsealed {
                    " (it opened with the drill node's own key: not another cluster's snapshot)"
                } else {
                    ""
                }
            ),
        )),
        Err(e) => {
            fail!("restore", format!("the snapshot does not restore: {e}"));
            node.shutdown().await;
            return Some(dest);
        }
    }

    // unseal
    let swept_before = verify::tokens_swept();
    let t = Instant::now();
    let unsealed = node.unseal(&shares).await;
    report.phase_seconds.unseal = Some(t.elapsed().as_secs_f64());
    drop(shares);
    match unsealed {
        Ok(n) => report.checks.push(Check::pass(
            "unseal",
            format!("the source cluster's key shares unseal the restored node ({n} used)"),
        )),
        Err(e) => {
            fail!("unseal", e);
            node.shutdown().await;
            return Some(dest);
        }
    }

    // verify
    let t = Instant::now();
    let verified = verify::verify(&node.core, &manifest, swept_before).await;
    report.phase_seconds.verify = Some(t.elapsed().as_secs_f64());
    report.secrets_verified = verified.secrets;
    report.versions_verified = verified.versions;
    report.checks.extend(verified.checks);
    report.memory = node_open_rss.and_then(report::Memory::peak_since);
    node.shutdown().await;
    Some(dest)
}

/// `drill serve`: expose the metrics on `listen_address` and run a drill at
/// every firing of the schedule until `shutdown` resolves. Each drill's
/// summary goes to `on_report`.
pub async fn serve<F>(
    cfg: DrillConfig,
    shutdown: F,
    on_report: impl Fn(&Finished),
) -> Result<(), String>
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = metrics::install();
    metrics::record_target(cfg.rto_target.as_secs_f64());
    let listener = tokio::net::TcpListener::bind(cfg.listen_address)
        .await
        .map_err(|e| format!("listen_address {}: {e}", cfg.listen_address))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("drill metrics on http://{addr}/metrics");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics::render(&h),
                )
            }
        }),
    );
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    let mut shutdown = Box::pin(shutdown);
    loop {
        let now = chrono::Utc::now();
        let Some(next) = cfg.schedule.next_after(now) else {
            break;
        };
        tracing::info!(next = %next.to_rfc3339(), "next restore drill");
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
        // A drill in progress finishes (its node is removed) before shutdown.
        let finished = run(&cfg).await;
        on_report(&finished);
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
