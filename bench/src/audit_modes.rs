//! `compare --audit-modes`: what audit costs Custos (issue 4).
//!
//! Starts one Custos server per requested audit mode (`off`: no audit
//! device; `file`: the file device; `sinks`: the file device plus the `kafka`
//! and `elasticsearch` devices shipping to `--kafka-brokers` / `--es-url`),
//! each with a fresh data directory, and OpenBao with its file device. Every
//! workload runs on all of them in turn, the order reversed every other round
//! (`alternate`) so drift cancels. After each run of the `sinks` server its
//! sinks' backlog (`GET sys/audit?backlog=true`) is sampled and drained before
//! the next server runs; a sink that is down or shipped nothing fails the
//! command. Results go to stdout ([`report::audit_table`]) and to the JSON
//! report under `audit_modes`; the `workloads` key keeps its meaning (Custos
//! with the file device vs OpenBao), `servers` lists every server started.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use crate::report::{
    self, AuditModes, AuditRow, MAX_AUDIT_COST, ModeSides, Report, Row, Side, SinkSample, SinksInfo,
};
use crate::servers::{
    self, AuditMode, AuditSetup, BENCH_INDEX, BENCH_TOPIC, Kind, Server, SinkAddrs, SinkBacklog,
};
use crate::workload::Workload;
use crate::{CompareArgs, Target, alternate, binaries, error_failures, prepare, sysinfo};

/// The modes in the order given, each once.
fn unique(modes: &[AuditMode]) -> Vec<AuditMode> {
    let mut out = Vec::new();
    for &m in modes {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// Every sink has shipped all that the local log held when `at_end` was
/// taken (the polls are audited too, so `records` itself never settles at 0).
fn drained(at_end: &[SinkBacklog], now: &[SinkBacklog]) -> bool {
    at_end.iter().all(|e| {
        now.iter()
            .any(|n| n.path == e.path && n.checkpoint >= e.durable_seq)
    })
}

/// The sinks' backlog right after a run, then polled until every sink has
/// shipped what the run wrote, or `timeout` passes.
pub(crate) async fn sink_sample(
    server: &Server,
    w: Workload,
    when: String,
    timeout: Duration,
) -> Result<SinkSample> {
    let at_end = server.sink_backlog().await?;
    let started = Instant::now();
    let mut last = at_end.clone();
    let drained_after_s = loop {
        if drained(&at_end, &last) {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= timeout {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = server.sink_backlog().await?;
    };
    let text: Vec<String> = at_end.iter().map(report::backlog_text).collect();
    println!(
        "    {} sinks after {w} {when}: {}; {}",
        server.label,
        text.join("; "),
        drained_after_s.map_or_else(
            || format!("NOT drained within {:.0}s", timeout.as_secs_f64()),
            |t| format!("drained in {t:.1}s")
        )
    );
    Ok(SinkSample {
        workload: w.name().into(),
        when,
        at_end,
        drained_after_s,
        after_wait: last,
    })
}

pub(crate) async fn compare(a: CompareArgs) -> Result<bool> {
    if a.curves {
        bail!("--curves cannot be combined with --audit-modes");
    }
    let modes = unique(&a.audit_modes);
    let sinks = if modes.contains(&AuditMode::Sinks) {
        let need = |v: &Option<String>, flag: &str, env: &str| {
            v.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                anyhow!(
                    "--audit-modes sinks needs {flag} (or ${env}); scripts/bench.sh starts \
                     tansu and osmem-server when neither is given"
                )
            })
        };
        Some(SinkAddrs {
            kafka_brokers: need(&a.kafka_brokers, "--kafka-brokers", "CUSTOS_BENCH_KAFKA")?,
            es_url: need(&a.es_url, "--es-url", "CUSTOS_BENCH_ES")?,
        })
    } else {
        None
    };
    let (custos_bin, bao_bin) = binaries(&a)?;
    let spec = a.load.spec();
    let ds = a.data.dataset();
    let workloads = if a.workloads.is_empty() {
        Workload::all()
    } else {
        a.workloads.clone()
    };
    let drain = Duration::from_secs_f64(a.sink_drain_timeout.max(0.0));
    let run_dir = a.run_dir()?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mode_names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    println!(
        "custos-bench compare --audit-modes {}: {} | custos {} | openbao {}",
        mode_names.join(","),
        sysinfo::machine(),
        custos_bin.display(),
        bao_bin.display()
    );
    let sinks_info = sinks.as_ref().map(|s| SinksInfo {
        kafka_brokers: s.kafka_brokers.clone(),
        kafka_topic: BENCH_TOPIC.into(),
        es_url: s.es_url.clone(),
        es_index: BENCH_INDEX.into(),
        note: a.sinks_note.clone(),
    });
    if let Some(s) = &sinks_info {
        println!("  {}", s.describe(" "));
    }

    // One Custos per mode, then OpenBao (always last: rows index it so).
    let mut plan: Vec<(Kind, String, AuditSetup)> = Vec::new();
    for &m in &modes {
        let setup = match (m, &sinks) {
            (AuditMode::Off, _) => AuditSetup::Off,
            (AuditMode::File, _) => AuditSetup::File,
            (AuditMode::Sinks, Some(s)) => AuditSetup::Sinks(s.clone()),
            (AuditMode::Sinks, None) => bail!("sinks mode without sink addresses"),
        };
        plan.push((Kind::Custos, format!("custos-{m}"), setup));
    }
    plan.push((Kind::OpenBao, "openbao".into(), AuditSetup::File));
    let mut targets = Vec::new();
    for (kind, label, setup) in &plan {
        let bin = match kind {
            Kind::Custos => &custos_bin,
            Kind::OpenBao => &bao_bin,
        };
        let server = servers::start_as(*kind, label, bin, &run_dir, setup).await?;
        println!(
            "  started {label} {} at {} (pid {}, data {})",
            server.version,
            server.addr,
            server.pid,
            server.dir.display()
        );
        println!("    durability: {}", server.durability);
        let drain = (server.audit == AuditMode::Sinks && *kind == Kind::Custos).then_some(drain);
        targets.push(Target::new(server, a.load.concurrency, drain)?);
    }

    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut audit_rows = Vec::new();
    for &w in &workloads {
        let (usable, skipped) = prepare(&mut targets, w, &ds).await?;
        let stats = alternate(&mut targets, w, &spec, a.rounds, &usable).await?;
        failures.extend(error_failures(&targets, w, &stats));
        let side = |i: usize| stats.get(i).and_then(Option::as_ref).map(Side::from);
        let bao = side(targets.len() - 1);
        let mut custos = ModeSides::default();
        for (i, &m) in modes.iter().enumerate() {
            custos.set(m, side(i));
        }
        // The old key keeps its meaning: Custos (file device) vs OpenBao.
        let mut row = Row::new(
            w.name().into(),
            w.describe().into(),
            custos.file.clone(),
            bao.clone(),
        );
        row.skipped = skipped.clone();
        rows.push(row);
        let mut arow = AuditRow::new(w.name().into(), w.describe().into(), custos, bao);
        arow.skipped = skipped;
        audit_rows.push(arow);
    }
    let rss_after: Vec<Option<u64>> = targets.iter().map(|t| t.server.rss()).collect();

    // A sink that is down, or never shipped anything, fails the run.
    let mut sink_samples = Vec::new();
    for t in &mut targets {
        sink_samples.append(&mut t.sink_samples);
        if t.drain.is_none() {
            continue;
        }
        let now = t.server.sink_backlog().await?;
        if now.is_empty() {
            failures.push(format!("{}: sys/audit lists no sink", t.server.label));
        }
        for b in &now {
            if !b.up || (b.durable_seq > 0 && b.checkpoint == 0) {
                failures.push(format!(
                    "{}: sink {} is not shipping: {}",
                    t.server.label,
                    b.path,
                    report::backlog_text(b)
                ));
            }
        }
    }

    let report = Report {
        date,
        machine: sysinfo::machine(),
        params: json!({
            "load": spec,
            "rounds": a.rounds,
            "dataset": ds,
            "order": "each round runs every server back to back; odd rounds reverse the order (A,B,C,D then D,C,B,A)",
            "audit_modes": modes,
            "sink_drain_timeout_s": drain.as_secs_f64(),
        }),
        servers: targets
            .iter()
            .zip(&rss_after)
            .map(|(t, rss)| t.info(*rss))
            .collect(),
        workloads: rows,
        concurrency_curve: Vec::new(),
        keys_curve: Vec::new(),
        failures,
        audit_modes: Some(AuditModes {
            modes,
            sinks: sinks_info,
            max_audit_cost: MAX_AUDIT_COST,
            rows: audit_rows,
            sink_samples,
        }),
    };

    if let Some(am) = &report.audit_modes {
        println!("\n{}", report::audit_table(am));
    }
    for s in &report.servers {
        println!(
            "{}: {} | RSS after workloads {} MiB\n  durability: {}",
            s.name,
            s.version,
            s.rss_after_workloads_bytes
                .map_or("-".into(), |b| (b / 1048576).to_string()),
            s.durability
        );
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", a.out.display());
    if !report.failures.is_empty() {
        eprintln!("\nFAIL: {} problem(s):", report.failures.len());
        for f in &report.failures {
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
    fn modes_keep_their_order_once_each() {
        use AuditMode::*;
        assert_eq!(unique(&[Sinks, Off, Sinks, File, Off]), [Sinks, Off, File]);
        assert!(unique(&[]).is_empty());
    }

    fn sink(path: &str, checkpoint: u64, durable_seq: u64) -> SinkBacklog {
        SinkBacklog {
            path: path.into(),
            kind: String::new(),
            up: true,
            records: durable_seq - checkpoint,
            bytes: 0,
            lag_seconds: 0.0,
            checkpoint,
            durable_seq,
            last_error: None,
        }
    }

    #[test]
    fn drained_once_every_sink_shipped_what_the_run_wrote() {
        let at_end = [sink("es/", 10, 100), sink("kafka/", 90, 100)];
        // The polls add records of their own: not needed for "drained".
        assert!(drained(
            &at_end,
            &[sink("es/", 100, 104), sink("kafka/", 101, 104)]
        ));
        assert!(!drained(
            &at_end,
            &[sink("es/", 99, 104), sink("kafka/", 104, 104)]
        ));
        // A sink missing from the later reply is not drained.
        assert!(!drained(&at_end, &[sink("kafka/", 104, 104)]));
        assert!(drained(&[], &[]));
    }
}
