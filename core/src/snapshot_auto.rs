//! `sys/storage/raft/snapshot-auto/...`: automated snapshot configurations,
//! Vault Enterprise's API.
//!
//! Configurations come in through the `sys/` backend (token, ACL with
//! `sudo`, audit, as any request) and live in replicated storage under
//! [`CONFIG_PREFIX`]`<name>`, barrier-encrypted, so every node holds the
//! same set and a new active node finds them. What a configuration means —
//! its fields, destinations, schedules, shipping and retention — belongs to
//! the snapshot agent (`custos-dr`), which the `custos` binary registers
//! here ([`Core::set_snapshot_agent`]); core never depends on it. The agent
//! checks each write ([`SnapshotAgent::normalize`]), is told of every change
//! ([`SnapshotAgent::changed`]), reads the stored set with [`load_configs`],
//! takes snapshots through [`crate::raft_snapshot::export`] on the active
//! node, and answers `status/:name`. Without an agent (a core embedded in a
//! test) writes are refused with a 400 saying so.

use serde_json::{Map, Value};

use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::storage::StorageView;

/// Where configurations are stored (through the barrier).
pub const CONFIG_PREFIX: &str = "core/raft/snapshot-auto/config/";

/// Fields Vault's API accepts on `config/:name` (beyond Vault: `schedule`,
/// `timezone` and the `copy_to_*` second destination).
pub const CONFIG_FIELDS: &[&str] = &[
    "interval",
    "schedule",
    "timezone",
    "retain",
    "path_prefix",
    "file_prefix",
    "storage_type",
    "local_max_space",
    "aws_s3_bucket",
    "aws_s3_region",
    "aws_s3_endpoint",
    "aws_s3_disable_tls",
    "aws_s3_force_path_style",
    "aws_s3_enable_kms",
    "aws_s3_kms_key",
    "aws_s3_server_side_encryption",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "copy_to_path_prefix",
    "copy_to_aws_s3_bucket",
    "copy_to_aws_s3_region",
    "copy_to_aws_s3_endpoint",
    "copy_to_aws_s3_disable_tls",
    "copy_to_aws_s3_force_path_style",
    "copy_to_aws_s3_server_side_encryption",
    "copy_to_aws_access_key_id",
    "copy_to_aws_secret_access_key",
];

/// The automated snapshot agent, as core sees it. It should hold the core
/// weakly (`Weak<Core>`): the core holds it.
#[async_trait::async_trait]
pub trait SnapshotAgent: Send + Sync + 'static {
    /// Check a write of configuration `name` (`input`: the request's fields,
    /// typed by the path spec; `existing`: what is stored, for an update)
    /// and return what to store, or a message for a 400 naming the field.
    fn normalize(
        &self,
        name: &str,
        existing: Option<&Map<String, Value>>,
        input: &Map<String, Value>,
    ) -> std::result::Result<Map<String, Value>, String>;

    /// What a read of `config/:name` shows of a stored configuration
    /// (credentials left out).
    fn display(&self, stored: &Map<String, Value>) -> Map<String, Value>;

    /// `status/:name` of stored configuration `name` (Vault's fields:
    /// `last_snapshot_start`, `last_snapshot_end`, `last_snapshot_error`,
    /// `last_snapshot_url`, `next_snapshot_start`, ...).
    fn status(&self, name: &str, stored: &Map<String, Value>) -> Map<String, Value>;

    /// The stored configurations changed on this node (a write or a
    /// delete); the agent re-reads them with [`load_configs`].
    fn changed(&self);

    /// The server is stopping: finish or abandon the snapshot in progress
    /// (an abandoned upload leaves no manifest) and stop scheduling.
    async fn shutdown(&self);
}

/// A configuration name as Vault takes it: no slashes, not empty.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.len() > 128 {
        return Err(CoreError::BadRequest(format!(
            "invalid automated snapshot configuration name {name:?}: 1 to 128 characters, no '/'"
        )));
    }
    Ok(())
}

fn agent(core: &Core) -> Result<&dyn SnapshotAgent> {
    core.snapshot_agent().ok_or_else(|| {
        CoreError::bad_request(
            "automated snapshots are not available: this server runs no snapshot agent",
        )
    })
}

/// The root storage view, once unsealed.
fn view(core: &Core) -> Result<StorageView> {
    core.unsealed()?;
    Ok(StorageView::new(core.barrier.clone(), ""))
}

/// Every stored configuration, by name.
pub async fn load_configs(core: &Core) -> Result<Vec<(String, Map<String, Value>)>> {
    let mut out = Vec::new();
    for name in view(core)?.list(CONFIG_PREFIX).await? {
        if name.ends_with('/') {
            continue;
        }
        if let Some(c) = load_config(core, &name).await? {
            out.push((name, c));
        }
    }
    Ok(out)
}

/// One stored configuration.
pub async fn load_config(core: &Core, name: &str) -> Result<Option<Map<String, Value>>> {
    view(core)?
        .get_json(&format!("{CONFIG_PREFIX}{name}"))
        .await
}

/// `LIST config`: names (Vault answers 404 when there are none).
pub async fn list(core: &Core) -> Result<Vec<String>> {
    let mut names: Vec<String> = view(core)?
        .list(CONFIG_PREFIX)
        .await?
        .into_iter()
        .filter(|n| !n.ends_with('/'))
        .collect();
    names.sort();
    Ok(names)
}

/// `POST/PUT config/:name`.
pub async fn write(core: &Core, name: &str, input: &Map<String, Value>) -> Result<()> {
    check_name(name)?;
    let agent = agent(core)?;
    let existing = load_config(core, name).await?;
    let stored = agent
        .normalize(name, existing.as_ref(), input)
        .map_err(CoreError::BadRequest)?;
    view(core)?
        .put_json(&format!("{CONFIG_PREFIX}{name}"), &stored)
        .await?;
    tracing::info!(config = %name, "automated snapshot configuration written");
    agent.changed();
    Ok(())
}

/// `GET config/:name`: `None` for a 404.
pub async fn read(core: &Core, name: &str) -> Result<Option<Map<String, Value>>> {
    check_name(name)?;
    let Some(stored) = load_config(core, name).await? else {
        return Ok(None);
    };
    Ok(Some(match core.snapshot_agent() {
        Some(a) => a.display(&stored),
        None => stored,
    }))
}

/// `DELETE config/:name` (deleting nothing is not an error, as in Vault).
pub async fn delete(core: &Core, name: &str) -> Result<()> {
    check_name(name)?;
    view(core)?
        .delete(&format!("{CONFIG_PREFIX}{name}"))
        .await?;
    tracing::info!(config = %name, "automated snapshot configuration deleted");
    if let Some(a) = core.snapshot_agent() {
        a.changed();
    }
    Ok(())
}

/// `GET status/:name`: `None` for a 404.
pub async fn status(core: &Core, name: &str) -> Result<Option<Map<String, Value>>> {
    check_name(name)?;
    let Some(stored) = load_config(core, name).await? else {
        return Ok(None);
    };
    Ok(Some(agent(core)?.status(name, &stored)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_segments() {
        assert!(check_name("daily").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
    }
}
