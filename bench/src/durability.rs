//! What the server's durability cost during a run, from its own metrics.
//!
//! Data comes from the server's Prometheus endpoint
//! (`/v1/sys/metrics?format=prometheus`), scraped by [`crate::load::run`] at
//! the edges of the measured window: Custos's audit group commits
//! (`custos_audit_fsync_duration_seconds`, `custos_audit_group_commit_events`)
//! and Raft log appends (`custos_raft_log_append_duration_seconds`,
//! `custos_raft_write_group_writes`). The difference between the two scrapes
//! goes into [`crate::load::RunStats`] and, as rates, into the report: how
//! many syncs per second each log made, which share of the run its one
//! writer spent in them, and how many events or writes each carried. That is
//! the evidence for "this workload is bound by the disk's sync latency": a
//! log whose writer is busy most of the run cannot commit more often, only
//! carry more per commit. OpenBao exposes none of these series; its side
//! stays empty.

use serde::{Deserialize, Serialize};

use crate::client::VaultClient;

const METRICS_PATH: &str = "sys/metrics?format=prometheus";

/// Cumulative counters from one scrape, or their difference over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncCounters {
    /// Audit group commits (one write + one `fdatasync` each), all devices.
    pub audit_commits: f64,
    /// Seconds the audit writers spent committing.
    pub audit_commit_seconds: f64,
    /// Audit records those commits carried.
    pub audit_events: f64,
    /// Raft log appends (one write + one `fdatasync` each).
    pub raft_appends: f64,
    /// Seconds spent in them.
    pub raft_append_seconds: f64,
    /// Client writes proposed in Raft write groups.
    pub raft_writes: f64,
}

impl SyncCounters {
    /// Parse a Prometheus text exposition. `None` when it has no Custos
    /// audit series at all (another server, or metrics off).
    pub fn parse(text: &str) -> Option<Self> {
        let mut c = Self::default();
        let mut seen = false;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let field = match name {
                "custos_audit_fsync_duration_seconds_count" => &mut c.audit_commits,
                "custos_audit_fsync_duration_seconds_sum" => &mut c.audit_commit_seconds,
                "custos_audit_group_commit_events_sum" => &mut c.audit_events,
                "custos_raft_log_append_duration_seconds_count" => &mut c.raft_appends,
                "custos_raft_log_append_duration_seconds_sum" => &mut c.raft_append_seconds,
                "custos_raft_write_group_writes_sum" => &mut c.raft_writes,
                _ => continue,
            };
            seen |= name.starts_with("custos_audit_");
            // Summed over label sets (one per audit device).
            *field += value;
        }
        seen.then_some(c)
    }

    /// Scrape `client`'s server. `None` when it exposes no Custos series or
    /// the scrape fails: the figures are evidence, not part of the run.
    pub async fn scrape(client: &VaultClient) -> Option<Self> {
        let reply = client.get(METRICS_PATH).await.ok()?;
        if !reply.ok() {
            return None;
        }
        Self::parse(std::str::from_utf8(&reply.body).ok()?)
    }

    /// The counters in one fixed order, for field-wise arithmetic.
    fn fields(&self) -> [f64; 6] {
        [
            self.audit_commits,
            self.audit_commit_seconds,
            self.audit_events,
            self.raft_appends,
            self.raft_append_seconds,
            self.raft_writes,
        ]
    }

    /// `f` applied to each pair of counters of `self` and `o`.
    fn zip_with(&self, o: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        let (a, b) = (self.fields(), o.fields());
        let [
            audit_commits,
            audit_commit_seconds,
            audit_events,
            raft_appends,
            raft_append_seconds,
            raft_writes,
        ] = std::array::from_fn(|i| f(a[i], b[i]));
        Self {
            audit_commits,
            audit_commit_seconds,
            audit_events,
            raft_appends,
            raft_append_seconds,
            raft_writes,
        }
    }

    /// What happened between `earlier` and `self` (a server restarted in
    /// between would give negative figures: `None`).
    pub fn since(&self, earlier: &Self) -> Option<Self> {
        let d = self.zip_with(earlier, |now, then| now - then);
        d.fields().iter().all(|v| *v >= 0.0).then_some(d)
    }

    /// The sum of two windows (rounds of one workload).
    pub fn add(&self, o: &Self) -> Self {
        self.zip_with(o, |a, b| a + b)
    }

    /// As rates over a window of `seconds` in which `ops` operations
    /// completed.
    pub fn rates(&self, seconds: f64, ops: u64) -> SyncWork {
        let per = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let secs = seconds.max(1e-9);
        SyncWork {
            audit_commits_per_s: self.audit_commits / secs,
            audit_busy: self.audit_commit_seconds / secs,
            audit_events_per_commit: per(self.audit_events, self.audit_commits),
            audit_commits_per_op: per(self.audit_commits, ops as f64),
            raft_appends_per_s: self.raft_appends / secs,
            raft_busy: self.raft_append_seconds / secs,
            raft_writes_per_append: per(self.raft_writes, self.raft_appends),
        }
    }
}

/// The durability work of one side of a row, as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncWork {
    pub audit_commits_per_s: f64,
    /// Share of the window the audit writer spent committing (0..1 per
    /// device; above 1 only with several devices).
    pub audit_busy: f64,
    pub audit_events_per_commit: Option<f64>,
    pub audit_commits_per_op: Option<f64>,
    pub raft_appends_per_s: f64,
    /// Share of the window spent in Raft log appends (up to two are in
    /// flight, so this can exceed 1).
    pub raft_busy: f64,
    pub raft_writes_per_append: Option<f64>,
}

impl SyncWork {
    /// One line for the printed report.
    pub fn text(&self) -> String {
        let mut s = format!(
            "audit log {:.0} commits/s, writer busy {:.0}% of the run, {} events per commit",
            self.audit_commits_per_s,
            self.audit_busy * 100.0,
            self.audit_events_per_commit
                .map_or_else(|| "-".into(), |e| format!("{e:.1}")),
        );
        if self.raft_appends_per_s > 0.0 {
            s.push_str(&format!(
                "; Raft log {:.0} appends/s, busy {:.0}%, {} writes per append",
                self.raft_appends_per_s,
                self.raft_busy * 100.0,
                self.raft_writes_per_append
                    .map_or_else(|| "-".into(), |w| format!("{w:.1}")),
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# TYPE custos_audit_fsync_duration_seconds histogram
custos_audit_fsync_duration_seconds_bucket{path=\"file/\",le=\"0.001\"} 90
custos_audit_fsync_duration_seconds_sum{path=\"file/\"} 0.5
custos_audit_fsync_duration_seconds_count{path=\"file/\"} 100
custos_audit_fsync_duration_seconds_sum{path=\"local/\"} 0.25
custos_audit_fsync_duration_seconds_count{path=\"local/\"} 50
custos_audit_group_commit_events_sum{path=\"file/\"} 800
custos_audit_group_commit_events_count{path=\"file/\"} 100
custos_raft_log_append_duration_seconds_sum 0.125
custos_raft_log_append_duration_seconds_count 40
custos_raft_write_group_writes_sum 120
custos_raft_write_group_writes_count 40
custos_http_requests_total 7
";

    #[test]
    fn parses_and_sums_over_devices() {
        let c = SyncCounters::parse(SCRAPE).unwrap();
        assert_eq!(c.audit_commits, 150.0);
        assert_eq!(c.audit_commit_seconds, 0.75);
        assert_eq!(c.audit_events, 800.0);
        assert_eq!(c.raft_appends, 40.0);
        assert_eq!(c.raft_append_seconds, 0.125);
        assert_eq!(c.raft_writes, 120.0);
    }

    #[test]
    fn a_server_without_custos_series_has_none() {
        assert_eq!(
            SyncCounters::parse("# HELP vault_core_unsealed\nvault_core_unsealed 1\n"),
            None
        );
    }

    #[test]
    fn window_rates() {
        let a = SyncCounters::parse(SCRAPE).unwrap();
        let later = SyncCounters {
            audit_commits: a.audit_commits + 4000.0,
            audit_commit_seconds: a.audit_commit_seconds + 1.8,
            audit_events: a.audit_events + 40_000.0,
            ..a
        };
        let d = later.since(&a).unwrap();
        let w = d.add(&d).rates(4.0, 40_000);
        assert_eq!(w.audit_commits_per_s, 2000.0);
        assert!((w.audit_busy - 0.9).abs() < 1e-9);
        assert_eq!(w.audit_events_per_commit, Some(10.0));
        assert_eq!(w.audit_commits_per_op, Some(0.2));
        assert_eq!(w.raft_appends_per_s, 0.0);
        assert_eq!(w.raft_writes_per_append, None);
        assert!(
            w.text()
                .contains("writer busy 90% of the run, 10.0 events per commit")
        );
        assert!(!w.text().contains("Raft"));
        // A restarted server (counters back to zero) is no window.
        assert_eq!(a.since(&later), None);
    }
}
