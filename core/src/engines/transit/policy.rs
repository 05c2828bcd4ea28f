//! Transit key policies: the named, versioned keys of one transit mount and
//! every cryptographic operation on them.
//!
//! A [`KeyPolicy`] is what Vault's `keysutil.Policy` is: a name, a key type,
//! settings (`derived`, `exportable`, `min_decryption_version`, ...) and one
//! [`KeyVersion`] per rotation. It is stored as JSON at `policy/<name>` in the
//! mount's [`crate::storage::StorageView`] (so only ever sealed by the
//! barrier) and parsed once into the backend's cache, where the AEAD ciphers of
//! non-derived keys are already keyed ([`KeyPolicy::prepare`]), so the hot
//! path (encrypt/decrypt) does no key expansion, no storage read and no parse.
//!
//! Formats follow Vault exactly: ciphertexts and signatures are
//! `vault:v<version>:<base64>`, where for AEAD ciphers the bytes are
//! `nonce || ciphertext || tag` (12-byte nonce for AES-GCM and ChaCha20, 24 for
//! XChaCha20). Derived keys come from HKDF-SHA256 with the version's key as
//! input key material, no salt and the caller's context as info (Vault's
//! `hkdf_sha256` KDF, the default since 0.8). Convergent encryption uses
//! Vault's version 3 scheme (nonce = HMAC-SHA256 of the plaintext under a
//! derived key). Errors are [`OpError`]: `User` for anything the caller can
//! cause (a 400), `Internal` for broken invariants (a 500). Key bytes live in
//! [`SecretBytes`], which zeroizes on drop and never prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::CoreError;

/// Vault's error for a ciphertext or signature below `min_decryption_version`.
pub const ERR_TOO_OLD: &str = "ciphertext or signature version is disallowed by policy (too old)";
/// Vault's error when a derived key is used without a context.
pub const ERR_MISSING_CONTEXT: &str = "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key";
/// Smallest and largest HMAC key, in bytes (Vault's `HmacMinKeySize`/`HmacMaxKeySize`).
pub const HMAC_MIN_KEY_SIZE: i64 = 32;
pub const HMAC_MAX_KEY_SIZE: i64 = 512;
/// Convergent encryption scheme written by this server (Vault's current one).
const CONVERGENT_VERSION: i64 = 3;
const TAG_LEN: usize = 16;

/// A failed operation: the caller's fault (400) or ours (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    User(String),
    Internal(String),
}

impl OpError {
    pub fn user(msg: impl Into<String>) -> Self {
        OpError::User(msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        OpError::Internal(msg.into())
    }
    pub fn message(&self) -> &str {
        match self {
            OpError::User(m) | OpError::Internal(m) => m,
        }
    }
    pub fn is_internal(&self) -> bool {
        matches!(self, OpError::Internal(_))
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<OpError> for CoreError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::User(m) => CoreError::BadRequest(m),
            OpError::Internal(m) => CoreError::Internal(m),
        }
    }
}

/// Go's wording for a base64 decoding failure, so clients see what OpenBao says.
pub fn b64_error(e: base64::DecodeError, input_len: usize) -> String {
    let at = match e {
        base64::DecodeError::InvalidByte(i, _) => i,
        base64::DecodeError::InvalidLastSymbol(i, _) => i,
        base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
            input_len.saturating_sub(1)
        }
    };
    format!("illegal base64 data at input byte {at}")
}

/// Decode standard base64 with Go's error wording.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    B64.decode(s).map_err(|e| b64_error(e, s.len()))
}

/// Key bytes: zeroized on drop, redacted in Debug, base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }
    pub fn random(len: usize) -> Self {
        let mut v = Zeroizing::new(vec![0u8; len]);
        OsRng.fill_bytes(&mut v);
        SecretBytes(v)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(B64.encode(self.0.as_slice()));
        s.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        B64.decode(s.as_bytes())
            .map(SecretBytes::new)
            .map_err(|_| serde::de::Error::custom("key material is not valid base64"))
    }
}

/// The key types this engine serves, named as in Vault's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "hmac")]
    Hmac,
}

impl KeyType {
    pub fn parse(s: &str) -> Option<KeyType> {
        Some(match s {
            "aes128-gcm96" => KeyType::Aes128Gcm96,
            "aes256-gcm96" => KeyType::Aes256Gcm96,
            "chacha20-poly1305" => KeyType::ChaCha20Poly1305,
            "xchacha20-poly1305" => KeyType::XChaCha20Poly1305,
            "ed25519" => KeyType::Ed25519,
            "ecdsa-p256" => KeyType::EcdsaP256,
            "hmac" => KeyType::Hmac,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::XChaCha20Poly1305 => "xchacha20-poly1305",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Hmac => "hmac",
        }
    }

    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            KeyType::Aes128Gcm96
                | KeyType::Aes256Gcm96
                | KeyType::ChaCha20Poly1305
                | KeyType::XChaCha20Poly1305
        )
    }
    pub fn encryption_supported(self) -> bool {
        self.is_symmetric()
    }
    pub fn decryption_supported(self) -> bool {
        self.is_symmetric()
    }
    pub fn signing_supported(self) -> bool {
        matches!(self, KeyType::Ed25519 | KeyType::EcdsaP256)
    }
    pub fn derivation_supported(self) -> bool {
        self.is_symmetric() || self == KeyType::Ed25519
    }
    /// Signature input is hashed first (ECDSA), not signed raw (Ed25519).
    pub fn hash_signature_input(self) -> bool {
        self == KeyType::EcdsaP256
    }
    pub fn associated_data_supported(self) -> bool {
        self.is_symmetric()
    }
    /// Length of the symmetric key, or of the generated private key material.
    fn key_len(self) -> usize {
        match self {
            KeyType::Aes128Gcm96 => 16,
            _ => 32,
        }
    }
}

/// Hash algorithms accepted by `hash`, `hmac`, `sign` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha2_224,
    Sha2_256,
    Sha2_384,
    Sha2_512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

macro_rules! with_hash {
    ($alg:expr, $d:ident => $body:expr) => {
        match $alg {
            HashAlg::Sha1 => {
                type $d = sha1::Sha1;
                $body
            }
            HashAlg::Sha2_224 => {
                type $d = Sha224;
                $body
            }
            HashAlg::Sha2_256 => {
                type $d = Sha256;
                $body
            }
            HashAlg::Sha2_384 => {
                type $d = Sha384;
                $body
            }
            HashAlg::Sha2_512 => {
                type $d = Sha512;
                $body
            }
            HashAlg::Sha3_224 => {
                type $d = sha3::Sha3_224;
                $body
            }
            HashAlg::Sha3_256 => {
                type $d = sha3::Sha3_256;
                $body
            }
            HashAlg::Sha3_384 => {
                type $d = sha3::Sha3_384;
                $body
            }
            HashAlg::Sha3_512 => {
                type $d = sha3::Sha3_512;
                $body
            }
        }
    };
}

impl HashAlg {
    pub fn parse(s: &str) -> Option<HashAlg> {
        Some(match s {
            "sha1" => HashAlg::Sha1,
            "sha2-224" => HashAlg::Sha2_224,
            "sha2-256" => HashAlg::Sha2_256,
            "sha2-384" => HashAlg::Sha2_384,
            "sha2-512" => HashAlg::Sha2_512,
            "sha3-224" => HashAlg::Sha3_224,
            "sha3-256" => HashAlg::Sha3_256,
            "sha3-384" => HashAlg::Sha3_384,
            "sha3-512" => HashAlg::Sha3_512,
            _ => return None,
        })
    }

    pub fn digest(self, input: &[u8]) -> Vec<u8> {
        with_hash!(self, D => D::digest(input).to_vec())
    }

    pub fn hmac(self, key: &[u8], input: &[u8]) -> Vec<u8> {
        with_hash!(self, D => {
            // HMAC accepts keys of any length, so this cannot fail; fall back
            // to an empty MAC rather than panic if it ever did.
            match <Hmac<D> as Mac>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(input);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        })
    }
}

/// How an ECDSA signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marshaling {
    Asn1,
    Jws,
}

impl Marshaling {
    pub fn parse(s: &str) -> Option<Marshaling> {
        match s {
            "asn1" => Some(Marshaling::Asn1),
            "jws" => Some(Marshaling::Jws),
            _ => None,
        }
    }
}

/// One version of a key. Times are Unix nanoseconds.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The symmetric key, the HMAC key, the Ed25519 seed‖public key (64
    /// bytes, as Go lays it out) or the P-256 private scalar.
    pub key: SecretBytes,
    /// The HMAC key of this version (`hmac/` on non-HMAC keys).
    pub hmac_key: SecretBytes,
    pub created_ns: i64,
    /// Ed25519: base64 public key; ECDSA: PEM `PUBLIC KEY`.
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub convergent_version: i64,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("created_ns", &self.created_ns)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A keyed AEAD, ready to seal and open.
enum SymCipher {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
    C20(Box<ChaCha20Poly1305>),
    X20(Box<XChaCha20Poly1305>),
}

fn seal_with<A: AeadInPlace>(
    a: &A,
    nonce: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<Vec<u8>, OpError> {
    let mut out = Vec::with_capacity(nonce.len() + pt.len() + TAG_LEN);
    out.extend_from_slice(nonce);
    out.extend_from_slice(pt);
    let tag = a
        .encrypt_in_place_detached(
            aes_gcm::aead::Nonce::<A>::from_slice(nonce),
            aad,
            &mut out[nonce.len()..],
        )
        .map_err(|_| OpError::internal("encryption failed"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_with<A: AeadInPlace>(
    a: &A,
    nonce_len: usize,
    data: &[u8],
    aad: &[u8],
    auth_err: &str,
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    if data.len() < nonce_len {
        return Err(OpError::user("invalid ciphertext length"));
    }
    let (nonce, rest) = data.split_at(nonce_len);
    if rest.len() < TAG_LEN {
        return Err(OpError::user(auth_err));
    }
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut buf = Zeroizing::new(ct.to_vec());
    a.decrypt_in_place_detached(
        aes_gcm::aead::Nonce::<A>::from_slice(nonce),
        aad,
        &mut buf,
        aes_gcm::aead::Tag::<A>::from_slice(tag),
    )
    .map_err(|_| OpError::user(auth_err))?;
    Ok(buf)
}

const GCM_AUTH: &str = "cipher: message authentication failed";
const CHACHA_AUTH: &str = "chacha20poly1305: message authentication failed";

impl SymCipher {
    fn new(kt: KeyType, key: &[u8]) -> Result<SymCipher, OpError> {
        let bad = |_| OpError::internal("could not derive enc key, length not correct");
        Ok(match kt {
            KeyType::Aes128Gcm96 => {
                SymCipher::A128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?))
            }
            KeyType::Aes256Gcm96 => {
                SymCipher::A256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?))
            }
            KeyType::ChaCha20Poly1305 => SymCipher::C20(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(bad)?,
            )),
            KeyType::XChaCha20Poly1305 => SymCipher::X20(Box::new(
                XChaCha20Poly1305::new_from_slice(key).map_err(bad)?,
            )),
            other => {
                return Err(OpError::user(format!(
                    "message encryption not supported for key type {}",
                    other.as_str()
                )));
            }
        })
    }

    fn nonce_len(&self) -> usize {
        match self {
            SymCipher::X20(_) => 24,
            _ => 12,
        }
    }

    fn seal(&self, nonce: &[u8], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, OpError> {
        match self {
            SymCipher::A128(c) => seal_with(c.as_ref(), nonce, aad, pt),
            SymCipher::A256(c) => seal_with(c.as_ref(), nonce, aad, pt),
            SymCipher::C20(c) => seal_with(c.as_ref(), nonce, aad, pt),
            SymCipher::X20(c) => seal_with(c.as_ref(), nonce, aad, pt),
        }
    }

    fn open(&self, data: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpError> {
        let n = self.nonce_len();
        match self {
            SymCipher::A128(c) => open_with(c.as_ref(), n, data, aad, GCM_AUTH),
            SymCipher::A256(c) => open_with(c.as_ref(), n, data, aad, GCM_AUTH),
            SymCipher::C20(c) => open_with(c.as_ref(), n, data, aad, CHACHA_AUTH),
            SymCipher::X20(c) => open_with(c.as_ref(), n, data, aad, CHACHA_AUTH),
        }
    }
}

/// Settings of a new key (`keys/:name` or an upserting `encrypt`).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_type: KeyType,
    pub derived: bool,
    pub convergent: bool,
    pub exportable: bool,
    pub allow_plaintext_backup: bool,
    pub auto_rotate_period: i64,
    pub key_size: i64,
}

/// A named transit key and all its versions.
#[derive(Serialize, Deserialize)]
pub struct KeyPolicy {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub derived: bool,
    #[serde(default)]
    pub convergent_encryption: bool,
    #[serde(default)]
    pub convergent_version: i64,
    pub exportable: bool,
    pub deletion_allowed: bool,
    pub allow_plaintext_backup: bool,
    /// Seconds; 0 disables automatic rotation.
    #[serde(default)]
    pub auto_rotate_period: i64,
    /// HMAC keys only: key length in bytes.
    #[serde(default)]
    pub key_size: i64,
    pub latest_version: i64,
    pub min_decryption_version: i64,
    pub min_encryption_version: i64,
    #[serde(default)]
    pub min_available_version: i64,
    /// Every version not trimmed away, including those below
    /// `min_decryption_version` (Vault keeps them in its archive).
    pub keys: BTreeMap<i64, KeyVersion>,
    /// Keyed ciphers of non-derived symmetric versions, built by [`Self::prepare`].
    #[serde(skip)]
    ciphers: BTreeMap<i64, SymCipher>,
}

impl Clone for KeyPolicy {
    fn clone(&self) -> Self {
        KeyPolicy {
            name: self.name.clone(),
            key_type: self.key_type,
            derived: self.derived,
            convergent_encryption: self.convergent_encryption,
            convergent_version: self.convergent_version,
            exportable: self.exportable,
            deletion_allowed: self.deletion_allowed,
            allow_plaintext_backup: self.allow_plaintext_backup,
            auto_rotate_period: self.auto_rotate_period,
            key_size: self.key_size,
            latest_version: self.latest_version,
            min_decryption_version: self.min_decryption_version,
            min_encryption_version: self.min_encryption_version,
            min_available_version: self.min_available_version,
            keys: self.keys.clone(),
            ciphers: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPolicy")
            .field("name", &self.name)
            .field("type", &self.key_type)
            .field("latest_version", &self.latest_version)
            .field("min_decryption_version", &self.min_decryption_version)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> i64 {
    let n = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn format_time_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Split `vault:v<N>:<payload>` as Vault does; `what` names the thing in errors.
pub fn split_versioned<'a>(value: &'a str, what: &str) -> Result<(i64, &'a str), OpError> {
    let rest = value
        .strip_prefix("vault:v")
        .ok_or_else(|| OpError::user(format!("invalid {what}: no prefix")))?;
    let (ver, payload) = rest
        .split_once(':')
        .ok_or_else(|| OpError::user(format!("invalid {what}: wrong number of fields")))?;
    let ver: i64 = ver.parse().map_err(|_| {
        OpError::user(format!(
            "invalid {what}: version number could not be decoded"
        ))
    })?;
    Ok((ver, payload))
}

fn versioned(ver: i64, raw: &[u8], url_safe: bool) -> String {
    let mut s = String::with_capacity(16 + raw.len().div_ceil(3) * 4);
    let _ = write!(s, "vault:v{ver}:");
    if url_safe {
        B64URL.encode_string(raw, &mut s);
    } else {
        B64.encode_string(raw, &mut s);
    }
    s
}

/// Take the leftmost 32 bytes of a digest, left-padding shorter ones with
/// zeros: the integer Go's ECDSA signs for a P-256 key.
fn p256_prehash(input: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if input.len() >= 32 {
        out.copy_from_slice(&input[..32]);
    } else {
        out[32 - input.len()..].copy_from_slice(input);
    }
    out
}

/// A signature and the version that made it.
pub struct Signed {
    pub signature: String,
    pub version: i64,
    /// Derived Ed25519 keys return the public key for the context.
    pub public_key: Option<Vec<u8>>,
}

impl KeyPolicy {
    /// A new key with its first version. Validates the settings as Vault's
    /// lock manager does.
    pub fn create(name: &str, cfg: &NewKey) -> Result<KeyPolicy, OpError> {
        if (cfg.derived || cfg.convergent) && !cfg.key_type.derivation_supported() {
            return Err(OpError::user(format!(
                "key derivation and convergent encryption not supported for keys of type {}",
                cfg.key_type.as_str()
            )));
        }
        if cfg.convergent && !cfg.derived {
            return Err(OpError::user(
                "convergent encryption requires derivation to be enabled",
            ));
        }
        if cfg.convergent && !cfg.key_type.is_symmetric() {
            return Err(OpError::user(format!(
                "convergent encryption not supported for keys of type {}",
                cfg.key_type.as_str()
            )));
        }
        let key_size = if cfg.key_type == KeyType::Hmac {
            if cfg.key_size < HMAC_MIN_KEY_SIZE || cfg.key_size > HMAC_MAX_KEY_SIZE {
                return Err(OpError::user(format!(
                    "invalid key size for HMAC key, must be between {HMAC_MIN_KEY_SIZE} and {HMAC_MAX_KEY_SIZE} bytes"
                )));
            }
            cfg.key_size
        } else {
            0
        };
        let mut p = KeyPolicy {
            name: name.to_string(),
            key_type: cfg.key_type,
            derived: cfg.derived,
            convergent_encryption: cfg.convergent,
            convergent_version: if cfg.convergent { -1 } else { 0 },
            exportable: cfg.exportable,
            deletion_allowed: false,
            allow_plaintext_backup: cfg.allow_plaintext_backup,
            auto_rotate_period: cfg.auto_rotate_period,
            key_size,
            latest_version: 0,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            keys: BTreeMap::new(),
            ciphers: BTreeMap::new(),
        };
        p.rotate()?;
        Ok(p)
    }

    /// Is an automatic rotation due at `now_ns` (unix nanoseconds)? Vault's
    /// rule: `auto_rotate_period` is set and `now` is after the latest
    /// version's creation time plus the period.
    pub fn auto_rotate_due(&self, now_ns: i64) -> bool {
        if self.auto_rotate_period <= 0 {
            return false;
        }
        let Some(latest) = self.keys.get(&self.latest_version) else {
            return false;
        };
        let period_ns = self.auto_rotate_period.saturating_mul(1_000_000_000);
        now_ns > latest.created_ns.saturating_add(period_ns)
    }

    /// Add a new version and make it the latest.
    pub fn rotate(&mut self) -> Result<(), OpError> {
        self.rotate_at(now_ns())
    }

    /// [`Self::rotate`], the new version created at `created_ns` (unix
    /// nanoseconds): automatic rotation passes the time it checked against.
    pub fn rotate_at(&mut self, created_ns: i64) -> Result<(), OpError> {
        let hmac_key = SecretBytes::random(32);
        let mut version = KeyVersion {
            key: SecretBytes::default(),
            hmac_key,
            created_ns,
            public_key: String::new(),
            convergent_version: if self.convergent_encryption {
                CONVERGENT_VERSION
            } else {
                0
            },
        };
        match self.key_type {
            KeyType::Hmac => {
                let len = usize::try_from(self.key_size)
                    .map_err(|_| OpError::internal("invalid HMAC key size"))?;
                version.key = SecretBytes::random(len);
                version.hmac_key = version.key.clone();
            }
            KeyType::Ed25519 => {
                let seed = Zeroizing::new({
                    let mut s = [0u8; 32];
                    OsRng.fill_bytes(&mut s);
                    s
                });
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                let mut full = Vec::with_capacity(64);
                full.extend_from_slice(seed.as_ref());
                full.extend_from_slice(sk.verifying_key().as_bytes());
                version.key = SecretBytes::new(full);
                version.public_key = B64.encode(sk.verifying_key().as_bytes());
            }
            KeyType::EcdsaP256 => {
                use p256::pkcs8::{EncodePublicKey, LineEnding};
                let sk = p256::SecretKey::random(&mut OsRng);
                version.public_key = sk
                    .public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .map_err(|e| OpError::internal(format!("error marshaling public key: {e}")))?;
                version.key = SecretBytes::new(sk.to_bytes().to_vec());
            }
            kt => version.key = SecretBytes::random(kt.key_len()),
        }
        self.latest_version += 1;
        self.keys.insert(self.latest_version, version);
        if self.min_decryption_version == 0 {
            self.min_decryption_version = 1;
        }
        Ok(())
    }

    /// Drop versions below `min_available_version` (after `trim`).
    pub fn drop_trimmed(&mut self) {
        let keep = self.min_available_version;
        self.keys.retain(|v, _| *v >= keep);
    }

    /// Key the AEAD ciphers of non-derived symmetric versions, once, after
    /// load or change; the hot path then only looks them up.
    pub fn prepare(&mut self) -> Result<(), OpError> {
        self.ciphers.clear();
        if self.derived || !self.key_type.is_symmetric() {
            return Ok(());
        }
        for (v, k) in &self.keys {
            self.ciphers
                .insert(*v, SymCipher::new(self.key_type, k.key.expose())?);
        }
        Ok(())
    }

    fn entry(&self, ver: i64) -> Result<&KeyVersion, OpError> {
        self.keys
            .get(&ver)
            .ok_or_else(|| OpError::user("no such key version"))
    }

    /// HKDF-SHA256(key of `ver`, salt = none, info = context), `len` bytes.
    pub fn derive_key(
        &self,
        ver: i64,
        context: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, OpError> {
        if !self.key_type.derivation_supported() {
            return Err(OpError::user(format!(
                "derivation not supported for key type {}",
                self.key_type.as_str()
            )));
        }
        if ver <= 0 || ver > self.latest_version {
            return Err(OpError::user("invalid key version"));
        }
        if context.is_empty() {
            return Err(OpError::user(ERR_MISSING_CONTEXT));
        }
        let entry = self.entry(ver)?;
        let hk = Hkdf::<Sha256>::new(None, entry.key.expose());
        let mut out = Zeroizing::new(vec![0u8; len]);
        hk.expand(context, &mut out)
            .map_err(|_| OpError::internal("unable to read enough derived bytes"))?;
        Ok(out)
    }

    /// Resolve and check the version used to encrypt (0 = latest).
    pub fn encryption_version(&self, ver: i64) -> Result<i64, OpError> {
        match ver {
            0 => Ok(self.latest_version),
            v if v < 0 => Err(OpError::user(
                "requested version for encryption is negative",
            )),
            v if v > self.latest_version => Err(OpError::user(
                "requested version for encryption is higher than the latest key version",
            )),
            v if v < self.min_encryption_version => Err(OpError::user(
                "requested version for encryption is less than the minimum encryption key version",
            )),
            v => Ok(v),
        }
    }

    /// Encrypt `plaintext` with version `ver` (0 = latest). Returns the
    /// `vault:vN:` ciphertext and the version used.
    pub fn encrypt(
        &self,
        ver: i64,
        context: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(String, i64), OpError> {
        if !self.key_type.encryption_supported() {
            return Err(OpError::user(format!(
                "message encryption not supported for key type {}",
                self.key_type.as_str()
            )));
        }
        let ver = self.encryption_version(ver)?;
        let raw = if self.derived {
            let convergent = self.convergent_encryption;
            let enc_len = self.key_type.key_len();
            let key = self.derive_key(ver, context, enc_len + if convergent { 32 } else { 0 })?;
            let cipher = SymCipher::new(self.key_type, &key[..enc_len])?;
            let mut nonce = [0u8; 24];
            let nonce = &mut nonce[..cipher.nonce_len()];
            if convergent {
                let mac = HashAlg::Sha2_256.hmac(&key[enc_len..], plaintext);
                nonce.copy_from_slice(&mac[..nonce.len()]);
            } else {
                OsRng.fill_bytes(nonce);
            }
            cipher.seal(nonce, aad, plaintext)?
        } else {
            let cipher = self
                .ciphers
                .get(&ver)
                .ok_or_else(|| OpError::user("no such key version"))?;
            let mut nonce = [0u8; 24];
            let nonce = &mut nonce[..cipher.nonce_len()];
            OsRng.fill_bytes(nonce);
            cipher.seal(nonce, aad, plaintext)?
        };
        Ok((versioned(ver, &raw, false), ver))
    }

    /// Decrypt a `vault:vN:` ciphertext. The plaintext is zeroized on drop.
    pub fn decrypt(
        &self,
        context: &[u8],
        value: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpError> {
        if !self.key_type.decryption_supported() {
            return Err(OpError::user(format!(
                "message decryption not supported for key type {}",
                self.key_type.as_str()
            )));
        }
        let (mut ver, payload) = split_versioned(value, "ciphertext")?;
        if ver == 0 {
            // Vault's compatibility with keys numbered from zero.
            ver = 1;
        }
        if ver > self.latest_version {
            return Err(OpError::user("invalid ciphertext: version is too new"));
        }
        if self.min_decryption_version > 0 && ver < self.min_decryption_version {
            return Err(OpError::user(ERR_TOO_OLD));
        }
        let decoded = B64
            .decode(payload)
            .map_err(|_| OpError::user("invalid ciphertext: could not decode base64"))?;
        if self.derived {
            let enc_len = self.key_type.key_len();
            let extra = if self.convergent_encryption { 32 } else { 0 };
            let key = self.derive_key(ver, context, enc_len + extra)?;
            SymCipher::new(self.key_type, &key[..enc_len])?.open(&decoded, aad)
        } else {
            self.ciphers
                .get(&ver)
                .ok_or_else(|| OpError::user("no such key version"))?
                .open(&decoded, aad)
        }
    }

    /// The HMAC key of a version, with Vault's checks.
    pub fn hmac_key(&self, ver: i64) -> Result<&[u8], OpError> {
        if ver < 0 {
            return Err(OpError::user(
                "key version does not exist (cannot be negative)",
            ));
        }
        if ver > self.latest_version {
            return Err(OpError::user(format!(
                "key version does not exist; latest key version is {}",
                self.latest_version
            )));
        }
        let e = self.entry(ver)?;
        if e.hmac_key.is_empty() {
            return Err(OpError::user("no HMAC key exists for that key version"));
        }
        Ok(e.hmac_key.expose())
    }

    /// Compute `vault:vN:` HMAC of `input`.
    pub fn hmac(&self, ver: i64, alg: HashAlg, input: &[u8]) -> Result<String, OpError> {
        let key = self.hmac_key(ver)?;
        Ok(versioned(ver, &alg.hmac(key, input), false))
    }

    /// Check a `vault:vN:` HMAC in constant time.
    pub fn verify_hmac(&self, alg: HashAlg, input: &[u8], mac: &str) -> Result<bool, OpError> {
        let rest = mac
            .strip_prefix("vault:v")
            .ok_or_else(|| OpError::user("invalid HMAC to verify: no prefix"))?;
        let (ver, payload) = rest
            .split_once(':')
            .ok_or_else(|| OpError::user("invalid HMAC: wrong number of fields"))?;
        let ver: i64 = ver
            .parse()
            .map_err(|_| OpError::user("invalid HMAC: version number could not be decoded"))?;
        let given = decode_b64(payload).map_err(|e| {
            OpError::user(format!("unable to decode verification HMAC as base64: {e}"))
        })?;
        if ver > self.latest_version {
            return Err(OpError::user("invalid HMAC: version is too new"));
        }
        if self.min_decryption_version > 0 && ver < self.min_decryption_version {
            return Err(OpError::user(
                "cannot verify HMAC: version is too old (disallowed by policy)",
            ));
        }
        let key = self.hmac_key(ver)?;
        let expected = alg.hmac(key, input);
        Ok(expected.len() == given.len() && bool::from(expected.ct_eq(&given)))
    }

    fn ed25519_signing_key(
        &self,
        ver: i64,
        context: &[u8],
    ) -> Result<ed25519_dalek::SigningKey, OpError> {
        let seed: Zeroizing<[u8; 32]> = if self.derived {
            let d = self
                .derive_key(ver, context, 32)
                .map_err(|e| OpError::user(format!("error deriving key: {e}")))?;
            let mut s = Zeroizing::new([0u8; 32]);
            s.copy_from_slice(&d);
            s
        } else {
            let k = self.entry(ver)?.key.expose();
            let mut s = Zeroizing::new([0u8; 32]);
            s.copy_from_slice(
                k.get(..32)
                    .ok_or_else(|| OpError::internal("malformed ed25519 key"))?,
            );
            s
        };
        Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Sign `input` (already hashed for ECDSA unless the caller prehashed).
    pub fn sign(
        &self,
        ver: i64,
        context: &[u8],
        input: &[u8],
        marshaling: Marshaling,
    ) -> Result<Signed, OpError> {
        if !self.key_type.signing_supported() {
            return Err(OpError::user(format!(
                "message signing not supported for key type {}",
                self.key_type.as_str()
            )));
        }
        let ver = match ver {
            0 => self.latest_version,
            v if v < 0 => return Err(OpError::user("requested version for signing is negative")),
            v if v > self.latest_version => {
                return Err(OpError::user(
                    "requested version for signing is higher than the latest key version",
                ));
            }
            v if self.min_encryption_version > 0 && v < self.min_encryption_version => {
                return Err(OpError::user(
                    "requested version for signing is less than the minimum encryption key version",
                ));
            }
            v => v,
        };
        match self.key_type {
            KeyType::Ed25519 => {
                use ed25519_dalek::Signer;
                let sk = self.ed25519_signing_key(ver, context)?;
                let sig = sk.sign(input);
                let public_key = self.derived.then(|| sk.verifying_key().as_bytes().to_vec());
                let raw = sig.to_bytes();
                let sig = match marshaling {
                    Marshaling::Asn1 => versioned(ver, &raw, false),
                    Marshaling::Jws => versioned(ver, &raw, true),
                };
                Ok(Signed {
                    signature: sig,
                    version: ver,
                    public_key,
                })
            }
            KeyType::EcdsaP256 => {
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                let sk = p256::ecdsa::SigningKey::from_slice(self.entry(ver)?.key.expose())
                    .map_err(|_| OpError::internal("malformed ecdsa key"))?;
                let digest = p256_prehash(input);
                let sig: p256::ecdsa::Signature = sk
                    .sign_prehash(&digest)
                    .map_err(|_| OpError::internal("signing failed"))?;
                let signature = match marshaling {
                    Marshaling::Asn1 => versioned(ver, sig.to_der().as_bytes(), false),
                    Marshaling::Jws => versioned(ver, &sig.to_bytes(), true),
                };
                Ok(Signed {
                    signature,
                    version: ver,
                    public_key: None,
                })
            }
            _ => Err(OpError::internal("unsupported key type")),
        }
    }

    /// Verify a `vault:vN:` signature over `input`.
    pub fn verify_signature(
        &self,
        context: &[u8],
        input: &[u8],
        sig: &str,
        marshaling: Marshaling,
    ) -> Result<bool, OpError> {
        if !self.key_type.signing_supported() {
            return Err(OpError::user(format!(
                "message verification not supported for key type {}",
                self.key_type.as_str()
            )));
        }
        let (ver, payload) = split_versioned(sig, "signature")?;
        if ver > self.latest_version {
            return Err(OpError::user("invalid signature: version is too new"));
        }
        if self.min_decryption_version > 0 && ver < self.min_decryption_version {
            return Err(OpError::user(ERR_TOO_OLD));
        }
        let bytes = match marshaling {
            Marshaling::Asn1 => B64.decode(payload),
            Marshaling::Jws => B64URL.decode(payload),
        }
        .map_err(|_| OpError::user("invalid base64 signature value"))?;
        match self.key_type {
            KeyType::Ed25519 => {
                let vk = if self.derived {
                    self.ed25519_signing_key(ver, context)?.verifying_key()
                } else {
                    let raw = B64
                        .decode(&self.entry(ver)?.public_key)
                        .map_err(|_| OpError::internal("malformed ed25519 public key"))?;
                    let arr: [u8; 32] = raw
                        .as_slice()
                        .try_into()
                        .map_err(|_| OpError::internal("malformed ed25519 public key"))?;
                    ed25519_dalek::VerifyingKey::from_bytes(&arr)
                        .map_err(|_| OpError::internal("malformed ed25519 public key"))?
                };
                let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
                    return Ok(false);
                };
                Ok(vk.verify_strict(input, &sig).is_ok())
            }
            KeyType::EcdsaP256 => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = match marshaling {
                    Marshaling::Asn1 => p256::ecdsa::Signature::from_der(&bytes)
                        .map_err(|_| OpError::user("supplied signature is invalid"))?,
                    Marshaling::Jws => {
                        if bytes.len() != 64 {
                            return Ok(false);
                        }
                        match p256::ecdsa::Signature::from_slice(&bytes) {
                            Ok(s) => s,
                            Err(_) => return Ok(false),
                        }
                    }
                };
                let sk = p256::ecdsa::SigningKey::from_slice(self.entry(ver)?.key.expose())
                    .map_err(|_| OpError::internal("malformed ecdsa key"))?;
                let digest = p256_prehash(input);
                Ok(sk.verifying_key().verify_prehash(&digest, &sig).is_ok())
            }
            _ => Err(OpError::internal("unsupported key type")),
        }
    }

    /// The key's public description, as `keys/:name` answers. Versions below
    /// `min_decryption_version` are not listed (Vault has archived them).
    pub fn describe(&self, context: Option<&[u8]>) -> Result<Map<String, Value>, OpError> {
        let mut m = Map::new();
        m.insert("name".into(), self.name.clone().into());
        m.insert("type".into(), self.key_type.as_str().into());
        m.insert("derived".into(), self.derived.into());
        m.insert("deletion_allowed".into(), self.deletion_allowed.into());
        m.insert(
            "min_available_version".into(),
            self.min_available_version.into(),
        );
        m.insert(
            "min_decryption_version".into(),
            self.min_decryption_version.into(),
        );
        m.insert(
            "min_encryption_version".into(),
            self.min_encryption_version.into(),
        );
        m.insert("latest_version".into(), self.latest_version.into());
        m.insert("exportable".into(), self.exportable.into());
        m.insert(
            "allow_plaintext_backup".into(),
            self.allow_plaintext_backup.into(),
        );
        m.insert(
            "supports_encryption".into(),
            self.key_type.encryption_supported().into(),
        );
        m.insert(
            "supports_decryption".into(),
            self.key_type.decryption_supported().into(),
        );
        m.insert(
            "supports_signing".into(),
            self.key_type.signing_supported().into(),
        );
        m.insert(
            "supports_derivation".into(),
            self.key_type.derivation_supported().into(),
        );
        m.insert("auto_rotate_period".into(), self.auto_rotate_period.into());
        m.insert("imported_key".into(), false.into());
        m.insert("soft_deleted".into(), false.into());
        if self.key_size != 0 {
            m.insert("key_size".into(), self.key_size.into());
        }
        if self.derived {
            m.insert("kdf".into(), "hkdf_sha256".into());
            m.insert(
                "convergent_encryption".into(),
                self.convergent_encryption.into(),
            );
            if self.convergent_encryption {
                m.insert(
                    "convergent_encryption_version".into(),
                    self.convergent_version.into(),
                );
            }
        }
        let shown = self
            .keys
            .iter()
            .filter(|(v, _)| **v >= self.min_decryption_version);
        if self.key_type.is_symmetric() {
            let keys: Map<String, Value> = shown
                .map(|(v, k)| {
                    (
                        v.to_string(),
                        Value::from(k.created_ns.div_euclid(1_000_000_000)),
                    )
                })
                .collect();
            m.insert("keys".into(), Value::Object(keys));
        } else if self.key_type.signing_supported() {
            let mut keys = Map::new();
            for (v, k) in shown {
                let public_key = match (self.key_type, self.derived, context) {
                    (KeyType::Ed25519, true, None) => String::new(),
                    (KeyType::Ed25519, true, Some(ctx)) => {
                        let sk = self.ed25519_signing_key(*v, ctx).map_err(|e| {
                            OpError::user(format!(
                                "failed to derive key to return public component: {e}"
                            ))
                        })?;
                        B64.encode(sk.verifying_key().as_bytes())
                    }
                    _ => k.public_key.clone(),
                };
                let name = match self.key_type {
                    KeyType::EcdsaP256 => "P-256",
                    _ => "ed25519",
                };
                let mut e = Map::new();
                e.insert("certificate_chain".into(), "".into());
                e.insert("creation_time".into(), format_time_ns(k.created_ns).into());
                e.insert("name".into(), name.into());
                e.insert("public_key".into(), public_key.into());
                keys.insert(v.to_string(), Value::Object(e));
            }
            m.insert("keys".into(), Value::Object(keys));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kt: KeyType, derived: bool, convergent: bool) -> KeyPolicy {
        let mut p = KeyPolicy::create(
            "k",
            &NewKey {
                key_type: kt,
                derived,
                convergent,
                exportable: false,
                allow_plaintext_backup: false,
                auto_rotate_period: 0,
                key_size: 32,
            },
        )
        .unwrap();
        p.prepare().unwrap();
        p
    }

    #[test]
    fn ciphertext_layout_matches_vault() {
        for (kt, nonce) in [
            (KeyType::Aes256Gcm96, 12),
            (KeyType::Aes128Gcm96, 12),
            (KeyType::ChaCha20Poly1305, 12),
            (KeyType::XChaCha20Poly1305, 24),
        ] {
            let p = key(kt, false, false);
            let (ct, v) = p.encrypt(0, b"", b"hello", b"").unwrap();
            assert_eq!(v, 1);
            let body = ct.strip_prefix("vault:v1:").unwrap();
            assert_eq!(B64.decode(body).unwrap().len(), nonce + 5 + 16, "{kt:?}");
            assert_eq!(p.decrypt(b"", &ct, b"").unwrap().as_slice(), b"hello");
        }
    }

    #[test]
    fn tampering_and_bad_input_are_user_errors() {
        let p = key(KeyType::Aes256Gcm96, false, false);
        let (ct, _) = p.encrypt(0, b"", b"hello", b"").unwrap();
        let mut raw = B64.decode(&ct[9..]).unwrap();
        raw[13] ^= 1;
        let tampered = format!("vault:v1:{}", B64.encode(&raw));
        for (bad, want) in [
            (tampered.as_str(), GCM_AUTH),
            ("foo", "invalid ciphertext: no prefix"),
            ("vault:v1", "invalid ciphertext: wrong number of fields"),
            (
                "vault:vx:abc",
                "invalid ciphertext: version number could not be decoded",
            ),
            ("vault:v9:abc", "invalid ciphertext: version is too new"),
            (
                "vault:v1:!!!",
                "invalid ciphertext: could not decode base64",
            ),
            ("vault:v1:YWJj", "invalid ciphertext length"),
            ("vault:v-1:YWJj", ERR_TOO_OLD),
        ] {
            assert_eq!(p.decrypt(b"", bad, b""), Err(OpError::user(want)), "{bad}");
        }
        assert!(p.decrypt(b"", &ct, b"aad").is_err(), "wrong AAD must fail");
    }

    #[test]
    fn derived_keys_need_the_same_context() {
        let p = key(KeyType::Aes256Gcm96, true, false);
        assert_eq!(
            p.encrypt(0, b"", b"x", b"").unwrap_err(),
            OpError::user(ERR_MISSING_CONTEXT)
        );
        let (ct, _) = p.encrypt(0, b"ctx-a", b"secret", b"").unwrap();
        assert_eq!(p.decrypt(b"ctx-a", &ct, b"").unwrap().as_slice(), b"secret");
        assert_eq!(p.decrypt(b"ctx-b", &ct, b""), Err(OpError::user(GCM_AUTH)));
    }

    #[test]
    fn convergent_encryption_is_deterministic_per_context() {
        let p = key(KeyType::Aes256Gcm96, true, true);
        let a = p.encrypt(0, b"c", b"same", b"").unwrap().0;
        let b = p.encrypt(0, b"c", b"same", b"").unwrap().0;
        let c = p.encrypt(0, b"d", b"same", b"").unwrap().0;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(p.decrypt(b"c", &a, b"").unwrap().as_slice(), b"same");
    }

    #[test]
    fn min_decryption_version_hides_and_refuses_old_versions() {
        let mut p = key(KeyType::Aes256Gcm96, false, false);
        let (old, _) = p.encrypt(0, b"", b"v1", b"").unwrap();
        p.rotate().unwrap();
        p.min_decryption_version = 2;
        p.prepare().unwrap();
        assert_eq!(p.decrypt(b"", &old, b""), Err(OpError::user(ERR_TOO_OLD)));
        let keys = p.describe(None).unwrap();
        let shown = keys["keys"].as_object().unwrap();
        assert_eq!(shown.keys().collect::<Vec<_>>(), vec!["2"]);
        // Lowering it again brings the old version back, as Vault's archive does.
        p.min_decryption_version = 1;
        assert_eq!(p.decrypt(b"", &old, b"").unwrap().as_slice(), b"v1");
    }

    #[test]
    fn signatures_round_trip_and_detect_changes() {
        for kt in [KeyType::Ed25519, KeyType::EcdsaP256] {
            let p = key(kt, false, false);
            for m in [Marshaling::Asn1, Marshaling::Jws] {
                let input = HashAlg::Sha2_256.digest(b"msg");
                let s = p.sign(0, b"", &input, m).unwrap();
                assert!(
                    p.verify_signature(b"", &input, &s.signature, m).unwrap(),
                    "{kt:?} {m:?}"
                );
                let other = HashAlg::Sha2_256.digest(b"other");
                assert!(!p.verify_signature(b"", &other, &s.signature, m).unwrap());
            }
        }
        let d = key(KeyType::Ed25519, true, false);
        let s = d.sign(0, b"ctx", b"m", Marshaling::Asn1).unwrap();
        assert_eq!(s.public_key.as_ref().map(Vec::len), Some(32));
        assert!(
            d.verify_signature(b"ctx", b"m", &s.signature, Marshaling::Asn1)
                .unwrap()
        );
        assert!(
            !d.verify_signature(b"other", b"m", &s.signature, Marshaling::Asn1)
                .unwrap()
        );
    }

    #[test]
    fn hmac_verifies_and_respects_versions() {
        let mut p = key(KeyType::Aes256Gcm96, false, false);
        let mac = p.hmac(1, HashAlg::Sha2_256, b"data").unwrap();
        assert!(p.verify_hmac(HashAlg::Sha2_256, b"data", &mac).unwrap());
        assert!(!p.verify_hmac(HashAlg::Sha2_256, b"datb", &mac).unwrap());
        assert!(!p.verify_hmac(HashAlg::Sha2_512, b"data", &mac).unwrap());
        p.rotate().unwrap();
        p.min_decryption_version = 2;
        assert!(p.verify_hmac(HashAlg::Sha2_256, b"data", &mac).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let p = key(KeyType::Aes256Gcm96, false, false);
        let shown = format!("{p:?} {:?}", p.keys.get(&1));
        let raw = B64.encode(p.keys[&1].key.expose());
        assert!(!shown.contains(&raw));
        assert!(shown.contains("redacted") || !shown.contains("key: ["));
    }
}
