//! Where the local audit log lives: a directory of segment files.
//!
//! A [`LogDir`] is a directory plus a file-name prefix. Segment files are
//! named `<prefix>-<first seq, 20 digits>.log`, e.g.
//! `audit-00000000000000000001.log`, so name order is log order and a
//! segment's name says which sequence number it starts with. Nothing else in
//! the directory matches that pattern; checkpoints live in the
//! `<prefix>.checkpoints/` subdirectory.
//!
//! [`LogDir::from_file_path`] maps the `file` device's `file_path` option to a
//! `LogDir` (see its doc for the backward-compatible rules). The writer,
//! readers, retention and `verify` all list segments through here.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::AuditError;

/// The segment file-name prefix when `file_path` names a directory.
pub const DEFAULT_PREFIX: &str = "audit";
const SUFFIX: &str = ".log";
const SEQ_DIGITS: usize = 20;

/// A directory holding the segments of one audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDir {
    dir: PathBuf,
    prefix: String,
}

/// One segment file found in a [`LogDir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The sequence number of its first record (from its name).
    pub first_seq: u64,
    pub path: PathBuf,
}

impl From<&Path> for LogDir {
    fn from(dir: &Path) -> Self {
        LogDir::new(dir)
    }
}

impl From<&PathBuf> for LogDir {
    fn from(dir: &PathBuf) -> Self {
        LogDir::new(dir.as_path())
    }
}

impl From<PathBuf> for LogDir {
    fn from(dir: PathBuf) -> Self {
        LogDir::new(dir)
    }
}

impl From<&LogDir> for LogDir {
    fn from(d: &LogDir) -> Self {
        d.clone()
    }
}

impl LogDir {
    /// The log in `dir` with the default prefix (`audit-…log`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogDir {
            dir: dir.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// The log in `dir` whose segments are named `<prefix>-…log`.
    pub fn with_prefix(dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        LogDir {
            dir: dir.into(),
            prefix: prefix.into(),
        }
    }

    /// Interpret the `file` device's `file_path`:
    ///
    /// * an existing directory, or a path ending in `/`, or a path that does
    ///   not exist and has no extension (`/var/lib/custos/audit`): the
    ///   segments go in that directory as `audit-<seq>.log`;
    /// * an existing non-directory, or a path with an extension
    ///   (`/var/log/vault_audit.log`, the Vault style): its parent is the
    ///   directory and its name without the extension the prefix
    ///   (`/var/log/vault_audit-<seq>.log`). An existing file there is left
    ///   alone.
    pub fn from_file_path(path: &Path) -> LogDir {
        let names_dir = path.as_os_str().as_encoded_bytes().ends_with(b"/");
        let file_like = !names_dir
            && match fs::metadata(path) {
                Ok(m) => !m.is_dir(),
                Err(_) => path.extension().is_some(),
            };
        if !file_like {
            return LogDir::new(path);
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let prefix = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        LogDir::with_prefix(parent, prefix)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment file-name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where shipper checkpoints of this log are kept.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join(format!("{}.checkpoints", self.prefix))
    }

    /// The path of the segment starting at `first_seq`.
    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{first_seq:0SEQ_DIGITS$}{SUFFIX}", self.prefix))
    }

    /// The first sequence number of a segment file name of this log.
    pub fn parse_name(&self, name: &str) -> Option<u64> {
        let digits = name
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .strip_suffix(SUFFIX)?;
        if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The segments, oldest first. A missing directory has none.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, AuditError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AuditError::io("list segments", &e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| AuditError::io("list segments", &e))?;
            let name = entry.file_name();
            let Some(first_seq) = name.to_str().and_then(|n| self.parse_name(n)) else {
                continue;
            };
            out.push(SegmentInfo {
                first_seq,
                path: entry.path(),
            });
        }
        out.sort_by_key(|s| s.first_seq);
        Ok(out)
    }
}

/// fsync a directory, so that file creations, renames and deletions in it
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("fsync directory", &e))
}

/// A short name for a segment in errors and reports: its file name.
pub(crate) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let d = LogDir::new("/x");
        let p = d.segment_path(42);
        assert_eq!(
            p,
            PathBuf::from("/x/audit-00000000000000000042.log"),
            "{p:?}"
        );
        assert_eq!(d.parse_name("audit-00000000000000000042.log"), Some(42));
        assert_eq!(d.parse_name("audit-42.log"), None);
        assert_eq!(d.parse_name("other-00000000000000000042.log"), None);
        assert_eq!(d.parse_name("audit-00000000000000000042.log.tmp"), None);
        assert_eq!(d.checkpoint_dir(), PathBuf::from("/x/audit.checkpoints"));
    }

    #[test]
    fn file_path_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        assert_eq!(LogDir::from_file_path(t), LogDir::new(t));
        assert_eq!(
            LogDir::from_file_path(&t.join("audit")),
            LogDir::new(t.join("audit"))
        );
        assert_eq!(
            LogDir::from_file_path(&t.join("vault_audit.log")),
            LogDir::with_prefix(t, "vault_audit")
        );
        let slash = PathBuf::from(format!("{}/logs.d/", t.display()));
        assert_eq!(LogDir::from_file_path(&slash), LogDir::new(&slash));
        fs::write(t.join("plain"), b"").unwrap();
        assert_eq!(
            LogDir::from_file_path(&t.join("plain")),
            LogDir::with_prefix(t, "plain")
        );
    }
}
