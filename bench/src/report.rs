//! The comparison report: what `compare` measured, as a printed table and
//! as JSON (`target/bench/latest.json`), which `plot` reads back.
//!
//! Ratios are always Custos / OpenBao from the same run: for throughput
//! higher is better, for latency lower is better.

use serde::{Deserialize, Serialize};

use crate::load::RunStats;

/// One server's side of a measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Side {
    pub rps: f64,
    pub ops: u64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub client_cpu_cores: f64,
    pub server_cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
}

impl From<&RunStats> for Side {
    fn from(s: &RunStats) -> Self {
        Self {
            rps: s.rps,
            ops: s.ops,
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate,
            p50_ms: s.p50_ms,
            p90_ms: s.p90_ms,
            p99_ms: s.p99_ms,
            p999_ms: s.p999_ms,
            max_ms: s.max_ms,
            client_cpu_cores: s.client_cpu_cores,
            server_cpu_cores: s.server_cpu_cores,
            first_errors: s.first_errors.clone(),
        }
    }
}

/// One workload, both servers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub description: String,
    pub custos: Option<Side>,
    pub openbao: Option<Side>,
    /// Custos rps / OpenBao rps.
    pub rps_ratio: Option<f64>,
    /// Custos p50 / OpenBao p50.
    pub p50_ratio: Option<f64>,
    /// Custos p99 / OpenBao p99.
    pub p99_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl Row {
    pub fn new(
        workload: String,
        description: String,
        custos: Option<Side>,
        openbao: Option<Side>,
    ) -> Self {
        let ratio = |f: fn(&Side) -> f64| match (&custos, &openbao) {
            (Some(c), Some(o)) if f(o) > 0.0 => Some(f(c) / f(o)),
            _ => None,
        };
        Self {
            rps_ratio: ratio(|s| s.rps),
            p50_ratio: ratio(|s| s.p50_ms),
            p99_ratio: ratio(|s| s.p99_ms),
            workload,
            description,
            custos,
            openbao,
            skipped: Vec::new(),
        }
    }
}

/// A point on a scaling curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurvePoint {
    pub server: String,
    pub workload: String,
    /// Concurrency (concurrency curve) or stored keys (keys curve).
    pub x: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub client_cpu_cores: f64,
    pub server_cpu_cores: Option<f64>,
    /// Server resident memory after the point was measured.
    pub rss_bytes: Option<u64>,
}

/// Facts about one server in the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
    pub durability: String,
    pub config: String,
    pub transit: String,
    pub rss_after_workloads_bytes: Option<u64>,
    pub populate: serde_json::Value,
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub params: serde_json::Value,
    pub servers: Vec<ServerInfo>,
    pub workloads: Vec<Row>,
    pub concurrency_curve: Vec<CurvePoint>,
    pub keys_curve: Vec<CurvePoint>,
    /// Runs whose error rate exceeded 0.1%, and other hard failures.
    pub failures: Vec<String>,
}

fn num(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

/// The human table (also pasted into the README's Performance section).
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "| {:<24} | {:>10} | {:>10} | {:>6} | {:>15} | {:>15} | {:>11} |\n",
        "workload", "rps Custos", "rps Bao", "ratio", "p50 ms C / B", "p99 ms C / B", "gen CPU C/B"
    ));
    out.push_str(&format!(
        "|{:-<26}|{:->12}|{:->12}|{:->8}|{:->17}|{:->17}|{:->13}|\n",
        "", "", "", "", "", "", ""
    ));
    for row in &r.workloads {
        let c = row.custos.as_ref();
        let o = row.openbao.as_ref();
        let pair = |f: fn(&Side) -> f64| format!("{} / {}", num(c.map(f), 2), num(o.map(f), 2));
        out.push_str(&format!(
            "| {:<24} | {:>10} | {:>10} | {:>6} | {:>15} | {:>15} | {:>11} |\n",
            row.workload,
            num(c.map(|s| s.rps), 0),
            num(o.map(|s| s.rps), 0),
            row.rps_ratio
                .map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            pair(|s| s.p50_ms),
            pair(|s| s.p99_ms),
            format!(
                "{} / {}",
                num(c.map(|s| s.client_cpu_cores), 2),
                num(o.map(|s| s.client_cpu_cores), 2)
            ),
        ));
    }
    for row in &r.workloads {
        for s in &row.skipped {
            out.push_str(&format!("skipped {}: {s}\n", row.workload));
        }
    }
    out
}

/// A curve as a small table.
pub fn curve_table(points: &[CurvePoint], xname: &str) -> String {
    let mut out = format!(
        "| {:<8} | {:>9} | {:>10} | {:>9} | {:>9} | {:>10} | {:>8} |\n|{:-<10}|{:->11}|{:->12}|{:->11}|{:->11}|{:->12}|{:->10}|\n",
        "server",
        xname,
        "rps",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "srv CPU",
        "",
        "",
        "",
        "",
        "",
        "",
        ""
    );
    for p in points {
        out.push_str(&format!(
            "| {:<8} | {:>9} | {:>10.0} | {:>9.2} | {:>9.2} | {:>10} | {:>8} |\n",
            p.server,
            p.x,
            p.rps,
            p.p50_ms,
            p.p99_ms,
            num(p.rss_bytes.map(|b| b as f64 / 1048576.0), 0),
            num(p.server_cpu_cores, 2)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(rps: f64, p50: f64, p99: f64) -> Side {
        Side {
            rps,
            ops: 1,
            requests: 1,
            errors: 0,
            error_rate: 0.0,
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            client_cpu_cores: 0.1,
            server_cpu_cores: None,
            first_errors: vec![],
        }
    }

    #[test]
    fn ratios_are_custos_over_openbao() {
        let r = Row::new(
            "kv-read".into(),
            String::new(),
            Some(side(3000.0, 1.0, 4.0)),
            Some(side(1000.0, 2.0, 8.0)),
        );
        assert_eq!(r.rps_ratio, Some(3.0));
        assert_eq!(r.p50_ratio, Some(0.5));
        assert_eq!(r.p99_ratio, Some(0.5));
        let missing = Row::new("x".into(), String::new(), None, Some(side(1.0, 1.0, 1.0)));
        assert_eq!(missing.rps_ratio, None);
    }
}
