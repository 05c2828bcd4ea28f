//! What a Raft snapshot holds, per mount: the digest a snapshot's manifest
//! records and a restore drill recomputes.
//!
//! Input is a node's state machine read in key order: an exported view of
//! it ([`digest_export`], the same view a snapshot archive streams) or what
//! it holds now ([`current`]). Every pair under a mount's storage
//! prefix (`logical/<uuid>/` for secrets engines, `auth/<uuid>/` for auth
//! methods) is opened with the barrier and fed to that mount's SHA-256 as
//! `u32 key length, key relative to the mount, u64 value length, plaintext`,
//! in key order; the mount tables (`core/mounts`, `core/auth`) in the same
//! state name the mounts. So two states digest alike exactly when every
//! mount holds the same keys with the same plaintext, whatever keyring term
//! encrypted them, and a digest computed on a node restored from the
//! snapshot (and unsealed with the source's keys) proves that every value
//! decrypts to what was saved.
//!
//! Output is a [`StateDigest`]: per mount its path, type, pairs, secrets and
//! versions (KV) and digest, plus the token and policy counts. Memory holds
//! one pair and one hasher per mount, whatever the state's size. Nothing
//! here leaves plaintext anywhere but in the hashers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::barrier::Barrier;
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::router::MountEntry;
use crate::storage::raft::StateExport;

/// Format of [`StateDigest`]; a drill refuses a manifest of a newer one.
pub const DIGEST_VERSION: u32 = 1;

const MOUNTS_KEY: &str = "core/mounts";
const AUTH_KEY: &str = "core/auth";
const TOKEN_PREFIX: &str = "sys/token/id/";
const POLICY_PREFIX: &str = "sys/policy/";

/// What one mount holds in a state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountDigest {
    /// Mount path with its trailing slash (`secret/`, `auth/token/`).
    pub path: String,
    #[serde(rename = "type")]
    pub mount_type: String,
    /// KV version (`1` or `2`) for `kv` mounts, else 0.
    #[serde(default)]
    pub kv_version: u32,
    pub uuid: String,
    /// Storage pairs under the mount's prefix.
    pub entries: u64,
    /// KV secrets (v2: metadata entries; v1: every entry); 0 for other types.
    pub secrets: u64,
    /// KV v2 versions stored (destroyed ones are not stored); 0 otherwise.
    pub versions: u64,
    /// Hex SHA-256 over the mount's pairs as the module docs describe.
    pub sha256: String,
}

/// What a whole state holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub digest_version: u32,
    /// Every pair of the state, mounts or not.
    pub pairs: u64,
    /// Mounts in path order (secrets engines, then `auth/...`).
    pub mounts: Vec<MountDigest>,
    /// KV secrets over all mounts.
    pub secrets: u64,
    /// Stored tokens (`sys/token/id/...`) and policies (`sys/policy/...`).
    pub tokens: u64,
    pub policies: u64,
}

impl StateDigest {
    /// The mounts whose digests differ between `self` (expected) and
    /// `other`, or that only one holds, each with what differs.
    pub fn differences(&self, other: &StateDigest) -> Vec<String> {
        let theirs: BTreeMap<&str, &MountDigest> =
            other.mounts.iter().map(|m| (m.path.as_str(), m)).collect();
        let mut out = Vec::new();
        for m in &self.mounts {
            match theirs.get(m.path.as_str()) {
                None => out.push(format!("mount {} is missing", m.path)),
                Some(t) if t.sha256 != m.sha256 || t.entries != m.entries => out.push(format!(
                    "mount {}: digest {} over {} entries, expected {} over {}",
                    m.path, t.sha256, t.entries, m.sha256, m.entries
                )),
                Some(_) => {}
            }
        }
        let ours: BTreeMap<&str, ()> = self.mounts.iter().map(|m| (m.path.as_str(), ())).collect();
        for t in &other.mounts {
            if !ours.contains_key(t.path.as_str()) {
                out.push(format!(
                    "mount {} is not in the snapshot's manifest",
                    t.path
                ));
            }
        }
        out
    }
}

#[derive(Default)]
struct Acc {
    hasher: Sha256,
    entries: u64,
    metadata: u64,
    versions: u64,
}

/// Digest an exported view of a node's state (what a snapshot archive
/// streams from), with `barrier`, which must open its values. Blocking: run
/// it on a blocking thread.
pub fn digest_export(state: &StateExport, barrier: &Barrier) -> Result<StateDigest> {
    let mut d = Digester::new(barrier);
    state.for_each_pair(|key, value| d.feed(key, value))?;
    Ok(d.finish())
}

/// A [`StateDigest`] being computed from pairs fed in key order.
struct Digester<'b> {
    barrier: &'b Barrier,
    accs: BTreeMap<String, Acc>,
    tables: Vec<MountEntry>,
    count: u64,
    tokens: u64,
    policies: u64,
}

impl<'b> Digester<'b> {
    fn new(barrier: &'b Barrier) -> Self {
        Digester {
            barrier,
            accs: BTreeMap::new(),
            tables: Vec::new(),
            count: 0,
            tokens: 0,
            policies: 0,
        }
    }

    fn feed(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.count += 1;
        if key == MOUNTS_KEY || key == AUTH_KEY {
            let plain = self.barrier.decrypt(key, value)?;
            let table: Vec<MountEntry> = serde_json::from_slice(&plain)
                .map_err(|e| CoreError::Storage(format!("decoding {key}: {e}")))?;
            self.tables.extend(table);
            return Ok(());
        }
        if key.starts_with(TOKEN_PREFIX) {
            self.tokens += 1;
        } else if key.starts_with(POLICY_PREFIX) {
            self.policies += 1;
        }
        let Some((uuid, rel)) = mount_pair(key) else {
            return Ok(());
        };
        let plain = self.barrier.decrypt(key, value)?;
        let acc = self.accs.entry(uuid.to_string()).or_default();
        acc.entries += 1;
        if rel.starts_with("metadata/") {
            acc.metadata += 1;
        } else if rel.starts_with("versions/") {
            acc.versions += 1;
        }
        acc.hasher.update((rel.len() as u32).to_be_bytes());
        acc.hasher.update(rel.as_bytes());
        acc.hasher.update((plain.len() as u64).to_be_bytes());
        acc.hasher.update(&plain[..]);
        Ok(())
    }

    fn finish(mut self) -> StateDigest {
        let mut mounts: Vec<MountDigest> = std::mem::take(&mut self.tables)
            .into_iter()
            .map(|e| {
                let acc = self.accs.remove(&e.uuid).unwrap_or_default();
                let kv_version = match e.mount_type.as_str() {
                    "kv" if e.options.get("version").map(String::as_str) == Some("2") => 2,
                    "kv" => 1,
                    _ => 0,
                };
                let (secrets, versions) = match kv_version {
                    2 => (acc.metadata, acc.versions),
                    1 => (acc.entries, 0),
                    _ => (0, 0),
                };
                MountDigest {
                    path: e.path,
                    mount_type: e.mount_type,
                    kv_version,
                    uuid: e.uuid,
                    entries: acc.entries,
                    secrets,
                    versions,
                    sha256: hex::encode(acc.hasher.finalize()),
                }
            })
            .collect();
        mounts.sort_by(|a, b| a.path.cmp(&b.path));
        StateDigest {
            digest_version: DIGEST_VERSION,
            pairs: self.count,
            secrets: mounts.iter().map(|m| m.secrets).sum(),
            mounts,
            tokens: self.tokens,
            policies: self.policies,
        }
    }
}

/// `logical/<uuid>/<rel>` or `auth/<uuid>/<rel>` → (uuid, rel).
fn mount_pair(key: &str) -> Option<(&str, &str)> {
    let rest = key
        .strip_prefix("logical/")
        .or_else(|| key.strip_prefix("auth/"))?;
    rest.split_once('/')
}

/// Digest everything this node has applied, read in key order from one
/// consistent read of its state machine (no snapshot is built). The node
/// must be unsealed. A restore drill runs this on the node it restored.
pub async fn current(core: &Core) -> Result<StateDigest> {
    core.unsealed()?;
    let raft = core
        .raft()
        .ok_or_else(|| CoreError::bad_request("state digests need raft storage"))?
        .clone();
    let barrier = core.barrier.clone();
    tokio::task::spawn_blocking(move || {
        let mut d = Digester::new(&barrier);
        raft.for_each_pair(|key, value| d.feed(key, value))?;
        Ok(d.finish())
    })
    .await
    .map_err(|e| CoreError::internal(format!("state digest task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_pairs_split_uuid_and_relative_key() {
        assert_eq!(
            mount_pair("logical/ab-cd/metadata/app/db"),
            Some(("ab-cd", "metadata/app/db"))
        );
        assert_eq!(mount_pair("auth/1234/role/x"), Some(("1234", "role/x")));
        assert_eq!(mount_pair("core/mounts"), None);
        assert_eq!(mount_pair("logical/no-slash"), None);
    }

    fn digest(path: &str, sha: &str, entries: u64) -> MountDigest {
        MountDigest {
            path: path.into(),
            mount_type: "kv".into(),
            kv_version: 2,
            uuid: "u".into(),
            entries,
            secrets: 0,
            versions: 0,
            sha256: sha.into(),
        }
    }

    #[test]
    fn differences_name_changed_missing_and_extra_mounts() {
        let want = StateDigest {
            digest_version: 1,
            pairs: 3,
            mounts: vec![digest("a/", "11", 1), digest("b/", "22", 2)],
            secrets: 0,
            tokens: 0,
            policies: 0,
        };
        assert!(want.differences(&want.clone()).is_empty());
        let mut got = want.clone();
        got.mounts[1].sha256 = "33".into();
        got.mounts.remove(0);
        got.mounts.push(digest("c/", "44", 1));
        let d = want.differences(&got);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("a/ is missing"));
        assert!(d[1].contains("mount b/: digest 33"));
        assert!(d[2].contains("c/ is not in"));
    }
}
