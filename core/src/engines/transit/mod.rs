//! The transit secrets engine: encryption as a service, Vault-compatible path
//! for path and shape for shape (`keys/`, `encrypt/`, `decrypt/`, `rewrap/`,
//! `datakey/`, `random`, `hash`, `hmac/`, `sign/`, `verify/`, `config/keys`).
//!
//! Requests come from the router with a mount-relative path and validated
//! fields; keys live in the mount's [`StorageView`] (behind the barrier) as
//! JSON [`KeyPolicy`] documents at `policy/<name>`, the mount settings at
//! `config/keys`. Nothing else is stored, and key material never leaves the
//! engine except as the data keys `datakey/plaintext` is asked for.
//!
//! Hot path: every mount keeps a cache of parsed, ready-keyed policies
//! (`Arc<KeyPolicy>`). Encrypt/decrypt/rewrap/hmac/sign/verify take one cache
//! lookup per request (one per batch, whatever its size) and never touch
//! storage once a key is cached. Every change to a key (create, config,
//! rotate, trim, delete) runs under the mount's write lock, persists first and
//! then replaces or drops the cached entry; a generation counter keeps a
//! reader that loaded from storage before the change from caching stale data.
//!
//! Automatic rotation: a key whose `auto_rotate_period` (0, or at least an
//! hour, validated as OpenBao does) has elapsed since its latest version was
//! created is rotated by [`TransitBackend::rotate_due_keys`], which the
//! core's periodic worker calls through [`Backend::periodic`] about once a
//! minute on the active node while unsealed (Vault checks hourly; a minute
//! of listing cached keys costs nothing and rotates closer to the due time).
//! Each automatic rotation is counted in
//! `custos_transit_auto_rotations_total{mount, outcome}`.
//!
//! Audit: decrypt, rewrap, verify, sign and hmac put the key versions they
//! used into [`Response::key_versions`] (distinct, ascending; for decrypt,
//! rewrap and verify the `vault:vN:` versions of the inputs that succeeded),
//! which the core writes to the audit event as `response.key_versions` and
//! never sends to the client; `sys/audit-query?max_key_version=N` then finds
//! who still decrypts under an old version. One small vec per such request;
//! nothing for any other.
//!
//! Behaviour (errors, batch rules, status codes) follows OpenBao 2.7, except
//! that malformed input OpenBao answers with a 500 (unparsable `batch_input`,
//! a `hmac` key without `key_size`, a derived key type that cannot derive,
//! a signing version out of range) is a 400 here: bad input is never a 500.

pub mod canary;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldData, FieldKind as K, FieldSpec as F, Operation as Op, PathSpec, Response,
};
use crate::metrics as m;
use crate::storage::StorageView;

use policy::decode_b64;
pub use policy::{HashAlg, KeyPolicy, KeyType, Marshaling, NewKey, OpError};

pub(crate) const POLICY_PREFIX: &str = "policy/";
const CONFIG_KEYS: &str = "config/keys";
/// Largest `random` request, as Vault (128 KiB).
const MAX_RANDOM_BYTES: i64 = 128 * 1024;

macro_rules! name_re {
    () => {
        r"(?P<name>\w(?:[\w.-]*\w)?)"
    };
}

const R_LIST: usize = 0;
const R_KEY: usize = 1;
const R_KEY_CONFIG: usize = 2;
const R_ROTATE: usize = 3;
const R_TRIM: usize = 4;
const R_ENCRYPT: usize = 5;
const R_DECRYPT: usize = 6;
const R_REWRAP: usize = 7;
const R_DATAKEY: usize = 8;
const R_RANDOM: usize = 9;
const R_HASH: usize = 10;
const R_HMAC: usize = 11;
const R_SIGN: usize = 12;
const R_VERIFY: usize = 13;
const R_CONFIG_KEYS: usize = 14;

static PATHS: [PathSpec; 15] = [
    PathSpec {
        pattern: "keys/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "Managed named encryption keys",
    },
    PathSpec {
        pattern: concat!("keys/", name_re!()),
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[
            F::new("type", K::String),
            F::new("derived", K::Bool),
            F::new("convergent_encryption", K::Bool),
            F::new("exportable", K::Bool),
            F::new("allow_plaintext_backup", K::Bool),
            F::new("context", K::String),
            F::new("auto_rotate_period", K::Duration),
            F::new("key_size", K::Int),
            F::new("managed_key_name", K::String),
            F::new("managed_key_id", K::String),
        ],
        existence_check: false,
        help: "Managed named encryption keys",
    },
    PathSpec {
        pattern: concat!("keys/", name_re!(), "/config"),
        operations: &[Op::Update],
        fields: &[
            F::new("min_decryption_version", K::Int),
            F::new("min_encryption_version", K::Int),
            F::new("deletion_allowed", K::Bool),
            F::new("exportable", K::Bool),
            F::new("allow_plaintext_backup", K::Bool),
            F::new("auto_rotate_period", K::Duration),
        ],
        existence_check: false,
        help: "Configure a named encryption key",
    },
    PathSpec {
        pattern: concat!("keys/", name_re!(), "/rotate"),
        operations: &[Op::Update],
        fields: &[
            F::new("managed_key_name", K::String),
            F::new("managed_key_id", K::String),
        ],
        existence_check: false,
        help: "Rotate named encryption key",
    },
    PathSpec {
        pattern: concat!("keys/", name_re!(), "/trim"),
        operations: &[Op::Update],
        fields: &[F::new("min_available_version", K::Int)],
        existence_check: false,
        help: "Trim key versions of a named key",
    },
    PathSpec {
        pattern: concat!("encrypt/", name_re!()),
        operations: &[Op::Update],
        fields: &[
            F::new("plaintext", K::String),
            F::new("context", K::String),
            F::new("type", K::String),
            F::new("convergent_encryption", K::Bool),
            F::new("key_version", K::Int),
            F::new("partial_failure_response_code", K::Int),
            F::new("associated_data", K::String),
            F::new("batch_input", K::Any),
        ],
        existence_check: true,
        help: "Encrypt a plaintext value or a batch of plaintext blocks using a named key",
    },
    PathSpec {
        pattern: concat!("decrypt/", name_re!()),
        operations: &[Op::Update],
        fields: &[
            F::new("ciphertext", K::String),
            F::new("context", K::String),
            F::new("nonce", K::String),
            F::new("partial_failure_response_code", K::Int),
            F::new("associated_data", K::String),
            F::new("batch_input", K::Any),
        ],
        existence_check: false,
        help: "Decrypt a ciphertext value using a named key",
    },
    PathSpec {
        pattern: concat!("rewrap/", name_re!()),
        operations: &[Op::Update],
        fields: &[
            F::new("ciphertext", K::String),
            F::new("context", K::String),
            F::new("nonce", K::String),
            F::new("key_version", K::Int),
            F::new("batch_input", K::Any),
        ],
        existence_check: false,
        help: "Rewrap ciphertext",
    },
    PathSpec {
        pattern: concat!(r"datakey/(?P<plaintext>\w(?:[\w.-]*\w)?)/", name_re!()),
        operations: &[Op::Update],
        fields: &[
            F::new("context", K::String),
            F::new("nonce", K::String),
            F::new("bits", K::Int),
            F::new("key_version", K::Int),
        ],
        existence_check: false,
        help: "Generate a data key",
    },
    PathSpec {
        pattern: r"random(?:/(?P<source>platform|seal|all))?(?:/(?P<urlbytes>[^/]+))?",
        operations: &[Op::Update],
        fields: &[
            F::new("bytes", K::Int),
            F::new("format", K::String),
            F::new("source", K::String),
        ],
        existence_check: false,
        help: "Generate random bytes",
    },
    PathSpec {
        pattern: r"hash(?:/(?P<urlalgorithm>.+))?",
        operations: &[Op::Update],
        fields: &[
            F::new("input", K::String),
            F::new("algorithm", K::String),
            F::new("format", K::String),
        ],
        existence_check: false,
        help: "Generate a hash sum for input data",
    },
    PathSpec {
        pattern: concat!("hmac/", name_re!(), r"(?:/(?P<urlalgorithm>.+))?"),
        operations: &[Op::Update],
        fields: &[
            F::new("input", K::String),
            F::new("algorithm", K::String),
            F::new("key_version", K::Int),
            F::new("batch_input", K::Any),
        ],
        existence_check: false,
        help: "Generate an HMAC for input data using the named key",
    },
    PathSpec {
        pattern: concat!("sign/", name_re!(), r"(?:/(?P<urlalgorithm>.+))?"),
        operations: &[Op::Update],
        fields: &[
            F::new("input", K::String),
            F::new("context", K::String),
            F::new("key_version", K::Int),
            F::new("hash_algorithm", K::String),
            F::new("algorithm", K::String),
            F::new("prehashed", K::Bool),
            F::new("signature_algorithm", K::String),
            F::new("marshaling_algorithm", K::String),
            F::new("salt_length", K::String),
            F::new("batch_input", K::Any),
        ],
        existence_check: false,
        help: "Generate a signature for input data using the named key",
    },
    PathSpec {
        pattern: concat!("verify/", name_re!(), r"(?:/(?P<urlalgorithm>.+))?"),
        operations: &[Op::Update],
        fields: &[
            F::new("input", K::String),
            F::new("context", K::String),
            F::new("signature", K::String),
            F::new("hmac", K::String),
            F::new("hash_algorithm", K::String),
            F::new("algorithm", K::String),
            F::new("prehashed", K::Bool),
            F::new("signature_algorithm", K::String),
            F::new("marshaling_algorithm", K::String),
            F::new("salt_length", K::String),
            F::new("batch_input", K::Any),
        ],
        existence_check: false,
        help: "Verify a signature or HMAC for input data created using the named key",
    },
    PathSpec {
        pattern: "config/keys",
        operations: &[Op::Read, Op::Update],
        fields: &[F::new("disable_upsert", K::Bool)],
        existence_check: false,
        help: "Configuration common across all keys",
    },
];

/// Mount-wide settings (`config/keys`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct KeysConfig {
    #[serde(default)]
    disable_upsert: bool,
}

#[derive(Default)]
struct PolicyCache {
    generation: u64,
    map: HashMap<String, Arc<KeyPolicy>>,
}

/// One transit mount: its path table, its cache of parsed keys and the lock
/// that serializes key changes.
#[derive(Default)]
pub struct TransitBackend {
    cache: RwLock<PolicyCache>,
    writes: tokio::sync::Mutex<()>,
}

fn count(op: &'static str, n: usize) {
    metrics::counter!(m::TRANSIT_OPERATIONS, "operation" => op).increment(n as u64);
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "json.Number",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// `batch_input`, if given: a non-empty array of objects.
fn batch_input(fields: &FieldData) -> Result<Option<Vec<&Map<String, Value>>>> {
    let Some(raw) = fields.get("batch_input") else {
        return Ok(None);
    };
    let Value::Array(items) = raw else {
        return Err(bad(format!(
            "failed to parse batch input: source data must be an array or slice, got {}",
            go_type(raw)
        )));
    };
    if items.is_empty() {
        return Err(bad("missing batch input to process"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_object().ok_or_else(|| {
                bad(format!(
                    "failed to parse batch input: [{i}] expected a map, got '{}'",
                    go_type(v)
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A string member of batch item `i`; `""` when absent or null.
fn item_str<'a>(i: usize, item: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(bad(format!(
            "failed to parse batch input: '[{i}].{key}' expected type 'string', got unconvertible type '{}'",
            go_type(other)
        ))),
    }
}

fn item_int(i: usize, item: &Map<String, Value>, key: &str) -> Result<i64> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            bad(format!(
                "failed to parse batch input: error decoding json.Number into [{i}].{key}: invalid syntax"
            ))
        }),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| {
            bad(format!(
                "failed to parse batch input: '[{i}].{key}' expected type 'int', got unconvertible type 'string'"
            ))
        }),
        Some(other) => Err(bad(format!(
            "failed to parse batch input: '[{i}].{key}' expected type 'int', got unconvertible type '{}'",
            go_type(other)
        ))),
    }
}

/// One encrypt/decrypt/rewrap item after parsing.
struct CryptItem<'a> {
    text: &'a str,
    context: &'a str,
    key_version: i64,
    aad: &'a str,
    reference: &'a str,
}

/// Parse `batch_input` (or the single top-level item) for encrypt, decrypt
/// and rewrap. `text` is `plaintext` or `ciphertext`.
fn crypt_items<'a>(
    fields: &'a FieldData,
    text: &str,
    require: Option<&str>,
) -> Result<(Vec<CryptItem<'a>>, bool)> {
    if let Some(batch) = batch_input(fields)? {
        let mut out = Vec::with_capacity(batch.len());
        let mut missing = Vec::new();
        for (i, item) in batch.into_iter().enumerate() {
            let t = item_str(i, item, text)?;
            if let Some(require) = require
                && t.is_none()
                && (text == "plaintext" || !item.contains_key(text))
            {
                missing.push(format!("'[{i}].{text}' {require}"));
            }
            out.push(CryptItem {
                text: t.unwrap_or(""),
                context: item_str(i, item, "context")?.unwrap_or(""),
                key_version: item_int(i, item, "key_version")?,
                aad: item_str(i, item, "associated_data")?.unwrap_or(""),
                reference: item_str(i, item, "reference")?.unwrap_or(""),
            });
        }
        if !missing.is_empty() {
            return Err(bad(format!(
                "failed to parse batch input: {}",
                missing.join(", ")
            )));
        }
        return Ok((out, true));
    }
    Ok((
        vec![CryptItem {
            text: fields.str(text).unwrap_or(""),
            context: fields.str("context").unwrap_or(""),
            key_version: fields.int("key_version").unwrap_or(0),
            aad: fields.str("associated_data").unwrap_or(""),
            reference: "",
        }],
        false,
    ))
}

/// Vault's rule for the status of a batch with failures.
fn batch_status(
    fields: &FieldData,
    resp: &mut Response,
    successes: bool,
    user_err: bool,
    internal_err: bool,
) {
    if !(user_err || internal_err) {
        return;
    }
    let mut code: u16 = if user_err { 400 } else { 500 };
    if successes && let Some(want) = fields.int("partial_failure_response_code") {
        if (1..=599).contains(&want) {
            code = u16::try_from(want).unwrap_or(code);
        } else {
            resp.warnings.push(format!(
                "invalid HTTP response code override from partial_failure_response_code, reverting to {code}"
            ));
        }
    }
    resp.status = Some(code);
}

fn single_error(e: &OpError) -> CoreError {
    match e {
        OpError::User(m) => CoreError::BadRequest(m.clone()),
        OpError::Internal(m) => CoreError::Internal(m.clone()),
    }
}

/// Check the ciphertext items of a decrypt or rewrap: context set in all or
/// none (else the whole request is bad), and per item, a missing ciphertext
/// or an undecodable context becomes that item's error. Returns the per-item
/// errors and decoded contexts.
#[allow(clippy::type_complexity)]
fn ciphertext_contexts(items: &[CryptItem<'_>]) -> Result<(Vec<Option<OpError>>, Vec<Vec<u8>>)> {
    let context_set = items.first().is_some_and(|i| !i.context.is_empty());
    let mut errors: Vec<Option<OpError>> = vec![None; items.len()];
    let mut contexts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.context.is_empty() == context_set {
            return Err(bad(
                "context should be set either in all the request blocks or in none",
            ));
        }
        if item.text.is_empty() {
            errors[i] = Some(OpError::user("missing ciphertext to decrypt"));
        }
        match decode_context(item.context) {
            Ok(c) => contexts.push(c),
            Err(e) => {
                if errors[i].is_none() {
                    errors[i] = Some(OpError::User(e));
                }
                contexts.push(Vec::new());
            }
        }
    }
    Ok((errors, contexts))
}

fn decode_context(s: &str) -> std::result::Result<Vec<u8>, String> {
    if s.is_empty() {
        Ok(Vec::new())
    } else {
        decode_b64(s)
    }
}

/// The key version a `vault:vN:` ciphertext, signature or HMAC names, read
/// as decryption reads it (`v0` is version 1); `None` when it does not parse.
fn version_of(value: &str) -> Option<u64> {
    let (ver, _) = value.strip_prefix("vault:v")?.split_once(':')?;
    ver.parse::<u64>().ok().map(|v| v.max(1))
}

/// Add `v` to the distinct key versions of a request. A batch names few
/// versions, so a linear scan of a small vec beats a set.
fn note_version(versions: &mut Vec<u64>, v: Option<u64>) {
    if let Some(v) = v
        && !versions.contains(&v)
    {
        versions.push(v);
    }
}

/// Attach the key versions an operation used to its response, for the
/// audit event only (`response.key_versions`); the client never sees them.
fn with_key_versions(mut resp: Response, mut versions: Vec<u64>) -> Response {
    versions.sort_unstable();
    resp.key_versions = versions;
    resp
}

fn resp_data(pairs: Vec<(&str, Value)>) -> Response {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    Response::data(m)
}

/// `auto_rotate_period` validated as OpenBao does: absent → `None`;
/// negative or too large for Go's `time.Duration` → the field conversion
/// error; otherwise 0 (disabled) or at least an hour.
fn auto_rotate_period(fields: &FieldData) -> Result<Option<i64>> {
    const FIELD_ERR: &str =
        "Field validation failed: error converting input for field \"auto_rotate_period\"";
    let Some(v) = fields.duration_secs("auto_rotate_period") else {
        return Ok(None);
    };
    if v < 0 {
        return Err(bad(format!(
            "{FIELD_ERR}: cannot provide negative value '{v}'"
        )));
    }
    if v.checked_mul(1_000_000_000).is_none() {
        return Err(bad(format!("{FIELD_ERR}: time: invalid duration \"{v}s\"")));
    }
    if v != 0 && v < 3600 {
        return Err(bad(
            "auto rotate period must be 0 to disable or at least an hour",
        ));
    }
    Ok(Some(v))
}

/// What one automatic rotation check of a mount did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AutoRotation {
    /// Keys rotated, by name.
    pub rotated: Vec<String>,
    /// Keys whose rotation failed (retried at the next check), by name.
    pub failed: Vec<String>,
}

fn hash_alg_or_default(fields: &FieldData, names: &[&str]) -> String {
    if let Some(a) = fields.capture("urlalgorithm").filter(|s| !s.is_empty()) {
        return a.to_string();
    }
    for n in names {
        if let Some(a) = fields.str(n).filter(|s| !s.is_empty()) {
            return a.to_string();
        }
    }
    "sha2-256".to_string()
}

impl TransitBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn cached(&self, name: &str) -> (Option<Arc<KeyPolicy>>, u64) {
        let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
        (c.map.get(name).cloned(), c.generation)
    }

    /// The parsed key `name`: from the cache, else from storage (then cached).
    pub async fn policy(
        &self,
        storage: &StorageView,
        name: &str,
    ) -> Result<Option<Arc<KeyPolicy>>> {
        let (hit, generation) = self.cached(name);
        if hit.is_some() {
            return Ok(hit);
        }
        let Some(raw) = storage.get(&format!("{POLICY_PREFIX}{name}")).await? else {
            return Ok(None);
        };
        let raw = Zeroizing::new(raw);
        let mut p: KeyPolicy = serde_json::from_slice(&raw)
            .map_err(|e| CoreError::Internal(format!("transit key {name:?} is unreadable: {e}")))?;
        p.prepare()?;
        let p = Arc::new(p);
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // A key change since we read storage wins; do not cache what we read.
        if c.generation == generation {
            c.map.insert(name.to_string(), p.clone());
        }
        Ok(Some(p))
    }

    /// Persist a changed key and make it the cached one. Call under `writes`.
    async fn store(&self, storage: &StorageView, mut p: KeyPolicy) -> Result<Arc<KeyPolicy>> {
        p.drop_trimmed();
        let raw = serde_json::to_vec(&p).map_err(CoreError::internal)?;
        storage
            .put(&format!("{POLICY_PREFIX}{}", p.name), raw)
            .await?;
        p.prepare()?;
        let p = Arc::new(p);
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.generation += 1;
        c.map.insert(p.name.clone(), p.clone());
        Ok(p)
    }

    fn forget(&self, name: &str) {
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.generation += 1;
        c.map.remove(name);
    }

    async fn keys_config(&self, storage: &StorageView) -> Result<KeysConfig> {
        match storage.get(CONFIG_KEYS).await? {
            Some(raw) => serde_json::from_slice(&raw).map_err(CoreError::internal),
            None => Ok(KeysConfig::default()),
        }
    }

    fn name<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str> {
        ctx.fields
            .capture("name")
            .ok_or_else(|| CoreError::Internal("route without a key name".into()))
    }

    // ------------------------------------------------------------- keys

    async fn list_keys(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let keys = ctx.storage.list(POLICY_PREFIX).await?;
        Response::list(keys)
    }

    async fn read_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let Some(p) = self.policy(ctx.storage, name).await? else {
            return Ok(None);
        };
        let context = match ctx.fields.str("context").filter(|s| !s.is_empty()) {
            Some(c) => Some(decode_b64(c).map_err(|_| bad("failed to base64-decode context"))?),
            None => None,
        };
        Ok(Some(Response::data(p.describe(context.as_deref())?)))
    }

    async fn create_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let derived = f.bool("derived").unwrap_or(false);
        let convergent = f.bool("convergent_encryption").unwrap_or(false);
        let auto_rotate_period = auto_rotate_period(f)?.unwrap_or(0);
        if !derived && convergent {
            return Err(bad(
                "convergent encryption requires derivation to be enabled",
            ));
        }
        let type_name = f.str("type").unwrap_or("aes256-gcm96");
        let key_type = KeyType::parse(type_name)
            .ok_or_else(|| bad(format!("unknown key type {type_name}")))?;
        let key_size = f.int("key_size").unwrap_or(0);
        if key_size != 0 {
            if key_type != KeyType::Hmac {
                return Err(bad(format!(
                    "key_size is not valid for algorithm {}",
                    key_type.as_str()
                )));
            }
            if !(policy::HMAC_MIN_KEY_SIZE..=policy::HMAC_MAX_KEY_SIZE).contains(&key_size) {
                return Err(bad(format!("invalid key_size {key_size}")));
            }
        }
        let _w = self.writes.lock().await;
        if let Some(existing) = self.policy(ctx.storage, name).await? {
            return Ok(Some(Response::data(existing.describe(None)?)));
        }
        let p = KeyPolicy::create(
            name,
            &NewKey {
                key_type,
                derived,
                convergent,
                exportable: f.bool("exportable").unwrap_or(false),
                allow_plaintext_backup: f.bool("allow_plaintext_backup").unwrap_or(false),
                auto_rotate_period,
                key_size,
            },
        )?;
        let p = self.store(ctx.storage, p).await?;
        count("create", 1);
        Ok(Some(Response::data(p.describe(None)?)))
    }

    async fn delete_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let _w = self.writes.lock().await;
        let Some(p) = self.policy(ctx.storage, name).await? else {
            return Err(bad(format!(
                "error deleting policy {name}: could not delete key; not found"
            )));
        };
        if !p.deletion_allowed {
            return Err(bad(format!(
                "error deleting policy {name}: deletion is not allowed for this key"
            )));
        }
        ctx.storage
            .delete(&format!("{POLICY_PREFIX}{name}"))
            .await?;
        self.forget(name);
        count("delete", 1);
        Ok(None)
    }

    async fn config_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let _w = self.writes.lock().await;
        let Some(current) = self.policy(ctx.storage, name).await? else {
            return Err(bad(format!("no existing key named {name} could be found")));
        };
        let mut p = (*current).clone();
        let mut warning = None;
        let mut persist = false;
        if let Some(v) = f.int("min_decryption_version") {
            if v < 0 {
                return Err(bad("min decryption version cannot be negative"));
            }
            let v = if v == 0 {
                warning = Some(
                    "since Vault 0.3 (prior to the OpenBao fork), transit key numbering starts at 1; forcing minimum to 1",
                );
                1
            } else {
                v
            };
            if v != p.min_decryption_version {
                if v > p.latest_version {
                    return Err(bad(format!(
                        "cannot set min decryption version of {v}, latest key version is {}",
                        p.latest_version
                    )));
                }
                p.min_decryption_version = v;
                persist = true;
            }
        }
        if let Some(v) = f.int("min_encryption_version") {
            if v < 0 {
                return Err(bad("min encryption version cannot be negative"));
            }
            if v != p.min_encryption_version {
                if v > p.latest_version {
                    return Err(bad(format!(
                        "cannot set min encryption version of {v}, latest key version is {}",
                        p.latest_version
                    )));
                }
                p.min_encryption_version = v;
                persist = true;
            }
        }
        if p.min_encryption_version > 0 && p.min_encryption_version < p.min_decryption_version {
            return Err(bad(format!(
                "cannot set min encryption/decryption values; min encryption version of {} must be greater than or equal to min decryption version of {}",
                p.min_encryption_version, p.min_decryption_version
            )));
        }
        if let Some(v) = f.bool("deletion_allowed")
            && v != p.deletion_allowed
        {
            p.deletion_allowed = v;
            persist = true;
        }
        // exportable and allow_plaintext_backup can be set, never unset.
        if f.bool("exportable") == Some(true) && !p.exportable {
            p.exportable = true;
            persist = true;
        }
        if f.bool("allow_plaintext_backup") == Some(true) && !p.allow_plaintext_backup {
            p.allow_plaintext_backup = true;
            persist = true;
        }
        if let Some(v) = auto_rotate_period(f)?
            && v != p.auto_rotate_period
        {
            p.auto_rotate_period = v;
            persist = true;
        }
        let p = if persist {
            if p.min_available_version > p.min_encryption_version {
                return Err(bad(
                    "min encryption version should not be less than min available version",
                ));
            }
            if p.min_available_version > p.min_decryption_version {
                return Err(bad(
                    "min decryption version should not be less then min available version",
                ));
            }
            count("config", 1);
            self.store(ctx.storage, p).await?
        } else {
            current
        };
        let mut resp = Response::data(p.describe(None)?);
        if let Some(w) = warning {
            resp.warnings.push(w.to_string());
        }
        Ok(Some(resp))
    }

    async fn rotate_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let _w = self.writes.lock().await;
        let Some(current) = self.policy(ctx.storage, name).await? else {
            return Err(bad("key not found"));
        };
        let mut p = (*current).clone();
        p.rotate()?;
        let p = self.store(ctx.storage, p).await?;
        count("rotate", 1);
        Ok(Some(Response::data(p.describe(None)?)))
    }

    /// Rotate every key of the mount whose `auto_rotate_period` has elapsed
    /// since its latest version was created, as of `now_ns` (unix
    /// nanoseconds, passed in so tests can move the clock). Each due key is
    /// checked again under the write lock, so a rotation that happened
    /// meanwhile (by hand, or by another check) is not repeated. A key that
    /// cannot be read or stored is reported in `failed` and tried again at
    /// the next check; the others go on. `mount` labels the metric and logs.
    pub async fn rotate_due_keys(
        &self,
        mount: &str,
        storage: &StorageView,
        now_ns: i64,
    ) -> Result<AutoRotation> {
        let mut out = AutoRotation::default();
        for name in storage.list(POLICY_PREFIX).await? {
            let due = match self.policy(storage, &name).await {
                Ok(p) => p.is_some_and(|p| p.auto_rotate_due(now_ns)),
                Err(e) => {
                    tracing::warn!(mount, key = %name, error = %e, "transit auto-rotation: cannot read the key");
                    metrics::counter!(m::TRANSIT_AUTO_ROTATIONS, "mount" => mount.to_owned(), "outcome" => "failed")
                        .increment(1);
                    out.failed.push(name);
                    continue;
                }
            };
            if !due {
                continue;
            }
            let rotated = async {
                let _w = self.writes.lock().await;
                let Some(current) = self.policy(storage, &name).await? else {
                    return Ok(false);
                };
                if !current.auto_rotate_due(now_ns) {
                    return Ok(false);
                }
                let mut p = (*current).clone();
                p.rotate_at(now_ns)?;
                self.store(storage, p).await?;
                Ok::<_, CoreError>(true)
            }
            .await;
            match rotated {
                Ok(true) => {
                    tracing::info!(mount, key = %name, "transit key rotated automatically (auto_rotate_period elapsed)");
                    metrics::counter!(m::TRANSIT_AUTO_ROTATIONS, "mount" => mount.to_owned(), "outcome" => "rotated")
                        .increment(1);
                    out.rotated.push(name);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(mount, key = %name, error = %e, "transit auto-rotation failed; retrying at the next check");
                    metrics::counter!(m::TRANSIT_AUTO_ROTATIONS, "mount" => mount.to_owned(), "outcome" => "failed")
                        .increment(1);
                    out.failed.push(name);
                }
            }
        }
        Ok(out)
    }

    async fn trim_key(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let _w = self.writes.lock().await;
        let Some(current) = self.policy(ctx.storage, name).await? else {
            return Err(bad("invalid key name"));
        };
        let Some(v) = ctx.fields.int("min_available_version") else {
            return Err(bad("missing min_available_version"));
        };
        let p0 = &current;
        let msg = if v < p0.min_available_version {
            Some("minimum available version cannot be decremented")
        } else if p0.min_encryption_version == 0 {
            Some(
                "minimum available version cannot be set when minimum encryption version is not set",
            )
        } else if p0.min_decryption_version == 0 {
            Some(
                "minimum available version cannot be set when minimum decryption version is not set",
            )
        } else if v > p0.min_encryption_version {
            Some("minimum available version cannot be greater than minmum encryption version")
        } else if v > p0.min_decryption_version {
            Some("minimum available version cannot be greater than minimum decryption version")
        } else if v < 0 {
            Some("minimum available version cannot be negative")
        } else if v == 0 {
            Some("minimum available version should be positive")
        } else {
            None
        };
        if let Some(m) = msg {
            return Err(bad(m));
        }
        let mut p = (**p0).clone();
        p.min_available_version = v;
        let p = self.store(ctx.storage, p).await?;
        count("trim", 1);
        Ok(Some(Response::data(p.describe(None)?)))
    }

    async fn read_config_keys(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let cfg = self.keys_config(ctx.storage).await?;
        Ok(Some(resp_data(vec![(
            "disable_upsert",
            cfg.disable_upsert.into(),
        )])))
    }

    async fn write_config_keys(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let _w = self.writes.lock().await;
        let mut cfg = self.keys_config(ctx.storage).await?;
        if let Some(v) = ctx.fields.bool("disable_upsert") {
            cfg.disable_upsert = v;
        }
        let raw = serde_json::to_vec(&cfg).map_err(CoreError::internal)?;
        ctx.storage.put(CONFIG_KEYS, raw).await?;
        Ok(Some(resp_data(vec![(
            "disable_upsert",
            cfg.disable_upsert.into(),
        )])))
    }

    // ---------------------------------------------------------- encrypt

    /// The key to encrypt with, creating it on a `create` (upsert) request.
    async fn encryption_policy(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        context_set: bool,
    ) -> Result<(Arc<KeyPolicy>, Option<&'static str>)> {
        if ctx.req.operation != Op::Create {
            return self
                .policy(ctx.storage, name)
                .await?
                .map(|p| (p, None))
                .ok_or_else(|| bad("encryption key not found"));
        }
        let convergent = ctx.fields.bool("convergent_encryption").unwrap_or(false);
        if convergent && !context_set {
            return Err(bad(
                "convergent encryption requires derivation to be enabled, so context is required",
            ));
        }
        let type_name = ctx.fields.str("type").unwrap_or("aes256-gcm96");
        let key_type = match type_name {
            "aes128-gcm96" | "aes256-gcm96" | "chacha20-poly1305" | "xchacha20-poly1305" => {
                KeyType::parse(type_name)
                    .ok_or_else(|| bad(format!("unknown key type {type_name}")))?
            }
            "ecdsa-p256" | "ecdsa-p384" | "ecdsa-p521" => {
                return Err(bad(format!(
                    "key type {type_name} not supported for this operation"
                )));
            }
            other => return Err(bad(format!("unknown key type {other}"))),
        };
        if self.keys_config(ctx.storage).await?.disable_upsert {
            return self
                .policy(ctx.storage, name)
                .await?
                .map(|p| (p, None))
                .ok_or_else(|| bad("encryption key not found"));
        }
        let _w = self.writes.lock().await;
        if let Some(p) = self.policy(ctx.storage, name).await? {
            return Ok((
                p,
                Some(
                    "Attempted creation of the key during the encrypt operation, but it was created beforehand",
                ),
            ));
        }
        let p = KeyPolicy::create(
            name,
            &NewKey {
                key_type,
                derived: context_set,
                convergent,
                exportable: false,
                allow_plaintext_backup: false,
                auto_rotate_period: 0,
                key_size: 0,
            },
        )?;
        count("create", 1);
        Ok((self.store(ctx.storage, p).await?, None))
    }

    async fn encrypt(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let (items, batch) = crypt_items(
            ctx.fields,
            "plaintext",
            Some("missing plaintext to encrypt"),
        )?;
        if !batch && !ctx.fields.has("plaintext") {
            return Err(bad("missing plaintext to encrypt"));
        }
        let context_set = !items[0].context.is_empty();
        let mut errors: Vec<Option<OpError>> = vec![None; items.len()];
        let mut decoded: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if item.context.is_empty() == context_set {
                return Err(bad(
                    "context should be set either in all the request blocks or in none",
                ));
            }
            let pt = match decode_b64(item.text) {
                Ok(v) => Zeroizing::new(v),
                Err(e) => {
                    errors[i] = Some(OpError::User(e));
                    decoded.push((Zeroizing::new(Vec::new()), Vec::new()));
                    continue;
                }
            };
            match decode_context(item.context) {
                Ok(c) => decoded.push((pt, c)),
                Err(e) => {
                    errors[i] = Some(OpError::User(e));
                    decoded.push((pt, Vec::new()));
                }
            }
        }
        let (p, warning) = self.encryption_policy(ctx, name, context_set).await?;
        let mut results = Vec::with_capacity(items.len());
        let (mut ok, mut user_err, mut internal_err) = (false, false, false);
        for (i, item) in items.iter().enumerate() {
            let outcome = match errors[i].take() {
                Some(e) => Err(e),
                None => {
                    let (pt, context) = &decoded[i];
                    aad_for(&p, i, item.aad)
                        .and_then(|aad| p.encrypt(item.key_version, context, pt, &aad))
                }
            };
            match &outcome {
                Ok(_) => ok = true,
                Err(e) if e.is_internal() => internal_err = true,
                Err(_) => user_err = true,
            }
            results.push(outcome);
        }
        count("encrypt", items.len());
        let mut resp = if batch {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&items)
                .map(|(r, item)| {
                    let mut o = Map::new();
                    match r {
                        Ok((ct, v)) => {
                            o.insert("ciphertext".into(), ct.into());
                            o.insert("key_version".into(), v.into());
                        }
                        Err(e) => {
                            o.insert("error".into(), e.message().into());
                        }
                    }
                    o.insert("reference".into(), item.reference.into());
                    Value::Object(o)
                })
                .collect();
            let mut r = resp_data(vec![("batch_results", Value::Array(out))]);
            batch_status(ctx.fields, &mut r, ok, user_err, internal_err);
            r
        } else {
            match results.pop() {
                Some(Ok((ct, v))) => {
                    resp_data(vec![("ciphertext", ct.into()), ("key_version", v.into())])
                }
                Some(Err(e)) => return Err(single_error(&e)),
                None => return Err(CoreError::Internal("no result".into())),
            }
        };
        if let Some(w) = warning {
            resp.warnings.push(w.to_string());
        }
        Ok(Some(resp))
    }

    async fn decrypt(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let (items, batch) = crypt_items(
            ctx.fields,
            "ciphertext",
            Some("missing ciphertext to decrypt"),
        )?;
        if !batch && items[0].text.is_empty() {
            return Err(bad("missing ciphertext to decrypt"));
        }
        let (mut errors, contexts) = ciphertext_contexts(&items)?;
        let p = self
            .policy(ctx.storage, name)
            .await?
            .ok_or_else(|| bad("encryption key not found"))?;
        let (mut ok, mut user_err, mut internal_err) = (false, false, false);
        let mut results = Vec::with_capacity(items.len());
        let mut versions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let outcome = match errors[i].take() {
                Some(e) => Err(e),
                None => aad_for(&p, i, item.aad)
                    .and_then(|aad| p.decrypt(&contexts[i], item.text, &aad))
                    .map(|pt| B64.encode(pt.as_slice())),
            };
            match &outcome {
                Ok(_) => {
                    ok = true;
                    note_version(&mut versions, version_of(item.text));
                }
                Err(e) if e.is_internal() => internal_err = true,
                Err(_) => user_err = true,
            }
            results.push(outcome);
        }
        count("decrypt", items.len());
        if batch {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&items)
                .map(|(r, item)| {
                    let mut o = Map::new();
                    match r {
                        Ok(pt) => {
                            o.insert("plaintext".into(), pt.into());
                        }
                        Err(e) => {
                            o.insert("plaintext".into(), "".into());
                            o.insert("error".into(), e.message().into());
                        }
                    }
                    o.insert("reference".into(), item.reference.into());
                    Value::Object(o)
                })
                .collect();
            let mut r = resp_data(vec![("batch_results", Value::Array(out))]);
            batch_status(ctx.fields, &mut r, ok, user_err, internal_err);
            Ok(Some(with_key_versions(r, versions)))
        } else {
            match results.pop() {
                Some(Ok(pt)) => Ok(Some(with_key_versions(
                    resp_data(vec![("plaintext", pt.into())]),
                    versions,
                ))),
                Some(Err(e)) => Err(single_error(&e)),
                None => Err(CoreError::Internal("no result".into())),
            }
        }
    }

    /// Decrypt and re-encrypt under the latest (or the given) version. The
    /// plaintext only ever exists in a zeroizing buffer inside this call.
    async fn rewrap(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let (items, batch) = crypt_items(ctx.fields, "ciphertext", None)?;
        if !batch && items[0].text.is_empty() {
            return Err(bad("missing ciphertext to decrypt"));
        }
        let (mut errors, contexts) = ciphertext_contexts(&items)?;
        let p = self
            .policy(ctx.storage, name)
            .await?
            .ok_or_else(|| bad("encryption key not found"))?;
        let mut results = Vec::with_capacity(items.len());
        let mut versions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let outcome = match errors[i].take() {
                Some(e) => Err(e),
                None => p
                    .decrypt(&contexts[i], item.text, b"")
                    .and_then(|pt| p.encrypt(item.key_version, &contexts[i], &pt, b"")),
            };
            match &outcome {
                Err(e) if e.is_internal() => return Err(single_error(e)),
                Err(_) => {}
                Ok(_) => note_version(&mut versions, version_of(item.text)),
            }
            results.push(outcome);
        }
        count("rewrap", items.len());
        if batch {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&items)
                .map(|(r, item)| {
                    let mut o = Map::new();
                    match r {
                        Ok((ct, v)) => {
                            o.insert("ciphertext".into(), ct.into());
                            o.insert("key_version".into(), v.into());
                        }
                        Err(e) => {
                            o.insert("error".into(), e.message().into());
                        }
                    }
                    o.insert("reference".into(), item.reference.into());
                    Value::Object(o)
                })
                .collect();
            Ok(Some(with_key_versions(
                resp_data(vec![("batch_results", Value::Array(out))]),
                versions,
            )))
        } else {
            match results.pop() {
                Some(Ok((ct, v))) => Ok(Some(with_key_versions(
                    resp_data(vec![("ciphertext", ct.into()), ("key_version", v.into())]),
                    versions,
                ))),
                Some(Err(e)) => Err(single_error(&e)),
                None => Err(CoreError::Internal("no result".into())),
            }
        }
    }

    async fn datakey(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let with_plaintext = match f.capture("plaintext") {
            Some("plaintext") => true,
            Some("wrapped") => false,
            _ => return Err(bad("Invalid path, must be 'plaintext' or 'wrapped'")),
        };
        let context = decode_context(f.str("context").unwrap_or(""))
            .map_err(|_| bad("failed to base64-decode context"))?;
        let nonce = decode_context(f.str("nonce").unwrap_or(""))
            .map_err(|_| bad("failed to base64-decode nonce"))?;
        let p = self
            .policy(ctx.storage, name)
            .await?
            .ok_or_else(|| bad("encryption key not found"))?;
        let len = match f.int("bits").unwrap_or(256) {
            128 => 16,
            256 => 32,
            512 => 64,
            _ => return Err(bad("invalid bit length")),
        };
        if !nonce.is_empty() {
            return Err(bad("provided nonce not allowed for this key"));
        }
        let mut key = Zeroizing::new(vec![0u8; len]);
        OsRng.fill_bytes(&mut key);
        let ver = f.int("key_version").unwrap_or(0);
        let (ct, v) = p.encrypt(ver, &context, &key, b"")?;
        count("datakey", 1);
        let mut pairs = vec![("ciphertext", Value::from(ct)), ("key_version", v.into())];
        if with_plaintext {
            pairs.push(("plaintext", B64.encode(key.as_slice()).into()));
        }
        Ok(Some(resp_data(pairs)))
    }

    // ----------------------------------------------------- random, hash

    async fn random(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        let n = match f.capture("urlbytes") {
            Some(s) => s.parse::<i64>().map_err(|_| {
                bad(format!(
                    "error parsing url-set byte count: strconv.Atoi: parsing {s:?}: invalid syntax"
                ))
            })?,
            None => f.int("bytes").unwrap_or(32),
        };
        let format = f.str("format").unwrap_or("base64");
        if format != "base64" && format != "hex" {
            return Err(bad(format!(
                "unsupported encoding format \"{format}\"; must be \"hex\" or \"base64\""
            )));
        }
        if n < 1 {
            return Err(bad("'bytes' cannot be less than 1"));
        }
        if n > MAX_RANDOM_BYTES {
            return Err(bad(format!(
                "'bytes' should be less than {MAX_RANDOM_BYTES}"
            )));
        }
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(32)];
        OsRng.fill_bytes(&mut buf);
        let out = if format == "hex" {
            hex::encode(&buf)
        } else {
            B64.encode(&buf)
        };
        count("random", 1);
        let mut resp = resp_data(vec![("random_bytes", out.into())]);
        if f.capture("source") == Some("seal") || f.str("source") == Some("seal") {
            resp.warnings.push(
                "no seal/entropy augmentation available, using platform entropy source".into(),
            );
        }
        Ok(Some(resp))
    }

    async fn hash(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        let Some(input) = f.str("input") else {
            return Err(bad("input missing"));
        };
        let input =
            decode_b64(input).map_err(|e| bad(format!("unable to decode input as base64: {e}")))?;
        let format = f.str("format").unwrap_or("hex");
        if format != "hex" && format != "base64" {
            return Err(bad(format!(
                "unsupported encoding format {format}; must be \"hex\" or \"base64\""
            )));
        }
        let alg_name = hash_alg_or_default(f, &["algorithm"]);
        let alg = HashAlg::parse(&alg_name)
            .filter(|a| *a != HashAlg::Sha1)
            .ok_or_else(|| bad(format!("unsupported algorithm {alg_name}")))?;
        let sum = alg.digest(&input);
        count("hash", 1);
        let out = if format == "hex" {
            hex::encode(&sum)
        } else {
            B64.encode(&sum)
        };
        Ok(Some(resp_data(vec![("sum", out.into())])))
    }

    // ------------------------------------------------ hmac, sign, verify

    async fn hmac(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let p = self
            .policy(ctx.storage, name)
            .await?
            .ok_or_else(|| bad("encryption key not found"))?;
        let mut ver = f.int("key_version").unwrap_or(0);
        if ver == 0 {
            ver = p.latest_version;
        } else if ver != p.latest_version
            && p.min_encryption_version > 0
            && ver < p.min_encryption_version
        {
            return Err(bad(
                "cannot generate HMAC: version is too old (disallowed by policy)",
            ));
        }
        p.hmac_key(ver)?;
        let alg_name = hash_alg_or_default(f, &["algorithm"]);
        let alg = HashAlg::parse(&alg_name)
            .ok_or_else(|| bad(format!("unsupported algorithm {alg_name:?}")))?;
        let batch = batch_input(f)?;
        let inputs: Vec<(Option<&str>, &str)> = match &batch {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    Ok((
                        item_str(i, it, "input")?,
                        item_str(i, it, "reference")?.unwrap_or(""),
                    ))
                })
                .collect::<Result<_>>()?,
            None => {
                let Some(input) = f.str("input") else {
                    return Err(bad("missing input for HMAC"));
                };
                vec![(Some(input), "")]
            }
        };
        let results: Vec<std::result::Result<String, String>> = inputs
            .iter()
            .map(|(input, _)| {
                let input = input.ok_or_else(|| "missing input for HMAC".to_string())?;
                let raw = decode_b64(input)
                    .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                p.hmac(ver, alg, &raw).map_err(|e| e.message().to_string())
            })
            .collect();
        count("hmac", results.len());
        let versions = if results.iter().any(|r| r.is_ok()) {
            vec![u64::try_from(ver).unwrap_or_default()]
        } else {
            Vec::new()
        };
        if batch.is_some() {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&inputs)
                .map(|(r, (_, reference))| {
                    let mut o = Map::new();
                    match r {
                        Ok(mac) => o.insert("hmac".into(), mac.into()),
                        Err(e) => o.insert("error".into(), e.into()),
                    };
                    o.insert("reference".into(), (*reference).into());
                    Value::Object(o)
                })
                .collect();
            return Ok(Some(with_key_versions(
                resp_data(vec![("batch_results", Value::Array(out))]),
                versions,
            )));
        }
        match results.into_iter().next() {
            Some(Ok(mac)) => Ok(Some(with_key_versions(
                resp_data(vec![("hmac", mac.into())]),
                versions,
            ))),
            Some(Err(e)) => Err(bad(e)),
            None => Err(CoreError::Internal("no result".into())),
        }
    }

    async fn sign(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let alg_name = hash_alg_or_default(f, &["hash_algorithm", "algorithm"]);
        let alg = HashAlg::parse(&alg_name);
        if alg.is_none() && alg_name != "none" {
            return Err(bad(format!("invalid hash algorithm {alg_name:?}")));
        }
        let marshaling_name = f.str("marshaling_algorithm").unwrap_or("asn1");
        let marshaling = Marshaling::parse(marshaling_name)
            .ok_or_else(|| bad(format!("invalid marshaling type {marshaling_name:?}")))?;
        let prehashed = f.bool("prehashed").unwrap_or(false);
        let p = self
            .policy(ctx.storage, name)
            .await?
            .ok_or_else(|| bad("signing key not found"))?;
        if !p.key_type.signing_supported() {
            return Err(bad(format!(
                "key type {} does not support signing",
                p.key_type.as_str()
            )));
        }
        let Some(alg) = alg else {
            return Err(bad(
                "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
            ));
        };
        let batch = batch_input(f)?;
        let items: Vec<(Option<&str>, &str, &str)> = match &batch {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    Ok((
                        item_str(i, it, "input")?,
                        item_str(i, it, "context")?.unwrap_or(""),
                        item_str(i, it, "reference")?.unwrap_or(""),
                    ))
                })
                .collect::<Result<_>>()?,
            None => vec![(
                Some(f.str("input").unwrap_or("")),
                f.str("context").unwrap_or(""),
                "",
            )],
        };
        let ver = f.int("key_version").unwrap_or(0);
        let results: Vec<std::result::Result<policy::Signed, String>> = items
            .iter()
            .map(|(input, context, _)| {
                let input = input.ok_or_else(|| "missing input".to_string())?;
                let mut raw = decode_b64(input)
                    .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                if p.key_type.hash_signature_input() && !prehashed {
                    raw = alg.digest(&raw);
                }
                let context = decode_context(context)
                    .map_err(|_| "failed to base64-decode context".to_string())?;
                p.sign(ver, &context, &raw, marshaling)
                    .map_err(|e| e.message().to_string())
            })
            .collect();
        count("sign", results.len());
        let mut versions = Vec::new();
        for s in results.iter().flatten() {
            note_version(&mut versions, u64::try_from(s.version).ok());
        }
        if batch.is_some() {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&items)
                .map(|(r, (_, _, reference))| {
                    let mut o = Map::new();
                    match r {
                        Ok(s) => {
                            o.insert("signature".into(), s.signature.into());
                            o.insert("key_version".into(), s.version.into());
                            if let Some(pk) = s.public_key {
                                o.insert("publickey".into(), B64.encode(pk).into());
                            }
                        }
                        Err(e) => {
                            o.insert("key_version".into(), 0.into());
                            o.insert("error".into(), e.into());
                        }
                    }
                    o.insert("reference".into(), (*reference).into());
                    Value::Object(o)
                })
                .collect();
            return Ok(Some(with_key_versions(
                resp_data(vec![("batch_results", Value::Array(out))]),
                versions,
            )));
        }
        match results.into_iter().next() {
            Some(Ok(s)) => {
                let mut pairs = vec![
                    ("signature", Value::from(s.signature)),
                    ("key_version", s.version.into()),
                ];
                if let Some(pk) = s.public_key {
                    pairs.push(("public_key", B64.encode(pk).into()));
                }
                Ok(Some(with_key_versions(resp_data(pairs), versions)))
            }
            Some(Err(e)) => Err(bad(e)),
            None => Err(CoreError::Internal("no result".into())),
        }
    }

    async fn verify(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = Self::name(ctx)?;
        let f = ctx.fields;
        let batch = batch_input(f)?;
        // Which kind of proof each item carries.
        let (mut sig_found, mut hmac_found, mut missing) = (false, false, false);
        match &batch {
            Some(list) => {
                for it in list {
                    if it.contains_key("signature") {
                        sig_found = true;
                    } else if it.contains_key("hmac") {
                        hmac_found = true;
                    } else {
                        missing = true;
                    }
                }
            }
            None => {
                sig_found = f.has("signature");
                hmac_found = f.has("hmac");
            }
        }
        match (batch.is_some(), sig_found, hmac_found, missing) {
            (false, true, true, _) => return Err(bad("provide one of 'signature' or 'hmac'")),
            (false, false, false, _) => {
                return Err(bad(
                    "neither a 'signature' nor an 'hmac' were given to verify",
                ));
            }
            (true, true, true, _) => {
                return Err(bad(
                    "elements of batch_input must all provide 'signature' or all provide 'hmac'",
                ));
            }
            (true, true, false, true) => {
                return Err(bad("some elements of batch_input are missing 'signature'"));
            }
            (true, false, true, true) => {
                return Err(bad("some elements of batch_input are missing 'hmac'"));
            }
            (true, false, false, _) => {
                return Err(bad("no batch_input elements have 'signature' or 'hmac'"));
            }
            _ => {}
        }
        // (input, proof, context, reference) per item.
        type VerifyItem<'a> = (Option<&'a str>, Option<&'a str>, &'a str, &'a str);
        let proof_key = if hmac_found { "hmac" } else { "signature" };
        let items: Vec<VerifyItem<'_>> = match &batch {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    Ok((
                        item_str(i, it, "input")?,
                        item_str(i, it, proof_key)?,
                        item_str(i, it, "context")?.unwrap_or(""),
                        item_str(i, it, "reference")?.unwrap_or(""),
                    ))
                })
                .collect::<Result<_>>()?,
            None => vec![(
                Some(f.str("input").unwrap_or("")),
                f.str(proof_key),
                f.str("context").unwrap_or(""),
                "",
            )],
        };

        let results: Vec<std::result::Result<bool, String>> = if hmac_found {
            let p = self
                .policy(ctx.storage, name)
                .await?
                .ok_or_else(|| bad("encryption key not found"))?;
            let alg_name = hash_alg_or_default(f, &["algorithm"]);
            let alg = HashAlg::parse(&alg_name)
                .ok_or_else(|| bad(format!("unsupported algorithm {alg_name:?}")))?;
            items
                .iter()
                .map(|(input, mac, _, _)| {
                    let input = input.ok_or_else(|| "missing input".to_string())?;
                    let raw = decode_b64(input)
                        .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                    let mac = mac.ok_or_else(|| "missing hmac".to_string())?;
                    p.verify_hmac(alg, &raw, mac)
                        .map_err(|e| e.message().to_string())
                })
                .collect()
        } else {
            let alg_name = hash_alg_or_default(f, &["hash_algorithm", "algorithm"]);
            let alg = HashAlg::parse(&alg_name);
            if alg.is_none() && alg_name != "none" {
                return Err(bad(format!("invalid hash algorithm {alg_name:?}")));
            }
            let marshaling_name = f.str("marshaling_algorithm").unwrap_or("asn1");
            let marshaling = Marshaling::parse(marshaling_name)
                .ok_or_else(|| bad(format!("invalid marshaling type {marshaling_name:?}")))?;
            let prehashed = f.bool("prehashed").unwrap_or(false);
            let p = self
                .policy(ctx.storage, name)
                .await?
                .ok_or_else(|| bad("signature verification key not found"))?;
            if !p.key_type.signing_supported() {
                return Err(bad(format!(
                    "key type {} does not support verification",
                    p.key_type.as_str()
                )));
            }
            let Some(alg) = alg else {
                return Err(bad(
                    "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
                ));
            };
            items
                .iter()
                .map(|(input, sig, context, _)| {
                    let input = input.ok_or_else(|| "missing input".to_string())?;
                    let mut raw = decode_b64(input)
                        .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                    let sig = sig.ok_or_else(|| "missing signature".to_string())?;
                    if p.key_type.hash_signature_input() && !prehashed {
                        raw = alg.digest(&raw);
                    }
                    let context = decode_context(context)
                        .map_err(|_| "failed to base64-decode context".to_string())?;
                    p.verify_signature(&context, &raw, sig, marshaling)
                        .map_err(|e| e.message().to_string())
                })
                .collect()
        };
        count("verify", results.len());
        let mut versions = Vec::new();
        for (r, (_, proof, _, _)) in results.iter().zip(&items) {
            if r.is_ok() {
                note_version(&mut versions, proof.and_then(version_of));
            }
        }
        if batch.is_some() {
            let out: Vec<Value> = results
                .into_iter()
                .zip(&items)
                .map(|(r, (_, _, _, reference))| {
                    let mut o = Map::new();
                    match r {
                        // Vault's HMAC results omit `valid` when false.
                        Ok(valid) if hmac_found && !valid => {}
                        Ok(valid) => {
                            o.insert("valid".into(), valid.into());
                        }
                        Err(e) => {
                            if !hmac_found {
                                o.insert("valid".into(), false.into());
                            }
                            o.insert("error".into(), e.into());
                        }
                    }
                    o.insert("reference".into(), (*reference).into());
                    Value::Object(o)
                })
                .collect();
            return Ok(Some(with_key_versions(
                resp_data(vec![("batch_results", Value::Array(out))]),
                versions,
            )));
        }
        match results.into_iter().next() {
            Some(Ok(valid)) => Ok(Some(with_key_versions(
                resp_data(vec![("valid", valid.into())]),
                versions,
            ))),
            Some(Err(e)) => Err(bad(e)),
            None => Err(CoreError::Internal("no result".into())),
        }
    }
}

/// Decode `associated_data` for item `i`, refusing it on non-AEAD keys.
fn aad_for(p: &KeyPolicy, i: usize, aad: &str) -> std::result::Result<Vec<u8>, OpError> {
    if aad.is_empty() {
        return Ok(Vec::new());
    }
    if !p.key_type.associated_data_supported() {
        return Err(OpError::user(format!(
            "'[{i}].associated_data' provided for non-AEAD cipher suite {}",
            p.key_type.as_str()
        )));
    }
    decode_b64(aad).map_err(|e| OpError::user(format!("unable to decode associated_data: {e}")))
}

#[async_trait]
impl Backend for TransitBackend {
    fn paths(&self) -> &'static [PathSpec] {
        &PATHS
    }

    /// A key policy written by another node: drop its cached copy.
    fn invalidate(&self, key: &str) {
        if let Some(name) = key.strip_prefix(POLICY_PREFIX) {
            self.forget(name);
        }
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let op = ctx.req.operation;
        match (ctx.route, op) {
            (R_LIST, _) => self.list_keys(&ctx).await,
            (R_KEY, Op::Read) => self.read_key(&ctx).await,
            (R_KEY, Op::Delete) => self.delete_key(&ctx).await,
            (R_KEY, _) => self.create_key(&ctx).await,
            (R_KEY_CONFIG, _) => self.config_key(&ctx).await,
            (R_ROTATE, _) => self.rotate_key(&ctx).await,
            (R_TRIM, _) => self.trim_key(&ctx).await,
            (R_ENCRYPT, _) => self.encrypt(&ctx).await,
            (R_DECRYPT, _) => self.decrypt(&ctx).await,
            (R_REWRAP, _) => self.rewrap(&ctx).await,
            (R_DATAKEY, _) => self.datakey(&ctx).await,
            (R_RANDOM, _) => self.random(&ctx).await,
            (R_HASH, _) => self.hash(&ctx).await,
            (R_HMAC, _) => self.hmac(&ctx).await,
            (R_SIGN, _) => self.sign(&ctx).await,
            (R_VERIFY, _) => self.verify(&ctx).await,
            (R_CONFIG_KEYS, Op::Read) => self.read_config_keys(&ctx).await,
            (R_CONFIG_KEYS, _) => self.write_config_keys(&ctx).await,
            _ => Err(CoreError::UnsupportedOperation),
        }
    }

    /// Vault's periodic function for transit: automatic key rotation.
    async fn periodic(&self, mount: &str, storage: &StorageView, now_ns: i64) -> Result<()> {
        self.rotate_due_keys(mount, storage, now_ns)
            .await
            .map(|_| ())
    }

    fn is_pure(&self, route: usize, req: &crate::logical::Request) -> bool {
        match route {
            R_DECRYPT | R_REWRAP | R_DATAKEY | R_RANDOM | R_HASH | R_HMAC | R_SIGN | R_VERIFY => {
                true
            }
            // Encrypting under a missing key creates it (upsert): pure only
            // when the key is already here. (A key deleted between this check
            // and the handler would be re-created under the pipelined audit;
            // deleting needs deletion_allowed and sudo-level intent, and the
            // events are still durable before the caller hears back.)
            R_ENCRYPT => req
                .relative_path
                .strip_prefix("encrypt/")
                .is_some_and(|name| self.cached(name).0.is_some()),
            _ => false,
        }
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        if ctx.route != R_ENCRYPT {
            return Ok(true);
        }
        let name = Self::name(&ctx)?;
        Ok(self.policy(ctx.storage, name).await?.is_some())
    }
}

#[cfg(test)]
mod tests;
