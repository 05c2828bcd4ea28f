//! Reading the local audit log in order, for shippers, `verify` and queries.
//!
//! A [`LogReader`] starts at a sequence number, finds the segment holding it
//! and yields [`Record`]s (sequence number and event bytes) in log order,
//! moving on to the next segment when one is sealed. Two modes:
//!
//! * **following** ([`super::AuditLog::reader`] or [`LogReader::follow`]):
//!   the reader holds the writer's `watch` of the durable end
//!   ([`super::DurablePosition`]) and never reads a byte past it, even if more
//!   is already in the file (a failed batch may still be cut back);
//!   [`LogReader::next`] sleeps on the watch until the writer commits more.
//!   This is what shippers use: a record they ship can never vanish in a
//!   crash.
//! * **standalone** ([`LogReader::open`]): no writer in this process (e.g.
//!   `custos audit verify`, tests); every complete, CRC-valid record on disk
//!   is yielded, and [`LogReader::next`] polls for more.
//!
//! A damaged record (bad CRC or framing) is reported once as
//! [`AuditError::CorruptRecord`] and the reader has already moved past it, so
//! the caller decides: log and go on, or stop. [`LogReader::try_next`] does
//! blocking file reads (usually from the page cache); call it from
//! `spawn_blocking` if that matters.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::DurablePosition;
use super::record;
use super::segment::{LogDir, display_name};
use crate::error::AuditError;

/// How often a standalone reader looks for new records in [`LogReader::next`].
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes read from a segment at a time.
const CHUNK: u64 = 256 * 1024;

/// One record of the log.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number (monotonic over the log, from 1).
    pub seq: u64,
    /// The event: the JSON object as appended, without the log's
    /// `custos_seq` / `custos_crc` members and line prefix.
    pub event: Vec<u8>,
    /// The first sequence number of the segment it is in.
    pub segment: u64,
    /// Bytes of its line on disk, newline included (for backlog metrics).
    pub line_len: u64,
}

impl std::fmt::Debug for Record {
    // Events are HMAC'd, but `log_raw` devices hold raw secrets: print sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("seq", &self.seq)
            .field("segment", &self.segment)
            .field("event_len", &self.event.len())
            .finish()
    }
}

impl Record {
    /// The event parsed as JSON.
    pub fn json(&self) -> Result<Value, AuditError> {
        serde_json::from_slice(&self.event).map_err(|e| AuditError::Encode(e.to_string()))
    }
}

/// The open segment and how far it has been read.
struct Cursor {
    first_seq: u64,
    path: PathBuf,
    file: File,
    /// File offset of the next byte to read into `chunk`.
    read_offset: u64,
    /// Read buffer of `CHUNK` bytes, zeroed once; `chunk_len` of them are valid.
    chunk: Vec<u8>,
    chunk_len: usize,
    chunk_pos: usize,
    /// Lines fully read so far (the next line's number is this + 1).
    line_no: u64,
    /// A newer segment exists, so this one gets no more writes.
    sealed: bool,
    /// The sequence number of the last valid record read here.
    last_seq: Option<u64>,
}

enum Line {
    Record(Record),
    Corrupt { segment: String, line: u64 },
    Eof,
}

/// Records a follower of the log (the query index, the access detector)
/// takes in one batch at most.
pub const FOLLOW_BATCH: usize = 4096;
/// How long a follower that has caught up lets new records gather after the
/// first one arrives (fewer, larger batches); about the most it lags then.
pub const FOLLOW_GATHER: Duration = Duration::from_millis(100);

/// A follower's pause before it reads its next batch: [`FOLLOW_GATHER`] (or
/// until `stop`) when its last batch reached the end of the log, none when
/// that batch was full. Waiting after every full batch would cap a follower
/// at [`FOLLOW_BATCH`] records per [`FOLLOW_GATHER`], however fast the log
/// grows.
pub async fn gather_unless_behind(behind: bool, stop: &mut watch::Receiver<bool>) {
    if !behind {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_GATHER) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Reads records in order from a sequence number on. See the module docs.
pub struct LogReader {
    dir: LogDir,
    /// The lowest sequence number still to yield.
    want: u64,
    cur: Option<Cursor>,
    durable: Option<watch::Receiver<DurablePosition>>,
    /// Bytes of a line whose end has not been read yet.
    partial: Vec<u8>,
}

impl LogReader {
    /// A standalone reader of the log in `dir` from `from_seq` (inclusive;
    /// 0 or 1 = from the oldest retained record). Records before the oldest
    /// retained segment are gone: the first record then has a higher seq.
    pub fn open(dir: impl Into<LogDir>, from_seq: u64) -> Result<LogReader, AuditError> {
        let mut r = LogReader::new(dir.into(), from_seq, None);
        r.position_cursor()?;
        Ok(r)
    }

    /// A reader that never reads past the writer's durable end
    /// ([`super::AuditLog::subscribe`]).
    pub fn follow(
        dir: LogDir,
        from_seq: u64,
        durable: watch::Receiver<DurablePosition>,
    ) -> LogReader {
        LogReader::new(dir, from_seq, Some(durable))
    }

    fn new(
        dir: LogDir,
        from_seq: u64,
        durable: Option<watch::Receiver<DurablePosition>>,
    ) -> LogReader {
        LogReader {
            dir,
            want: from_seq.max(1),
            cur: None,
            durable,
            partial: Vec::with_capacity(4096),
        }
    }

    /// The lowest sequence number the next record can have (the last
    /// yielded one + 1, or the starting point).
    pub fn position(&self) -> u64 {
        self.want
    }

    fn durable_end(&self) -> Option<DurablePosition> {
        self.durable.as_ref().map(|rx| *rx.borrow())
    }

    /// Open the segment holding `want` (or the oldest one after it).
    /// Returns false when the log has no segment yet.
    fn position_cursor(&mut self) -> Result<bool, AuditError> {
        let segments = self.dir.segments()?;
        let chosen = segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= self.want)
            .or_else(|| segments.first());
        let Some(seg) = chosen else {
            return Ok(false);
        };
        self.open_cursor(seg.first_seq, seg.path.clone())?;
        Ok(true)
    }

    fn open_cursor(&mut self, first_seq: u64, path: PathBuf) -> Result<(), AuditError> {
        let file = File::open(&path).map_err(|e| AuditError::io("open segment", &e))?;
        self.partial.clear();
        self.cur = Some(Cursor {
            first_seq,
            path,
            file,
            read_offset: 0,
            chunk: vec![0; CHUNK as usize],
            chunk_len: 0,
            chunk_pos: 0,
            line_no: 0,
            sealed: false,
            last_seq: None,
        });
        Ok(())
    }

    /// Read the next complete line of the current segment, never past the
    /// durable end when following.
    fn read_line(&mut self, end: Option<DurablePosition>) -> Result<Line, AuditError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(Line::Eof);
        };
        loop {
            let rest = &cur.chunk[cur.chunk_pos..cur.chunk_len];
            if let Some(i) = memchr::memchr(b'\n', rest) {
                self.partial.extend_from_slice(&rest[..=i]);
                cur.chunk_pos += i + 1;
                break;
            }
            self.partial.extend_from_slice(rest);
            cur.chunk_len = 0;
            cur.chunk_pos = 0;
            let limit = match end {
                None => u64::MAX,
                Some(d) if cur.first_seq == d.segment => d.offset,
                Some(d) if cur.first_seq < d.segment => u64::MAX,
                Some(_) => 0,
            };
            let room = limit.saturating_sub(cur.read_offset).min(CHUNK);
            if room == 0 {
                return Ok(Line::Eof);
            }
            let n = cur
                .file
                .read_at(&mut cur.chunk[..room as usize], cur.read_offset)
                .map_err(|e| AuditError::io("read segment", &e))?;
            cur.chunk_len = n;
            cur.read_offset += n as u64;
            if n == 0 {
                return Ok(Line::Eof);
            }
        }
        cur.line_no += 1;
        let line_len = self.partial.len() as u64;
        let decoded = record::decode(&self.partial[..self.partial.len() - 1]);
        self.partial.clear();
        Ok(match decoded {
            Some(d) => {
                cur.last_seq = Some(d.seq);
                Line::Record(Record {
                    seq: d.seq,
                    event: d.event,
                    segment: cur.first_seq,
                    line_len,
                })
            }
            None => Line::Corrupt {
                segment: display_name(&cur.path),
                line: cur.line_no,
            },
        })
    }

    /// A damaged line before the starting point is not the caller's concern.
    fn corrupt_is_before_start(&self) -> bool {
        self.cur
            .as_ref()
            .and_then(|c| c.last_seq)
            .is_some_and(|s| s.saturating_add(1) < self.want)
    }

    /// At the end of the current segment: move on to the next segment once
    /// this one is certainly finished. `Ok(None)`: read again; otherwise the
    /// line to report (`Eof`: nothing more now).
    fn advance(&mut self, end: Option<DurablePosition>) -> Result<Option<Line>, AuditError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(if self.position_cursor()? {
                None
            } else {
                Some(Line::Eof)
            });
        };
        if !cur.sealed {
            // While following, a newer segment only matters once the writer
            // reports durable records in a later segment.
            if end.is_some_and(|d| d.segment <= cur.first_seq) {
                return Ok(Some(Line::Eof));
            }
            let first = cur.first_seq;
            let newer = self
                .dir
                .segments()?
                .into_iter()
                .any(|s| s.first_seq > first);
            if !newer {
                return Ok(Some(Line::Eof));
            }
            // The writer never writes a segment after creating the next one,
            // but our end-of-file read may predate its last write: read once
            // more before leaving.
            cur.sealed = true;
            return Ok(None);
        }
        let first = cur.first_seq;
        let torn = (!self.partial.is_empty()).then(|| Line::Corrupt {
            segment: display_name(&cur.path),
            line: cur.line_no + 1,
        });
        let next = self
            .dir
            .segments()?
            .into_iter()
            .find(|s| s.first_seq > first);
        match next {
            Some(s) => self.open_cursor(s.first_seq, s.path)?,
            None => return Ok(Some(Line::Eof)),
        }
        Ok(torn)
    }

    /// The next record if one is available now (and, when following,
    /// durable); `Ok(None)` at the end of the log.
    pub fn try_next(&mut self) -> Result<Option<Record>, AuditError> {
        let end = self.durable_end();
        loop {
            let line = match self.read_line(end)? {
                Line::Eof => match self.advance(end)? {
                    None => continue,
                    Some(Line::Eof) => return Ok(None),
                    Some(other) => other,
                },
                other => other,
            };
            match line {
                Line::Record(rec) => {
                    if rec.seq < self.want {
                        continue;
                    }
                    self.want = rec.seq + 1;
                    return Ok(Some(rec));
                }
                Line::Corrupt { segment, line } => {
                    if self.corrupt_is_before_start() {
                        continue;
                    }
                    return Err(AuditError::CorruptRecord { segment, line });
                }
                Line::Eof => return Ok(None),
            }
        }
    }

    /// Add the records available now to `batch` until it holds
    /// [`FOLLOW_BATCH`]. Returns true when it stopped because the batch is
    /// full (more may be there: the caller is behind), false at the end of
    /// the log. A corrupt record is logged, naming the `follower`, and passed
    /// over (`custos audit verify` reports it); other errors are returned.
    pub fn fill_batch(
        &mut self,
        batch: &mut Vec<Record>,
        follower: &str,
    ) -> Result<bool, AuditError> {
        while batch.len() < FOLLOW_BATCH {
            match self.try_next() {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => return Ok(false),
                Err(e @ AuditError::CorruptRecord { .. }) => {
                    tracing::warn!(error = %e, "{follower}: corrupt record passed over");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The next record, waiting for the writer when the reader is at the end.
    /// A following reader returns [`AuditError::Closed`] once the log has
    /// shut down and every durable record was read. Cancel-safe.
    pub async fn next(&mut self) -> Result<Record, AuditError> {
        loop {
            if let Some(rx) = self.durable.as_mut() {
                rx.mark_unchanged();
            }
            if let Some(r) = self.try_next()? {
                return Ok(r);
            }
            match self.durable.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        return match self.try_next()? {
                            Some(r) => Ok(r),
                            None => Err(AuditError::Closed),
                        };
                    }
                }
                None => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }
}
