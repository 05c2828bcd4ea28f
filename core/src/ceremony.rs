//! Key ceremonies: generating a root token and rekeying (new key shares),
//! each authorised by a quorum of key shares rather than by a token's
//! policies alone.
//!
//! **Where requests come from.** OpenBao 2.7.2 serves these ceremonies on
//! two families of paths, and so does Custos:
//!
//! - the authenticated ones, through the normal pipeline as rows of the
//!   `sys/` backend ([`crate::sys`] hands them to [`handle_sys`]), so ACLs
//!   apply and the audit log records them with keys, OTPs and encoded tokens
//!   HMAC'd like every request and response string:
//!   `sys/generate-root-token/attempt|update`, `sys/decode-token`,
//!   `sys/rotate/root/init|update|verify` (and `sys/rotate/recovery/...`).
//!   The `bao` 2.7.2 CLI uses these for `operator generate-root` and
//!   `operator rotate-keys`;
//! - Vault's classic unauthenticated ones, `sys/generate-root/attempt|update`
//!   and `sys/rekey/init|update|verify` (and `sys/rekey-recovery-key/...`),
//!   which `bao operator rekey` still calls. As in OpenBao they are off
//!   unless the listener sets `disable_unauthed_generate_root_endpoints =
//!   false` / `disable_unauthed_rekey_endpoints = false`; otherwise they
//!   answer 405 `unsupported operation`. [`unauthenticated`] serves them from
//!   the HTTP layer with Vault's raw (envelope-less) bodies, audited without
//!   a token, as OpenBao's `handleAuditNonLogical` does.
//!
//! Both families drive the same state machines, held in [`Ceremonies`] on
//! the core: in memory only (a restart or a seal forgets them), one attempt
//! of each kind at a time, every key submission checked against the
//! attempt's nonce, collected shares zeroized when dropped. A duplicate key
//! is refused; once the threshold is reached the shares are recombined and
//! checked, and a combination that does not check out resets the progress
//! (the attempt and its nonce stay), as Vault does.
//!
//! **Which shares authorise.** [`Core::ceremony_authority`] names them: the
//! unseal keys under the Shamir seal, checked by opening the stored root key
//! ([`crate::seal`]); under an auto seal the recovery keys, checked against
//! the recovery key stored sealed under the root key ([`crate::autoseal`]),
//! as OpenBao authorises root generation and the barrier rekey there.
//! [`Core::recovery_authority`] names the recovery keys that
//! `sys/rotate/recovery` and `sys/rekey-recovery-key` rekey. The state
//! machines see only the [`ShareAuthority`] trait.
//!
//! **Where results go.** A finished root generation creates a root token in
//! the token store and returns it XOR'd with the one-time password (the
//! OTP's length is the token's length, [`OTP_LENGTH`], so `bao operator
//! generate-root -decode` works unchanged). A finished rekey of the barrier
//! key rotates the root key as OpenBao does ([`crate::rootkey`]: a new root
//! key wrapped under a fresh unseal key with the new share numbers, or by
//! the auto seal, and the keyring re-sealed under it, in one batch): the old
//! shares stop working at once and the new ones unseal after the next seal.
//! Under an auto seal that rekey returns no shares (the recovery keys stay).
//! A finished recovery rekey stores the new recovery key sealed under the
//! root key with its share numbers. PGP encryption of the results is refused
//! with a clear 400.
//!
//! **Errors.** Vault's wording throughout; where OpenBao answers bad input
//! (a wrong nonce, a duplicate key, an undecodable key) with a 500, Custos
//! answers 400 with the same message.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_RAW};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::logical::{Ctx, Operation as Op, Response};
use crate::seal::SealConfig;

/// Length of a root generation one-time password: exactly the length of a
/// token Custos creates (`hvs.` + 24 base62 characters), since the encoded
/// token is the token XOR'd with the OTP byte for byte.
pub const OTP_LENGTH: usize = 28;

/// Shortest and longest key share accepted (Vault's barrier key length
/// bounds plus one byte of Shamir overhead).
const KEY_MIN: usize = 16;
const KEY_MAX: usize = 33;

/// What kind of key shares authorise a ceremony.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// The Shamir seal's unseal key shares.
    Unseal,
    /// An auto seal's recovery key shares.
    Recovery,
}

/// The key shares that authorise a ceremony: how many there are, how many
/// are needed, how a recombined key is checked, and how the key they stand
/// for is replaced (rekey).
#[async_trait]
pub trait ShareAuthority: Send + Sync {
    fn kind(&self) -> ShareKind;
    fn shares(&self) -> u8;
    fn threshold(&self) -> u8;
    /// Check a key recombined from `threshold()` shares. The error is the
    /// reason, worded for the caller to prefix (`root generation aborted:
    /// unable to authenticate: ...`).
    fn verify(&self, key: &[u8]) -> std::result::Result<(), String>;
    /// Make `new_key` (split into `shares` of which `threshold` recombine
    /// it) the key these shares stand for; the old shares stop working.
    /// For the unseal keys this rotates the root key ([`crate::rootkey`]).
    async fn replace(&self, core: &Core, new_key: &[u8], shares: u8, threshold: u8) -> Result<()>;
}

/// The Shamir seal's unseal keys: a recombined key is right when it opens
/// the stored root key and that is the root key the barrier runs on.
struct UnsealKeys {
    config: SealConfig,
    wrapped: Vec<u8>,
    root_key: Zeroizing<Vec<u8>>,
}

#[async_trait]
impl ShareAuthority for UnsealKeys {
    fn kind(&self) -> ShareKind {
        ShareKind::Unseal
    }
    fn shares(&self) -> u8 {
        self.config.secret_shares
    }
    fn threshold(&self) -> u8 {
        self.config.secret_threshold
    }
    fn verify(&self, key: &[u8]) -> std::result::Result<(), String> {
        const BAD: &str = "invalid key: failed to decrypt keys from storage: cipher: message authentication failed";
        let opened = crate::seal::open_wrapped_root_key(key, &self.wrapped)
            .ok_or_else(|| BAD.to_string())?;
        if bool::from(opened.as_slice().ct_eq(self.root_key.as_slice())) {
            Ok(())
        } else {
            Err(BAD.to_string())
        }
    }
    async fn replace(&self, core: &Core, new_key: &[u8], shares: u8, threshold: u8) -> Result<()> {
        crate::rootkey::rotate(
            core,
            crate::rootkey::SealWrap::Shamir {
                unseal_key: new_key,
                shares,
                threshold,
            },
        )
        .await
    }
}

/// An auto seal's recovery keys: a recombined key is right when it equals
/// the recovery key stored sealed under the root key. `key` is `None` when
/// the node was initialized without recovery shares.
struct RecoveryKeys {
    config: SealConfig,
    key: Option<Zeroizing<Vec<u8>>>,
}

#[async_trait]
impl ShareAuthority for RecoveryKeys {
    fn kind(&self) -> ShareKind {
        ShareKind::Recovery
    }
    fn shares(&self) -> u8 {
        self.config.secret_shares
    }
    fn threshold(&self) -> u8 {
        self.config.secret_threshold
    }
    fn verify(&self, key: &[u8]) -> std::result::Result<(), String> {
        match &self.key {
            Some(k) if k.len() == key.len() && bool::from(k.as_slice().ct_eq(key)) => Ok(()),
            Some(_) => Err("recovery key does not match submitted values".into()),
            None => Err("no recovery key is set up on this node".into()),
        }
    }
    async fn replace(&self, core: &Core, new_key: &[u8], shares: u8, threshold: u8) -> Result<()> {
        // Under the state lock: a rekey of the barrier key re-seals the
        // recovery key under a new root key meanwhile (crate::rootkey).
        let _g = core.lock_state().await;
        crate::autoseal::set_recovery_key(core, new_key, shares, threshold).await
    }
}

impl Core {
    /// The key shares that authorise root token generation and rekey on
    /// this core: the unseal keys under the Shamir seal, the recovery keys
    /// under an auto seal (as OpenBao's `RecoveryKeySupported` seals).
    pub async fn ceremony_authority(&self) -> Result<Box<dyn ShareAuthority>> {
        if let Some(recovery) = self.recovery_authority().await? {
            return Ok(recovery);
        }
        let u = self.unsealed()?;
        let config = self.seal_config().await?.ok_or(CoreError::NotInitialized)?;
        let wrapped = crate::seal::wrapped_root_key(self.physical().as_ref())
            .await?
            .ok_or_else(|| CoreError::Storage("root key missing from storage".into()))?;
        Ok(Box::new(UnsealKeys {
            config,
            wrapped,
            root_key: Zeroizing::new(u.root_key().to_vec()),
        }))
    }

    /// The recovery keys of an auto seal, which `sys/rotate/recovery` and
    /// `sys/rekey-recovery-key` rekey; `None` under the Shamir seal, which
    /// has none. An auto seal initialized with zero recovery shares has an
    /// authority of zero shares.
    pub async fn recovery_authority(&self) -> Result<Option<Box<dyn ShareAuthority>>> {
        self.unsealed()?;
        if crate::autoseal::active(self).is_none() {
            return Ok(None);
        }
        if let Some((config, key)) = crate::autoseal::recovery_key(self).await? {
            return Ok(Some(Box::new(RecoveryKeys {
                config,
                key: Some(key),
            })));
        }
        let config = crate::autoseal::recovery_config(self)
            .await?
            .ok_or(CoreError::NotInitialized)?;
        Ok(Some(Box::new(RecoveryKeys { config, key: None })))
    }
}

/// A root token generation in progress.
struct RootGeneration {
    nonce: String,
    otp: Zeroizing<String>,
    progress: Vec<Zeroizing<Vec<u8>>>,
}

/// A rekey in progress: the new share numbers, the old shares collected so
/// far, and once those recombined, the new key awaiting verification.
struct Rekey {
    nonce: String,
    shares: u8,
    threshold: u8,
    backup: bool,
    require_verification: bool,
    progress: Vec<Zeroizing<Vec<u8>>>,
    verification: Option<Verification>,
}

struct Verification {
    nonce: String,
    key: Zeroizing<Vec<u8>>,
    progress: Vec<Zeroizing<Vec<u8>>>,
}

/// The ceremonies in progress on this core (in memory only).
#[derive(Default)]
pub struct Ceremonies {
    root: Mutex<Option<RootGeneration>>,
    barrier: Mutex<Option<Rekey>>,
    recovery: Mutex<Option<Rekey>>,
}

impl Ceremonies {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget every attempt (at seal).
    pub fn reset(&self) {
        if let Ok(mut g) = self.root.try_lock() {
            *g = None;
        }
        if let Ok(mut g) = self.barrier.try_lock() {
            *g = None;
        }
        if let Ok(mut g) = self.recovery.try_lock() {
            *g = None;
        }
    }

    fn rekey_slot(&self, recovery: bool) -> &Mutex<Option<Rekey>> {
        if recovery {
            &self.recovery
        } else {
            &self.barrier
        }
    }
}

fn new_nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::bad_request(msg)
}

/// A key share as hex (when that decodes to a plausible length) or base64.
fn decode_share(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let s = s.trim();
    if let Ok(b) = hex::decode(s)
        && (KEY_MIN..=KEY_MAX).contains(&b.len())
    {
        return Ok(Zeroizing::new(b));
    }
    B64.decode(s)
        .map(Zeroizing::new)
        .map_err(|_| bad("'key' must be a valid hex or base64 string"))
}

/// Vault's length check on a submitted share; `prefix` is `"invalid key: "`
/// for root generation and empty for rekey, as Vault words them.
fn check_len(key: &[u8], prefix: &str) -> Result<()> {
    if key.len() < KEY_MIN {
        return Err(bad(format!(
            "{prefix}key is shorter than minimum {KEY_MIN} bytes"
        )));
    }
    if key.len() > KEY_MAX {
        return Err(bad(format!(
            "{prefix}key is longer than maximum {KEY_MAX} bytes"
        )));
    }
    Ok(())
}

fn contains(progress: &[Zeroizing<Vec<u8>>], key: &[u8]) -> bool {
    progress.iter().any(|k| bool::from(k.as_slice().ct_eq(key)))
}

/// Recombine `threshold`-of-`shares` key shares (one share is the key
/// itself, as Vault splits a single share).
fn combine(
    shares: u8,
    threshold: u8,
    progress: &[Zeroizing<Vec<u8>>],
) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    if shares == 1 {
        return progress
            .first()
            .cloned()
            .ok_or_else(|| "no key share".to_string());
    }
    let mut parsed = Vec::with_capacity(progress.len());
    for s in progress {
        parsed.push(blahaj::Share::try_from(s.as_slice()).map_err(|e| e.to_string())?);
    }
    blahaj::Sharks(threshold)
        .recover(parsed.iter())
        .map(Zeroizing::new)
        .map_err(|e| e.to_string())
}

/// A fresh random 256-bit key and its `shares` Shamir shares, `threshold`
/// of which recombine it (one share is the key itself).
fn split_new_key(shares: u8, threshold: u8) -> (Zeroizing<Vec<u8>>, Vec<Zeroizing<Vec<u8>>>) {
    use rand::RngCore;
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let split = if shares == 1 {
        vec![key.clone()]
    } else {
        blahaj::Sharks(threshold)
            .dealer(&key)
            .take(shares as usize)
            .map(|s| Zeroizing::new(Vec::from(&s)))
            .collect()
    };
    (key, split)
}

/// Which wording a caller gets: OpenBao's authenticated `sys/rotate/...`
/// and `sys/generate-root-token/...` paths, or Vault's classic
/// unauthenticated `sys/rekey/...` and `sys/generate-root/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Rotate,
    Legacy,
}

// ------------------------------------------------------------ generate root

/// What an update of a root generation returns.
struct RootUpdate {
    progress: usize,
    required: u8,
    encoded_token: String,
}

impl Core {
    async fn root_required(&self) -> Result<u8> {
        Ok(self.ceremony_authority().await?.threshold())
    }

    /// Status of the root generation: (started, nonce, progress).
    async fn root_progress(&self) -> (bool, String, usize) {
        match &*self.ceremonies.root.lock().await {
            Some(g) => (true, g.nonce.clone(), g.progress.len()),
            None => (false, String::new(), 0),
        }
    }

    /// Start a root generation. Returns the OTP when Custos drew it.
    async fn root_init(&self, otp: &str, pgp_key: &str) -> Result<Option<Zeroizing<String>>> {
        self.unsealed()?;
        if !pgp_key.is_empty() {
            return Err(bad(
                "pgp_key is not supported: Custos returns the new root token encoded with a one-time password; \
                 omit pgp_key (and otp) to have one generated",
            ));
        }
        let (otp, drawn) = if otp.is_empty() {
            (Zeroizing::new(random_base62(OTP_LENGTH)), true)
        } else if otp.len() != OTP_LENGTH {
            return Err(bad("OTP string has incorrect length"));
        } else {
            (Zeroizing::new(otp.to_string()), false)
        };
        let mut slot = self.ceremonies.root.lock().await;
        if slot.is_some() {
            return Err(bad(
                "root generation already in progress for this namespace",
            ));
        }
        let nonce = new_nonce();
        tracing::info!(nonce = %nonce, "root generation initialized");
        *slot = Some(RootGeneration {
            nonce,
            otp: otp.clone(),
            progress: Vec::new(),
        });
        Ok(drawn.then_some(otp))
    }

    async fn root_cancel(&self) -> Result<()> {
        self.unsealed()?;
        *self.ceremonies.root.lock().await = None;
        Ok(())
    }

    async fn root_update(&self, key: &[u8], nonce: &str) -> Result<RootUpdate> {
        self.unsealed()?;
        check_len(key, "invalid key: ")?;
        let authority = self.ceremony_authority().await?;
        let required = authority.threshold();
        let mut slot = self.ceremonies.root.lock().await;
        let Some(gen_) = slot.as_mut() else {
            return Err(bad("no root generation in progress"));
        };
        if nonce != gen_.nonce {
            return Err(bad(format!(
                "incorrect nonce supplied; nonce for this root generation operation is {:?}",
                gen_.nonce
            )));
        }
        if contains(&gen_.progress, key) {
            return Err(bad(
                "given key has already been provided during this generation operation",
            ));
        }
        gen_.progress.push(Zeroizing::new(key.to_vec()));
        let progress = gen_.progress.len();
        if progress < required as usize {
            return Ok(RootUpdate {
                progress,
                required,
                encoded_token: String::new(),
            });
        }
        let collected = std::mem::take(&mut gen_.progress);
        let combined = combine(authority.shares(), required, &collected)
            .map_err(|e| bad(format!("failed to compute root key: {e}")))?;
        if let Err(e) = authority.verify(&combined) {
            tracing::warn!("root generation aborted: the key shares do not authenticate");
            return Err(bad(match authority.kind() {
                ShareKind::Unseal => format!(
                    "root generation aborted: unable to authenticate: unable to retrieve stored keys: {e}"
                ),
                ShareKind::Recovery => {
                    format!("root generation aborted: unable to authenticate: {e}")
                }
            }));
        }
        let u = self.unsealed()?;
        let (token, entry) = u.tokens.create_root_token(None).await?;
        let token = Zeroizing::new(token);
        if token.len() != gen_.otp.len() {
            // Cannot happen while tokens are `hvs.` + 24; never hand out a
            // token the OTP cannot encode.
            u.tokens.revoke_orphan(&entry.id_hash).await?;
            return Err(CoreError::internal(
                "root token length does not match the one-time password length",
            ));
        }
        let xored: Zeroizing<Vec<u8>> = Zeroizing::new(
            token
                .bytes()
                .zip(gen_.otp.bytes())
                .map(|(a, b)| a ^ b)
                .collect(),
        );
        let encoded_token = B64_RAW.encode(xored.as_slice());
        tracing::info!(nonce = %gen_.nonce, "root generation finished");
        *slot = None;
        Ok(RootUpdate {
            progress,
            required,
            encoded_token,
        })
    }
}

/// A one-time password of `n` random base62 characters (what `operator
/// generate-root -generate-otp` prints and `-init` draws server-side).
pub fn generate_otp(n: usize) -> String {
    random_base62(n)
}

fn random_base62(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `sys/decode-token`: the token an encoded token and its OTP stand for.
fn decode_token(encoded: &str, otp: &str) -> Result<Zeroizing<String>> {
    if encoded.is_empty() || otp.is_empty() {
        return Err(bad("provided 'encoded_token' or 'otp' is empty"));
    }
    let bytes = Zeroizing::new(
        B64_RAW
            .decode(encoded.trim_end_matches('='))
            .map_err(|e| bad(format!("error decoding base64'd token: {e}")))?,
    );
    if bytes.len() != otp.len() {
        return Err(bad(format!(
            "error xoring token: length of byte slices is not equivalent: {} != {}",
            bytes.len(),
            otp.len()
        )));
    }
    let plain: Vec<u8> = bytes.iter().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
    String::from_utf8(plain)
        .map(Zeroizing::new)
        .map_err(|_| bad("error xoring token: the result is not a token"))
}

// ------------------------------------------------------------------- rekey

/// The outcome of a rekey key submission once the threshold is met.
struct RekeyDone {
    nonce: String,
    keys: Vec<Zeroizing<Vec<u8>>>,
    backup: bool,
    verification_nonce: String,
}

impl Core {
    async fn rekey_authority(&self, recovery: bool, d: Dialect) -> Result<Box<dyn ShareAuthority>> {
        if recovery {
            return self.recovery_authority().await?.ok_or_else(|| {
                bad(match d {
                    Dialect::Rotate => "recovery keys not supported",
                    Dialect::Legacy => "recovery rekeying not supported",
                })
            });
        }
        self.ceremony_authority().await
    }

    /// Start a rekey. `Some` when it finished at once: a recovery rekey on
    /// a node whose recovery configuration has zero shares (OpenBao's
    /// `rotateRecoveryNoKeyShares`: there are no old shares to ask for).
    #[allow(clippy::too_many_arguments)]
    async fn rekey_init(
        &self,
        recovery: bool,
        d: Dialect,
        shares: i64,
        threshold: i64,
        pgp_keys: &[String],
        backup: bool,
        require_verification: bool,
    ) -> Result<Option<RekeyDone>> {
        let authority = self.rekey_authority(recovery, d).await?;
        let (mut shares, mut threshold) = (shares, threshold);
        // The barrier key under an auto seal: recovery keys authorise a new
        // root key, which the seal wraps; no shares come out (OpenBao's
        // validateRotationConfig / BarrierRekeyInit and their wording).
        let stored_keys = !recovery && authority.kind() == ShareKind::Recovery;
        if stored_keys {
            let (t, pgp, bk, verify) = match d {
                Dialect::Rotate => (
                    1,
                    "PGP key encryption not supported when using stored keys",
                    "key backup not supported when using stored keys",
                    "requiring verification not supported when rotating the barrier key with recovery keys",
                ),
                Dialect::Legacy => (
                    0,
                    "PGP key encryption not supported when rekeying the barrier key with recovery keys",
                    "key backup not supported when rekeying the barrier key with recovery keys",
                    "requiring verification not supported when rekeying the barrier key with recovery keys",
                ),
            };
            (shares, threshold) = (t, t);
            if !pgp_keys.is_empty() {
                return Err(bad(pgp));
            }
            if backup {
                return Err(bad(bk));
            }
            if require_verification {
                return Err(bad(verify));
            }
        }
        let what = match (recovery, d) {
            (true, _) => "invalid recovery configuration",
            (false, Dialect::Rotate) => "invalid rotate seal configuration",
            (false, Dialect::Legacy) => "invalid rekey seal configuration",
        };
        let invalid = |m: &str| bad(format!("{what}: {m}"));
        if !(stored_keys && d == Dialect::Legacy) {
            if shares < 1 {
                return Err(invalid("shares must be at least one"));
            }
            if threshold < 1 {
                return Err(invalid("threshold must be at least one"));
            }
            if shares > 1 && threshold < 2 {
                return Err(invalid(
                    "threshold must be greater than one for multiple shares",
                ));
            }
            if shares > 255 {
                return Err(invalid("shares must be less than 256"));
            }
            if threshold > shares {
                return Err(invalid("threshold cannot be larger than shares"));
            }
        }
        if !pgp_keys.is_empty() {
            if pgp_keys.len() as i64 != shares {
                return Err(invalid(
                    "count mismatch between number of provided PGP keys and number of shares",
                ));
            }
            return Err(bad(
                "pgp_keys are not supported: Custos returns the new key shares in plaintext; \
                 omit pgp_keys and encrypt each share for its holder yourself",
            ));
        }
        let mut slot = self.ceremonies.rekey_slot(recovery).lock().await;
        if slot.is_some() {
            return Err(bad(match d {
                Dialect::Rotate => "rotation already in progress",
                Dialect::Legacy => "rekey already in progress",
            }));
        }
        let nonce = new_nonce();
        tracing::info!(nonce = %nonce, shares, threshold, verification_required = require_verification, "rekey initialized");
        let mut rk = Rekey {
            nonce,
            shares: shares as u8,
            threshold: threshold as u8,
            backup,
            require_verification,
            progress: Vec::new(),
            verification: None,
        };
        if recovery && authority.shares() == 0 && d == Dialect::Rotate {
            let done = finish_rekey(self, recovery, authority.as_ref(), &mut rk).await?;
            if rk.verification.is_some() {
                *slot = Some(rk);
            }
            return Ok(Some(done));
        }
        *slot = Some(rk);
        Ok(None)
    }

    async fn rekey_cancel(&self, recovery: bool) -> Result<()> {
        self.unsealed()?;
        *self.ceremonies.rekey_slot(recovery).lock().await = None;
        Ok(())
    }

    /// One old key share. `Ok(None)` while more are needed.
    async fn rekey_update(
        &self,
        recovery: bool,
        d: Dialect,
        key: &[u8],
        nonce: &str,
    ) -> Result<Option<RekeyDone>> {
        self.unsealed()?;
        check_len(key, "")?;
        let authority = self.rekey_authority(recovery, d).await?;
        let mut slot = self.ceremonies.rekey_slot(recovery).lock().await;
        let Some(rk) = slot.as_mut() else {
            return Err(bad(match (d, recovery) {
                (Dialect::Rotate, _) => "no rotation in progress",
                (Dialect::Legacy, false) => "no barrier rekey in progress",
                (Dialect::Legacy, true) => "no recovery rekey in progress",
            }));
        };
        if let Some(v) = &rk.verification {
            let what = match d {
                Dialect::Rotate => "rotation",
                Dialect::Legacy => "rekey operation",
            };
            return Err(bad(format!(
                "{what} already finished; verification must be performed; nonce for the verification operation is {:?}",
                v.nonce
            )));
        }
        if nonce != rk.nonce {
            return Err(bad(match d {
                Dialect::Rotate => format!(
                    "incorrect nonce supplied; nonce for rotation is {:?}",
                    rk.nonce
                ),
                Dialect::Legacy => format!(
                    "incorrect nonce supplied; nonce for this rekey operation is {:?}",
                    rk.nonce
                ),
            }));
        }
        if contains(&rk.progress, key) {
            return Err(bad(match (d, recovery) {
                (Dialect::Rotate, _) => "given key has already been provided during this rotation",
                (Dialect::Legacy, false) => {
                    "given key has already been provided during this generation operation"
                }
                (Dialect::Legacy, true) => {
                    "given key has already been provided during this rekey operation"
                }
            }));
        }
        if authority.threshold() == 0 {
            return Err(bad(
                "no recovery keys are set up on this node: start the recovery rekey with sys/rotate/recovery/init, which returns the new keys at once",
            ));
        }
        rk.progress.push(Zeroizing::new(key.to_vec()));
        if rk.progress.len() < authority.threshold() as usize {
            return Ok(None);
        }
        let collected = std::mem::take(&mut rk.progress);
        let combined =
            combine(authority.shares(), authority.threshold(), &collected).map_err(|e| {
                bad(match d {
                    Dialect::Rotate => format!("failed to compute key: {e}"),
                    Dialect::Legacy => format!("failed to compute root key: {e}"),
                })
            })?;
        if let Err(e) = authority.verify(&combined) {
            tracing::warn!("rekey: the key shares do not authenticate");
            return Err(bad(match authority.kind() {
                ShareKind::Unseal => format!("failed to read root key: {e}"),
                ShareKind::Recovery => format!("recovery key verification failed: {e}"),
            }));
        }
        let done = finish_rekey(self, recovery, authority.as_ref(), rk).await?;
        if rk.verification.is_none() {
            *slot = None;
        }
        Ok(Some(done))
    }

    /// One new key share for verification. `Ok(None)` while more are needed,
    /// else the verification nonce of the finished rekey.
    async fn rekey_verify(
        &self,
        recovery: bool,
        d: Dialect,
        key: &[u8],
        nonce: &str,
    ) -> Result<Option<String>> {
        self.unsealed()?;
        check_len(key, "")?;
        let mut slot = self.ceremonies.rekey_slot(recovery).lock().await;
        let Some(rk) = slot.as_mut() else {
            return Err(bad(match d {
                Dialect::Rotate => "no rotation in progress",
                Dialect::Legacy => "no rekey in progress",
            }));
        };
        let (shares, threshold) = (rk.shares, rk.threshold);
        let Some(v) = rk.verification.as_mut() else {
            return Err(bad(match d {
                Dialect::Rotate => "no rotation verification in progress",
                Dialect::Legacy => "no rekey verification in progress",
            }));
        };
        if nonce != v.nonce {
            return Err(bad(format!(
                "incorrect nonce supplied; nonce for this verify operation is {:?}",
                v.nonce
            )));
        }
        if contains(&v.progress, key) {
            return Err(bad(
                "given key has already been provided during this verify operation",
            ));
        }
        v.progress.push(Zeroizing::new(key.to_vec()));
        if v.progress.len() < threshold as usize {
            return Ok(None);
        }
        // Whatever happens now, the submitted shares are spent; a failure
        // starts the verification over under a new nonce.
        let collected = std::mem::take(&mut v.progress);
        let matches = match combine(shares, threshold, &collected) {
            Ok(k) => bool::from(k.as_slice().ct_eq(v.key.as_slice())),
            Err(e) => {
                v.nonce = new_nonce();
                return Err(bad(format!("failed to compute key for verification: {e}")));
            }
        };
        if !matches {
            v.nonce = new_nonce();
            return Err(bad(match d {
                Dialect::Rotate => "rotation verification failed; incorrect key shares supplied",
                Dialect::Legacy => "rekey verification failed; incorrect key shares supplied",
            }));
        }
        let authority = self.rekey_authority(recovery, d).await?;
        authority.replace(self, &v.key, shares, threshold).await?;
        let vnonce = v.nonce.clone();
        tracing::info!(
            shares,
            threshold,
            "rekey verified and finished: new key shares in effect"
        );
        *slot = None;
        Ok(Some(vnonce))
    }

    async fn rekey_verify_restart(&self, recovery: bool) -> Result<()> {
        self.unsealed()?;
        if let Some(rk) = self.ceremonies.rekey_slot(recovery).lock().await.as_mut()
            && let Some(v) = rk.verification.as_mut()
        {
            v.progress.clear();
            v.nonce = new_nonce();
        }
        Ok(())
    }
}

/// The old shares checked out (or there were none): draw the new key and
/// its shares and put it in effect, or hold it for verification when the
/// rekey requires it (`rk.verification` is then set). The barrier key under
/// an auto seal has no shares: its rekey rotates the root key at once.
async fn finish_rekey(
    core: &Core,
    recovery: bool,
    authority: &dyn ShareAuthority,
    rk: &mut Rekey,
) -> Result<RekeyDone> {
    let mut done = RekeyDone {
        nonce: rk.nonce.clone(),
        keys: Vec::new(),
        backup: rk.backup,
        verification_nonce: String::new(),
    };
    if !recovery && authority.kind() == ShareKind::Recovery {
        crate::rootkey::rotate(core, crate::rootkey::SealWrap::Auto).await?;
        tracing::info!("rekey finished: root key rotated through the auto seal");
        return Ok(done);
    }
    let (new_key, keys) = split_new_key(rk.shares, rk.threshold);
    done.keys = keys;
    if rk.require_verification {
        let vnonce = new_nonce();
        done.verification_nonce = vnonce.clone();
        rk.verification = Some(Verification {
            nonce: vnonce,
            key: new_key,
            progress: Vec::new(),
        });
        return Ok(done);
    }
    authority
        .replace(core, &new_key, rk.shares, rk.threshold)
        .await?;
    tracing::info!(
        shares = rk.shares,
        threshold = rk.threshold,
        "rekey finished: new key shares in effect"
    );
    Ok(done)
}

// ------------------------------------------------------------- responses

/// `generate-root-token/attempt` (GET, and PUT's answer) in OpenBao's
/// authenticated shape; the legacy shape carries every field.
async fn root_status(core: &Core, otp: &str, d: Dialect) -> Result<Map<String, Value>> {
    let required = core.root_required().await?;
    let (started, nonce, progress) = core.root_progress().await;
    let mut m = crate::sys::obj(json!({
        "started": started,
        "complete": false,
        "progress": progress,
        "required": required,
        "otp": otp,
        "otp_length": OTP_LENGTH,
    }));
    match d {
        Dialect::Rotate if started => {
            m.insert("nonce".into(), json!(nonce));
            m.insert("pgp_fingerprint".into(), json!(""));
        }
        Dialect::Rotate => {}
        Dialect::Legacy => {
            m.insert("nonce".into(), json!(nonce));
            m.insert("pgp_fingerprint".into(), json!(""));
            m.insert("encoded_token".into(), json!(""));
            m.insert("encoded_root_token".into(), json!(""));
        }
    }
    Ok(m)
}

fn root_update_json(r: &RootUpdate, nonce: &str, d: Dialect) -> Map<String, Value> {
    let mut m = crate::sys::obj(json!({
        "started": true,
        "complete": r.progress == r.required as usize,
        "progress": r.progress,
        "required": r.required,
        "nonce": nonce,
        "encoded_token": r.encoded_token,
        "pgp_fingerprint": "",
    }));
    if d == Dialect::Legacy {
        m.insert("encoded_root_token".into(), json!(r.encoded_token));
        m.insert("otp".into(), json!(""));
        m.insert("otp_length".into(), json!(0));
    }
    m
}

async fn rekey_status(core: &Core, recovery: bool, d: Dialect) -> Result<Map<String, Value>> {
    let required = core.rekey_authority(recovery, d).await?.threshold();
    let slot = core.ceremonies.rekey_slot(recovery).lock().await;
    let mut m = crate::sys::obj(json!({
        "started": false,
        "t": 0,
        "n": 0,
        "required": required,
    }));
    if d == Dialect::Legacy {
        m.insert("nonce".into(), json!(""));
        m.insert("progress".into(), json!(0));
        m.insert("pgp_fingerprints".into(), Value::Null);
        m.insert("backup".into(), json!(false));
        m.insert("verification_required".into(), json!(false));
    }
    if let Some(rk) = slot.as_ref() {
        let vnonce = rk
            .verification
            .as_ref()
            .map(|v| v.nonce.clone())
            .unwrap_or_default();
        m.insert("started".into(), json!(true));
        m.insert("nonce".into(), json!(rk.nonce));
        m.insert("t".into(), json!(rk.threshold));
        m.insert("n".into(), json!(rk.shares));
        m.insert("progress".into(), json!(rk.progress.len()));
        m.insert(
            "verification_required".into(),
            json!(rk.require_verification),
        );
        if d == Dialect::Rotate || !vnonce.is_empty() {
            m.insert("verification_nonce".into(), json!(vnonce));
        }
    }
    Ok(m)
}

fn rekey_done_json(r: &RekeyDone, d: Dialect) -> Map<String, Value> {
    let keys: Vec<String> = r.keys.iter().map(|k| hex::encode(k.as_slice())).collect();
    let keys_b64: Vec<String> = r.keys.iter().map(|k| B64.encode(k.as_slice())).collect();
    let mut m = crate::sys::obj(json!({
        "complete": true,
        "nonce": r.nonce,
        "backup": r.backup,
        "pgp_fingerprints": null,
        "verification_required": !r.verification_nonce.is_empty(),
        "keys": keys,
        "keys_base64": keys_b64,
    }));
    if d == Dialect::Rotate || !r.verification_nonce.is_empty() {
        m.insert("verification_nonce".into(), json!(r.verification_nonce));
    }
    m
}

async fn verify_status(core: &Core, recovery: bool, d: Dialect) -> Result<Map<String, Value>> {
    core.unsealed()?;
    let slot = core.ceremonies.rekey_slot(recovery).lock().await;
    let Some(rk) = slot.as_ref() else {
        return Err(bad(match d {
            Dialect::Rotate => "no rotation configuration found",
            Dialect::Legacy => "no rekey configuration found",
        }));
    };
    let (started, nonce, progress) = match &rk.verification {
        Some(v) => (true, v.nonce.clone(), v.progress.len()),
        None => (false, String::new(), 0),
    };
    Ok(crate::sys::obj(json!({
        "nonce": nonce,
        "started": started,
        "t": rk.threshold,
        "n": rk.shares,
        "progress": progress,
    })))
}

fn verify_done_json(nonce: &str) -> Map<String, Value> {
    crate::sys::obj(json!({"complete": true, "nonce": nonce}))
}

// ------------------------------------------------- authenticated sys/ paths

/// The `sys/` rows this module serves (patterns relative to `sys/`).
pub const SYS_PATTERNS: &[&str] = &[
    "generate-root-token/attempt",
    "generate-root-token/update",
    "decode-token",
    "rotate/(?P<target>root|recovery)/init",
    "rotate/(?P<target>root|recovery)/update",
    "rotate/(?P<target>root|recovery)/verify",
];

/// Serve one of [`SYS_PATTERNS`] for the `sys/` backend.
pub async fn handle_sys(core: &Core, pattern: &str, ctx: &Ctx<'_>) -> Result<Option<Response>> {
    let f = ctx.fields;
    let op = ctx.req.operation;
    let s = |k: &str| f.str(k).unwrap_or("").to_string();
    let recovery = f.capture("target") == Some("recovery");
    let d = Dialect::Rotate;
    let data = |m: Map<String, Value>| Ok(Some(Response::data(m)));
    match (pattern, op) {
        ("generate-root-token/attempt", Op::Read) => data(root_status(core, "", d).await?),
        ("generate-root-token/attempt", Op::Update | Op::Create) => {
            let otp = core.root_init(&s("otp"), &s("pgp_key")).await?;
            let shown = otp.as_deref().map(String::as_str).unwrap_or("");
            data(root_status(core, shown, d).await?)
        }
        ("generate-root-token/attempt", Op::Delete) => {
            core.root_cancel().await?;
            Ok(None)
        }
        ("generate-root-token/update", _) => {
            let (nonce, key) = (s("nonce"), s("key"));
            if nonce.is_empty() {
                return Err(bad("nonce is required"));
            }
            if key.is_empty() {
                return Err(bad("key is required"));
            }
            let key = decode_share(&key)?;
            let r = core.root_update(&key, &nonce).await?;
            data(root_update_json(&r, &nonce, d))
        }
        ("decode-token", _) => {
            let token = decode_token(&s("encoded_token"), &s("otp"))?;
            data(crate::sys::obj(json!({"token": token.as_str()})))
        }
        (p, Op::Read) if p.ends_with("/init") => data(rekey_status(core, recovery, d).await?),
        (p, Op::Update | Op::Create) if p.ends_with("/init") => {
            let pgp = f.strings("pgp_keys").unwrap_or_default();
            let (shares, threshold) = (
                f.int("secret_shares").unwrap_or(0),
                f.int("secret_threshold").unwrap_or(0),
            );
            let done = core
                .rekey_init(
                    recovery,
                    d,
                    shares,
                    threshold,
                    &pgp,
                    f.bool("backup").unwrap_or(false),
                    f.bool("require_verification").unwrap_or(false),
                )
                .await?;
            match done {
                // Recovery keys where there were none: the new ones at once,
                // in OpenBao's shape (t/n instead of the nonce).
                Some(done) => {
                    let mut m = rekey_done_json(&done, d);
                    m.remove("nonce");
                    m.insert("t".into(), json!(threshold));
                    m.insert("n".into(), json!(shares));
                    data(m)
                }
                None => data(rekey_status(core, recovery, d).await?),
            }
        }
        (p, Op::Delete) if p.ends_with("/init") => {
            core.rekey_cancel(recovery).await?;
            Ok(None)
        }
        (p, _) if p.ends_with("/update") => {
            let (key, nonce) = rotate_key_nonce(&s("key"), &s("nonce"))?;
            match core.rekey_update(recovery, d, &key, &nonce).await? {
                Some(done) => data(rekey_done_json(&done, d)),
                None => data(rekey_status(core, recovery, d).await?),
            }
        }
        (p, Op::Read) if p.ends_with("/verify") => data(verify_status(core, recovery, d).await?),
        (p, Op::Delete) if p.ends_with("/verify") => {
            core.rekey_verify_restart(recovery).await?;
            data(verify_status(core, recovery, d).await?)
        }
        (p, _) if p.ends_with("/verify") => {
            let (key, nonce) = rotate_key_nonce(&s("key"), &s("nonce"))?;
            match core.rekey_verify(recovery, d, &key, &nonce).await? {
                Some(n) => data(verify_done_json(&n)),
                None => data(verify_status(core, recovery, d).await?),
            }
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

fn rotate_key_nonce(key: &str, nonce: &str) -> Result<(Zeroizing<Vec<u8>>, String)> {
    if key.is_empty() {
        return Err(bad("missing required field 'key'"));
    }
    if nonce.is_empty() {
        return Err(bad("missing required field 'nonce'"));
    }
    Ok((decode_share(key)?, nonce.to_string()))
}

// ------------------------------------------- unauthenticated legacy paths

/// Which of Vault's unauthenticated ceremony families a listener serves
/// (`disable_unauthed_generate_root_endpoints = false`,
/// `disable_unauthed_rekey_endpoints = false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unauthed {
    pub generate_root: bool,
    pub rekey: bool,
}

fn legacy_family(path: &str) -> Option<(bool, &str)> {
    // (is rekey, rest)
    if let Some(rest) = path.strip_prefix("sys/generate-root") {
        return matches!(rest, "" | "/attempt" | "/update").then_some((false, rest));
    }
    if let Some(rest) = path.strip_prefix("sys/rekey/") {
        return matches!(rest, "init" | "update" | "verify").then_some((true, rest));
    }
    if let Some(rest) = path.strip_prefix("sys/rekey-recovery-key/") {
        return matches!(rest, "init" | "update" | "verify").then_some((true, rest));
    }
    None
}

/// The answer to one of Vault's unauthenticated ceremony endpoints on a
/// listener that does not serve its family, as OpenBao's default listener
/// answers (405, or 404 for `sys/rekey-recovery-key`); `None` otherwise.
pub fn refused(enabled: Unauthed, path: &str) -> Option<CoreError> {
    let (is_rekey, rest) = legacy_family(path)?;
    let on = if is_rekey {
        enabled.rekey
    } else {
        enabled.generate_root && !rest.is_empty()
    };
    if on {
        None
    } else if path.starts_with("sys/rekey-recovery-key/") {
        Some(CoreError::NotFound("unsupported path".into()))
    } else {
        Some(CoreError::UnsupportedOperation)
    }
}

/// Serve Vault's unauthenticated ceremony endpoints, or `None` when `path`
/// is not one. Disabled families answer as OpenBao's defaults do (405, or
/// 404 for `sys/rekey-recovery-key`). Requests are audited (without a
/// token) while the core is unsealed; a request that cannot be audited is
/// refused before it acts.
pub async fn unauthenticated(
    core: &Arc<Core>,
    enabled: Unauthed,
    op: Op,
    path: &str,
    data: &Map<String, Value>,
    remote: Option<std::net::SocketAddr>,
) -> Option<Result<Response>> {
    let (is_rekey, rest) = legacy_family(path)?;
    let recovery = path.starts_with("sys/rekey-recovery-key/");
    if let Some(e) = refused(enabled, path) {
        return Some(Err(e));
    }
    if op == Op::Patch || op == Op::List {
        return Some(Err(CoreError::UnsupportedOperation));
    }
    let audit = core.unsealed().ok().map(|u| u.audit.clone());
    let mut request = custos_audit::AuditRequest::new(new_nonce(), op.as_str(), path);
    request.data = (!data.is_empty()).then(|| Value::Object(data.clone()));
    if let Some(a) = remote {
        request.remote_address = a.ip().to_string();
        request.remote_port = a.port();
    }
    if let Some(broker) = &audit {
        let ev = custos_audit::AuditEvent::request(None, request.clone());
        if let Err(e) = broker.log_request(ev).await {
            tracing::error!(error = %e, "audit: no device recorded the request; refusing it");
            return Some(Err(CoreError::Audit(
                "no audit device recorded the request".into(),
            )));
        }
    }
    let result = legacy(core, is_rekey, recovery, rest, op, data).await;
    if let Some(broker) = &audit {
        let (resp, error) = match &result {
            Ok(r) => (
                custos_audit::AuditResponse {
                    data: r.data.as_ref().map(|d| Value::Object(d.clone())),
                    ..Default::default()
                },
                None,
            ),
            Err(e) => (Default::default(), Some(e.messages().join("; "))),
        };
        let ev = custos_audit::AuditEvent::response(None, request, resp, error);
        if let Err(e) = broker.log_response(ev).await {
            tracing::error!(error = %e, "audit: no device recorded the response; refusing it");
            return Some(Err(CoreError::Audit(
                "no audit device recorded the response".into(),
            )));
        }
    }
    Some(result)
}

async fn legacy(
    core: &Core,
    is_rekey: bool,
    recovery: bool,
    rest: &str,
    op: Op,
    data: &Map<String, Value>,
) -> Result<Response> {
    let d = Dialect::Legacy;
    let s = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let raw = |m: Map<String, Value>| Ok(Response::raw(m));
    let no_content = || {
        Ok(Response {
            status: Some(204),
            ..Default::default()
        })
    };
    let key_of = || -> Result<Zeroizing<Vec<u8>>> {
        let k = s("key");
        if k.is_empty() {
            return Err(bad("'key' must be specified in request body as JSON"));
        }
        decode_share(&k)
    };
    if !is_rekey {
        return match (rest, op) {
            ("/attempt", Op::Read) => raw(root_status(core, "", d).await?),
            ("/attempt", Op::Update | Op::Create) => {
                let otp = core.root_init(&s("otp"), &s("pgp_key")).await?;
                let shown = otp.as_deref().map(String::as_str).unwrap_or("");
                raw(root_status(core, shown, d).await?)
            }
            ("/attempt", Op::Delete) => {
                core.root_cancel().await?;
                no_content()
            }
            ("/update", Op::Update | Op::Create) => {
                let key = key_of()?;
                let nonce = s("nonce");
                let r = core.root_update(&key, &nonce).await?;
                raw(root_update_json(&r, &nonce, d))
            }
            _ => Err(CoreError::UnsupportedOperation),
        };
    }
    match (rest, op) {
        ("init", Op::Read) => raw(rekey_status(core, recovery, d).await?),
        ("init", Op::Update | Op::Create) => {
            let backup = data.get("backup").and_then(Value::as_bool).unwrap_or(false);
            let pgp: Vec<String> = match data.get("pgp_keys") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect(),
                _ => Vec::new(),
            };
            let int = |k: &str| -> Result<i64> {
                match data.get(k) {
                    None | Some(Value::Null) => Ok(0),
                    Some(v) => v
                        .as_i64()
                        .ok_or_else(|| bad(format!("{k} must be an integer"))),
                }
            };
            let shares = int("secret_shares")?;
            if backup && pgp.is_empty() {
                return Err(bad(
                    "cannot request a backup of the new keys without providing PGP keys for encryption",
                ));
            }
            if !pgp.is_empty() && pgp.len() as i64 != shares {
                return Err(bad("incorrect number of PGP keys for rekey"));
            }
            let verification = data
                .get("require_verification")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            core.rekey_init(
                recovery,
                d,
                shares,
                int("secret_threshold")?,
                &pgp,
                backup,
                verification,
            )
            .await?;
            raw(rekey_status(core, recovery, d).await?)
        }
        ("init", Op::Delete) => {
            core.rekey_authority(recovery, d).await?;
            core.rekey_cancel(recovery).await?;
            no_content()
        }
        ("update", Op::Update | Op::Create) => {
            let key = key_of()?;
            match core.rekey_update(recovery, d, &key, &s("nonce")).await? {
                Some(done) => raw(rekey_done_json(&done, d)),
                None => raw(rekey_status(core, recovery, d).await?),
            }
        }
        ("verify", Op::Read) => raw(verify_status(core, recovery, d).await?),
        ("verify", Op::Delete) => {
            core.rekey_verify_restart(recovery).await?;
            raw(verify_status(core, recovery, d).await?)
        }
        ("verify", Op::Update | Op::Create) => {
            let key = key_of()?;
            match core.rekey_verify(recovery, d, &key, &s("nonce")).await? {
                Some(n) => raw(verify_done_json(&n)),
                None => raw(verify_status(core, recovery, d).await?),
            }
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_decode_with_their_otp() {
        let token = "hvs.ABCDEFGHIJKLMNOPQRSTUVWX";
        assert_eq!(token.len(), OTP_LENGTH);
        let otp = random_base62(OTP_LENGTH);
        let xored: Vec<u8> = token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
        let encoded = B64_RAW.encode(&xored);
        assert_eq!(decode_token(&encoded, &otp).unwrap().as_str(), token);
        let e = decode_token(&encoded, "short").unwrap_err();
        assert!(e.to_string().contains("26 != 5") || e.to_string().contains("28 != 5"));
        assert!(decode_token("", &otp).is_err());
        assert!(decode_token("%%%", &otp).is_err());
    }

    #[test]
    fn shares_decode_as_hex_or_base64() {
        let k = [7u8; 33];
        assert_eq!(decode_share(&hex::encode(k)).unwrap().as_slice(), &k);
        assert_eq!(decode_share(&B64.encode(k)).unwrap().as_slice(), &k);
        assert!(decode_share("zz!!").is_err());
        assert!(check_len(&[0u8; 4], "invalid key: ").is_err());
        assert!(check_len(&[0u8; 40], "").is_err());
        assert!(check_len(&k, "").is_ok());
    }

    #[test]
    fn legacy_paths_are_recognised() {
        assert_eq!(
            legacy_family("sys/generate-root/attempt"),
            Some((false, "/attempt"))
        );
        assert_eq!(legacy_family("sys/rekey/verify"), Some((true, "verify")));
        assert_eq!(legacy_family("sys/generate-root-token/attempt"), None);
        assert_eq!(legacy_family("sys/rekey/backup"), None);
    }
}
