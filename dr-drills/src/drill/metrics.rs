//! The restore drill's metrics catalogue: every metric `custos drill`
//! exports is declared here once, with kind, help and labels. Alerts
//! (DrillOverdue, DrillFailed, DrillRtoOverTarget) and the DR dashboard use
//! these names; the `phase` label takes the four values of [`PHASES`],
//! `result` the two of [`RESULTS`].
//!
//! The drill records through the process-wide recorder custos-core installs
//! ([`custos_core::metrics::install`]), because the drill's own fresh node
//! records its `custos_core_*`/`custos_audit_*` metrics there too. What a
//! drill exports is filtered to the `custos_drill_` family ([`render`]): a
//! drill node's `custos_core_unsealed` must never reach the scrape that
//! pages on sealed production nodes. `serve` exposes [`render`] on
//! `/metrics`; `run` writes it to the node_exporter textfile
//! ([`write_textfile`], atomically).

use std::path::Path;

custos_audit::declare_metrics! {
    LAST_RUN = "custos_drill_last_run_timestamp_seconds", Gauge, [],
        "Unix time the last restore drill finished (passed or failed).";
    LAST_SUCCESS = "custos_drill_last_success_timestamp_seconds", Gauge, [],
        "Unix time the last restore drill that passed finished (absent until one has).";
    LAST_RESULT = "custos_drill_last_result", Gauge, [],
        "Result of the last restore drill: 1 passed, 0 failed.";
    RTO_SECONDS = "custos_drill_rto_seconds", Gauge, [],
        "Measured recovery time of the last drill: download + restore + unseal + verify, in seconds.";
    RTO_TARGET_SECONDS = "custos_drill_rto_target_seconds", Gauge, [],
        "The drill's RTO target (rto_target in drill.hcl), in seconds.";
    PHASE_SECONDS = "custos_drill_phase_seconds", Gauge, ["phase"],
        "Seconds the last drill spent in each phase (download, restore, unseal, verify).";
    SECRETS_VERIFIED = "custos_drill_secrets_verified", Gauge, [],
        "KV secrets the last drill read back from the restored node (every version of each).";
    MEMORY_GROWTH_BYTES = "custos_drill_memory_growth_bytes", Gauge, [],
        "Resident memory the last drill needed on top of its fresh, empty node (peak minus RSS once the node was open), in bytes.";
    RUNS = "custos_drill_runs_total", Counter, ["result"],
        "Restore drills run, by result (passed, failed).";
}

/// Values of the `phase` label.
pub const PHASES: [&str; 4] = ["download", "restore", "unseal", "verify"];
/// Values of the `result` label.
pub const RESULTS: [&str; 2] = ["passed", "failed"];

/// Install (or reuse) the process recorder and register the drill's help
/// texts; both `runs_total` series start at 0 so a rate never lacks one.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = custos_core::metrics::install();
    custos_audit::metrics::describe(CATALOGUE);
    for r in RESULTS {
        metrics::counter!(RUNS, "result" => r).increment(0);
    }
    handle
}

/// Set the RTO target before any drill ran (`serve` at start).
pub fn record_target(seconds: f64) {
    metrics::gauge!(RTO_TARGET_SECONDS).set(seconds);
}

/// What one drill measured, for [`record`].
pub struct Measured {
    pub finished_unix: f64,
    pub passed: bool,
    pub rto_seconds: f64,
    pub rto_target_seconds: f64,
    /// `(phase, seconds)` for the phases that ran.
    pub phases: Vec<(&'static str, f64)>,
    pub secrets_verified: u64,
    /// [`Memory::growth_bytes`](super::report::Memory), when measured.
    pub memory_growth_bytes: Option<u64>,
}

/// Set every drill metric from one finished drill.
pub fn record(m: &Measured) {
    metrics::gauge!(LAST_RUN).set(m.finished_unix);
    if m.passed {
        metrics::gauge!(LAST_SUCCESS).set(m.finished_unix);
    }
    metrics::gauge!(LAST_RESULT).set(if m.passed { 1.0 } else { 0.0 });
    metrics::gauge!(RTO_SECONDS).set(m.rto_seconds);
    metrics::gauge!(RTO_TARGET_SECONDS).set(m.rto_target_seconds);
    for phase in PHASES {
        let secs = m
            .phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map_or(0.0, |(_, s)| *s);
        metrics::gauge!(PHASE_SECONDS, "phase" => phase).set(secs);
    }
    metrics::gauge!(SECRETS_VERIFIED).set(m.secrets_verified as f64);
    if let Some(b) = m.memory_growth_bytes {
        metrics::gauge!(MEMORY_GROWTH_BYTES).set(b as f64);
    }
    let result = if m.passed { "passed" } else { "failed" };
    metrics::counter!(RUNS, "result" => result).increment(1);
}

/// The `custos_drill_*` part of the exposition text (HELP, TYPE and
/// samples), nothing else the process records.
pub fn render(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    let mut out = String::new();
    for line in handle.render().lines() {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        if name.starts_with("custos_drill_") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Write `text` to the node_exporter textfile `path`: a temporary file in
/// the same directory, fsynced, then renamed over it, so the collector
/// never reads half a file.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".custos-drill-")
        .suffix(".prom.tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    // The collector runs as another user; the file holds no secret.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "custos_drill_last_run_timestamp_seconds",
                "custos_drill_last_success_timestamp_seconds",
                "custos_drill_last_result",
                "custos_drill_rto_seconds",
                "custos_drill_rto_target_seconds",
                "custos_drill_phase_seconds",
                "custos_drill_secrets_verified",
                "custos_drill_memory_growth_bytes",
                "custos_drill_runs_total",
            ]
        );
        for m in CATALOGUE {
            assert_eq!(
                m.kind == custos_audit::metrics::Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("drill.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
