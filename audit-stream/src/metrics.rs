//! The metrics catalogue of the audit crate: every metric `custos-audit`
//! emits is declared here once, with its kind, help text and label names.
//! This module also holds the catalogue machinery every Custos crate shares
//! ([`MetricDef`], [`Kind`], [`declare_metrics!`](crate::declare_metrics),
//! [`describe`]); `custos_core::metrics` declares the server's metrics with it. The broker and the file device
//! record through these constants; the core's recorder gets the help texts
//! from [`describe_all`]; dashboards and alerts may only use declared names.
//!
//! Labels: `path`, the audit device's mount path, and `sink`, the mount path
//! of a Kafka or Elasticsearch device (both operator-chosen, a handful per
//! server); `reason` on sink failures is one of a fixed set
//! (`unavailable`, `rejected`, `corrupt`). Never a request path, token or
//! event field.
//! The access-pattern metrics (`custos_access_*`, from [`crate::access`])
//! carry `client` (the top K clients' display names or short accessor-hash
//! prefixes, everyone else folded into `other`) and `mount` (operator-chosen,
//! capped); the sensitive-operation counter a fixed `kind`.

/// What kind of Prometheus series a declared metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One declared metric: the single source of its name, kind, help text and
/// label names (the catalogue machinery shared by every Custos crate).
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// Declare a crate's metrics: one `pub const IDENT: &str = "name";` per
/// metric and a `pub const CATALOGUE: &[MetricDef]` listing all of them in
/// declaration order. Used by this crate and by `custos_core::metrics`.
#[macro_export]
macro_rules! declare_metrics {
    ($($ident:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $ident: &str = $name;)*
        /// Every metric declared in this module, in declaration order.
        pub const CATALOGUE: &[$crate::metrics::MetricDef] = &[
            $($crate::metrics::MetricDef {
                name: $name,
                kind: $crate::metrics::Kind::$kind,
                help: $help,
                labels: &[$($label),*],
            },)*
        ];
    };
}

/// Register help text for every metric of `catalogue` with the installed
/// recorder.
pub fn describe(catalogue: &[MetricDef]) {
    for m in catalogue {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram if m.name.ends_with("_seconds") => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
            Kind::Histogram => metrics::describe_histogram!(m.name, metrics::Unit::Count, m.help),
        }
    }
}

crate::declare_metrics! {
    DEVICE_LOG = "custos_audit_device_log_total", Counter, ["path"],
        "Events an audit device recorded durably, by device path.";
    DEVICE_FAILURE = "custos_audit_device_failure_total", Counter, ["path"],
        "Events an audit device failed to record, by device path.";
    RECONCILED = "custos_audit_reconciled_events_total", Counter, ["path"],
        "Request events put back into a file device's log from the Raft log they travelled in (a write applied whose audit pair was not written), by device path.";
    CARRIED_DAMAGED = "custos_audit_carried_damaged_total", Counter, ["path"],
        "Request events that travelled in the Raft log and could not be put back because they are damaged (not decodable), by device path: each is a write applied with no request event in that device's log, logged with its request id and Raft index.";
    FSYNC_SECONDS = "custos_audit_fsync_duration_seconds", Histogram, ["path"],
        "Time to write and fsync one group-commit batch of the file audit device.";
    FSYNC = "custos_audit_fsync_total", Counter, ["path"],
        "fsync calls made by the file audit device (one per group-commit batch).";
    GROUP_COMMIT_EVENTS = "custos_audit_group_commit_events", Histogram, ["path"],
        "Events written per group-commit batch (per fsync) by the file audit device.";
    LOG_RECORDS = "custos_audit_log_records_appended_total", Counter, ["path"],
        "Records appended and fsynced to the local audit log.";
    LOG_BYTES = "custos_audit_log_bytes_appended_total", Counter, ["path"],
        "Bytes appended and fsynced to the local audit log.";
    LOG_DURABLE_SEQ = "custos_audit_log_durable_sequence", Gauge, ["path"],
        "Sequence number of the last record fsynced to the local audit log.";
    LOG_SEGMENTS = "custos_audit_log_segments", Gauge, ["path"],
        "Segment files in the local audit log directory.";
    LOG_SIZE_BYTES = "custos_audit_log_size_bytes", Gauge, ["path"],
        "Bytes held by the segment files of the local audit log.";
    LOG_DISK_FREE = "custos_audit_log_disk_free_bytes", Gauge, ["path"],
        "Free bytes (available to the server) on the file system of the local audit log.";
    LOG_DISK_FULL = "custos_audit_log_disk_full_total", Counter, ["path"],
        "Group-commit batches refused because free space was under min_free_bytes or the disk was full.";
    LOG_RECOVERY_TRUNCATIONS = "custos_audit_log_recovery_truncations_total", Counter, ["path"],
        "Torn tails cut off the last segment when the local audit log was opened after a crash.";
    LOG_JOURNAL_RESTORED = "custos_audit_log_journal_restored_total", Counter, ["path"],
        "Group-commit batches the sync journal put back into a segment at open (a power cut had taken them from the page cache).";
    LOG_JOURNAL_FAILURES = "custos_audit_log_journal_failures_total", Counter, ["path"],
        "Times the sync journal could not be written or synced and the log went back to syncing its segments directly.";
    LOG_SEGMENT_ROLLS = "custos_audit_log_segment_rolls_total", Counter, ["path"],
        "New segments started by the local audit log (size, age, rotate/SIGHUP).";
    LOG_SEGMENTS_PRUNED = "custos_audit_log_segments_pruned_total", Counter, ["path"],
        "Segments deleted by retention after every sink acknowledged them.";
    INDEX_SEQ = "custos_audit_index_sequence", Gauge, [],
        "Sequence number of the last local audit log record in the audit query index.";
    INDEX_REBUILDS = "custos_audit_index_rebuilds_total", Counter, [],
        "Times the audit query index was cleared to be rebuilt from the local log.";
    INDEX_FLUSHES = "custos_audit_index_flushes_total", Counter, [],
        "Fsynced writes of the postings held in memory to the audit query index file.";
    INDEX_BYTES = "custos_audit_index_bytes", Gauge, [],
        "Size of the audit query index file (it follows the local log's retention).";
    INDEX_POSTINGS = "custos_audit_index_postings", Gauge, [],
        "Postings (indexed successful response events) held in the audit query index file.";
    INDEX_PRUNED_POSTINGS = "custos_audit_index_pruned_postings_total", Counter, [],
        "Postings dropped from the audit query index because retention deleted their log segments.";
    QUERY_SECONDS = "custos_audit_query_duration_seconds", Histogram, ["source"],
        "Time to answer one sys/audit-query, by source (local, elasticsearch).";
    SENSITIVE_OPERATIONS = "custos_audit_sensitive_operations_total", Counter, ["kind"],
        "High-sensitivity operations seen in the audit stream, by kind (root_token, seal, audit, policy, rotate, mount, auth_method, token_create_orphan, token_revoke_orphan, raw, generate_root, rekey).";
    ACCESS_READS_RATE = "custos_access_reads_rate", Gauge, ["client", "mount"],
        "Current read rate (reads/s, fast EWMA of inter-read intervals, event time) per client and mount; top-K clients by anomaly, the rest folded into client=\"other\".";
    ACCESS_BASELINE_RATE = "custos_access_baseline_rate", Gauge, ["client", "mount"],
        "Baseline read rate (reads/s, slow EWMA of inter-read intervals) per client and mount; same clients as custos_access_reads_rate.";
    ACCESS_ANOMALY_SCORE = "custos_access_anomaly_score", Gauge, ["client", "mount"],
        "Current read rate divided by the client's own baseline (1 = as usual); same clients as custos_access_reads_rate.";
    ACCESS_ANOMALOUS_CLIENTS = "custos_access_anomalous_clients", Gauge, [],
        "Clients (all of them, not only the top K) whose anomaly score exceeds the threshold.";
    ACCESS_SEQ = "custos_access_sequence", Gauge, [],
        "Sequence number of the last local audit log record the access-pattern detector has seen (anomaly and sensitive-operation metrics are this far along).";
    SINK_UP = "custos_audit_sink_up", Gauge, ["sink"],
        "1 when the audit sink (Kafka, Elasticsearch) accepted the last shipment or health probe, 0 while it fails.";
    SINK_BACKLOG_RECORDS = "custos_audit_sink_backlog_records", Gauge, ["sink"],
        "Records of the local audit log the sink has not acknowledged yet.";
    SINK_BACKLOG_BYTES = "custos_audit_sink_backlog_bytes", Gauge, ["sink"],
        "Bytes of the local audit log the sink has not acknowledged yet.";
    SINK_LAG_SECONDS = "custos_audit_sink_lag_seconds", Gauge, ["sink"],
        "Age of the oldest record the sink has not acknowledged (0 when caught up).";
    SINK_CHECKPOINT = "custos_audit_sink_checkpoint_sequence", Gauge, ["sink"],
        "Sequence number of the last local audit log record the sink acknowledged.";
    SINK_SHIPPED = "custos_audit_sink_shipped_total", Counter, ["sink"],
        "Records the sink acknowledged.";
    SINK_RETRIED = "custos_audit_sink_retried_total", Counter, ["sink"],
        "Records sent to the sink again after a failed or unacknowledged attempt.";
    SINK_FAILED = "custos_audit_sink_failures_total", Counter, ["sink", "reason"],
        "Failed shipments: unavailable (connection, timeout, 429/5xx), rejected (mapping or other 4xx; needs an operator), corrupt (unreadable local record skipped).";
    SINK_SEND_SECONDS = "custos_audit_sink_send_duration_seconds", Histogram, ["sink"],
        "Time from sending a batch to the sink until it acknowledged or failed.";
}

/// Register help text for every declared metric with the installed recorder.
pub fn describe_all() {
    describe(CATALOGUE);
}

/// Increment a per-device counter.
pub(crate) fn device_counter(name: &'static str, path: &str, by: u64) {
    metrics::counter!(name, "path" => path.to_owned()).increment(by);
}

/// Set a per-device gauge.
pub(crate) fn device_gauge(name: &'static str, path: &str, value: f64) {
    metrics::gauge!(name, "path" => path.to_owned()).set(value);
}

/// Set a per-sink gauge.
pub(crate) fn sink_gauge(name: &'static str, sink: &str, value: f64) {
    metrics::gauge!(name, "sink" => sink.to_owned()).set(value);
}

/// Increment a per-sink counter.
pub(crate) fn sink_counter(name: &'static str, sink: &str, by: u64) {
    metrics::counter!(name, "sink" => sink.to_owned()).increment(by);
}

/// Count a sink failure with its reason (`unavailable`, `rejected`, `corrupt`).
pub(crate) fn sink_failure(sink: &str, reason: &'static str) {
    metrics::counter!(SINK_FAILED, "sink" => sink.to_owned(), "reason" => reason).increment(1);
}

/// Record a per-sink histogram value.
pub(crate) fn sink_histogram(name: &'static str, sink: &str, value: f64) {
    metrics::histogram!(name, "sink" => sink.to_owned()).record(value);
}

/// Record a per-device histogram value.
pub(crate) fn device_histogram(name: &'static str, path: &str, value: f64) {
    metrics::histogram!(name, "path" => path.to_owned()).record(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|m| m.name).collect();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("custos_audit_") || n.starts_with("custos_access_"))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for m in CATALOGUE {
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
    }
}
