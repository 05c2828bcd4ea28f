//! A job's run state, kept in Custos itself as one KV v2 secret per job
//! (`<state_path>/<job>`), so that any rotator process can resume any run
//! and two processes never both perform a step.
//!
//! Every change is a check-and-set write against the version that was read
//! ([`StateStore::save`]); a writer that lost the race gets
//! [`Saved::Conflict`], reads again and carries on from what the winner
//! wrote. Before a step with an effect outside the state (a provider call, a
//! KV write, a transit call) the engine first writes a [`Claim`] naming
//! itself; another process honours an unexpired claim, and a claim left by a
//! crashed process expires after `claim_ttl`.
//!
//! The document holds no secret: only versions, provider key ids, times,
//! consumer progress and the last error (messages name paths, never values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Api, ApiError, ApiResult};
use crate::config::KvPath;

/// The steps of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The provider makes the new credential (api_key), or transit rotates
    /// the key (kek).
    Create,
    /// The new credential is written as the next KV version (api_key), or
    /// every wrapped DEK is rewrapped under the new key version (kek).
    Promote,
    /// Waiting for every consumer to move, and for `grace`.
    Verify,
    /// The old credential is revoked and its KV version destroyed (api_key),
    /// or `min_decryption_version` is raised (kek).
    Retire,
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Promote => "promote",
            Step::Verify => "verify",
            Step::Retire => "retire",
            Step::Done => "done",
        }
    }
}

/// Who is performing a step, and until when others must wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: String,
    /// Unix seconds.
    pub until: i64,
}

/// One consumer's progress in `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerProgress {
    /// Has moved to the new credential (api_key: read version ≥ new; kek: no
    /// decrypt under an old key version inside the grace window).
    pub moved: bool,
    /// Unix seconds: when it was first seen on the new credential, or, for a
    /// consumer not moved, the last time it used the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// The audit log has ever shown this consumer (a name never seen is
    /// probably misspelled).
    pub seen: bool,
    /// Highest version it read since promotion (api_key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// An unfinished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub step: Step,
    /// Unix seconds.
    pub started_at: i64,
    pub step_started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// The credential's version before this run (KV version or transit key
    /// version); 0 when there was none.
    #[serde(default)]
    pub previous_version: u64,
    /// The previous credential's id at its provider (api_key, http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// The new credential's id at its provider (api_key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key_id: Option<String>,
    /// The new KV version or transit key version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<i64>,
    /// Set when `deadline` passed with consumers not moved (`on_stuck =
    /// "hold"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<i64>,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerProgress>,
    /// Clients outside `consumers` still on the old credential (kek).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeclared: Vec<String>,
    /// DEK records rewrapped so far (kek).
    #[serde(default)]
    pub rewrapped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Run {
    pub fn new(id: String, now: i64) -> Run {
        Run {
            id,
            step: Step::Create,
            started_at: now,
            step_started_at: now,
            claim: None,
            previous_version: 0,
            previous_key_id: None,
            new_key_id: None,
            new_version: None,
            promoted_at: None,
            held_since: None,
            consumers: BTreeMap::new(),
            undeclared: Vec::new(),
            rewrapped: 0,
            last_error: None,
        }
    }

    /// Move to `step`, dropping the claim.
    pub fn advance(&mut self, step: Step, now: i64) {
        self.step = step;
        self.step_started_at = now;
        self.claim = None;
        self.last_error = None;
    }
}

/// How a finished run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub previous_version: u64,
    pub new_version: u64,
}

/// The whole document of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunSummary>,
    /// Unix seconds of the last run that reached `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
    #[serde(default)]
    pub runs_done: u64,
}

/// A state read, with the KV version to check-and-set against.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: JobState,
    /// 0 when the document does not exist yet.
    pub version: u64,
}

pub enum Saved {
    /// Written; the document's new version.
    Ok(u64),
    /// Someone else wrote first: read again.
    Conflict,
}

/// Where the job documents live.
#[derive(Clone, Debug)]
pub struct StateStore {
    api: Api,
    base: KvPath,
}

impl StateStore {
    pub fn new(api: Api, base: KvPath) -> StateStore {
        StateStore { api, base }
    }

    pub fn path_of(&self, job: &str) -> KvPath {
        self.base.child(job)
    }

    pub async fn load(&self, job: &str) -> ApiResult<Loaded> {
        let p = self.path_of(job);
        match self.api.kv_read(&p, None).await? {
            None => Ok(Loaded {
                state: JobState::default(),
                // A deleted (not destroyed) latest version reads as absent
                // but still counts for check-and-set.
                version: self.api.kv_current_version(&p).await?,
            }),
            Some(v) => {
                let state: JobState = serde_json::from_value(Value::Object(
                    v.data
                        .get("state")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                ))
                .map_err(|e| ApiError::Malformed {
                    path: p.data(),
                    message: format!("run state does not parse: {e}"),
                })?;
                Ok(Loaded {
                    state,
                    version: v.version,
                })
            }
        }
    }

    pub async fn save(&self, job: &str, state: &JobState, cas: u64) -> ApiResult<Saved> {
        let p = self.path_of(job);
        let doc = serde_json::json!({ "state": state });
        match self.api.kv_write_cas(&p, &doc, cas).await {
            Ok(v) => Ok(Saved::Ok(v)),
            Err(ApiError::CasConflict { .. }) => Ok(Saved::Conflict),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_tolerates_missing_fields() {
        let mut s = JobState::default();
        let mut r = Run::new("r1".into(), 100);
        r.consumers.insert(
            "a".into(),
            ConsumerProgress {
                moved: true,
                since: Some(120),
                seen: true,
                version: Some(4),
            },
        );
        r.advance(Step::Verify, 110);
        s.run = Some(r);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["run"]["step"], "verify");
        let back: JobState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        let minimal: JobState = serde_json::from_str(
            r#"{"run":{"id":"x","step":"create","started_at":1,"step_started_at":1}}"#,
        )
        .unwrap();
        assert_eq!(minimal.run.unwrap().previous_version, 0);
        assert!(Step::Create < Step::Retire);
    }
}
