//! `custos rotator serve` and `custos rotator run`: the two ways a run is
//! driven.
//!
//! * [`serve`]: every job on its cron schedule (tokio-cron-scheduler), a new
//!   run at each firing when none is unfinished; besides, every
//!   `check_interval` each job with an unfinished run (waiting in verify,
//!   held, or left by a crashed process) is ticked again, so a held run
//!   finishes as soon as its last consumer moves. A per-job lock means a job
//!   never runs twice at once in one process; the claims in the run state do
//!   the same across processes. `/metrics` on `telemetry {
//!   prometheus_listen }`.
//! * [`run_once`]: one run now, resumed if one is unfinished; it waits in
//!   verify up to the deadline and answers with an exit code: 0 done, 3 held
//!   (nothing retired), 2 failed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::{JobConfig, RotatorConfig};
use crate::engine::{Engine, RunError, Tick};
use crate::metrics as m;
use crate::status;

/// Exit codes of `custos rotator run`.
pub const EXIT_DONE: u8 = 0;
pub const EXIT_FAILED: u8 = 2;
pub const EXIT_HELD: u8 = 3;

/// One run of `job` now. Returns the exit code and the line to print.
pub async fn run_once(engine: &Engine, job: &JobConfig) -> (u8, String) {
    let started = Instant::now();
    let started_unix = crate::engine::now();
    // Waiting in verify ends by itself at the deadline (the run is then
    // held); this bound only stops waiting on another process's claim.
    let limit = job.deadline + engine.claim_ttl * 2 + Duration::from_secs(60);
    let mut start = true;
    loop {
        let r = engine.tick_retrying(job, start).await;
        start = false;
        let t = match r {
            Ok(t) => t,
            Err(e) => {
                metrics::counter!(m::RUNS, "rotation_job" => job.name.clone(), "outcome" => "failed")
                    .increment(1);
                return (EXIT_FAILED, format!("failed: {e}"));
            }
        };
        match t {
            Tick::Done(s) => {
                let what = if s.previous_version == 0 {
                    format!("first credential written as version {}", s.new_version)
                } else {
                    format!(
                        "version {} promoted, version {} retired",
                        s.new_version, s.previous_version
                    )
                };
                return (
                    EXIT_DONE,
                    format!("job {:?}: run {} done: {what}", job.name, s.id),
                );
            }
            Tick::Held(pending) => {
                return (
                    EXIT_HELD,
                    format!(
                        "job {:?}: held past its deadline: not moved: {} (the old credential stays valid; nothing retired)",
                        job.name,
                        pending.join(", ")
                    ),
                );
            }
            Tick::Idle => {
                // Another rotator finished the run this one was waiting on
                // (both times are whole seconds: compare the floors).
                if let Ok(l) = engine.store.load(&job.name).await
                    && let Some(last) = l.state.last_run
                    && last.finished_at >= started_unix
                {
                    return (
                        EXIT_DONE,
                        format!(
                            "job {:?}: run {} done by another rotator: version {} promoted",
                            job.name, last.id, last.new_version
                        ),
                    );
                }
                return (
                    EXIT_FAILED,
                    format!("job {:?}: no run to resume and none started", job.name),
                );
            }
            Tick::Waiting(reason) => {
                tracing::info!(job = %job.name, "{reason}");
            }
            Tick::Busy(owner) => {
                if started.elapsed() > limit {
                    return (
                        EXIT_FAILED,
                        format!(
                            "job {:?}: another rotator ({owner}) holds the run",
                            job.name
                        ),
                    );
                }
                tracing::info!(job = %job.name, "another rotator ({owner}) is performing a step; waiting");
            }
        }
        tokio::time::sleep(job.poll_interval).await;
    }
}

/// Tick one job under its lock, logging and counting the outcome.
async fn tick_job(engine: &Engine, job: &JobConfig, lock: &Mutex<()>, start: bool) {
    let Ok(_guard) = lock.try_lock() else {
        tracing::debug!(job = %job.name, "still running from the previous tick");
        return;
    };
    let r: Result<Tick, RunError> = engine.tick_retrying(job, start).await;
    match r {
        Ok(Tick::Done(s)) => {
            tracing::info!(job = %job.name, run = %s.id, from = s.previous_version, to = s.new_version, "rotation done")
        }
        Ok(Tick::Held(p)) => {
            tracing::warn!(job = %job.name, pending = ?p, "rotation held: consumers have not moved")
        }
        Ok(Tick::Waiting(reason)) => tracing::info!(job = %job.name, "{reason}"),
        Ok(Tick::Busy(owner)) => {
            tracing::info!(job = %job.name, "another rotator ({owner}) holds the run")
        }
        Ok(Tick::Idle) => {}
        Err(e) => {
            metrics::counter!(m::RUNS, "rotation_job" => job.name.clone(), "outcome" => "failed")
                .increment(1);
            tracing::error!("{e}");
        }
    }
    match engine.store.load(&job.name).await {
        Ok(l) => status::export_gauges(job, &l.state),
        Err(e) => tracing::warn!(job = %job.name, "cannot read run state for metrics: {e}"),
    }
}

/// The daemon: runs until `shutdown` resolves, then lets in-flight steps
/// finish.
pub async fn serve(
    cfg: RotatorConfig,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut exporter = None;
    if let Some(addr) = &cfg.prometheus_listen {
        let handle = m::install()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("telemetry prometheus_listen {addr}: {e}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        exporter = Some(tokio::spawn(serve_metrics(listener, handle)));
    }
    // Every job's counters exist from the start (at 0), so rate() and the
    // alerts see a series before the first outcome.
    for job in &cfg.jobs {
        for outcome in ["done", "held", "failed"] {
            metrics::counter!(m::RUNS, "rotation_job" => job.name.clone(), "outcome" => outcome)
                .increment(0);
        }
        for step in ["create", "promote", "verify", "retire"] {
            metrics::counter!(m::STEP_ERRORS, "rotation_job" => job.name.clone(), "step" => step)
                .increment(0);
        }
    }
    let locks: HashMap<String, Arc<Mutex<()>>> = cfg
        .jobs
        .iter()
        .map(|j| (j.name.clone(), Arc::new(Mutex::new(()))))
        .collect();
    let mut sched = JobScheduler::new()
        .await
        .map_err(|e| format!("scheduler: {e}"))?;
    for job in &cfg.jobs {
        let engine = engine.clone();
        let job_c = Arc::new(job.clone());
        let lock = locks[&job.name].clone();
        let j = Job::new_async_tz(job.schedule.cron.as_str(), job.schedule.tz, move |_, _| {
            let engine = engine.clone();
            let job = job_c.clone();
            let lock = lock.clone();
            Box::pin(async move { tick_job(&engine, &job, &lock, true).await })
        })
        .map_err(|e| {
            format!(
                "job {:?}: schedule {:?}: {e}",
                job.name, job.schedule.source
            )
        })?;
        sched
            .add(j)
            .await
            .map_err(|e| format!("job {:?}: {e}", job.name))?;
        tracing::info!(job = %job.name, schedule = %job.schedule.source, tz = %job.schedule.tz.name(), "scheduled");
    }
    sched.start().await.map_err(|e| format!("scheduler: {e}"))?;
    let recheck = async {
        let mut every = tokio::time::interval(cfg.check_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for job in &cfg.jobs {
                tick_job(&engine, job, &locks[&job.name], false).await;
            }
        }
    };
    tokio::select! {
        _ = recheck => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    let _ = sched.shutdown().await;
    // Let a step in flight finish (its claim would otherwise block others
    // until it expires).
    for lock in locks.values() {
        let _ = tokio::time::timeout(Duration::from_secs(30), lock.lock()).await;
    }
    if let Some(task) = exporter {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
