//! Transit canaries: a ciphertext per transit key, made when a snapshot is
//! taken and decrypted by a restore drill on the node it restored, proving
//! that every key (not only the storage around it) came back.
//!
//! [`make_canaries`] walks the live mount table for `transit` mounts and
//! their keys (read through each mount's own storage, the same policies the
//! engine serves) and encrypts a fixed public plaintext under the latest
//! version of each key that supports encryption without a context (derived
//! keys need the caller's context, which a canary cannot know; they are
//! listed with no ciphertext). [`check_canary`] decrypts one on another node
//! and compares. Nothing here is audited: it is the server's own work, no
//! client request, and no secret crosses it (the plaintext is public).

use serde::{Deserialize, Serialize};

use super::POLICY_PREFIX;
use super::policy::KeyPolicy;
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::storage::StorageView;

/// The plaintext every canary encrypts (public; not a secret).
pub const CANARY_PLAINTEXT: &[u8] = b"custos restore-drill canary";

/// One key's canary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitCanary {
    /// Mount path with its trailing slash (`transit/`).
    pub mount: String,
    pub key: String,
    /// The version that encrypted it (the key's latest then).
    pub key_version: i64,
    /// `vault:vN:...`, or empty for a key a canary cannot use (derived, or
    /// a type that does not encrypt).
    pub ciphertext: String,
}

async fn load(storage: &StorageView, name: &str) -> Result<Option<KeyPolicy>> {
    let Some(raw) = storage.get(&format!("{POLICY_PREFIX}{name}")).await? else {
        return Ok(None);
    };
    let raw = zeroize::Zeroizing::new(raw);
    let mut p: KeyPolicy = serde_json::from_slice(&raw)
        .map_err(|e| CoreError::Internal(format!("transit key {name:?} is unreadable: {e}")))?;
    p.prepare()?;
    Ok(Some(p))
}

/// Encrypt [`CANARY_PLAINTEXT`] under every transit key of every transit
/// mount of this (unsealed) node.
pub async fn make_canaries(core: &Core) -> Result<Vec<TransitCanary>> {
    let u = core.unsealed()?;
    let mut out = Vec::new();
    for entry in u.router.entries() {
        if entry.mount_type != "transit" {
            continue;
        }
        let Some((mounted, _)) = u.router.route(&entry.path) else {
            continue;
        };
        let mut names = mounted.storage.list(POLICY_PREFIX).await?;
        names.sort();
        for name in names.into_iter().filter(|n| !n.ends_with('/')) {
            let Some(p) = load(&mounted.storage, &name).await? else {
                continue;
            };
            let usable = p.key_type.encryption_supported() && !p.derived;
            let (ciphertext, key_version) = if usable {
                p.encrypt(0, b"", CANARY_PLAINTEXT, b"").map_err(|e| {
                    CoreError::Internal(format!("canary for {name}: {}", e.message()))
                })?
            } else {
                (String::new(), p.latest_version)
            };
            out.push(TransitCanary {
                mount: entry.path.clone(),
                key: name,
                key_version,
                ciphertext,
            });
        }
    }
    Ok(out)
}

/// Decrypt `canary` on this (unsealed) node: `Err` names what failed (the
/// mount or key missing, the ciphertext not opening, the plaintext
/// differing). A canary with no ciphertext only checks that the key exists.
pub async fn check_canary(core: &Core, canary: &TransitCanary) -> std::result::Result<(), String> {
    let what = format!("transit key {}{}", canary.mount, canary.key);
    let u = core.unsealed().map_err(|e| format!("{what}: {e}"))?;
    let mounted = match u.router.route(&canary.mount) {
        Some((m, _)) if m.entry.path == canary.mount && m.entry.mount_type == "transit" => m,
        _ => return Err(format!("{what}: mount {} is missing", canary.mount)),
    };
    let p = load(&mounted.storage, &canary.key)
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what}: key is missing"))?;
    if canary.ciphertext.is_empty() {
        return Ok(());
    }
    let plain = p
        .decrypt(b"", &canary.ciphertext, b"")
        .map_err(|e| format!("{what}: canary does not decrypt: {}", e.message()))?;
    if plain.as_slice() != CANARY_PLAINTEXT {
        return Err(format!("{what}: canary decrypts to something else"));
    }
    Ok(())
}
