//! The Elasticsearch sink: audit records to Elasticsearch (or OpenSearch)
//! over the HTTP `_bulk` API, with reqwest and rustls.
//!
//! Records come from the shipper worker ([`super::worker`]) in batches; each
//! becomes one `create` action in one `_bulk` request:
//!
//! ```text
//! {"create":{"_index":"custos-audit-2025.01.31","_id":"<request id>-response"}}
//! {..the event as recorded..,"custos":{"seq":42,"kv_version":3}}
//! ```
//!
//! * `_id` is the event id, and the action is `create`: a record sent again
//!   (after a timeout, a crash before the checkpoint, a partial failure) is
//!   answered `409 version_conflict_engine_exception`, which counts as
//!   acknowledged. The index never holds an event twice and the original is
//!   never overwritten.
//! * The index is `<index>-YYYY.MM.DD` from the event's UTC `time`
//!   (`index_mode = "daily"`, the default), or exactly `<index>`
//!   (`index_mode = "single"`, for an alias or rollover index managed by
//!   ILM/ISM). The same event always goes to the same index.
//! * The document is the event JSON as recorded plus a `custos` object: the
//!   record's sequence number in this node's log and, for KV responses, the
//!   secret version read or written (`custos.kv_version`), so dashboards and
//!   the audit query can filter on it without mapping user data.
//! * At start the sink installs an index template (`PUT
//!   _index_template/<index>`, patterns `<index>-*` or `<index>*`) mapping
//!   the fields dashboards and queries use: `time` (date), `type`,
//!   `node_id` (the node that wrote the event, on a cluster),
//!   `request.{id,path,operation,mount_point,mount_type,remote_address,client_token_accessor}`,
//!   `auth.{accessor,display_name,policies,token_policies,entity_id,token_type}`
//!   (keywords), `error`, `custos.seq`, `custos.kv_version` and
//!   `response.key_versions` (transit key versions; long). The
//!   mapping is `dynamic: false` and `request.data` / `response.data` are not
//!   parsed (`enabled: false`): user-shaped data stays in `_source` and can
//!   never cause a mapping conflict.
//!
//! Failures follow the `_bulk` documentation: the HTTP status of the whole
//! request (429 and 5xx: retry; 413 and other 4xx: rejected) and then each
//! item's `status` (2xx and 409: acknowledged; 429 and 5xx: retry that item;
//! other 4xx such as `mapper_parsing_exception`: rejected, logged as an
//! error and counted, and the worker stops its checkpoint before it). Only
//! the failed items are sent again. Error reasons are cut before
//! Elasticsearch's "Preview of field's value", so no event content reaches
//! the logs. The body is sent as `application/x-ndjson`, as the `_bulk`
//! documentation asks (`bulk_content_type` switches to `application/json`).
//! Tests run against osmem-server, an in-memory OpenSearch-compatible
//! stand-in; the behaviour above is written to the Elasticsearch
//! documentation, not to the stand-in.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::config::{EsOptions, IndexMode};
use super::{Outgoing, SendOutcome, Sink, SinkError};
use crate::error::AuditError;
use crate::metrics as m;

/// Longest error reason kept from a response.
const MAX_REASON: usize = 300;

/// Ships audit records to Elasticsearch with `_bulk`.
pub struct ElasticsearchSink {
    sink_name: String,
    opts: EsOptions,
    http: reqwest::Client,
    template_done: bool,
}

/// The index template body for `opts` (see the module docs).
pub fn index_template(opts: &EsOptions) -> Value {
    let pattern = match opts.index_mode {
        IndexMode::Daily => format!("{}-*", opts.index),
        IndexMode::Single => format!("{}*", opts.index),
    };
    let kw = json!({"type": "keyword"});
    let kw_long = json!({"type": "keyword", "ignore_above": 4096});
    let long = json!({"type": "long", "ignore_malformed": true});
    json!({
        "index_patterns": [pattern],
        "priority": 200,
        "_meta": {"managed_by": "custos", "description": "Custos audit events"},
        "template": {
            "mappings": {
                "dynamic": false,
                "properties": {
                    "time": {"type": "date"},
                    "type": kw,
                    "error": kw_long,
                    "trace_id": kw,
                    "node_id": kw,
                    "auth": {"properties": {
                        "accessor": kw,
                        "display_name": kw,
                        "policies": kw,
                        "token_policies": kw,
                        "entity_id": kw,
                        "token_type": kw,
                    }},
                    "request": {"properties": {
                        "id": kw,
                        "operation": kw,
                        "path": kw_long,
                        "mount_point": kw,
                        "mount_type": kw,
                        "mount_accessor": kw,
                        "remote_address": kw,
                        "remote_port": long,
                        "client_token_accessor": kw,
                        "namespace": {"properties": {"id": kw, "path": kw}},
                        "data": {"type": "object", "enabled": false},
                    }},
                    "response": {"properties": {
                        "mount_point": kw,
                        "mount_type": kw,
                        "data": {"type": "object", "enabled": false},
                        "key_versions": long,
                    }},
                    "custos": {"properties": {
                        "seq": {"type": "long"},
                        "kv_version": long,
                    }},
                }
            }
        }
    })
}

/// The index an event goes to.
pub fn index_for(opts: &EsOptions, time: &str) -> String {
    match opts.index_mode {
        IndexMode::Single => opts.index.clone(),
        IndexMode::Daily => {
            let b = time.as_bytes();
            let dated = b.len() >= 10
                && b[4] == b'-'
                && b[7] == b'-'
                && [0, 1, 2, 3, 5, 6, 8, 9]
                    .iter()
                    .all(|&i| b[i].is_ascii_digit());
            let day = if dated {
                format!("{}.{}.{}", &time[0..4], &time[5..7], &time[8..10])
            } else {
                let now = time::OffsetDateTime::now_utc();
                format!(
                    "{:04}.{:02}.{:02}",
                    now.year(),
                    u8::from(now.month()),
                    now.day()
                )
            };
            format!("{}-{day}", opts.index)
        }
    }
}

/// The KV secret version a response event is about, if any:
/// `response.data.metadata.version` (KV v2 read) or `response.data.version`
/// (KV v2 write).
fn kv_version(event: &Value) -> Option<u64> {
    let resp = event.get("response")?;
    let data = resp.get("data")?;
    data.get("metadata")
        .and_then(|m| m.get("version"))
        .and_then(Value::as_u64)
        .or_else(|| {
            (resp.get("mount_type").and_then(Value::as_str) == Some("kv"))
                .then(|| data.get("version").and_then(Value::as_u64))
                .flatten()
        })
}

/// The document for one record: the event plus the `custos` object.
pub fn document(o: &Outgoing) -> Vec<u8> {
    let kv = serde_json::from_slice::<Value>(&o.payload)
        .ok()
        .and_then(|v| kv_version(&v));
    let mut extra = json!({"seq": o.seq});
    if let Some(v) = kv {
        extra["kv_version"] = json!(v);
    }
    let tail = format!("\"custos\":{extra}}}");
    let body = o.payload.trim_ascii_end();
    let mut out = Vec::with_capacity(body.len() + tail.len() + 1);
    match body.strip_suffix(b"}") {
        Some(head) => {
            out.extend_from_slice(head);
            if head.trim_ascii_end() != b"{" {
                out.push(b',');
            }
        }
        None => out.push(b'{'),
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// An error reason without Elasticsearch's preview of the field's value.
fn short_reason(error: &Value) -> String {
    let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
    let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
    let reason = reason
        .split(". Preview of field's value")
        .next()
        .unwrap_or("");
    let mut s = format!("{kind}: {reason}");
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn http_error(what: &str, e: &reqwest::Error) -> SinkError {
    // reqwest errors name the URL but never the body; add their causes
    // ("connection refused", "operation timed out").
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        src = cause.source();
    }
    SinkError::Unavailable(msg)
}

/// Classify a whole-request HTTP status (not 2xx).
fn status_error(what: &str, status: StatusCode, body: &str) -> SinkError {
    let reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(short_reason))
        .unwrap_or_default();
    let msg = format!("{what}: HTTP {status} {reason}");
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        SinkError::Unavailable(msg)
    } else {
        SinkError::Rejected(msg)
    }
}

impl ElasticsearchSink {
    /// A sink for `opts`; `sink_name` is the device path (metrics label).
    pub fn new(sink_name: &str, opts: EsOptions) -> Result<ElasticsearchSink, AuditError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(opts.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .danger_accept_invalid_certs(opts.tls_skip_verify);
        if let Some(path) = &opts.ca_cert {
            let pem = std::fs::read(path).map_err(|e| AuditError::InvalidOption {
                name: "ca_cert".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| AuditError::InvalidOption {
                    name: "ca_cert".into(),
                    reason: format!("not a PEM certificate: {e}"),
                })?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| AuditError::InvalidOption {
            name: "url".into(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(ElasticsearchSink {
            sink_name: sink_name.to_owned(),
            opts,
            http,
            template_done: false,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{}", self.opts.url, path.trim_start_matches('/'));
        let mut r = self.http.request(method, url);
        if let Some(user) = &self.opts.username {
            r = r.basic_auth(user, self.opts.password.as_deref());
        } else if let Some(key) = &self.opts.api_key {
            r = r.header(reqwest::header::AUTHORIZATION, format!("ApiKey {key}"));
        }
        r
    }

    async fn install_template(&mut self) -> Result<(), SinkError> {
        let name = self.opts.index.clone();
        let resp = self
            .request(reqwest::Method::PUT, &format!("_index_template/{name}"))
            .json(&index_template(&self.opts))
            .send()
            .await
            .map_err(|e| http_error("index template", &e))?;
        let status = resp.status();
        if status.is_success() {
            tracing::info!(sink = %self.sink_name, template = %name, "Elasticsearch index template installed");
            self.template_done = true;
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        match status_error("index template", status, &body) {
            e @ SinkError::Unavailable(_) => Err(e),
            e @ SinkError::Rejected(_) => {
                // Shipping does not depend on the template (the mapping is
                // then Elasticsearch's default): say so loudly and go on.
                tracing::error!(
                    sink = %self.sink_name,
                    template = %name,
                    error = %e,
                    "Elasticsearch refused the audit index template; events are shipped with the cluster's default mapping (set template = false if it is managed elsewhere)"
                );
                m::sink_failure(&self.sink_name, "rejected");
                self.template_done = true;
                Ok(())
            }
        }
    }

    fn bulk_body(&self, batch: &[&Outgoing]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.iter().map(|o| o.payload.len() + 128).sum());
        for o in batch {
            let action = json!({"create": {"_index": index_for(&self.opts, &o.time), "_id": o.id}});
            body.extend_from_slice(action.to_string().as_bytes());
            body.push(b'\n');
            body.extend_from_slice(&document(o));
            body.push(b'\n');
        }
        body
    }
}

/// Read per-item results of a `_bulk` response (see the module docs).
pub fn bulk_outcome(resp: &Value, n: usize) -> Result<SendOutcome, SinkError> {
    let items = resp
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| SinkError::Unavailable("_bulk response has no items".into()))?;
    if items.len() != n {
        return Err(SinkError::Unavailable(format!(
            "_bulk response has {} items for {n} actions",
            items.len()
        )));
    }
    if resp.get("errors").and_then(Value::as_bool) == Some(false) {
        return Ok(Vec::new());
    }
    let mut failed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
            failed.push((i, SinkError::Unavailable("malformed _bulk item".into())));
            continue;
        };
        let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
        let reason = result.get("error").map(short_reason).unwrap_or_default();
        match status {
            200..=299 | 409 => {}
            429 | 500..=599 => failed.push((
                i,
                SinkError::Unavailable(format!("item status {status}: {reason}")),
            )),
            _ => failed.push((
                i,
                SinkError::Rejected(format!("item status {status}: {reason}")),
            )),
        }
    }
    Ok(failed)
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    async fn probe(&mut self) -> Result<(), SinkError> {
        if self.opts.template && !self.template_done {
            return self.install_template().await;
        }
        let resp = self
            .request(reqwest::Method::GET, "/")
            .send()
            .await
            .map_err(|e| http_error("probe", &e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = resp.text().await.unwrap_or_default();
            Err(status_error("probe", status, &body))
        }
    }

    async fn send(&mut self, batch: &[&Outgoing]) -> Result<SendOutcome, SinkError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut path = "_bulk".to_owned();
        if let Some(p) = &self.opts.pipeline {
            path.push_str("?pipeline=");
            path.push_str(&url_component(p));
        }
        let resp = self
            .request(reqwest::Method::POST, &path)
            .header(
                reqwest::header::CONTENT_TYPE,
                self.opts.bulk_content_type.as_str(),
            )
            .body(self.bulk_body(batch))
            .send()
            .await
            .map_err(|e| http_error("_bulk", &e))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| http_error("_bulk response", &e))?;
        if !status.is_success() {
            return Err(status_error(
                "_bulk",
                status,
                &String::from_utf8_lossy(&body),
            ));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| SinkError::Unavailable(format!("_bulk response is not JSON: {e}")))?;
        bulk_outcome(&v, batch.len())
    }

    async fn close(&mut self) {}
}

/// Percent-encode a query value (pipeline names are plain, but be safe).
fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn opts(mode: &str) -> EsOptions {
        let m: BTreeMap<String, String> = [
            ("url", "http://127.0.0.1:9200"),
            ("index", "custos-audit"),
            ("index_mode", mode),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        EsOptions::from_map(&m).unwrap().0
    }

    fn out(payload: &str) -> Outgoing {
        Outgoing {
            seq: 7,
            id: "r-response".into(),
            time: "2025-01-31T23:59:59.5Z".into(),
            payload: payload.as_bytes().to_vec(),
            segment: 1,
            line_len: 0,
        }
    }

    #[test]
    fn index_names() {
        assert_eq!(
            index_for(&opts("daily"), "2025-01-31T23:59:59.5Z"),
            "custos-audit-2025.01.31"
        );
        assert_eq!(
            index_for(&opts("single"), "2025-01-31T23:59:59Z"),
            "custos-audit"
        );
        assert!(index_for(&opts("daily"), "garbage").starts_with("custos-audit-20"));
    }

    #[test]
    fn documents_carry_seq_and_kv_version() {
        let d = document(&out(
            r#"{"type":"response","response":{"mount_type":"kv","data":{"metadata":{"version":3}}}}"#,
        ));
        let v: Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["custos"], json!({"seq": 7, "kv_version": 3}));
        assert_eq!(v["type"], "response");
        let d = document(&out("{}"));
        assert_eq!(
            serde_json::from_slice::<Value>(&d).unwrap(),
            json!({"custos": {"seq": 7}})
        );
        let d = document(&out(
            r#"{"response":{"mount_type":"kv","data":{"version":2}}}"#,
        ));
        assert_eq!(
            serde_json::from_slice::<Value>(&d).unwrap()["custos"]["kv_version"],
            2
        );
    }

    #[test]
    fn bulk_items_are_classified() {
        let resp = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception",
                "reason": "failed to parse field [time]. Preview of field's value: 'hvs.secret'"}}},
            {"create": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "x"}}},
        ]});
        let f = bulk_outcome(&resp, 5).unwrap();
        let idx: Vec<usize> = f.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![2, 3, 4]);
        assert!(matches!(f[0].1, SinkError::Unavailable(_)));
        assert!(
            matches!(&f[1].1, SinkError::Rejected(r) if r.contains("mapper_parsing_exception") && !r.contains("hvs.secret"))
        );
        assert!(bulk_outcome(&resp, 4).is_err());
        assert!(
            bulk_outcome(&json!({"errors": false, "items": [{}]}), 1)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn whole_request_statuses() {
        assert!(matches!(
            status_error("_bulk", StatusCode::TOO_MANY_REQUESTS, ""),
            SinkError::Unavailable(_)
        ));
        assert!(matches!(
            status_error("_bulk", StatusCode::BAD_GATEWAY, ""),
            SinkError::Unavailable(_)
        ));
        assert!(matches!(
            status_error("_bulk", StatusCode::UNAUTHORIZED, "{}"),
            SinkError::Rejected(_)
        ));
        let t = index_template(&opts("daily"));
        assert_eq!(t["index_patterns"][0], "custos-audit-*");
        assert_eq!(
            t["template"]["mappings"]["properties"]["time"]["type"],
            "date"
        );
    }
}
