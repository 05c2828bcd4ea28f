//! A drill's report: what was restored, how long each phase took against
//! the RTO target, every check with its result, and the first that failed.
//!
//! One [`Report`] becomes three things: `custos-drill-<timestamp>.json` in
//! `report_dir` (the machine-readable record), the same summary as
//! [`Report::summary`] on stdout and in `custos-drill-<timestamp>.txt`
//! beside it, and the JSON uploaded next to the snapshot as
//! `<snapshot stem>.drill-<timestamp>.json` (so retention removes it with
//! the snapshot, and whoever looks at a snapshot sees whether it was ever
//! proven). A report holds no secret: keys, digests, counts and times.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::Manifest;

/// One check of a drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            passed: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            passed: false,
            detail: detail.into(),
        }
    }
}

/// What the manifest said, in short.
#[derive(Clone, Debug, Serialize)]
pub struct ManifestSummary {
    pub key: String,
    pub snapshot_id: String,
    pub created: String,
    pub cluster_name: String,
    pub node: String,
    pub raft_index: u64,
    pub raft_term: u64,
    pub sha256: String,
    pub bytes: u64,
    pub mounts: usize,
    pub secrets: u64,
    pub tokens: u64,
    pub policies: u64,
    pub transit_canaries: usize,
}

impl ManifestSummary {
    pub fn of(key: &str, m: &Manifest) -> ManifestSummary {
        ManifestSummary {
            key: key.to_owned(),
            snapshot_id: m.snapshot_id.clone(),
            created: m.created.clone(),
            cluster_name: m.cluster_name.clone(),
            node: m.node.clone(),
            raft_index: m.raft_index,
            raft_term: m.raft_term,
            sha256: m.sha256.clone(),
            bytes: m.bytes,
            mounts: m.state.mounts.len(),
            secrets: m.state.secrets,
            tokens: m.state.tokens,
            policies: m.state.policies,
            transit_canaries: m.transit_canaries.len(),
        }
    }
}

/// Seconds per phase; a phase that did not run is absent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unseal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<f64>,
}

impl Phases {
    pub fn list(&self) -> Vec<(&'static str, f64)> {
        [
            ("download", self.download),
            ("restore", self.restore),
            ("unseal", self.unseal),
            ("verify", self.verify),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect()
    }
}

/// The drill process's resident memory, from Linux's `/proc/self/status`:
/// its RSS once its fresh node was open (empty, unsealed) and its peak
/// (`VmHWM`) when the verify phase ended. The difference is what the drill
/// needed on top of an empty node: the restore and the reads back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    pub node_open_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub growth_bytes: u64,
}

impl Memory {
    /// Read the peak now, against `node_open_rss_bytes`; `None` where
    /// `/proc` has no answer.
    pub fn peak_since(node_open_rss_bytes: u64) -> Option<Memory> {
        let peak_rss_bytes = proc_status_bytes("VmHWM")?;
        Some(Memory {
            node_open_rss_bytes,
            peak_rss_bytes,
            growth_bytes: peak_rss_bytes.saturating_sub(node_open_rss_bytes),
        })
    }
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/self/status`, in bytes.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// `passed` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
}

/// The record of one drill.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub report_version: u32,
    /// RFC 3339 UTC start and end.
    pub started: String,
    pub finished: String,
    /// `local` or `aws-s3`, and where (never a credential).
    pub source: String,
    pub destination: String,
    pub snapshot_key: Option<String>,
    pub manifest: Option<ManifestSummary>,
    pub phase_seconds: Phases,
    /// download + restore + unseal + verify.
    pub rto_seconds: f64,
    pub rto_target_seconds: f64,
    pub checks: Vec<Check>,
    pub result: Outcome,
    /// `name: detail` of the first failed check.
    pub first_failure: Option<String>,
    pub secrets_verified: u64,
    pub versions_verified: u64,
    /// Absent when the drill stopped before its verify phase ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Where the JSON was also uploaded (next to the snapshot), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_as: Option<String>,
    pub custos_version: String,
}

impl Report {
    /// The first failed check, if any.
    pub fn first_failed(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.passed)
    }

    /// Set `result` and `first_failure` from the checks.
    pub fn conclude(&mut self) {
        self.first_failure = self
            .first_failed()
            .map(|c| format!("{}: {}", c.name, c.detail));
        self.result = if self.first_failure.is_some() {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
    }

    pub fn passed(&self) -> bool {
        self.result == Outcome::Passed
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The human summary (stdout and the `.txt` file).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = match self.result {
            Outcome::Passed => "PASSED",
            Outcome::Failed => "FAILED",
        };
        s.push_str(&format!("Restore drill {verdict}\n"));
        if let Some(f) = &self.first_failure {
            s.push_str(&format!("  first failed check: {f}\n"));
        }
        s.push_str(&format!("  source:    {}\n", self.destination));
        match (&self.snapshot_key, &self.manifest) {
            (Some(k), Some(m)) => s.push_str(&format!(
                "  snapshot:  {k}\n             taken {} on {} ({}), raft index {} term {}, {} bytes\n",
                m.created, m.cluster_name, m.node, m.raft_index, m.raft_term, m.bytes
            )),
            (Some(k), None) => s.push_str(&format!("  snapshot:  {k}\n")),
            _ => s.push_str("  snapshot:  none picked\n"),
        }
        let p = &self.phase_seconds;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}s"));
        s.push_str(&format!(
            "  phases:    download {}, restore {}, unseal {}, verify {}\n",
            fmt(p.download),
            fmt(p.restore),
            fmt(p.unseal),
            fmt(p.verify)
        ));
        s.push_str(&format!(
            "  RTO:       {:.2}s (target {:.0}s){}\n",
            self.rto_seconds,
            self.rto_target_seconds,
            if self.rto_seconds <= self.rto_target_seconds {
                ""
            } else {
                " OVER TARGET"
            }
        ));
        s.push_str(&format!(
            "  verified:  {} secrets, {} versions\n",
            self.secrets_verified, self.versions_verified
        ));
        if let Some(m) = &self.memory {
            let mib = |b: u64| b as f64 / 1_048_576.0;
            s.push_str(&format!(
                "  memory:    {:.0} MiB with the fresh node open, peak {:.0} MiB (+{:.0} MiB for the restore and the reads)\n",
                mib(m.node_open_rss_bytes),
                mib(m.peak_rss_bytes),
                mib(m.growth_bytes)
            ));
        }
        s.push_str("  checks:\n");
        for c in &self.checks {
            s.push_str(&format!(
                "    [{}] {}: {}\n",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        s
    }

    /// Write `custos-drill-<stamp>.json` and `.txt` into `dir`. Returns the
    /// JSON's path.
    pub fn write_files(&self, dir: &Path, stamp: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("custos-drill-{stamp}.json"));
        let txt = dir.join(format!("custos-drill-{stamp}.txt"));
        write_atomic(&json, &self.to_json())?;
        write_atomic(&txt, self.summary().as_bytes())?;
        Ok(json)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_and_summary() {
        let mut r = Report {
            report_version: 1,
            started: "s".into(),
            finished: "f".into(),
            source: "local".into(),
            destination: "file:///x".into(),
            snapshot_key: Some("a.snap".into()),
            manifest: None,
            phase_seconds: Phases {
                download: Some(1.0),
                ..Default::default()
            },
            rto_seconds: 1.0,
            rto_target_seconds: 900.0,
            checks: vec![
                Check::pass("snapshot_sha256", "ok"),
                Check::fail("unseal", "wrong keys"),
                Check::fail("rto", "late"),
            ],
            result: Outcome::Passed,
            first_failure: None,
            secrets_verified: 0,
            versions_verified: 0,
            memory: Some(Memory {
                node_open_rss_bytes: 100 << 20,
                peak_rss_bytes: 150 << 20,
                growth_bytes: 50 << 20,
            }),
            uploaded_as: None,
            custos_version: "0".into(),
        };
        r.conclude();
        assert_eq!(r.result, Outcome::Failed);
        assert_eq!(r.first_failure.as_deref(), Some("unseal: wrong keys"));
        let s = r.summary();
        assert!(s.starts_with("Restore drill FAILED\n"), "{s}");
        assert!(s.contains("restore -,"), "{s}");
        let j: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(j["result"], "failed");
        assert_eq!(j["phase_seconds"]["download"], 1.0);
        assert_eq!(j["memory"]["growth_bytes"], 50 << 20);
        assert!(s.contains("peak 150 MiB (+50 MiB"), "{s}");
    }

    #[test]
    fn proc_status_is_read_in_bytes() {
        let rss = proc_status_bytes("VmRSS").expect("VmRSS on Linux");
        let hwm = proc_status_bytes("VmHWM").expect("VmHWM on Linux");
        assert!(rss > 0 && hwm >= rss, "rss {rss}, hwm {hwm}");
        assert_eq!(proc_status_bytes("NoSuchField"), None);
        let m = Memory::peak_since(u64::MAX).expect("memory");
        assert_eq!(m.growth_bytes, 0);
    }
}
