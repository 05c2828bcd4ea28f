//! The comparison report: what `compare` measured, as a printed table and
//! as JSON (`target/bench/latest.json`), which `plot` reads back.
//!
//! Ratios are always Custos / OpenBao from the same run: for throughput
//! higher is better, for latency lower is better. With `--audit-modes` the
//! report also holds [`AuditModes`] (JSON key `audit_modes`): Custos with no
//! audit device, the file device and file + Kafka + Elasticsearch, beside
//! OpenBao with its file device, the audit cost `1 - rps(mode)/rps(off)`, and
//! the sinks' backlogs sampled after each run.

use serde::{Deserialize, Serialize};

use crate::durability::SyncWork;
use crate::load::RunStats;
use crate::servers::{AuditMode, SinkBacklog};

/// Issue 4's target: audit costs Custos less than this share of its throughput.
pub const MAX_AUDIT_COST: f64 = 0.15;

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
    /// Server CPU (user + system, all its threads) per operation, µs: what
    /// an operation costs the server, whatever else shares the machine.
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
    /// The server's durable commits during the run, from its own metrics
    /// (Custos; see [`crate::durability`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<SyncWork>,
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
            server_cpu_us_per_op: s
                .server_cpu_cores
                .filter(|_| s.rps > 0.0)
                .map(|cores| cores * 1e6 / s.rps),
            durability: s.syncs.map(|c| c.rates(s.seconds, s.ops)),
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
    /// Custos server CPU per operation / OpenBao's.
    #[serde(default)]
    pub cpu_per_op_ratio: Option<f64>,
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
        let ratio = |f: fn(&Side) -> Option<f64>| match (&custos, &openbao) {
            (Some(c), Some(o)) => match (f(c), f(o)) {
                (Some(c), Some(o)) if o > 0.0 => Some(c / o),
                _ => None,
            },
            _ => None,
        };
        Self {
            rps_ratio: ratio(|s| Some(s.rps)),
            p50_ratio: ratio(|s| Some(s.p50_ms)),
            p99_ratio: ratio(|s| Some(s.p99_ms)),
            cpu_per_op_ratio: ratio(|s| s.server_cpu_us_per_op),
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
    /// Only with `compare --audit-modes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_modes: Option<AuditModes>,
}

/// Custos's measurements of one workload, by audit mode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModeSides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<Side>,
}

impl ModeSides {
    pub fn get(&self, m: AuditMode) -> Option<&Side> {
        match m {
            AuditMode::Off => self.off.as_ref(),
            AuditMode::File => self.file.as_ref(),
            AuditMode::Sinks => self.sinks.as_ref(),
        }
    }

    pub fn set(&mut self, m: AuditMode, s: Option<Side>) {
        match m {
            AuditMode::Off => self.off = s,
            AuditMode::File => self.file = s,
            AuditMode::Sinks => self.sinks = s,
        }
    }
}

/// One workload across the audit modes and OpenBao.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRow {
    pub workload: String,
    pub description: String,
    pub custos: ModeSides,
    /// OpenBao with its file audit device.
    pub openbao: Option<Side>,
    /// 1 - rps(file) / rps(off).
    pub audit_cost_file: Option<f64>,
    /// 1 - rps(sinks) / rps(off).
    pub audit_cost_sinks: Option<f64>,
    /// rps(Custos off) / rps(OpenBao).
    pub off_vs_openbao: Option<f64>,
    /// rps(Custos file) / rps(OpenBao).
    pub file_vs_openbao: Option<f64>,
    /// rps(Custos sinks) / rps(OpenBao).
    pub sinks_vs_openbao: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl AuditRow {
    pub fn new(
        workload: String,
        description: String,
        custos: ModeSides,
        openbao: Option<Side>,
    ) -> Self {
        let rps = |m| custos.get(m).map(|s| s.rps);
        let cost = |m| match (rps(m), rps(AuditMode::Off)) {
            (Some(x), Some(off)) if off > 0.0 => Some(1.0 - x / off),
            _ => None,
        };
        let vs_bao = |m| match (rps(m), openbao.as_ref().map(|s| s.rps)) {
            (Some(x), Some(o)) if o > 0.0 => Some(x / o),
            _ => None,
        };
        Self {
            audit_cost_file: cost(AuditMode::File),
            audit_cost_sinks: cost(AuditMode::Sinks),
            off_vs_openbao: vs_bao(AuditMode::Off),
            file_vs_openbao: vs_bao(AuditMode::File),
            sinks_vs_openbao: vs_bao(AuditMode::Sinks),
            workload,
            description,
            custos,
            openbao,
            skipped: Vec::new(),
        }
    }

    fn cost(&self, m: AuditMode) -> Option<f64> {
        match m {
            AuditMode::Off => None,
            AuditMode::File => self.audit_cost_file,
            AuditMode::Sinks => self.audit_cost_sinks,
        }
    }

    fn vs_openbao(&self, m: AuditMode) -> Option<f64> {
        match m {
            AuditMode::Off => self.off_vs_openbao,
            AuditMode::File => self.file_vs_openbao,
            AuditMode::Sinks => self.sinks_vs_openbao,
        }
    }
}

/// Where the `sinks` mode shipped to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinksInfo {
    pub kafka_brokers: String,
    pub kafka_topic: String,
    pub es_url: String,
    pub es_index: String,
    /// What the services are (e.g. "osmem-server, an Elasticsearch API stand-in").
    pub note: String,
}

impl SinksInfo {
    /// `sinks: Kafka … topic …; Elasticsearch API … index …-*`, then the
    /// note (if any) after `note_sep`.
    pub fn describe(&self, note_sep: &str) -> String {
        let mut out = format!(
            "sinks: Kafka {} topic {}; Elasticsearch API {} index {}-*",
            self.kafka_brokers, self.kafka_topic, self.es_url, self.es_index
        );
        if !self.note.is_empty() {
            out.push_str(&format!("{note_sep}({})", self.note));
        }
        out
    }
}

/// The sinks' backlogs after one measured run (or after preparing a workload).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkSample {
    pub workload: String,
    /// `prepare` or `round N`.
    pub when: String,
    /// Each sink the moment the run ended.
    pub at_end: Vec<SinkBacklog>,
    /// Seconds until every sink had shipped all the local log held at the
    /// end of the run; `None`: not within the drain timeout.
    pub drained_after_s: Option<f64>,
    /// Each sink after that wait.
    pub after_wait: Vec<SinkBacklog>,
}

/// The audit-mode comparison (`compare --audit-modes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditModes {
    pub modes: Vec<AuditMode>,
    /// Set when `sinks` is one of the modes.
    pub sinks: Option<SinksInfo>,
    /// Target: audit cost below this share of Custos's `off` throughput.
    pub max_audit_cost: f64,
    pub rows: Vec<AuditRow>,
    pub sink_samples: Vec<SinkSample>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}x"))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// One sink's backlog in a line.
pub fn backlog_text(b: &SinkBacklog) -> String {
    format!(
        "{} {} records ({} KiB, lag {:.1}s, checkpoint {}/{}) {}{}",
        b.path,
        b.records,
        b.bytes / 1024,
        b.lag_seconds,
        b.checkpoint,
        b.durable_seq,
        if b.up { "up" } else { "DOWN" },
        b.last_error
            .as_deref()
            .map_or(String::new(), |e| format!(" last error: {e}")),
    )
}

/// The audit-mode table, the targets and the sinks' backlogs.
pub fn audit_table(a: &AuditModes) -> String {
    let mut out = String::from(
        "Custos by audit mode (off: no device; file: file device; sinks: file + kafka + \
         elasticsearch devices) vs OpenBao with its file device\n",
    );
    out.push_str(&format!(
        "| {:<24} | {:<13} | {:>10} | {:>8} | {:>8} | {:>10} | {:>10} |\n",
        "workload", "server", "rps", "p50 ms", "p99 ms", "audit cost", "vs OpenBao"
    ));
    out.push_str(&format!(
        "|{:-<26}|{:-<15}|{:->12}|{:->10}|{:->10}|{:->12}|{:->12}|\n",
        "", "", "", "", "", "", ""
    ));
    for row in &a.rows {
        let line = |server: &str, s: Option<&Side>, cost: String, vs: String| {
            format!(
                "| {:<24} | {:<13} | {:>10} | {:>8} | {:>8} | {:>10} | {:>10} |\n",
                row.workload,
                server,
                num(s.map(|s| s.rps), 0),
                num(s.map(|s| s.p50_ms), 2),
                num(s.map(|s| s.p99_ms), 2),
                cost,
                vs
            )
        };
        for &m in &a.modes {
            out.push_str(&line(
                &format!("custos {m}"),
                row.custos.get(m),
                if m == AuditMode::Off {
                    "(base)".into()
                } else {
                    pct(row.cost(m))
                },
                times(row.vs_openbao(m)),
            ));
        }
        out.push_str(&line(
            "openbao file",
            row.openbao.as_ref(),
            "-".into(),
            "1.00x".into(),
        ));
    }
    for row in &a.rows {
        let mut parts = Vec::new();
        for m in [AuditMode::File, AuditMode::Sinks] {
            if let Some(c) = row.cost(m) {
                parts.push(format!(
                    "audit cost {m} {} (< {:.0}%: {})",
                    pct(Some(c)),
                    a.max_audit_cost * 100.0,
                    met(c < a.max_audit_cost)
                ));
            }
        }
        if let Some(r) = row.sinks_vs_openbao {
            parts.push(format!(
                "Custos sinks / OpenBao file {} (> 1: {})",
                times(Some(r)),
                met(r > 1.0)
            ));
        }
        if !parts.is_empty() {
            out.push_str(&format!("target {}: {}\n", row.workload, parts.join("; ")));
        }
        for s in &row.skipped {
            out.push_str(&format!("skipped {}: {s}\n", row.workload));
        }
    }
    if let Some(s) = &a.sinks {
        out.push_str(&s.describe("\n  "));
        out.push('\n');
    }
    for s in &a.sink_samples {
        let end: Vec<String> = s.at_end.iter().map(backlog_text).collect();
        out.push_str(&format!(
            "  backlog {} {} at end of run: {}\n",
            s.workload,
            s.when,
            if end.is_empty() {
                "no sink listed".into()
            } else {
                end.join("; ")
            }
        ));
        match s.drained_after_s {
            Some(t) => out.push_str(&format!("    all shipped {t:.1}s later\n")),
            None => {
                let after: Vec<String> = s.after_wait.iter().map(backlog_text).collect();
                out.push_str(&format!(
                    "    NOT drained within the timeout: {}\n",
                    after.join("; ")
                ));
            }
        }
    }
    out
}

fn num(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

/// The human table (also pasted into the README's Performance section).
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "| {:<24} | {:>10} | {:>10} | {:>6} | {:>15} | {:>15} | {:>17} | {:>11} |\n",
        "workload",
        "rps Custos",
        "rps Bao",
        "ratio",
        "p50 ms C / B",
        "p99 ms C / B",
        "srv CPU µs/op C/B",
        "gen CPU C/B"
    ));
    out.push_str(&format!(
        "|{:-<26}|{:->12}|{:->12}|{:->8}|{:->17}|{:->17}|{:->19}|{:->13}|\n",
        "", "", "", "", "", "", "", ""
    ));
    for row in &r.workloads {
        let c = row.custos.as_ref();
        let o = row.openbao.as_ref();
        let pair = |f: fn(&Side) -> f64| format!("{} / {}", num(c.map(f), 2), num(o.map(f), 2));
        out.push_str(&format!(
            "| {:<24} | {:>10} | {:>10} | {:>6} | {:>15} | {:>15} | {:>17} | {:>11} |\n",
            row.workload,
            num(c.map(|s| s.rps), 0),
            num(o.map(|s| s.rps), 0),
            row.rps_ratio
                .map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            pair(|s| s.p50_ms),
            pair(|s| s.p99_ms),
            format!(
                "{} / {}",
                num(c.and_then(|s| s.server_cpu_us_per_op), 0),
                num(o.and_then(|s| s.server_cpu_us_per_op), 0)
            ),
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
    let syncs: Vec<String> = r
        .workloads
        .iter()
        .filter_map(|row| {
            let d = row.custos.as_ref()?.durability.as_ref()?;
            Some(format!("  {:<24} {}\n", row.workload, d.text()))
        })
        .collect();
    if !syncs.is_empty() {
        out.push_str("Custos's durable commits during each workload (its own metrics):\n");
        out.extend(syncs);
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
            server_cpu_cores: Some(rps / 10_000.0),
            server_cpu_us_per_op: Some(100.0),
            durability: None,
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
        assert_eq!(r.cpu_per_op_ratio, Some(1.0));
        let missing = Row::new("x".into(), String::new(), None, Some(side(1.0, 1.0, 1.0)));
        assert_eq!(missing.rps_ratio, None);
    }

    #[test]
    fn table_lists_custos_durable_commits_per_workload() {
        let mut custos = side(3000.0, 1.0, 4.0);
        custos.durability = Some(
            crate::durability::SyncCounters {
                audit_commits: 8000.0,
                audit_commit_seconds: 1.6,
                audit_events: 48_000.0,
                ..Default::default()
            }
            .rates(2.0, 24_000),
        );
        let r = Report {
            date: String::new(),
            machine: String::new(),
            params: serde_json::Value::Null,
            servers: vec![],
            workloads: vec![
                Row::new(
                    "kv-read".into(),
                    String::new(),
                    Some(custos),
                    Some(side(1000.0, 2.0, 8.0)),
                ),
                Row::new(
                    "kv-write".into(),
                    String::new(),
                    Some(side(1.0, 1.0, 1.0)),
                    None,
                ),
            ],
            concurrency_curve: vec![],
            keys_curve: vec![],
            failures: vec![],
            audit_modes: None,
        };
        let t = table(&r);
        assert!(
            t.contains("  kv-read                  audit log 4000 commits/s, writer busy 80% of the run, 6.0 events per commit\n"),
            "{t}"
        );
        assert!(!t.contains("  kv-write "), "no figures, no line: {t}");
    }

    fn backlog(path: &str, up: bool, records: u64) -> SinkBacklog {
        SinkBacklog {
            path: path.into(),
            kind: "kafka".into(),
            up,
            records,
            bytes: 2048,
            lag_seconds: 0.5,
            checkpoint: 10,
            durable_seq: 10 + records,
            last_error: (!up).then(|| "broker down".into()),
        }
    }

    #[test]
    fn audit_cost_is_relative_to_off_and_ratio_to_openbao() {
        let custos = ModeSides {
            off: Some(side(10_000.0, 1.0, 2.0)),
            file: Some(side(9_000.0, 1.1, 2.2)),
            sinks: Some(side(8_000.0, 1.2, 2.4)),
        };
        let r = AuditRow::new(
            "kv-read".into(),
            String::new(),
            custos,
            Some(side(4_000.0, 3.0, 9.0)),
        );
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(r.audit_cost_file, 0.1), "{:?}", r.audit_cost_file);
        assert!(close(r.audit_cost_sinks, 0.2), "{:?}", r.audit_cost_sinks);
        assert!(close(r.sinks_vs_openbao, 2.0));
        assert!(close(r.file_vs_openbao, 2.25));
        assert!(close(r.off_vs_openbao, 2.5));

        // No `off` run: no cost; no OpenBao: no ratio.
        let partial = AuditRow::new(
            "kv-read".into(),
            String::new(),
            ModeSides {
                sinks: Some(side(8_000.0, 1.0, 2.0)),
                ..ModeSides::default()
            },
            None,
        );
        assert_eq!(partial.audit_cost_sinks, None);
        assert_eq!(partial.sinks_vs_openbao, None);
    }

    #[test]
    fn audit_table_shows_modes_targets_and_backlog() {
        let row = AuditRow::new(
            "kv-read".into(),
            String::new(),
            ModeSides {
                off: Some(side(10_000.0, 1.0, 2.0)),
                file: Some(side(9_000.0, 1.1, 2.2)),
                sinks: Some(side(8_000.0, 1.2, 2.4)),
            },
            Some(side(4_000.0, 3.0, 9.0)),
        );
        let a = AuditModes {
            modes: vec![AuditMode::Off, AuditMode::File, AuditMode::Sinks],
            sinks: Some(SinksInfo {
                kafka_brokers: "127.0.0.1:9092".into(),
                kafka_topic: "custos-audit-bench".into(),
                es_url: "http://127.0.0.1:9200".into(),
                es_index: "custos-audit-bench".into(),
                note: "osmem-server, an Elasticsearch API stand-in".into(),
            }),
            max_audit_cost: MAX_AUDIT_COST,
            rows: vec![row],
            sink_samples: vec![
                SinkSample {
                    workload: "kv-read".into(),
                    when: "round 1".into(),
                    at_end: vec![backlog("kafka/", true, 3)],
                    drained_after_s: Some(0.4),
                    after_wait: vec![backlog("kafka/", true, 0)],
                },
                SinkSample {
                    workload: "kv-read".into(),
                    when: "round 2".into(),
                    at_end: vec![backlog("es/", false, 7)],
                    drained_after_s: None,
                    after_wait: vec![backlog("es/", false, 7)],
                },
            ],
        };
        let t = audit_table(&a);
        for want in [
            "custos off",
            "custos file",
            "custos sinks",
            "openbao file",
            "10.0%",
            "20.0%",
            "2.00x",
            "audit cost sinks 20.0% (< 15%: NOT met)",
            "audit cost file 10.0% (< 15%: met)",
            "Custos sinks / OpenBao file 2.00x (> 1: met)",
            "stand-in",
            "kafka/ 3 records",
            "all shipped 0.4s later",
            "NOT drained within the timeout: es/ 7 records",
            "DOWN last error: broker down",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // The JSON round-trips, and an old report without the key still reads.
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["rows"][0]["custos"]["sinks"]["rps"], 8000.0);
        let back: AuditModes = serde_json::from_value(v).unwrap();
        assert_eq!(back.modes, a.modes);
    }

    #[test]
    fn reports_without_audit_modes_still_read_and_omit_the_key() {
        let old = serde_json::json!({
            "date": "2025-01-01T00:00:00Z", "machine": "m", "params": {},
            "servers": [], "workloads": [], "concurrency_curve": [],
            "keys_curve": [], "failures": []
        });
        let r: Report = serde_json::from_value(old).unwrap();
        assert!(r.audit_modes.is_none());
        let again = serde_json::to_value(&r).unwrap();
        assert!(again.get("audit_modes").is_none());
        assert!(again.get("workloads").is_some());
    }
}
