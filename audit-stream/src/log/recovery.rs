//! Crash recovery of the active segment, run once when the log is opened.
//!
//! Group commit only acknowledges a record after `fdatasync`, so a crash can
//! only leave an unacknowledged, possibly torn, batch at the end of the last
//! segment. Recovery reads that segment line by line, remembers where the
//! last complete (newline-terminated) and CRC-valid record ends, and cuts the
//! file there: whatever follows was never acknowledged. Nothing before that
//! record is touched, not even a damaged line in the middle (that is bit rot,
//! not a crash; `verify` reports it and readers skip it with an error). The
//! next sequence number follows the last valid record, or the segment's name
//! when it holds none.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::record;
use crate::error::AuditError;

/// What recovery found in the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// The segment's length after recovery.
    pub len: u64,
    /// Bytes cut off the end (0 when the segment ended cleanly).
    pub truncated: u64,
}

/// Scan the segment at `path` (named for `first_seq`), cut a torn tail and
/// fsync it. Returns where appending continues.
pub(crate) fn recover_segment(path: &Path, first_seq: u64) -> Result<Recovered, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io("open segment", &e))?;
    let file_len = file
        .metadata()
        .map_err(|e| AuditError::io("stat segment", &e))?
        .len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(4096);
    let mut offset = 0u64;
    let mut valid_end = 0u64;
    let mut last_seq = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io("read segment", &e))?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        if line.last() != Some(&b'\n') {
            break; // a partial last line
        }
        if let Some(rec) = record::decode(&line[..line.len() - 1]) {
            valid_end = offset;
            last_seq = Some(rec.seq);
        }
    }
    let truncated = file_len.saturating_sub(valid_end);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io("open segment", &e))?;
    if truncated > 0 {
        file.set_len(valid_end)
            .map_err(|e| AuditError::io("truncate segment", &e))?;
    }
    // Whatever survived the crash may still sit only in the page cache of a
    // previous process's kernel session; make it durable before counting it.
    file.sync_all()
        .map_err(|e| AuditError::io("fsync segment", &e))?;
    let next_seq = match last_seq {
        Some(s) => s.saturating_add(1).max(first_seq),
        None => first_seq,
    };
    Ok(Recovered {
        next_seq,
        len: valid_end,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        record::encode(b"", format!("{{\"n\":{seq}}}").as_bytes(), seq, &mut out);
        out
    }

    #[test]
    fn cuts_only_after_the_last_valid_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seg");
        let mut data = Vec::new();
        data.extend(rec(10));
        data.extend(b"rotten middle line\n");
        data.extend(rec(12));
        let keep = data.len() as u64;
        data.extend(b"garbage\n");
        let r13 = rec(13);
        data.extend(&r13[..r13.len() / 2]);
        std::fs::write(&p, &data).unwrap();
        let r = recover_segment(&p, 10).unwrap();
        assert_eq!(r.next_seq, 13);
        assert_eq!(r.len, keep);
        assert_eq!(r.truncated, data.len() as u64 - keep);
        assert_eq!(std::fs::read(&p).unwrap(), data[..keep as usize]);

        // A record missing only its newline is torn too.
        let mut data = rec(1);
        let keep = data.len();
        data.extend(&rec(2)[..rec(2).len() - 1]);
        std::fs::write(&p, &data).unwrap();
        let r = recover_segment(&p, 1).unwrap();
        assert_eq!((r.next_seq, r.len as usize), (2, keep));

        // Nothing valid: the name gives the sequence.
        std::fs::write(&p, b"\x00\x00\x00").unwrap();
        let r = recover_segment(&p, 77).unwrap();
        assert_eq!((r.next_seq, r.len, r.truncated), (77, 0, 3));
    }
}
