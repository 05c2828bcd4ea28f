//! The metrics catalogue of the server core: every metric `custos-core` emits
//! is declared here once, with its kind, help text and label names. Code
//! records through these constants; [`describe_all`] registers the help text
//! with the Prometheus recorder; dashboards and alerts may only use names
//! declared here (a test checks that).
//!
//! Label values are always bounded: mount points (operator-chosen, few),
//! operation names, status classes. Never a raw path, token or client value.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
        /// Every metric of the core, in declaration order.
        pub const CATALOGUE: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, help: $help, labels: &[$($label),*] },)*
        ];
    };
}

declare! {
    CORE_UNSEALED = "custos_core_unsealed", Gauge, ["node_id"],
        "1 when this node is unsealed, 0 when sealed.";
    CORE_ACTIVE = "custos_core_active", Gauge, ["node_id"],
        "1 when this node is the active (Raft leader) node.";
    CORE_INITIALIZED = "custos_core_initialized", Gauge, [],
        "1 when the server has been initialized.";
    CORE_LEADER_CHANGES = "custos_core_leader_changes_total", Counter, [],
        "Times this node saw the Raft leader change.";
    REQUESTS = "custos_http_requests_total", Counter, ["mount", "operation", "status"],
        "API requests answered, by mount point, logical operation and status class (2xx, 4xx, 5xx).";
    REQUEST_SECONDS = "custos_http_request_duration_seconds", Histogram, ["mount", "operation"],
        "Time from request received to response sent.";
    AUDIT_LOG_REQUEST = "custos_audit_log_request_total", Counter, [],
        "Request events recorded by the audit broker.";
    AUDIT_LOG_RESPONSE = "custos_audit_log_response_total", Counter, [],
        "Response events recorded by the audit broker.";
    AUDIT_LOG_REQUEST_FAILURE = "custos_audit_log_request_failure_total", Counter, [],
        "Requests refused because no audit device could record them.";
    AUDIT_LOG_RESPONSE_FAILURE = "custos_audit_log_response_failure_total", Counter, [],
        "Responses replaced by an error because no audit device could record them.";
    TOKEN_COUNT = "custos_token_count", Gauge, [],
        "Live (unexpired, unrevoked) tokens in the token store.";
    TOKEN_CREATED = "custos_token_created_total", Counter, [],
        "Tokens created.";
    TOKEN_REVOKED = "custos_token_revoked_total", Counter, ["reason"],
        "Tokens revoked, by reason (revoke, expired, parent, uses).";
    RAFT_COMMIT_SECONDS = "custos_raft_commit_duration_seconds", Histogram, [],
        "Time from proposing a write to Raft until it is committed and applied.";
    RAFT_APPLY_SECONDS = "custos_raft_apply_duration_seconds", Histogram, [],
        "Time to apply a batch of committed entries to the state machine.";
    RAFT_APPEND_SECONDS = "custos_raft_log_append_duration_seconds", Histogram, [],
        "Time to append and fsync entries to the Raft log.";
    RAFT_WRITE_GROUP = "custos_raft_write_group_writes", Histogram, [],
        "Callers' write batches committed together in one Raft entry (group commit).";
    RAFT_LAST_INDEX = "custos_raft_last_applied_index", Gauge, [],
        "Last Raft log index applied to the state machine.";
    RAFT_TERM = "custos_raft_term", Gauge, [],
        "Current Raft term.";
    BARRIER_TERM = "custos_barrier_key_term", Gauge, [],
        "Active keyring term of the barrier.";
    BARRIER_KEY_AGE = "custos_barrier_key_install_timestamp_seconds", Gauge, [],
        "Unix time the active barrier key was installed.";
    SEAL_TYPE = "custos_seal_info", Gauge, ["type"],
        "Always 1; the label names the seal type (shamir).";
    TRANSIT_OPERATIONS = "custos_transit_operations_total", Counter, ["operation"],
        "Transit engine operations performed, by operation (encrypt, decrypt, rewrap, datakey, sign, verify, hmac, hash, random, key management); each batch item counts once.";
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process and register help texts.
/// Later calls return the same handle (tests start many servers per process).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .and_then(|b| {
                    // Group-commit batch sizes are counts of events, not seconds.
                    b.set_buckets_for_metric(
                        Matcher::Full("custos_audit_group_commit_events".into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("custos_raft_write_group_writes".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is already installed (e.g. by a test
                // harness): render our own, unregistered recorder instead.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe_all();
            custos_audit::metrics::describe_all();
            handle
        })
        .clone()
}

/// Register help text for every declared metric.
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

/// Status class label for a status code: bounded to five values.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn labels_of(labels: &[(&'static str, String)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect()
}

/// Set a declared gauge.
pub fn gauge_set(name: &'static str, labels: &[(&'static str, String)], value: f64) {
    metrics::gauge!(name, labels_of(labels)).set(value);
}

/// Increment a declared counter by one.
pub fn counter_inc(name: &'static str, labels: &[(&'static str, String)]) {
    metrics::counter!(name, labels_of(labels)).increment(1);
}

/// Record a value in a declared histogram.
pub fn histogram_record(name: &'static str, labels: &[(&'static str, String)], value: f64) {
    metrics::histogram!(name, labels_of(labels)).record(value);
}
