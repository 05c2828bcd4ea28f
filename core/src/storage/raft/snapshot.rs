//! Raft snapshots: their byte format and the file that holds the current one.
//!
//! A snapshot is the state machine's `kv` table (barrier ciphertext) at one
//! applied index. [`StateMachineStore`](super::StateMachineStore) builds it by
//! streaming a redb read transaction through a [`SnapshotWriter`] into
//! `raft-snapshot.bin.<id>.tmp`, fsyncs it and [`SnapshotFile::commit`]s it:
//! renamed over `raft-snapshot.bin` (then the directory fsynced), unless a
//! newer snapshot got there first. openraft reads it back through
//! `get_current_snapshot`, the DR snapshot agent through
//! [`RaftStorage::snapshot_bytes`](super::RaftStorage::snapshot_bytes), and a
//! snapshot sent by a leader arrives in `raft-snapshot.bin.recv` before it is
//! installed and committed the same way. Nothing is held in memory while a
//! snapshot is built, and the snapshot does not live inside `state.redb`
//! (earlier versions kept it there as one value, which made the database
//! file several times the live data; [`SnapshotFile::open`] leaves such a
//! file to the state machine's migration).
//!
//! Format (version 1), all integers big-endian:
//! `b"CUSTOSNP"`, `u32` version, `u32` header length, header (JSON
//! `SnapshotMeta`: last log id, membership, snapshot id), `u64` pair count,
//! then per pair `u32` key length, key (UTF-8), `u32` value length, value.
//! Pairs are in key order. Nothing after the last pair.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use super::state_machine::Meta;

/// File name of the current snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

const MAGIC: &[u8; 8] = b"CUSTOSNP";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Upper bound of the JSON header (membership and ids: a few hundred bytes).
const MAX_HEADER: usize = 1 << 20;
/// Write buffer of a snapshot being built.
const WRITE_BUFFER: usize = 1 << 20;

fn io_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::SnapshotFile(format!("{what} {}: {e}", path.display()))
}

fn len_u32(n: usize) -> Result<u32, StoreError> {
    u32::try_from(n)
        .map_err(|_| StoreError::Format(format!("item of {n} bytes is too large for a snapshot")))
}

/// Writes the format above to `W`, one pair at a time.
pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    expected: u64,
    written: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Write the header of a snapshot that will hold `count` pairs.
    pub(crate) fn new(mut out: W, meta: &Meta, count: u64) -> Result<Self, StoreError> {
        let header = serde_json::to_vec(meta)?;
        let mut head = Vec::with_capacity(24 + header.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        head.extend_from_slice(&len_u32(header.len())?.to_be_bytes());
        head.extend_from_slice(&header);
        head.extend_from_slice(&count.to_be_bytes());
        out.write_all(&head).map_err(write_err)?;
        Ok(SnapshotWriter {
            out,
            expected: count,
            written: 0,
        })
    }

    /// Append one pair (callers pass them in key order).
    pub(crate) fn pair(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = key.as_bytes();
        self.out
            .write_all(&len_u32(key.len())?.to_be_bytes())
            .and_then(|()| self.out.write_all(key))
            .map_err(write_err)?;
        self.out
            .write_all(&len_u32(value.len())?.to_be_bytes())
            .and_then(|()| self.out.write_all(value))
            .map_err(write_err)?;
        self.written += 1;
        Ok(())
    }

    /// Check that the header's count was right and hand back the writer.
    pub(crate) fn finish(self) -> Result<W, StoreError> {
        if self.written != self.expected {
            return Err(StoreError::Format(format!(
                "snapshot header announced {} pairs, {} were written",
                self.expected, self.written
            )));
        }
        Ok(self.out)
    }
}

fn write_err(e: io::Error) -> StoreError {
    StoreError::SnapshotFile(format!("writing a snapshot: {e}"))
}

/// Read the header: meta and pair count.
pub(crate) fn read_header(r: &mut impl Read) -> Result<(Meta, u64), StoreError> {
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => StoreError::Format("snapshot is truncated".into()),
        _ => StoreError::SnapshotFile(format!("reading a snapshot: {e}")),
    };
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed).map_err(truncated)?;
    if &fixed[..8] != MAGIC {
        return Err(StoreError::Format(
            "not a Custos snapshot (bad magic)".into(),
        ));
    }
    let version = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version != FORMAT_VERSION {
        return Err(StoreError::Format(format!(
            "unsupported snapshot format version {version}"
        )));
    }
    let header_len = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
    if header_len > MAX_HEADER {
        return Err(StoreError::Format(format!(
            "snapshot header of {header_len} bytes is implausibly large"
        )));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(truncated)?;
    let meta: Meta = serde_json::from_slice(&header)?;
    let mut count = [0u8; 8];
    r.read_exact(&mut count).map_err(truncated)?;
    Ok((meta, u64::from_be_bytes(count)))
}

/// A parsed snapshot.
pub(crate) struct DecodedSnapshot {
    pub meta: Meta,
    pub pairs: Vec<(String, Vec<u8>)>,
}

/// Parse and validate snapshot bytes. Lengths are checked against what is
/// left before anything is allocated, so damaged input cannot ask for memory.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot, StoreError> {
    let mut rest = bytes;
    let (meta, count) = read_header(&mut rest)?;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if rest.len() < n {
            return Err(StoreError::Format("snapshot is truncated".into()));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> Result<usize, StoreError> {
        let b = take(rest, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut pairs = Vec::new();
    for _ in 0..count {
        let klen = len(&mut rest)?;
        let key = std::str::from_utf8(take(&mut rest, klen)?)
            .map_err(|_| StoreError::Format("snapshot key is not UTF-8".into()))?
            .to_string();
        let vlen = len(&mut rest)?;
        pairs.push((key, take(&mut rest, vlen)?.to_vec()));
    }
    if !rest.is_empty() {
        return Err(StoreError::Format(
            "trailing bytes after the last snapshot pair".into(),
        ));
    }
    Ok(DecodedSnapshot { meta, pairs })
}

/// The number of pairs a snapshot holds, from its header only.
pub(crate) fn snapshot_pair_count(bytes: &[u8]) -> Result<u64, StoreError> {
    let mut rest = bytes;
    Ok(read_header(&mut rest)?.1)
}

/// The current snapshot's file in the data directory, and its replacement.
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    /// Serializes [`Self::commit`] and opening the current file, so a reader
    /// gets the meta and the bytes of the same snapshot.
    lock: Mutex<()>,
}

impl SnapshotFile {
    /// Snapshots of the data directory `dir`; leftovers of builds or
    /// receptions interrupted by a crash are removed.
    pub(crate) fn open(dir: &Path) -> Result<SnapshotFile, StoreError> {
        let entries = fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = name.starts_with(&format!("{SNAPSHOT_FILE}."))
                && (name.ends_with(".tmp") || name.ends_with(".recv"));
            if stale {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
            }
        }
        Ok(SnapshotFile {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Where a snapshot sent by a leader is received before it is installed.
    pub(crate) fn receive_path(&self) -> PathBuf {
        self.dir.join(format!("{SNAPSHOT_FILE}.recv"))
    }

    /// A new file for the snapshot `snapshot_id`, buffered, to be passed to
    /// [`Self::commit`] once written and synced.
    pub(crate) fn create(
        &self,
        snapshot_id: &str,
    ) -> Result<(PathBuf, BufWriter<File>), StoreError> {
        let path = self.dir.join(format!("{SNAPSHOT_FILE}.{snapshot_id}.tmp"));
        let file = File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        Ok((path, BufWriter::with_capacity(WRITE_BUFFER, file)))
    }

    /// Make the written and fsynced file `path` the current snapshot, unless
    /// (and `force` is false) the current one is newer than `meta`: then
    /// `path` is removed. Returns the current snapshot afterwards, opened.
    pub(crate) fn commit(
        &self,
        path: &Path,
        meta: &Meta,
        force: bool,
    ) -> Result<(Meta, File), StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current_path();
        let newer = match self.read_meta(&current)? {
            Some(existing) if !force && existing.last_log_id > meta.last_log_id => Some(existing),
            _ => None,
        };
        if newer.is_some() {
            fs::remove_file(path).map_err(|e| io_err("removing", path, e))?;
        } else {
            fs::rename(path, &current).map_err(|e| io_err("renaming", path, e))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("syncing", &self.dir, e))?;
        }
        let file = File::open(&current).map_err(|e| io_err("opening", &current, e))?;
        Ok((newer.unwrap_or_else(|| meta.clone()), file))
    }

    fn read_meta(&self, path: &Path) -> Result<Option<Meta>, StoreError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", path, e)),
        };
        let (meta, _) = read_header(&mut file)?;
        Ok(Some(meta))
    }

    /// The current snapshot's meta and an open file at its first byte.
    pub(crate) fn open_current(&self) -> Result<Option<(Meta, File)>, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.current_path();
        let Some(meta) = self.read_meta(&path)? else {
            return Ok(None);
        };
        let file = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
        Ok(Some((meta, file)))
    }

    /// The current snapshot's meta and bytes.
    pub(crate) fn read_current(&self) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
        let Some((meta, mut file)) = self.open_current()? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("reading", &self.current_path(), e))?;
        Ok(Some((meta, bytes)))
    }

    /// Write `bytes` (a whole snapshot, e.g. migrated from an older layout) as
    /// the current snapshot, replacing whatever is there.
    pub(crate) fn replace_with(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StoreError> {
        let (path, mut out) = self.create(&meta.snapshot_id)?;
        out.write_all(bytes).map_err(write_err)?;
        sync(out, &path)?;
        self.commit(&path, meta, true)?;
        Ok(())
    }
}

/// Flush and fsync a snapshot file being written.
pub(crate) fn sync(out: BufWriter<File>, path: &Path) -> Result<(), StoreError> {
    let file = out
        .into_inner()
        .map_err(|e| io_err("flushing", path, e.into_error()))?;
    file.sync_all().map_err(|e| io_err("syncing", path, e))
}
