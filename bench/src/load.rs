//! The load engine: drives one workload against one server and measures it.
//!
//! Input: a [`LoadSpec`] (concurrency, warm-up, duration, optional fixed
//! rate), a prepared [`Fixture`] and a [`VaultClient`]. Output: [`RunStats`]
//! — throughput, HDR-histogram latency percentiles, errors, and the CPU the
//! load generator and (if its pid is known) the server used during the
//! measured window.
//!
//! Closed loop: `concurrency` workers, each sending its next request as soon
//! as the previous one is answered. Open loop (`rate` set): request *i* is due
//! at `start + i/rate`; workers claim the next due slot, wait until its time
//! and send it, and latency is measured from the **intended** send time, so a
//! stalled server is charged for the queue it causes (no coordinated
//! omission). Only operations that complete inside the measured window
//! (after warm-up, before the end) are counted. [`run_spread`] spreads the
//! workers over several addresses (a cluster's standbys, `cluster.rs`).
//! A cold-cache workload (`kv-read-cold`) has the kernel's page cache
//! dropped ([`drop_page_cache`]) between its warm-up and its measured
//! window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Conn, VaultClient};
use crate::durability::SyncCounters;
use crate::sysinfo;
use crate::workload::{Fixture, Workload, op};

/// How to drive the load.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Open loop at this many operations per second; `None` = closed loop.
    pub rate: Option<f64>,
}

/// What one measured run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunStats {
    pub ops: u64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub seconds: f64,
    /// Operations per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// CPU cores the load generator used on average (user+sys / wall).
    pub client_cpu_cores: f64,
    /// CPU cores the server used on average, when its pid is known.
    pub server_cpu_cores: Option<f64>,
    /// The server's durable commits over the window (Custos only).
    pub syncs: Option<SyncCounters>,
    pub first_errors: Vec<String>,
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

fn new_hist() -> Result<Histogram<u64>> {
    // Microseconds, 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// What a window used besides time: CPU (seconds, not cores) of the
/// generator and the server, and the server's durable commits.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    seconds: f64,
    client_cpu: f64,
    server_cpu: Option<f64>,
    syncs: Option<SyncCounters>,
}

impl Usage {
    /// Two windows as one (rounds of one workload).
    fn add(self, o: &Usage) -> Usage {
        Usage {
            seconds: self.seconds + o.seconds,
            client_cpu: self.client_cpu + o.client_cpu,
            server_cpu: self.server_cpu.zip(o.server_cpu).map(|(a, b)| a + b),
            syncs: self.syncs.zip(o.syncs).map(|(a, b)| a.add(&b)),
        }
    }
}

impl RunStats {
    fn from_parts(
        hist: Histogram<u64>,
        requests: u64,
        errors: u64,
        used: Usage,
        first_errors: Vec<String>,
    ) -> Self {
        let ops = hist.len();
        let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
        let attempts = ops + errors;
        let seconds = used.seconds;
        Self {
            ops,
            requests,
            errors,
            error_rate: if attempts == 0 {
                0.0
            } else {
                errors as f64 / attempts as f64
            },
            seconds,
            rps: ops as f64 / seconds.max(1e-9),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: hist.max() as f64 / 1000.0,
            mean_ms: hist.mean() / 1000.0,
            client_cpu_cores: used.client_cpu / seconds.max(1e-9),
            server_cpu_cores: used.server_cpu.map(|s| s / seconds.max(1e-9)),
            syncs: used.syncs,
            first_errors,
            hist,
        }
    }

    /// What this run used, back in seconds of CPU.
    fn usage(&self) -> Usage {
        Usage {
            seconds: self.seconds,
            client_cpu: self.client_cpu_cores * self.seconds,
            server_cpu: self.server_cpu_cores.map(|c| c * self.seconds),
            syncs: self.syncs,
        }
    }

    /// Merge several runs of the same workload against the same server
    /// (the rounds of an alternating comparison).
    pub fn merge(runs: &[RunStats]) -> Result<RunStats> {
        let mut hist = new_hist()?;
        let (mut req, mut err) = (0, 0);
        let mut used = Usage {
            server_cpu: Some(0.0),
            syncs: Some(SyncCounters::default()),
            ..Usage::default()
        };
        let mut first = Vec::new();
        for r in runs {
            hist.add(&r.hist)
                .map_err(|e| anyhow!("merging histograms: {e}"))?;
            req += r.requests;
            err += r.errors;
            used = used.add(&r.usage());
            first.extend(r.first_errors.iter().take(3).cloned());
        }
        first.truncate(5);
        Ok(Self::from_parts(hist, req, err, used, first))
    }
}

/// Per-worker tallies, merged at the end.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    first_errors: Vec<String>,
}

/// Run `w` against `client` per `spec`. `server_pid` lets the run report the
/// server's CPU use over the same window.
pub async fn run(
    w: Workload,
    fx: Arc<Fixture>,
    client: &VaultClient,
    spec: &LoadSpec,
    server_pid: Option<u32>,
) -> Result<RunStats> {
    let pids: Vec<u32> = server_pid.into_iter().collect();
    run_spread(w, fx, std::slice::from_ref(client), spec, &pids).await
}

/// [`run`] with the workers spread round-robin over `clients` (worker *i*
/// talks to `clients[i % n]`: e.g. the standbys of a cluster). The server
/// CPU reported is the sum over `server_pids`; the durable-commit counters
/// are scraped only when there is one client.
///
/// A [`Workload::cold_cache`] workload runs its warm-up as a window of its
/// own, then [`drop_page_cache`], then the measured window with the same
/// connections and no further warm-up.
pub async fn run_spread(
    w: Workload,
    fx: Arc<Fixture>,
    clients: &[VaultClient],
    spec: &LoadSpec,
    server_pids: &[u32],
) -> Result<RunStats> {
    if clients.is_empty() {
        return Err(anyhow!("load::run_spread: no client"));
    }
    let conns = (0..spec.concurrency.max(1))
        .map(|wid| clients[wid % clients.len()].conn())
        .collect::<Result<Vec<_>>>()?;
    if !w.cold_cache() {
        return Ok(window(w, fx, clients, conns, spec, server_pids).await?.0);
    }
    let warm = LoadSpec {
        warmup: Duration::ZERO,
        duration: spec.warmup,
        ..spec.clone()
    };
    let (_, conns) = window(w, fx.clone(), clients, conns, &warm, server_pids).await?;
    tokio::task::spawn_blocking(drop_page_cache)
        .await
        .map_err(|e| anyhow!("dropping the page cache: {e}"))??;
    let measured = LoadSpec {
        warmup: Duration::ZERO,
        ..spec.clone()
    };
    Ok(window(w, fx, clients, conns, &measured, server_pids)
        .await?
        .0)
}

/// The kernel's page cache, dentries and inodes: where a read-mostly
/// workload's file pages live between requests.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Fail early, before any data is loaded, when [`drop_page_cache`] would
/// fail (not root, or no `/proc/sys/vm`): opening the file for writing
/// checks the permission without dropping anything.
pub fn check_drop_page_cache() -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(DROP_CACHES)
        .map(drop)
        .map_err(|e| {
            anyhow!("a cold-cache workload needs to write {DROP_CACHES} (run as root): {e}")
        })
}

/// `sync`, then `echo 3 > /proc/sys/vm/drop_caches`: dirty pages reach the
/// disk first, so every clean page no process maps is dropped (pages of an
/// mmap'd file that a process has touched, such as OpenBao's bbolt file,
/// stay: the kernel skips mapped pages). An error (not root) fails the run
/// rather than measuring a warm cache under a cold name.
pub fn drop_page_cache() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write(DROP_CACHES, "3")
        .map_err(|e| anyhow!("dropping the page cache: writing 3 to {DROP_CACHES}: {e}"))
}

/// One load window over `conns` (one per worker, handed back afterwards
/// in worker order so a second window keeps the same connections).
async fn window(
    w: Workload,
    fx: Arc<Fixture>,
    clients: &[VaultClient],
    conns: Vec<Conn>,
    spec: &LoadSpec,
    server_pids: &[u32],
) -> Result<(RunStats, Vec<Conn>)> {
    let Some(client) = clients.first() else {
        return Err(anyhow!("load::run_spread: no client"));
    };
    let single = clients.len() == 1;
    let pids = server_pids.to_vec();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let slot = Arc::new(AtomicU64::new(0));
    let interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-6)));

    // CPU snapshots exactly at the window's edges, then the server's sync
    // counters (see `crate::durability`).
    let scraper = client.clone();
    let window = spec.duration;
    let meter = tokio::spawn(async move {
        let servers_cpu = || -> Option<Duration> {
            (!pids.is_empty())
                .then(|| {
                    pids.iter()
                        .map(|p| sysinfo::proc_cpu(*p))
                        .sum::<Option<Duration>>()
                })
                .flatten()
        };
        tokio::time::sleep_until(measure_from).await;
        let (c0, s0) = (sysinfo::self_cpu(), servers_cpu());
        let syncs0 = if single {
            SyncCounters::scrape(&scraper).await
        } else {
            None
        };
        tokio::time::sleep_until(end).await;
        let (c1, s1) = (sysinfo::self_cpu(), servers_cpu());
        let syncs = match (syncs0, SyncCounters::scrape(&scraper).await) {
            (Some(a), Some(b)) if single => b.since(&a),
            _ => None,
        };
        let server = match (s0, s1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        Usage {
            // Rates are over the nominal window: the workers count
            // operations that complete inside it.
            seconds: window.as_secs_f64(),
            client_cpu: c1.saturating_sub(c0).as_secs_f64(),
            server_cpu: server,
            syncs,
        }
    });

    let mut workers = tokio::task::JoinSet::new();
    for (wid, mut conn) in conns.into_iter().enumerate() {
        let (fx, slot) = (fx.clone(), slot.clone());
        let mut tally = Tally {
            hist: new_hist()?,
            requests: 0,
            errors: 0,
            first_errors: Vec::new(),
        };
        workers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(0x5eed ^ wid as u64);
            tokio::time::sleep_until(start).await;
            loop {
                // Closed loop: start now. Open loop: the next due slot.
                let t0 = match interval {
                    None => Instant::now(),
                    Some(iv) => {
                        let i = slot.fetch_add(1, Ordering::Relaxed);
                        let due = start + iv.mul_f64(i as f64);
                        if due >= end {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        due
                    }
                };
                if t0 >= end {
                    break;
                }
                let res = op(w, &fx, &mut conn, &mut rng).await;
                let t1 = Instant::now();
                if t1 < measure_from || t1 >= end {
                    continue;
                }
                match res {
                    Ok(n) => {
                        tally.requests += u64::from(n);
                        let us = (t1 - t0).as_micros().clamp(1, 600_000_000) as u64;
                        let _ = tally.hist.record(us);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        if tally.first_errors.len() < 3 {
                            tally.first_errors.push(e);
                        }
                    }
                }
            }
            (wid, tally, conn)
        });
    }
    let mut hist = new_hist()?;
    let (mut requests, mut errors, mut first_errors) = (0, 0, Vec::new());
    let mut conns = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (wid, t, conn) = done.map_err(|e| anyhow!("load worker: {e}"))?;
        conns.push((wid, conn));
        hist.add(&t.hist)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        requests += t.requests;
        errors += t.errors;
        if first_errors.len() < 5 {
            first_errors.extend(t.first_errors);
        }
    }
    first_errors.truncate(5);
    let used = meter.await.map_err(|e| anyhow!("cpu meter: {e}"))?;
    conns.sort_by_key(|(wid, _)| *wid);
    Ok((
        RunStats::from_parts(hist, requests, errors, used, first_errors),
        conns.into_iter().map(|(_, c)| c).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values_us: &[u64], errors: u64, secs: f64) -> RunStats {
        let mut h = new_hist().unwrap();
        for v in values_us {
            h.record(*v).unwrap();
        }
        let used = Usage {
            seconds: secs,
            client_cpu: 0.5,
            server_cpu: Some(1.0),
            syncs: None,
        };
        RunStats::from_parts(h, values_us.len() as u64, errors, used, vec![])
    }

    #[test]
    fn percentiles_and_rates() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect(); // 1..1000 ms
        let s = stats(&v, 10, 2.0);
        assert_eq!(s.ops, 1000);
        assert!((s.rps - 500.0).abs() < 1e-9);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{}", s.p50_ms);
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{}", s.p99_ms);
        assert!((s.error_rate - 10.0 / 1010.0).abs() < 1e-12);
        assert!((s.client_cpu_cores - 0.25).abs() < 1e-9);
    }

    #[test]
    fn merge_adds_counts_and_time() {
        let a = stats(&[1000, 2000], 1, 1.0);
        let b = stats(&[3000, 4000, 5000], 0, 3.0);
        let m = RunStats::merge(&[a, b]).unwrap();
        assert_eq!((m.ops, m.errors), (5, 1));
        assert!((m.seconds - 4.0).abs() < 1e-9);
        assert!((m.rps - 1.25).abs() < 1e-9);
        // 1 CPU-second in each run, over 4 s in all.
        assert_eq!(m.server_cpu_cores, Some(0.5));
        assert_eq!(m.syncs, None);
    }

    #[test]
    fn merge_adds_durable_commits_only_when_every_round_has_them() {
        let commits = |n: f64| SyncCounters {
            audit_commits: n,
            audit_events: 10.0 * n,
            ..SyncCounters::default()
        };
        let mut a = stats(&[1000], 0, 1.0);
        let mut b = stats(&[1000], 0, 1.0);
        a.syncs = Some(commits(100.0));
        b.syncs = Some(commits(300.0));
        let m = RunStats::merge(&[a.clone(), b]).unwrap();
        assert_eq!(m.syncs, Some(commits(400.0)));
        // A round whose scrape failed leaves no figure rather than a low one.
        let m = RunStats::merge(&[a, stats(&[1000], 0, 1.0)]).unwrap();
        assert_eq!(m.syncs, None);
    }
}
