//! The metrics catalogue of the audit crate: every metric `custos-audit`
//! emits is declared here once, with its kind, help text and label names, in
//! the same shape as `custos_core::metrics`. The broker and the file device
//! record through these constants; the core's recorder gets the help texts
//! from [`describe_all`]; dashboards and alerts may only use declared names.
//!
//! The only label is `path`, the audit device's mount path (operator-chosen,
//! a handful per server). Never a request path, token or event field.

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

macro_rules! declare {
    ($($ident:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $ident: &str = $name;)*
        /// Every metric of the audit crate, in declaration order.
        pub const CATALOGUE: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, help: $help, labels: &[$($label),*] },)*
        ];
    };
}

declare! {
    DEVICE_LOG = "custos_audit_device_log_total", Counter, ["path"],
        "Events an audit device recorded durably, by device path.";
    DEVICE_FAILURE = "custos_audit_device_failure_total", Counter, ["path"],
        "Events an audit device failed to record, by device path.";
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
    LOG_SEGMENT_ROLLS = "custos_audit_log_segment_rolls_total", Counter, ["path"],
        "New segments started by the local audit log (size, age, rotate/SIGHUP).";
    LOG_SEGMENTS_PRUNED = "custos_audit_log_segments_pruned_total", Counter, ["path"],
        "Segments deleted by retention after every sink acknowledged them.";
}

/// Register help text for every declared metric with the installed recorder.
pub fn describe_all() {
    for m in CATALOGUE {
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

/// Increment a per-device counter.
pub(crate) fn device_counter(name: &'static str, path: &str, by: u64) {
    metrics::counter!(name, "path" => path.to_owned()).increment(by);
}

/// Set a per-device gauge.
pub(crate) fn device_gauge(name: &'static str, path: &str, value: f64) {
    metrics::gauge!(name, "path" => path.to_owned()).set(value);
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
        assert!(names.iter().all(|n| n.starts_with("custos_audit_")));
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
