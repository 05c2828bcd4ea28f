//! Access-pattern metrics fed by the audit stream: per-client read rates per
//! mount against each client's own baseline, and counters of
//! high-sensitivity operations.
//!
//! Data comes from the durable local audit log: [`run_access_worker`]
//! follows it (fsynced records only, on the blocking pool, never on the
//! request path) and hands every event to an [`AccessDetector`]. Data goes
//! out as Prometheus metrics (names in [`crate::metrics`]):
//!
//! * `custos_access_reads_rate{client,mount}`, `custos_access_baseline_rate`,
//!   `custos_access_anomaly_score`, `custos_access_anomalous_clients`;
//! * `custos_audit_sensitive_operations_total{kind}` ([`sensitive_kinds`]).
//!
//! **The model.** Time is the events' own `time`, never the wall clock, so a
//! replayed or simulated stream gives the same result. For each (client,
//! mount) the detector keeps two exponentially weighted moving averages of
//! the interval between successive reads: a fast one (time constant
//! `fast_tau`, 5 min) — the current behaviour — and a slow one (`slow_tau`,
//! 24 h) — the client's baseline. Each new interval `dt` moves an average by
//! `1 - exp(-dt/tau)`, so the weights follow elapsed time, not read counts.
//! Rates are `1 / interval`; a client silent for longer than its current
//! interval has its current rate decay as `1 / time since last read`. The
//! anomaly score is current rate / baseline rate: about 1 for a steady
//! client, far above the threshold (5) for a client that read hourly and
//! now reads every minute. Until `warmup` intervals are seen a client has no
//! baseline and scores 1.
//!
//! **Bounded cardinality.** A client is its entity id, else its token
//! accessor as the log has it (HMAC'd). Only the `top_k` (20) clients by
//! anomaly score (then rate) get their own `client` label — their display
//! name, or `acc-<first 8 hex of the accessor HMAC>` — and everyone else is
//! folded into `client="other"` per mount (summed rates). Mounts are those
//! the operator lists (`mounts`), or the first `max_mounts` (16) seen, the
//! rest folded into `mount="other"`. Clients idle for `idle_evict` (7 days
//! of event time) are forgotten, and at most `max_clients` are tracked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::AuditError;
use crate::log::reader::gather_unless_behind;
use crate::log::{AuditLog, Record};
use crate::metrics;
use crate::query::view::EventView;

const NANOS: f64 = 1e9;
/// Shortest interval counted (two reads in the same instant).
const MIN_INTERVAL_SECS: f64 = 0.001;

/// Settings of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessOptions {
    /// Clients with their own label value.
    pub top_k: usize,
    /// Anomaly score above which a client counts as anomalous.
    pub threshold: f64,
    /// Time constant of the current-rate EWMA.
    pub fast_tau: Duration,
    /// Time constant of the baseline EWMA.
    pub slow_tau: Duration,
    /// Intervals seen before a client has a baseline.
    pub warmup: u32,
    /// Mounts to track (e.g. `secret/`); empty: the first `max_mounts` seen.
    pub mounts: Vec<String>,
    pub max_mounts: usize,
    /// Clients tracked at most; the longest idle are dropped first.
    pub max_clients: usize,
    /// Forget a client after this much event time without a read.
    pub idle_evict: Duration,
}

impl Default for AccessOptions {
    fn default() -> Self {
        AccessOptions {
            top_k: 20,
            threshold: 5.0,
            fast_tau: Duration::from_secs(300),
            slow_tau: Duration::from_secs(24 * 3600),
            warmup: 3,
            mounts: Vec::new(),
            max_mounts: 16,
            max_clients: 100_000,
            idle_evict: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl AccessOptions {
    /// Defaults overridden by `CUSTOS_ACCESS_TOP_K`, `CUSTOS_ACCESS_THRESHOLD`
    /// and `CUSTOS_ACCESS_MOUNTS` (comma-separated) when set and valid.
    pub fn from_env() -> AccessOptions {
        let mut o = AccessOptions::default();
        if let Some(k) = std::env::var("CUSTOS_ACCESS_TOP_K")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.top_k = k;
        }
        if let Some(t) = std::env::var("CUSTOS_ACCESS_THRESHOLD")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
        {
            o.threshold = t;
        }
        if let Ok(m) = std::env::var("CUSTOS_ACCESS_MOUNTS") {
            o.mounts = m
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| format!("{}/", s.trim_end_matches('/')))
                .collect();
        }
        o
    }
}

#[derive(Debug, Clone)]
struct ClientState {
    display_name: String,
    accessor: String,
    last: i64,
    reads: u64,
    intervals: u32,
    /// Seconds.
    fast: f64,
    slow: f64,
}

/// One exported row (or a client's current numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRow {
    /// The label value: a display name, `acc-<hash prefix>` or `other`.
    pub client: String,
    pub mount: String,
    /// Reads per second, now.
    pub rate: f64,
    /// Reads per second, the client's baseline.
    pub baseline: f64,
    pub score: f64,
}

/// What an export publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSnapshot {
    pub rows: Vec<AccessRow>,
    /// Clients (all, not only the top K) over the threshold.
    pub anomalous: usize,
}

/// Per-client read-rate model. See the module documentation.
#[derive(Debug)]
pub struct AccessDetector {
    opts: AccessOptions,
    /// The latest event time seen (unix ns): the detector's "now".
    now: i64,
    clients: HashMap<(String, String), ClientState>,
    mounts: BTreeSet<String>,
    /// Label sets published by the last export.
    exported: BTreeSet<(String, String)>,
}

fn short_hash(accessor: &str) -> String {
    use sha2::Digest;
    // A raw accessor (`hmac_accessor=false`) is hashed first: a label never
    // shows any part of it.
    let hashed;
    let hex_src = match accessor.strip_prefix("hmac-sha256:") {
        Some(h) => h,
        None if accessor.is_empty() => "",
        None => {
            hashed = hex::encode(sha2::Sha256::digest(accessor.as_bytes()));
            &hashed
        }
    };
    let hex: String = hex_src
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    if hex.is_empty() {
        "acc-unknown".into()
    } else {
        format!("acc-{hex}")
    }
}

/// Keep label values short and printable.
fn clean_label(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

impl AccessDetector {
    pub fn new(opts: AccessOptions) -> AccessDetector {
        AccessDetector {
            opts,
            now: i64::MIN,
            clients: HashMap::new(),
            mounts: BTreeSet::new(),
            exported: BTreeSet::new(),
        }
    }

    pub fn options(&self) -> &AccessOptions {
        &self.opts
    }

    /// Clients currently tracked (all mounts).
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    /// The mount label for `mount_point`, or `None` when not tracked.
    fn mount_label(&mut self, mount_point: &str) -> Option<String> {
        if !self.opts.mounts.is_empty() {
            return self
                .opts
                .mounts
                .iter()
                .any(|m| m == mount_point)
                .then(|| mount_point.to_owned());
        }
        if self.mounts.contains(mount_point) {
            return Some(mount_point.to_owned());
        }
        if self.mounts.len() < self.opts.max_mounts {
            self.mounts.insert(mount_point.to_owned());
            return Some(mount_point.to_owned());
        }
        Some("other".into())
    }

    /// Feed one event. Successful reads on secret mounts (not `sys/`, not
    /// `auth/`) update the client's rates; everything else only moves time.
    pub fn observe(&mut self, ev: &EventView) {
        let Some(t) = ev.time_nanos() else {
            return;
        };
        self.now = self.now.max(t);
        if !ev.is_successful_response()
            || ev.request.operation != "read"
            || ev.request.mount_point.is_empty()
            || ev.request.mount_point.starts_with("sys/")
            || ev.request.mount_point.starts_with("auth/")
            || ev.request.mount_type == "system"
        {
            return;
        }
        let client = if !ev.auth.entity_id.is_empty() {
            ev.auth.entity_id.clone()
        } else if !ev.auth.accessor.is_empty() {
            ev.auth.accessor.clone()
        } else {
            return;
        };
        let Some(mount) = self.mount_label(&ev.request.mount_point) else {
            return;
        };
        self.observe_read(&client, &ev.auth.display_name, &ev.auth.accessor, &mount, t);
    }

    /// Record a read by `client` (a stable key) on `mount` at `t` (unix ns).
    pub fn observe_read(
        &mut self,
        client: &str,
        display_name: &str,
        accessor: &str,
        mount: &str,
        t: i64,
    ) {
        self.now = self.now.max(t);
        let (fast_tau, slow_tau) = (
            self.opts.fast_tau.as_secs_f64().max(MIN_INTERVAL_SECS),
            self.opts.slow_tau.as_secs_f64().max(MIN_INTERVAL_SECS),
        );
        let key = (client.to_owned(), mount.to_owned());
        if !self.clients.contains_key(&key) && self.clients.len() >= self.opts.max_clients {
            self.evict(true);
        }
        let st = self.clients.entry(key).or_insert_with(|| ClientState {
            display_name: String::new(),
            accessor: String::new(),
            last: t,
            reads: 0,
            intervals: 0,
            fast: 0.0,
            slow: 0.0,
        });
        if !display_name.is_empty() {
            st.display_name = display_name.to_owned();
        }
        if !accessor.is_empty() {
            st.accessor = accessor.to_owned();
        }
        st.reads += 1;
        if st.reads == 1 {
            st.last = t;
            return;
        }
        if t < st.last {
            // Slightly out of order (concurrent requests): counted, no interval.
            return;
        }
        let dt = ((t - st.last) as f64 / NANOS).max(MIN_INTERVAL_SECS);
        st.last = t;
        if st.intervals == 0 {
            st.fast = dt;
            st.slow = dt;
        } else {
            st.fast += (1.0 - (-dt / fast_tau).exp()) * (dt - st.fast);
            st.slow += (1.0 - (-dt / slow_tau).exp()) * (dt - st.slow);
        }
        st.intervals = st.intervals.saturating_add(1);
    }

    /// Drop clients idle longer than `idle_evict`; with `force`, also the
    /// longest idle one (to make room).
    fn evict(&mut self, force: bool) {
        let horizon = self
            .now
            .saturating_sub(i64::try_from(self.opts.idle_evict.as_nanos()).unwrap_or(i64::MAX));
        self.clients.retain(|_, s| s.last >= horizon);
        if force
            && self.clients.len() >= self.opts.max_clients
            && let Some(oldest) = self
                .clients
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            self.clients.remove(&oldest);
        }
    }

    /// (rate, baseline, score) of one client now.
    fn numbers(&self, st: &ClientState) -> (f64, f64, f64) {
        if st.intervals == 0 {
            return (0.0, 0.0, 1.0);
        }
        let since_last = ((self.now - st.last) as f64 / NANOS).max(0.0);
        let current_interval = st.fast.max(since_last).max(MIN_INTERVAL_SECS);
        let rate = 1.0 / current_interval;
        let baseline = 1.0 / st.slow.max(MIN_INTERVAL_SECS);
        let score = if st.intervals < self.opts.warmup {
            1.0
        } else {
            rate / baseline
        };
        (rate, baseline, score)
    }

    /// The current numbers of `client` on `mount`, if tracked.
    pub fn client(&self, client: &str, mount: &str) -> Option<AccessRow> {
        let st = self.clients.get(&(client.to_owned(), mount.to_owned()))?;
        let (rate, baseline, score) = self.numbers(st);
        Some(AccessRow {
            client: client.to_owned(),
            mount: mount.to_owned(),
            rate,
            baseline,
            score,
        })
    }

    /// The rows an export publishes: the top K clients by score (then rate)
    /// with their own label, the rest summed per mount as `other`.
    pub fn snapshot(&self) -> AccessSnapshot {
        let mut all: Vec<(&ClientState, &str, f64, f64, f64)> = self
            .clients
            .iter()
            .map(|((_, mount), st)| {
                let (r, b, s) = self.numbers(st);
                (st, mount.as_str(), r, b, s)
            })
            .collect();
        let anomalous = all
            .iter()
            .filter(|(_, _, _, _, s)| *s > self.opts.threshold)
            .count();
        all.sort_by(|a, b| {
            b.4.total_cmp(&a.4)
                .then(b.2.total_cmp(&a.2))
                .then_with(|| a.0.accessor.cmp(&b.0.accessor))
        });
        let k = self.opts.top_k.min(all.len());
        let (top, rest) = all.split_at(k);
        // Display names repeat (every `token create` token is "token"): add
        // the hash prefix when a name is not unique among the top K.
        let mut name_count: HashMap<&str, usize> = HashMap::new();
        for (st, _, _, _, _) in top {
            *name_count.entry(st.display_name.as_str()).or_default() += 1;
        }
        let mut rows: Vec<AccessRow> = Vec::with_capacity(k + self.mounts.len() + 1);
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        for (st, mount, rate, baseline, score) in top {
            let mut client = if st.display_name.is_empty() || st.display_name == "other" {
                short_hash(&st.accessor)
            } else if name_count
                .get(st.display_name.as_str())
                .copied()
                .unwrap_or(0)
                > 1
            {
                format!(
                    "{}@{}",
                    clean_label(&st.display_name),
                    short_hash(&st.accessor)
                )
            } else {
                clean_label(&st.display_name)
            };
            if used.contains(&(client.clone(), mount.to_string())) {
                client = format!("{client}#{}", rows.len());
            }
            used.insert((client.clone(), mount.to_string()));
            rows.push(AccessRow {
                client,
                mount: mount.to_string(),
                rate: *rate,
                baseline: *baseline,
                score: *score,
            });
        }
        let mut other: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (_, mount, rate, baseline, _) in rest {
            let e = other.entry(mount).or_default();
            e.0 += rate;
            e.1 += baseline;
        }
        for (mount, (rate, baseline)) in other {
            rows.push(AccessRow {
                client: "other".into(),
                mount: mount.to_owned(),
                rate,
                baseline,
                score: if baseline > 0.0 { rate / baseline } else { 1.0 },
            });
        }
        AccessSnapshot { rows, anomalous }
    }

    /// Publish the snapshot as gauges. Label sets published before but not
    /// now are set to 0 (the recorder cannot forget them).
    pub fn export(&mut self) -> AccessSnapshot {
        self.evict(false);
        let snap = self.snapshot();
        let mut now_set = BTreeSet::new();
        for r in &snap.rows {
            let labels = [("client", r.client.clone()), ("mount", r.mount.clone())];
            ::metrics::gauge!(metrics::ACCESS_READS_RATE, &labels).set(r.rate);
            ::metrics::gauge!(metrics::ACCESS_BASELINE_RATE, &labels).set(r.baseline);
            ::metrics::gauge!(metrics::ACCESS_ANOMALY_SCORE, &labels).set(r.score);
            now_set.insert((r.client.clone(), r.mount.clone()));
        }
        for (client, mount) in self.exported.difference(&now_set) {
            let labels = [("client", client.clone()), ("mount", mount.clone())];
            ::metrics::gauge!(metrics::ACCESS_READS_RATE, &labels).set(0.0);
            ::metrics::gauge!(metrics::ACCESS_BASELINE_RATE, &labels).set(0.0);
            ::metrics::gauge!(metrics::ACCESS_ANOMALY_SCORE, &labels).set(0.0);
        }
        self.exported = now_set;
        ::metrics::gauge!(metrics::ACCESS_ANOMALOUS_CLIENTS).set(snap.anomalous as f64);
        snap
    }
}

/// The high-sensitivity kinds an event counts as (possibly several), for
/// `custos_audit_sensitive_operations_total{kind}`. Only response events
/// count (one per request, whatever its outcome). `sys/unseal` and
/// `sys/init` are unauthenticated and not audited, as in Vault.
pub fn sensitive_kinds(ev: &EventView) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if ev.kind != "response" {
        return kinds;
    }
    if ev.auth.policies.iter().any(|p| p == "root") {
        kinds.push("root_token");
    }
    let path = ev.request.path.trim_start_matches('/');
    let op = ev.request.operation.as_str();
    let writes = matches!(op, "create" | "update" | "delete" | "patch");
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("sys/seal") || under("sys/step-down") {
        kinds.push("seal");
    }
    if under("sys/audit") || path.starts_with("sys/audit-hash/") || under("sys/audit-query") {
        kinds.push("audit");
    }
    if (under("sys/policy") || under("sys/policies")) && writes {
        kinds.push("policy");
    }
    // Key ceremonies: OpenBao's token-authenticated rekey of the unseal /
    // recovery keys (`sys/rotate/root|recovery/init|update|verify|backup`)
    // is a rekey like Vault's `sys/rekey*`, not a keyring rotation;
    // `sys/rotate`, `sys/rotate/keyring`, `sys/rotate/config` and the bare
    // `sys/rotate/root` (a new root key, no shares) stay rotations.
    let ceremony_rekey = path.starts_with("sys/rotate/root/") || under("sys/rotate/recovery");
    if (under("sys/rotate") || under("sys/keyring")) && !ceremony_rekey {
        kinds.push("rotate");
    }
    if under("sys/rekey") || under("sys/rekey-recovery-key") || ceremony_rekey {
        kinds.push("rekey");
    }
    if (under("sys/mounts") || under("sys/remount")) && writes {
        kinds.push("mount");
    }
    if under("sys/auth") && writes {
        kinds.push("auth_method");
    }
    if under("sys/raw") {
        kinds.push("raw");
    }
    // Vault's unauthenticated `sys/generate-root/*` and OpenBao's
    // authenticated `sys/generate-root-token/*`.
    if under("sys/generate-root") || under("sys/generate-root-token") {
        kinds.push("generate_root");
    }
    if path == "auth/token/create-orphan" {
        kinds.push("token_create_orphan");
    }
    if path == "auth/token/revoke-orphan" || path.starts_with("auth/token/revoke-orphan/") {
        kinds.push("token_revoke_orphan");
    }
    kinds
}

/// Events replayed at start to warm the baselines (not counted again).
const WARM_RECORDS: u64 = 100_000;
/// Gauges are published at most this often (wall time).
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Feed `records` to the detector; count sensitive operations of those
/// after `count_after`.
fn feed(detector: &mut AccessDetector, records: &[Record], count_after: u64) {
    for rec in records {
        // Only response events count (reads, sensitive operations).
        let Some(Ok(ev)) = EventView::parse_unless_request(&rec.event) else {
            continue;
        };
        detector.observe(&ev);
        if rec.seq > count_after {
            for kind in sensitive_kinds(&ev) {
                ::metrics::counter!(metrics::SENSITIVE_OPERATIONS, "kind" => kind).increment(1);
            }
        }
    }
    if let Some(last) = records.last() {
        ::metrics::gauge!(metrics::ACCESS_SEQ).set(last.seq as f64);
    }
}

/// The access-pattern worker: replays up to 100 000 recent records to warm
/// the baselines, then follows `log` and exports the metrics until `stop`.
pub async fn run_access_worker(
    log: Arc<AuditLog>,
    opts: AccessOptions,
    mut stop: watch::Receiver<bool>,
) {
    let start = log.durable_seq();
    let mut reader = Some(log.reader(start.saturating_sub(WARM_RECORDS).max(1)));
    let mut detector = Some(AccessDetector::new(opts));
    let mut last_export = Instant::now() - EXPORT_EVERY;
    let mut dirty = false;
    // The last batch stopped at FOLLOW_BATCH records, not at the end of the log.
    let mut behind = false;
    loop {
        let (Some(mut r), Some(mut d)) = (reader.take(), detector.take()) else {
            return;
        };
        // Export what is pending before sleeping on the log.
        if dirty && last_export.elapsed() >= EXPORT_EVERY {
            d.export();
            last_export = Instant::now();
            dirty = false;
        }
        let first = if dirty {
            let wait = EXPORT_EVERY.saturating_sub(last_export.elapsed());
            tokio::select! {
                rec = r.next() => Some(rec),
                _ = tokio::time::sleep(wait) => None,
                _ = stop.wait_for(|s| *s) => return,
            }
        } else {
            tokio::select! {
                rec = r.next() => Some(rec),
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let first = match first {
            None => {
                reader = Some(r);
                detector = Some(d);
                continue;
            }
            Some(Ok(rec)) => rec,
            Some(Err(AuditError::Closed)) => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "access metrics: reading the log failed");
                reader = Some(r);
                detector = Some(d);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        // A busy log is read in a few large batches, not one per group commit.
        gather_unless_behind(behind, &mut stop).await;
        let joined = tokio::task::spawn_blocking(move || {
            let mut batch = vec![first];
            let full = r
                .fill_batch(&mut batch, "access metrics")
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "access metrics: reading the log failed");
                    false
                });
            feed(&mut d, &batch, start);
            (r, d, full)
        })
        .await;
        match joined {
            Ok((r, d, full)) => {
                reader = Some(r);
                detector = Some(d);
                behind = full;
                dirty = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "access metrics task failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * 1_000_000_000;
    const M: i64 = 60 * 1_000_000_000;

    #[test]
    fn steady_client_scores_near_one() {
        let mut d = AccessDetector::new(AccessOptions::default());
        for i in 0..72 {
            // ±5 minutes of jitter around the hour.
            let jitter = ((i * 7919) % 11 - 5) * M;
            d.observe_read("c", "svc", "hmac-sha256:aa", "secret/", i * H + jitter);
        }
        let row = d.client("c", "secret/").unwrap();
        assert!((0.5..2.0).contains(&row.score), "{row:?}");
    }

    #[test]
    fn sensitive_kinds_classify() {
        let mut ev = EventView {
            kind: "response".into(),
            ..Default::default()
        };
        ev.auth.policies = vec!["root".into()];
        ev.request.path = "sys/policies/acl/x".into();
        ev.request.operation = "update".into();
        assert_eq!(sensitive_kinds(&ev), vec!["root_token", "policy"]);
        ev.request.operation = "read".into();
        assert_eq!(sensitive_kinds(&ev), vec!["root_token"]);
        ev.auth.policies = vec!["default".into()];
        ev.request.path = "sys/seal".into();
        assert_eq!(sensitive_kinds(&ev), vec!["seal"]);
        ev.request.path = "/sys/seal/x".into();
        assert_eq!(sensitive_kinds(&ev), vec!["seal"]);
        ev.request.path = "sys/sealed".into();
        assert!(sensitive_kinds(&ev).is_empty());
        ev.request.path = "sys/audit-hash/file".into();
        assert_eq!(sensitive_kinds(&ev), vec!["audit"]);
        ev.request.path = "sys/seal".into();
        ev.kind = "request".into();
        assert!(sensitive_kinds(&ev).is_empty());
    }

    #[test]
    fn key_ceremonies_count_as_generate_root_and_rekey() {
        let mut ev = EventView {
            kind: "response".into(),
            ..Default::default()
        };
        ev.request.operation = "update".into();
        let kinds = |ev: &mut EventView, path: &str| {
            ev.request.path = path.into();
            sensitive_kinds(ev)
        };
        for p in [
            "sys/generate-root/attempt",
            "sys/generate-root/update",
            "sys/generate-root-token/attempt",
            "sys/generate-root-token/update",
        ] {
            assert_eq!(kinds(&mut ev, p), vec!["generate_root"], "{p}");
        }
        for p in [
            "sys/rekey/init",
            "sys/rekey/update",
            "sys/rekey/verify",
            "sys/rekey-recovery-key/init",
            "sys/rekey-recovery-key/update",
            "sys/rekey-recovery-key/verify",
            "sys/rotate/root/init",
            "sys/rotate/root/update",
            "sys/rotate/root/verify",
            "sys/rotate/recovery/init",
            "sys/rotate/recovery/update",
            "sys/rotate/recovery/verify",
        ] {
            assert_eq!(kinds(&mut ev, p), vec!["rekey"], "{p}");
        }
        // Keyring rotations stay rotations; look-alikes are nothing.
        for p in ["sys/rotate", "sys/rotate/keyring", "sys/rotate/root"] {
            assert_eq!(kinds(&mut ev, p), vec!["rotate"], "{p}");
        }
        for p in ["sys/generate-rootx", "sys/rekeying", "sys/decode-token"] {
            assert!(kinds(&mut ev, p).is_empty(), "{p}");
        }
        // Only the response event counts.
        ev.kind = "request".into();
        assert!(kinds(&mut ev, "sys/generate-root-token/update").is_empty());
    }

    #[test]
    fn short_hash_never_shows_the_whole_accessor() {
        assert_eq!(short_hash("hmac-sha256:0123456789abcdef"), "acc-01234567");
        assert_eq!(short_hash(""), "acc-unknown");
    }
}
