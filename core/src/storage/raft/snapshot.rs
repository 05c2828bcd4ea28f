//! Raft snapshots: their byte format and the file that holds the current one.
//!
//! A snapshot is the state machine's `kv` table (barrier ciphertext) at one
//! applied index. [`StateMachineStore`](super::StateMachineStore) writes it,
//! when a follower needs one (see `state_machine`), by
//! streaming a redb read transaction through a [`SnapshotWriter`] into
//! `raft-snapshot.bin.<id>.tmp`, fsyncs it and [`SnapshotFile::commit`]s it:
//! renamed over `raft-snapshot.bin` (then the directory fsynced), unless a
//! newer snapshot got there first. openraft reads it back through
//! `get_current_snapshot` (to send it to followers), and a
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
//! Pairs are in key order. Nothing after the last pair. Raft's own snapshot
//! file (what followers are sent) is always version 1.
//!
//! Version 2 (*batched*) is the `state.bin` of a DR archive
//! (`crate::raft_snapshot`), written straight from the state machine as the
//! archive streams ([`BatchedWriter`], fed by
//! [`StateExport`](super::export::StateExport)): the same pairs in another
//! order, so the archive can deflate what compresses and store what does
//! not. After the header and pair count comes a `u32` batch size `B`; then
//! the pairs in batches of `B` (the last one shorter), each batch a *keys
//! section* (per pair `u32` key length, key, `u32` value length) followed
//! by its *values section* (the values, concatenated in the same order).
//! Keys and lengths compress; the values are barrier ciphertext, which does
//! not. Archives of earlier versions hold a version 1 file instead.
//! [`PairReader`](super::restore::PairReader) reads both versions.

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
/// The batched layout of a DR archive's `state.bin` (see the module docs).
pub(crate) const FORMAT_BATCHED: u32 = 2;
/// Pairs per batch written by [`BatchedWriter`] (the keys of one batch,
/// about 200 KiB, are what the writer holds in memory).
pub(crate) const BATCH_PAIRS: u32 = 1024;
/// Largest batch size a reader accepts (its keys are held in memory).
pub(crate) const MAX_BATCH_PAIRS: u32 = 1 << 16;
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
        let head = head_of(FORMAT_VERSION, meta, count)?;
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

/// Read the header of a version 1 file (Raft's snapshot): meta and pair count.
pub(crate) fn read_header(r: &mut impl Read) -> Result<(Meta, u64), StoreError> {
    let h = read_header_of(r, false)?;
    Ok((h.meta, h.count))
}

/// The header of a state file of either version.
pub(crate) struct StateHeader {
    pub meta: Meta,
    pub count: u64,
    /// The batch size of a version 2 (batched) file; `None` for version 1.
    pub batch: Option<u32>,
}

/// Read the header of a version 1 or 2 file (a DR archive's `state.bin`).
pub(crate) fn read_state_header(r: &mut impl Read) -> Result<StateHeader, StoreError> {
    read_header_of(r, true)
}

fn read_header_of(r: &mut impl Read, batched_ok: bool) -> Result<StateHeader, StoreError> {
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
    if version != FORMAT_VERSION && !(batched_ok && version == FORMAT_BATCHED) {
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
    let batch = if version == FORMAT_BATCHED {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(truncated)?;
        let b = u32::from_be_bytes(b);
        if b == 0 || b > MAX_BATCH_PAIRS {
            return Err(StoreError::Format(format!(
                "snapshot batch size {b} is out of range (1 to {MAX_BATCH_PAIRS})"
            )));
        }
        Some(b)
    } else {
        None
    };
    Ok(StateHeader {
        meta,
        count: u64::from_be_bytes(count),
        batch,
    })
}

/// Where a [`BatchedWriter`] sends the batched file, section by section.
pub(crate) trait SectionSink {
    /// Header, keys and lengths: bytes that compress.
    fn keys(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Values (barrier ciphertext): bytes that do not.
    fn values(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The size of the batched file holding `count` pairs whose keys and
/// values add up to `pair_bytes`, after a head (see [`batched_head`]) of
/// `head_len` bytes: each pair adds its two `u32` lengths.
pub(crate) fn batched_len(head_len: usize, count: u64, pair_bytes: u64) -> u64 {
    head_len as u64 + 8 * count + pair_bytes
}

/// The head of a batched file of `count` pairs: magic, version, header,
/// pair count and batch size ([`BATCH_PAIRS`]).
pub(crate) fn batched_head(meta: &Meta, count: u64) -> Result<Vec<u8>, StoreError> {
    let mut head = head_of(FORMAT_BATCHED, meta, count)?;
    head.extend_from_slice(&BATCH_PAIRS.to_be_bytes());
    Ok(head)
}

/// Magic, `version`, the JSON header of `meta` with its length, and the
/// pair count: how both versions begin.
fn head_of(version: u32, meta: &Meta, count: u64) -> Result<Vec<u8>, StoreError> {
    let header = serde_json::to_vec(meta)?;
    let mut head = Vec::with_capacity(28 + header.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&version.to_be_bytes());
    head.extend_from_slice(&len_u32(header.len())?.to_be_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&count.to_be_bytes());
    Ok(head)
}

/// Bytes of values handed to the sink at a time (a larger value goes alone).
const VALUES_CHUNK: usize = 256 * 1024;

/// Writes a batched file (version 2) to a [`SectionSink`] as its caller
/// walks the pairs, in key order, twice per batch: first every key of the
/// batch with its value's length ([`Self::key`], then [`Self::end_keys`]),
/// then the same batch's values ([`Self::value`], then
/// [`Self::end_values`]); batches hold [`BATCH_PAIRS`] pairs, the last one
/// fewer. Memory holds one batch's keys and one chunk of values, whatever
/// the values' sizes; the caller checks the pair count it announced.
pub(crate) struct BatchedWriter<'s, S: SectionSink> {
    sink: &'s mut S,
    keys: Vec<u8>,
    values: Vec<u8>,
    written: u64,
}

impl<'s, S: SectionSink> BatchedWriter<'s, S> {
    /// Start the file with its `head` ([`batched_head`]).
    pub(crate) fn new(sink: &'s mut S, head: &[u8]) -> io::Result<Self> {
        sink.keys(head)?;
        Ok(BatchedWriter {
            sink,
            keys: Vec::with_capacity(128 * 1024),
            values: Vec::with_capacity(VALUES_CHUNK),
            written: head.len() as u64,
        })
    }

    /// The next key of the batch and its value's length.
    pub(crate) fn key(&mut self, key: &[u8], value_len: usize) -> io::Result<()> {
        let u32_of = |n| len_u32(n).map_err(io::Error::other);
        self.keys
            .extend_from_slice(&u32_of(key.len())?.to_be_bytes());
        self.keys.extend_from_slice(key);
        self.keys
            .extend_from_slice(&u32_of(value_len)?.to_be_bytes());
        Ok(())
    }

    /// The batch's keys are all given: send them as one keys section.
    pub(crate) fn end_keys(&mut self) -> io::Result<()> {
        self.written += self.keys.len() as u64;
        self.sink.keys(&self.keys)?;
        self.keys.clear();
        Ok(())
    }

    /// The next value of the batch (in the order of its keys).
    pub(crate) fn value(&mut self, value: &[u8]) -> io::Result<()> {
        if self.values.len() + value.len() > VALUES_CHUNK {
            self.send_values()?;
        }
        if value.len() >= VALUES_CHUNK {
            self.written += value.len() as u64;
            return self.sink.values(value);
        }
        self.values.extend_from_slice(value);
        Ok(())
    }

    /// The batch's values are all given.
    pub(crate) fn end_values(&mut self) -> io::Result<()> {
        self.send_values()
    }

    fn send_values(&mut self) -> io::Result<()> {
        if self.values.is_empty() {
            return Ok(());
        }
        self.written += self.values.len() as u64;
        self.sink.values(&self.values)?;
        self.values.clear();
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }
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

    /// The current snapshot file, opened at its first byte, if it is the
    /// snapshot `snapshot_id`.
    pub(crate) fn open_if(&self, snapshot_id: &str) -> Result<Option<File>, StoreError> {
        Ok(self
            .open_current()?
            .filter(|(meta, _)| meta.snapshot_id == snapshot_id)
            .map(|(_, file)| file))
    }

    /// Remove the current snapshot file if it is older than `upto`: it no
    /// longer covers the log the state machine let Raft purge, so nobody
    /// will be sent it.
    pub(crate) fn remove_older_than(&self, upto: &Meta) -> Result<(), StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.current_path();
        match self.read_meta(&path)? {
            Some(meta) if meta.last_log_id < upto.last_log_id => {
                fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// The current snapshot's meta and bytes.
    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::super::restore::PairReader;
    use super::*;

    #[derive(Default)]
    struct Sections {
        all: Vec<u8>,
        keys: usize,
        values: usize,
    }

    impl SectionSink for Sections {
        fn keys(&mut self, b: &[u8]) -> io::Result<()> {
            self.keys += b.len();
            self.all.extend_from_slice(b);
            Ok(())
        }
        fn values(&mut self, b: &[u8]) -> io::Result<()> {
            self.values += b.len();
            self.all.extend_from_slice(b);
            Ok(())
        }
    }

    fn pairs(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                // One value larger than a values chunk, one empty.
                let len = match i {
                    3 => VALUES_CHUNK * 2 + 7,
                    5 => 0,
                    _ => 40 + i % 300,
                };
                (format!("logical/{i:08}"), vec![(i % 251) as u8; len])
            })
            .collect()
    }

    fn meta() -> Meta {
        Meta {
            snapshot_id: "1-7-0".to_string(),
            ..Default::default()
        }
    }

    fn v1_bytes(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut w = SnapshotWriter::new(&mut data, &meta(), pairs.len() as u64).expect("header");
        for (k, v) in pairs {
            w.pair(k, v).expect("pair");
        }
        w.finish().expect("finish");
        data
    }

    /// `pairs` through a [`BatchedWriter`], as an export walks them.
    fn batched(pairs: &[(String, Vec<u8>)]) -> (Sections, u64) {
        let head = batched_head(&meta(), pairs.len() as u64).expect("head");
        let mut sink = Sections::default();
        let mut w = BatchedWriter::new(&mut sink, &head).expect("head");
        for batch in pairs.chunks(BATCH_PAIRS as usize) {
            for (k, v) in batch {
                w.key(k.as_bytes(), v.len()).expect("key");
            }
            w.end_keys().expect("keys");
            for (_, v) in batch {
                w.value(v).expect("value");
            }
            w.end_values().expect("values");
        }
        let written = w.written();
        let pair_bytes = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(
            written,
            batched_len(head.len(), pairs.len() as u64, pair_bytes)
        );
        (sink, written)
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (_, _, mut r) = PairReader::new(bytes, bytes.len() as u64)?;
        let mut out = Vec::new();
        while let Some(p) = r.next_pair()? {
            out.push(p);
        }
        Ok(out)
    }

    /// The batched file holds the same pairs in the same order, whatever
    /// the count against the batch size, is the announced size, and sends
    /// the values (and only them) as values sections.
    #[test]
    fn batched_state_reads_back_the_same_pairs() {
        for n in [0, 1, BATCH_PAIRS as usize, BATCH_PAIRS as usize * 2 + 3] {
            let want = pairs(n);
            let (sink, written) = batched(&want);
            assert_eq!(sink.all.len() as u64, written, "{n} pairs");
            let value_bytes: usize = want.iter().map(|(_, v)| v.len()).sum();
            assert_eq!(sink.values, value_bytes, "{n} pairs");
            assert_eq!(sink.keys + sink.values, sink.all.len(), "{n} pairs");
            assert_eq!(&sink.all[8..12], &FORMAT_BATCHED.to_be_bytes());
            assert_eq!(read_all(&sink.all).expect("read back"), want, "{n} pairs");
            // A version 1 file of the same pairs reads the same.
            assert_eq!(read_all(&v1_bytes(&want)).expect("v1"), want, "{n} pairs");
        }
    }

    /// A damaged batched file is refused, never read short or past its end.
    #[test]
    fn damaged_batched_state_is_refused() {
        let good = batched(&pairs(BATCH_PAIRS as usize + 10)).0.all;
        for cut in [20, good.len() / 3, good.len() - 1] {
            assert!(read_all(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(read_all(&trailing).is_err());
        // A batch size of 0 or beyond the maximum.
        let at = {
            let hl = u32::from_be_bytes([good[12], good[13], good[14], good[15]]) as usize;
            16 + hl + 8
        };
        for b in [0, MAX_BATCH_PAIRS + 1] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&b.to_be_bytes());
            let e = read_all(&bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("batch size"), "{e}");
        }
        // A key length that runs past the end.
        let mut bad = good.clone();
        bad[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_all(&bad).is_err());
        // Raft's own reader takes version 1 only.
        assert!(read_header(&mut &good[..]).is_err());
    }
}
