//! Login lockout, as Vault 1.13+ does it for userpass and AppRole: after
//! `lockout_threshold` failed logins of one alias (a username, a role id)
//! within `lockout_counter_reset`, the alias is locked for
//! `lockout_duration`; its logins are refused with `permission denied`
//! before the credentials are even checked, so a locked account cannot be
//! used to probe passwords.
//!
//! Failures are counted in memory on the node that serves logins (the
//! active one: standbys forward). A lock is also written under the barrier
//! at `sys/locked-users/<mount accessor>/<alias>`, so it survives a restart
//! or a failover and is listed by `GET sys/locked-users`; `POST
//! sys/locked-users/:accessor/unlock/:alias` lifts it. Settings come from a
//! mount's tune (`user_lockout_config`), else Vault's defaults (5 failures,
//! 15 minutes, 15 minutes).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::metrics as m;
use crate::router::MountEntry;
use crate::storage::StorageView;

/// Mount types lockout applies to (Vault's list, less LDAP which Custos
/// does not serve).
pub const LOCKOUT_TYPES: &[&str] = &["userpass", "approle"];

/// A mount's `user_lockout_config` (tune), every field optional: unset
/// ones take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutTune {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_counter_reset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_disable: Option<bool>,
}

/// Effective settings for one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub threshold: u64,
    pub duration: i64,
    pub counter_reset: i64,
    pub disabled: bool,
}

impl LockoutPolicy {
    pub const DEFAULT: LockoutPolicy = LockoutPolicy {
        threshold: 5,
        duration: 15 * 60,
        counter_reset: 15 * 60,
        disabled: false,
    };

    /// The policy of `mount`: Vault's defaults overlaid with its tune;
    /// disabled for mount types lockout does not cover.
    pub fn of(mount: &MountEntry) -> LockoutPolicy {
        let mut p = Self::DEFAULT;
        if !LOCKOUT_TYPES.contains(&mount.mount_type.as_str()) {
            p.disabled = true;
            return p;
        }
        if let Some(t) = &mount.config.user_lockout_config {
            if let Some(v) = t.lockout_threshold {
                p.threshold = v;
            }
            if let Some(v) = t.lockout_duration {
                p.duration = v;
            }
            if let Some(v) = t.lockout_counter_reset {
                p.counter_reset = v;
            }
            if let Some(v) = t.lockout_disable {
                p.disabled = v;
            }
        }
        // A threshold of 0 would lock everyone out on no failure at all.
        if p.threshold == 0 {
            p.disabled = true;
        }
        p
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u64,
    last: i64,
}

#[derive(Serialize, Deserialize)]
struct LockRecord {
    locked_at: i64,
}

/// The lockout table of one unsealed core.
pub struct Lockout {
    /// `sys/locked-users/`.
    view: StorageView,
    failures: Mutex<HashMap<(String, String), Failures>>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Lockout {
    pub fn new(view: StorageView) -> Self {
        Lockout {
            view,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn key(accessor: &str, alias: &str) -> String {
        format!("{accessor}/{alias}")
    }

    /// Is `alias` on `mount` locked now? An expired lock is lifted here.
    pub async fn is_locked(
        &self,
        mount: &MountEntry,
        alias: &str,
        p: LockoutPolicy,
    ) -> Result<bool> {
        if p.disabled {
            return Ok(false);
        }
        let t = now();
        let k = (mount.accessor.clone(), alias.to_string());
        let counted = self
            .failures
            .lock()
            .map(|f| f.get(&k).copied())
            .unwrap_or(None);
        if let Some(f) = counted
            && f.count >= p.threshold
            && t - f.last < p.duration
        {
            return Ok(true);
        }
        let stored = Self::key(&mount.accessor, alias);
        match self.view.get_json::<LockRecord>(&stored).await? {
            Some(r) if t - r.locked_at < p.duration => Ok(true),
            Some(_) => {
                self.view.delete(&stored).await?;
                self.forget(&mount.accessor, alias);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Count a failed login; at the threshold the alias is locked.
    pub async fn failed(&self, mount: &MountEntry, alias: &str, p: LockoutPolicy) -> Result<()> {
        if p.disabled {
            return Ok(());
        }
        let t = now();
        let count = {
            let Ok(mut table) = self.failures.lock() else {
                return Ok(());
            };
            let f = table
                .entry((mount.accessor.clone(), alias.to_string()))
                .or_insert(Failures { count: 0, last: t });
            if t - f.last >= p.counter_reset {
                f.count = 0;
            }
            f.count += 1;
            f.last = t;
            f.count
        };
        if count == p.threshold {
            self.view
                .put_json(
                    &Self::key(&mount.accessor, alias),
                    &LockRecord { locked_at: t },
                )
                .await?;
            m::counter_inc(
                m::AUTH_LOCKOUTS,
                &[("mount_type", mount.mount_type.clone())],
            );
            tracing::warn!(
                mount = %mount.path,
                threshold = p.threshold,
                duration_secs = p.duration,
                "login locked out after repeated failures"
            );
        }
        Ok(())
    }

    /// A successful login clears the alias's failures.
    pub fn succeeded(&self, mount: &MountEntry, alias: &str) {
        self.forget(&mount.accessor, alias);
    }

    fn forget(&self, accessor: &str, alias: &str) {
        if let Ok(mut table) = self.failures.lock() {
            table.remove(&(accessor.to_string(), alias.to_string()));
        }
    }

    /// `POST sys/locked-users/:accessor/unlock/:alias`.
    pub async fn unlock(&self, accessor: &str, alias: &str) -> Result<()> {
        self.view.delete(&Self::key(accessor, alias)).await?;
        self.forget(accessor, alias);
        Ok(())
    }

    /// `GET sys/locked-users[?mount_accessor=]`, shaped as Vault's (one
    /// namespace, the root).
    pub async fn list(&self, only: Option<&str>) -> Result<Map<String, Value>> {
        let accessors: Vec<String> = match only {
            Some(a) if !a.is_empty() => vec![a.to_string()],
            _ => self
                .view
                .list("")
                .await?
                .into_iter()
                .map(|a| a.trim_end_matches('/').to_string())
                .collect(),
        };
        let mut by_mount = Vec::new();
        let mut total = 0;
        for a in accessors {
            let aliases = self.view.list(&format!("{a}/")).await?;
            total += aliases.len();
            by_mount.push((aliases.len(), a, aliases));
        }
        by_mount.sort_by_key(|m| std::cmp::Reverse(m.0));
        let mounts: Vec<Value> = by_mount
            .into_iter()
            .map(|(n, a, aliases)| {
                json!({"mount_accessor": a, "counts": n, "alias_identifiers": aliases})
            })
            .collect();
        let mut out = Map::new();
        out.insert(
            "by_namespace".into(),
            json!([{"namespace_id": "root", "namespace_path": "", "counts": total, "mount_accessors": mounts}]),
        );
        out.insert("total".into(), total.into());
        Ok(out)
    }
}
