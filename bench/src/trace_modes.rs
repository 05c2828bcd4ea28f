//! `compare --trace-modes`: what request tracing costs Custos (issue 21).
//!
//! Starts an OTLP/HTTP sink in this process (it reads every export request
//! and answers 200, as a collector's receiver would, and counts requests
//! and bytes), then one Custos server per mode, each with a fresh data
//! directory: `off` (no OTEL_* variables: tracing not installed) and a
//! sampling ratio `r` (`OTEL_EXPORTER_OTLP_ENDPOINT` = the sink,
//! `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=r`).
//! Every workload (default kv-read) runs on all of them in turn, the order
//! reversed every other round (`alternate`) so drift cancels. After the
//! runs each traced server's span counters (`custos_otlp_spans_exported_total`,
//! `custos_otlp_spans_dropped_total`) are read from `sys/metrics`. Results go
//! to stdout and to `trace-modes.json` beside `--out`; OpenBao is not
//! started (the comparison is Custos against itself).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::load::RunStats;
use crate::servers::{self, AuditSetup, Kind};
use crate::workload::Workload;
use crate::{
    CompareArgs, SETTLE_AFTER_PREPARE, Target, alternate, binaries, error_failures, prepare,
    settle, sysinfo,
};

/// The goal of issue 21: tracing at 1% sampling costs under 3% of throughput.
const GOAL_MAX_COST_AT_1PCT: f64 = 0.03;

/// How a Custos server traces: not at all, or sampling this ratio of traces.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(into = "String")]
pub enum TraceMode {
    Off,
    Ratio(f64),
}

impl FromStr for TraceMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(TraceMode::Off);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r <= 1.0 => Ok(TraceMode::Ratio(r)),
            _ => Err(format!(
                "{s:?}: a trace mode is `off` or a sampling ratio in (0, 1], e.g. 1.0 or 0.01"
            )),
        }
    }
}

impl fmt::Display for TraceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceMode::Off => f.write_str("off"),
            TraceMode::Ratio(r) => write!(f, "{r}"),
        }
    }
}

impl From<TraceMode> for String {
    fn from(m: TraceMode) -> String {
        m.to_string()
    }
}

impl TraceMode {
    /// The server's environment in this mode.
    fn env(self, endpoint: &str) -> Vec<(&'static str, String)> {
        match self {
            TraceMode::Off => Vec::new(),
            TraceMode::Ratio(r) => vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
                ("OTEL_TRACES_SAMPLER_ARG", r.to_string()),
            ],
        }
    }
}

/// The modes in the order given, each once.
fn unique(modes: &[TraceMode]) -> Vec<TraceMode> {
    let mut out = Vec::new();
    for &m in modes {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// An OTLP/HTTP receiver that reads and discards every export request.
struct OtlpSink {
    endpoint: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpSink {
    async fn start() -> Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (rq, by) = (requests.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (the task aborted) closes every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (rq, by) = (rq.clone(), by.clone());
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (rq, by) = (rq.clone(), by.clone());
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                rq.fetch_add(1, Ordering::Relaxed);
                                by.fetch_add(body.len() as u64, Ordering::Relaxed);
                                let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                                resp.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        conns.spawn(async move {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(OtlpSink {
            endpoint,
            requests,
            bytes,
            task,
        })
    }
}

/// A counter's value in Prometheus text (`name{labels} value`).
fn counter(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// One mode's result for one workload.
#[derive(Debug, Serialize)]
struct ModeRow {
    mode: TraceMode,
    server: String,
    stats: Option<RunStats>,
    /// 1 - rps(mode) / rps(off).
    cost: Option<f64>,
}

/// What a traced server says it exported and dropped, over the whole run.
#[derive(Debug, Serialize)]
struct SpanCounts {
    server: String,
    exported: f64,
    dropped_queue_full: f64,
    dropped_export_failed: f64,
}

pub async fn compare(a: CompareArgs) -> Result<bool> {
    let modes = unique(&a.trace_modes);
    let (custos_bin, _) = binaries(&a)?;
    let spec = a.load.spec();
    let ds = a.data.dataset();
    let workloads = if a.workloads.is_empty() {
        vec![Workload::KvRead]
    } else {
        a.workloads.clone()
    };
    let run_dir = a.run_dir()?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let names: Vec<String> = modes.iter().map(ToString::to_string).collect();
    println!(
        "custos-bench compare --trace-modes {}: {} | custos {}",
        names.join(","),
        sysinfo::machine(),
        custos_bin.display()
    );
    let sink = OtlpSink::start().await?;
    println!(
        "  OTLP sink (in this process: reads and discards, answers 200) at {}",
        sink.endpoint
    );

    let mut targets = Vec::new();
    for &m in &modes {
        let label = format!("custos-traces-{m}");
        let env = m.env(&sink.endpoint);
        let server = servers::start_with_env(
            Kind::Custos,
            &label,
            &custos_bin,
            &run_dir,
            &AuditSetup::File,
            &env,
        )
        .await?;
        let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  started {label} at {} (pid {}): {}",
            server.addr,
            server.pid,
            if shown.is_empty() {
                "no OTEL_* variables".into()
            } else {
                shown.join(" ")
            }
        );
        targets.push(Target::new(server, a.load.concurrency, None)?);
    }

    let mut failures = Vec::new();
    let mut results = Vec::new();
    let mut table = Vec::new();
    for &w in &workloads {
        let (usable, _skipped) = prepare(&mut targets, w, &ds).await?;
        settle(&targets, SETTLE_AFTER_PREPARE).await;
        let stats = alternate(&mut targets, w, &spec, a.rounds, &usable).await?;
        failures.extend(error_failures(&targets, w, &stats));
        let off_rps = modes
            .iter()
            .zip(&stats)
            .find(|(m, _)| **m == TraceMode::Off)
            .and_then(|(_, s)| s.as_ref().map(|s| s.rps));
        let mut rows = Vec::new();
        for ((m, t), s) in modes.iter().zip(&targets).zip(stats) {
            let cost = match (off_rps, &s) {
                (Some(off), Some(s)) if off > 0.0 => Some(1.0 - s.rps / off),
                _ => None,
            };
            if let Some(s) = &s {
                table.push(format!(
                    "{:<10} {:<8} {:>9.0} {:>8.2} {:>8.2} {:>9} {:>8}",
                    w.name(),
                    m.to_string(),
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.server_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
                    cost.map_or("-".into(), |c| format!("{:+.1}%", c * 100.0)),
                ));
            }
            rows.push(ModeRow {
                mode: *m,
                server: t.server.label.clone(),
                stats: s,
                cost,
            });
        }
        results.push(json!({ "workload": w.name(), "describe": w.describe(), "modes": rows }));
    }

    let mut spans = Vec::new();
    for (m, t) in modes.iter().zip(&targets) {
        if *m == TraceMode::Off {
            continue;
        }
        let reply = t.client.get("sys/metrics?format=prometheus").await?;
        if !reply.ok() {
            return Err(anyhow!(
                "{}: sys/metrics answered {}",
                t.server.label,
                reply.status
            ));
        }
        let text = String::from_utf8_lossy(&reply.body);
        spans.push(SpanCounts {
            server: t.server.label.clone(),
            exported: counter(&text, "custos_otlp_spans_exported_total").unwrap_or(0.0),
            dropped_queue_full: counter(
                &text,
                "custos_otlp_spans_dropped_total{reason=\"queue_full\"}",
            )
            .unwrap_or(0.0),
            dropped_export_failed: counter(
                &text,
                "custos_otlp_spans_dropped_total{reason=\"export_failed\"}",
            )
            .unwrap_or(0.0),
        });
    }
    let sink_requests = sink.requests.load(Ordering::Relaxed);
    let sink_bytes = sink.bytes.load(Ordering::Relaxed);

    println!(
        "\n{:<10} {:<8} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "workload", "tracing", "ops/s", "p50 ms", "p99 ms", "srv CPU", "cost"
    );
    for l in &table {
        println!("{l}");
    }
    for s in &spans {
        println!(
            "{}: spans exported {:.0}, dropped (queue full) {:.0}, dropped (export failed) {:.0}",
            s.server, s.exported, s.dropped_queue_full, s.dropped_export_failed
        );
    }
    println!(
        "OTLP sink: {sink_requests} export requests, {:.1} MiB",
        sink_bytes as f64 / 1048576.0
    );
    let at_1pct = results
        .iter()
        .filter_map(|r| r["modes"].as_array())
        .flatten()
        .filter(|r| r["mode"] == "0.01")
        .filter_map(|r| r["cost"].as_f64())
        .fold(None, |acc: Option<f64>, c| {
            Some(acc.map_or(c, |a| a.max(c)))
        });
    if let Some(c) = at_1pct {
        println!(
            "goal (1% sampling costs < {:.0}% of throughput): {:+.1}% -> {}",
            GOAL_MAX_COST_AT_1PCT * 100.0,
            c * 100.0,
            if c < GOAL_MAX_COST_AT_1PCT {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    let out = a
        .out
        .parent()
        .map_or_else(|| "trace-modes.json".into(), |d| d.join("trace-modes.json"));
    let report = json!({
        "date": date,
        "machine": sysinfo::machine(),
        "params": {
            "load": spec,
            "rounds": a.rounds,
            "dataset": ds,
            "order": "each round runs every server back to back; odd rounds reverse the order",
            "trace_modes": modes,
            "sampler": "parentbased_traceidratio (OTEL_TRACES_SAMPLER_ARG = the mode)",
            "sink": "OTLP/HTTP receiver in the load generator's process: reads each body, answers 200",
        },
        "workloads": results,
        "spans": spans,
        "sink": { "requests": sink_requests, "bytes": sink_bytes },
        "failures": failures,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", out.display());
    if !failures.is_empty() {
        eprintln!("\nFAIL: {} problem(s):", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("off".parse::<TraceMode>(), Ok(TraceMode::Off));
        assert_eq!("1.0".parse::<TraceMode>(), Ok(TraceMode::Ratio(1.0)));
        assert_eq!(TraceMode::Ratio(0.01).to_string(), "0.01");
        assert_eq!(TraceMode::Ratio(1.0).to_string(), "1");
        for bad in ["0", "1.5", "-1", "on", ""] {
            assert!(bad.parse::<TraceMode>().is_err(), "{bad}");
        }
        let m = [TraceMode::Off, TraceMode::Ratio(1.0), TraceMode::Off];
        assert_eq!(unique(&m), [TraceMode::Off, TraceMode::Ratio(1.0)]);
    }

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let text = "# TYPE x counter\ncustos_otlp_spans_exported_total 1234\n\
                    custos_otlp_spans_dropped_total{reason=\"queue_full\"} 5\n";
        assert_eq!(
            counter(text, "custos_otlp_spans_exported_total"),
            Some(1234.0)
        );
        assert_eq!(
            counter(
                text,
                "custos_otlp_spans_dropped_total{reason=\"queue_full\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            counter(
                text,
                "custos_otlp_spans_dropped_total{reason=\"export_failed\"}"
            ),
            None
        );
    }
}
