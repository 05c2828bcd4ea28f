//! The cross-region copy: a completed snapshot and its manifest, from the
//! primary destination to the `copy_to_*` one (another bucket, endpoint,
//! region).
//!
//! Data flows source download stream → target upload (multipart on S3), so
//! nothing is held whole in memory or staged on disk. The SHA-256 the upload
//! computes on the way is checked against the manifest's `sha256` (and the
//! byte count against `bytes`, when present); only when they match is the
//! manifest copied, last, which makes the copy good. A mismatched copy is
//! deleted. [`copy_missing`] catches up after the target was down.

use crate::{
    destination::Destination,
    error::DestinationError,
    layout::{Catalog, manifest_key},
    manifest::MAX_MANIFEST_BYTES,
};
use bytes::Bytes;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The manifest fields a copy checks ([`crate::manifest::Manifest`] has
/// them); the rest is copied as is, so a copy never refuses a manifest
/// version newer than its own.
#[derive(Debug, Deserialize)]
struct ManifestChecksum {
    sha256: String,
    #[serde(default)]
    bytes: Option<u64>,
}

/// What one copy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    pub source_key: String,
    pub target_key: String,
    pub bytes: u64,
    /// SHA-256 of the copied bytes (equal to the manifest's).
    pub sha256: String,
    pub parts: u32,
    pub duration: Duration,
}

fn parse_manifest(key: &str, raw: &[u8]) -> Result<ManifestChecksum, DestinationError> {
    let m: ManifestChecksum =
        serde_json::from_slice(raw).map_err(|e| DestinationError::Manifest {
            key: key.to_string(),
            message: format!("not a manifest: {e}"),
        })?;
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DestinationError::Manifest {
            key: key.to_string(),
            message: "sha256 is not 64 hex digits".into(),
        });
    }
    Ok(m)
}

/// The manifest for the copy: its `snapshot_key` names the copy's key when
/// that differs; every other byte is the source's.
fn retarget(raw: Bytes, source_key: &str, target_key: &str) -> Bytes {
    if source_key == target_key {
        return raw;
    }
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&raw) else {
        return raw;
    };
    if !m.get("snapshot_key").is_some_and(|v| v.is_string()) {
        return raw;
    }
    m.insert("snapshot_key".into(), target_key.into());
    let mut out = serde_json::to_vec_pretty(&serde_json::Value::Object(m)).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Copies the good snapshot `source_key` (its manifest must exist) to
/// `target_key`, verifies it, then writes the manifest copy.
pub async fn copy_snapshot(
    source: &dyn Destination,
    source_key: &str,
    target: &dyn Destination,
    target_key: &str,
) -> Result<CopyReport, DestinationError> {
    let started = Instant::now();
    let source_manifest = manifest_key(source_key);
    let raw = source
        .get_small(&source_manifest, MAX_MANIFEST_BYTES)
        .await?;
    let expected = parse_manifest(&source_manifest, &raw)?;
    let body = source.download(source_key).await?;
    let uploaded = target.upload(target_key, body).await?;
    let sha_ok = uploaded.sha256.eq_ignore_ascii_case(&expected.sha256);
    let bytes_ok = expected.bytes.is_none_or(|b| b == uploaded.bytes);
    if !sha_ok || !bytes_ok {
        if let Err(e) = target.delete(target_key).await {
            tracing::warn!(
                target = %target.describe(),
                key = target_key,
                error = %e,
                "could not delete a copy that failed its checksum; retention removes it after the grace period"
            );
        }
        return Err(DestinationError::Integrity {
            key: source_key.to_string(),
            expected: match expected.bytes {
                Some(b) => format!("sha256 {} ({b} bytes)", expected.sha256),
                None => format!("sha256 {}", expected.sha256),
            },
            actual: format!("sha256 {} ({} bytes)", uploaded.sha256, uploaded.bytes),
        });
    }
    let manifest = retarget(raw, source_key, target_key);
    target
        .put_small(&manifest_key(target_key), manifest)
        .await?;
    Ok(CopyReport {
        source_key: source_key.to_string(),
        target_key: target_key.to_string(),
        bytes: uploaded.bytes,
        sha256: uploaded.sha256,
        parts: uploaded.parts,
        duration: started.elapsed(),
    })
}

/// Copies each of the `newest` good snapshots under `source_prefix` that is
/// not yet good under `target_prefix`, oldest first. A snapshot keeps its name:
/// `<source_prefix><rest>` becomes `<target_prefix><rest>`. Stops at the first
/// failure, returning it; what was copied before stays good.
pub async fn copy_missing(
    source: &dyn Destination,
    source_prefix: &str,
    target: &dyn Destination,
    target_prefix: &str,
    newest: usize,
) -> Result<Vec<CopyReport>, DestinationError> {
    let have = Catalog::load(target, target_prefix).await?;
    let from = Catalog::load(source, source_prefix).await?;
    let mut todo: Vec<(String, String)> = Vec::new();
    for entry in from.good().take(newest.max(1)) {
        let Some(rest) = entry.key().strip_prefix(source_prefix) else {
            continue;
        };
        let target_key = format!("{target_prefix}{rest}");
        if !have.get(&target_key).is_some_and(|t| t.is_good()) {
            todo.push((entry.key().to_string(), target_key));
        }
    }
    let mut done = Vec::with_capacity(todo.len());
    for (source_key, target_key) in todo.into_iter().rev() {
        done.push(copy_snapshot(source, &source_key, target, &target_key).await?);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_checks() {
        let sha = "a".repeat(64);
        let m = parse_manifest(
            "k",
            format!(r#"{{"sha256":"{sha}","bytes":5,"raft_index":7}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(m.bytes, Some(5));
        let raw = Bytes::from(r#"{"snapshot_key":"p/a.snap","sha256":"x","raft_index":7}"#);
        assert_eq!(retarget(raw.clone(), "p/a.snap", "p/a.snap"), raw);
        let moved: serde_json::Value =
            serde_json::from_slice(&retarget(raw, "p/a.snap", "q/a.snap")).unwrap();
        assert_eq!(moved["snapshot_key"], "q/a.snap");
        assert_eq!(moved["raft_index"], 7);
        for bad in [r#"{"bytes":5}"#, r#"{"sha256":"abc"}"#, "not json"] {
            match parse_manifest("k", bad.as_bytes()) {
                Err(DestinationError::Manifest { key, .. }) => assert_eq!(key, "k"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
