//! Where a drill's snapshot comes from: the destination named by the
//! `source` block, the snapshot picked in it, its manifest, and the download.
//!
//! `local` opens the `path_prefix` directory ([`LocalDestination`]); `aws-s3`
//! the bucket ([`S3Destination`]) with `path_prefix` as the key prefix. The
//! [`Catalog`] of that prefix pairs each `<file_prefix>-<nanos>.snap` with
//! its manifest: a snapshot without a manifest is never picked (its upload
//! may not have finished), and neither is one named in `snapshot = "..."`.
//! The download streams the object to a file in the drill's work directory,
//! hashing on the way; [`Downloaded`] carries the SHA-256 and size the
//! caller compares with the manifest before anything is restored.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::config::{SourceConfig, StorageType};
use crate::destination::Destination;
use crate::layout::{Catalog, join_key};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::{LocalDestination, S3Destination};

/// Open the source's destination.
pub async fn open(cfg: &SourceConfig) -> Result<Arc<dyn Destination>, String> {
    match cfg.storage_type {
        StorageType::Local => LocalDestination::open(&cfg.path_prefix)
            .map(|d| Arc::new(d) as Arc<dyn Destination>)
            .map_err(|e| e.to_string()),
        StorageType::AwsS3 => {
            let s3 = cfg
                .s3
                .as_ref()
                .ok_or_else(|| "aws-s3 source without its S3 settings".to_string())?;
            S3Destination::new(s3)
                .await
                .map(|d| Arc::new(d) as Arc<dyn Destination>)
                .map_err(|e| e.to_string())
        }
    }
}

/// The key prefix snapshots live under inside the destination.
fn key_prefix(cfg: &SourceConfig) -> String {
    match cfg.storage_type {
        StorageType::Local => String::new(),
        StorageType::AwsS3 => cfg.path_prefix.trim_matches('/').to_owned(),
    }
}

/// The picked snapshot and its manifest.
#[derive(Debug)]
pub struct Picked {
    pub key: String,
    pub manifest_key: String,
    pub manifest: Manifest,
    /// Good snapshots seen in the prefix (for the report).
    pub good_snapshots: usize,
}

/// Pick the snapshot to restore: `snapshot = "..."` if set, else the newest
/// one with a manifest; then read and parse its manifest.
pub async fn pick(dest: &dyn Destination, cfg: &SourceConfig) -> Result<Picked, String> {
    let prefix = key_prefix(cfg);
    let list_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let catalog = Catalog::load(dest, &list_prefix)
        .await
        .map_err(|e| format!("listing {}: {e}", dest.describe()))?;
    let ours = |key: &str| {
        let name = key.rsplit('/').next().unwrap_or(key);
        name.starts_with(&format!("{}-", cfg.file_prefix))
    };
    let good: Vec<_> = catalog.good().filter(|s| ours(s.key())).collect();
    let entry = match &cfg.snapshot {
        Some(name) => {
            let joined = join_key(&prefix, name);
            let e = catalog
                .get(name)
                .or_else(|| catalog.get(&joined))
                .ok_or_else(|| {
                    format!(
                        "snapshot {name:?} not found in {} (prefix {list_prefix:?})",
                        dest.describe()
                    )
                })?;
            if !e.is_good() {
                return Err(format!(
                    "snapshot {:?} has no manifest ({}): its upload never completed, so it cannot be trusted",
                    e.key(),
                    e.manifest_key()
                ));
            }
            e
        }
        None => good.first().copied().ok_or_else(|| {
            let without = catalog
                .snapshots
                .iter()
                .filter(|s| ours(s.key()) && !s.is_good())
                .count();
            format!(
                "no snapshot with a manifest under {list_prefix:?} (file_prefix {:?}) in {}{}",
                cfg.file_prefix,
                dest.describe(),
                if without > 0 {
                    format!("; {without} snapshot(s) without a manifest were skipped")
                } else {
                    String::new()
                }
            )
        })?,
    };
    let manifest_key = entry.manifest_key();
    let raw = dest
        .get_small(&manifest_key, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| format!("reading manifest {manifest_key:?}: {e}"))?;
    let manifest = Manifest::parse(&raw).map_err(|e| format!("manifest {manifest_key:?}: {e}"))?;
    Ok(Picked {
        key: entry.key().to_owned(),
        manifest_key,
        manifest,
        good_snapshots: good.len(),
    })
}

/// A snapshot object downloaded to a file.
#[derive(Debug)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: String,
}

/// Stream `key` into the file `to` (created), hashing on the way; fsynced.
pub async fn download(dest: &dyn Destination, key: &str, to: &Path) -> Result<Downloaded, String> {
    let mut body = dest
        .download(key)
        .await
        .map_err(|e| format!("downloading {key:?}: {e}"))?;
    let file = tokio::fs::File::create(to)
        .await
        .map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("downloading {key:?}: {e}"))?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", to.display()))?;
    }
    out.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", to.display()))?;
    out.get_ref()
        .sync_all()
        .await
        .map_err(|e| format!("fsync {}: {e}", to.display()))?;
    Ok(Downloaded {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}
