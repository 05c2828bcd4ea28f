//! End-to-end check of request tracing: a dev server exports its request
//! spans over OTLP/HTTP to an in-test receiver (axum on 127.0.0.1:0); the
//! spans carry mount, operation and status but never the token or a secret
//! value, and the audit events of the traced request carry the same trace id.
//!
//! Its own test binary because the OTLP exporter is process-global state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Router, routing::post};
use custos_core::server::{DevOptions, start_dev};
use serde_json::{Value, json};

const SECRET_VALUE: &str = "hunter2-very-secret-value";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                sink.lock().unwrap().push(v);
                "{}"
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

fn spans(bodies: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in bodies {
        for rs in b["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
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

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
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
    custos_core::tracing_otlp::install(&endpoint);
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

    // Spans are batched (200 ms); wait for the traced read and the 404.
    let mut all = Vec::new();
    for _ in 0..100 {
        all = spans(&got.lock().unwrap());
        let has_read = all.iter().any(|s| s["traceId"] == CALLER_TRACE);
        let has_404 = all
            .iter()
            .any(|s| attr(s, "http.response.status_code") == Some(&json!({"intValue": "404"})));
        if has_read && has_404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = all
        .iter()
        .find(|s| s["traceId"] == CALLER_TRACE)
        .unwrap_or_else(|| panic!("no span continued the caller's trace: {all:#?}"));
    assert_eq!(read["parentSpanId"], CALLER_SPAN);
    assert_ne!(read["spanId"], CALLER_SPAN);
    assert_eq!(
        attr(read, "custos.mount"),
        Some(&json!({"stringValue": "secret/"}))
    );
    assert_eq!(
        attr(read, "custos.operation"),
        Some(&json!({"stringValue": "read"}))
    );
    assert_eq!(
        attr(read, "http.response.status_code"),
        Some(&json!({"intValue": "200"}))
    );
    // The write and the 404 got spans of their own, in new traces.
    assert!(all.len() >= 3, "{all:#?}");
    assert!(all.iter().any(|s| attr(s, "custos.operation")
        == Some(&json!({"stringValue": "create"}))
        || attr(s, "custos.operation") == Some(&json!({"stringValue": "update"}))));
    // Never a token or a secret value in anything exported.
    let exported = serde_json::to_string(&*got.lock().unwrap()).unwrap();
    assert!(!exported.contains(&token), "token exported");
    assert!(!exported.contains(SECRET_VALUE), "secret exported");
    assert!(
        !exported.contains("secret/data/app"),
        "request path exported"
    );

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
    let trace_ids: Vec<&str> = all.iter().filter_map(|s| s["traceId"].as_str()).collect();
    for e in &events {
        let t = e["trace_id"].as_str().unwrap_or_default();
        assert!(
            trace_ids.contains(&t),
            "audit trace id {t:?} not exported: {e:#}"
        );
    }
    custos_core::tracing_otlp::uninstall();
    server.shutdown().await;
}
