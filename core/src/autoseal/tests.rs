//! Unit tests of the auto seal over memory storage, with an in-process key
//! wrapper standing in for the KMS (the integration tests in
//! `tests/it/autounseal.rs` use a real transit server and moto).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

use super::*;
use crate::core::{Core, CoreOptions};
use crate::storage::PhysicalStore;
use crate::storage::memory::MemoryStore;

/// A "KMS" in memory: AES-GCM under its own key; `down` makes every call
/// fail as unreachable.
struct FakeKms {
    kind: &'static str,
    key: Zeroizing<Vec<u8>>,
    down: AtomicBool,
}

impl FakeKms {
    fn new(kind: &'static str) -> Arc<FakeKms> {
        Arc::new(FakeKms {
            kind,
            key: random32(),
            down: AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl KeyWrapper for FakeKms {
    fn seal_type(&self) -> &'static str {
        self.kind
    }
    fn describe(&self) -> String {
        format!("fake {}", self.kind)
    }
    async fn encrypt(&self, pt: &[u8]) -> std::result::Result<Vec<u8>, WrapError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(WrapError::Unreachable("down".into()));
        }
        seal_with_key(&self.key, b"fake", pt).map_err(|e| WrapError::Refused(e.to_string()))
    }
    async fn decrypt(&self, ct: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, WrapError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(WrapError::Unreachable("down".into()));
        }
        open_with_key(&self.key, b"fake", ct).map_err(|_| WrapError::Decrypt("wrong key".into()))
    }
}

fn dyn_(k: &Arc<FakeKms>) -> Arc<dyn KeyWrapper> {
    k.clone()
}

async fn node(
    store: &Arc<MemoryStore>,
    active: Option<&Arc<FakeKms>>,
    disabled: Option<&Arc<FakeKms>>,
) -> Result<Arc<Core>> {
    let physical: Arc<dyn PhysicalStore> = store.clone();
    let core = Core::new(CoreOptions::default(), physical, None);
    install(&core, active.map(dyn_), disabled.map(dyn_)).await?;
    Ok(core)
}

#[tokio::test]
async fn init_stores_an_encrypted_root_key_and_a_restart_unseals_by_itself() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("transit");
    let core = node(&store, Some(&kms), None).await.unwrap();
    let (shares, root) = initialize(&core, &dyn_(&kms), 5, 3).await.unwrap();
    assert_eq!(shares.len(), 5);
    assert!(!root.is_empty());
    assert!(!core.is_sealed(), "unsealed right after init");
    let st = status_fields(&core).await.unwrap().unwrap();
    assert_eq!(
        (st.seal_type, st.recovery_seal, st.t, st.n),
        ("transit", true, 3, 5)
    );
    assert!(
        initialize(&core, &dyn_(&kms), 1, 1).await.is_err(),
        "double init"
    );
    verify_recovery_shares(&core, &shares[1..4]).await.unwrap();
    assert!(verify_recovery_shares(&core, &shares[..2]).await.is_err());
    core.shutdown().await;

    // "Restart": a new core on the same storage, KMS down first.
    let core = node(&store, Some(&kms), None).await.unwrap();
    kms.down.store(true, Ordering::SeqCst);
    let e = unseal_with_stored_key(&core).await.unwrap_err();
    assert_eq!(e.class(), "unreachable");
    assert!(core.is_sealed());
    kms.down.store(false, Ordering::SeqCst);
    assert!(unseal_with_stored_key(&core).await.unwrap());
    assert!(!core.is_sealed());

    // After an operator's seal, recovery shares unseal (through the KMS).
    core.seal_now().await.unwrap();
    assert!(
        !submit_recovery_unseal_share(&core, &shares[0])
            .await
            .unwrap()
    );
    assert!(
        !submit_recovery_unseal_share(&core, &shares[4])
            .await
            .unwrap()
    );
    assert!(
        submit_recovery_unseal_share(&core, &shares[2])
            .await
            .unwrap()
    );
    assert!(!core.is_sealed());
}

#[tokio::test]
async fn a_wrong_kms_key_leaves_the_node_sealed() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("awskms");
    let core = node(&store, Some(&kms), None).await.unwrap();
    initialize(&core, &dyn_(&kms), 1, 1).await.unwrap();
    core.shutdown().await;
    let other = FakeKms::new("awskms");
    let core = node(&store, Some(&other), None).await.unwrap();
    let e = unseal_with_stored_key(&core).await.unwrap_err();
    assert_eq!(e.class(), "decrypt");
    assert!(core.is_sealed());
}

#[tokio::test]
async fn recovery_key_replacement_retires_the_old_shares() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("transit");
    let core = node(&store, Some(&kms), None).await.unwrap();
    let (old, _) = initialize(&core, &dyn_(&kms), 3, 2).await.unwrap();
    let new = replace_recovery_key(&core, 2, 2).await.unwrap();
    assert_eq!(new.len(), 2);
    assert!(verify_recovery_shares(&core, &old[..2]).await.is_err());
    verify_recovery_shares(&core, &new).await.unwrap();
    let st = status_fields(&core).await.unwrap().unwrap();
    assert_eq!((st.t, st.n), (2, 2));

    // A ceremony that splits its own key: set_recovery_key, then the
    // stored key is the one it set.
    let (key, split) = generate_shares(3, 2);
    set_recovery_key(&core, &key, 3, 2).await.unwrap();
    let (rc, stored) = recovery_key(&core).await.unwrap().unwrap();
    assert_eq!((rc.secret_shares, stored.as_slice()), (3, key.as_slice()));
    verify_recovery_shares(&core, &split[1..]).await.unwrap();
    assert!(verify_recovery_shares(&core, &new).await.is_err());
}

#[tokio::test]
async fn migration_shamir_to_auto_and_back_keeps_the_root_key() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("transit");
    // A Shamir node with 3-of-5 unseal keys.
    let core = node(&store, None, None).await.unwrap();
    let (unseal, _) = core.initialize(5, 3).await.unwrap();
    for s in &unseal[..3] {
        core.submit_unseal_share(s).await.unwrap();
    }
    assert!(!core.is_sealed());
    let key_status = core.barrier.key_status().unwrap();
    core.shutdown().await;

    // Restart with a transit seal: migration mode, no auto-unseal.
    let core = node(&store, Some(&kms), None).await.unwrap();
    assert_eq!(migration(&core), Some(Migration::ShamirToAuto));
    assert!(!unseal_with_stored_key(&core).await.unwrap());
    let st = status_fields(&core).await.unwrap().unwrap();
    assert_eq!(
        (st.seal_type, st.migration, st.t, st.n),
        ("transit", true, 3, 5)
    );
    assert!(!submit_migration_share(&core, &unseal[0]).await.unwrap());
    assert!(!submit_migration_share(&core, &unseal[3]).await.unwrap());
    assert!(submit_migration_share(&core, &unseal[4]).await.unwrap());
    assert!(!core.is_sealed());
    assert_eq!(migration(&core), None);
    assert_eq!(core.barrier.key_status().unwrap().term, key_status.term);
    core.shutdown().await;

    // Restart with the same config: unseals by itself; the old unseal keys
    // are now the recovery keys.
    let core = node(&store, Some(&kms), None).await.unwrap();
    assert!(unseal_with_stored_key(&core).await.unwrap());
    verify_recovery_shares(&core, &unseal[1..4]).await.unwrap();
    core.shutdown().await;

    // Back to Shamir: the transit stanza disabled, recovery keys with migrate.
    assert!(
        node(&store, None, None).await.is_err(),
        "needs the disabled stanza"
    );
    let core = node(&store, None, Some(&kms)).await.unwrap();
    assert_eq!(migration(&core), Some(Migration::AutoToShamir));
    for s in &unseal[2..4] {
        assert!(!submit_migration_share(&core, s).await.unwrap());
    }
    assert!(submit_migration_share(&core, &unseal[0]).await.unwrap());
    assert!(!core.is_sealed());
    core.shutdown().await;

    // A Shamir node again: sealed at start, the same shares unseal it.
    let core = node(&store, None, None).await.unwrap();
    assert!(core.is_sealed());
    assert_eq!(
        core.seal_config().await.unwrap().unwrap().seal_type,
        "shamir"
    );
    for s in &unseal[1..3] {
        assert!(!core.submit_unseal_share(s).await.unwrap());
    }
    assert!(core.submit_unseal_share(&unseal[3]).await.unwrap());
    assert!(store.get(AUTO_ROOT_KEY_PATH).await.unwrap().is_none());
}

#[tokio::test]
async fn wrong_migration_keys_change_nothing() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("transit");
    let core = node(&store, None, None).await.unwrap();
    let (unseal, _) = core.initialize(1, 1).await.unwrap();
    core.shutdown().await;
    let core = node(&store, Some(&kms), None).await.unwrap();
    let mut bad = unseal[0].to_vec();
    bad[0] ^= 1;
    assert!(submit_migration_share(&core, &bad).await.is_err());
    assert_eq!(migration(&core), Some(Migration::ShamirToAuto));
    assert_eq!(
        core.seal_config().await.unwrap().unwrap().seal_type,
        "shamir"
    );
    assert!(core.is_sealed());
}

#[test]
fn migration_decisions_follow_vault() {
    use Migration::*;
    let d = decide_migration;
    assert_eq!(d(None, Some("transit"), None).unwrap(), None);
    assert_eq!(d(Some("shamir"), None, None).unwrap(), None);
    assert_eq!(
        d(Some("shamir"), Some("transit"), None).unwrap(),
        Some(ShamirToAuto)
    );
    assert_eq!(d(Some("transit"), Some("transit"), None).unwrap(), None);
    assert!(d(Some("transit"), None, None).is_err());
    assert!(d(Some("transit"), Some("awskms"), None).is_err());
    assert_eq!(
        d(Some("transit"), None, Some("transit")).unwrap(),
        Some(AutoToShamir)
    );
    assert_eq!(
        d(Some("transit"), Some("awskms"), Some("transit")).unwrap(),
        Some(AutoToAuto)
    );
    assert_eq!(d(Some("shamir"), None, Some("transit")).unwrap(), None);
    assert!(d(Some("awskms"), None, Some("transit")).is_err());
}

#[test]
fn recovery_numbers_are_validated_like_openbao() {
    assert!(validate_recovery(0, 0).is_ok());
    assert!(validate_recovery(1, 1).is_ok());
    assert!(validate_recovery(5, 3).is_ok());
    let e = validate_recovery(3, 1).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid recovery configuration: threshold must be greater than one for multiple shares"
    );
    assert!(validate_recovery(3, 5).is_err());
    assert!(validate_recovery(256, 3).is_err());
}

#[tokio::test]
async fn a_barrier_rekey_under_an_auto_seal_rotates_the_root_key_and_keeps_recovery_keys() {
    let store = Arc::new(MemoryStore::new());
    let kms = FakeKms::new("transit");
    let core = node(&store, Some(&kms), None).await.unwrap();
    let (shares, _) = initialize(&core, &dyn_(&kms), 3, 2).await.unwrap();
    let old_blob = store.get(AUTO_ROOT_KEY_PATH).await.unwrap().unwrap();
    let old_root = core.unsealed().unwrap().root_key();
    crate::rootkey::rotate(&core, crate::rootkey::SealWrap::Auto)
        .await
        .unwrap();
    let new_root = core.unsealed().unwrap().root_key();
    assert_ne!(old_root.as_slice(), new_root.as_slice());
    // The recovery key was re-sealed under the new root key.
    verify_recovery_shares(&core, &shares[..2]).await.unwrap();
    // The old stored root key still decrypts through the KMS, but what it
    // holds no longer opens the keyring.
    let stored: StoredRootKey = serde_json::from_slice(&old_blob).unwrap();
    let ct = B64.decode(stored.ciphertext).unwrap();
    let from_old_blob = kms.decrypt(&ct).await.unwrap();
    assert_eq!(from_old_blob.as_slice(), old_root.as_slice());
    let keyring = store
        .get(crate::barrier::KEYRING_PATH)
        .await
        .unwrap()
        .unwrap();
    assert!(open_with_key(&old_root, crate::barrier::KEYRING_PATH.as_bytes(), &keyring).is_err());
    core.shutdown().await;
    // A restart unseals through the KMS with the new root key; recovery
    // shares still unseal after an operator's seal.
    let core = node(&store, Some(&kms), None).await.unwrap();
    assert!(unseal_with_stored_key(&core).await.unwrap());
    assert_eq!(
        core.unsealed().unwrap().root_key().as_slice(),
        new_root.as_slice()
    );
    core.seal_now().await.unwrap();
    assert!(
        !submit_recovery_unseal_share(&core, &shares[2])
            .await
            .unwrap()
    );
    assert!(
        submit_recovery_unseal_share(&core, &shares[0])
            .await
            .unwrap()
    );
}
