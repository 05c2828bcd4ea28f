//! OpenTelemetry request traces, exported over OTLP/HTTP (JSON encoding).
//!
//! [`RequestSpan::start`] is called by `Core::handle` for every API request:
//! it continues the caller's trace when the request carries a valid W3C
//! `traceparent` header (put into `Request::headers` by the HTTP layer), or
//! starts a new one, and rewrites that header to this span's own context so
//! `audit.rs` can write the trace id ([`trace_id_of`]) into the request's
//! audit events. [`RequestSpan::finish`] hands the finished span (mount,
//! operation, status — never the path, data, or token) to the exporter set
//! up by [`install`] from `telemetry { otlp_endpoint = "..." }`.
//!
//! The exporter is hand-written rather than the `opentelemetry-otlp` stack:
//! one span kind with a handful of string/int attributes needs ~150 lines
//! over the `reqwest` client the workspace already builds, versus three
//! fast-churning crates (and their protobuf/tonic trees) on a 2-core build.
//! Shape: a bounded queue (spans are dropped, and counted, when it is full —
//! a slow collector never slows requests) drained by one batch worker that
//! POSTs `ExportTraceServiceRequest` JSON to `<endpoint>/v1/traces`.
//! Without an endpoint no span is recorded and no trace id is invented.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::logical::Request;
use crate::metrics as m;

/// The request header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Spans waiting for export; more are dropped (`reason="queue_full"`).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per OTLP export request.
pub const MAX_BATCH: usize = 512;
/// How long the worker waits to fill a batch once it has one span.
const BATCH_WAIT: Duration = Duration::from_millis(200);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A W3C trace context (`traceparent`): 16-byte trace id, 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Parse a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`).
    /// All-zero ids, version `ff` and malformed values are rejected.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        if parts.len() < 4 {
            return None;
        }
        let (version, tid, sid, flags) = (parts[0], parts[1], parts[2], parts[3]);
        // Version 00 has exactly four fields; later versions may add more.
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        if version == "00" && parts.len() != 4 {
            return None;
        }
        let lower = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower(version) && lower(tid) && lower(sid) && lower(flags)) || flags.len() != 2 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(tid, &mut trace_id).ok()?;
        hex::decode_to_slice(sid, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value of this context.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let b: [u8; N] = std::array::from_fn(|_| rand::random::<u8>());
        if b != [0; N] {
            return b;
        }
    }
}

/// The trace id (32 lowercase hex digits) of a request `Core::handle` has
/// started a span for, from its `traceparent` header.
pub fn trace_id_of(req: &Request) -> Option<String> {
    req.headers
        .get(TRACEPARENT)
        .and_then(|h| TraceContext::parse(h))
        .map(|c| c.trace_id_hex())
}

/// One finished request span, ready for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub context: TraceContext,
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start_unix_nanos: u128,
    pub end_unix_nanos: u128,
    pub mount: String,
    pub operation: &'static str,
    pub status: u16,
    pub request_id: String,
}

/// A request span in flight (see the module docs).
#[derive(Debug)]
pub struct RequestSpan {
    context: TraceContext,
    parent_span_id: Option<[u8; 8]>,
    start_unix_nanos: u128,
    operation: &'static str,
    request_id: String,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl RequestSpan {
    /// Start the span for `req` when tracing is on (an exporter is
    /// installed) or the caller sent a trace context; set the request's
    /// `traceparent` to this span. `None` (and the request untouched but for
    /// an invalid `traceparent` being removed) otherwise.
    pub fn start(req: &mut Request) -> Option<RequestSpan> {
        let incoming = req
            .headers
            .get(TRACEPARENT)
            .and_then(|h| TraceContext::parse(h));
        if incoming.is_none() {
            req.headers.remove(TRACEPARENT);
            if !enabled() {
                return None;
            }
        }
        let context = TraceContext {
            trace_id: incoming.map_or_else(random_nonzero::<16>, |c| c.trace_id),
            span_id: random_nonzero::<8>(),
            sampled: incoming.is_none_or(|c| c.sampled),
        };
        req.headers.insert(TRACEPARENT.into(), context.header());
        Some(RequestSpan {
            context,
            parent_span_id: incoming.map(|c| c.span_id),
            start_unix_nanos: now_nanos(),
            operation: req.operation.as_str(),
            request_id: req.id.clone(),
        })
    }

    pub fn context(&self) -> TraceContext {
        self.context
    }

    /// End the span with the request's mount point and HTTP status and hand
    /// it to the exporter (if one is installed and the trace is sampled).
    pub fn finish(self, mount: &str, status: u16) {
        if !self.context.sampled {
            return;
        }
        export(SpanRecord {
            context: self.context,
            parent_span_id: self.parent_span_id,
            name: format!("custos {}", self.operation),
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: now_nanos(),
            mount: mount.to_string(),
            operation: self.operation,
            status,
            request_id: self.request_id,
        });
    }
}

static EXPORTER: RwLock<Option<mpsc::Sender<SpanRecord>>> = RwLock::new(None);

/// Whether an exporter is installed.
pub fn enabled() -> bool {
    EXPORTER.read().is_ok_and(|g| g.is_some())
}

/// Start the export worker for `endpoint` (an OTLP/HTTP base URL such as
/// `http://collector:4318`, or the full `.../v1/traces` URL) on the current
/// Tokio runtime; replaces any earlier exporter. Must run inside a runtime.
pub fn install(endpoint: &str) {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(worker(url, rx));
    if let Ok(mut g) = EXPORTER.write() {
        *g = Some(tx);
    }
}

/// Stop exporting (the worker ends once its queue is drained).
pub fn uninstall() {
    if let Ok(mut g) = EXPORTER.write() {
        *g = None;
    }
}

fn export(span: SpanRecord) {
    let tx = EXPORTER.read().ok().and_then(|g| g.clone());
    let Some(tx) = tx else {
        return;
    };
    if tx.try_send(span).is_err() {
        m::counter_inc(m::OTLP_SPANS_DROPPED, &[("reason", "queue_full".into())]);
    }
}

async fn worker(url: String, mut rx: mpsc::Receiver<SpanRecord>) {
    let client = match reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "OTLP exporter: cannot build HTTP client; traces disabled");
            return;
        }
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = export_request(&batch);
        let sent = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                metrics::counter!(m::OTLP_SPANS_EXPORTED).increment(n);
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    spans = n,
                    "OTLP export refused"
                );
                metrics::counter!(m::OTLP_SPANS_DROPPED, "reason" => "export_failed").increment(n);
            }
            Err(e) => {
                tracing::warn!(error = %e, spans = n, "OTLP export failed");
                metrics::counter!(m::OTLP_SPANS_DROPPED, "reason" => "export_failed").increment(n);
            }
        }
    }
}

fn str_attr(key: &str, v: &str) -> Value {
    json!({"key": key, "value": {"stringValue": v}})
}

/// The OTLP `ExportTraceServiceRequest` (JSON encoding: ids as hex, 64-bit
/// integers as strings) for `spans`.
pub fn export_request(spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex::encode(s.context.trace_id),
                "spanId": hex::encode(s.context.span_id),
                "name": s.name,
                "kind": 2, // SPAN_KIND_SERVER
                "startTimeUnixNano": s.start_unix_nanos.to_string(),
                "endTimeUnixNano": s.end_unix_nanos.to_string(),
                "attributes": [
                    str_attr("custos.mount", &s.mount),
                    str_attr("custos.operation", s.operation),
                    str_attr("custos.request_id", &s.request_id),
                    json!({"key": "http.response.status_code",
                           "value": {"intValue": s.status.to_string()}}),
                ],
                // STATUS_CODE_ERROR for server errors, UNSET otherwise (the
                // OTel HTTP server convention: 4xx are the caller's).
                "status": {"code": if s.status >= 500 { 2 } else { 0 }},
            });
            if let (Some(p), Some(o)) = (s.parent_span_id, span.as_object_mut()) {
                o.insert("parentSpanId".into(), Value::String(hex::encode(p)));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [str_attr("service.name", "custos")]},
            "scopeSpans": [{
                "scope": {"name": "custos", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::Operation;

    #[test]
    fn traceparent_parse_and_format() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(c.sampled);
        assert_eq!(c.header(), h);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn span_continues_the_callers_trace() {
        let mut req = Request::new(Operation::Read, "secret/data/x");
        req.headers.insert(
            TRACEPARENT.into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let span = RequestSpan::start(&mut req).unwrap();
        assert_eq!(
            trace_id_of(&req).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(
            span.context().span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(
            span.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let mut bad = Request::new(Operation::Read, "secret/data/x");
        bad.headers.insert(TRACEPARENT.into(), "garbage".into());
        if !enabled() {
            assert!(RequestSpan::start(&mut bad).is_none());
            assert_eq!(trace_id_of(&bad), None);
        }
    }

    #[test]
    fn export_request_shape() {
        let rec = SpanRecord {
            context: TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                sampled: true,
            },
            parent_span_id: Some([3; 8]),
            name: "custos read".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            mount: "secret/".into(),
            operation: "read",
            status: 503,
            request_id: "r".into(),
        };
        let v = export_request(&[rec]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["attributes"][0]["value"]["stringValue"], "secret/");
        assert_eq!(s["attributes"][3]["value"]["intValue"], "503");
    }
}
