//! Per-sink checkpoints: how far each shipper has been acknowledged.
//!
//! A shipper (Kafka, Elasticsearch) reads the local log from its checkpoint +
//! 1 and, once its sink acknowledged records up to sequence number N, stores
//! N. Retention ([`super::retention`]) deletes a segment only when every
//! **registered** sink — every checkpoint file present — is past it, so a
//! shipper registers (stores a first checkpoint) before the log may be pruned
//! under it, and a sink removed from the configuration is unregistered with
//! [`Checkpoint::remove`].
//!
//! Each checkpoint is a small JSON file `<dir>/<sink>.json`
//! (`{"sink":"kafka","seq":123}`), replaced atomically: write a temporary
//! file, fsync it, rename it over the old one, fsync the directory. A crash
//! leaves either the old or the new value, never a torn one. The usual `dir`
//! is [`super::LogDir::checkpoint_dir`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::sync_dir;
use crate::error::AuditError;

const EXT: &str = ".json";
const MAX_NAME: usize = 128;

#[derive(Serialize, Deserialize)]
struct Stored {
    sink: String,
    seq: u64,
}

/// Checkpoint files of the shippers of one log. All functions are
/// associated: the state is on disk.
#[derive(Debug)]
pub struct Checkpoint;

fn bad(sink: &str, reason: impl Into<String>) -> AuditError {
    AuditError::Checkpoint {
        sink: sink.to_owned(),
        reason: reason.into(),
    }
}

/// A sink name usable as a file name: a device mount path such as `kafka/`
/// loses its trailing slash; otherwise letters, digits, `_`, `-`, `.`, not
/// starting with a dot.
fn file_name(sink: &str) -> Result<String, AuditError> {
    let name = sink.trim_end_matches('/');
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(bad(
            sink,
            "a sink name is letters, digits, '_', '-' and '.', not starting with '.'",
        ));
    }
    Ok(format!("{name}{EXT}"))
}

impl Checkpoint {
    fn path(dir: &Path, sink: &str) -> Result<PathBuf, AuditError> {
        Ok(dir.join(file_name(sink)?))
    }

    /// The stored checkpoint of `sink`, or `None` when it is not registered.
    pub fn get(dir: &Path, sink: &str) -> Result<Option<u64>, AuditError> {
        let path = Self::path(dir, sink)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AuditError::io("read checkpoint", &e)),
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| bad(sink, format!("checkpoint file is not valid: {e}")))?;
        Ok(Some(stored.seq))
    }

    /// The last sequence number `sink` acknowledged; 0 when it has none yet
    /// (so it reads from `load + 1`).
    pub fn load(dir: &Path, sink: &str) -> Result<u64, AuditError> {
        Ok(Self::get(dir, sink)?.unwrap_or(0))
    }

    /// Atomically record that `sink` acknowledged everything up to `seq`
    /// (registering the sink if needed). Moving backwards is allowed (replay).
    pub fn store(dir: &Path, sink: &str, seq: u64) -> Result<(), AuditError> {
        let name = file_name(sink)?;
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| AuditError::io("create checkpoint directory", &e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let body = serde_json::to_vec(&Stored {
            sink: sink.trim_end_matches('/').to_owned(),
            seq,
        })
        .map_err(|e| AuditError::Encode(e.to_string()))?;
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AuditError::io("write checkpoint", &e))?;
        f.write_all(&body)
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| AuditError::io("write checkpoint", &e))?;
        drop(f);
        fs::rename(&tmp, dir.join(&name)).map_err(|e| AuditError::io("rename checkpoint", &e))?;
        sync_dir(dir)
    }

    /// Register `sink` with checkpoint `seq` unless it is registered already;
    /// returns its checkpoint.
    pub fn register(dir: &Path, sink: &str, seq: u64) -> Result<u64, AuditError> {
        match Self::get(dir, sink)? {
            Some(s) => Ok(s),
            None => Self::store(dir, sink, seq).map(|()| seq),
        }
    }

    /// Unregister `sink` (it no longer holds back retention).
    pub fn remove(dir: &Path, sink: &str) -> Result<(), AuditError> {
        match fs::remove_file(Self::path(dir, sink)?) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AuditError::io("remove checkpoint", &e)),
        }
    }

    /// Every registered sink and its checkpoint, by name.
    pub fn list(dir: &Path) -> Result<Vec<(String, u64)>, AuditError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AuditError::io("list checkpoints", &e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| AuditError::io("list checkpoints", &e))?;
            let name = entry.file_name();
            let Some(sink) = name
                .to_str()
                .filter(|n| !n.starts_with('.'))
                .and_then(|n| n.strip_suffix(EXT))
            else {
                continue;
            };
            if let Some(seq) = Self::get(dir, sink)? {
                out.push((sink.to_owned(), seq));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The lowest checkpoint over the registered sinks (`None`: no sink).
    pub fn min(dir: &Path) -> Result<Option<u64>, AuditError> {
        Ok(Self::list(dir)?.into_iter().map(|(_, s)| s).min())
    }
}
