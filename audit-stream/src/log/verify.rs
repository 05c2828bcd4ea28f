//! `custos audit verify` for the local log: every record's CRC, the
//! sequence (gaps, records out of order) and a torn tail.
//!
//! Reads every segment of a [`LogDir`] in order, straight from the files (no
//! writer needed, so it works on a stopped server's directory or a copy).
//! A log that starts after sequence 1 is not a gap: retention pruned it.
//! The CLI prints the [`VerifyReport`] (it is `Serialize`) and reconciles its
//! counts with the sinks.

use std::fs::File;
use std::io::{BufRead, BufReader};

use serde::Serialize;

use super::record;
use super::segment::{LogDir, display_name};
use crate::error::AuditError;

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub segments: usize,
    /// Valid records.
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Missing sequence numbers, as inclusive ranges.
    pub gaps: Vec<(u64, u64)>,
    /// Lines that fail their CRC or framing: (segment file name, line from 1).
    pub crc_errors: Vec<(String, u64)>,
    /// Valid records whose sequence number is not above the previous one.
    pub out_of_order: Vec<(String, u64)>,
    /// The last segment ends in a partial line (a crash the log has not been
    /// reopened since).
    pub torn_tail: bool,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty()
            && self.crc_errors.is_empty()
            && self.out_of_order.is_empty()
            && !self.torn_tail
    }
}

/// Check the whole log in `dir`.
pub fn verify(dir: impl Into<LogDir>) -> Result<VerifyReport, AuditError> {
    let dir: LogDir = dir.into();
    let segments = dir.segments()?;
    let mut report = VerifyReport {
        segments: segments.len(),
        ..VerifyReport::default()
    };
    let mut line = Vec::with_capacity(4096);
    for (i, seg) in segments.iter().enumerate() {
        let name = display_name(&seg.path);
        let file = File::open(&seg.path).map_err(|e| AuditError::io("open segment", &e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AuditError::io("read segment", &e))?;
            if n == 0 {
                break;
            }
            report.bytes += n as u64;
            line_no += 1;
            if line.last() != Some(&b'\n') {
                if i + 1 == segments.len() {
                    report.torn_tail = true;
                } else {
                    report.crc_errors.push((name.clone(), line_no));
                }
                break;
            }
            let Some(rec) = record::decode(&line[..line.len() - 1]) else {
                report.crc_errors.push((name.clone(), line_no));
                continue;
            };
            match report.last_seq {
                Some(last) if rec.seq <= last => {
                    report.out_of_order.push((name.clone(), line_no));
                    continue;
                }
                Some(last) if rec.seq > last + 1 => report.gaps.push((last + 1, rec.seq - 1)),
                _ => {}
            }
            report.first_seq.get_or_insert(rec.seq);
            report.last_seq = Some(rec.seq);
            report.records += 1;
        }
    }
    Ok(report)
}
