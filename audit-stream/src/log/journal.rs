//! The sync journal: where a group commit becomes durable.
//!
//! The writer ([`super::writer`]) appends each batch to the active segment
//! (the JSON-lines file readers, shippers and `tail -F` see) and then writes
//! the same bytes into this journal, `<prefix>.journal/sync` beside the
//! segments (in a directory of its own, so that a shipper's `*` or a
//! `cat audit-*.log` never picks it up), and `fdatasync`s the journal
//! instead of the segment. The
//! journal is zero-filled ahead of its writes, so its sync overwrites blocks
//! that are already allocated and changes no metadata. An append to the
//! segment grows it, and on these disks (ext4, virtio) its `fdatasync`
//! writes the data, then the inode, then flushes: three device requests in a
//! row against two here, about 40% longer alone and more when several logs
//! sync at once (the Raft log does the same, `core/src/storage/raft/log_store.rs`).
//! The segment is made durable off the request path by a flusher thread
//! ([`Flusher`]), which `fdatasync`s it every [`FLUSH_EVERY`] while it has
//! new bytes: a few syncs a second instead of one per batch.
//!
//! # Format
//!
//! The file has two halves of [`HALF`] bytes. Records follow each other from
//! the start of a half, each a header (all integers little-endian) and the
//! batch's bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `CSJ1` |
//! | 8 | generation |
//! | 8 | segment (its first sequence number, as in its name) |
//! | 8 | offset of the bytes in that segment |
//! | 4 | length of the bytes |
//! | 4 | CRC-32C of the previous record's header (0 for the first) |
//! | 4 | CRC-32C of the 36 bytes above and the bytes |
//!
//! A generation fills one half and covers one segment. When a half is full
//! the next generation starts at the other half, once everything the other
//! half held is durable in its segment: the flusher has had a whole half's
//! worth of time to sync it, so the writer almost never waits (it syncs the
//! segment itself when the flusher is behind). At a roll the old segment is
//! synced and the next generation starts in the other half. The chain of
//! CRCs and the generation stop a scan at the first record that is torn,
//! zero, or left from an earlier pass over the half.
//!
//! # Replay
//!
//! At open, before the last segment's recovery ([`super::recovery`]), every
//! record of both halves' generations, older first, is compared with its
//! segment; bytes the
//! segment lacks (a power cut took its page cache) are written back and the
//! segment is synced. A record whose segment is gone (retention, or an
//! operator deleted it) is passed over. A process killed with `kill -9`
//! loses nothing from the page cache, so replay then finds the bytes in
//! place and writes nothing.
//!
//! # Failures
//!
//! If the journal cannot be written or synced, the writer syncs the segment
//! itself for that batch (the batch is durable either way), removes the
//! journal so that no record of it is ever replayed over later bytes, and
//! syncs segments directly from then on. If the journal cannot be removed
//! either, the log refuses appends ([`super::writer`]): a replay could
//! otherwise write stale bytes over acknowledged records. If the flusher's
//! sync of the segment fails, the log refuses appends too and the journal is
//! kept as it is: the kernel may have dropped the pages that failed to
//! write, and a later `fsync` of the same file would report success, so only
//! the journal still holds those acknowledged batches, for the replay at the
//! next start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::segment::LogDir;
use crate::error::AuditError;

const MAGIC: &[u8; 4] = b"CSJ1";
/// Header bytes before the CRC of the whole record.
const HEADER_BODY: usize = 36;
/// Header bytes in all.
pub(crate) const HEADER: usize = HEADER_BODY + 4;
/// Bytes of each half. A batch is at most ~8 MiB (the writer's limit); a
/// larger one is synced in its segment directly.
pub(crate) const HALF: u64 = 16 * 1024 * 1024;
/// The journal is zero-filled ahead of its writes in steps of this size.
const GROW_STEP: u64 = 1024 * 1024;
/// How often the flusher syncs the active segment while it has new bytes.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The directory of the journal of the log in `dir`.
pub(crate) fn journal_dir(dir: &LogDir) -> PathBuf {
    dir.dir().join(format!("{}.journal", dir.prefix()))
}

/// The journal's path for the log in `dir`.
pub(crate) fn path(dir: &LogDir) -> PathBuf {
    journal_dir(dir).join("sync")
}

/// One record read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalRecord {
    pub generation: u64,
    pub segment: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

fn header(generation: u64, segment: u64, offset: u64, len: u32, prev: u32) -> [u8; HEADER_BODY] {
    let mut h = [0u8; HEADER_BODY];
    h[0..4].copy_from_slice(MAGIC);
    h[4..12].copy_from_slice(&generation.to_le_bytes());
    h[12..20].copy_from_slice(&segment.to_le_bytes());
    h[20..28].copy_from_slice(&offset.to_le_bytes());
    h[28..32].copy_from_slice(&len.to_le_bytes());
    h[32..36].copy_from_slice(&prev.to_le_bytes());
    h
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The records of both halves' generations, older generation first.
pub(crate) fn parse_halves(data: &[u8], half: u64) -> Vec<JournalRecord> {
    let half = half as usize;
    let mut first = parse(&data[..data.len().min(half)]);
    let mut second = if data.len() > half {
        parse(&data[half..])
    } else {
        Vec::new()
    };
    let generation = |v: &Vec<JournalRecord>| v.first().map_or(0, |r| r.generation);
    if generation(&second) < generation(&first) {
        std::mem::swap(&mut first, &mut second);
    }
    first.extend(second);
    first
}

/// The records of the generation that starts at offset 0 of `data`, up to
/// the first one that is torn, zero, from another generation or off the
/// chain.
pub(crate) fn parse(data: &[u8]) -> Vec<JournalRecord> {
    let mut out: Vec<JournalRecord> = Vec::new();
    let mut at = 0usize;
    let mut prev = 0u32;
    while data.len() >= at + HEADER {
        let h = &data[at..at + HEADER_BODY];
        if &h[0..4] != MAGIC {
            break;
        }
        let generation = u64_at(h, 4);
        let len = u32_at(h, 28) as usize;
        if out.first().is_some_and(|f| f.generation != generation)
            || u32_at(h, 32) != prev
            || data.len() < at + HEADER + len
        {
            break;
        }
        let bytes = &data[at + HEADER..at + HEADER + len];
        let header_crc = crc32c::crc32c(h);
        if crc32c::crc32c_append(header_crc, bytes) != u32_at(data, at + HEADER_BODY) {
            break;
        }
        out.push(JournalRecord {
            generation,
            segment: u64_at(h, 12),
            offset: u64_at(h, 20),
            bytes: bytes.to_vec(),
        });
        prev = header_crc;
        at += HEADER + len;
    }
    out
}

/// What [`replay`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Records of the generations found.
    pub records: usize,
    /// Records whose bytes were missing from their segment and written back.
    pub restored: usize,
    /// Bytes written back.
    pub bytes: u64,
    /// The newest generation found (0: none).
    pub generation: u64,
}

/// Put back into the segments of `dir` every journaled byte they lack, and
/// sync each segment written to. Runs at open, before recovery.
pub(crate) fn replay(dir: &LogDir) -> Result<Replayed, AuditError> {
    replay_with_half(dir, HALF)
}

fn replay_with_half(dir: &LogDir, half: u64) -> Result<Replayed, AuditError> {
    let path = path(dir);
    let mut data = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)
                .map_err(|e| AuditError::io("read audit journal", &e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(AuditError::io("open audit journal", &e)),
    }
    let records = parse_halves(&data, half);
    let mut done = Replayed {
        records: records.len(),
        generation: records.iter().map(|r| r.generation).max().unwrap_or(0),
        ..Replayed::default()
    };
    let mut touched: Vec<(u64, File)> = Vec::new();
    for rec in &records {
        let seg_path = dir.segment_path(rec.segment);
        let file = match touched.iter().position(|(s, _)| *s == rec.segment) {
            Some(i) => &touched[i].1,
            None => match OpenOptions::new().read(true).write(true).open(&seg_path) {
                Ok(f) => {
                    touched.push((rec.segment, f));
                    &touched[touched.len() - 1].1
                }
                // Deleted since (retention or by hand): nothing to restore.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(AuditError::io("open segment", &e)),
            },
        };
        let mut have = vec![0u8; rec.bytes.len()];
        let got = read_at_most(file, &mut have, rec.offset)
            .map_err(|e| AuditError::io("read segment", &e))?;
        if got == rec.bytes.len() && have == rec.bytes {
            continue;
        }
        file.write_all_at(&rec.bytes, rec.offset)
            .map_err(|e| AuditError::io("restore segment", &e))?;
        done.restored += 1;
        done.bytes += rec.bytes.len() as u64;
    }
    if done.restored > 0 {
        for (_, f) in &touched {
            f.sync_all()
                .map_err(|e| AuditError::io("fsync segment", &e))?;
        }
    }
    Ok(done)
}

fn read_at_most(f: &File, buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The journal the writer appends to (see the module documentation).
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of the file known to be zero-filled (or written) and synced.
    allocated: u64,
    /// The half the current generation fills (0 or 1).
    half: usize,
    /// Where the next record goes, from the start of the half.
    offset: u64,
    generation: u64,
    /// CRC of the last record's header (0 at a generation's start).
    prev: u32,
    /// Per half: the segment its generation covers and the end of the last
    /// bytes journaled for it (`None`: nothing, or nothing not yet durable).
    covers: [Option<(u64, u64)>; 2],
    /// Bytes per half ([`HALF`], smaller in tests).
    half_bytes: u64,
}

impl Journal {
    /// Open (creating) the journal of `dir` for a new generation, newer than
    /// `after` (the generation replay found).
    pub fn open(dir: &LogDir, after: u64) -> Result<Journal, AuditError> {
        Journal::open_with_half(dir, after, HALF)
    }

    pub(crate) fn open_with_half(
        dir: &LogDir,
        after: u64,
        half_bytes: u64,
    ) -> Result<Journal, AuditError> {
        let path = path(dir);
        let jdir = journal_dir(dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jdir)
            .map_err(|e| AuditError::io("create audit journal directory", &e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditError::io("open audit journal", &e))?;
        // The journal must still be there after a power cut, or the batches
        // only it holds are gone: make its names durable before use.
        super::segment::sync_dir(&jdir)?;
        super::segment::sync_dir(dir.dir())?;
        // Only a whole number of zero-filled steps counts as allocated: a
        // crash may have cut the last extension short.
        let len = file
            .metadata()
            .map_err(|e| AuditError::io("stat audit journal", &e))?
            .len();
        if len >= HEADER as u64 {
            // Replay has run: end the old generations here, so that a later
            // open never replays them again over a segment changed since.
            let mut ends = vec![0];
            if len >= half_bytes + HEADER as u64 {
                ends.push(half_bytes);
            }
            ends.iter()
                .try_for_each(|&at| file.write_all_at(&[0u8; 4], at))
                .and_then(|()| file.sync_data())
                .map_err(|e| AuditError::io("reset audit journal", &e))?;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Journal {
            file,
            path,
            allocated: len - len % GROW_STEP,
            half: 0,
            offset: 0,
            generation: after.saturating_add(1).max(now),
            prev: 0,
            covers: [None, None],
            half_bytes,
        })
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the current generation covers: its segment and the end of its
    /// journaled bytes, if any were journaled.
    pub fn covers(&self) -> Option<(u64, u64)> {
        self.covers[self.half]
    }

    /// What the other half's generation covers, which must be durable in
    /// its segment before [`Journal::switch`] overwrites it.
    pub fn other_covers(&self) -> Option<(u64, u64)> {
        self.covers[1 - self.half]
    }

    /// Does a record of `len` bytes fit in this generation?
    pub fn fits(&self, len: usize) -> bool {
        self.offset + (HEADER + len) as u64 <= self.half_bytes
    }

    /// Can a record of `len` bytes ever fit (in a new generation)?
    pub fn can_hold(&self, len: usize) -> bool {
        (HEADER + len) as u64 <= self.half_bytes
    }

    /// Start a new generation in the other half. The caller has made every
    /// byte that half covered durable in its segment.
    pub fn switch(&mut self) {
        self.half = 1 - self.half;
        self.generation += 1;
        self.offset = 0;
        self.prev = 0;
        self.covers[self.half] = None;
    }

    /// Both halves' bytes are durable in their segments (a roll synced
    /// the old one): start a new generation in the other half.
    pub fn settled(&mut self) {
        self.covers = [None, None];
        self.switch();
    }

    /// Journal `bytes`, written to segment `segment` at `offset`, and sync
    /// the journal. The caller checked [`Journal::fits`].
    pub fn commit(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> Result<(), AuditError> {
        if let Some((covered, _)) = self.covers[self.half]
            && covered != segment
        {
            // The writer restarts at every roll; a second segment in one
            // generation would break replay's premise.
            return Err(AuditError::io(
                "audit journal",
                &io::Error::other("generation spans two segments"),
            ));
        }
        let len = u32::try_from(bytes.len())
            .map_err(|_| AuditError::io("audit journal", &io::Error::other("batch too large")))?;
        let at = self.half as u64 * self.half_bytes + self.offset;
        let end = self.offset + (HEADER + bytes.len()) as u64;
        self.grow_to(at + (HEADER + bytes.len()) as u64)?;
        let h = header(self.generation, segment, offset, len, self.prev);
        let header_crc = crc32c::crc32c(&h);
        let crc = crc32c::crc32c_append(header_crc, bytes);
        let mut rec = Vec::with_capacity(HEADER + bytes.len());
        rec.extend_from_slice(&h);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(bytes);
        self.file
            .write_all_at(&rec, at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| AuditError::io("audit journal", &e))?;
        self.offset = end;
        self.prev = header_crc;
        self.covers[self.half] = Some((segment, offset + bytes.len() as u64));
        Ok(())
    }

    /// Zero-fill the file up to at least `end` (in [`GROW_STEP`]s) and sync
    /// that, so the records written there overwrite allocated blocks.
    fn grow_to(&mut self, end: u64) -> Result<(), AuditError> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.div_ceil(GROW_STEP) * GROW_STEP;
        let zeros = vec![0u8; GROW_STEP as usize];
        let mut at = self.allocated;
        while at < target {
            self.file
                .write_all_at(&zeros, at)
                .map_err(|e| AuditError::io("grow audit journal", &e))?;
            at += GROW_STEP;
        }
        self.file
            .sync_all()
            .map_err(|e| AuditError::io("grow audit journal", &e))?;
        self.allocated = target;
        Ok(())
    }

    /// Remove the journal file (after a failure, see the module docs).
    pub fn remove(self, dir: &LogDir) -> Result<(), AuditError> {
        drop(self.file);
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io("remove audit journal", &e)),
        }
        super::segment::sync_dir(&journal_dir(dir))
    }
}

/// What the flusher is asked to make durable, and what it has.
#[derive(Default)]
struct FlushState {
    /// The active segment, its first sequence number, and the bytes written
    /// to it so far.
    target: Option<(u64, Arc<File>, u64)>,
    /// Segment and length last synced.
    synced: Option<(u64, u64)>,
    /// The flusher is waiting for work.
    idle: bool,
    stop: bool,
    /// A sync of the segment failed: nothing is synced after it.
    failed: bool,
}

/// The thread that syncs the active segment in the background (see the
/// module documentation).
pub(crate) struct Flusher {
    state: Arc<(Mutex<FlushState>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<FlushState>) -> std::sync::MutexGuard<'_, FlushState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flusher {
    pub fn start(label: &str) -> Result<Flusher, AuditError> {
        let state = Arc::new((Mutex::new(FlushState::default()), Condvar::new()));
        let s = state.clone();
        let label = label.to_owned();
        let handle = std::thread::Builder::new()
            .name("custos-audit-fl".into())
            .spawn(move || flush_loop(&s, &label))
            .map_err(|e| AuditError::io("start audit flusher", &e))?;
        Ok(Flusher {
            state,
            handle: Some(handle),
        })
    }

    /// `len` bytes have been written to segment `segment` (`file`).
    pub fn written(&self, segment: u64, file: &Arc<File>, len: u64) {
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        match &mut s.target {
            Some((seg, _, l)) if *seg == segment => *l = len,
            t => *t = Some((segment, file.clone(), len)),
        }
        if s.idle {
            cv.notify_one();
        }
    }

    /// Did a background sync of the segment fail (see the module docs)?
    pub fn failed(&self) -> bool {
        lock(&self.state.0).failed
    }

    /// Is segment `segment` durable up to `len`?
    pub fn synced_to(&self, segment: u64, len: u64) -> bool {
        lock(&self.state.0)
            .synced
            .is_some_and(|(seg, l)| seg == segment && l >= len)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        lock(m).stop = true;
        cv.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn flush_loop(state: &(Mutex<FlushState>, Condvar), label: &str) {
    let (m, cv) = state;
    loop {
        let (seg, file, len) = {
            let mut s = lock(m);
            loop {
                if s.stop {
                    return;
                }
                let pending = match (&s.target, s.synced) {
                    (Some((seg, _, len)), Some((sseg, slen))) => *seg != sseg || *len > slen,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if pending {
                    break;
                }
                s.idle = true;
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
                s.idle = false;
            }
            match &s.target {
                Some((seg, f, len)) => (*seg, f.clone(), *len),
                None => continue,
            }
        };
        match file.sync_data() {
            Ok(()) => lock(m).synced = Some((seg, len)),
            // The writer syncs the segment itself before it needs it durable.
            Err(e) => {
                tracing::error!(
                    device = %label,
                    error = %e,
                    "audit log: background segment sync failed; refusing appends, the sync journal keeps what the segment may have lost"
                );
                lock(m).failed = true;
                return;
            }
        }
        std::thread::sleep(FLUSH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(dir: &LogDir, first: u64, data: &[u8]) -> PathBuf {
        let p = dir.segment_path(first);
        fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn a_failed_background_sync_is_reported_and_never_counts_as_synced() {
        // fsync of a pipe fails (EINVAL), as a sync of a failing disk would.
        let (_reader, writer) = std::io::pipe().unwrap();
        let file = Arc::new(File::from(std::os::fd::OwnedFd::from(writer)));
        let flusher = Flusher::start("file/").unwrap();
        flusher.written(1, &file, 10);
        for _ in 0..200 {
            if flusher.failed() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(flusher.failed());
        flusher.written(1, &file, 20);
        assert!(!flusher.synced_to(1, 10) && !flusher.synced_to(1, 20));
    }

    #[test]
    fn a_segment_tail_lost_to_a_power_cut_is_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::new(tmp.path());
        let p = seg(&dir, 1, b"");
        let mut j = Journal::open(&dir, 0).unwrap();
        let mut want = Vec::new();
        for i in 0..5u8 {
            let line = format!("{{\"n\":{i}}}\n").into_bytes();
            j.commit(1, want.len() as u64, &line).unwrap();
            want.extend_from_slice(&line);
        }
        // The segment kept only its first line, and the next one half written.
        fs::write(&p, &want[..12]).unwrap();
        let r = replay(&dir).unwrap();
        assert_eq!((r.records, r.restored), (5, 4));
        assert_eq!(fs::read(&p).unwrap(), want);
        // Everything in place: a second replay writes nothing.
        let again = replay(&dir).unwrap();
        assert_eq!((again.records, again.restored, again.bytes), (5, 0, 0));
    }

    #[test]
    fn both_halves_are_replayed_older_first_and_stale_records_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::new(tmp.path());
        let p = seg(&dir, 1, b"");
        let mut j = Journal::open_with_half(&dir, 0, 4096).unwrap();
        // A first pass over half 0: three records of 100 bytes...
        for i in 0..3u64 {
            j.commit(1, i * 100, &[b'a'; 100]).unwrap();
        }
        // ...then half 1, then half 0 again with one record of exactly the
        // same size, so the first pass's second record starts right after it.
        j.switch();
        assert_eq!(j.other_covers(), Some((1, 300)));
        j.commit(1, 300, &[b'b'; 100]).unwrap();
        j.switch();
        j.commit(1, 400, &[b'c'; 100]).unwrap();
        let data = fs::read(path(&dir)).unwrap();
        let recs = parse_halves(&data, 4096);
        let got: Vec<(u64, u8)> = recs.iter().map(|r| (r.offset, r.bytes[0])).collect();
        assert_eq!(
            got,
            [(300, b'b'), (400, b'c')],
            "older generation first, stale records not read"
        );
        assert!(recs[0].generation < recs[1].generation);
        fs::write(&p, [b'a'; 300]).unwrap();
        let r = replay_with_half(&dir, 4096).unwrap();
        assert_eq!((r.records, r.restored), (2, 2));
        let seg_now = fs::read(&p).unwrap();
        assert_eq!(
            (seg_now.len(), seg_now[350], seg_now[450]),
            (500, b'b', b'c')
        );
        // A journal opened after this starts a newer generation, and ends
        // the ones replayed: a second open finds nothing to replay.
        let next = Journal::open_with_half(&dir, r.generation, 4096).unwrap();
        assert!(next.generation > r.generation);
        assert_eq!(replay_with_half(&dir, 4096).unwrap().records, 0);
    }

    #[test]
    fn a_torn_record_ends_the_journal_and_a_deleted_segment_is_passed_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::new(tmp.path());
        let p = seg(&dir, 7, b"");
        let mut j = Journal::open(&dir, 0).unwrap();
        j.commit(7, 0, b"one\n").unwrap();
        j.commit(7, 4, b"two\n").unwrap();
        j.commit(7, 8, b"three\n").unwrap();
        // Damage the third record's bytes: it and anything after is not read.
        let jp = path(&dir);
        let mut data = fs::read(&jp).unwrap();
        let third = 2 * (HEADER + 4) + HEADER;
        data[third] ^= 0xff;
        fs::write(&jp, &data).unwrap();
        assert_eq!(parse(&data).len(), 2);
        let r = replay(&dir).unwrap();
        assert_eq!((r.records, r.restored), (2, 2));
        assert_eq!(fs::read(&p).unwrap(), b"one\ntwo\n");
        // The segment deleted (retention): nothing to restore, no error.
        fs::remove_file(&p).unwrap();
        let r = replay(&dir).unwrap();
        assert_eq!((r.records, r.restored), (2, 0));
        assert!(!p.exists());
    }

    #[test]
    fn a_generation_covers_one_segment_and_fills_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::new(tmp.path());
        let mut j = Journal::open_with_half(&dir, 0, 2 * (HEADER as u64 + 10)).unwrap();
        assert!(j.fits(10));
        j.commit(1, 0, &[1; 10]).unwrap();
        assert_eq!(j.covers(), Some((1, 10)));
        assert!(
            j.commit(2, 0, &[1; 10]).is_err(),
            "a second segment needs a restart"
        );
        j.commit(1, 10, &[1; 10]).unwrap();
        assert!(!j.fits(10) && j.can_hold(10) && !j.can_hold(1000));
        j.switch();
        assert_eq!((j.covers(), j.other_covers()), (None, Some((1, 20))));
        // A roll: both halves settled, the new segment starts clean.
        j.settled();
        assert_eq!((j.covers(), j.other_covers()), (None, None));
        j.commit(2, 0, &[2; 10]).unwrap();
        let data = fs::read(path(&dir)).unwrap();
        let recs = parse_halves(&data, 2 * (HEADER as u64 + 10));
        // Settling switched back to half 0: its new generation is all there is.
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].segment, 2);
        assert_eq!(data.len() as u64 % GROW_STEP, 0, "grown in whole steps");
        j.remove(&dir).unwrap();
        assert!(!path(&dir).exists());
    }
}
