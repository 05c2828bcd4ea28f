//! Auto-unseal: seals that keep the root key encrypted by an external key
//! (`seal "transit"` — another Custos, OpenBao or Vault — and
//! `seal "awskms"`), recovery keys, and seal migration, as Vault/OpenBao
//! do them.
//!
//! Where data comes from and goes to:
//!
//! - The `seal` stanzas of the server config ([`crate::config::SealStanza`],
//!   checked by [`check_stanza`]) become a [`SealSetup`] at start
//!   ([`configure`]): the enabled seal, the `disabled = "true"` one being
//!   migrated from, and the migration the stored seal type implies.
//! - At `sys/init` under an auto seal ([`initialize`]) a random root key is
//!   encrypted by the external key ([`KeyWrapper::encrypt`]) and stored in
//!   plaintext storage at [`AUTO_ROOT_KEY_PATH`]; the recovery key is split
//!   into recovery shares (returned once) and stored sealed under the root
//!   key at [`RECOVERY_KEY_PATH`], so recovery keys alone can never unseal
//!   (as in Vault) but an unsealed node can check them without a KMS call;
//!   the recovery configuration (`t`/`n`) is in plaintext at
//!   [`RECOVERY_CONFIG_PATH`] for `sys/seal-status`.
//! - At start, [`run`] decrypts the stored root key through the external
//!   key and unseals with nobody present. An unreachable KMS leaves the node
//!   up and sealed (answering seal-status, health and metrics) while [`run`]
//!   retries with exponential backoff (1 s doubling to 60 s), logging each
//!   change of failure class and counting failures in
//!   `custos_seal_autounseal_failures_total{reason}`.
//! - `sys/unseal` with recovery shares unseals an auto-sealed node after an
//!   operator's `sys/seal` ([`submit_recovery_unseal_share`]); with
//!   `migrate: true` it drives a seal migration ([`submit_migration_share`]):
//!   Shamir → auto (the unseal key becomes the recovery key), auto → Shamir
//!   (the recovery key becomes the unseal key) and auto → auto.
//! - Ceremonies authorised by recovery keys (`sys/rekey-recovery-key`,
//!   generate-root under an auto seal) use [`verify_recovery_shares`] and
//!   [`replace_recovery_key`].

pub mod awskms;
pub mod transit;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::barrier::{open_with_key, seal_with_key};
use crate::config::SealStanza;
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::metrics as m;
use crate::seal::{
    ROOT_KEY_PATH, SEAL_CONFIG_PATH, SealConfig, combine_shares, generate_shares, open_root_key,
    random32, wrap_root_key,
};
use crate::storage::BatchOp;

/// The root key encrypted by the auto seal's external key (plaintext
/// storage; a [`StoredRootKey`] as JSON).
pub const AUTO_ROOT_KEY_PATH: &str = "core/seal/auto-root-key";
/// The recovery key configuration (`t`/`n`), plaintext, as Vault's
/// `core/recovery-config`.
pub const RECOVERY_CONFIG_PATH: &str = "core/seal/recovery-config";
/// The recovery key sealed under the root key.
pub const RECOVERY_KEY_PATH: &str = "core/seal/recovery-key";

/// First and largest wait between auto-unseal attempts.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why a call to the external key failed. The class decides the metric's
/// `reason` label and the log line; messages name the seal's address and
/// key, never a token or key material.
#[derive(Debug, Clone)]
pub enum WrapError {
    /// Network error, timeout, 5xx or throttling: retried.
    Unreachable(String),
    /// The service answered and refused (bad token, unknown key, denied).
    Refused(String),
    /// The service could not decrypt the stored root key (wrong key).
    Decrypt(String),
    /// Local configuration (TLS files, missing stored key).
    Config(String),
}

impl WrapError {
    /// The `reason` label of `custos_seal_autounseal_failures_total`.
    pub fn class(&self) -> &'static str {
        match self {
            WrapError::Unreachable(_) => "unreachable",
            WrapError::Refused(_) => "refused",
            WrapError::Decrypt(_) => "decrypt",
            WrapError::Config(_) => "config",
        }
    }

    fn into_core(self) -> CoreError {
        match self {
            WrapError::Unreachable(m) => CoreError::Unavailable(format!("seal unreachable: {m}")),
            other => CoreError::bad_request(format!("seal error: {other}")),
        }
    }
}

impl fmt::Display for WrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WrapError::Unreachable(m)
            | WrapError::Refused(m)
            | WrapError::Decrypt(m)
            | WrapError::Config(m) => f.write_str(m),
        }
    }
}

/// An external key that encrypts and decrypts the root key.
#[async_trait::async_trait]
pub trait KeyWrapper: Send + Sync {
    /// Vault's seal type name (`transit`, `awskms`).
    fn seal_type(&self) -> &'static str;
    /// Where the key is, for log lines (no credentials).
    fn describe(&self) -> String;
    async fn encrypt(&self, plaintext: &[u8]) -> std::result::Result<Vec<u8>, WrapError>;
    async fn decrypt(
        &self,
        ciphertext: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, WrapError>;
    /// Renew the credential if it expires; `Some(ttl)` to renew again
    /// before `ttl` runs out, `None` when there is nothing to renew.
    async fn renew(&self) -> std::result::Result<Option<Duration>, WrapError> {
        Ok(None)
    }
}

/// The seal types Custos has.
pub const SEAL_TYPES: &[&str] = &["shamir", "transit", "awskms"];

/// Check one `seal` stanza: its type, its keys, and (for auto seals) that
/// the settings resolve. The error is (key, message), the key relative to
/// the stanza (empty for the stanza itself).
pub fn check_stanza(st: &SealStanza) -> std::result::Result<(), (String, String)> {
    let allowed: &[&str] = match st.kind.as_str() {
        "shamir" => {
            if st.disabled {
                return Err((
                    "disabled".into(),
                    "Shamir seals cannot be set disabled (they should simply not be set)".into(),
                ));
            }
            &[]
        }
        "transit" => transit::KEYS,
        "awskms" => awskms::KEYS,
        other => {
            return Err((
                String::new(),
                format!(
                    "seal type {other:?} is not supported by Custos (supported: {})",
                    SEAL_TYPES.join(", ")
                ),
            ));
        }
    };
    if let Some(k) = st.options.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err((
            k.clone(),
            format!(
                "unknown key; expected one of: disabled{}{}",
                if allowed.is_empty() { "" } else { ", " },
                allowed.join(", ")
            ),
        ));
    }
    build(st).map(|_| ())
}

/// The wrapper a stanza describes; `None` for `seal "shamir"`.
pub fn build(
    st: &SealStanza,
) -> std::result::Result<Option<Arc<dyn KeyWrapper>>, (String, String)> {
    Ok(match st.kind.as_str() {
        "transit" => Some(Arc::new(transit::TransitSeal::from_options(&st.options)?)),
        "awskms" => Some(Arc::new(awskms::AwsKmsSeal::from_options(&st.options)?)),
        _ => None,
    })
}

/// The root key as stored under an auto seal.
#[derive(Serialize, Deserialize)]
pub struct StoredRootKey {
    pub seal_type: String,
    /// Base64 of what the external key answered.
    pub ciphertext: String,
}

/// A seal migration pending at start (Vault's "seal migration mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// Stored Shamir, configured auto: enter the unseal keys with `migrate`.
    ShamirToAuto,
    /// Stored auto (the disabled stanza), configured Shamir: recovery keys.
    AutoToShamir,
    /// Stored auto (disabled), configured another auto: recovery keys.
    AutoToAuto,
}

/// The seals the configuration names and the migration pending, if any.
pub struct SealSetup {
    active: Option<Arc<dyn KeyWrapper>>,
    disabled: Option<Arc<dyn KeyWrapper>>,
    migration: std::sync::Mutex<Option<Migration>>,
}

impl SealSetup {
    /// The enabled auto seal (`None`: Shamir).
    pub fn active(&self) -> Option<&Arc<dyn KeyWrapper>> {
        self.active.as_ref()
    }

    /// The pending migration.
    pub fn migration(&self) -> Option<Migration> {
        self.migration.lock().ok().and_then(|m| *m)
    }

    fn finish_migration(&self) {
        if let Ok(mut m) = self.migration.lock() {
            *m = None;
        }
    }
}

/// Build the core's [`SealSetup`] from the config's stanzas and the stored
/// seal type, as Vault's `adjustForSealMigration` decides: a stored Shamir
/// seal with an auto seal configured is a migration away from Shamir; a
/// stored auto seal needs its stanza marked `disabled = "true"` to migrate
/// away from it. Impossible combinations are start-up errors, as in Vault.
pub async fn configure(core: &Core, seals: &[SealStanza]) -> Result<()> {
    let mut active = None;
    let mut disabled = None;
    for st in seals {
        let w = build(st).map_err(|(k, msg)| {
            CoreError::bad_request(format!("seal {:?}: {k}: {msg}", st.kind))
        })?;
        if st.disabled {
            disabled = w;
        } else {
            active = w;
        }
    }
    install(core, active, disabled).await
}

/// Decide the migration and register the setup on `core` (also used by
/// tests with their own wrappers).
pub(crate) async fn install(
    core: &Core,
    active: Option<Arc<dyn KeyWrapper>>,
    disabled: Option<Arc<dyn KeyWrapper>>,
) -> Result<()> {
    let stored = core.seal_config().await?.map(|c| c.seal_type);
    let active_type = active.as_ref().map(|w| w.seal_type());
    let migration = decide_migration(
        stored.as_deref(),
        active_type,
        disabled.as_ref().map(|w| w.seal_type()),
    )?;
    if matches!(
        migration,
        Some(Migration::AutoToShamir | Migration::AutoToAuto)
    ) && recovery_config(core).await?.is_none()
    {
        return Err(CoreError::bad_request(
            "recovery seal configuration not found for existing seal",
        ));
    }
    if let Some(mig) = migration {
        tracing::warn!(
            from = stored.as_deref().unwrap_or(""),
            to = active_type.unwrap_or("shamir"),
            ?mig,
            "entering seal migration mode; the node will not unseal by itself: unseal with `operator unseal -migrate`"
        );
    }
    let setup = Arc::new(SealSetup {
        active,
        disabled,
        migration: std::sync::Mutex::new(migration),
    });
    core.set_seal_setup(setup)
        .map_err(|_| CoreError::internal("seal setup configured twice"))
}

/// Vault's `adjustForSealMigration` decision from the stored seal type and
/// the configured enabled and disabled seals (`None`: Shamir / none).
pub fn decide_migration(
    stored: Option<&str>,
    active: Option<&str>,
    disabled: Option<&str>,
) -> Result<Option<Migration>> {
    let active_type = active.unwrap_or("shamir");
    Ok(match (stored, disabled) {
        (None, _) => None,
        (Some(s), None) if s == active_type => None,
        (Some(s), None) if active.is_none() => {
            return Err(CoreError::bad_request(format!(
                "cannot seal migrate from {s:?} to Shamir, no disabled seal in configuration"
            )));
        }
        (Some("shamir"), None) => Some(Migration::ShamirToAuto),
        (Some(s), None) => {
            return Err(CoreError::bad_request(format!(
                "cannot seal migrate from {s:?} to {active_type:?}, no disabled seal in configuration"
            )));
        }
        (Some(s), Some(d)) if s == active_type => {
            tracing::warn!(
                stored = s,
                disabled = d,
                "the stored seal is already the enabled one; the disabled seal stanza is ignored (remove it)"
            );
            None
        }
        (Some(s), Some(d)) if s != d => {
            return Err(CoreError::bad_request(format!(
                "the stored seal is {s:?} but the disabled seal stanza is {d:?}"
            )));
        }
        (Some(_), Some(_)) if active.is_none() => Some(Migration::AutoToShamir),
        (Some(_), Some(_)) => Some(Migration::AutoToAuto),
    })
}

/// The configured auto seal of `core`, if any.
pub fn active(core: &Core) -> Option<Arc<dyn KeyWrapper>> {
    core.seal_setup().and_then(|s| s.active.clone())
}

/// The pending seal migration of `core`, if any.
pub fn migration(core: &Core) -> Option<Migration> {
    core.seal_setup().and_then(|s| s.migration())
}

/// The seal type `core` reports (`shamir`, `transit`, `awskms`).
pub fn seal_type_name(core: &Core) -> &'static str {
    active(core).map_or("shamir", |w| w.seal_type())
}

/// The stored recovery configuration, if this node has an auto seal.
pub async fn recovery_config(core: &Core) -> Result<Option<SealConfig>> {
    match core.physical().get(RECOVERY_CONFIG_PATH).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| CoreError::Storage(format!("recovery config: {e}"))),
    }
}

/// Vault's checks of a recovery configuration (`ValidateRecovery`): zero
/// shares is allowed (no recovery keys).
pub fn validate_recovery(shares: u64, threshold: u64) -> Result<()> {
    let bad = |m: &str| {
        Err(CoreError::bad_request(format!(
            "invalid recovery configuration: {m}"
        )))
    };
    if shares > 1 && threshold < 2 {
        return bad("threshold must be greater than one for multiple shares");
    }
    if shares > 255 {
        return bad("shares must be less than 256");
    }
    if threshold > 255 {
        return bad("threshold must be less than 256");
    }
    if threshold > shares {
        return bad("threshold cannot be larger than shares");
    }
    Ok(())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(CoreError::internal)
}

async fn encrypt_root_key(wrapper: &Arc<dyn KeyWrapper>, root_key: &[u8]) -> Result<StoredRootKey> {
    let ct = wrapper
        .encrypt(root_key)
        .await
        .map_err(WrapError::into_core)?;
    Ok(StoredRootKey {
        seal_type: wrapper.seal_type().to_string(),
        ciphertext: B64.encode(ct),
    })
}

/// Decrypt the stored root key with `wrapper`.
async fn decrypt_root_key(
    core: &Core,
    wrapper: &Arc<dyn KeyWrapper>,
) -> std::result::Result<Zeroizing<Vec<u8>>, WrapError> {
    let raw = core
        .physical()
        .get(AUTO_ROOT_KEY_PATH)
        .await
        .map_err(|e| WrapError::Config(format!("reading the stored root key: {e}")))?
        .ok_or_else(|| {
            WrapError::Config(
                "no root key stored for the auto seal: is the node initialized?".into(),
            )
        })?;
    open_stored_root_key(wrapper, &raw).await
}

/// The root key in `raw` (a [`StoredRootKey`] as stored at
/// [`AUTO_ROOT_KEY_PATH`], here or handed over by a cluster's leader to a
/// joining node, `crate::cluster`), decrypted by `wrapper`.
pub(crate) async fn open_stored_root_key(
    wrapper: &Arc<dyn KeyWrapper>,
    raw: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, WrapError> {
    let stored: StoredRootKey = serde_json::from_slice(raw)
        .map_err(|_| WrapError::Config("stored root key is not readable".into()))?;
    if stored.seal_type != wrapper.seal_type() {
        return Err(WrapError::Config(format!(
            "the root key is stored by a {:?} seal, not {:?}",
            stored.seal_type,
            wrapper.seal_type()
        )));
    }
    let ct = B64
        .decode(stored.ciphertext.as_bytes())
        .map_err(|_| WrapError::Config("stored root key is not readable".into()))?;
    let root = wrapper.decrypt(&ct).await?;
    if root.len() != 32 {
        return Err(WrapError::Decrypt(
            "the seal answered a root key of the wrong length".into(),
        ));
    }
    Ok(root)
}

fn seal_recovery_key(root_key: &[u8], recovery_key: &[u8]) -> Result<Vec<u8>> {
    seal_with_key(root_key, RECOVERY_KEY_PATH.as_bytes(), recovery_key)
}

/// Check `candidate` against the stored recovery key, opened with the root
/// key.
async fn check_recovery_key(core: &Core, root_key: &[u8], candidate: &[u8]) -> Result<()> {
    let sealed = core
        .physical()
        .get(RECOVERY_KEY_PATH)
        .await?
        .ok_or_else(|| CoreError::bad_request("no recovery key is set up on this node"))?;
    let stored = open_with_key(root_key, RECOVERY_KEY_PATH.as_bytes(), &sealed)
        .map_err(|_| CoreError::internal("stored recovery key does not open with the root key"))?;
    if stored.len() == candidate.len() && bool::from(stored.as_slice().ct_eq(candidate)) {
        Ok(())
    } else {
        Err(CoreError::bad_request(
            "recovery key verification failed: the recovery key shares do not match",
        ))
    }
}

/// `sys/init` under an auto seal: root key encrypted by the external key,
/// recovery key split into `recovery_shares` shares, barrier initialized,
/// and the node unsealed (as OpenBao does right after init). Returns the
/// recovery shares and the root token.
pub async fn initialize(
    core: &Core,
    wrapper: &Arc<dyn KeyWrapper>,
    recovery_shares: u8,
    recovery_threshold: u8,
) -> Result<(Vec<Zeroizing<Vec<u8>>>, String)> {
    validate_recovery(recovery_shares.into(), recovery_threshold.into())?;
    let _g = core.lock_state().await;
    if core.is_initialized().await? {
        return Err(CoreError::bad_request("Vault is already initialized"));
    }
    let root_key = random32();
    let stored = encrypt_root_key(wrapper, &root_key).await?;
    let mut ops = vec![BatchOp::Put {
        key: AUTO_ROOT_KEY_PATH.into(),
        value: json(&stored)?,
    }];
    let recovery = SealConfig {
        seal_type: "shamir".into(),
        secret_shares: recovery_shares,
        secret_threshold: recovery_threshold,
        init_time: now(),
    };
    ops.push(BatchOp::Put {
        key: RECOVERY_CONFIG_PATH.into(),
        value: json(&recovery)?,
    });
    let mut shares = Vec::new();
    if recovery_shares > 0 {
        let (recovery_key, s) = generate_shares(recovery_shares, recovery_threshold);
        ops.push(BatchOp::Put {
            key: RECOVERY_KEY_PATH.into(),
            value: seal_recovery_key(&root_key, &recovery_key)?,
        });
        shares = s;
    }
    // The barrier seal configuration last in the batch: it is what marks
    // the node initialized.
    ops.push(BatchOp::Put {
        key: SEAL_CONFIG_PATH.into(),
        value: json(&SealConfig {
            seal_type: wrapper.seal_type().into(),
            secret_shares: 1,
            secret_threshold: 1,
            init_time: now(),
        })?,
    });
    core.physical().batch(ops).await?;
    let root_token = core.initialize_barrier(&root_key).await?;
    m::gauge_set(m::CORE_INITIALIZED, &[], 1.0);
    core.unseal_locked(root_key).await?;
    m::gauge_set(m::SEAL_AUTOUNSEAL_LAST_SUCCESS, &[], now() as f64);
    tracing::info!(seal = %wrapper.describe(), "initialized with an auto seal; unsealed");
    Ok((shares, root_token))
}

/// One auto-unseal attempt: decrypt the stored root key through the seal
/// and unseal. `Ok(false)` when there is nothing to do (no auto seal, not
/// initialized, a migration pending, already unsealed).
pub async fn unseal_with_stored_key(core: &Core) -> std::result::Result<bool, WrapError> {
    let Some(wrapper) = active(core) else {
        return Ok(false);
    };
    if migration(core).is_some() || !core.is_sealed() {
        return Ok(false);
    }
    let root_key = decrypt_root_key(core, &wrapper).await?;
    let _g = core.lock_state().await;
    if !core.is_sealed() {
        return Ok(false);
    }
    core.unseal_locked(root_key).await.map_err(|e| {
        WrapError::Config(format!("unseal with the decrypted root key failed: {e}"))
    })?;
    Ok(true)
}

/// The auto-unseal worker, spawned at server start: unseals through the
/// configured seal with nobody present, retrying with exponential backoff
/// while the seal cannot be reached, then keeps the seal's credential
/// renewed (transit tokens) until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let Some(wrapper) = active(&core) else {
        return;
    };
    if migration(&core).is_some() {
        return;
    }
    if !matches!(core.is_initialized().await, Ok(true)) {
        // A restarted member of a cluster finds its data once the Raft log
        // is replayed (after the leader's first contact): wait for it. Any
        // other uninitialized node is unsealed by `sys/init` or its join.
        let member = match core.raft() {
            Some(r) => r.raft().is_initialized().await.unwrap_or(false),
            None => false,
        };
        if !member {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if matches!(core.is_initialized().await, Ok(true)) {
                break;
            }
        }
    }
    let started = std::time::Instant::now();
    let mut wait = BACKOFF_START;
    let mut attempt: u64 = 0;
    let mut last_class: Option<&'static str> = None;
    loop {
        attempt += 1;
        m::gauge_set(m::SEAL_AUTOUNSEAL_RETRYING, &[], 1.0);
        match unseal_with_stored_key(&core).await {
            Ok(_) => {
                m::gauge_set(m::SEAL_AUTOUNSEAL_RETRYING, &[], 0.0);
                if !core.is_sealed() {
                    m::gauge_set(m::SEAL_AUTOUNSEAL_LAST_SUCCESS, &[], now() as f64);
                    tracing::info!(
                        seal = %wrapper.describe(),
                        attempts = attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "auto-unseal: unsealed through the seal"
                    );
                }
                break;
            }
            Err(e) => {
                m::counter_inc(
                    m::SEAL_AUTOUNSEAL_FAILURES,
                    &[("reason", e.class().to_string())],
                );
                // One warning per change of failure class (and a reminder
                // every tenth attempt); every attempt at debug.
                if last_class != Some(e.class()) || attempt.is_multiple_of(10) {
                    tracing::warn!(
                        seal = %wrapper.describe(),
                        reason = e.class(),
                        attempt,
                        retry_in_s = wait.as_secs(),
                        "auto-unseal failed; the node stays sealed and retries: {e}"
                    );
                } else {
                    tracing::debug!(reason = e.class(), attempt, "auto-unseal failed: {e}");
                }
                last_class = Some(e.class());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {
                m::gauge_set(m::SEAL_AUTOUNSEAL_RETRYING, &[], 0.0);
                return;
            }
        }
        wait = (wait * 2).min(BACKOFF_MAX);
    }
    // Keep the seal's credential alive (Vault's token lifetime watcher).
    loop {
        let next = match wrapper.renew().await {
            Ok(Some(ttl)) => (ttl / 2).max(Duration::from_secs(5)),
            Ok(None) => return,
            Err(WrapError::Refused(m)) => {
                tracing::info!("seal credential not renewed (not renewable): {m}");
                return;
            }
            Err(e) => {
                tracing::warn!(reason = e.class(), "seal credential renewal failed: {e}");
                Duration::from_secs(30)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `sys/unseal` on a sealed node with an auto seal (after `sys/seal`):
/// collect recovery shares; at the threshold, decrypt the root key through
/// the seal, check the recovery key against the stored one, and unseal.
pub async fn submit_recovery_unseal_share(core: &Core, share: &[u8]) -> Result<bool> {
    let Some(wrapper) = active(core) else {
        return Err(CoreError::internal("no auto seal configured"));
    };
    let rc = recovery_config(core)
        .await?
        .filter(|c| c.secret_shares > 0)
        .ok_or_else(|| {
            CoreError::bad_request(
                "no recovery keys are set up; this node unseals itself through its seal (restart it)",
            )
        })?;
    let Some(collected) = core.seal.collect(&rc, share)? else {
        return Ok(false);
    };
    let recovery_key = combine_shares(&rc, &collected)?;
    let root_key = decrypt_root_key(core, &wrapper)
        .await
        .map_err(WrapError::into_core)?;
    check_recovery_key(core, &root_key, &recovery_key).await?;
    let _g = core.lock_state().await;
    core.unseal_locked(root_key).await?;
    Ok(true)
}

/// The key shares a migration takes: Shamir unseal keys when leaving
/// Shamir, recovery keys when leaving an auto seal.
async fn migration_key_config(core: &Core, mig: Migration) -> Result<Option<SealConfig>> {
    match mig {
        Migration::ShamirToAuto => core.seal_config().await,
        Migration::AutoToShamir | Migration::AutoToAuto => recovery_config(core).await,
    }
}

/// `sys/unseal` with `migrate: true` during a seal migration: collect the
/// old seal's key shares; at the threshold, move the root key to the new
/// seal (one atomic storage batch) and unseal.
pub async fn submit_migration_share(core: &Core, share: &[u8]) -> Result<bool> {
    let setup = core.seal_setup().cloned().ok_or_else(|| {
        CoreError::bad_request("can't perform a seal migration, no migration seal found")
    })?;
    let mig = setup.migration().ok_or_else(|| {
        CoreError::bad_request("can't perform a seal migration, no migration seal found")
    })?;
    let cfg = migration_key_config(core, mig)
        .await?
        .ok_or(CoreError::NotInitialized)?;
    let Some(collected) = core.seal.collect(&cfg, share)? else {
        return Ok(false);
    };
    let key = combine_shares(&cfg, &collected)?;
    let _g = core.lock_state().await;
    let physical = core.physical();
    let (root_key, ops) = match mig {
        Migration::ShamirToAuto => {
            let to = setup.active.as_ref().ok_or(CoreError::NotInitialized)?;
            let wrapped = physical
                .get(ROOT_KEY_PATH)
                .await?
                .ok_or_else(|| CoreError::Storage("root key missing from storage".into()))?;
            let root_key = open_root_key(&key, &wrapped)?;
            let stored = encrypt_root_key(to, &root_key).await?;
            let recovery = SealConfig {
                seal_type: "shamir".into(),
                ..cfg.clone()
            };
            let ops = vec![
                BatchOp::Put {
                    key: AUTO_ROOT_KEY_PATH.into(),
                    value: json(&stored)?,
                },
                BatchOp::Put {
                    key: RECOVERY_CONFIG_PATH.into(),
                    value: json(&recovery)?,
                },
                BatchOp::Put {
                    key: RECOVERY_KEY_PATH.into(),
                    value: seal_recovery_key(&root_key, &key)?,
                },
                BatchOp::Put {
                    key: SEAL_CONFIG_PATH.into(),
                    value: json(&SealConfig {
                        seal_type: to.seal_type().into(),
                        secret_shares: 1,
                        secret_threshold: 1,
                        init_time: cfg.init_time,
                    })?,
                },
                BatchOp::Delete {
                    key: ROOT_KEY_PATH.into(),
                },
            ];
            (root_key, ops)
        }
        Migration::AutoToShamir | Migration::AutoToAuto => {
            let from = setup.disabled.as_ref().ok_or(CoreError::NotInitialized)?;
            let root_key = decrypt_root_key(core, from)
                .await
                .map_err(WrapError::into_core)?;
            check_recovery_key(core, &root_key, &key).await?;
            let ops = match setup.active.as_ref() {
                None => vec![
                    BatchOp::Put {
                        key: ROOT_KEY_PATH.into(),
                        value: wrap_root_key(&key, &root_key)?,
                    },
                    BatchOp::Put {
                        key: SEAL_CONFIG_PATH.into(),
                        value: json(&cfg)?,
                    },
                    BatchOp::Delete {
                        key: AUTO_ROOT_KEY_PATH.into(),
                    },
                    BatchOp::Delete {
                        key: RECOVERY_KEY_PATH.into(),
                    },
                    BatchOp::Delete {
                        key: RECOVERY_CONFIG_PATH.into(),
                    },
                ],
                Some(to) => {
                    let stored = encrypt_root_key(to, &root_key).await?;
                    vec![
                        BatchOp::Put {
                            key: AUTO_ROOT_KEY_PATH.into(),
                            value: json(&stored)?,
                        },
                        BatchOp::Put {
                            key: SEAL_CONFIG_PATH.into(),
                            value: json(&SealConfig {
                                seal_type: to.seal_type().into(),
                                secret_shares: 1,
                                secret_threshold: 1,
                                init_time: cfg.init_time,
                            })?,
                        },
                    ]
                }
            };
            (root_key, ops)
        }
    };
    physical.batch(ops).await?;
    setup.finish_migration();
    tracing::info!(?mig, "seal migration complete; unsealing");
    core.unseal_locked(root_key).await?;
    core.publish_seal_metrics();
    Ok(true)
}

/// What `sys/seal-status` reports differently under an auto seal or during
/// a migration.
pub struct StatusFields {
    pub seal_type: &'static str,
    pub recovery_seal: bool,
    pub t: u8,
    pub n: u8,
    pub migration: bool,
}

/// The seal-status fields for `core`; `None` for a plain Shamir node.
pub async fn status_fields(core: &Core) -> Result<Option<StatusFields>> {
    let Some(setup) = core.seal_setup() else {
        return Ok(None);
    };
    let (tn, seal_type, recovery_seal) = match (setup.migration(), setup.active.as_ref()) {
        (None, None) => return Ok(None),
        (Some(mig), active) => (
            migration_key_config(core, mig).await?,
            active.map_or("shamir", |w| w.seal_type()),
            active.is_some(),
        ),
        (None, Some(w)) => (recovery_config(core).await?, w.seal_type(), true),
    };
    Ok(Some(StatusFields {
        seal_type,
        recovery_seal,
        t: tn.as_ref().map_or(0, |c| c.secret_threshold),
        n: tn.as_ref().map_or(0, |c| c.secret_shares),
        migration: setup.migration().is_some(),
    }))
}

/// Check a full set of recovery key shares on an unsealed node (rekey of
/// the recovery key, generate-root under an auto seal).
pub async fn verify_recovery_shares(core: &Core, shares: &[Zeroizing<Vec<u8>>]) -> Result<()> {
    let rc = recovery_config(core)
        .await?
        .filter(|c| c.secret_shares > 0)
        .ok_or_else(|| CoreError::bad_request("no recovery keys are set up on this node"))?;
    if shares.len() < rc.secret_threshold as usize {
        return Err(CoreError::bad_request(format!(
            "{} recovery key shares given, {} needed",
            shares.len(),
            rc.secret_threshold
        )));
    }
    let key = combine_shares(&rc, shares)?;
    let u = core.unsealed()?;
    check_recovery_key(core, &u.root_key(), &key).await
}

/// Replace the recovery key with a new one split into `shares` shares
/// (threshold `threshold`); the old shares stop working. Returns the new
/// shares (once). The node must be unsealed.
pub async fn replace_recovery_key(
    core: &Core,
    shares: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    if active(core).is_none() {
        return Err(CoreError::bad_request(
            "recovery keys are only supported with an auto seal",
        ));
    }
    validate_recovery(shares.into(), threshold.into())?;
    let u = core.unsealed()?;
    let init_time = recovery_config(core).await?.map_or(now(), |c| c.init_time);
    let config = SealConfig {
        seal_type: "shamir".into(),
        secret_shares: shares,
        secret_threshold: threshold,
        init_time,
    };
    let mut ops = vec![BatchOp::Put {
        key: RECOVERY_CONFIG_PATH.into(),
        value: json(&config)?,
    }];
    let mut out = Vec::new();
    if shares > 0 {
        let (key, s) = generate_shares(shares, threshold);
        ops.push(BatchOp::Put {
            key: RECOVERY_KEY_PATH.into(),
            value: seal_recovery_key(&u.root_key(), &key)?,
        });
        out = s;
    } else {
        ops.push(BatchOp::Delete {
            key: RECOVERY_KEY_PATH.into(),
        });
    }
    core.physical().batch(ops).await?;
    Ok(out)
}

/// The writes that move an auto seal to a new root key (a rekey of the
/// barrier key, `crate::rootkey`): the new root key encrypted by the
/// external key, and the recovery key re-sealed under it. The caller adds
/// the keyring and writes them in one batch, holding the state lock.
pub(crate) async fn root_key_rotation_ops(
    core: &Core,
    old_root: &[u8],
    new_root: &[u8],
) -> Result<Vec<BatchOp>> {
    let wrapper = active(core).ok_or_else(|| CoreError::internal("no auto seal configured"))?;
    let stored = encrypt_root_key(&wrapper, new_root).await?;
    let mut ops = vec![BatchOp::Put {
        key: AUTO_ROOT_KEY_PATH.into(),
        value: json(&stored)?,
    }];
    if let Some(sealed) = core.physical().get(RECOVERY_KEY_PATH).await? {
        let key = open_with_key(old_root, RECOVERY_KEY_PATH.as_bytes(), &sealed).map_err(|_| {
            CoreError::internal("stored recovery key does not open with the root key")
        })?;
        ops.push(BatchOp::Put {
            key: RECOVERY_KEY_PATH.into(),
            value: seal_recovery_key(new_root, &key)?,
        });
    }
    Ok(ops)
}

/// The recovery key in clear, opened with the root key of an unsealed node,
/// for a ceremony authority that checks recombined keys itself
/// (`crate::ceremony`'s `ShareAuthority::verify`); `None` without recovery
/// keys. Held zeroized; never logged.
pub async fn recovery_key(core: &Core) -> Result<Option<(SealConfig, Zeroizing<Vec<u8>>)>> {
    let Some(rc) = recovery_config(core).await?.filter(|c| c.secret_shares > 0) else {
        return Ok(None);
    };
    let u = core.unsealed()?;
    let Some(sealed) = core.physical().get(RECOVERY_KEY_PATH).await? else {
        return Ok(None);
    };
    let key = open_with_key(&u.root_key(), RECOVERY_KEY_PATH.as_bytes(), &sealed)
        .map_err(|_| CoreError::internal("stored recovery key does not open with the root key"))?;
    Ok(Some((rc, key)))
}

/// Make `new_key` (already split by the caller into `shares`, `threshold`)
/// the recovery key; the old recovery shares stop working. For a rekey
/// ceremony that generates the key and shares itself
/// (`ShareAuthority::replace`); [`replace_recovery_key`] does both.
pub async fn set_recovery_key(
    core: &Core,
    new_key: &[u8],
    shares: u8,
    threshold: u8,
) -> Result<()> {
    validate_recovery(shares.into(), threshold.into())?;
    let u = core.unsealed()?;
    let init_time = recovery_config(core).await?.map_or(now(), |c| c.init_time);
    let config = SealConfig {
        seal_type: "shamir".into(),
        secret_shares: shares,
        secret_threshold: threshold,
        init_time,
    };
    core.physical()
        .batch(vec![
            BatchOp::Put {
                key: RECOVERY_CONFIG_PATH.into(),
                value: json(&config)?,
            },
            BatchOp::Put {
                key: RECOVERY_KEY_PATH.into(),
                value: seal_recovery_key(&u.root_key(), new_key)?,
            },
        ])
        .await
}

#[cfg(test)]
mod tests;
