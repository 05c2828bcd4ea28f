//! The security barrier: every value that reaches physical storage is
//! AES-256-GCM encrypted under the keyring, authenticated with its storage key
//! as AAD (so a value copied to another key does not decrypt).
//!
//! Data comes from [`crate::storage::StorageView`] (engines, tokens,
//! policies, mounts) and goes to a [`PhysicalStore`] (Raft). The keyring holds
//! one key per *term*; `sys/rotate` adds a term, new writes use the newest
//! term and old values stay readable under theirs. The keyring itself is
//! stored at [`KEYRING_PATH`] encrypted with the root key, which the seal
//! (`crate::seal`) protects. Sealed means the keyring is not in memory: every
//! read and write fails with [`CoreError::Sealed`].
//!
//! Stored value layout: `term (u32 BE) | version (1) | nonce (12) | ciphertext+tag`.

use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CoreError, Result};
use crate::storage::{BatchOp, PhysicalStore};

/// Where the keyring lives, encrypted by the root key (not by itself).
pub const KEYRING_PATH: &str = "core/seal/keyring";
/// The root key sealed under the keyring's active term (written with every
/// keyring), from which a node holding the keyring follows a root key
/// rotation (`crate::rootkey`).
pub const ROOT_KEY_COPY_PATH: &str = "core/seal/keyring-root-key";
/// Keys under this prefix are stored in plaintext by the seal (seal config,
/// wrapped root key, keyring); the barrier refuses to touch them.
pub const PLAINTEXT_PREFIX: &str = "core/seal/";

const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 12;

/// One term of the keyring.
#[derive(Clone, Serialize, Deserialize, Zeroize)]
#[zeroize(drop)]
struct TermKey {
    term: u32,
    #[serde(with = "b64")]
    key: Vec<u8>,
    /// Unix seconds.
    install_time: i64,
}

#[derive(Clone, Serialize, Deserialize, Default)]
struct KeyringFile {
    keys: Vec<TermKey>,
}

/// An unsealed keyring: ciphers ready per term.
struct Keyring {
    file: KeyringFile,
    ciphers: Vec<(u32, Aes256Gcm)>,
    active: u32,
}

impl Keyring {
    fn from_file(file: KeyringFile) -> Result<Self> {
        let mut ciphers = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            let c = Aes256Gcm::new_from_slice(&k.key)
                .map_err(|_| CoreError::Internal("keyring key has the wrong length".into()))?;
            ciphers.push((k.term, c));
        }
        let active = file
            .keys
            .iter()
            .map(|k| k.term)
            .max()
            .ok_or_else(|| CoreError::Internal("empty keyring".into()))?;
        Ok(Keyring {
            file,
            ciphers,
            active,
        })
    }

    fn cipher(&self, term: u32) -> Option<&Aes256Gcm> {
        self.ciphers
            .iter()
            .find(|(t, _)| *t == term)
            .map(|(_, c)| c)
    }
}

/// The keyring sealed under `root_key` at [`KEYRING_PATH`], and the root key
/// sealed under the keyring's active term at [`ROOT_KEY_COPY_PATH`] (as
/// Vault keeps `core/master`), written together: a node that holds the
/// keyring learns a rotated root key from the copy (`crate::rootkey`), and
/// a `sys/rotate` moves the copy to the new term, so an old keyring no
/// longer opens it.
fn keyring_ops(root_key: &[u8], file: &KeyringFile) -> Result<Vec<BatchOp>> {
    let plain = Zeroizing::new(serde_json::to_vec(file).map_err(CoreError::internal)?);
    let sealed = seal_with_key(root_key, KEYRING_PATH.as_bytes(), &plain)?;
    let active = file
        .keys
        .iter()
        .max_by_key(|k| k.term)
        .ok_or_else(|| CoreError::Internal("empty keyring".into()))?;
    let cipher = Aes256Gcm::new_from_slice(&active.key)
        .map_err(|_| CoreError::Internal("keyring key has the wrong length".into()))?;
    let copy = encrypt_with(
        &cipher,
        active.term,
        ROOT_KEY_COPY_PATH.as_bytes(),
        root_key,
    )?;
    Ok(vec![
        BatchOp::Put {
            key: KEYRING_PATH.into(),
            value: sealed,
        },
        BatchOp::Put {
            key: ROOT_KEY_COPY_PATH.into(),
            value: copy,
        },
    ])
}

/// A keyring kept aside by [`Barrier::held_keyring`]; it only opens.
pub(crate) struct HeldKeyring(Arc<Keyring>);

impl HeldKeyring {
    /// Open a value sealed under one of this keyring's terms at `key`.
    pub(crate) fn open(&self, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let term = term_of(sealed)?;
        let cipher = self
            .0
            .cipher(term)
            .ok_or_else(|| CoreError::Internal(format!("no keyring term {term} for {key}")))?;
        decrypt_with(cipher, key.as_bytes(), sealed)
    }
}

/// Status of the active key, for `sys/key-status`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub term: u32,
    /// RFC 3339.
    pub install_time: String,
    pub encryptions: u64,
}

pub struct Barrier {
    physical: Arc<dyn PhysicalStore>,
    keyring: RwLock<Option<Arc<Keyring>>>,
    encryptions: std::sync::atomic::AtomicU64,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn random_key() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// Encrypt `plain` with a raw 256-bit key and `aad`, in the barrier's layout
/// (term 0). Used by the seal for the root key and keyring, which cannot be
/// encrypted by the keyring itself.
pub fn seal_with_key(key: &[u8], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| CoreError::Internal("bad key length".into()))?;
    encrypt_with(&cipher, 0, aad, plain)
}

/// Inverse of [`seal_with_key`]. A wrong key is `Ok(None)`-free: it is an error.
pub fn open_with_key(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| CoreError::Internal("bad key length".into()))?;
    decrypt_with(&cipher, aad, sealed)
}

fn encrypt_with(cipher: &Aes256Gcm, term: u32, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| CoreError::Internal("encryption failed".into()))?;
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(&term.to_be_bytes());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn decrypt_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < HEADER + 16 || sealed[4] != VERSION {
        return Err(CoreError::Internal(
            "stored value is not a barrier ciphertext".into(),
        ));
    }
    let nonce = Nonce::from_slice(&sealed[5..HEADER]);
    cipher
        .decrypt(
            nonce,
            Payload {
                msg: &sealed[HEADER..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            CoreError::Internal("barrier decryption failed (wrong key or tampered value)".into())
        })
}

fn term_of(sealed: &[u8]) -> Result<u32> {
    if sealed.len() < HEADER {
        return Err(CoreError::Internal("stored value is too short".into()));
    }
    Ok(u32::from_be_bytes([
        sealed[0], sealed[1], sealed[2], sealed[3],
    ]))
}

impl Barrier {
    pub fn new(physical: Arc<dyn PhysicalStore>) -> Self {
        Barrier {
            physical,
            keyring: RwLock::new(None),
            encryptions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn physical(&self) -> &Arc<dyn PhysicalStore> {
        &self.physical
    }

    pub fn is_sealed(&self) -> bool {
        self.keyring.read().map(|k| k.is_none()).unwrap_or(true)
    }

    /// Whether a keyring has ever been written (the server is initialized).
    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.physical.get(KEYRING_PATH).await?.is_some())
    }

    /// Create the first keyring (term 1), store it encrypted under `root_key`,
    /// and leave the barrier unsealed.
    pub async fn initialize(&self, root_key: &[u8]) -> Result<()> {
        if self.is_initialized().await? {
            return Err(CoreError::BadRequest("Vault is already initialized".into()));
        }
        let file = KeyringFile {
            keys: vec![TermKey {
                term: 1,
                key: random_key(),
                install_time: now_unix(),
            }],
        };
        self.persist_keyring(root_key, &file).await?;
        self.install(file)
    }

    /// Load the keyring with the root key. A wrong root key fails and leaves
    /// the barrier sealed.
    pub async fn unseal(&self, root_key: &[u8]) -> Result<()> {
        let sealed = self
            .physical
            .get(KEYRING_PATH)
            .await?
            .ok_or(CoreError::NotInitialized)?;
        let plain = open_with_key(root_key, KEYRING_PATH.as_bytes(), &sealed)?;
        let file: KeyringFile = serde_json::from_slice(&plain)
            .map_err(|e| CoreError::Internal(format!("keyring: {e}")))?;
        self.install(file)
    }

    /// Drop the keyring from memory.
    pub fn seal(&self) {
        if let Ok(mut k) = self.keyring.write() {
            *k = None;
        }
    }

    /// Add a new term and make it active; old terms stay for decryption.
    pub async fn rotate(&self, root_key: &[u8]) -> Result<KeyStatus> {
        let ring = self.ring()?;
        let mut file = ring.file.clone();
        let term = ring.active + 1;
        file.keys.push(TermKey {
            term,
            key: random_key(),
            install_time: now_unix(),
        });
        self.persist_keyring(root_key, &file).await?;
        self.install(file)?;
        self.key_status()
    }

    pub fn key_status(&self) -> Result<KeyStatus> {
        let ring = self.ring()?;
        let k = ring
            .file
            .keys
            .iter()
            .find(|k| k.term == ring.active)
            .ok_or_else(|| CoreError::Internal("active term missing".into()))?;
        Ok(KeyStatus {
            term: k.term,
            install_time: rfc3339(k.install_time),
            encryptions: self.encryptions.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Install time (unix seconds) of the active term, for metrics.
    pub fn active_term_install_time(&self) -> Option<(u32, i64)> {
        let ring = self.ring().ok()?;
        ring.file
            .keys
            .iter()
            .find(|k| k.term == ring.active)
            .map(|k| (k.term, k.install_time))
    }

    /// The storage writes that put the keyring in memory under a new root
    /// key (same terms): for a root key rotation (`crate::rootkey`), which
    /// adds them to the batch that stores the new root key's wrappings.
    pub(crate) fn rekeyed_keyring_ops(&self, root_key: &[u8]) -> Result<Vec<BatchOp>> {
        keyring_ops(root_key, &self.ring()?.file)
    }

    /// Open a value the keyring sealed for the seal's plaintext area
    /// ([`ROOT_KEY_COPY_PATH`]) with the keyring in memory.
    pub(crate) fn open_reserved(&self, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.decrypt(key, sealed)
    }

    /// The keyring in memory, kept aside across a rebuild
    /// (`Core::replace_state`) to open the values it sealed in
    /// the replaced state ([`ROOT_KEY_COPY_PATH`]) once the barrier is
    /// sealed.
    pub(crate) fn held_keyring(&self) -> Option<HeldKeyring> {
        self.ring().ok().map(HeldKeyring)
    }

    async fn persist_keyring(&self, root_key: &[u8], file: &KeyringFile) -> Result<()> {
        self.physical.batch(keyring_ops(root_key, file)?).await
    }

    fn install(&self, file: KeyringFile) -> Result<()> {
        let ring = Keyring::from_file(file)?;
        let mut k = self
            .keyring
            .write()
            .map_err(|_| CoreError::Internal("keyring lock poisoned".into()))?;
        *k = Some(Arc::new(ring));
        Ok(())
    }

    fn ring(&self) -> Result<Arc<Keyring>> {
        self.keyring
            .read()
            .map_err(|_| CoreError::Internal("keyring lock poisoned".into()))?
            .clone()
            .ok_or(CoreError::Sealed)
    }

    fn check_key(key: &str) -> Result<()> {
        if key.starts_with(PLAINTEXT_PREFIX) {
            return Err(CoreError::Internal(format!(
                "{key} is reserved for the seal"
            )));
        }
        Ok(())
    }

    pub fn encrypt(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let ring = self.ring()?;
        let cipher = ring
            .cipher(ring.active)
            .ok_or_else(|| CoreError::Internal("active term missing".into()))?;
        self.encryptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        encrypt_with(cipher, ring.active, key.as_bytes(), plain)
    }

    pub fn decrypt(&self, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let ring = self.ring()?;
        let term = term_of(sealed)?;
        let cipher = ring
            .cipher(term)
            .ok_or_else(|| CoreError::Internal(format!("no keyring term {term} for {key}")))?;
        decrypt_with(cipher, key.as_bytes(), sealed)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        crate::traces::in_span("barrier.get", &[], async {
            Self::check_key(key)?;
            // Fail fast when sealed, before touching storage.
            self.ring()?;
            match self.physical.get(key).await? {
                None => Ok(None),
                Some(sealed) => {
                    let plain = self.decrypt(key, &sealed)?;
                    Ok(Some(plain.to_vec()))
                }
            }
        })
        .await
    }

    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        crate::traces::in_span("barrier.batch", &[], async {
            let mut sealed_ops = Vec::with_capacity(ops.len());
            for op in ops {
                Self::check_key(op.key())?;
                sealed_ops.push(match op {
                    BatchOp::Put { key, mut value } => {
                        let sealed = self.encrypt(&key, &value)?;
                        value.zeroize();
                        BatchOp::Put { key, value: sealed }
                    }
                    BatchOp::Delete { key } => {
                        self.ring()?;
                        BatchOp::Delete { key }
                    }
                });
            }
            self.physical.batch(sealed_ops).await
        })
        .await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.ring()?;
        self.physical.list(prefix).await
    }

    pub async fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        self.ring()?;
        self.physical.list_page(prefix, after, limit).await
    }
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn values_are_encrypted_bound_to_their_key_and_survive_rotation() {
        let phys = Arc::new(MemoryStore::new());
        let b = Barrier::new(phys.clone());
        let root = random_key();
        b.initialize(&root).await.unwrap();
        b.batch(vec![BatchOp::Put {
            key: "a/b".into(),
            value: b"hello".to_vec(),
        }])
        .await
        .unwrap();

        let raw = phys.get("a/b").await.unwrap().unwrap();
        assert!(
            !raw.windows(5).any(|w| w == b"hello"),
            "plaintext reached storage"
        );
        assert_eq!(b.get("a/b").await.unwrap().unwrap(), b"hello");

        // Moving a ciphertext to another key must not decrypt (AAD = key).
        phys.put("a/c", raw).await.unwrap();
        assert!(b.get("a/c").await.is_err());

        let st = b.rotate(&root).await.unwrap();
        assert_eq!(st.term, 2);
        b.batch(vec![BatchOp::Put {
            key: "a/d".into(),
            value: b"new".to_vec(),
        }])
        .await
        .unwrap();
        assert_eq!(
            term_of(&phys.get("a/d").await.unwrap().unwrap()).unwrap(),
            2
        );
        assert_eq!(b.get("a/b").await.unwrap().unwrap(), b"hello");

        b.seal();
        assert!(matches!(b.get("a/b").await, Err(CoreError::Sealed)));
        assert!(b.unseal(&random_key()).await.is_err());
        assert!(b.is_sealed());
        b.unseal(&root).await.unwrap();
        assert_eq!(b.get("a/d").await.unwrap().unwrap(), b"new");
        assert_eq!(b.key_status().unwrap().term, 2);
    }
}
