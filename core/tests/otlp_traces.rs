//! End-to-end check of request tracing: a dev server exports its spans
//! through the OpenTelemetry SDK as OTLP http/protobuf to a real receiver in
//! the test (axum on 127.0.0.1:0 decoding `ExportTraceServiceRequest` with
//! the `opentelemetry-proto` types). A KV write's span tree shows every stage
//! in order, each child inside its parent's time range; the spans carry
//! mount, operation and status but never the token, a secret value or the
//! request path; a caller's `traceparent` is continued, and a caller's trace
//! it did not sample gets no span; and the audit events of a request carry
//! its trace id, and a caller's trace id even when it was not sampled.
//!
//! Its own test binary because the trace pipeline is process-global state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::{Router, routing::post};
use custos_core::server::{DevOptions, start_dev};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

const SECRET_VALUE: &str = "hunter2-very-secret-value";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A caller's trace it did not sample (flags `00`).
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// What the receiver got: the raw bodies and their decoded requests.
#[derive(Default)]
struct Received {
    bodies: Vec<Vec<u8>>,
    requests: Vec<ExportTraceServiceRequest>,
}

/// An OTLP/HTTP receiver: protobuf only, as a collector's `otlphttp`
/// receiver would accept it.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let got: Arc<Mutex<Received>> = Arc::default();
    let sink = got.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if ct != "application/x-protobuf" {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                }
                let Ok(req) = ExportTraceServiceRequest::decode(body.clone()) else {
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut got = sink.lock().unwrap();
                got.bodies.push(body.to_vec());
                got.requests.push(req);
                (
                    StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}"), got)
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    end: u64,
    attrs: BTreeMap<String, String>,
}

fn value_string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn spans(got: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for req in &got.requests {
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Span {
                        name: s.name.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                        attrs: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_string(kv)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

fn service_names(got: &Received) -> Vec<String> {
    got.requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|rs| rs.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .filter(|kv| kv.key == "service.name")
        .map(value_string)
        .collect()
}

/// Every JSON audit event in the local audit log directory's segments
/// (not `audit.log`, the live name of the active one).
fn audit_events(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.file_name().is_some_and(|n| n != "audit.log"));
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for l in text.lines() {
            if let Some(i) = l.find('{')
                && let Ok(v) = serde_json::from_str::<Value>(&l[i..])
                && v.get("request").is_some()
            {
                out.push(v);
            }
        }
    }
    out
}

/// The children of `parent`, by start time.
fn children<'a>(all: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    let mut c: Vec<&Span> = all
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent == parent.span_id)
        .collect();
    c.sort_by_key(|s| (s.start, s.end));
    c
}

/// Every child lies inside its parent's time range, and the children (which
/// run one after another) take no longer together than the parent.
fn check_nesting(all: &[Span], parent: &Span) {
    let kids = children(all, parent);
    let mut sum = 0;
    for k in &kids {
        assert!(
            parent.start <= k.start && k.end <= parent.end && k.start <= k.end,
            "{} [{}, {}] not inside {} [{}, {}]",
            k.name,
            k.start,
            k.end,
            parent.name,
            parent.start,
            parent.end
        );
        sum += k.end - k.start;
        check_nesting(all, k);
    }
    assert!(
        sum <= parent.end - parent.start,
        "children of {} last {sum} ns, longer than it",
        parent.name
    );
}

/// The one child of `parent` named `name` (or the first, by start time).
fn child<'a>(all: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    children(all, parent)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| {
            let names: Vec<_> = children(all, parent).iter().map(|s| &s.name).collect();
            panic!("no {name} under {}: {names:?}", parent.name)
        })
}

fn tree(all: &[Span], root: &Span, depth: usize) -> String {
    let mut out = format!(
        "{}{} ({} µs)\n",
        "  ".repeat(depth),
        root.name,
        (root.end - root.start) / 1000
    );
    for c in children(all, root) {
        out.push_str(&tree(all, c, depth + 1));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_and_the_audit_log() {
    let (endpoint, got) = receiver().await;
    let (server, dev) = start_dev(&DevOptions {
        root_token_id: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
    })
    .await
    .unwrap();
    assert!(custos_core::traces::install(Some(&endpoint)).unwrap());
    let base = format!("http://{}/v1", server.addrs[0]);
    let token = dev.root_token.clone();
    let http = reqwest::Client::new();
    let audit_dir = dev.data_dir.join("audit");

    let r = http
        .post(format!("{base}/secret/data/app"))
        .header("X-Vault-Token", &token)
        .json(&json!({"data": {"password": SECRET_VALUE}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = http
        .get(format!("{base}/secret/data/app"))
        .header("X-Vault-Token", &token)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains(SECRET_VALUE));
    let r = http
        .get(format!("{base}/secret/data/missing"))
        .header("X-Vault-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The default sampler (parentbased_always_on) honours a caller that did
    // not sample: no span, but the audit events still get its trace id.
    let r = http
        .get(format!("{base}/secret/data/unsampled"))
        .header("X-Vault-Token", &token)
        .header(
            "traceparent",
            format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Batches leave on the SDK's schedule; flush, then wait for the roots.
    custos_core::traces::flush().await;
    let mut all = Vec::new();
    for _ in 0..100 {
        all = spans(&got.lock().unwrap());
        let roots = all
            .iter()
            .filter(|s| s.attrs.contains_key("custos.operation"));
        if roots.count() >= 3 {
            break;
        }
        custos_core::traces::flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let root_of = |op: &[&str], status: &str| {
        all.iter()
            .find(|s| {
                s.attrs
                    .get("custos.operation")
                    .is_some_and(|o| op.contains(&o.as_str()))
                    && s.attrs.get("http.response.status_code").map(String::as_str) == Some(status)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {op:?} span with status {status}: {all:#?}"))
    };

    // The traced read continued the caller's trace.
    let read = root_of(&["read"], "200");
    assert_eq!(read.trace_id, CALLER_TRACE);
    assert_eq!(read.parent, CALLER_SPAN);
    assert_ne!(read.span_id, CALLER_SPAN);
    assert_eq!(read.name, "custos read");
    assert_eq!(read.attrs["custos.mount"], "secret/");
    // The 404 got a span of its own, in a new trace.
    let missing = root_of(&["read"], "404");
    assert_ne!(missing.trace_id, CALLER_TRACE);
    assert_ne!(missing.trace_id, UNSAMPLED_TRACE);
    assert!(missing.parent.is_empty() || missing.parent == "0000000000000000");

    // The KV write's tree: each stage in order under the request span, each
    // child inside its parent's time range, durations that add up. On this
    // one-node server its request event travels in its Raft entry and is
    // written with the response event: one audit write, after the engine.
    let write = root_of(&["create", "update"], "200");
    let shown = tree(&all, &write, 0);
    check_nesting(&all, &write);
    let stages: Vec<&str> = children(&all, &write)
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| *n != "engine.exists")
        .collect();
    assert_eq!(
        stages,
        ["token.lookup", "acl", "engine", "audit.write"],
        "{shown}"
    );
    let kids = children(&all, &write);
    for pair in kids.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "{} overlaps {}:\n{shown}",
            pair[0].name,
            pair[1].name
        );
    }
    let audits: Vec<&&Span> = kids.iter().filter(|s| s.name == "audit.write").collect();
    assert_eq!(
        audits[0].attrs["custos.audit.events"], "request+response",
        "{shown}"
    );
    for a in audits {
        child(&all, a, "audit.sync_wait");
    }
    let engine = child(&all, &write, "engine");
    assert_eq!(engine.attrs["custos.mount_type"], "kv", "{shown}");
    let batch = child(&all, engine, "barrier.batch");
    let raft = child(&all, batch, "raft.write");
    let append = child(&all, raft, "raft.append");
    let apply = child(&all, raft, "raft.apply");
    assert!(append.end <= apply.start, "append after apply:\n{shown}");
    eprintln!("KV write span tree:\n{shown}");

    // The pipelined read: one audit write for its request and response.
    let read_stages: Vec<&str> = children(&all, &read)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        read_stages,
        ["token.lookup", "acl", "engine", "audit.write"],
        "{}",
        tree(&all, &read, 0)
    );
    check_nesting(&all, &read);

    let services = service_names(&got.lock().unwrap());
    assert!(
        !services.is_empty() && services.iter().all(|s| s == "custos"),
        "{services:?}"
    );

    // Never a token, a secret value or the request path in anything exported.
    {
        let got = got.lock().unwrap();
        let exported: Vec<u8> = got.bodies.concat();
        let contains = |needle: &str| {
            exported
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        assert!(!contains(&token), "token exported");
        assert!(!contains(SECRET_VALUE), "secret exported");
        assert!(!contains("secret/data/app"), "request path exported");
        assert!(!contains("data/app"), "request path exported");
    }

    // The exporter counts what it delivered.
    let metrics = http
        .get(format!("{base}/sys/metrics?format=prometheus"))
        .header("X-Vault-Token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("custos_otlp_spans_exported_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no exported-spans counter:\n{metrics}"));
    assert!(exported >= all.len() as f64, "{exported} < {}", all.len());

    // The audit events of the traced read carry the caller's trace id, and
    // every audited request the trace id of an exported span.
    let mut read_events = Vec::new();
    let mut events = Vec::new();
    for _ in 0..50 {
        events = audit_events(&audit_dir);
        read_events = events
            .iter()
            .filter(|e| {
                e["request"]["operation"] == "read" && e["request"]["path"] == "secret/data/app"
            })
            .cloned()
            .collect();
        if read_events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_events.len(), 2, "{events:#?}");
    for e in &read_events {
        assert_eq!(e["trace_id"], CALLER_TRACE, "{e:#}");
    }
    // The unsampled request's events carry its caller's trace id.
    let unsampled: Vec<&Value> = events
        .iter()
        .filter(|e| e["request"]["path"] == "secret/data/unsampled")
        .collect();
    assert_eq!(unsampled.len(), 2, "{events:#?}");
    for e in &unsampled {
        assert_eq!(e["trace_id"], UNSAMPLED_TRACE, "{e:#}");
    }
    // (The metrics request above was traced too.)
    custos_core::traces::flush().await;
    let all = spans(&got.lock().unwrap());
    let trace_ids: Vec<&str> = all.iter().map(|s| s.trace_id.as_str()).collect();
    assert!(
        !trace_ids.contains(&UNSAMPLED_TRACE),
        "a span of the unsampled trace was exported"
    );
    for e in events
        .iter()
        .filter(|e| e["request"]["path"] != "secret/data/unsampled")
    {
        let t = e["trace_id"].as_str().unwrap_or_default();
        assert!(
            trace_ids.contains(&t),
            "audit trace id {t:?} not exported: {e:#}"
        );
    }
    custos_core::traces::shutdown().await;
    server.shutdown().await;
}
