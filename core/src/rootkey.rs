//! Root key rotation: what a rekey does to the key that seals the keyring.
//!
//! As OpenBao's `performRootRotation` does, a finished rekey of the barrier
//! key (`crate::ceremony`, under the Shamir seal with unseal keys, under an
//! auto seal with recovery keys) draws a **new root key** rather than
//! re-wrapping the old one. Where data goes, in **one storage batch** (one
//! Raft entry, so a crash leaves the old state or the new one, never a mix):
//!
//! - the new root key wrapped for the seal: under the new unseal key at
//!   `core/seal/root-key` with the new share numbers in `core/seal/config`
//!   (Shamir), or encrypted by the external key at
//!   `core/seal/auto-root-key` with the recovery key re-sealed under it
//!   (auto seal, `crate::autoseal`);
//! - the keyring (same terms) sealed under the new root key, and the new
//!   root key sealed under the keyring's active term
//!   ([`crate::barrier::ROOT_KEY_COPY_PATH`], Vault's `core/master`).
//!
//! So old unseal shares together with an old copy of the wrapped root key
//! (from a backup, say) open an old root key that no longer opens the
//! current keyring. Then the in-memory root key of this node is replaced.
//!
//! **Other nodes** learn the new root key from the copy, which their
//! keyring opens, when the Raft log announces the change
//! (`crate::cluster` calls [`follow`]); a rebuild after a restore or an
//! installed snapshot does the same through [`current_root_key`]. A node
//! restarted later unseals with the new shares (or its auto seal) from the
//! replicated `core/seal/` entries.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::barrier::{HeldKeyring, ROOT_KEY_COPY_PATH};
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::seal::{ROOT_KEY_PATH, SEAL_CONFIG_PATH, SealConfig, random32, wrap_root_key};
use crate::storage::BatchOp;

/// How the new root key is wrapped for the seal.
pub(crate) enum SealWrap<'a> {
    /// Shamir: under a new unseal key split into `shares` shares, of which
    /// `threshold` recombine it.
    Shamir {
        unseal_key: &'a [u8],
        shares: u8,
        threshold: u8,
    },
    /// The configured auto seal's external key.
    Auto,
}

/// Rotate the root key of an unsealed node (see the module doc): one
/// storage batch, then the node's in-memory root key.
pub(crate) async fn rotate(core: &Core, wrap: SealWrap<'_>) -> Result<()> {
    let u = core.unsealed()?;
    let _g = core.lock_state().await;
    let old_root = u.root_key();
    let new_root = random32();
    let mut ops = match wrap {
        SealWrap::Shamir {
            unseal_key,
            shares,
            threshold,
        } => {
            crate::seal::validate_shares(shares.into(), threshold.into())?;
            let current = core.seal_config().await?.ok_or(CoreError::NotInitialized)?;
            let config = SealConfig {
                secret_shares: shares,
                secret_threshold: threshold,
                ..current
            };
            vec![
                BatchOp::Put {
                    key: ROOT_KEY_PATH.into(),
                    value: wrap_root_key(unseal_key, &new_root)?,
                },
                BatchOp::Put {
                    key: SEAL_CONFIG_PATH.into(),
                    value: serde_json::to_vec(&config).map_err(CoreError::internal)?,
                },
            ]
        }
        SealWrap::Auto => {
            crate::autoseal::root_key_rotation_ops(core, &old_root, &new_root).await?
        }
    };
    ops.extend(core.barrier.rekeyed_keyring_ops(&new_root)?);
    core.physical().batch(ops).await?;
    u.set_root_key(new_root);
    tracing::info!("root key rotated; the keyring is sealed under the new one");
    Ok(())
}

/// The root key the stored copy names, opened with `open`; `None` when
/// there is no copy (a keyring written before copies were kept) or it
/// does not open.
async fn stored_copy(
    core: &Core,
    open: impl Fn(&[u8]) -> Result<Zeroizing<Vec<u8>>>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(sealed) = core.physical().get(ROOT_KEY_COPY_PATH).await? else {
        return Ok(None);
    };
    Ok(open(&sealed).ok().filter(|k| k.len() == 32))
}

/// Another node changed the keyring or the root key (announced by the Raft
/// log): take the root key from the stored copy (the keyring in memory
/// opens it), re-read the keyring with it, and keep it as this node's root
/// key. Without a copy the node's own root key reads the keyring.
pub(crate) async fn follow(core: &Core) -> Result<()> {
    let u = core.unsealed()?;
    let current = u.root_key();
    let root = stored_copy(core, |s| core.barrier.open_reserved(ROOT_KEY_COPY_PATH, s))
        .await?
        .unwrap_or_else(|| current.clone());
    core.barrier.unseal(&root).await?;
    if !bool::from(root.as_slice().ct_eq(current.as_slice())) {
        u.set_root_key(root);
        tracing::info!("the root key was rotated on the active node; following it");
    }
    Ok(())
}

/// After the stored state was replaced (restore, installed snapshot): the
/// root key that state's copy names when `held` (the keyring before the
/// replacement) opens it, else `fallback` (this node's root key).
pub(crate) async fn current_root_key(
    core: &Core,
    held: Option<&HeldKeyring>,
    fallback: Zeroizing<Vec<u8>>,
) -> Zeroizing<Vec<u8>> {
    let Some(held) = held else {
        return fallback;
    };
    match stored_copy(core, |s| held.open(ROOT_KEY_COPY_PATH, s)).await {
        Ok(Some(k)) => k,
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::barrier::{KEYRING_PATH, open_with_key};
    use crate::core::CoreOptions;
    use crate::seal::{SealConfig, combine_shares, generate_shares, open_root_key};
    use crate::storage::memory::MemoryStore;
    use crate::storage::{PhysicalStore, StorageView};

    async fn unseal_with(core: &Core, shares: &[Zeroizing<Vec<u8>>]) -> Result<bool> {
        let mut done = false;
        for s in shares {
            done = core.submit_unseal_share(s).await?;
        }
        Ok(done)
    }

    #[tokio::test]
    async fn a_rekey_rotates_the_root_key_and_old_keys_open_nothing_current() {
        let store = Arc::new(MemoryStore::new());
        let physical: Arc<dyn PhysicalStore> = store.clone();
        let core = Core::new(CoreOptions::default(), physical.clone(), None);
        let (old_shares, _) = core.initialize(3, 2).await.unwrap();
        assert!(unseal_with(&core, &old_shares[..2]).await.unwrap());
        let view = StorageView::new(core.barrier.clone(), "logical/x/");
        view.put("before", b"secret".to_vec()).await.unwrap();

        // A "standby" on the same storage, unsealed before the rekey.
        let standby = Core::new(CoreOptions::default(), physical.clone(), None);
        assert!(unseal_with(&standby, &old_shares[1..3]).await.unwrap());

        // The backup an attacker kept: the wrapped root key from before.
        let old_wrapped = store.get(ROOT_KEY_PATH).await.unwrap().unwrap();
        let old_config: SealConfig = core.seal_config().await.unwrap().unwrap();
        let old_unseal_key = combine_shares(&old_config, &old_shares[..2]).unwrap();
        let old_root = open_root_key(&old_unseal_key, &old_wrapped).unwrap();
        assert_eq!(
            old_root.as_slice(),
            core.unsealed().unwrap().root_key().as_slice()
        );

        let (new_unseal_key, new_shares) = generate_shares(5, 3);
        rotate(
            &core,
            SealWrap::Shamir {
                unseal_key: &new_unseal_key,
                shares: 5,
                threshold: 3,
            },
        )
        .await
        .unwrap();
        let new_root = core.unsealed().unwrap().root_key();
        assert_ne!(new_root.as_slice(), old_root.as_slice(), "root key rotated");

        // Old shares + the old wrapped root key give the old root key, which
        // does not open the current keyring; the new root key does.
        let keyring = store.get(KEYRING_PATH).await.unwrap().unwrap();
        assert!(open_with_key(&old_root, KEYRING_PATH.as_bytes(), &keyring).is_err());
        assert!(open_with_key(&new_root, KEYRING_PATH.as_bytes(), &keyring).is_ok());
        let cfg = core.seal_config().await.unwrap().unwrap();
        assert_eq!((cfg.secret_shares, cfg.secret_threshold), (5, 3));
        assert_eq!(cfg.init_time, old_config.init_time);

        // The standby follows: it learns the new root key from the copy.
        follow(&standby).await.unwrap();
        assert_eq!(
            standby.unsealed().unwrap().root_key().as_slice(),
            new_root.as_slice()
        );
        // And a later keyring rotation on the active node reaches it too.
        core.rotate_barrier().await.unwrap();
        follow(&standby).await.unwrap();
        assert_eq!(standby.barrier.key_status().unwrap().term, 2);
        standby.shutdown().await;

        // After a seal the old shares fail, the new ones unseal, data stays.
        core.seal_now().await.unwrap();
        assert!(unseal_with(&core, &old_shares).await.is_err());
        core.seal.reset();
        assert!(!unseal_with(&core, &new_shares[..2]).await.unwrap());
        assert!(unseal_with(&core, &new_shares[2..3]).await.unwrap());
        let view = StorageView::new(core.barrier.clone(), "logical/x/");
        assert_eq!(
            view.get("before").await.unwrap().as_deref(),
            Some(&b"secret"[..])
        );
        core.shutdown().await;
    }

    #[tokio::test]
    async fn a_rebuild_over_a_rekeyed_state_takes_the_new_root_key() {
        let store = Arc::new(MemoryStore::new());
        let physical: Arc<dyn PhysicalStore> = store.clone();
        let core = Core::new(CoreOptions::default(), physical.clone(), None);
        let (shares, _) = core.initialize(1, 1).await.unwrap();
        let standby = Core::new(CoreOptions::default(), physical, None);
        assert!(unseal_with(&core, &shares).await.unwrap());
        assert!(unseal_with(&standby, &shares).await.unwrap());
        let (k, _) = generate_shares(1, 1);
        rotate(
            &core,
            SealWrap::Shamir {
                unseal_key: &k,
                shares: 1,
                threshold: 1,
            },
        )
        .await
        .unwrap();
        // As after an installed snapshot: a rebuild with no announcement of
        // the keys; it must not leave the standby sealed.
        assert!(standby.replace_state(async { Ok(()) }).await.unwrap());
        assert!(!standby.is_sealed());
        assert_eq!(
            standby.unsealed().unwrap().root_key().as_slice(),
            core.unsealed().unwrap().root_key().as_slice()
        );
        standby.shutdown().await;
        core.shutdown().await;
    }
}
