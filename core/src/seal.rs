//! The Shamir seal: what turns unseal key shares into the root key.
//!
//! At `sys/init` we draw a random 256-bit root key and a random 256-bit
//! *unseal key*, split the unseal key into `secret_shares` Shamir shares
//! (threshold `secret_threshold`, GF(256) via the `blahaj` crate), and store in
//! plaintext physical storage (under [`crate::barrier::PLAINTEXT_PREFIX`]):
//! the seal configuration, and the root key encrypted by the unseal key. The
//! barrier keyring is in turn encrypted by the root key.
//!
//! `sys/unseal` collects shares in memory (never stored, zeroized on drop)
//! until the threshold is reached, recombines the unseal key, decrypts the root
//! key, and hands it to the barrier. A wrong combination fails to decrypt and
//! resets progress, as Vault does.

use std::sync::Mutex;

use blahaj::{Share, Sharks};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::barrier::{PLAINTEXT_PREFIX, open_with_key, seal_with_key};
use crate::error::{CoreError, Result};
use crate::storage::PhysicalStore;

pub(crate) const SEAL_CONFIG_PATH: &str = "core/seal/config";
/// The root key sealed under the Shamir unseal key (Shamir seal only; an
/// auto seal keeps its own, see `crate::autoseal`).
pub(crate) const ROOT_KEY_PATH: &str = "core/seal/root-key";

/// Stored seal configuration (`core/seal/config`), reported by `sys/seal-status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealConfig {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub secret_shares: u8,
    pub secret_threshold: u8,
    /// A random id, changes only at init; reported as Vault's `nonce`-free
    /// build of `cluster_id` is separate.
    pub init_time: i64,
}

/// What `init` hands back once: the shares and the root key (for the caller
/// to create the root token with; never stored in plaintext).
pub struct InitResult {
    pub shares: Vec<Zeroizing<Vec<u8>>>,
    pub root_key: Zeroizing<Vec<u8>>,
}

/// Unseal progress, in memory only.
#[derive(Default)]
struct Progress {
    shares: Vec<Zeroizing<Vec<u8>>>,
    nonce: String,
}

pub struct ShamirSeal {
    progress: Mutex<Progress>,
}

impl Default for ShamirSeal {
    fn default() -> Self {
        Self::new()
    }
}

/// Validate share/threshold numbers as Vault does.
pub fn validate_shares(shares: u64, threshold: u64) -> Result<()> {
    if shares == 0 {
        return Err(CoreError::bad_request(
            "invalid seal configuration: secret shares must be at least one",
        ));
    }
    if threshold == 0 {
        return Err(CoreError::bad_request(
            "invalid seal configuration: secret threshold must be at least one",
        ));
    }
    if shares > 255 {
        return Err(CoreError::bad_request(
            "invalid seal configuration: secret shares must be less than 256",
        ));
    }
    if threshold > shares {
        return Err(CoreError::bad_request(
            "invalid seal configuration: secret threshold cannot be larger than secret shares",
        ));
    }
    if shares > 1 && threshold == 1 {
        return Err(CoreError::bad_request(
            "invalid seal configuration: threshold must be greater than one for multiple shares",
        ));
    }
    Ok(())
}

pub(crate) fn random32() -> Zeroizing<Vec<u8>> {
    let mut k = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

impl ShamirSeal {
    pub fn new() -> Self {
        ShamirSeal {
            progress: Mutex::new(Progress::default()),
        }
    }

    pub async fn config(&self, physical: &dyn PhysicalStore) -> Result<Option<SealConfig>> {
        match physical.get(SEAL_CONFIG_PATH).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CoreError::Storage(format!("seal config: {e}"))),
        }
    }

    /// Generate the root key and shares and persist the seal state. The caller
    /// initializes the barrier with the returned root key.
    pub async fn init(
        &self,
        physical: &dyn PhysicalStore,
        shares: u8,
        threshold: u8,
    ) -> Result<InitResult> {
        validate_shares(shares as u64, threshold as u64)?;
        if self.config(physical).await?.is_some() {
            return Err(CoreError::bad_request("Vault is already initialized"));
        }
        let root_key = random32();
        let (unseal_key, share_bytes) = generate_shares(shares, threshold);
        let wrapped = wrap_root_key(&unseal_key, &root_key)?;
        let config = SealConfig {
            seal_type: "shamir".into(),
            secret_shares: shares,
            secret_threshold: threshold,
            init_time: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        debug_assert!(SEAL_CONFIG_PATH.starts_with(PLAINTEXT_PREFIX));
        physical
            .batch(vec![
                crate::storage::BatchOp::Put {
                    key: ROOT_KEY_PATH.into(),
                    value: wrapped,
                },
                crate::storage::BatchOp::Put {
                    key: SEAL_CONFIG_PATH.into(),
                    value: serde_json::to_vec(&config).map_err(CoreError::internal)?,
                },
            ])
            .await?;
        Ok(InitResult {
            shares: share_bytes,
            root_key,
        })
    }

    /// Progress (shares entered so far) and its nonce.
    pub fn progress(&self) -> (usize, String) {
        match self.progress.lock() {
            Ok(p) => (p.shares.len(), p.nonce.clone()),
            Err(_) => (0, String::new()),
        }
    }

    pub fn reset(&self) {
        if let Ok(mut p) = self.progress.lock() {
            *p = Progress::default();
        }
    }

    /// Add one share. Returns `Ok(None)` while more shares are needed and
    /// `Ok(Some(root_key))` once the threshold is met and the shares decrypt
    /// the root key. A bad combination resets progress and errors.
    pub async fn submit_share(
        &self,
        physical: &dyn PhysicalStore,
        share: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let config = self
            .config(physical)
            .await?
            .ok_or(CoreError::NotInitialized)?;
        let Some(collected) = self.collect(&config, share)? else {
            return Ok(None);
        };
        let wrapped = wrapped_root_key(physical)
            .await?
            .ok_or_else(|| CoreError::Storage("root key missing from storage".into()))?;
        recover_root_key(&config, &collected, &wrapped).map(Some)
    }

    /// [`Self::submit_share`] against a seal configuration and wrapped root
    /// key that are not in local storage yet: those of the cluster a node is
    /// joining (`crate::cluster`), so it proves it holds the unseal keys.
    pub fn submit_share_with(
        &self,
        config: &SealConfig,
        wrapped: &[u8],
        share: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self.collect(config, share)? {
            None => Ok(None),
            Some(collected) => recover_root_key(config, &collected, wrapped).map(Some),
        }
    }

    /// Record one share; the shares once the threshold is met. Also
    /// collects recovery key shares under an auto seal (`crate::autoseal`),
    /// with the recovery configuration as `config`.
    pub(crate) fn collect(
        &self,
        config: &SealConfig,
        share: &[u8],
    ) -> Result<Option<Vec<Zeroizing<Vec<u8>>>>> {
        let expected_len = if config.secret_shares == 1 { 32 } else { 33 };
        if share.len() != expected_len {
            return Err(CoreError::bad_request(
                "'key' must be a valid hex or base64 string of an unseal key share",
            ));
        }
        let mut p = self
            .progress
            .lock()
            .map_err(|_| CoreError::internal("seal lock poisoned"))?;
        if p.shares.iter().any(|s| s.as_slice() == share) {
            // Vault ignores a duplicate key (progress unchanged).
            return Ok(None);
        }
        if p.shares.is_empty() {
            p.nonce = uuid::Uuid::new_v4().to_string();
        }
        p.shares.push(Zeroizing::new(share.to_vec()));
        if p.shares.len() < config.secret_threshold as usize {
            return Ok(None);
        }
        let out = std::mem::take(&mut p.shares);
        p.nonce.clear();
        Ok(Some(out))
    }
}

/// The root key as stored: sealed under the unseal key. Not a secret by
/// itself (it opens only with the unseal key); a joining node receives it
/// from the leader to check its unseal key shares before it has any data.
pub async fn wrapped_root_key(physical: &dyn PhysicalStore) -> Result<Option<Vec<u8>>> {
    physical.get(ROOT_KEY_PATH).await
}

/// Combine shares into the unseal key and open the wrapped root key with it.
fn recover_root_key(
    config: &SealConfig,
    collected: &[Zeroizing<Vec<u8>>],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let unseal_key = combine_shares(config, collected)?;
    open_root_key(&unseal_key, wrapped)
}

/// A fresh random 256-bit key and its `shares` Shamir shares (threshold
/// `threshold`); one share is the key itself, as Vault does. Used for the
/// unseal key and, under an auto seal, the recovery key.
pub(crate) fn generate_shares(
    shares: u8,
    threshold: u8,
) -> (Zeroizing<Vec<u8>>, Vec<Zeroizing<Vec<u8>>>) {
    let key = random32();
    let share_bytes = if shares == 1 {
        vec![key.clone()]
    } else {
        Sharks(threshold)
            .dealer(&key)
            .take(shares as usize)
            .map(|s| Zeroizing::new(Vec::from(&s)))
            .collect()
    };
    (key, share_bytes)
}

/// The root key sealed under a Shamir unseal key, as stored at
/// [`ROOT_KEY_PATH`].
pub(crate) fn wrap_root_key(unseal_key: &[u8], root_key: &[u8]) -> Result<Vec<u8>> {
    seal_with_key(unseal_key, ROOT_KEY_PATH.as_bytes(), root_key)
}

/// Open the root key stored at [`ROOT_KEY_PATH`] with the unseal key.
pub(crate) fn open_root_key(unseal_key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    open_with_key(unseal_key, ROOT_KEY_PATH.as_bytes(), wrapped).map_err(|_| {
        CoreError::bad_request(
            "Error unsealing: failed to decrypt keys from storage: the unseal key shares do not match",
        )
    })
}

/// Combine collected shares (at least the threshold of `config`) into the
/// key they were split from. Does not check that it is the right key.
pub(crate) fn combine_shares(
    config: &SealConfig,
    collected: &[Zeroizing<Vec<u8>>],
) -> Result<Zeroizing<Vec<u8>>> {
    let key = if config.secret_shares == 1 {
        collected
            .first()
            .cloned()
            .ok_or_else(|| CoreError::bad_request("no unseal key share"))?
    } else {
        let mut parsed = Vec::with_capacity(collected.len());
        for s in collected {
            parsed.push(
                Share::try_from(s.as_slice())
                    .map_err(|_| CoreError::bad_request("invalid unseal key share"))?,
            );
        }
        Zeroizing::new(
            Sharks(config.secret_threshold)
                .recover(parsed.iter())
                .map_err(|e| {
                    CoreError::bad_request(format!("failed to recover unseal key: {e}"))
                })?,
        )
    };
    Ok(key)
}

/// Key ceremonies (`crate::ceremony`): the root key opened with an unseal
/// key recombined from shares, or `None` when that is not the unseal key.
pub(crate) fn open_wrapped_root_key(
    unseal_key: &[u8],
    wrapped: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    open_with_key(unseal_key, ROOT_KEY_PATH.as_bytes(), wrapped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn shares_recombine_to_the_root_key_and_wrong_ones_fail() {
        let phys = MemoryStore::new();
        let seal = ShamirSeal::new();
        let init = seal.init(&phys, 5, 3).await.unwrap();
        assert_eq!(init.shares.len(), 5);
        assert!(seal.init(&phys, 5, 3).await.is_err(), "double init");

        assert!(
            seal.submit_share(&phys, &init.shares[4])
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            seal.submit_share(&phys, &init.shares[4])
                .await
                .unwrap()
                .is_none(),
            "duplicate ignored"
        );
        assert_eq!(seal.progress().0, 1);
        assert!(
            seal.submit_share(&phys, &init.shares[1])
                .await
                .unwrap()
                .is_none()
        );
        let root = seal
            .submit_share(&phys, &init.shares[2])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(root.as_slice(), init.root_key.as_slice());
        assert_eq!(seal.progress().0, 0);

        // A forged share breaks recombination and resets progress.
        let mut bad = init.shares[0].to_vec();
        bad[5] ^= 0xff;
        seal.submit_share(&phys, &bad).await.unwrap();
        seal.submit_share(&phys, &init.shares[1]).await.unwrap();
        assert!(seal.submit_share(&phys, &init.shares[2]).await.is_err());
        assert_eq!(seal.progress().0, 0);
    }

    #[test]
    fn share_numbers_are_validated_like_vault() {
        assert!(validate_shares(1, 1).is_ok());
        assert!(validate_shares(5, 3).is_ok());
        assert!(validate_shares(0, 0).is_err());
        assert!(validate_shares(3, 5).is_err());
        assert!(validate_shares(3, 1).is_err());
        assert!(validate_shares(256, 3).is_err());
    }
}
