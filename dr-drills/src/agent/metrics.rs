//! The snapshot agent's metrics catalogue: every metric the automated
//! snapshots export (through the server's own recorder, on `sys/metrics`
//! and the Prometheus listener) is declared here once.
//!
//! Labels: `config`, the automated snapshot configuration's name
//! (operator-chosen, a handful per cluster), and `destination`, `primary`
//! or `copy` (the `copy_to_*` destination); `kind` on failures is the
//! bounded [`crate::ErrorKind`] (or `snapshot` when taking it failed, `manifest`
//! when its digest did). Never a bucket, key or credential.

custos_audit::declare_metrics! {
    LAST_SUCCESS = "custos_snapshot_last_success_timestamp_seconds", Gauge, ["config", "destination"],
        "Unix time the last snapshot (with its manifest) completed at the destination.";
    LAST_ATTEMPT = "custos_snapshot_last_attempt_timestamp_seconds", Gauge, ["config"],
        "Unix time the last snapshot attempt started.";
    NEXT_RUN = "custos_snapshot_next_run_timestamp_seconds", Gauge, ["config"],
        "Unix time the next snapshot is due.";
    PERIOD = "custos_snapshot_period_seconds", Gauge, ["config"],
        "The configuration's interval (or its schedule's longest gap): SnapshotTooOld fires at this plus 15 minutes without a success.";
    BYTES = "custos_snapshot_bytes", Gauge, ["config"],
        "Size of the last successful snapshot object.";
    DURATION = "custos_snapshot_duration_seconds", Histogram, ["config"],
        "Time from taking a snapshot to its manifest being written at the primary destination.";
    SECRETS = "custos_snapshot_secrets", Gauge, ["config"],
        "KV secrets in the last successful snapshot (from its manifest).";
    RUNS = "custos_snapshot_runs_total", Counter, ["config", "destination", "outcome"],
        "Snapshot uploads by destination and outcome (success, failure).";
    FAILURES = "custos_snapshot_failures_total", Counter, ["config", "destination", "kind"],
        "Failed snapshot attempts by destination and error kind.";
    CONSECUTIVE_FAILURES = "custos_snapshot_consecutive_failures", Gauge, ["config"],
        "Attempts that failed since the last success (0 when the last one succeeded).";
    RETAINED = "custos_snapshot_retained", Gauge, ["config", "destination"],
        "Good snapshots (with manifests) kept at the destination after retention.";
    COPY_BEHIND = "custos_snapshot_copy_behind_seconds", Gauge, ["config"],
        "How far the copy_to destination's newest good snapshot is behind the primary's (0 when caught up).";
}

/// Give the server's recorder the help texts.
pub fn describe() {
    custos_audit::metrics::describe(CATALOGUE);
}
