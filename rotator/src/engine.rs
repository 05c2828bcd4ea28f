//! The run engine: moves one job's run through `create → promote → verify
//! → retire → done`, from its state in Custos (see [`crate::state`]).
//!
//! [`Engine::tick`] reads the job's document, and for the step it finds:
//! * a step with an outside effect (create, promote, retire) is first
//!   *claimed* with a check-and-set write naming this process, then
//!   performed, then the run advances with another check-and-set write
//!   against the claim's version. Losing either race means another rotator
//!   got there first: read again and continue from what it wrote.
//! * `verify` has no effect outside the document: it asks the audit log
//!   (`sys/audit-query`) whether every consumer moved, and records what it
//!   found.
//!
//! Every step is idempotent, so a process killed anywhere resumes without
//! repeating an effect: the provider's create is keyed by the run id, the
//! promote write is a check-and-set on the previous KV version (a replay
//! finds its own `key_id` already there), the transit rotation happens only
//! while the key is still at the recorded previous version, rewraps skip
//! records already on the new version and write back with check-and-set,
//! and revoke/destroy/`min_decryption_version` are idempotent by nature.
//!
//! The old credential stays valid until `retire` completes: nothing before
//! it touches the previous version, and `retire` runs only after `verify`
//! passed (every consumer moved and `grace` elapsed). A run whose consumers
//! have not moved by `deadline` is *held* (`on_stuck = "hold"`): reported,
//! alerted on, and re-checked on every later tick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::api::{Api, ApiError};
use crate::config::{JobConfig, JobKind, KvPath, ProviderConfig};
use crate::metrics as m;
use crate::provider::{Provider, ProviderError};
use crate::state::{
    Claim, ConsumerProgress, JobState, Loaded, Run, RunSummary, Saved, StateStore, Step,
};

/// Why a tick stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No run, and the tick was not allowed to start one.
    Idle,
    /// The run finished.
    Done(RunSummary),
    /// In `verify`, before the deadline: waiting for consumers or grace.
    Waiting(String),
    /// The deadline passed with these consumers (or undeclared clients) not
    /// moved: the old credential stays valid.
    Held(Vec<String>),
    /// Another rotator holds the current step's claim.
    Busy(String),
}

/// A failed step: names the job and the step.
#[derive(Debug, Clone, thiserror::Error)]
#[error("job {job:?} step {step}: {cause}")]
pub struct RunError {
    pub job: String,
    pub step: &'static str,
    pub cause: Cause,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("{0}")]
    Invalid(String),
    /// Another process took the run over mid-step (our claim expired).
    #[error("lost the run's claim to another rotator")]
    ClaimLost,
}

impl RunError {
    /// Whether retrying later may succeed without anyone acting.
    pub fn retryable(&self) -> bool {
        match &self.cause {
            Cause::Api(e) => e.retryable(),
            Cause::Provider(e) => e.retryable(),
            Cause::ClaimLost => true,
            Cause::Invalid(_) => false,
        }
    }
}

/// Crash tests: `CUSTOS_ROTATOR_FAILPOINT=<step>:claimed` or
/// `<step>:effect` makes the process kill itself with SIGKILL right after
/// claiming that step, or right after its effect and before the state
/// records it — the two places where a crash tests idempotency. Unset in
/// production; read once.
fn failpoint(step: Step, phase: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("CUSTOS_ROTATOR_FAILPOINT").ok());
    if point.as_deref() == Some(&format!("{}:{phase}", step.as_str())) {
        eprintln!("failpoint {}:{phase}: killing this process", step.as_str());
        // SAFETY: kill(2) on our own pid; SIGKILL ends the process at once,
        // as `kill -9` would.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One rotator process's view of the server.
pub struct Engine {
    pub api: Api,
    pub store: StateStore,
    /// Written into claims: `host:pid:random`.
    pub owner: String,
    pub claim_ttl: Duration,
    pub retry_for: Duration,
}

/// The document being worked on and the version to check-and-set against.
struct Session<'a> {
    job: &'a JobConfig,
    state: JobState,
    version: u64,
}

impl Engine {
    pub fn new(api: Api, store: StateStore, claim_ttl: Duration, retry_for: Duration) -> Engine {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let owner = format!(
            "{host}:{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Engine {
            api,
            store,
            owner,
            claim_ttl,
            retry_for,
        }
    }

    fn err(&self, job: &JobConfig, step: Step, cause: impl Into<Cause>) -> RunError {
        RunError {
            job: job.name.clone(),
            step: step.as_str(),
            cause: cause.into(),
        }
    }

    /// [`Engine::tick`], retrying errors that can heal with capped
    /// exponential backoff for up to `retry_for`.
    pub async fn tick_retrying(&self, job: &JobConfig, start: bool) -> Result<Tick, RunError> {
        let t0 = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            match self.tick(job, start).await {
                Err(e) if e.retryable() && t0.elapsed() + delay < self.retry_for => {
                    tracing::warn!(job = %job.name, step = e.step, error = %e.cause, "retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                other => return other,
            }
        }
    }

    /// Advance the job's run as far as it goes now. With `start`, begin a
    /// new run when there is none.
    pub async fn tick(&self, job: &JobConfig, mut start: bool) -> Result<Tick, RunError> {
        loop {
            let Loaded { state, version } = self
                .store
                .load(&job.name)
                .await
                .map_err(|e| self.err(job, Step::Create, e))?;
            let mut s = Session {
                job,
                state,
                version,
            };
            let t = now();
            let Some(run) = s.state.run.clone() else {
                if !start {
                    return Ok(Tick::Idle);
                }
                start = false;
                let id = uuid::Uuid::new_v4().to_string();
                s.state.run = Some(Run::new(id.clone(), t));
                if self.save(&mut s, Step::Create).await? {
                    tracing::info!(job = %job.name, run = %id, "run started");
                }
                continue;
            };
            if let Some(c) = &run.claim
                && c.owner != self.owner
                && c.until > t
            {
                return Ok(Tick::Busy(c.owner.clone()));
            }
            match run.step {
                Step::Verify => {
                    let t0 = Instant::now();
                    let r = self.verify(&mut s, run).await;
                    metrics::histogram!(m::STEP_SECONDS, "rotation_job" => job.name.clone(), "step" => "verify")
                        .record(t0.elapsed().as_secs_f64());
                    match r? {
                        Some(tick) => return Ok(tick),
                        None => continue,
                    }
                }
                Step::Done => {
                    // A run is cleared when it reaches done; this only
                    // appears if a document was written by hand.
                    let run = run.clone();
                    if let Some(tick) = self.finish(&mut s, run).await? {
                        return Ok(tick);
                    }
                }
                step => {
                    if let Some(tick) = self.perform(&mut s, run, step).await? {
                        return Ok(tick);
                    }
                }
            }
        }
    }

    /// Write the session's state; `false` when another writer won (the
    /// caller reads again).
    async fn save(&self, s: &mut Session<'_>, step: Step) -> Result<bool, RunError> {
        match self
            .store
            .save(&s.job.name, &s.state, s.version)
            .await
            .map_err(|e| self.err(s.job, step, e))?
        {
            Saved::Ok(v) => {
                s.version = v;
                Ok(true)
            }
            Saved::Conflict => Ok(false),
        }
    }

    /// Save progress mid-step and renew the claim; an error when the claim
    /// was lost.
    async fn checkpoint(&self, s: &mut Session<'_>, run: &Run) -> Result<(), RunError> {
        let mut r = run.clone();
        r.claim = Some(Claim {
            owner: self.owner.clone(),
            until: now() + self.claim_ttl.as_secs() as i64,
        });
        s.state.run = Some(r);
        if self.save(s, run.step).await? {
            Ok(())
        } else {
            Err(self.err(s.job, run.step, Cause::ClaimLost))
        }
    }

    /// Claim `step`, perform it, advance. `Ok(None)`: read again.
    async fn perform(
        &self,
        s: &mut Session<'_>,
        mut run: Run,
        step: Step,
    ) -> Result<Option<Tick>, RunError> {
        run.claim = Some(Claim {
            owner: self.owner.clone(),
            until: now() + self.claim_ttl.as_secs() as i64,
        });
        s.state.run = Some(run.clone());
        if !self.save(s, step).await? {
            return Ok(None);
        }
        failpoint(step, "claimed");
        let t0 = Instant::now();
        let job = s.job;
        let result = match (&job.kind, step) {
            (
                JobKind::ApiKey {
                    secret, provider, ..
                },
                Step::Create,
            ) => self.api_create(job, secret, provider, &mut run).await,
            (
                JobKind::ApiKey {
                    secret,
                    provider,
                    field,
                },
                Step::Promote,
            ) => {
                self.api_promote(job, (secret, field), provider, &mut run)
                    .await
            }
            (
                JobKind::ApiKey {
                    secret, provider, ..
                },
                Step::Retire,
            ) => self.api_retire(job, secret, provider, &mut run).await,
            (JobKind::Kek { .. }, Step::Create) => self.kek_create(s, &mut run).await,
            (JobKind::Kek { .. }, Step::Promote) => self.kek_promote(s, &mut run).await,
            (JobKind::Kek { .. }, Step::Retire) => self.kek_retire(s, &mut run).await,
            (_, other) => Err(self.err(
                s.job,
                other,
                Cause::Invalid(format!("step {} has no action", other.as_str())),
            )),
        };
        metrics::histogram!(m::STEP_SECONDS, "rotation_job" => s.job.name.clone(), "step" => step.as_str())
            .record(t0.elapsed().as_secs_f64());
        let next = match result {
            Ok(next) => {
                failpoint(step, "effect");
                next
            }
            Err(e) => {
                metrics::counter!(m::STEP_ERRORS, "rotation_job" => s.job.name.clone(), "step" => step.as_str())
                    .increment(1);
                // Release the claim and leave the reason for `status`
                // (best effort: the error is what matters).
                if !matches!(e.cause, Cause::ClaimLost) {
                    run.claim = None;
                    run.last_error = Some(e.cause.to_string());
                    s.state.run = Some(run);
                    let _ = self.save(s, step).await;
                }
                return Err(e);
            }
        };
        tracing::info!(job = %s.job.name, run = %run.id, step = step.as_str(), next = next.as_str(), "step done");
        run.advance(next, now());
        if next == Step::Done {
            return self.finish(s, run).await;
        }
        s.state.run = Some(run);
        // Whether this write wins or our claim expired and someone else moved
        // on (their state wins), the caller reads again.
        self.save(s, step).await?;
        Ok(None)
    }

    /// Clear the finished run and record it.
    async fn finish(&self, s: &mut Session<'_>, run: Run) -> Result<Option<Tick>, RunError> {
        let t = now();
        let summary = RunSummary {
            id: run.id.clone(),
            started_at: run.started_at,
            finished_at: t,
            previous_version: run.previous_version,
            new_version: run.new_version.unwrap_or(run.previous_version),
        };
        s.state.run = None;
        s.state.last_run = Some(summary.clone());
        s.state.last_success = Some(t);
        s.state.runs_done += 1;
        if !self.save(s, Step::Done).await? {
            return Ok(None);
        }
        metrics::counter!(m::RUNS, "rotation_job" => s.job.name.clone(), "outcome" => "done")
            .increment(1);
        tracing::info!(job = %s.job.name, run = %run.id, "run done");
        Ok(Some(Tick::Done(summary)))
    }

    // ------------------------------------------------------------ api_key

    fn provider(
        &self,
        job: &JobConfig,
        step: Step,
        config: &ProviderConfig,
    ) -> Result<Provider, RunError> {
        Provider::from_config(config).map_err(|e| self.err(job, step, e))
    }

    /// The secret's mount must be KV version 2.
    async fn check_kv2(&self, job: &JobConfig, step: Step, p: &KvPath) -> Result<(), RunError> {
        let mount = self
            .api
            .mount_of(&p.to_string())
            .await
            .map_err(|e| self.err(job, step, e))?;
        match mount {
            Some((path, ty, version))
                if path.trim_end_matches('/') == p.mount
                    && (ty == "kv" || ty == "kv-v2")
                    && version == "2" => Ok(()),
            Some((path, ty, version)) => Err(self.err(
                job,
                step,
                Cause::Invalid(format!(
                    "{p} is not in a KV version 2 mount named {:?} (found mount {path:?} of type {ty:?} version {version:?})",
                    p.mount
                )),
            )),
            None => Err(self.err(
                job,
                step,
                Cause::Invalid(format!("{p}: no mount {:?} on the server", p.mount)),
            )),
        }
    }

    async fn api_create(
        &self,
        job: &JobConfig,
        secret: &KvPath,
        provider: &ProviderConfig,
        run: &mut Run,
    ) -> Result<Step, RunError> {
        self.check_kv2(job, Step::Create, secret).await?;
        // The previous credential: the secret's current version (the
        // promote step is the only thing that moves it, and it comes after).
        let prev = self
            .api
            .kv_current_version(secret)
            .await
            .map_err(|e| self.err(job, Step::Create, e))?;
        run.previous_version = prev;
        run.previous_key_id = if prev > 0 {
            self.api
                .kv_read(secret, Some(prev))
                .await
                .map_err(|e| self.err(job, Step::Create, e))?
                .and_then(|v| {
                    v.data
                        .get("key_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        } else {
            None
        };
        let provider = self.provider(job, Step::Create, provider)?;
        let cred = provider
            .create(&job.name, &run.id)
            .await
            .map_err(|e| self.err(job, Step::Create, e))?;
        provider
            .test(&cred)
            .await
            .map_err(|e| self.err(job, Step::Create, e))?;
        run.new_key_id = Some(cred.id.clone());
        Ok(Step::Promote)
    }

    async fn api_promote(
        &self,
        job: &JobConfig,
        (secret, field): (&KvPath, &str),
        provider: &ProviderConfig,
        run: &mut Run,
    ) -> Result<Step, RunError> {
        let provider = self.provider(job, Step::Promote, provider)?;
        // The provider's create is idempotent per run id: this returns the
        // key made in `create` (an `http` issuer hands back the same one).
        let cred = provider
            .create(&job.name, &run.id)
            .await
            .map_err(|e| self.err(job, Step::Promote, e))?;
        if run.new_key_id.as_deref() != Some(cred.id.as_str()) {
            return Err(self.err(
                job,
                Step::Promote,
                Cause::Invalid(format!(
                    "the provider returned key {:?} for this run, not {:?}: it does not honour Idempotency-Key",
                    cred.id,
                    run.new_key_id.as_deref().unwrap_or_default()
                )),
            ));
        }
        let mut data = serde_json::Map::new();
        data.insert(
            field.to_owned(),
            Value::String(cred.secret.as_str().to_owned()),
        );
        data.insert("key_id".into(), Value::String(cred.id.clone()));
        let data = Value::Object(data);
        let promoted_at = now();
        let mut cas = run.previous_version;
        let version = loop {
            match self.api.kv_write_cas(secret, &data, cas).await {
                Ok(v) => break v,
                Err(ApiError::CasConflict { .. }) => {
                    let cur = self
                        .api
                        .kv_read(secret, None)
                        .await
                        .map_err(|e| self.err(job, Step::Promote, e))?;
                    let cur_version = match &cur {
                        Some(c) => c.version,
                        None => self
                            .api
                            .kv_current_version(secret)
                            .await
                            .map_err(|e| self.err(job, Step::Promote, e))?,
                    };
                    let cur_id = cur
                        .as_ref()
                        .and_then(|c| c.data.get("key_id"))
                        .and_then(Value::as_str);
                    if cur_id == Some(cred.id.as_str()) {
                        // Our own write, from before a crash.
                        break cur_version;
                    }
                    if cur_version == cas {
                        return Err(self.err(
                            job,
                            Step::Promote,
                            Cause::Invalid("check-and-set conflict on an unchanged version".into()),
                        ));
                    }
                    // Someone wrote the secret outside the rotator since
                    // `create`: that version is now the one to retire.
                    tracing::warn!(job = %job.name, version = cur_version, "secret written outside the rotator during the run; it becomes the previous version");
                    run.previous_version = cur_version;
                    run.previous_key_id = cur_id.map(str::to_owned);
                    cas = cur_version;
                }
                Err(e) => return Err(self.err(job, Step::Promote, e)),
            }
        };
        run.new_version = Some(version);
        run.promoted_at = Some(promoted_at);
        drop(cred);
        if run.previous_version == 0 {
            // The first credential: nothing to move from, nothing to retire.
            return Ok(Step::Done);
        }
        Ok(Step::Verify)
    }

    async fn api_retire(
        &self,
        job: &JobConfig,
        secret: &KvPath,
        provider: &ProviderConfig,
        run: &mut Run,
    ) -> Result<Step, RunError> {
        let provider = self.provider(job, Step::Retire, provider)?;
        if let Some(id) = &run.previous_key_id {
            provider
                .revoke(id)
                .await
                .map_err(|e| self.err(job, Step::Retire, e))?;
        }
        if run.previous_version > 0 {
            self.api
                .kv_destroy(secret, &[run.previous_version])
                .await
                .map_err(|e| self.err(job, Step::Retire, e))?;
        }
        Ok(Step::Done)
    }

    // ------------------------------------------------------------ kek

    fn kek_parts(job: &JobConfig) -> Option<(&str, &str, &KvPath, &str, usize, usize)> {
        match &job.kind {
            JobKind::Kek {
                transit_mount,
                key,
                dek_prefix,
                dek_field,
                batch_size,
                concurrency,
            } => Some((
                transit_mount,
                key,
                dek_prefix,
                dek_field,
                *batch_size,
                *concurrency,
            )),
            JobKind::ApiKey { .. } => None,
        }
    }

    async fn kek_create(&self, s: &mut Session<'_>, run: &mut Run) -> Result<Step, RunError> {
        let job = s.job;
        let Some((mount, key, ..)) = Self::kek_parts(job) else {
            return Err(self.err(job, Step::Create, Cause::Invalid("not a kek job".into())));
        };
        let read = || async {
            self.api
                .transit_key(mount, key)
                .await
                .map_err(|e| self.err(job, Step::Create, e))?
                .ok_or_else(|| {
                    self.err(
                        job,
                        Step::Create,
                        Cause::Invalid(format!("transit key {mount}/{key} does not exist")),
                    )
                })
        };
        let (latest, _) = read().await?;
        if run.previous_version == 0 {
            // Record the version we rotate from before rotating, so a
            // replay after a crash does not rotate twice.
            run.previous_version = latest;
            self.checkpoint(s, run).await?;
        }
        let latest = if latest == run.previous_version {
            self.api
                .post(&format!("{mount}/keys/{key}/rotate"), &json!({}))
                .await
                .map_err(|e| self.err(job, Step::Create, e))?;
            read().await?.0
        } else {
            latest
        };
        if latest <= run.previous_version {
            return Err(self.err(
                job,
                Step::Create,
                Cause::Invalid(format!(
                    "transit key {mount}/{key} is at version {latest} after rotating from {}",
                    run.previous_version
                )),
            ));
        }
        run.new_version = Some(latest);
        Ok(Step::Promote)
    }

    async fn kek_promote(&self, s: &mut Session<'_>, run: &mut Run) -> Result<Step, RunError> {
        let job = s.job;
        let Some((mount, key, prefix, field, batch, parallel)) = Self::kek_parts(job) else {
            return Err(self.err(job, Step::Promote, Cause::Invalid("not a kek job".into())));
        };
        let new = run.new_version.unwrap_or(0);
        let transit =
            custos_envelope::TransitClient::new(self.api.address(), self.api.token(), mount)
                .map_err(|e| self.err(job, Step::Promote, Cause::Invalid(e.to_string())))?;
        let names = self
            .api
            .kv_list_recursive(prefix)
            .await
            .map_err(|e| self.err(job, Step::Promote, e))?;
        let mut done = 0u64;
        for chunk in names.chunks(batch) {
            let moved = self
                .rewrap_chunk(job, &transit, (key, prefix, field, parallel), new, chunk)
                .await?;
            done += moved;
            run.rewrapped = done;
            self.checkpoint(s, run).await?;
        }
        run.promoted_at = Some(now());
        Ok(Step::Verify)
    }

    /// Rewrap the records `names` whose wrapped DEK is older than `new`;
    /// each is written back with check-and-set, and re-read and redone when
    /// an application wrote it meanwhile. Returns how many moved.
    async fn rewrap_chunk(
        &self,
        job: &JobConfig,
        transit: &custos_envelope::TransitClient,
        (key, prefix, field, parallel): (&str, &KvPath, &str, usize),
        new: u64,
        names: &[String],
    ) -> Result<u64, RunError> {
        let err = |e: ApiError| self.err(job, Step::Promote, e);
        let mut pending: Vec<String> = names.to_vec();
        let mut moved = 0u64;
        for _attempt in 0..5 {
            if pending.is_empty() {
                break;
            }
            // Read every pending record.
            let reads: Vec<_> = futures::stream::iter(pending.iter().cloned())
                .map(|n| async move {
                    let p = prefix.child(&n);
                    self.api.kv_read(&p, None).await.map(|r| (n, p, r))
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            let mut stale = Vec::new();
            for r in reads {
                let (n, p, rec) = r.map_err(err)?;
                let Some(rec) = rec else { continue };
                let Some(wrapped) = rec
                    .data
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                else {
                    continue;
                };
                let version = key_version(&wrapped).unwrap_or(0);
                if version < new {
                    stale.push((n, p, rec, wrapped));
                }
            }
            if stale.is_empty() {
                break;
            }
            let cts: Vec<&str> = stale.iter().map(|(_, _, _, w)| w.as_str()).collect();
            let rewrapped = transit
                .rewrap_batch(key, &cts)
                .await
                .map_err(|e| self.err(job, Step::Promote, Cause::Invalid(e.to_string())))?;
            let writes: Vec<_> = futures::stream::iter(stale.into_iter().zip(rewrapped))
                .map(|((n, p, rec, _), ct)| async move {
                    let ct = match ct {
                        Ok(ct) => ct,
                        Err(e) => return Err(Cause::Invalid(format!("rewrap of record {n}: {e}"))),
                    };
                    let mut data = rec.data.clone();
                    data.insert(field.to_owned(), Value::String(ct));
                    match self
                        .api
                        .kv_write_cas(&p, &Value::Object(data), rec.version)
                        .await
                    {
                        Ok(_) => Ok((n, true)),
                        Err(ApiError::CasConflict { .. }) => Ok((n, false)),
                        Err(e) => Err(Cause::Api(e)),
                    }
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            pending.clear();
            for w in writes {
                match w.map_err(|c| self.err(job, Step::Promote, c))? {
                    (_, true) => moved += 1,
                    (n, false) => pending.push(n),
                }
            }
        }
        if !pending.is_empty() {
            return Err(self.err(
                job,
                Step::Promote,
                Cause::Api(ApiError::Status {
                    path: prefix.to_string(),
                    status: 409,
                    errors: vec![format!(
                        "{} records kept changing while being rewrapped; will retry",
                        pending.len()
                    )],
                }),
            ));
        }
        Ok(moved)
    }

    async fn kek_retire(&self, s: &mut Session<'_>, run: &mut Run) -> Result<Step, RunError> {
        let job = s.job;
        let Some((mount, key, ..)) = Self::kek_parts(job) else {
            return Err(self.err(job, Step::Retire, Cause::Invalid("not a kek job".into())));
        };
        let new = run.new_version.unwrap_or(0);
        self.api
            .post(
                &format!("{mount}/keys/{key}/config"),
                &json!({ "min_decryption_version": new }),
            )
            .await
            .map_err(|e| self.err(job, Step::Retire, e))?;
        Ok(Step::Done)
    }

    // ------------------------------------------------------------ verify

    /// Check the consumers; `Ok(None)` to read again (the run advanced or a
    /// write raced), else the tick's answer.
    async fn verify(&self, s: &mut Session<'_>, mut run: Run) -> Result<Option<Tick>, RunError> {
        let job = s.job;
        let t = now();
        let promoted_at = run.promoted_at.unwrap_or(run.step_started_at);
        let new = run.new_version.unwrap_or(0);
        let err = |e: ApiError| self.err(job, Step::Verify, e);
        let (consumers, undeclared) = match &job.kind {
            JobKind::ApiKey { secret, .. } => {
                let moved = self
                    .api
                    .audit_query(&[
                        ("path", secret.data()),
                        ("since", promoted_at.to_string()),
                        ("min_version", new.to_string()),
                        ("limit", "100000".into()),
                    ])
                    .await
                    .map_err(err)?;
                let mut progress = api_key_progress(&job.consumers, &moved, &Value::Null, new);
                // Who has not moved: when did it last read, has it ever?
                if progress.values().any(|p| !p.moved) {
                    let ever = self
                        .api
                        .audit_query(&[("path", secret.data()), ("limit", "100000".into())])
                        .await
                        .map_err(err)?;
                    progress = api_key_progress(&job.consumers, &moved, &ever, new);
                }
                (progress, Vec::new())
            }
            JobKind::Kek {
                transit_mount, key, ..
            } => {
                let path = format!("{transit_mount}/decrypt/{key}");
                let since = promoted_at.max(t - job.grace.as_secs() as i64);
                let old = self
                    .api
                    .audit_query(&[
                        ("path", path.clone()),
                        ("operation", "update".into()),
                        ("since", since.to_string()),
                        ("max_key_version", new.saturating_sub(1).to_string()),
                        ("limit", "100000".into()),
                    ])
                    .await
                    .map_err(err)?;
                let ever = self
                    .api
                    .audit_query(&[
                        ("path", path),
                        ("operation", "update".into()),
                        ("limit", "100000".into()),
                    ])
                    .await
                    .map_err(err)?;
                kek_progress(&job.consumers, &old, &ever)
            }
        };
        let pending: Vec<String> = consumers
            .iter()
            .filter(|(_, p)| !p.moved)
            .map(|(n, _)| n.clone())
            .chain(undeclared.iter().map(|u| format!("{u} (undeclared)")))
            .collect();
        for (n, p) in &consumers {
            let known = run.consumers.get(n).is_some_and(|old| !old.seen);
            if !p.seen && !p.moved && !known {
                tracing::warn!(job = %job.name, consumer = %n, "consumer never seen in the audit log: check its name (display name, role or entity)");
            }
        }
        let grace_over = t >= promoted_at + job.grace.as_secs() as i64;
        let deadline_over = t >= promoted_at + job.deadline.as_secs() as i64;
        let outcome = if pending.is_empty() && grace_over {
            run.advance(Step::Retire, t);
            run.held_since = None;
            None
        } else if !pending.is_empty() && deadline_over {
            if run.held_since.is_none() {
                run.held_since = Some(t);
                metrics::counter!(m::RUNS, "rotation_job" => job.name.clone(), "outcome" => "held")
                    .increment(1);
                tracing::warn!(job = %job.name, run = %run.id, pending = ?pending, "deadline passed: holding the old credential");
            }
            Some(Tick::Held(pending.clone()))
        } else if pending.is_empty() {
            Some(Tick::Waiting(format!(
                "every consumer moved; grace ends in {}s",
                promoted_at + job.grace.as_secs() as i64 - t
            )))
        } else {
            Some(Tick::Waiting(format!(
                "waiting for {} (deadline in {}s)",
                pending.join(", "),
                promoted_at + job.deadline.as_secs() as i64 - t
            )))
        };
        let changed = run.consumers != consumers
            || run.undeclared != undeclared
            || outcome.is_none()
            || s.state.run.as_ref().map(|r| r.held_since) != Some(run.held_since);
        run.consumers = consumers;
        run.undeclared = undeclared;
        if changed {
            s.state.run = Some(run);
            if !self.save(s, Step::Verify).await? {
                return Ok(None);
            }
        }
        Ok(outcome)
    }
}

/// The KEK version of a transit ciphertext `vault:vN:...`.
pub fn key_version(ct: &str) -> Option<u64> {
    ct.strip_prefix("vault:v")?.split_once(':')?.0.parse().ok()
}

/// Whether an audit-query client is the consumer `name`: its display name
/// (with or without Vault's `token-` prefix), its auth role, or its entity.
pub fn client_is(name: &str, client: &Value) -> bool {
    let field = |k: &str| client.get(k).and_then(Value::as_str).unwrap_or_default();
    let dn = field("display_name");
    dn == name
        || dn.strip_prefix("token-") == Some(name)
        || field("role") == name
        || field("entity_id") == name
        || field("entity_name") == name
}

fn clients(answer: &Value) -> &[Value] {
    answer["clients"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn unix_of(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|d| d.timestamp())
}

/// api_key: a consumer moved when it read version ≥ new since promotion.
fn api_key_progress(
    consumers: &[String],
    moved: &Value,
    ever: &Value,
    new: u64,
) -> BTreeMap<String, ConsumerProgress> {
    consumers
        .iter()
        .map(|name| {
            let on_new = clients(moved)
                .iter()
                .filter(|c| client_is(name, c))
                .filter(|c| c["max_version"].as_u64().is_some_and(|v| v >= new));
            let first_new = on_new
                .clone()
                .filter_map(|c| c["first_read"].as_str().and_then(unix_of))
                .min();
            let version = on_new.filter_map(|c| c["max_version"].as_u64()).max();
            let seen_clients: Vec<&Value> = clients(ever)
                .iter()
                .filter(|c| client_is(name, c))
                .collect();
            let last_read = seen_clients
                .iter()
                .filter_map(|c| c["last_read"].as_str().and_then(unix_of))
                .max();
            let moved = version.is_some();
            (
                name.clone(),
                ConsumerProgress {
                    moved,
                    since: if moved { first_new } else { last_read },
                    seen: moved || !seen_clients.is_empty(),
                    version,
                },
            )
        })
        .collect()
}

/// kek: a consumer moved when it made no decrypt under an old key version
/// in the window; clients outside `consumers` that did are returned too.
fn kek_progress(
    consumers: &[String],
    old: &Value,
    ever: &Value,
) -> (BTreeMap<String, ConsumerProgress>, Vec<String>) {
    let progress = consumers
        .iter()
        .map(|name| {
            let on_old: Vec<&Value> = clients(old).iter().filter(|c| client_is(name, c)).collect();
            let last_old = on_old
                .iter()
                .filter_map(|c| c["last_read"].as_str().and_then(unix_of))
                .max();
            let seen = !on_old.is_empty() || clients(ever).iter().any(|c| client_is(name, c));
            (
                name.clone(),
                ConsumerProgress {
                    moved: on_old.is_empty(),
                    since: last_old,
                    seen,
                    version: None,
                },
            )
        })
        .collect();
    let mut undeclared: Vec<String> = clients(old)
        .iter()
        .filter(|c| !consumers.iter().any(|n| client_is(n, c)))
        .map(|c| {
            let dn = c["display_name"].as_str().unwrap_or_default();
            if dn.is_empty() {
                c["remote_address"].as_str().unwrap_or("unknown").to_owned()
            } else {
                dn.to_owned()
            }
        })
        .collect();
    undeclared.sort();
    undeclared.dedup();
    (progress, undeclared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_matching() {
        let c = json!({"display_name": "token-payments-svc", "role": "", "entity_id": ""});
        assert!(client_is("payments-svc", &c));
        assert!(client_is("token-payments-svc", &c));
        assert!(!client_is("payments", &c));
        let r = json!({"display_name": "approle", "role": "billing-worker"});
        assert!(client_is("billing-worker", &r));
    }

    #[test]
    fn api_key_progress_marks_moved_pending_and_never_seen() {
        let moved = json!({"clients": [
            {"display_name": "token-a", "max_version": 5, "first_read": "2026-12-06T10:00:05Z", "last_read": "2026-12-06T10:00:09Z"},
            {"display_name": "token-b", "max_version": 4, "first_read": "2026-12-06T10:00:05Z", "last_read": "2026-12-06T10:00:05Z"}
        ]});
        let ever = json!({"clients": [
            {"display_name": "token-a", "max_version": 5, "last_read": "2026-12-06T10:00:09Z"},
            {"display_name": "token-b", "max_version": 4, "last_read": "2026-12-06T09:00:00Z"}
        ]});
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let p = api_key_progress(&names, &moved, &ever, 5);
        assert!(p["a"].moved && p["a"].seen);
        assert_eq!(p["a"].version, Some(5));
        assert_eq!(p["a"].since, unix_of("2026-12-06T10:00:05Z"));
        assert!(!p["b"].moved && p["b"].seen);
        assert_eq!(p["b"].since, unix_of("2026-12-06T09:00:00Z"));
        assert!(!p["c"].moved && !p["c"].seen);
    }

    #[test]
    fn kek_progress_names_old_key_users() {
        let old = json!({"clients": [
            {"display_name": "token-orders-svc", "last_read": "2026-12-06T10:00:00Z"},
            {"display_name": "token-stranger", "last_read": "2026-12-06T10:00:00Z"}
        ]});
        let ever = json!({"clients": [{"display_name": "token-reports"}]});
        let names = vec!["orders-svc".to_string(), "reports".to_string()];
        let (p, undeclared) = kek_progress(&names, &old, &ever);
        assert!(!p["orders-svc"].moved);
        assert!(p["reports"].moved && p["reports"].seen);
        assert_eq!(undeclared, ["token-stranger"]);
    }

    #[test]
    fn ciphertext_versions() {
        assert_eq!(key_version("vault:v12:abc"), Some(12));
        assert_eq!(key_version("vault:x"), None);
    }
}
