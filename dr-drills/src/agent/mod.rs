//! The automated snapshot agent: Vault Enterprise's `snapshot-auto`, run
//! inside `custos server`.
//!
//! Configurations come from core's `sys/storage/raft/snapshot-auto` API
//! (stored in replicated storage; [`custos_core::snapshot_auto`]). The
//! `custos` binary [`attach`]es one agent to each core it starts; the agent
//! registers itself as core's [`SnapshotAgent`] and runs one worker (its own
//! task, stopped by [`SnapshotAgent::shutdown`]) that, on the active unsealed
//! node only, wakes when a configuration changes or a snapshot is due and,
//! per due configuration ([`run`]):
//!
//! 1. encrypts a transit canary per key, then takes a Raft snapshot through
//!    [`custos_core::raft_snapshot::export`] — the Vault-format archive,
//!    streamed, with the per-mount state digest computed alongside;
//! 2. streams the archive into the primary destination (a local directory
//!    or S3 multipart: never the whole snapshot in memory or on disk);
//! 3. only then writes the manifest ([`crate::manifest`]), so a snapshot
//!    killed mid-upload never counts;
//! 4. applies retention (the `retain` newest good ones, never the last
//!    good one; stale uploads aborted), then fills the `copy_to_*`
//!    destination with every good snapshot it lacks (checked by SHA-256)
//!    and applies retention there.
//!
//! A failure is recorded in the configuration's status and metrics and
//! retried with backoff (30 s doubling to 15 min, never later than the
//! next regular run). After a restart, the first run of a configuration is
//! due one period after the newest good snapshot at its destination.

pub mod config;
pub mod metrics;
mod run;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use custos_core::core::Core;
use custos_core::snapshot_auto::{self, SnapshotAgent};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use config::AutoConfig;

/// How often the worker looks at the configurations when nothing wakes it
/// (leadership and seal changes are noticed at this pace).
const TICK: Duration = Duration::from_secs(5);
/// First retry after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// What one configuration has done, for `status/:name` and the metrics.
#[derive(Clone, Debug, Default)]
struct ConfigState {
    last_start: Option<DateTime<Utc>>,
    last_end: Option<DateTime<Utc>>,
    last_error: String,
    last_url: String,
    last_bytes: u64,
    last_sha256: String,
    last_index: u64,
    consecutive_errors: u64,
    /// The start of the run in progress.
    running: Option<(DateTime<Utc>, String)>,
    next: Option<DateTime<Utc>>,
    retained: usize,
    copy_last_end: Option<DateTime<Utc>>,
    copy_last_error: String,
    copy_behind_seconds: f64,
    /// The configuration as last seen (a change reschedules).
    seen: Option<AutoConfig>,
}

/// The agent. Holds its core weakly: the core holds it.
pub struct AutoSnapshots {
    core: Weak<Core>,
    states: Mutex<BTreeMap<String, ConfigState>>,
    wake: Notify,
    stop: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// Create an agent for `core`, register it, and start its worker (on the
/// current tokio runtime). Returns `None` when `core` already has an agent.
pub fn attach(core: &Arc<Core>) -> Option<Arc<AutoSnapshots>> {
    metrics::describe();
    let (stop, _) = watch::channel(false);
    let agent = Arc::new(AutoSnapshots {
        core: Arc::downgrade(core),
        states: Mutex::new(BTreeMap::new()),
        wake: Notify::new(),
        stop,
        worker: Mutex::new(None),
    });
    if core.set_snapshot_agent(agent.clone()).is_err() {
        return None;
    }
    let worker = tokio::spawn(work(Arc::downgrade(&agent), agent.stop.subscribe()));
    if let Ok(mut w) = agent.worker.lock() {
        *w = Some(worker);
    }
    Some(agent)
}

fn rfc3339(t: &Option<DateTime<Utc>>) -> Value {
    match t {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true).into(),
        None => Value::String(String::new()),
    }
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl AutoSnapshots {
    fn state<R>(&self, name: &str, f: impl FnOnce(&mut ConfigState) -> R) -> R {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        f(states.entry(name.to_string()).or_default())
    }

    /// One pass: on the active unsealed node, run every due configuration.
    /// Returns when the next one is due.
    async fn pass(&self, core: &Arc<Core>) -> Option<DateTime<Utc>> {
        if core.is_sealed() || !core.is_active() {
            return None;
        }
        let configs = match snapshot_auto::load_configs(core).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "automated snapshots: cannot read the configurations");
                return None;
            }
        };
        self.forget_removed(&configs);
        let mut soonest: Option<DateTime<Utc>> = None;
        for (name, raw) in configs {
            if *self.stop.borrow() {
                return None;
            }
            let cfg = match AutoConfig::normalize(Some(&raw), &Map::new()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(config = %name, error = %e, "automated snapshots: stored configuration is invalid; skipped");
                    continue;
                }
            };
            let due = self.due(&name, &cfg).await;
            let now = Utc::now();
            let next = if due <= now {
                self.run_once(core, &name, &cfg).await
            } else {
                due
            };
            soonest = Some(soonest.map_or(next, |s| s.min(next)));
        }
        soonest
    }

    /// When configuration `name` is next due. A configuration seen for the
    /// first time (or changed) is due one period after the newest good
    /// snapshot at its primary destination, or now when there is none.
    async fn due(&self, name: &str, cfg: &AutoConfig) -> DateTime<Utc> {
        let known = self.state(name, |s| {
            (s.seen.as_ref() == Some(cfg)).then_some(s.next).flatten()
        });
        if let Some(next) = known {
            return next;
        }
        let newest = match cfg.primary().await {
            Ok((dest, prefix)) => {
                crate::layout::Catalog::load(dest.as_ref(), &run::list_prefix(&prefix))
                    .await
                    .ok()
                    .and_then(|c| c.newest_good().map(|e| DateTime::<Utc>::from(e.taken_at)))
            }
            Err(_) => None,
        };
        let next = cfg.next_after(newest, Utc::now());
        if let Some(t) = newest {
            // After a restart the age of the newest snapshot is known again
            // at once, so SnapshotTooOld needs no fresh success to judge.
            ::metrics::gauge!(metrics::LAST_SUCCESS, "config" => name.to_string(), "destination" => "primary")
                .set(unix(t));
        }
        self.state(name, |s| {
            s.seen = Some(cfg.clone());
            s.next = Some(next);
            if s.last_end.is_none() {
                s.last_end = newest;
            }
        });
        self.publish_schedule(name, cfg, next);
        next
    }

    fn publish_schedule(&self, name: &str, cfg: &AutoConfig, next: DateTime<Utc>) {
        let labels = [("config", name.to_string())];
        ::metrics::gauge!(metrics::NEXT_RUN, &labels).set(unix(next));
        ::metrics::gauge!(metrics::PERIOD, &labels).set(cfg.period().as_secs_f64());
    }

    /// Take one snapshot for `name` now; returns when the next is due.
    async fn run_once(&self, core: &Arc<Core>, name: &str, cfg: &AutoConfig) -> DateTime<Utc> {
        let started = Utc::now();
        self.state(name, |s| s.running = Some((started, String::new())));
        ::metrics::gauge!(metrics::LAST_ATTEMPT, "config" => name.to_string()).set(unix(started));
        let outcome = run::snapshot(core, name, cfg, started).await;
        let ended = Utc::now();
        let regular = cfg.next_after(Some(started), ended);
        let next = match &outcome {
            Ok(done) => {
                self.state(name, |s| {
                    s.running = None;
                    s.last_start = Some(started);
                    s.last_end = Some(ended);
                    s.last_error.clear();
                    s.last_url = done.url.clone();
                    s.last_bytes = done.bytes;
                    s.last_sha256 = done.sha256.clone();
                    s.last_index = done.raft_index;
                    s.consecutive_errors = 0;
                    s.retained = done.retained;
                    match &done.copy {
                        Some(Ok(behind)) => {
                            s.copy_last_end = Some(ended);
                            s.copy_last_error.clear();
                            s.copy_behind_seconds = *behind;
                        }
                        Some(Err(e)) => s.copy_last_error = e.clone(),
                        None => {}
                    }
                });
                regular
            }
            Err(e) => {
                let failures = self.state(name, |s| {
                    s.running = None;
                    s.last_start = Some(started);
                    s.last_error = e.clone();
                    s.consecutive_errors += 1;
                    s.consecutive_errors
                });
                tracing::warn!(config = %name, consecutive_failures = failures, error = %e, "automated snapshot failed");
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1u32 << (failures.saturating_sub(1)).min(10))
                    .min(MAX_BACKOFF);
                regular.min(ended + chrono::Duration::from_std(backoff).unwrap_or_default())
            }
        };
        ::metrics::gauge!(metrics::CONSECUTIVE_FAILURES, "config" => name.to_string())
            .set(self.state(name, |s| s.consecutive_errors) as f64);
        self.state(name, |s| s.next = Some(next));
        self.publish_schedule(name, cfg, next);
        next
    }

    /// Drop the state of configurations that were deleted.
    fn forget_removed(&self, configs: &[(String, Map<String, Value>)]) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|name, _| configs.iter().any(|(n, _)| n == name));
    }
}

#[async_trait::async_trait]
impl SnapshotAgent for AutoSnapshots {
    fn normalize(
        &self,
        _name: &str,
        existing: Option<&Map<String, Value>>,
        input: &Map<String, Value>,
    ) -> Result<Map<String, Value>, String> {
        let cfg = AutoConfig::normalize(existing, input)?;
        match serde_json::to_value(&cfg) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err("the configuration could not be encoded".into()),
        }
    }

    fn display(&self, stored: &Map<String, Value>) -> Map<String, Value> {
        match AutoConfig::normalize(Some(stored), &Map::new()) {
            Ok(c) => c.display(),
            Err(_) => Map::new(),
        }
    }

    fn status(&self, name: &str, _stored: &Map<String, Value>) -> Map<String, Value> {
        let s = self.state(name, |s| s.clone());
        let (snapshot_start, snapshot_url) = match &s.running {
            Some((t, url)) => (rfc3339(&Some(*t)), url.clone()),
            None => (Value::String(String::new()), String::new()),
        };
        let v = json!({
            "consecutive_errors_since_last_success": s.consecutive_errors,
            "last_snapshot_start": rfc3339(&s.last_start),
            "last_snapshot_end": rfc3339(&s.last_end),
            "last_snapshot_error": s.last_error,
            "last_snapshot_url": s.last_url,
            "next_snapshot_start": rfc3339(&s.next),
            "snapshot_start": snapshot_start,
            "snapshot_url": snapshot_url,
            "last_snapshot_bytes": s.last_bytes,
            "last_snapshot_sha256": s.last_sha256,
            "last_snapshot_raft_index": s.last_index,
            "retained": s.retained,
            "copy_last_end": rfc3339(&s.copy_last_end),
            "copy_last_error": s.copy_last_error,
            "copy_behind_seconds": s.copy_behind_seconds,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn changed(&self) {
        self.wake.notify_one();
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            // A snapshot in progress is abandoned: its upload never
            // completes, so it has no manifest and never counts.
            w.abort();
            let _ = w.await;
        }
    }
}

/// The worker: a pass whenever woken, due, or every [`TICK`].
async fn work(agent: Weak<AutoSnapshots>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(a) = agent.upgrade() else { return };
        let Some(core) = a.core.upgrade() else { return };
        let next = a.pass(&core).await;
        drop(core);
        let wait = next
            .and_then(|n| (n - Utc::now()).to_std().ok())
            .unwrap_or(TICK)
            .min(TICK);
        let woken = async { a.wake.notified().await };
        tokio::select! {
            _ = stop.changed() => return,
            _ = woken => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
