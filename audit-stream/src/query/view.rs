//! A read-only view of one audit event, as the query index, the
//! Elasticsearch query and the access-pattern detector need it.
//!
//! Input is the hashed event JSON as the `file` device wrote it (a local log
//! [`crate::log::Record`]) or as a sink stored it (an Elasticsearch `_source`).
//! Only the fields these readers use are deserialized; everything else is
//! skipped without being built, so parsing stays cheap on large logs. Nothing
//! here holds a raw secret: accessors are as the device wrote them (HMAC'd
//! unless `hmac_accessor=false`), request and response bodies are not kept
//! except the KV version number and the transit key versions (numbers are
//! never HMAC'd).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The `auth` block of an event, trimmed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthView {
    #[serde(default)]
    pub accessor: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    #[serde(default)]
    pub entity_id: String,
}

/// The `request` block of an event, trimmed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestView {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub mount_point: String,
    #[serde(default)]
    pub mount_type: String,
    #[serde(default)]
    pub remote_address: String,
}

/// `response.data`, of which only `metadata` is kept (KV v2 reads put the
/// version there).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseDataView {
    #[serde(default)]
    pub metadata: Value,
}

/// The `response` block, trimmed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseView {
    #[serde(default)]
    pub data: Option<ResponseDataView>,
    /// Custos's `response.key_versions`: the transit key versions the
    /// operation used (see [`crate::event::AuditResponse::key_versions`]).
    #[serde(default)]
    pub key_versions: Vec<u64>,
}

/// One audit event, trimmed to what queries and access metrics read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventView {
    #[serde(default)]
    pub time: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub auth: AuthView,
    #[serde(default)]
    pub request: RequestView,
    #[serde(default)]
    pub response: Option<ResponseView>,
    #[serde(default)]
    pub error: String,
}

impl EventView {
    /// Parse an event from its JSON bytes.
    pub fn parse(bytes: &[u8]) -> Result<EventView, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Parse an event the followers of the local log can use: `None` for a
    /// request event recognised from its first bytes as the `file` device
    /// writes it (`{"time":"…","type":"request",…`), which both followers
    /// pass over (they use response events only) without parsing it — half
    /// the log. Any other layout is parsed, and judged by its `type` after.
    pub fn parse_unless_request(bytes: &[u8]) -> Option<Result<EventView, serde_json::Error>> {
        (!is_request_event(bytes)).then(|| EventView::parse(bytes))
    }

    /// Parse an event from a JSON value (an Elasticsearch `_source`).
    pub fn from_value(v: Value) -> Result<EventView, serde_json::Error> {
        serde_json::from_value(v)
    }

    /// A response event of a request that succeeded.
    pub fn is_successful_response(&self) -> bool {
        self.kind == "response" && self.error.is_empty()
    }

    /// The event time in unix nanoseconds, if it parses as RFC 3339.
    pub fn time_nanos(&self) -> Option<i64> {
        parse_rfc3339_nanos(&self.time)
    }

    /// The KV version the response carried (`response.data.metadata.version`).
    pub fn kv_version(&self) -> Option<u64> {
        let meta = &self.response.as_ref()?.data.as_ref()?.metadata;
        meta.get("version")?.as_u64()
    }

    /// The transit key versions the operation used
    /// (`response.key_versions`), distinct and ascending; empty for
    /// anything but transit operations that use a key version.
    pub fn key_versions(&self) -> Vec<u64> {
        let mut v = self
            .response
            .as_ref()
            .map(|r| r.key_versions.clone())
            .unwrap_or_default();
        // The server writes them sorted; a document from elsewhere may not be.
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The auth role, from token metadata (`role_name`, else `role`).
    pub fn role(&self) -> String {
        ["role_name", "role"]
            .iter()
            .find_map(|k| self.auth.metadata.get(*k).and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned()
    }
}

/// Whether `bytes` is, on its face, a request event as the `file` device
/// writes it (see [`EventView::parse_unless_request`]); `false` for any
/// other layout.
fn is_request_event(bytes: &[u8]) -> bool {
    const TIME: &[u8] = b"{\"time\":\"";
    const TYPE_REQUEST: &[u8] = b"\",\"type\":\"request\"";
    let Some(rest) = bytes.strip_prefix(TIME) else {
        return false;
    };
    // An RFC 3339 time has no quote or backslash; stop at its end.
    let Some(end) = rest.iter().take(64).position(|&b| b == b'"' || b == b'\\') else {
        return false;
    };
    rest[end..].starts_with(TYPE_REQUEST)
}

/// RFC 3339 → unix nanoseconds.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Unix nanoseconds → RFC 3339 (UTC, nanoseconds trimmed as Vault does).
pub fn format_nanos(nanos: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) {
        Ok(t) => crate::event::format_rfc3339(t),
        Err(_) => nanos.to_string(),
    }
}

/// A time given by a caller: RFC 3339, or unix seconds (fractions allowed).
/// Returns unix nanoseconds.
pub fn parse_time_param(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(n) = parse_rfc3339_nanos(s) {
        return Some(n);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1_000_000_000);
    }
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() || f.abs() > 9.0e9 {
        return None;
    }
    Some((f * 1e9) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trimmed_event() {
        let v = EventView::parse(
            br#"{"time":"2024-01-01T00:00:01.5Z","type":"response","auth":{"accessor":"hmac-sha256:ab","display_name":"approle","policies":["app"],"metadata":{"role_name":"web","n":3}},"request":{"id":"r1","path":"secret/data/x","operation":"read","mount_point":"secret/","remote_address":"10.0.0.1","data":{"a":"b"}},"response":{"data":{"data":{"k":"hmac-sha256:00"},"metadata":{"version":3,"created_time":"hmac-sha256:11"}}}}"#,
        )
        .unwrap();
        assert!(v.is_successful_response());
        assert_eq!(v.kv_version(), Some(3));
        assert_eq!(v.role(), "web");
        assert_eq!(v.time_nanos(), Some(1_704_067_201_500_000_000));
        assert_eq!(
            format_nanos(1_704_067_201_500_000_000),
            "2024-01-01T00:00:01.5Z"
        );
    }

    #[test]
    fn request_events_are_recognised_without_parsing() {
        use crate::event::{AuditEvent, AuditRequest, AuditResponse};
        let req = AuditRequest::new("id", "read", "secret/data/x");
        let request = serde_json::to_vec(&AuditEvent::request(None, req.clone())).unwrap();
        let response = serde_json::to_vec(&AuditEvent::response(
            None,
            req,
            AuditResponse::default(),
            None,
        ))
        .unwrap();
        // As the file device writes them (field order: time, type, ...).
        assert!(is_request_event(&request));
        assert_eq!(EventView::parse(&request).unwrap().kind, "request");
        assert!(!is_request_event(&response));
        assert!(EventView::parse_unless_request(&request).is_none());
        let parsed = EventView::parse_unless_request(&response).unwrap().unwrap();
        assert_eq!(parsed.kind, "response");
        // A request event in another layout is parsed and says what it is.
        let other = EventView::parse_unless_request(br#"{"type":"request","time":"t"}"#);
        assert_eq!(other.unwrap().unwrap().kind, "request");
        // Any other layout is left to the parser.
        for other in [
            &br#"{"type":"request","time":"t"}"#[..],
            br#"{"time":"t\"","type":"request"}"#,
            br#"{"time":"t","type":"requests"}"#,
            br#"{"time":"t", "type":"request"}"#,
            b"",
        ] {
            assert!(!is_request_event(other), "{other:?}");
        }
        assert!(is_request_event(br#"{"time":"t","type":"request"}"#));
    }

    #[test]
    fn metadata_that_is_not_an_object_has_no_version() {
        let v = EventView::parse(
            br#"{"time":"x","type":"response","request":{},"response":{"data":{"metadata":"hmac-sha256:aa"}}}"#,
        )
        .unwrap();
        assert_eq!(v.kv_version(), None);
        assert_eq!(v.time_nanos(), None);
        assert!(v.key_versions().is_empty());
    }

    #[test]
    fn transit_key_versions_are_read_sorted_and_distinct() {
        let v = EventView::parse(
            br#"{"time":"2024-01-01T00:00:01Z","type":"response","request":{"path":"transit/decrypt/k","operation":"update"},"response":{"data":{"plaintext":"hmac-sha256:aa"},"key_versions":[3,1,3]}}"#,
        )
        .unwrap();
        assert_eq!(v.key_versions(), vec![1, 3]);
        assert_eq!(v.kv_version(), None);
    }

    #[test]
    fn time_params() {
        assert_eq!(parse_time_param("10"), Some(10_000_000_000));
        assert_eq!(parse_time_param("1.5"), Some(1_500_000_000));
        assert_eq!(
            parse_time_param("1970-01-01T00:00:02Z"),
            Some(2_000_000_000)
        );
        assert_eq!(parse_time_param("yesterday"), None);
        assert_eq!(parse_time_param("NaN"), None);
    }
}
