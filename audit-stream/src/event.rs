//! The audit event model, in Vault's audit log JSON format.
//!
//! The core builds one [`AuditEvent`] before a request is routed
//! ([`AuditEvent::request`]) and one after the backend answered
//! ([`AuditEvent::response`]), from the request, the caller's token and the
//! response. The broker hands a copy to every device, which HMACs the secrets
//! in it ([`crate::hash::hash_event`]) and serializes it as one JSON line.
//!
//! Field names and omission rules follow Vault's `audit/types.go`: empty
//! strings, zero numbers, empty lists and absent blocks are left out, so a
//! line written by Custos parses with the same tools as one written by Vault
//! (`jq`, Splunk/Elastic Vault integrations). The `auth`, `request` and
//! (for responses) `response` blocks are always present.
//!
//! Events carry raw tokens and request bodies until a device hashes them, so
//! none of these types prints its content through `Debug`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// `request` or `response`: the value of the top-level `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Request,
    Response,
}

impl EventType {
    /// The wire name: `"request"` or `"response"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Request => "request",
            EventType::Response => "response",
        }
    }
}

/// One audit log entry: a request (before routing) or a response (after).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the event was created, RFC 3339 with nanoseconds, UTC.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The caller's token (hashed by devices). Always present, possibly empty.
    #[serde(default)]
    pub auth: AuditAuth,
    pub request: AuditRequest,
    /// Only on response events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AuditResponse>,
    /// The error returned to the client, if any (e.g. "permission denied").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The OpenTelemetry trace id of the request, when traced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The node that wrote the event (`storage "raft" { node_id }`), on a
    /// cluster; stamped by the broker ([`crate::AuditBroker::set_node_id`])
    /// so every device and sink carries the same value. Absent on a server
    /// without a cluster. Not in Vault's format: parsers ignore it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Top-level keys of `request.data` whose string values are kept clear
    /// (a mount's `audit_non_hmac_request_keys`). Not serialized.
    #[serde(skip)]
    pub non_hmac_request_keys: Vec<String>,
    /// Top-level keys of `response.data` whose string values are kept clear
    /// (a mount's `audit_non_hmac_response_keys`). Not serialized.
    #[serde(skip)]
    pub non_hmac_response_keys: Vec<String>,
}

/// The current time formatted as Vault does (`time.RFC3339Nano`, UTC).
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Format a timestamp as RFC 3339 with nanoseconds (trailing zeros trimmed).
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl AuditEvent {
    /// A request event, stamped with the current time. `auth` is the
    /// caller's token, `None` for unauthenticated requests (login, health).
    pub fn request(auth: Option<AuditAuth>, req: AuditRequest) -> Self {
        AuditEvent {
            time: now_rfc3339(),
            kind: EventType::Request,
            auth: auth.unwrap_or_default(),
            request: req,
            response: None,
            error: String::new(),
            trace_id: String::new(),
            node_id: String::new(),
            non_hmac_request_keys: Vec::new(),
            non_hmac_response_keys: Vec::new(),
        }
    }

    /// A response event, stamped with the current time. `error` is the error
    /// message returned to the client, if the request failed.
    pub fn response(
        auth: Option<AuditAuth>,
        req: AuditRequest,
        resp: AuditResponse,
        error: Option<String>,
    ) -> Self {
        AuditEvent {
            time: now_rfc3339(),
            kind: EventType::Response,
            auth: auth.unwrap_or_default(),
            request: req,
            response: Some(resp),
            error: error.unwrap_or_default(),
            trace_id: String::new(),
            node_id: String::new(),
            non_hmac_request_keys: Vec::new(),
            non_hmac_response_keys: Vec::new(),
        }
    }

    /// Set the error message returned to the client.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = error.into();
        self
    }

    /// Set the trace id linking this event to its trace.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = trace_id.into();
        self
    }

    /// Keep these `request.data` / `response.data` keys' values clear.
    pub fn with_non_hmac_keys(mut self, request: Vec<String>, response: Vec<String>) -> Self {
        self.non_hmac_request_keys = request;
        self.non_hmac_response_keys = response;
        self
    }

    /// The stable, unique id of this event: `<request.id>-request` or
    /// `<request.id>-response`. Used as the Kafka key and Elasticsearch `_id`,
    /// so a retried shipment never duplicates an event.
    pub fn event_id(&self) -> String {
        format!("{}-{}", self.request.id, self.kind.as_str())
    }
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("time", &self.time)
            .field("kind", &self.kind)
            .field("request", &self.request)
            .field("has_response", &self.response.is_some())
            .field("has_error", &!self.error.is_empty())
            .finish_non_exhaustive()
    }
}

/// The `auth` block: the token used for a request (top level), or the token
/// a login issued (`response.auth`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditAuth {
    /// The token itself; HMAC'd by devices.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_token: String,
    /// The token's accessor; HMAC'd when `hmac_accessor` is on (default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accessor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_policies: Vec<String>,
    /// Token metadata; kept clear, as Vault does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entity_id: String,
    /// `service`, `batch` or `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_type: String,
    /// Token TTL in seconds.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub token_ttl: i64,
    /// When the token was issued, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_issue_time: String,
    /// Uses left on a use-limited token (top-level auth of a request).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub remaining_uses: i64,
    /// Use limit of an issued token (`response.auth`).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub num_uses: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_default_policy: bool,
    /// The ACL decision for the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_results: Option<PolicyResults>,
}

impl fmt::Debug for AuditAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditAuth")
            .field("display_name", &self.display_name)
            .field("policies", &self.policies)
            .field("token_type", &self.token_type)
            .finish_non_exhaustive()
    }
}

/// `auth.policy_results`: whether the ACL allowed the request and which
/// policies granted it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyResults {
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granting_policies: Vec<PolicyInfo>,
}

/// One granting policy in `policy_results`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_path: String,
    /// `acl`, `rgp`, `egp`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `request.namespace`. Custos has only the root namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            id: "root".into(),
            path: String::new(),
        }
    }
}

/// The `request` block.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRequest {
    /// The request id (also the response's `request_id`); the event id is
    /// derived from it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// `read`, `create`, `update`, `delete`, `list`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_point: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_accessor: String,
    /// HMAC'd by devices.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_token: String,
    /// HMAC'd when `hmac_accessor` is on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_token_accessor: String,
    #[serde(default)]
    pub namespace: Namespace,
    pub path: String,
    /// The request body; every string value in it is HMAC'd by devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub policy_override: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_address: String,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub remote_port: u16,
    /// Response-wrapping TTL requested, in seconds.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub wrap_ttl: i64,
    /// Audited request headers (lower-case names); only those configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// The raw request URI when it differs from `path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_uri: String,
}

impl AuditRequest {
    /// A request block with the fields every request has; set the rest
    /// directly (all fields are public).
    pub fn new(
        id: impl Into<String>,
        operation: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        AuditRequest {
            id: id.into(),
            operation: operation.into(),
            path: path.into(),
            ..Default::default()
        }
    }
}

impl fmt::Debug for AuditRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditRequest")
            .field("id", &self.id)
            .field("operation", &self.operation)
            .field("path", &self.path)
            .field("mount_point", &self.mount_point)
            .finish_non_exhaustive()
    }
}

/// `response.secret`: the lease of a dynamic secret (kept clear, as Vault does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditSecret {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_id: String,
}

/// `response.wrap_info`: a response-wrapping token (token and accessors HMAC'd).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditWrapInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accessor: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ttl: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wrapped_accessor: String,
}

impl fmt::Debug for AuditWrapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWrapInfo")
            .field("ttl", &self.ttl)
            .field("creation_path", &self.creation_path)
            .finish_non_exhaustive()
    }
}

/// The `response` block of a response event.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditResponse {
    /// The token a login issued; its token and accessor are HMAC'd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuditAuth>,
    /// The response body; every string value in it is HMAC'd by devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_point: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_accessor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redirect: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AuditSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_info: Option<AuditWrapInfo>,
    /// Custos extension (not in Vault's format; absent when empty, so Vault
    /// tooling sees nothing new on other requests): the transit key versions
    /// a successful operation applied to its input — the `vault:vN:` versions
    /// of the ciphertexts a `decrypt` or `rewrap` opened, of the signatures
    /// or HMACs a `verify` checked, and the version a `sign` or `hmac` used.
    /// Distinct and ascending; every item of a `batch_input` counts. Numbers
    /// are not secrets and are never HMAC'd. Not part of the client's answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_versions: Vec<u64>,
}

impl fmt::Debug for AuditResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditResponse")
            .field("mount_point", &self.mount_point)
            .field("has_auth", &self.auth.is_some())
            .field("has_data", &self.data.is_some())
            .field("warnings", &self.warnings.len())
            .field("key_versions", &self.key_versions)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_request() -> AuditRequest {
        let mut req = AuditRequest::new(
            "7d1b0f6e-1111-2222-3333-444455556666",
            "update",
            "secret/data/app",
        );
        req.mount_point = "secret/".into();
        req.mount_type = "kv".into();
        req.client_token = "hvs.raw-token".into();
        req.data = Some(json!({"data": {"password": "s3cr3t-value"}}));
        req.remote_address = "127.0.0.1".into();
        req.remote_port = 51234;
        req
    }

    #[test]
    fn request_event_has_vault_shape() {
        let auth = AuditAuth {
            client_token: "hvs.raw-token".into(),
            policies: vec!["default".into()],
            token_type: "service".into(),
            ..Default::default()
        };
        let ev = AuditEvent::request(Some(auth), sample_request());
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "request");
        assert_eq!(v["request"]["namespace"], json!({"id": "root"}));
        assert_eq!(v["request"]["path"], "secret/data/app");
        assert_eq!(v["request"]["remote_port"], 51234);
        assert_eq!(v["auth"]["policies"], json!(["default"]));
        assert!(v.get("response").is_none());
        assert!(v.get("error").is_none());
        assert!(v.get("trace_id").is_none());
        assert!(v["auth"].get("token_ttl").is_none());
        // RFC 3339 in UTC.
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z'), "{t}");
        assert!(OffsetDateTime::parse(t, &Rfc3339).is_ok());
        assert_eq!(
            ev.event_id(),
            "7d1b0f6e-1111-2222-3333-444455556666-request"
        );
    }

    #[test]
    fn response_event_round_trips_and_ids_differ() {
        let resp = AuditResponse {
            mount_point: "secret/".into(),
            data: Some(json!({"k": "v"})),
            ..Default::default()
        };
        let ev = AuditEvent::response(None, sample_request(), resp, Some("boom".into()))
            .with_trace_id("abc");
        let line = serde_json::to_string(&ev).unwrap();
        let back: AuditEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ev);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "response");
        assert_eq!(v["error"], "boom");
        assert_eq!(v["trace_id"], "abc");
        assert_eq!(v["auth"], json!({}));
        assert!(ev.event_id().ends_with("-response"));
        let req_ev = AuditEvent::request(None, sample_request());
        assert_ne!(req_ev.event_id(), ev.event_id());
    }

    #[test]
    fn key_versions_are_a_custos_field_left_out_when_empty() {
        let plain = AuditEvent::response(None, sample_request(), AuditResponse::default(), None);
        let v = serde_json::to_value(&plain).unwrap();
        assert!(v["response"].get("key_versions").is_none(), "{v}");
        let resp = AuditResponse {
            data: Some(json!({"plaintext": "cGxhaW4="})),
            key_versions: vec![1, 2],
            ..Default::default()
        };
        let ev = AuditEvent::response(None, sample_request(), resp, None);
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["response"]["key_versions"], json!([1, 2]));
        // Outside `response.data`: what the client received is unchanged.
        assert!(v["response"]["data"].get("key_versions").is_none());
        let back: AuditEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let ev = AuditEvent::request(
            Some(AuditAuth {
                client_token: "hvs.raw-token".into(),
                ..Default::default()
            }),
            sample_request(),
        );
        let dbg = format!("{ev:?}");
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
        assert!(!dbg.contains("hvs.raw-token"), "{dbg}");
    }
}
