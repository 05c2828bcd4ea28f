//! Where the local audit log lives: a directory of segment files, and the
//! live name that always shows the active one.
//!
//! A [`LogDir`] is a directory plus a file-name prefix. Segment files are
//! named `<prefix>-<first seq, 20 digits>.log`, e.g.
//! `audit-00000000000000000001.log`, so name order is log order and a
//! segment's name says which sequence number it starts with. Nothing else in
//! the directory matches that pattern; checkpoints live in the
//! `<prefix>.checkpoints/` subdirectory.
//!
//! **The live name.** Besides its own name, the active segment is a hard
//! link at [`LogDir::live_path`] (`audit.log`, or the file `file_path`
//! names), replaced atomically (link under a temporary name, `rename` over
//! the live name) by `publish_live` whenever a new segment becomes
//! active. So `tail -F audit.log` follows the log as it is written and
//! across rolls (GNU tail sees the rename through inotify and reads the new
//! segment from its start), and `less`/`jq` on the configured path show
//! current events. A hard link rather than a symlink because `tail -F` on a
//! symlink falls back to polling and can skip a whole segment when two rolls
//! come within its recheck interval; a symlink is only the fallback on file
//! systems without hard links. The link is a view: recovery, readers,
//! retention and `verify` go by segment names and never look at it, and a
//! crash between a roll and its link leaves the link on the previous
//! segment only until the log is opened again.
//!
//! [`LogDir::from_file_path`] maps the `file` device's `file_path` option to a
//! `LogDir` (see its doc for the backward-compatible rules). The writer,
//! readers, retention and `verify` all list segments through here.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// File name of the live link to the active segment.
    live: String,
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
    /// The log in `dir` with the default prefix (`audit-…log`) and live
    /// name (`audit.log`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogDir::with_prefix(dir, DEFAULT_PREFIX)
    }

    /// The log in `dir` whose segments are named `<prefix>-…log`, live as
    /// `<prefix>.log`.
    pub fn with_prefix(dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        LogDir {
            dir: dir.into(),
            live: format!("{prefix}{SUFFIX}"),
            prefix,
        }
    }

    /// Interpret the `file` device's `file_path`:
    ///
    /// * an existing directory, or a path ending in `/`, or a path that does
    ///   not exist and has no extension (`/var/lib/custos/audit`): the
    ///   segments go in that directory as `audit-<seq>.log`, and `audit.log`
    ///   in it is the live name;
    /// * an existing non-directory, or a path with an extension
    ///   (`/var/log/vault_audit.log`, the Vault style): its parent is the
    ///   directory, its name without the extension the prefix
    ///   (`/var/log/vault_audit-<seq>.log`), and the path itself the live
    ///   name. A regular file already there that is not a link to a segment
    ///   is moved aside when the log opens, never overwritten.
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
        let mut dir = LogDir::with_prefix(parent, prefix);
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            dir.live = name.to_owned();
        }
        dir
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment file-name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The live name: a link to the active segment (see the module docs).
    pub fn live_path(&self) -> PathBuf {
        self.dir.join(&self.live)
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

/// True when `a` and `b` are the same file (device and inode).
pub(crate) fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Device and inode of the open file `f`, or of `path` when `f` is `None`,
/// asking the kernel for nothing else. A full `stat` (what
/// [`fs::metadata`] does) asks for the change time too, and on Linux 6.13
/// and later a file whose change time was asked for takes a fine-grained
/// timestamp at its next write, which moves the clock every other file's
/// next write reads: a `stat` of the active segment before each append
/// turned every write to the sync journal into an inode update that its
/// `fdatasync` had to write as well (one more device request per commit).
pub(crate) fn file_id(f: Option<&fs::File>, path: &Path) -> io::Result<(u64, u64, u64)> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = match f {
        Some(f) => statx(f, "", AtFlags::EMPTY_PATH, StatxFlags::INO),
        None => statx(CWD, path, AtFlags::empty(), StatxFlags::INO),
    }?;
    Ok((
        u64::from(st.stx_dev_major),
        u64::from(st.stx_dev_minor),
        st.stx_ino,
    ))
}

/// Make the live name ([`LogDir::live_path`]) show `segment`, the active
/// segment: a hard link made under a temporary name and renamed over the
/// live name, so a reader of that name sees the old segment or the new one,
/// never nothing (a symlink where the file system has no hard links). The
/// caller fsyncs the directory.
///
/// What already holds the live name is replaced when it is a link this
/// function made (a hard link to a segment, so more than one link, or a
/// symlink) or an empty file; any other file is renamed to
/// `<live name>.<unix seconds>.orig` first, so nothing an operator kept
/// there is lost. Returns that new name when it moved one.
pub(crate) fn publish_live(dir: &LogDir, segment: &Path) -> io::Result<Option<PathBuf>> {
    let live = dir.live_path();
    let seg_meta = fs::metadata(segment)?;
    let mut moved = None;
    match fs::symlink_metadata(&live) {
        Ok(m) if m.file_type().is_symlink() => {}
        Ok(m) if same_file(&m, &seg_meta) => return Ok(None),
        Ok(m) if m.is_file() && (m.nlink() > 1 || m.len() == 0) => {}
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory holds the live name",
            ));
        }
        Ok(_) => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = dir.dir.join(format!("{}.{secs}.orig", dir.live));
            fs::rename(&live, &aside)?;
            moved = Some(aside);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = dir.dir.join(format!(".{}.tmp", dir.live));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Err(e) = fs::hard_link(segment, &tmp) {
        // No hard links here (some FUSE and network file systems): a
        // relative symlink still lets `tail -F` follow, by polling.
        let name = segment
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "segment has no name"))?;
        std::os::unix::fs::symlink(name, &tmp).map_err(|_| e)?;
    }
    fs::rename(&tmp, &live)?;
    Ok(moved)
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
        assert_eq!(
            LogDir::from_file_path(&t.join("vault_audit.log")).live_path(),
            t.join("vault_audit.log")
        );
        assert_eq!(LogDir::new(t).live_path(), t.join("audit.log"));
        fs::write(t.join("plain"), b"").unwrap();
        let plain = LogDir::from_file_path(&t.join("plain"));
        assert_eq!((plain.dir(), plain.prefix()), (t, "plain"));
        assert_eq!(plain.live_path(), t.join("plain"));
        // The live name is never taken for a segment.
        assert_eq!(LogDir::new(t).parse_name("audit.log"), None);
    }

    #[test]
    fn publish_live_links_replaces_and_moves_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LogDir::new(tmp.path());
        let live = d.live_path();
        let (s1, s2) = (d.segment_path(1), d.segment_path(5));
        fs::write(&s1, b"one\n").unwrap();
        fs::write(&s2, b"two\n").unwrap();
        // An operator's own file at the live name is kept, beside.
        fs::write(&live, b"old vault audit\n").unwrap();
        let aside = publish_live(&d, &s1).unwrap().expect("moved aside");
        assert_eq!(fs::read(&aside).unwrap(), b"old vault audit\n");
        let meta = |p: &Path| fs::metadata(p).unwrap();
        assert!(same_file(&meta(&live), &meta(&s1)));
        // Again: nothing to do. Then a roll: the link moves, atomically.
        assert_eq!(publish_live(&d, &s1).unwrap(), None);
        assert_eq!(publish_live(&d, &s2).unwrap(), None);
        assert!(same_file(&meta(&live), &meta(&s2)));
        assert_eq!(meta(&s1).nlink(), 1);
        assert_eq!(fs::read(&live).unwrap(), b"two\n");
        // No temporary name is left, and segments are still just the two.
        let hidden: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        assert_eq!(d.segments().unwrap().len(), 2);
    }
}
