//! The record format of the local audit log: one JSON object per line.
//!
//! The writer ([`super::writer`]) turns an event (a serialized JSON object)
//! and its sequence number into a line; recovery, readers and `verify` turn a
//! line back into `(seq, event)` and check it. A line is
//!
//! ```text
//! <prefix>{..event members..,"custos_seq":42,"custos_crc":"1a2b3c4d"}\n
//! ```
//!
//! i.e. the event object with two members appended: `custos_seq`, the
//! record's sequence number (monotonic over the whole log, from 1), and
//! `custos_crc`, the CRC32C (Castagnoli) of **every byte of the line before
//! `,"custos_crc"`** as 8 lowercase hex digits. The CRC therefore covers the
//! optional line prefix, the event and the sequence number: a flipped digit
//! in `custos_seq` is caught like one in the event. Without a prefix each line
//! is valid JSON (`tail -f | jq` works); Vault's `prefix` option may not
//! contain `{` or a line break so the object can still be found.
//!
//! The two members are found from the end of the line: the tail has a fixed
//! shape (`,"custos_crc":"` + 8 hex + `"}`), and `"custos_seq":` is the last
//! occurrence of that key (an event may contain the same key, but never after
//! ours). An empty event `{}` becomes `{"custos_seq":1,"custos_crc":"…"}`.

use std::io::Write;

/// The key of the sequence member, with its colon.
const SEQ_KEY: &[u8] = b"\"custos_seq\":";
/// The start of the CRC member, with the comma before it.
const CRC_KEY: &[u8] = b",\"custos_crc\":\"";
/// Bytes after the CRC-covered part: `,"custos_crc":"` + 8 hex + `"}`.
const TAIL_LEN: usize = CRC_KEY.len() + 8 + 2;
/// Most digits of a u64.
const MAX_SEQ_DIGITS: usize = 20;

/// Why bytes handed to the log cannot become a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadError {
    /// Not `{ ... }` (after trimming spaces).
    NotAnObject,
    /// Contains a line break, which would split the record.
    LineBreak,
}

impl PayloadError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PayloadError::NotAnObject => "an audit log record must be a JSON object",
            PayloadError::LineBreak => "an audit log record must not contain a line break",
        }
    }
}

/// Check that `payload` can be framed: a one-line JSON object. Only the
/// framing is checked (braces, no line break), not the full JSON grammar:
/// payloads come from `serde_json`.
pub(crate) fn check_payload(payload: &[u8]) -> Result<(), PayloadError> {
    let trimmed = payload.trim_ascii();
    if trimmed.len() < 2 || trimmed[0] != b'{' || trimmed[trimmed.len() - 1] != b'}' {
        return Err(PayloadError::NotAnObject);
    }
    if payload.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err(PayloadError::LineBreak);
    }
    Ok(())
}

/// Check a line prefix (Vault's `prefix` option) for use in front of records.
pub(crate) fn check_line_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.contains(['{', '\n', '\r']) {
        Err("must not contain '{' or a line break")
    } else {
        Ok(())
    }
}

/// Append the record line for `payload` (already checked with
/// [`check_payload`]) with sequence number `seq` to `out`, newline included.
pub(crate) fn encode(line_prefix: &[u8], payload: &[u8], seq: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let obj = payload.trim_ascii();
    // Everything but the closing brace.
    let open = &obj[..obj.len() - 1];
    out.extend_from_slice(line_prefix);
    out.extend_from_slice(open);
    let empty = open.len() == 1 || open[1..].trim_ascii().is_empty();
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(SEQ_KEY);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{seq}");
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(CRC_KEY);
    let _ = writeln!(out, "{crc:08x}\"}}");
}

/// A record decoded from one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub seq: u64,
    /// The event object as it was appended (without the two log members).
    pub event: Vec<u8>,
}

fn parse_hex8(b: &[u8]) -> Option<u32> {
    if b.len() != 8 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Decode one line (without its newline). `None` when the line is not a
/// record or fails its CRC.
pub(crate) fn decode(line: &[u8]) -> Option<Decoded> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = line.len();
    if n < TAIL_LEN + SEQ_KEY.len() + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let covered = &line[..n - TAIL_LEN];
    if &line[n - TAIL_LEN..n - TAIL_LEN + CRC_KEY.len()] != CRC_KEY {
        return None;
    }
    let crc = parse_hex8(&line[n - 10..n - 2])?;
    if crc32c::crc32c(covered) != crc {
        return None;
    }
    // `"custos_seq":` starts within the last SEQ_KEY + 20 digits bytes.
    let window_start = covered.len().saturating_sub(SEQ_KEY.len() + MAX_SEQ_DIGITS);
    let pos = window_start
        + covered[window_start..]
            .windows(SEQ_KEY.len())
            .rposition(|w| w == SEQ_KEY)?;
    let digits = &covered[pos + SEQ_KEY.len()..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seq: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let body = &covered[..pos];
    let body = body.strip_suffix(b",").unwrap_or(body);
    let open = body.iter().position(|&b| b == b'{')?;
    let mut event = Vec::with_capacity(body.len() - open + 1);
    event.extend_from_slice(&body[open..]);
    event.push(b'}');
    Some(Decoded { seq, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(prefix: &str, payload: &str, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(prefix.as_bytes(), payload.as_bytes(), seq, &mut out);
        out
    }

    #[test]
    fn round_trip_and_valid_json() {
        let l = line("", r#"{"type":"request","n":1}"#, 42);
        let text = std::str::from_utf8(&l).unwrap();
        assert!(text.starts_with(r#"{"type":"request","n":1,"custos_seq":42,"custos_crc":""#));
        assert!(text.ends_with("\"}\n"));
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["custos_seq"], 42);
        assert_eq!(v["type"], "request");
        // The CRC covers everything before `,"custos_crc"`.
        let cut = text.find(",\"custos_crc\"").unwrap();
        let want = format!("{:08x}", crc32c::crc32c(&l[..cut]));
        assert_eq!(v["custos_crc"], want.as_str());
        let d = decode(&l[..l.len() - 1]).unwrap();
        assert_eq!(d.seq, 42);
        assert_eq!(d.event, br#"{"type":"request","n":1}"#);
    }

    #[test]
    fn empty_object_prefix_and_inner_key() {
        let l = line("", "{}", 1);
        assert!(l.starts_with(b"{\"custos_seq\":1,"));
        let d = decode(&l[..l.len() - 1]).unwrap();
        assert_eq!((d.seq, d.event.as_slice()), (1, &b"{}"[..]));

        let l = line("AUDIT: ", r#"{"custos_seq":7}"#, u64::MAX);
        assert!(l.starts_with(b"AUDIT: {"));
        let d = decode(&l[..l.len() - 1]).unwrap();
        assert_eq!(d.seq, u64::MAX);
        assert_eq!(d.event, br#"{"custos_seq":7}"#);
    }

    #[test]
    fn any_flipped_byte_or_cut_is_rejected() {
        let l = line("", r#"{"a":"b"}"#, 12345);
        let body = &l[..l.len() - 1];
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_none(), "flip at {i} accepted");
        }
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_none(), "cut at {cut} accepted");
        }
        assert!(decode(b"").is_none());
        assert!(decode(b"garbage\x00\x00").is_none());
    }

    #[test]
    fn payload_and_prefix_checks() {
        assert_eq!(check_payload(b"{}"), Ok(()));
        assert_eq!(check_payload(b" {\"a\":1} "), Ok(()));
        assert_eq!(check_payload(b"[]"), Err(PayloadError::NotAnObject));
        assert_eq!(check_payload(b"{"), Err(PayloadError::NotAnObject));
        assert_eq!(check_payload(b"{\n}"), Err(PayloadError::LineBreak));
        assert!(check_line_prefix("AUDIT: ").is_ok());
        assert!(check_line_prefix("a{").is_err());
        assert!(check_line_prefix("a\n").is_err());
    }
}
