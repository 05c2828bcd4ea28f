//! The rotator's metrics catalogue: every metric `custos rotator serve`
//! exposes (on `telemetry { prometheus_listen }` at `/metrics`) is declared
//! here once, with kind, help and labels. The `rotation_job` label is a job
//! name from the config file (operator-chosen, few; not `job`, which
//! Prometheus sets to the scrape job); `outcome` and `step` are fixed sets. The dashboards/alerts check in custos-core reads this file's
//! declarations too (the rotator does not link custos-core).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

macro_rules! declare_metrics {
    ($($ident:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $ident: &str = $name;)*
        /// Every metric declared in this module, in declaration order.
        pub const CATALOGUE: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, help: $help, labels: &[$($label),*] },)*
        ];
    };
}

declare_metrics! {
    LAST_SUCCESS = "custos_rotator_last_success_timestamp_seconds", Gauge, ["rotation_job"],
        "Unix time of the job's last run that reached done (absent until one has).";
    RUNS = "custos_rotator_runs_total", Counter, ["rotation_job", "outcome"],
        "Runs that ended or paused, by outcome: done, held (deadline passed with consumers not moved), failed.";
    STEP_SECONDS = "custos_rotator_step_duration_seconds", Histogram, ["rotation_job", "step"],
        "Time one step of a run took (create, promote, verify, retire).";
    STEP_ERRORS = "custos_rotator_step_errors_total", Counter, ["rotation_job", "step"],
        "Errors while performing a step (each retry counts).";
    CONSUMERS_PENDING = "custos_rotator_consumers_pending", Gauge, ["rotation_job"],
        "Consumers the current run waits for (not yet moved to the new credential).";
    RUN_HELD = "custos_rotator_run_held", Gauge, ["rotation_job"],
        "1 while the job's run is held: its deadline passed and a consumer still uses the old credential.";
    RUN_ACTIVE = "custos_rotator_run_active", Gauge, ["rotation_job"],
        "1 while the job has an unfinished run.";
    NEXT_RUN = "custos_rotator_next_run_timestamp_seconds", Gauge, ["rotation_job"],
        "Unix time of the job's next scheduled run.";
    SCHEDULE_PERIOD = "custos_rotator_schedule_period_seconds", Gauge, ["rotation_job"],
        "The job's schedule period (longest gap between consecutive firings).";
}

/// Install the Prometheus recorder and register help texts.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    for m in CATALOGUE {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help),
        }
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        for m in CATALOGUE {
            assert!(m.name.starts_with("custos_rotator_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
    }
}
