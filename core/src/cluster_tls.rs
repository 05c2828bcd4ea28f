//! The cluster's TLS material in the barrier: made at `sys/init`, loaded
//! into the node's cluster listener and Raft clients when it unseals,
//! forgotten when it seals, and handed to a joining node under its root key.
//!
//! The certificates themselves (a cluster CA and one node key pair every
//! node shares) and what the cluster port does with them are
//! `storage::raft::tls`. This module moves them:
//!
//! - **Init** ([`generate`]): `sys/init` writes them at [`TLS_PATH`]
//!   (`core/raft/tls`, Vault's path) in the barrier, so they replicate
//!   through Raft like any other state. A node initialized before cluster
//!   TLS existed gets them from its active node at the next unseal
//!   ([`load_at_unseal`]).
//! - **Unseal / seal** ([`load_at_unseal`], [`forget`]): a node loads them
//!   from its own (replicated) state when unsealed, so a restarted node
//!   serves TLS as soon as it is unsealed; sealing drops them, and a sealed
//!   node's cluster port refuses connections (Vault tears a sealed node's
//!   cluster listener down the same way: a sealed node takes no part in
//!   Raft).
//! - **Joining** ([`seal_for_join`], [`open_from_join`]): a joining node has
//!   no barrier data yet but must accept the leader's append-entries. The
//!   leader's join challenge (`sys/storage/raft/bootstrap/challenge`)
//!   carries the material encrypted with AES-256-GCM under
//!   `HKDF-SHA256(root key, "custos-cluster-tls")`; the joining node opens
//!   it with the root key it recovered (unseal shares or its auto seal),
//!   loads it, and only then answers the challenge, after which the leader
//!   adds it and replicates to it over TLS. OpenBao sends its raft TLS
//!   keyring in the clear in the answer's response, after the proof; here
//!   the leader's answer blocks until the new node caught up, which needs
//!   TLS first, so the material comes before the proof, readable only with
//!   the root key: what an unauthenticated caller gets is as useless as the
//!   sealed root key the challenge already carries, and it never crosses the
//!   wire in clear (not even over a plain-HTTP API listener).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::storage::StorageView;
pub use crate::storage::raft::tls::ClusterTlsMaterial;

/// Where the material lives in the barrier (Vault's raft TLS keyring path).
pub const TLS_PATH: &str = "core/raft/tls";
/// HKDF info and AEAD associated data of the join encryption.
const JOIN_CONTEXT: &[u8] = b"custos-cluster-tls";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn view(core: &Core) -> StorageView {
    StorageView::new(core.barrier.clone(), "")
}

/// Generate new material and store it (`sys/init`; the barrier is open).
pub async fn generate(view: &StorageView) -> Result<ClusterTlsMaterial> {
    let m = ClusterTlsMaterial::generate()?;
    view.put_json(TLS_PATH, &m.to_json()).await?;
    Ok(m)
}

/// The stored material, if any.
pub async fn read(core: &Core) -> Result<Option<ClusterTlsMaterial>> {
    match view(core).get_json::<serde_json::Value>(TLS_PATH).await? {
        Some(v) => ClusterTlsMaterial::from_json(&v).map(Some),
        None => Ok(None),
    }
}

/// At unseal: load the stored material into this node's cluster TLS. The
/// active node of a cluster initialized before cluster TLS existed makes it
/// now. Failures are logged: the node serves its API either way, and its
/// cluster port refuses connections until the material can be loaded.
pub async fn load_at_unseal(core: &Core) {
    let Some(raft) = core.raft() else { return };
    let stored = match read(core).await {
        Ok(Some(m)) => Some(m),
        Ok(None) if core.is_active() => match generate(&view(core)).await {
            Ok(m) => {
                tracing::info!(
                    "cluster TLS: none stored (initialized before it existed); generated"
                );
                Some(m)
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster TLS: cannot store new material");
                None
            }
        },
        Ok(None) => {
            tracing::warn!("cluster TLS: none stored yet; the cluster port refuses connections");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "cluster TLS: cannot read the stored material");
            None
        }
    };
    if let Some(m) = stored
        && let Err(e) = raft.install_cluster_tls(&m)
    {
        tracing::error!(error = %e, "cluster TLS: the stored material does not load");
    }
}

/// At seal: forget the material (see the module docs).
pub fn forget(core: &Core) {
    if let Some(raft) = core.raft() {
        raft.forget_cluster_tls();
    }
}

fn join_cipher(root_key: &[u8]) -> Result<Aes256Gcm> {
    let hk = Hkdf::<Sha256>::new(None, root_key);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(JOIN_CONTEXT, key.as_mut())
        .map_err(|_| CoreError::internal("cluster TLS: key derivation failed"))?;
    Aes256Gcm::new_from_slice(key.as_ref()).map_err(CoreError::internal)
}

/// The material encrypted for a joining node that holds `root_key`:
/// base64 of nonce (12 bytes) || AES-256-GCM ciphertext.
pub fn seal_for_join(root_key: &[u8], m: &ClusterTlsMaterial) -> Result<String> {
    let cipher = join_cipher(root_key)?;
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let plain = Zeroizing::new(serde_json::to_vec(&m.to_json()).map_err(CoreError::internal)?);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain.as_slice(),
                aad: JOIN_CONTEXT,
            },
        )
        .map_err(|_| CoreError::internal("cluster TLS: encryption failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(b64().encode(out))
}

/// The inverse of [`seal_for_join`]; fails unless `root_key` is the
/// cluster's.
pub fn open_from_join(root_key: &[u8], sealed: &str) -> Result<ClusterTlsMaterial> {
    let bad = || {
        CoreError::Unavailable("the leader's cluster TLS does not open with this root key".into())
    };
    let raw = b64().decode(sealed).map_err(|_| bad())?;
    if raw.len() < 12 {
        return Err(bad());
    }
    let (nonce, ct) = raw.split_at(12);
    let plain = Zeroizing::new(
        join_cipher(root_key)?
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: JOIN_CONTEXT,
                },
            )
            .map_err(|_| bad())?,
    );
    let v: serde_json::Value = serde_json::from_slice(&plain).map_err(|_| bad())?;
    ClusterTlsMaterial::from_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_encryption_opens_only_with_the_root_key() {
        let m = ClusterTlsMaterial::generate().expect("generate");
        let root = [7u8; 32];
        let sealed = seal_for_join(&root, &m).expect("seal");
        assert!(!sealed.contains("PRIVATE"), "not in clear");
        assert_eq!(open_from_join(&root, &sealed).expect("open"), m);
        assert!(
            open_from_join(&[8u8; 32], &sealed).is_err(),
            "another root key"
        );
        assert!(open_from_join(&root, "AAAA").is_err(), "truncated");
        assert!(open_from_join(&root, "not base64!").is_err());
    }
}
