//! custos-rotator: scheduled rotation of API keys and KEKs that retires an
//! old credential only after the audit log proves every consumer has moved.
//!
//! The rotator is an ordinary, least-privilege HTTP client of any Custos
//! node (it never links the server): its token gets exactly the policy
//! `custos rotator policy` prints.
//!
//! Data flow: `rotator.hcl` ([`config`]) → jobs on cron schedules
//! ([`schedule`], [`daemon::serve`]) or one run now ([`daemon::run_once`]) →
//! the run engine ([`engine`]) reads and writes each job's run state in
//! Custos KV v2 with check-and-set ([`state`]), makes credentials at a
//! provider ([`provider`]: `random` or a team's `http` issuer), writes them
//! as new KV versions or rotates a transit key and rewraps the wrapped DEKs
//! under a prefix, asks `sys/audit-query` which consumers read the new
//! version (or still decrypt under the old key), and only then revokes the
//! old credential and destroys its KV version (or raises
//! `min_decryption_version`). [`status`] and [`metrics`] report it;
//! [`policy`] prints the ACL the token needs.

pub mod api;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod metrics;
pub mod policy;
pub mod provider;
pub mod schedule;
pub mod state;
pub mod status;

pub use config::{ConfigError, JobConfig, RotatorConfig};
pub use engine::{Engine, RunError, Tick};

/// An engine for `cfg`: the API client (token from `token_file` or
/// `VAULT_TOKEN`) and the state store under `state_path`.
pub fn engine_for(cfg: &RotatorConfig) -> Result<Engine, api::ApiError> {
    let api = api::Api::from_settings(&cfg.server)?;
    let store = state::StateStore::new(api.clone(), cfg.state_path.clone());
    Ok(Engine::new(api, store, cfg.claim_ttl, cfg.retry_for))
}
