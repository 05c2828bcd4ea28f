//! One automated snapshot: take it, ship it, write its manifest, prune,
//! copy. See the module docs of [`super`] for the order and why.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use custos_core::core::Core;
use custos_core::engines::transit::canary::make_canaries;
use custos_core::raft_snapshot;
use futures::StreamExt;

use super::config::{AutoConfig, StorageType};
use super::metrics as m;
use crate::destination::Destination;
use crate::error::DestinationError;
use crate::layout::{self, Catalog};
use crate::manifest::{MANIFEST_VERSION, Manifest};
use crate::retention::{self, RetentionPolicy};
use crate::{DestinationKind, copy};

/// What a successful run did.
pub(super) struct Done {
    pub url: String,
    pub bytes: u64,
    pub sha256: String,
    pub raft_index: u64,
    /// Good snapshots kept at the primary destination.
    pub retained: usize,
    /// The copy destination: `Ok(seconds behind the primary)` or the error;
    /// `None` without one.
    pub copy: Option<Result<f64, String>>,
}

/// A key prefix as listings take it: `a/b/`, or empty.
pub(super) fn list_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

fn url_of(dest: &dyn Destination, cfg: &AutoConfig, key: &str) -> String {
    match (dest.kind(), cfg.s3.as_ref()) {
        (DestinationKind::S3, Some(s3)) => format!("s3://{}/{key}", s3.bucket),
        _ => format!("file://{}/{key}", cfg.path_prefix.trim_end_matches('/')),
    }
}

fn fail(config: &str, destination: &str, kind: &str, message: String) -> String {
    ::metrics::counter!(m::FAILURES, "config" => config.to_string(), "destination" => destination.to_string(), "kind" => kind.to_string()).increment(1);
    ::metrics::counter!(m::RUNS, "config" => config.to_string(), "destination" => destination.to_string(), "outcome" => "failure").increment(1);
    message
}

fn dest_fail(config: &str, destination: &str, what: &str, e: DestinationError) -> String {
    let kind = e.kind().as_str();
    fail(config, destination, kind, format!("{what}: {e}"))
}

/// `CUSTOS_DR_FAILPOINT=<step>`: the process dies at once (SIGABRT, as
/// abrupt as kill -9) at that step — how the tests prove that a snapshot
/// whose manifest was never written never counts.
fn failpoint(step: &str) {
    if std::env::var("CUSTOS_DR_FAILPOINT").is_ok_and(|v| v == step) {
        tracing::error!(step, "CUSTOS_DR_FAILPOINT: aborting the process");
        std::process::abort();
    }
}

/// Take, ship and record one snapshot of `core` for configuration `name`.
/// `Err` is the message `status` shows (no secret in it).
pub(super) async fn snapshot(
    core: &Arc<Core>,
    name: &str,
    cfg: &AutoConfig,
    started: DateTime<Utc>,
) -> Result<Done, String> {
    let clock = Instant::now();
    let (dest, prefix) = cfg
        .primary()
        .await
        .map_err(|e| dest_fail(name, "primary", "opening the destination", e))?;
    // Canaries first: key versions only grow, so every canary's version
    // is in the snapshot taken after it.
    let canaries = make_canaries(core).await.map_err(|e| {
        fail(
            name,
            "primary",
            "snapshot",
            format!("transit canaries: {e}"),
        )
    })?;
    let export = raft_snapshot::export(core).await.map_err(|e| {
        fail(
            name,
            "primary",
            "snapshot",
            format!("taking the snapshot: {e}"),
        )
    })?;
    let key = layout::snapshot_key(&prefix, &cfg.file_prefix, started.into());
    let url = url_of(dest.as_ref(), cfg, &key);
    let info = export.info.clone();
    let uploaded = dest.upload(&key, export.archive.boxed()).await;
    let digest = export.digest.await;
    let uploaded =
        uploaded.map_err(|e| dest_fail(name, "primary", &format!("uploading {url}"), e))?;
    let state = match digest {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            let _ = dest.delete(&key).await;
            return Err(fail(
                name,
                "primary",
                "manifest",
                format!("digesting the snapshot: {e}"),
            ));
        }
        Err(e) => {
            let _ = dest.delete(&key).await;
            return Err(fail(
                name,
                "primary",
                "manifest",
                format!("digest task: {e}"),
            ));
        }
    };
    if cfg.storage_type == StorageType::Local && cfg.local_max_space > 0 {
        let used: u64 = dest
            .list("")
            .await
            .map_err(|e| dest_fail(name, "primary", "listing the snapshot directory", e))?
            .iter()
            .filter(|o| o.key.ends_with(layout::SNAPSHOT_SUFFIX))
            .map(|o| o.size)
            .sum();
        if used > cfg.local_max_space {
            let _ = dest.delete(&key).await;
            return Err(fail(
                name,
                "primary",
                "local_max_space",
                format!(
                    "snapshots in {} would take {used} bytes, over local_max_space {}; the new snapshot was removed",
                    cfg.path_prefix, cfg.local_max_space
                ),
            ));
        }
    }
    failpoint("after-upload");
    let now = Utc::now();
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        snapshot_key: key.clone(),
        sha256: uploaded.sha256.clone(),
        bytes: uploaded.bytes,
        snapshot_id: info.snapshot_id.clone(),
        raft_index: info.last_log_index,
        raft_term: info.last_log_term,
        created: started.to_rfc3339_opts(SecondsFormat::Secs, true),
        completed: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        cluster_name: core.opts.cluster_name.clone(),
        node: core.node_label(),
        config: name.to_string(),
        custos_version: env!("CARGO_PKG_VERSION").to_string(),
        state,
        transit_canaries: canaries,
    };
    dest.put_small(&layout::manifest_key(&key), manifest.to_bytes().into())
        .await
        .map_err(|e| {
            dest_fail(
                name,
                "primary",
                &format!("writing the manifest of {url}"),
                e,
            )
        })?;
    let labels = [
        ("config", name.to_string()),
        ("destination", "primary".to_string()),
    ];
    ::metrics::gauge!(m::LAST_SUCCESS, &labels).set(now.timestamp_millis() as f64 / 1000.0);
    ::metrics::counter!(m::RUNS, "config" => name.to_string(), "destination" => "primary", "outcome" => "success").increment(1);
    ::metrics::gauge!(m::BYTES, "config" => name.to_string()).set(uploaded.bytes as f64);
    ::metrics::gauge!(m::SECRETS, "config" => name.to_string()).set(manifest.state.secrets as f64);
    ::metrics::histogram!(m::DURATION, "config" => name.to_string())
        .record(clock.elapsed().as_secs_f64());
    tracing::info!(
        config = %name,
        url = %url,
        bytes = uploaded.bytes,
        parts = uploaded.parts,
        raft_index = info.last_log_index,
        secrets = manifest.state.secrets,
        took_ms = clock.elapsed().as_millis() as u64,
        "automated snapshot written"
    );
    // Retention failing does not make the snapshot bad; it is logged and
    // retried with the next snapshot.
    let policy = RetentionPolicy::new(cfg.retain as usize);
    let retained = match retention::apply(dest.as_ref(), &list_prefix(&prefix), &policy).await {
        Ok(r) => r.plan.keep.len(),
        Err(e) => {
            tracing::warn!(config = %name, error = %e, "snapshot retention failed at the primary destination");
            0
        }
    };
    ::metrics::gauge!(m::RETAINED, &labels).set(retained as f64);
    let copy = match cfg.copy_to().await {
        Ok(None) => None,
        Ok(Some((target, target_prefix))) => Some(
            copy_to(
                name,
                cfg,
                dest.as_ref(),
                &prefix,
                target.as_ref(),
                &target_prefix,
            )
            .await,
        ),
        Err(e) => Some(Err(dest_fail(
            name,
            "copy",
            "opening the copy_to destination",
            e,
        ))),
    };
    Ok(Done {
        url,
        bytes: uploaded.bytes,
        sha256: uploaded.sha256,
        raft_index: info.last_log_index,
        retained,
        copy,
    })
}

/// Fill the copy destination with every good snapshot it lacks (a copy
/// that fell behind during an outage catches up here), prune it, and say
/// how far behind the primary it is.
async fn copy_to(
    name: &str,
    cfg: &AutoConfig,
    source: &dyn Destination,
    source_prefix: &str,
    target: &dyn Destination,
    target_prefix: &str,
) -> Result<f64, String> {
    let (sp, tp) = (list_prefix(source_prefix), list_prefix(target_prefix));
    let copied = copy::copy_missing(source, &sp, target, &tp, cfg.retain as usize).await;
    let labels = [
        ("config", name.to_string()),
        ("destination", "copy".to_string()),
    ];
    let behind = async {
        let newest = |c: &Catalog| c.newest_good().map(|e| e.taken_at);
        let src = Catalog::load(source, &sp)
            .await
            .ok()
            .and_then(|c| newest(&c));
        let dst = Catalog::load(target, &tp)
            .await
            .ok()
            .and_then(|c| newest(&c));
        match (src, dst) {
            (Some(s), Some(d)) => s.duration_since(d).map(|x| x.as_secs_f64()).unwrap_or(0.0),
            (Some(s), None) => s.elapsed().map(|x| x.as_secs_f64()).unwrap_or(0.0).max(1.0),
            _ => 0.0,
        }
    };
    match copied {
        Ok(reports) => {
            let policy = RetentionPolicy::new(cfg.retain as usize);
            let retained = match retention::apply(target, &tp, &policy).await {
                Ok(r) => r.plan.keep.len(),
                Err(e) => {
                    tracing::warn!(config = %name, error = %e, "snapshot retention failed at the copy_to destination");
                    0
                }
            };
            for r in &reports {
                tracing::info!(config = %name, key = %r.target_key, bytes = r.bytes, took_ms = r.duration.as_millis() as u64, "snapshot copied to the copy_to destination");
            }
            ::metrics::gauge!(m::RETAINED, &labels).set(retained as f64);
            ::metrics::gauge!(m::LAST_SUCCESS, &labels)
                .set(Utc::now().timestamp_millis() as f64 / 1000.0);
            ::metrics::counter!(m::RUNS, "config" => name.to_string(), "destination" => "copy", "outcome" => "success").increment(1);
            let b = behind.await;
            ::metrics::gauge!(m::COPY_BEHIND, "config" => name.to_string()).set(b);
            Ok(b)
        }
        Err(e) => {
            let msg = dest_fail(name, "copy", "copying to the copy_to destination", e);
            tracing::warn!(config = %name, error = %msg, "snapshot copy failed; the next run catches up");
            let b = behind.await;
            ::metrics::gauge!(m::COPY_BEHIND, "config" => name.to_string()).set(b);
            Err(msg)
        }
    }
}
