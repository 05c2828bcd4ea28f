//! The metrics catalogue of the server core: every metric `custos-core` emits
//! is declared here once, with its kind, help text and label names. Code
//! records through these constants; [`describe_all`] registers the help text
//! with the Prometheus recorder; dashboards and alerts may only use names
//! declared here (a test checks that).
//!
//! The catalogue machinery (`MetricDef`, `Kind`, `declare_metrics!`) lives in
//! `custos_audit::metrics` and is shared; [`all`] lists the core's and the
//! audit crate's metrics together, [`markdown`] renders `docs/metrics.md`
//! from them (a test fails when the committed file is stale), and another
//! test checks every metric named in `dashboards/*.json` and `alerts/*.yml`.
//!
//! `telemetry { metrics_prefix }` is applied only where the exposition text
//! leaves the process ([`render`], after [`set_prefix`]); call sites always
//! record under the `custos_` constants.
//!
//! Label values are always bounded ([`LABEL_VALUES`]): mount points
//! (operator-chosen, few), operation names, status classes. Never a raw
//! path, token or client value.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use custos_audit::metrics::{Kind, MetricDef};

custos_audit::declare_metrics! {
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
    AUDIT_CARRIED = "custos_audit_carried_request_total", Counter, [],
        "Request events of writes that travelled in their Raft entry and were written with the response event (two syncs per write instead of three).";
    AUDIT_CARRIED_PENDING = "custos_audit_carried_pending_entries", Gauge, [],
        "Raft entries whose carried request events are not yet known to be in the audit log; above 0 for more than a few seconds means an audit pair failed and snapshots wait until the events are put back.";
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
    IDENTITY_ENTITIES = "custos_identity_entities", Gauge, [],
        "Identity entities in the identity store (one per person or service; logins create them).";
    IDENTITY_GROUPS = "custos_identity_groups", Gauge, [],
        "Identity groups (internal and external) in the identity store.";
    AUTH_LOGINS = "custos_auth_logins_total", Counter, ["mount_type", "outcome"],
        "Logins through auth methods, by method type and outcome (success, invalid_credentials, locked, error).";
    AUTH_LOCKOUTS = "custos_auth_lockouts_total", Counter, ["mount_type"],
        "Aliases locked out after reaching the failed-login threshold, by method type.";
    AUTH_JWKS_FETCHES = "custos_auth_jwks_fetches_total", Counter, ["outcome"],
        "JWT auth key set fetches (JWKS or OIDC discovery), by outcome: success, unreachable (connect error, timeout, non-200), invalid (not a key set), rate_limited (a refetch for an unknown key id skipped because too many fetches happened lately). Failed fetches keep the cached keys.";
    AUTH_K8S_TOKEN_REVIEWS = "custos_auth_kubernetes_token_reviews_total", Counter, ["outcome"],
        "Kubernetes auth logins sent to the cluster's TokenReview API, by outcome: authenticated; rejected (Kubernetes said the token is not valid or named another service account); unreachable (connection or TLS failure), timeout (no answer within 5s), invalid_response (not a TokenReview). Every outcome but authenticated refuses the login.";
    RAFT_COMMIT_SECONDS = "custos_raft_commit_duration_seconds", Histogram, [],
        "Time from proposing a write to Raft until it is committed and applied.";
    RAFT_APPLY_SECONDS = "custos_raft_apply_duration_seconds", Histogram, [],
        "Time to apply a batch of committed entries to the state machine.";
    RAFT_APPEND_SECONDS = "custos_raft_log_append_duration_seconds", Histogram, [],
        "Time to append and fsync entries to the Raft log.";
    RAFT_SNAPSHOT_BUILD_SECONDS = "custos_raft_snapshot_build_duration_seconds", Histogram, [],
        "Time to write a Raft snapshot file (stream the state machine to it and fsync it), which happens only when a follower too far behind needs a snapshot.";
    RAFT_SNAPSHOTS_INSTALLED = "custos_raft_snapshots_installed_total", Counter, [],
        "Snapshots a leader sent this node and it installed (a follower too far behind for log replay catches up this way).";
    RAFT_WRITE_GROUP = "custos_raft_write_group_writes", Histogram, [],
        "Callers' write batches committed together in one Raft entry (group commit).";
    RAFT_LAST_INDEX = "custos_raft_last_applied_index", Gauge, [],
        "Last Raft log index applied to the state machine.";
    RAFT_TERM = "custos_raft_term", Gauge, [],
        "Current Raft term.";
    RAFT_HAS_LEADER = "custos_raft_has_leader", Gauge, [],
        "1 when this node knows a Raft leader (itself or another), 0 during an election or without quorum.";
    RAFT_IS_LEADER = "custos_raft_is_leader", Gauge, [],
        "1 on the Raft leader.";
    RAFT_VOTERS = "custos_raft_voters", Gauge, [],
        "Voters in the Raft configuration as this node sees it.";
    RAFT_AUTOPILOT_HEALTHY = "custos_raft_autopilot_healthy", Gauge, [],
        "On the leader: 1 when autopilot finds every server healthy (heard from within last_contact_threshold, at the leader's term, at most max_trailing_logs behind), else 0; NaN on a node that stopped leading.";
    RAFT_AUTOPILOT_FAILURE_TOLERANCE = "custos_raft_autopilot_failure_tolerance", Gauge, [],
        "On the leader: healthy voters beyond the quorum, i.e. how many more voters can fail before writes stop (autopilot's failure_tolerance); NaN on a node that stopped leading.";
    RAFT_AUTOPILOT_REMOVED = "custos_raft_autopilot_dead_servers_removed_total", Counter, [],
        "Dead voters autopilot removed from the Raft configuration (cleanup_dead_servers).";
    RAFT_HEALTHY_VOTERS = "custos_raft_healthy_voters", Gauge, [],
        "On the leader: voters heard from within the last-contact threshold (10s), the leader included. QuorumAtRisk fires when this is at most the quorum.";
    RAFT_FOLLOWER_LAG = "custos_raft_follower_lag_entries", Gauge, ["peer"],
        "On the leader: entries a follower is behind the leader's last log index (peer = its Raft node id).";
    RAFT_FOLLOWER_CONTACT = "custos_raft_follower_last_contact_seconds", Gauge, ["peer"],
        "On the leader: seconds since a follower last answered an RPC (heartbeats included).";
    CLUSTER_TLS_HANDSHAKE_FAILURES = "custos_cluster_tls_handshake_failures_total", Counter, ["reason"],
        "Connections to the cluster port (Raft RPCs, mutual TLS) this node did not take, by reason: sealed (no cluster TLS loaded, the connection is closed at once), handshake (plain HTTP, no client certificate, a certificate not of this cluster's CA, or a handshake timeout).";
    HA_FORWARDED = "custos_ha_forwarded_requests_total", Counter, ["outcome"],
        "Requests a standby forwarded to the active node, by outcome: forwarded (the active node answered), leader_moved (this node became active meanwhile; the client is told to retry), failed (no active node could be reached).";
    AUDIT_QUERY_PEER_FAILURES = "custos_audit_query_peer_failures_total", Counter, ["peer", "reason"],
        "Cluster members that did not answer when this node asked every node for its audit log (sys/audit-query from the local logs, sys/audit-verify), by member and reason: unreachable (no connection or no answer in time), error (an error answer). Each one made an answer partial; the answer named the node.";
    STANDBY_READS = "custos_standby_reads_total", Counter, ["outcome"],
        "Reads a standby received with X-Vault-Index, by outcome: local (served from this node's own state once it had applied the index), forwarded (sent to the active node: the index was not reached in time, X-Vault-Inconsistent: forward-active-node, or the route or token needs the active node), inconsistent (answered 412 for X-Vault-Inconsistent: fail).";
    BARRIER_TERM = "custos_barrier_key_term", Gauge, [],
        "Active keyring term of the barrier.";
    BARRIER_KEY_AGE = "custos_barrier_key_install_timestamp_seconds", Gauge, [],
        "Unix time the active barrier key was installed.";
    SEAL_TYPE = "custos_seal_info", Gauge, ["type"],
        "Always 1; the label names the seal type (shamir, transit, awskms).";
    SEAL_AUTOUNSEAL_FAILURES = "custos_seal_autounseal_failures_total", Counter, ["reason"],
        "Auto-unseal attempts that failed, by reason: unreachable (network error, timeout, 5xx or throttling from the KMS or transit server), refused (bad token or credentials, unknown key, denied), decrypt (the key could not decrypt the stored root key), config (TLS files, stored key missing). The node stays sealed and retries with backoff.";
    SEAL_AUTOUNSEAL_RETRYING = "custos_seal_autounseal_retrying", Gauge, [],
        "1 while this node is sealed and retrying auto-unseal through its seal, 0 otherwise.";
    SEAL_AUTOUNSEAL_LAST_SUCCESS = "custos_seal_autounseal_last_success_timestamp_seconds", Gauge, [],
        "Unix time this node last unsealed itself through its auto seal (or was initialized with one).";
    TRANSIT_OPERATIONS = "custos_transit_operations_total", Counter, ["operation"],
        "Transit engine operations performed, by operation (encrypt, decrypt, rewrap, datakey, sign, verify, hmac, hash, random, key management); each batch item counts once.";
    TRANSIT_AUTO_ROTATIONS = "custos_transit_auto_rotations_total", Counter, ["mount", "outcome"],
        "Transit keys rotated automatically because their auto_rotate_period elapsed, by mount point and outcome (rotated; failed: the rotation could not be stored and is retried at the next check, about a minute later).";
    OTLP_SPANS_EXPORTED = "custos_otlp_spans_exported_total", Counter, [],
        "Spans (request and stage spans) the OTLP trace exporter delivered to the collector.";
    OTLP_SPANS_DROPPED = "custos_otlp_spans_dropped_total", Counter, ["reason"],
        "Spans the OTLP trace exporter dropped, by reason (queue_full: the export queue was full; export_failed: the collector refused or could not be reached).";
    WRAPPING_TOKENS_CREATED = "custos_wrapping_tokens_created_total", Counter, [],
        "Response-wrapping tokens created: responses wrapped on request (X-Vault-Wrap-TTL), sys/wrapping/wrap and sys/wrapping/rewrap.";
    WRAPPING_UNWRAPS = "custos_wrapping_unwraps_total", Counter, ["outcome"],
        "sys/wrapping/unwrap calls, by outcome (success; invalid: the wrapping token was unknown, expired or already used, which can mean someone else unwrapped it first).";
}

/// Every metric Custos emits: the core's catalogue followed by the audit
/// crate's.
pub fn all() -> Vec<MetricDef> {
    CATALOGUE
        .iter()
        .chain(custos_audit::metrics::CATALOGUE)
        .copied()
        .collect()
}

/// The bounded value set of every label a declared metric carries (core and
/// audit crate). A test checks that each declared label is listed here;
/// `docs/metrics.md` shows the table.
pub const LABEL_VALUES: &[(&str, &str)] = &[
    ("node_id", "the node's Raft node id (one per node)"),
    (
        "peer",
        "a follower's Raft node id, on the leader; for audit fan-out failures, the member's node_id (one per cluster member: 3 or 5)",
    ),
    (
        "mount",
        "mount point with trailing slash (`secret/`, `sys/`), operator-chosen and few; `\"\"` when no mount matched; for access metrics capped, the rest folded",
    ),
    (
        "operation",
        "logical operation (`create`, `read`, `update`, `patch`, `delete`, `list`); for transit, the transit operation name",
    ),
    ("status", "status class: `1xx`, `2xx`, `3xx`, `4xx`, `5xx`"),
    (
        "reason",
        "a fixed set per metric: token revocations `revoke`, `expired`, `parent`, `uses`; sink failures `unavailable`, `rejected`, `corrupt`; OTLP drops `queue_full`, `export_failed`; auto-unseal failures `unreachable`, `refused`, `decrypt`, `config`; cluster TLS handshake failures `sealed`, `handshake`; audit fan-out peer failures `unreachable`, `error`",
    ),
    ("type", "seal type: `shamir`, `transit`, `awskms`"),
    (
        "path",
        "audit device mount path (operator-chosen, a handful)",
    ),
    (
        "sink",
        "Kafka or Elasticsearch audit device mount path (operator-chosen, a handful)",
    ),
    ("source", "audit query source: `local`, `elasticsearch`"),
    (
        "outcome",
        "a fixed set per metric: transit automatic rotations `rotated`, `failed`; forwarded requests `forwarded`, `leader_moved`, `failed`; standby reads `local`, `forwarded`, `inconsistent`; logins `success`, `invalid_credentials`, `locked`, `error`; Kubernetes TokenReviews `authenticated`, `rejected`, `unreachable`, `timeout`, `invalid_response`; unwraps `success`, `invalid`; JWKS fetches `success`, `unreachable`, `invalid`, `rate_limited`",
    ),
    (
        "mount_type",
        "auth method type (`userpass`, `approle`, `jwt`, `oidc`, `kubernetes`): a fixed set",
    ),
    (
        "kind",
        "high-sensitivity operation kind (fixed list in the metric's help)",
    ),
    (
        "client",
        "display name or short accessor-hash prefix of the top-K clients by anomaly; everyone else `other`",
    ),
];

/// Declared metrics that keep working under `metrics_prefix = "vault"` with
/// the name Vault gives the same measurement. Only counters and gauges whose
/// meaning and unit match are mapped: Vault reports durations as
/// millisecond summaries, so Custos' second-based histograms keep their
/// `custos_` names under every prefix. A Vault summary's `_count` series is
/// the equivalent of a Custos event counter.
pub const VAULT_NAMES: &[(&str, &str)] = &[
    (CORE_UNSEALED, "vault_core_unsealed"),
    (CORE_ACTIVE, "vault_core_active"),
    (AUDIT_LOG_REQUEST, "vault_audit_log_request_count"),
    (AUDIT_LOG_RESPONSE, "vault_audit_log_response_count"),
    (AUDIT_LOG_REQUEST_FAILURE, "vault_audit_log_request_failure"),
    (
        AUDIT_LOG_RESPONSE_FAILURE,
        "vault_audit_log_response_failure",
    ),
    (TOKEN_COUNT, "vault_token_count"),
    (TOKEN_CREATED, "vault_token_creation"),
];

/// The name a declared metric is exposed under with `metrics_prefix`:
/// `custos` keeps it, `vault` uses [`VAULT_NAMES`] where mapped and keeps
/// `custos_` otherwise, any other prefix replaces the leading `custos`.
pub fn exposed_name(name: &str, prefix: &str) -> String {
    if prefix == "vault" {
        return VAULT_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| name.to_string(), |(_, v)| (*v).to_string());
    }
    match name.strip_prefix("custos_") {
        Some(rest) if prefix != "custos" => format!("{prefix}_{rest}"),
        _ => name.to_string(),
    }
}

/// Series-name rewrites for one prefix, covering histogram series suffixes.
/// Empty for the default prefix.
fn rename_map(prefix: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if prefix == crate::config::DEFAULT_METRICS_PREFIX {
        return map;
    }
    for m in all() {
        let to = exposed_name(m.name, prefix);
        if to == m.name {
            continue;
        }
        if m.kind == Kind::Histogram {
            for sfx in ["_bucket", "_sum", "_count"] {
                map.insert(format!("{}{sfx}", m.name), format!("{to}{sfx}"));
            }
        }
        map.insert(m.name.to_string(), to);
    }
    map
}

static RENAMES: RwLock<Option<Arc<HashMap<String, String>>>> = RwLock::new(None);

/// Choose the exposed metric names (`telemetry.metrics_prefix`) for every
/// later [`render`] of this process.
pub fn set_prefix(prefix: &str) {
    let map = Arc::new(rename_map(prefix));
    if let Ok(mut g) = RENAMES.write() {
        *g = Some(map);
    }
}

/// The Prometheus exposition text of `handle`, with metric names rewritten
/// for the configured prefix. Call sites record under the `custos_` names;
/// only this boundary sees the prefix.
pub fn render(handle: &PrometheusHandle) -> String {
    let text = handle.render();
    let map = RENAMES.read().ok().and_then(|g| g.clone());
    match map {
        Some(m) if !m.is_empty() => rename_exposition(&text, &m),
        _ => text,
    }
}

/// Rewrite the metric name of every sample, `# HELP` and `# TYPE` line.
fn rename_exposition(text: &str, map: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let (head, rest) = if let Some(r) = line.strip_prefix("# HELP ") {
            ("# HELP ", r)
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            ("# TYPE ", r)
        } else {
            ("", line)
        };
        let end = rest.find(['{', ' ']).unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        out.push_str(head);
        out.push_str(map.get(name).map_or(name, String::as_str));
        out.push_str(tail);
        out.push('\n');
    }
    out
}

/// The Markdown reference of every declared metric (`docs/metrics.md`).
pub fn markdown() -> String {
    let mut s = String::from(
        "# Custos metrics\n\n\
         <!-- Generated from core/src/metrics.rs and audit-stream/src/metrics.rs; \
         do not edit. Regenerate with: CUSTOS_REGEN_DOCS=1 cargo test -p custos-core metrics_doc -->\n\n\
         Every metric Custos exposes on `/v1/sys/metrics?format=prometheus`. \
         Label values are bounded (mount points, operation names, status classes, \
         device and sink paths, fixed reason/kind sets, top-K clients); never a raw \
         request path, token or secret. Histograms expose `_bucket`, `_sum` and `_count` series.\n\n\
         | Name | Type | Labels | Help |\n|---|---|---|---|\n",
    );
    for m in all() {
        let labels = if m.labels.is_empty() {
            "—".to_string()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels,
            m.help.replace('|', "\\|")
        ));
    }
    s.push_str("\n## Label values\n\n| Label | Values |\n|---|---|\n");
    for (l, v) in LABEL_VALUES {
        s.push_str(&format!("| `{l}` | {v} |\n"));
    }
    s.push_str(
        "\n## `telemetry { metrics_prefix = ... }`\n\n\
         The default `custos` exposes the names above. Any other prefix replaces the \
         leading `custos`. `vault` keeps existing Vault dashboards and alert rules \
         working where Custos has an equivalent measurement, and keeps the `custos_` \
         name for the rest. Durations are not mapped: Vault reports them as \
         millisecond summaries (e.g. `vault_raft_commitTime`, `vault_core_handle_request`), \
         Custos as second-based histograms, so a renamed series would be off by 1000.\n\n\
         | Custos name | Name with `metrics_prefix = \"vault\"` |\n|---|---|\n",
    );
    for (c, v) in VAULT_NAMES {
        s.push_str(&format!("| `{c}` | `{v}` |\n"));
    }
    s
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
    custos_audit::metrics::describe(CATALOGUE);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn all_names_unique_and_counters_end_in_total() {
        let all = all();
        let names: HashSet<_> = all.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), all.len(), "a metric is declared twice");
        assert!(names.contains(CORE_UNSEALED));
        assert!(names.contains(custos_audit::metrics::SINK_LAG_SECONDS));
        for m in &all {
            assert!(m.name.starts_with("custos_"), "{}", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
        for m in &all {
            for l in m.labels {
                assert!(
                    LABEL_VALUES.iter().any(|(n, _)| n == l),
                    "label {l} of {} has no bounded value set in LABEL_VALUES",
                    m.name
                );
            }
        }
        for (c, _) in VAULT_NAMES {
            assert!(names.contains(c), "{c} mapped but not declared");
        }
    }

    #[test]
    fn metrics_doc_is_up_to_date() {
        let path = repo_root().join("docs/metrics.md");
        let want = markdown();
        if std::env::var_os("CUSTOS_REGEN_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/metrics.md is out of date with the metrics catalogue; regenerate it with:\n  \
             CUSTOS_REGEN_DOCS=1 cargo test -p custos-core metrics_doc"
        );
    }

    #[test]
    fn prefix_renames_at_the_exposition_boundary() {
        assert_eq!(exposed_name(CORE_UNSEALED, "custos"), CORE_UNSEALED);
        assert_eq!(exposed_name(CORE_UNSEALED, "vault"), "vault_core_unsealed");
        assert_eq!(exposed_name(RAFT_TERM, "vault"), RAFT_TERM);
        assert_eq!(exposed_name(RAFT_TERM, "acme"), "acme_raft_term");
        assert!(rename_map("custos").is_empty());
        let text = "# HELP custos_core_unsealed 1 when unsealed\n\
                    # TYPE custos_core_unsealed gauge\n\
                    custos_core_unsealed{node_id=\"n1\"} 0\n\
                    custos_audit_log_request_failure_total 3\n\
                    custos_raft_commit_duration_seconds_bucket{le=\"0.1\"} 2\n\
                    custos_raft_term 7\n";
        let vault = rename_exposition(text, &rename_map("vault"));
        assert!(vault.contains("# HELP vault_core_unsealed 1 when unsealed\n"));
        assert!(vault.contains("# TYPE vault_core_unsealed gauge\n"));
        assert!(vault.contains("vault_core_unsealed{node_id=\"n1\"} 0\n"));
        assert!(vault.contains("\nvault_audit_log_request_failure 3\n"));
        assert!(vault.contains("custos_raft_commit_duration_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(vault.contains("custos_raft_term 7\n"));
        let acme = rename_exposition(text, &rename_map("acme"));
        assert!(acme.contains("acme_raft_commit_duration_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(acme.contains("acme_core_unsealed{node_id=\"n1\"} 0\n"));
        assert!(!acme.contains("custos_"));
    }

    /// Metric names a PromQL expression selects: identifiers outside label
    /// matchers, strings and ranges that are not functions, keywords or
    /// grouping label lists.
    fn promql_metric_names(expr: &str) -> Vec<String> {
        const KEYWORDS: &[&str] = &[
            "and",
            "or",
            "unless",
            "bool",
            "offset",
            "inf",
            "nan",
            "start",
            "end",
            // Aggregation operators (may be followed by `by (...)`).
            "sum",
            "min",
            "max",
            "avg",
            "group",
            "stddev",
            "stdvar",
            "count",
            "count_values",
            "bottomk",
            "topk",
            "quantile",
            "limitk",
            "limit_ratio",
        ];
        const GROUPING: &[&str] = &[
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ];
        let c: Vec<char> = expr.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        let skip_to = |i: &mut usize, open: char, close: char| {
            let mut depth = 0;
            while *i < c.len() {
                if c[*i] == open {
                    depth += 1;
                } else if c[*i] == close {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return;
                    }
                } else if c[*i] == '"' || c[*i] == '\'' || c[*i] == '`' {
                    let q = c[*i];
                    *i += 1;
                    while *i < c.len() && c[*i] != q {
                        if c[*i] == '\\' {
                            *i += 1;
                        }
                        *i += 1;
                    }
                }
                *i += 1;
            }
        };
        while i < c.len() {
            let ch = c[i];
            if ch == '{' {
                skip_to(&mut i, '{', '}');
            } else if ch == '[' {
                skip_to(&mut i, '[', ']');
            } else if ch == '"' || ch == '\'' || ch == '`' {
                i += 1;
                while i < c.len() && c[i] != ch {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            } else if ch == '#' {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' || ch == '$' {
                let dollar = ch == '$';
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                    i += 1;
                }
                let tok: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let call = j < c.len() && c[j] == '(';
                if GROUPING.contains(&tok.as_str()) && call {
                    i = j;
                    skip_to(&mut i, '(', ')');
                } else if !dollar
                    && !call
                    && !GROUPING.contains(&tok.as_str())
                    && !KEYWORDS.contains(&tok.to_ascii_lowercase().as_str())
                {
                    out.push(tok);
                }
            } else if ch.is_ascii_digit() || ch == '.' {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn promql_names_are_extracted() {
        let n = promql_metric_names(
            "histogram_quantile(0.99, sum by (le, mount) (rate(custos_http_request_duration_seconds_bucket{mount=~\"$mount\", instance=\"x\"}[$__rate_interval]))) > 0.5 and on(instance) custos_core_unsealed offset 5m == bool 0",
        );
        assert_eq!(
            n,
            vec![
                "custos_http_request_duration_seconds_bucket",
                "custos_core_unsealed"
            ]
        );
        assert!(promql_metric_names("sum(rate(x[5m])) without (a) / 1e3").contains(&"x".into()));
        assert_eq!(
            promql_metric_names("a * on(instance) group_left b"),
            vec!["a", "b"]
        );
    }

    fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                        _ => json_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
            _ => {}
        }
    }

    /// `expr:` and `record:` values of a Prometheus rules file, including
    /// block scalars (`expr: |`).
    fn yaml_rules(text: &str) -> (Vec<String>, Vec<String>) {
        let lines: Vec<&str> = text.lines().collect();
        let (mut exprs, mut records) = (Vec::new(), Vec::new());
        let unquote = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_string();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let body = line.trim_start().trim_start_matches("- ");
            let indent = line.len() - line.trim_start().len();
            if let Some(v) = body.strip_prefix("record:") {
                records.push(unquote(v));
            } else if let Some(v) = body.strip_prefix("expr:") {
                let v = v.trim();
                if v.is_empty() || v.starts_with('|') || v.starts_with('>') {
                    let mut block = String::new();
                    while i + 1 < lines.len() {
                        let next = lines[i + 1];
                        let ni = next.len() - next.trim_start().len();
                        if !next.trim().is_empty() && ni <= indent {
                            break;
                        }
                        block.push_str(next);
                        block.push('\n');
                        i += 1;
                    }
                    exprs.push(block);
                } else {
                    exprs.push(unquote(v));
                }
            }
            i += 1;
        }
        (exprs, records)
    }

    fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
            })
            .collect();
        v.sort();
        v
    }

    /// Names unknown to the catalogue among `exprs` (histogram series
    /// suffixes and `known` extra names allowed).
    /// Catalogues of crates core does not link, read as text: the
    /// rotator's (an HTTP client of the server) and custos-dr's snapshot
    /// agent and drills (linked by the binary, which depends on core).
    const OUTSIDE_CATALOGUES: &[&str] = &[
        "rotator/src/metrics.rs",
        "dr-drills/src/agent/metrics.rs",
        "dr-drills/src/drill/metrics.rs",
    ];

    /// `(name, is_histogram)` of each `NAME = "custos_...", Kind` in the
    /// [`OUTSIDE_CATALOGUES`].
    fn outside_declared() -> Vec<(String, bool)> {
        OUTSIDE_CATALOGUES
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(repo_root().join(f))
                    .unwrap_or_else(|e| panic!("{f}: {e}"));
                text.lines()
                    .filter_map(|l| {
                        let (_, rest) = l.split_once("= \"custos_")?;
                        let (name, rest) = rest.split_once('"')?;
                        let kind = rest.trim_start_matches([',', ' ']).split(',').next()?;
                        Some((format!("custos_{name}"), kind == "Histogram"))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn outside_catalogues_are_read() {
        let r = outside_declared();
        assert!(r.iter().any(|(n, h)| n == "custos_rotator_run_held" && !h));
        assert!(
            r.iter()
                .any(|(n, h)| n == "custos_snapshot_duration_seconds" && *h)
        );
        assert!(
            r.iter()
                .any(|(n, h)| n == "custos_rotator_step_duration_seconds" && *h)
        );
    }

    fn unknown_names(exprs: &[(String, String)], known: &HashSet<String>) -> Vec<String> {
        let all = all();
        let rotator = outside_declared();
        let declared = |n: &str| {
            rotator.iter().any(|(name, hist)| {
                name == n
                    || (*hist
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| n.strip_suffix(s) == Some(name.as_str())))
            }) || all.iter().any(|m| {
                m.name == n
                    || (m.kind == Kind::Histogram
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| n.strip_suffix(s) == Some(m.name)))
            }) || VAULT_NAMES.iter().any(|(_, v)| *v == n)
                || known.contains(n)
                // Series Prometheus itself synthesises.
                || ["up", "ALERTS", "ALERTS_FOR_STATE"].contains(&n)
                || n.starts_with("scrape_")
        };
        let mut bad = Vec::new();
        for (file, e) in exprs {
            for n in promql_metric_names(e) {
                if !declared(&n) {
                    bad.push(format!("{file}: {n}"));
                }
            }
        }
        bad
    }

    #[test]
    fn unknown_metric_in_an_expression_is_caught() {
        let exprs = vec![
            (
                "a.json".to_string(),
                "rate(custos_http_requests_total[5m])".to_string(),
            ),
            ("b.yml".to_string(), "custos_made_up_metric > 0".to_string()),
        ];
        let bad = unknown_names(&exprs, &HashSet::new());
        assert_eq!(bad, vec!["b.yml: custos_made_up_metric"]);
        let (e, r) = yaml_rules(
            "groups:\n  - name: g\n    rules:\n      - record: custos:req:rate5m\n        expr: |\n          sum(rate(custos_http_requests_total[5m]))\n            by (mount)\n      - alert: Sealed\n        expr: custos_core_unsealed == 0\n        for: 1m\n",
        );
        assert_eq!(r, vec!["custos:req:rate5m"]);
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("by (mount)"), "{e:?}");
        assert_eq!(e[1], "custos_core_unsealed == 0");
    }

    #[test]
    fn dashboards_and_alerts_use_only_declared_metrics() {
        let root = repo_root();
        let mut exprs = Vec::new();
        let mut records = HashSet::new();
        for f in files(&root.join("alerts"), &["yml", "yaml"]) {
            let text = std::fs::read_to_string(&f).unwrap();
            let (e, r) = yaml_rules(&text);
            let name = f.display().to_string();
            exprs.extend(e.into_iter().map(|e| (name.clone(), e)));
            records.extend(r);
        }
        for f in files(&root.join("dashboards"), &["json"]) {
            let text = std::fs::read_to_string(&f).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
            let mut e = Vec::new();
            json_exprs(&v, &mut e);
            let name = f.display().to_string();
            exprs.extend(e.into_iter().map(|e| (name.clone(), e)));
        }
        let bad = unknown_names(&exprs, &records);
        assert!(
            bad.is_empty(),
            "metrics used in dashboards/alerts but not declared in core/src/metrics.rs or \
             audit-stream/src/metrics.rs:\n{}",
            bad.join("\n")
        );
    }
}
