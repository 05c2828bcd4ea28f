//! The KV version 2 secrets engine: versioned key/value secrets, speaking
//! Vault's `kv-v2` API path for path, status for status, JSON for JSON.
//!
//! Requests come from the router with a mount-relative path (`data/app/db`,
//! `metadata/app/`, `config`, ...) and validated fields; state goes to and
//! comes from the mount's [`StorageView`] (already behind the barrier):
//!
//! | key                          | value                                            |
//! |------------------------------|--------------------------------------------------|
//! | `config`                     | [`KvConfig`]: max_versions, cas_required, delete_version_after |
//! | `metadata/<path>`            | [`KeyMetadata`]: current/oldest version, settings, per-version metadata |
//! | `versions/<sha256(path)>/<n>`| [`VersionData`]: the secret data of version `n`   |
//!
//! The config is JSON; metadata and version data are in the compact binary
//! form of [`super::kv_codec`], which also reads the JSON earlier versions
//! wrote.
//!
//! Every change to a key is one atomic `storage.batch(...)`: a new version's
//! data, the updated metadata and the data of versions pruned by
//! `max_versions` land together, so a crash never leaves metadata pointing at
//! missing data. Writes to one key are serialized by a striped set of async
//! mutexes (read-modify-write of the metadata under the lock), so concurrent
//! writers never lose a version and check-and-set stays exact; reads take no
//! lock. `delete_version_after` is applied as Vault does: a version's
//! `deletion_time` is set when it is written and reads compare it to now, so
//! no background job is needed.
//!
//! Secret values never appear in errors or logs; messages name paths, fields
//! and versions only.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::{kv_codec, kv_v1};
use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldData, FieldKind, FieldSpec, Operation as Op, PathSpec, Response,
    parse_duration,
};
use crate::storage::{BatchOp, StorageView};

/// Versions kept per key when neither the mount nor the key sets `max_versions`.
pub const DEFAULT_MAX_VERSIONS: u32 = 10;
/// Limits on `custom_metadata`, as Vault enforces them.
pub const MAX_CUSTOM_METADATA_KEYS: usize = 64;
pub const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
pub const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;
/// Deepest nesting `subkeys` walks when `depth` is 0 (Vault's limit).
const MAX_SUBKEYS_DEPTH: usize = 100;
/// Number of per-key write locks; keys hash onto them.
const LOCK_STRIPES: usize = 256;
/// `delete_version_after` stored in the mount config when it is disabled.
const DVA_DISABLED: i64 = -1;

const CONFIG_KEY: &str = "config";
const CUSTOM_METADATA_ERR: &str = "custom_metadata validation failed";

const R_CONFIG: usize = 0;
const R_DATA: usize = 1;
const R_DATA_OUTSIDE: usize = 2;
const R_METADATA: usize = 3;
const R_DELETE: usize = 4;
const R_UNDELETE: usize = 5;
const R_DESTROY: usize = 6;
const R_SUBKEYS: usize = 7;
const R_INVALID: usize = 8;

/// First segments of the paths a v2 mount serves; anything else is a KV v1
/// style path, which Vault answers with a hint.
const V2_PREFIXES: &[&str] = &[
    "data/",
    "metadata/",
    "delete/",
    "undelete/",
    "destroy/",
    "subkeys/",
];

static PATHS: [PathSpec; 9] = [
    PathSpec {
        pattern: "config",
        operations: &[Op::Read, Op::Update],
        fields: &[
            FieldSpec::new("max_versions", FieldKind::Int),
            FieldSpec::new("cas_required", FieldKind::Bool),
            // Signed: a negative duration disables delete_version_after mount-wide.
            FieldSpec::new("delete_version_after", FieldKind::Any),
        ],
        // Vault's config path has no existence check: writes are `update`.
        existence_check: false,
        help: "Configures settings for the KV store.",
    },
    PathSpec {
        pattern: "data/(?P<path>.*?[^/])",
        operations: &[Op::Read, Op::Update, Op::Patch, Op::Delete],
        fields: &[
            FieldSpec::new("version", FieldKind::Int),
            FieldSpec::new("data", FieldKind::Map),
            FieldSpec::new("options", FieldKind::Map),
        ],
        existence_check: true,
        help: "Write, Patch, Read, and Delete data in the Key-Value Store.",
    },
    // `data/` and `data/folder/`: no secret lives there. Any operation but
    // LIST reaches the handler, which answers 404 "unsupported path"; LIST is
    // refused by the router with 405 (Vault lists through `metadata/`).
    PathSpec {
        pattern: "data/(?:.*/)?",
        operations: &[Op::Read, Op::Update, Op::Patch, Op::Delete],
        fields: &[],
        existence_check: false,
        help: "Secrets are listed through metadata/, not data/.",
    },
    PathSpec {
        pattern: "metadata/(?P<path>.*)",
        operations: &[Op::Read, Op::Update, Op::Patch, Op::Delete, Op::List],
        fields: &[
            FieldSpec::new("max_versions", FieldKind::Int),
            FieldSpec::new("cas_required", FieldKind::Bool),
            FieldSpec::new("delete_version_after", FieldKind::Duration),
            // A map, not a string map: a PATCH removes a key by sending null.
            FieldSpec::new("custom_metadata", FieldKind::Map),
            // LIST only, OpenBao's paginated lists: the items after `after`
            // (which need not exist), at most `limit` of them (≤ 0: all).
            FieldSpec::new("after", FieldKind::String),
            FieldSpec::new("limit", FieldKind::Int),
        ],
        existence_check: true,
        help: "Allows interaction with key metadata and settings in the KV store.",
    },
    PathSpec {
        pattern: "delete/(?P<path>.*)",
        operations: &[Op::Update],
        fields: &[FieldSpec::new("versions", FieldKind::Any)],
        existence_check: false,
        help: "Marks one or more versions as deleted in the KV store.",
    },
    PathSpec {
        pattern: "undelete/(?P<path>.*)",
        operations: &[Op::Update],
        fields: &[FieldSpec::new("versions", FieldKind::Any)],
        existence_check: false,
        help: "Undeletes one or more versions from the KV store.",
    },
    PathSpec {
        pattern: "destroy/(?P<path>.*)",
        operations: &[Op::Update],
        fields: &[FieldSpec::new("versions", FieldKind::Any)],
        existence_check: false,
        help: "Permanently removes one or more versions in the KV store.",
    },
    PathSpec {
        pattern: "subkeys/(?P<path>.*)",
        operations: &[Op::Read],
        fields: &[
            FieldSpec::new("version", FieldKind::Int),
            FieldSpec::new("depth", FieldKind::Int),
        ],
        existence_check: false,
        help: "Read the structure of a secret entry with the values removed.",
    },
    // Everything else: a KV v1 style path (`<mount>/app/db`) used on a v2
    // mount, e.g. by a script written before the mount was upgraded. Vault
    // answers 404 with a warning naming the `kv` command to use.
    PathSpec {
        pattern: "(?P<path>.*)",
        operations: &[Op::Read, Op::Update, Op::Patch, Op::Delete, Op::List],
        fields: &[],
        existence_check: false,
        help: "Not a versioned K/V path: see data/ and metadata/.",
    },
];

/// Mount-wide settings (`<mount>/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    /// 0 means the default ([`DEFAULT_MAX_VERSIONS`]).
    #[serde(default)]
    pub max_versions: u32,
    #[serde(default)]
    pub cas_required: bool,
    /// Seconds; 0 is unset, -1 disables `delete_version_after` on every key.
    #[serde(default)]
    pub delete_version_after: i64,
}

/// Metadata of one version. Times are Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub created_time: i64,
    #[serde(default)]
    pub deletion_time: Option<i64>,
    #[serde(default)]
    pub destroyed: bool,
}

impl VersionMeta {
    /// Deleted when a deletion time is set and has passed (a future deletion
    /// time comes from `delete_version_after`).
    fn is_deleted(&self, now: i64) -> bool {
        self.deletion_time.is_some_and(|t| t < now)
    }

    fn to_json(
        &self,
        version: u64,
        custom: &Option<BTreeMap<String, String>>,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("created_time".into(), fmt_time(self.created_time).into());
        m.insert("custom_metadata".into(), custom_json(custom));
        m.insert(
            "deletion_time".into(),
            fmt_opt_time(self.deletion_time).into(),
        );
        m.insert("destroyed".into(), self.destroyed.into());
        m.insert("version".into(), version.into());
        m
    }
}

/// Everything known about one key except its data (`metadata/<path>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    #[serde(default)]
    pub versions: BTreeMap<u64, VersionMeta>,
    #[serde(default)]
    pub current_version: u64,
    #[serde(default)]
    pub oldest_version: u64,
    /// Unix nanoseconds; 0 until the first version or metadata write.
    #[serde(default)]
    pub created_time: i64,
    #[serde(default)]
    pub updated_time: i64,
    #[serde(default)]
    pub max_versions: u32,
    #[serde(default)]
    pub cas_required: bool,
    /// Seconds; 0 is unset.
    #[serde(default)]
    pub delete_version_after: i64,
    /// `None` until set through `metadata/`; Vault answers `null` then.
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

impl KeyMetadata {
    /// Add the next version and slide the `max_versions` window, as Vault's
    /// `AddVersion` does: the larger of the key's and the mount's non-zero
    /// setting wins, 10 if neither is set. Returns the new version number and
    /// the versions dropped from the window (their data must be deleted).
    pub(super) fn add_version(
        &mut self,
        created: i64,
        deletion: Option<i64>,
        config_max: u32,
    ) -> (u64, Vec<u64>) {
        self.current_version += 1;
        let version = self.current_version;
        self.versions.insert(
            version,
            VersionMeta {
                created_time: created,
                deletion_time: deletion,
                destroyed: false,
            },
        );
        self.updated_time = created;
        if self.created_time == 0 {
            self.created_time = created;
        }
        let max = match self.max_versions.max(config_max) {
            0 => DEFAULT_MAX_VERSIONS,
            n => n,
        };
        let mut pruned = Vec::new();
        if self.current_version - self.oldest_version >= u64::from(max) {
            let to_delete = self.current_version - u64::from(max);
            let doomed: Vec<u64> = self.versions.range(..=to_delete).map(|(v, _)| *v).collect();
            for v in doomed {
                self.versions.remove(&v);
                pruned.push(v);
            }
            self.oldest_version = to_delete + 1;
        }
        (version, pruned)
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut versions = Map::new();
        for (v, vm) in &self.versions {
            let mut m = Map::new();
            m.insert("created_time".into(), fmt_time(vm.created_time).into());
            m.insert(
                "deletion_time".into(),
                fmt_opt_time(vm.deletion_time).into(),
            );
            m.insert("destroyed".into(), vm.destroyed.into());
            versions.insert(v.to_string(), Value::Object(m));
        }
        let mut m = Map::new();
        m.insert("cas_required".into(), self.cas_required.into());
        m.insert("created_time".into(), fmt_time(self.created_time).into());
        m.insert("current_version".into(), self.current_version.into());
        m.insert("custom_metadata".into(), custom_json(&self.custom_metadata));
        m.insert(
            "delete_version_after".into(),
            go_duration(self.delete_version_after).into(),
        );
        m.insert("max_versions".into(), self.max_versions.into());
        m.insert("oldest_version".into(), self.oldest_version.into());
        m.insert("updated_time".into(), fmt_time(self.updated_time).into());
        m.insert("versions".into(), Value::Object(versions));
        m
    }
}

/// The data of one version (`versions/<sha256(path)>/<n>`).
#[derive(Clone, Serialize, Deserialize)]
pub struct VersionData {
    pub data: Map<String, Value>,
    pub created_time: i64,
}

/// The KV v2 backend of one mount. Holds no secret state itself: only the
/// per-key write locks.
pub struct KvBackend {
    locks: Vec<Mutex<()>>,
    config_lock: Mutex<()>,
}

impl Default for KvBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl KvBackend {
    pub fn new() -> Self {
        KvBackend {
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            config_lock: Mutex::new(()),
        }
    }

    /// The write lock for `key`. Different keys may share a stripe; that only
    /// serializes them, it never lets two writers of one key through.
    fn lock_for(&self, key: &str) -> &Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        // The modulo keeps the index below LOCK_STRIPES, so it fits usize.
        let idx = (h.finish() % LOCK_STRIPES as u64) as usize;
        &self.locks[idx]
    }
}

fn metadata_key(key: &str) -> String {
    format!("metadata/{key}")
}

fn version_key(key: &str, version: u64) -> String {
    format!(
        "versions/{}/{version}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

async fn load_config(storage: &StorageView) -> Result<KvConfig> {
    Ok(storage.get_json(CONFIG_KEY).await?.unwrap_or_default())
}

async fn load_meta(storage: &StorageView, key: &str) -> Result<Option<KeyMetadata>> {
    let storage_key = metadata_key(key);
    match storage.get(&storage_key).await? {
        Some(bytes) => kv_codec::decode_meta(&storage_key, &bytes).map(Some),
        None => Ok(None),
    }
}

async fn load_version(storage: &StorageView, key: &str, version: u64) -> Result<VersionData> {
    let storage_key = version_key(key, version);
    let bytes = storage
        .get(&storage_key)
        .await?
        .ok_or_else(|| CoreError::internal("could not find version data"))?;
    kv_codec::decode_version(&storage_key, &bytes)
}

fn put_meta(key: &str, meta: &KeyMetadata) -> BatchOp {
    BatchOp::Put {
        key: metadata_key(key),
        value: kv_codec::encode_meta(meta),
    }
}

async fn store_meta(storage: &StorageView, key: &str, meta: &KeyMetadata) -> Result<()> {
    storage
        .put(&metadata_key(key), kv_codec::encode_meta(meta))
        .await
}

/// The `path` capture, checked: present, and no `..` segment.
fn key_of<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str> {
    let key = ctx.fields.capture("path").unwrap_or_default();
    if key.split('/').any(|seg| seg == "..") {
        return Err(CoreError::bad_request(
            "invalid request: path must not contain '..' segments",
        ));
    }
    Ok(key)
}

/// Like [`key_of`], and the path must name a key (not empty, no trailing `/`).
fn write_key_of<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str> {
    let key = key_of(ctx)?;
    if key.is_empty() {
        return Err(CoreError::bad_request("missing path"));
    }
    if key.ends_with('/') {
        return Err(CoreError::bad_request(
            "invalid path: a key must not end with '/'",
        ));
    }
    Ok(key)
}

fn unsupported_path(ctx: &Ctx<'_>) -> CoreError {
    CoreError::NotFound(format!(
        "unsupported path: {}{}",
        ctx.req.mount_point, ctx.req.relative_path
    ))
}

/// The answer to a path outside the v2 layout. A path the v2 table does
/// serve, only not with this operation (`LIST data/x`, `DELETE config`),
/// is a 405 as before; any other is Vault's 404 with a hint and no data.
fn invalid_path(ctx: &Ctx<'_>, op: Op) -> Result<Response> {
    let rel = ctx.req.relative_path.as_str();
    if rel == "config" || V2_PREFIXES.iter().any(|p| rel.starts_with(p)) {
        return Err(CoreError::UnsupportedOperation);
    }
    let command = match op {
        Op::Read => "get",
        Op::Create | Op::Update => "put",
        Op::Patch => "patch",
        Op::Delete => "delete",
        Op::List => "list",
    };
    let mut r = Response::default().with_warning(format!(
        "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the OpenBao CLI, use 'bao kv {command}' for this operation."
    ));
    r.status = Some(404);
    Ok(r)
}

/// A 404 with Vault's empty `{"errors":[]}` body.
fn not_found() -> CoreError {
    CoreError::NotFound(String::new())
}

#[async_trait]
impl Backend for KvBackend {
    fn paths(&self) -> &'static [PathSpec] {
        &PATHS
    }

    /// Reads of data, metadata, subkeys and the mount's config, and
    /// metadata lists, read storage only (nothing cached, nothing written on
    /// the way: versions past `delete_version_after` are hidden, not
    /// removed), so a standby may serve them.
    fn serves_on_standby(&self, route: usize, req: &crate::logical::Request) -> bool {
        matches!(
            (route, req.operation),
            (R_CONFIG | R_DATA | R_METADATA | R_SUBKEYS, Op::Read) | (R_METADATA, Op::List)
        )
    }

    /// Writes of data and metadata, deletes, undeletes and destroys only
    /// write the mount's storage (the mount's config is cached: not it).
    fn writes_only_storage(&self, route: usize, req: &crate::logical::Request) -> bool {
        matches!(
            (route, req.operation),
            (
                R_DATA | R_METADATA,
                Op::Create | Op::Update | Op::Patch | Op::Delete
            ) | (R_DELETE | R_UNDELETE | R_DESTROY, Op::Create | Op::Update)
        )
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let op = ctx.req.operation;
        match (ctx.route, op) {
            (R_CONFIG, Op::Read) => self.config_read(&ctx).await,
            (R_CONFIG, Op::Create | Op::Update) => self.config_write(&ctx).await,
            (R_DATA, Op::Read) => self.data_read(&ctx).await,
            (R_DATA, Op::Create | Op::Update) => self.data_write(&ctx).await,
            (R_DATA, Op::Patch) => self.data_patch(&ctx).await,
            (R_DATA, Op::Delete) => self.data_delete(&ctx).await,
            // Vault refuses writes to a folder (or to `data/` itself) as bad input.
            (R_DATA_OUTSIDE, Op::Create | Op::Update | Op::Patch) => Err(CoreError::bad_request(
                if ctx.req.relative_path == "data/" {
                    "missing path"
                } else {
                    "invalid path: a key must not end with '/'"
                },
            )),
            (R_DATA_OUTSIDE, _) => Err(unsupported_path(&ctx)),
            (R_METADATA, Op::Read) => self.metadata_read(&ctx).await,
            (R_METADATA, Op::List) => self.metadata_list(&ctx).await,
            (R_METADATA, Op::Create | Op::Update) => self.metadata_write(&ctx).await,
            (R_METADATA, Op::Patch) => self.metadata_patch(&ctx).await,
            (R_METADATA, Op::Delete) => self.metadata_delete(&ctx).await,
            (R_DELETE, Op::Create | Op::Update) => self.versions_delete(&ctx).await,
            (R_UNDELETE, Op::Create | Op::Update) => self.versions_undelete(&ctx).await,
            (R_DESTROY, Op::Create | Op::Update) => self.versions_destroy(&ctx).await,
            (R_SUBKEYS, Op::Read) => self.subkeys_read(&ctx).await,
            (R_INVALID, op) => Ok(Some(invalid_path(&ctx, op)?)),
            _ => Err(CoreError::UnsupportedOperation),
        }
    }

    /// Finish an upgrade from KV v1: move every entry a v1 mount left
    /// behind (see [`crate::engines::kv_v1`]) into version 1 of a v2 key.
    /// Runs whenever the mount is built, so an upgrade cut short by a crash
    /// resumes; with no v1 entries it is one empty listing.
    async fn initialize(&self, storage: &StorageView) -> Result<()> {
        self.upgrade_from_v1(storage).await.map(|_| ())
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        match ctx.route {
            R_DATA | R_METADATA => {
                let key = key_of(&ctx)?;
                if key.is_empty() {
                    return Ok(false);
                }
                Ok(load_meta(ctx.storage, key).await?.is_some())
            }
            _ => Ok(true),
        }
    }
}

impl KvBackend {
    // ----- upgrade from v1 -----

    /// Move each v1 entry into the v2 layout: its data becomes the next
    /// version of the key (version 1 of a new key), and the v1 entry is
    /// deleted in the same atomic batch, so a crash leaves every key either
    /// moved or still waiting in v1 form, never both or neither. Returns how
    /// many entries moved.
    pub async fn upgrade_from_v1(&self, storage: &StorageView) -> Result<usize> {
        let paths = kv_v1::entry_paths(storage).await?;
        if paths.is_empty() {
            return Ok(0);
        }
        let config = load_config(storage).await?;
        let mut moved = 0;
        for key in &paths {
            let _g = self.lock_for(key).lock().await;
            let v1_key = kv_v1::entry_key(key);
            let Some(data) = storage.get_json::<Map<String, Value>>(&v1_key).await? else {
                continue;
            };
            let mut meta = load_meta(storage, key)
                .await?
                .unwrap_or_else(|| KeyMetadata {
                    // Vault's upgrade starts the key's window at its one version.
                    oldest_version: 1,
                    ..KeyMetadata::default()
                });
            self.commit_version_with(
                storage,
                key,
                &config,
                &mut meta,
                data,
                vec![BatchOp::Delete { key: v1_key }],
            )
            .await?;
            moved += 1;
        }
        tracing::info!(
            prefix = storage.prefix(),
            keys = moved,
            "kv mount upgraded from version 1 to version 2"
        );
        Ok(moved)
    }

    // ----- config -----

    async fn config_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let c = load_config(ctx.storage).await?;
        let mut m = Map::new();
        m.insert("cas_required".into(), c.cas_required.into());
        m.insert(
            "delete_version_after".into(),
            go_duration(c.delete_version_after).into(),
        );
        m.insert("max_versions".into(), c.max_versions.into());
        Ok(Some(Response::data(m)))
    }

    async fn config_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        let max = f.int("max_versions").map(max_versions_of).transpose()?;
        let cas = f.bool("cas_required");
        let dva = f
            .get("delete_version_after")
            .map(signed_duration)
            .transpose()?;
        if max.is_none() && cas.is_none() && dva.is_none() {
            return Ok(None);
        }
        let _g = self.config_lock.lock().await;
        let mut c = load_config(ctx.storage).await?;
        if let Some(m) = max {
            c.max_versions = m;
        }
        if let Some(b) = cas {
            c.cas_required = b;
        }
        if let Some(d) = dva {
            c.delete_version_after = if d < 0 { DVA_DISABLED } else { d };
        }
        ctx.storage.put_json(CONFIG_KEY, &c).await?;
        Ok(None)
    }

    // ----- data -----

    async fn data_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let Some(meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let version = match ctx.fields.int("version") {
            Some(v) if v > 0 => v.unsigned_abs(),
            _ => meta.current_version,
        };
        let Some(vm) = meta.versions.get(&version) else {
            return Ok(None);
        };
        let mut body = Map::new();
        body.insert("data".into(), Value::Null);
        body.insert(
            "metadata".into(),
            Value::Object(vm.to_json(version, &meta.custom_metadata)),
        );
        if vm.is_deleted(now_nanos()) || vm.destroyed {
            let mut r = Response::data(body);
            r.status = Some(404);
            return Ok(Some(r));
        }
        let stored = load_version(ctx.storage, key, version).await?;
        body.insert("data".into(), Value::Object(stored.data));
        Ok(Some(Response::data(body)))
    }

    async fn data_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = write_key_of(ctx)?;
        let config = load_config(ctx.storage).await?;
        let Some(data) = ctx.fields.map("data") else {
            return Err(CoreError::bad_request("no data provided"));
        };
        let _g = self.lock_for(key).lock().await;
        let mut meta = load_meta(ctx.storage, key).await?.unwrap_or_default();
        check_cas(ctx.fields, &config, &meta)?;
        let resp = self
            .commit_version(ctx.storage, key, &config, &mut meta, data.clone())
            .await?;
        Ok(Some(resp))
    }

    async fn data_patch(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = write_key_of(ctx)?;
        let Some(patch) = ctx.fields.map("data") else {
            return Err(CoreError::bad_request("no data provided"));
        };
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Err(not_found());
        };
        let config = load_config(ctx.storage).await?;
        check_cas(ctx.fields, &config, &meta)?;
        let current = meta.current_version;
        let Some(vm) = meta.versions.get(&current) else {
            return Err(not_found());
        };
        if vm.is_deleted(now_nanos()) || vm.destroyed {
            let mut r = Response::data(vm.to_json(current, &meta.custom_metadata));
            r.status = Some(404);
            return Ok(Some(r));
        }
        let existing = load_version(ctx.storage, key, current).await?;
        let mut doc = Value::Object(existing.data);
        json_patch::merge(&mut doc, &Value::Object(patch.clone()));
        let Value::Object(merged) = doc else {
            return Err(CoreError::internal("merge patch did not produce an object"));
        };
        let resp = self
            .commit_version(ctx.storage, key, &config, &mut meta, merged)
            .await?;
        Ok(Some(resp))
    }

    /// Write `data` as the next version of `key`, with the metadata update and
    /// the pruning of old versions, in one atomic batch. Caller holds the key
    /// lock and has checked CAS.
    async fn commit_version(
        &self,
        storage: &StorageView,
        key: &str,
        config: &KvConfig,
        meta: &mut KeyMetadata,
        data: Map<String, Value>,
    ) -> Result<Response> {
        self.commit_version_with(storage, key, config, meta, data, Vec::new())
            .await
    }

    /// [`Self::commit_version`] with `extra` operations in the same batch.
    async fn commit_version_with(
        &self,
        storage: &StorageView,
        key: &str,
        config: &KvConfig,
        meta: &mut KeyMetadata,
        data: Map<String, Value>,
        extra: Vec<BatchOp>,
    ) -> Result<Response> {
        let now = now_nanos();
        let deletion = if config.delete_version_after == DVA_DISABLED {
            None
        } else {
            deletion_time(now, config.delete_version_after, meta.delete_version_after)
        };
        let (version, pruned) = meta.add_version(now, deletion, config.max_versions);
        let mut ops = vec![
            BatchOp::Put {
                key: version_key(key, version),
                value: kv_codec::encode_version(&VersionData {
                    data,
                    created_time: now,
                })?,
            },
            put_meta(key, meta),
        ];
        ops.extend(pruned.into_iter().map(|v| BatchOp::Delete {
            key: version_key(key, v),
        }));
        ops.extend(extra);
        storage.batch(ops).await?;
        let vm = meta
            .versions
            .get(&version)
            .ok_or_else(|| CoreError::internal("new version missing from metadata"))?;
        Ok(Response::data(vm.to_json(version, &meta.custom_metadata)))
    }

    async fn data_delete(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let now = now_nanos();
        let current = meta.current_version;
        let Some(lv) = meta.versions.get_mut(&current) else {
            return Ok(None);
        };
        if lv.destroyed || lv.is_deleted(now) {
            return Ok(None);
        }
        lv.deletion_time = Some(now);
        store_meta(ctx.storage, key, &meta).await?;
        Ok(None)
    }

    // ----- delete / undelete / destroy -----

    async fn versions_delete(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let versions = versions_of(ctx.fields, "No version number provided")?;
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let now = now_nanos();
        for v in versions {
            let Some(vm) = meta.versions.get_mut(&v) else {
                continue;
            };
            if vm.destroyed || vm.is_deleted(now) {
                continue;
            }
            vm.deletion_time = Some(now);
        }
        store_meta(ctx.storage, key, &meta).await?;
        Ok(None)
    }

    async fn versions_undelete(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let versions = versions_of(ctx.fields, "No version number provided")?;
        let config = load_config(ctx.storage).await?;
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let now = now_nanos();
        let key_dva = meta.delete_version_after;
        for v in versions {
            let Some(vm) = meta.versions.get_mut(&v) else {
                continue;
            };
            if vm.destroyed {
                continue;
            }
            vm.deletion_time = if config.delete_version_after == DVA_DISABLED {
                None
            } else {
                deletion_time(now, config.delete_version_after, key_dva)
            };
        }
        store_meta(ctx.storage, key, &meta).await?;
        Ok(None)
    }

    async fn versions_destroy(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let versions = versions_of(ctx.fields, "no version number provided")?;
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let mut ops = Vec::new();
        for v in versions {
            if let Some(vm) = meta.versions.get_mut(&v) {
                vm.destroyed = true;
            }
            ops.push(BatchOp::Delete {
                key: version_key(key, v),
            });
        }
        ops.insert(0, put_meta(key, &meta));
        ctx.storage.batch(ops).await?;
        Ok(None)
    }

    // ----- metadata -----

    async fn metadata_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        if key.is_empty() {
            return Ok(None);
        }
        Ok(load_meta(ctx.storage, key)
            .await?
            .map(|meta| Response::data(meta.to_json())))
    }

    async fn metadata_list(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        let prefix = if key.is_empty() || key.ends_with('/') {
            key.to_string()
        } else {
            format!("{key}/")
        };
        let after = ctx.fields.str("after").unwrap_or_default();
        let limit = ctx.fields.int("limit").filter(|l| *l > 0).unwrap_or(0);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let keys = ctx
            .storage
            .list_page(&metadata_key(&prefix), after, limit)
            .await?;
        Response::list(keys)
    }

    async fn metadata_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = write_key_of(ctx)?;
        let f = ctx.fields;
        let max = f.int("max_versions").map(max_versions_of).transpose()?;
        let cas = f.bool("cas_required");
        let dva = f.duration_secs("delete_version_after");
        let custom = match f.map("custom_metadata") {
            Some(raw) => {
                let parsed = parse_custom_metadata(raw, false)?;
                validate_custom_metadata(&parsed)?;
                Some(parsed)
            }
            None => None,
        };
        if max.is_none() && cas.is_none() && dva.is_none() && custom.is_none() {
            return Ok(None);
        }
        let config = load_config(ctx.storage).await?;
        let resp = cas_warning(&config, cas);
        let _g = self.lock_for(key).lock().await;
        let mut meta = match load_meta(ctx.storage, key).await? {
            Some(m) => m,
            None => {
                let now = now_nanos();
                KeyMetadata {
                    created_time: now,
                    updated_time: now,
                    ..KeyMetadata::default()
                }
            }
        };
        if let Some(m) = max {
            meta.max_versions = m;
        }
        if let Some(b) = cas {
            meta.cas_required = b;
        }
        if let Some(d) = dva {
            meta.delete_version_after = d;
        }
        if custom.is_some() {
            meta.custom_metadata = custom;
        }
        store_meta(ctx.storage, key, &meta).await?;
        Ok(resp)
    }

    async fn metadata_patch(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = write_key_of(ctx)?;
        let f = ctx.fields;
        let max = f.int("max_versions").map(max_versions_of).transpose()?;
        let cas = f.bool("cas_required");
        let dva = f.duration_secs("delete_version_after");
        let clear_custom = matches!(f.raw().get("custom_metadata"), Some(Value::Null));
        let custom_patch = f.map("custom_metadata");
        if let Some(raw) = custom_patch {
            validate_custom_metadata(&parse_custom_metadata(raw, true)?)?;
        }
        let config = load_config(ctx.storage).await?;
        let _g = self.lock_for(key).lock().await;
        let Some(mut meta) = load_meta(ctx.storage, key).await? else {
            return Err(not_found());
        };
        let resp = cas_warning(&config, cas);
        if let Some(m) = max {
            meta.max_versions = m;
        }
        if let Some(b) = cas {
            meta.cas_required = b;
        }
        if let Some(d) = dva {
            meta.delete_version_after = d;
        }
        if clear_custom {
            meta.custom_metadata = None;
        } else if let Some(raw) = custom_patch {
            // JSON merge patch of the map: null removes a key.
            let mut merged = meta.custom_metadata.take().unwrap_or_default();
            for (k, v) in raw {
                if v.is_null() {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), weak_string(k, v)?);
                }
            }
            validate_custom_metadata(&merged)?;
            meta.custom_metadata = Some(merged);
        }
        store_meta(ctx.storage, key, &meta).await?;
        Ok(resp)
    }

    async fn metadata_delete(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        if key.is_empty() {
            return Ok(None);
        }
        let _g = self.lock_for(key).lock().await;
        let Some(meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let mut ops: Vec<BatchOp> = meta
            .versions
            .keys()
            .map(|v| BatchOp::Delete {
                key: version_key(key, *v),
            })
            .collect();
        ops.push(BatchOp::Delete {
            key: metadata_key(key),
        });
        ctx.storage.batch(ops).await?;
        Ok(None)
    }

    // ----- subkeys -----

    async fn subkeys_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let key = key_of(ctx)?;
        if key.is_empty() {
            return Ok(None);
        }
        let depth = match ctx.fields.int("depth") {
            None | Some(0) => MAX_SUBKEYS_DEPTH,
            Some(d) if d < 0 => {
                return Err(CoreError::bad_request(
                    "depth must be a non-negative integer",
                ));
            }
            Some(d) => usize::try_from(d)
                .unwrap_or(MAX_SUBKEYS_DEPTH)
                .min(MAX_SUBKEYS_DEPTH),
        };
        let Some(meta) = load_meta(ctx.storage, key).await? else {
            return Ok(None);
        };
        let version = match ctx.fields.int("version") {
            Some(v) if v > 0 => v.unsigned_abs(),
            _ => meta.current_version,
        };
        let Some(vm) = meta.versions.get(&version) else {
            return Ok(None);
        };
        let mut body = Map::new();
        body.insert(
            "metadata".into(),
            Value::Object(vm.to_json(version, &meta.custom_metadata)),
        );
        body.insert("subkeys".into(), Value::Null);
        if vm.is_deleted(now_nanos()) || vm.destroyed {
            let mut r = Response::data(body);
            r.status = Some(404);
            return Ok(Some(r));
        }
        let mut data = load_version(ctx.storage, key, version).await?.data;
        strip_values(&mut data, 1, depth);
        body.insert("subkeys".into(), Value::Object(data));
        Ok(Some(Response::data(body)))
    }
}

/// Replace every leaf (non-object or empty object) with null, keeping the
/// nesting down to `max_depth`; deeper objects become null leaves too.
fn strip_values(m: &mut Map<String, Value>, depth: usize, max_depth: usize) {
    for v in m.values_mut() {
        match v {
            Value::Object(child) if !child.is_empty() && depth < max_depth => {
                strip_values(child, depth + 1, max_depth);
            }
            _ => *v = Value::Null,
        }
    }
}

/// Vault's check-and-set rule for data writes and patches.
fn check_cas(fields: &FieldData, config: &KvConfig, meta: &KeyMetadata) -> Result<()> {
    let cas = fields.map("options").and_then(|o| o.get("cas"));
    match cas {
        Some(raw) => {
            let cas = weak_int(raw)
                .ok_or_else(|| CoreError::bad_request("error parsing check-and-set parameter"))?;
            if u64::try_from(cas).ok() != Some(meta.current_version) {
                return Err(CoreError::bad_request(
                    "check-and-set parameter did not match the current version",
                ));
            }
            Ok(())
        }
        None if config.cas_required || meta.cas_required => Err(CoreError::bad_request(
            "check-and-set parameter required for this call",
        )),
        None => Ok(()),
    }
}

/// Decode an integer the way Go's `mapstructure.WeakDecode` does.
fn weak_int(v: &Value) -> Option<i64> {
    match v {
        Value::Null => Some(0),
        Value::Bool(b) => Some(i64::from(*b)),
        // A fractional number is not an integer (OpenBao answers 400 for `cas: 1.5`).
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) if s.trim().is_empty() => Some(0),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn max_versions_of(n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        CoreError::bad_request("max_versions must be a non-negative integer below 2^32")
    })
}

/// A signed duration (config's `delete_version_after`): seconds as a number,
/// or a Go duration string, optionally negative.
fn signed_duration(v: &Value) -> Result<i64> {
    let err = || {
        CoreError::bad_request(
            "error converting input for field \"delete_version_after\": expected duration",
        )
    };
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(err),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix('-') {
                Some(rest) => parse_duration(rest).map(|d| -d).ok_or_else(err),
                None => parse_duration(s).ok_or_else(err),
            }
        }
        _ => Err(err()),
    }
}

/// The `versions` field: `[1,2]`, `["1","2"]`, `"1,2"` or `3`.
fn versions_of(fields: &FieldData, missing: &str) -> Result<Vec<u64>> {
    let bad = |item: &dyn std::fmt::Display| {
        CoreError::bad_request(format!(
            "error converting input {item} for field \"versions\": expected comma int slice"
        ))
    };
    let parse_one = |s: &str| -> Result<u64> {
        let s = s.trim();
        s.parse::<u64>().map_err(|_| bad(&format!("{s:?}")))
    };
    let mut out: Vec<u64> = Vec::new();
    match fields.get("versions") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::Number(n) => out.push(n.as_u64().ok_or_else(|| bad(n))?),
                    Value::String(s) => {
                        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                            out.push(parse_one(part)?);
                        }
                    }
                    _ => return Err(bad(&"array item")),
                }
            }
        }
        Some(Value::String(s)) => {
            for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                out.push(parse_one(part)?);
            }
        }
        Some(Value::Number(n)) => out.push(n.as_u64().ok_or_else(|| bad(n))?),
        Some(_) => return Err(bad(&"value")),
    }
    if out.is_empty() {
        return Err(CoreError::bad_request(missing));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn cas_warning(config: &KvConfig, cas: Option<bool>) -> Option<Response> {
    (config.cas_required && cas == Some(false)).then(|| {
        Response::default().with_warning(
            "\"cas_required\" set to false, but is mandated by backend config. This value will be ignored.",
        )
    })
}

/// A custom_metadata value as a string, as Go's weak decoding does.
fn weak_string(key: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "1" } else { "0" }.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(CoreError::bad_request(format!(
            "{CUSTOM_METADATA_ERR}: value for key {key:?} must be a string"
        ))),
    }
}

fn parse_custom_metadata(
    raw: &Map<String, Value>,
    filter_nulls: bool,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        if filter_nulls && v.is_null() {
            continue;
        }
        out.insert(k.clone(), weak_string(k, v)?);
    }
    Ok(out)
}

fn printable(s: &str) -> bool {
    s.chars()
        .all(|c| !c.is_control() && (c == ' ' || !c.is_whitespace()))
}

/// Vault's custom_metadata limits, with its wording (all problems reported,
/// in go-multierror's format).
fn validate_custom_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    let mut errs: Vec<String> = Vec::new();
    if m.len() > MAX_CUSTOM_METADATA_KEYS {
        errs.push(format!(
            "{CUSTOM_METADATA_ERR}: payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys, provided {}",
            m.len()
        ));
    } else {
        for (k, v) in m {
            if k.is_empty() || k.len() > MAX_CUSTOM_METADATA_KEY_LEN {
                errs.push(format!(
                    "{CUSTOM_METADATA_ERR}: length of key {k:?} is {} but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                    k.len()
                ));
            }
            if v.is_empty() || v.len() > MAX_CUSTOM_METADATA_VALUE_LEN {
                errs.push(format!(
                    "{CUSTOM_METADATA_ERR}: length of value for key {k:?} is {} but must be 0 < len(value) <= {MAX_CUSTOM_METADATA_VALUE_LEN}",
                    v.len()
                ));
            }
            if !printable(k) {
                errs.push(format!(
                    "{CUSTOM_METADATA_ERR}: key {k:?} contains unprintable characters"
                ));
            }
            if !printable(v) {
                errs.push(format!(
                    "{CUSTOM_METADATA_ERR}: value for key {k:?} contains unprintable characters"
                ));
            }
        }
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(CoreError::bad_request(format!(
            "1 error occurred:\n\t* {}\n\n",
            errs[0]
        ))),
        n => Err(CoreError::bad_request(format!(
            "{n} errors occurred:\n\t* {}\n\n",
            errs.join("\n\t* ")
        ))),
    }
}

fn custom_json(custom: &Option<BTreeMap<String, String>>) -> Value {
    match custom {
        None => Value::Null,
        Some(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect(),
        ),
    }
}

/// Creation time plus the smaller non-zero of the mount's and the key's
/// `delete_version_after` (seconds); `None` when both are unset.
fn deletion_time(created: i64, mount: i64, key: i64) -> Option<i64> {
    if mount == 0 && key == 0 {
        return None;
    }
    let mut min = key;
    if (mount != 0 && mount < min) || min == 0 {
        min = mount;
    }
    Some(created.saturating_add(min.saturating_mul(1_000_000_000)))
}

fn now_nanos() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// RFC 3339 with nanoseconds, trailing zeros trimmed, UTC — Go's
/// `time.RFC3339Nano`, which Vault uses (`2018-03-22T02:24:06.945319214Z`).
pub fn fmt_time(nanos: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) else {
        return String::new();
    };
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ns = t.nanosecond();
    if ns != 0 {
        let frac = format!("{ns:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn fmt_opt_time(nanos: Option<i64>) -> String {
    nanos.map(fmt_time).unwrap_or_default()
}

/// Whole seconds as Go's `time.Duration.String()`: `0s`, `45s`, `1m30s`, `1h0m0s`.
pub fn go_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let u = secs.unsigned_abs();
    let (h, m, s) = (u / 3600, (u % 3600) / 60, u % 60);
    let body = if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    };
    if secs < 0 { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use regex::Regex;
    use serde_json::json;

    use super::*;
    use crate::barrier::Barrier;
    use crate::logical::{Operation, Request};
    use crate::storage::memory::MemoryStore;

    struct Harness {
        kv: Arc<KvBackend>,
        storage: StorageView,
    }

    /// A standby serves only reads and lists that write nothing: every
    /// route's write-ish operations (and v1-style paths) go to the active node.
    #[test]
    fn standbys_serve_only_plain_reads() {
        let kv = KvBackend::new();
        for (route, spec) in PATHS.iter().enumerate() {
            for op in [
                Operation::Read,
                Operation::List,
                Operation::Create,
                Operation::Update,
                Operation::Patch,
                Operation::Delete,
            ] {
                let req = Request::new(op, "secret/x");
                let served = kv.serves_on_standby(route, &req);
                let plain_read = matches!(
                    (spec.pattern, op),
                    ("config" | "data/(?P<path>.*?[^/])", Operation::Read)
                        | ("metadata/(?P<path>.*)", Operation::Read | Operation::List)
                        | ("subkeys/(?P<path>.*)", Operation::Read)
                );
                assert_eq!(served, plain_read, "{} {op:?}", spec.pattern);
            }
        }
    }

    impl Harness {
        async fn new() -> Self {
            let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
            barrier.initialize(&[7u8; 32]).await.unwrap();
            Harness {
                kv: Arc::new(KvBackend::new()),
                storage: StorageView::new(barrier, "logical/test-mount/"),
            }
        }

        /// What the router does: match the table (anchored), 405 when the
        /// path matches but not the operation, existence check for
        /// create/update, field validation, then `handle`.
        async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Option<Response>> {
            let table = self.kv.paths();
            let mut matched = false;
            for (i, spec) in table.iter().enumerate() {
                let re = Regex::new(&format!("^(?:{})$", spec.pattern)).unwrap();
                let Some(caps) = re.captures(path) else {
                    continue;
                };
                matched = true;
                if !spec.operations.contains(&op.table_op()) {
                    continue;
                }
                let mut captures = BTreeMap::new();
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        captures.insert(name.to_string(), m.as_str().to_string());
                    }
                }
                let raw = match body {
                    Value::Object(m) => m,
                    Value::Null => Map::new(),
                    other => panic!("test body must be an object, got {other}"),
                };
                let mut req = Request::new(op, format!("secret/{path}"));
                req.mount_point = "secret/".into();
                req.mount_type = "kv".into();
                req.relative_path = path.to_string();
                req.data = raw.clone();
                let (fields, _) = FieldData::validate(spec, &raw, captures)?;
                if spec.existence_check && matches!(op, Operation::Update | Operation::Create) {
                    let exists = self
                        .kv
                        .exists(Ctx {
                            req: &req,
                            fields: &fields,
                            route: i,
                            storage: &self.storage,
                        })
                        .await?;
                    req.operation = if exists {
                        Operation::Update
                    } else {
                        Operation::Create
                    };
                }
                return self
                    .kv
                    .handle(Ctx {
                        req: &req,
                        fields: &fields,
                        route: i,
                        storage: &self.storage,
                    })
                    .await;
            }
            if matched {
                Err(CoreError::UnsupportedOperation)
            } else {
                Err(CoreError::NotFound(format!(
                    "unsupported path: secret/{path}"
                )))
            }
        }

        async fn ok(&self, op: Operation, path: &str, body: Value) -> Option<Response> {
            match self.call(op, path, body).await {
                Ok(r) => r,
                Err(e) => panic!("{op:?} {path}: {e}"),
            }
        }

        async fn data(&self, op: Operation, path: &str, body: Value) -> Value {
            let r = self.ok(op, path, body).await.expect("a response with data");
            assert_eq!(r.status, None, "unexpected status for {path}");
            Value::Object(r.data.expect("data"))
        }

        async fn err(&self, op: Operation, path: &str, body: Value) -> CoreError {
            match self.call(op, path, body).await {
                Ok(r) => panic!("{op:?} {path}: expected an error, got {r:?}"),
                Err(e) => e,
            }
        }

        async fn put(&self, path: &str, data: Value) -> Value {
            self.data(Operation::Update, path, json!({ "data": data }))
                .await
        }
    }

    #[test]
    fn times_and_durations_format_like_go() {
        assert_eq!(
            fmt_time(1_521_685_446_945_319_214),
            "2018-03-22T02:24:06.945319214Z"
        );
        assert_eq!(fmt_time(1_521_685_446_000_000_000), "2018-03-22T02:24:06Z");
        assert_eq!(
            fmt_time(1_521_685_446_500_000_000),
            "2018-03-22T02:24:06.5Z"
        );
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(45), "45s");
        assert_eq!(go_duration(90), "1m30s");
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(3 * 3600 + 25 * 60 + 19), "3h25m19s");
        assert_eq!(go_duration(-1), "-1s");
    }

    #[test]
    fn deletion_time_takes_smaller_non_zero() {
        assert_eq!(deletion_time(0, 0, 0), None);
        assert_eq!(deletion_time(0, 10, 0), Some(10_000_000_000));
        assert_eq!(deletion_time(0, 0, 5), Some(5_000_000_000));
        assert_eq!(deletion_time(0, 10, 5), Some(5_000_000_000));
        assert_eq!(deletion_time(0, 3, 5), Some(3_000_000_000));
    }

    #[tokio::test]
    async fn write_and_read_versions() {
        let h = Harness::new().await;
        let w1 = h.put("data/app/db", json!({"password": "one"})).await;
        assert_eq!(w1["version"], 1);
        assert_eq!(w1["deletion_time"], "");
        assert_eq!(w1["destroyed"], false);
        assert_eq!(w1["custom_metadata"], Value::Null);
        assert!(w1["created_time"].as_str().unwrap().ends_with('Z'));
        let w2 = h.put("data/app/db", json!({"password": "two"})).await;
        assert_eq!(w2["version"], 2);

        let r = h.data(Operation::Read, "data/app/db", json!({})).await;
        assert_eq!(r["data"], json!({"password": "two"}));
        assert_eq!(r["metadata"]["version"], 2);
        assert_eq!(r["metadata"]["deletion_time"], "");
        assert_eq!(r["metadata"]["destroyed"], false);

        let old = h
            .data(Operation::Read, "data/app/db", json!({"version": "1"}))
            .await;
        assert_eq!(old["data"], json!({"password": "one"}));
        assert_eq!(old["metadata"]["version"], 1);

        // Unknown version and unknown key: 404 (Ok(None)).
        assert!(
            h.ok(Operation::Read, "data/app/db", json!({"version": 9}))
                .await
                .is_none()
        );
        assert!(
            h.ok(Operation::Read, "data/app/nope", json!({}))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn bad_input_is_rejected_and_changes_nothing() {
        let h = Harness::new().await;
        let e = h
            .err(Operation::Update, "data/k", json!({"options": {}}))
            .await;
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (400, "no data provided")
        );
        let e = h
            .err(Operation::Update, "data/k", json!({"data": "not a map"}))
            .await;
        assert_eq!(e.status(), 400);
        let e = h
            .err(Operation::Update, "data/a/../b", json!({"data": {}}))
            .await;
        assert_eq!(e.status(), 400);
        // Empty path and folders under data/ are not secrets: reads are 404,
        // writes are bad input (400), as OpenBao answers.
        let e = h.err(Operation::Read, "data/", json!({})).await;
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("unsupported path"), "{e}");
        let e = h
            .err(Operation::Update, "data/folder/", json!({"data": {}}))
            .await;
        assert_eq!(e.status(), 400);
        // LIST on data/ is Vault's 405.
        let e = h.err(Operation::List, "data/app", json!({})).await;
        assert_eq!(e.status(), 405);
        let e = h.err(Operation::List, "data/app/", json!({})).await;
        assert_eq!(e.status(), 405);
        assert!(
            h.ok(Operation::List, "metadata/", json!({}))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn check_and_set() {
        let h = Harness::new().await;
        // cas=0: only if the key does not exist.
        let w = h
            .data(
                Operation::Update,
                "data/c",
                json!({"data": {"a": 1}, "options": {"cas": 0}}),
            )
            .await;
        assert_eq!(w["version"], 1);
        let e = h
            .err(
                Operation::Update,
                "data/c",
                json!({"data": {"a": 2}, "options": {"cas": 0}}),
            )
            .await;
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.to_string(),
            "check-and-set parameter did not match the current version"
        );
        let e = h
            .err(
                Operation::Update,
                "data/c",
                json!({"data": {"a": 2}, "options": {"cas": 5}}),
            )
            .await;
        assert_eq!(
            e.to_string(),
            "check-and-set parameter did not match the current version"
        );
        let w = h
            .data(
                Operation::Update,
                "data/c",
                json!({"data": {"a": 2}, "options": {"cas": "1"}}),
            )
            .await;
        assert_eq!(w["version"], 2);
        let e = h
            .err(
                Operation::Update,
                "data/c",
                json!({"data": {}, "options": {"cas": "x"}}),
            )
            .await;
        assert_eq!(e.to_string(), "error parsing check-and-set parameter");
        let r = h.data(Operation::Read, "data/c", json!({})).await;
        assert_eq!(r["data"], json!({"a": 2}));
    }

    #[tokio::test]
    async fn cas_required_by_mount_or_key() {
        let h = Harness::new().await;
        h.ok(Operation::Update, "config", json!({"cas_required": true}))
            .await;
        let e = h
            .err(Operation::Update, "data/x", json!({"data": {"a": 1}}))
            .await;
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (400, "check-and-set parameter required for this call")
        );
        h.data(
            Operation::Update,
            "data/x",
            json!({"data": {"a": 1}, "options": {"cas": 0}}),
        )
        .await;
        h.ok(Operation::Update, "config", json!({"cas_required": false}))
            .await;
        h.put("data/x", json!({"a": 2})).await;

        // Per-key.
        h.ok(
            Operation::Update,
            "metadata/y",
            json!({"cas_required": true}),
        )
        .await;
        let e = h
            .err(Operation::Update, "data/y", json!({"data": {"a": 1}}))
            .await;
        assert_eq!(
            e.to_string(),
            "check-and-set parameter required for this call"
        );
        let w = h
            .data(
                Operation::Update,
                "data/y",
                json!({"data": {"a": 1}, "options": {"cas": 0}}),
            )
            .await;
        assert_eq!(w["version"], 1);
    }

    #[tokio::test]
    async fn soft_delete_undelete_and_destroy() {
        let h = Harness::new().await;
        h.put("data/s", json!({"v": 1})).await;
        h.put("data/s", json!({"v": 2})).await;
        assert!(h.ok(Operation::Delete, "data/s", json!({})).await.is_none());

        // Deleted latest: 404 with metadata in data.
        let r = h.ok(Operation::Read, "data/s", json!({})).await.unwrap();
        assert_eq!(r.status, Some(404));
        let d = Value::Object(r.data.unwrap());
        assert_eq!(d["data"], Value::Null);
        assert_eq!(d["metadata"]["version"], 2);
        assert_ne!(d["metadata"]["deletion_time"], "");
        // The older version still reads.
        let old = h
            .data(Operation::Read, "data/s", json!({"version": 1}))
            .await;
        assert_eq!(old["data"], json!({"v": 1}));

        let e = h.err(Operation::Update, "undelete/s", json!({})).await;
        assert_eq!(e.to_string(), "No version number provided");
        h.ok(Operation::Update, "undelete/s", json!({"versions": [2]}))
            .await;
        let r = h.data(Operation::Read, "data/s", json!({})).await;
        assert_eq!(r["data"], json!({"v": 2}));
        assert_eq!(r["metadata"]["deletion_time"], "");

        // delete/ takes "1,2" too.
        h.ok(Operation::Update, "delete/s", json!({"versions": "1,2"}))
            .await;
        let r = h
            .ok(Operation::Read, "data/s", json!({"version": 1}))
            .await
            .unwrap();
        assert_eq!(r.status, Some(404));

        let e = h
            .err(Operation::Update, "destroy/s", json!({"versions": []}))
            .await;
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (400, "no version number provided")
        );
        h.ok(Operation::Update, "destroy/s", json!({"versions": [1]}))
            .await;
        let r = h
            .ok(Operation::Read, "data/s", json!({"version": 1}))
            .await
            .unwrap();
        assert_eq!(r.status, Some(404));
        let d = Value::Object(r.data.unwrap());
        assert_eq!(d["metadata"]["destroyed"], true);
        // The data is gone from storage, the metadata remembers.
        assert!(h.storage.get(&version_key("s", 1)).await.unwrap().is_none());
        assert!(h.storage.get(&version_key("s", 2)).await.unwrap().is_some());
        let m = h.data(Operation::Read, "metadata/s", json!({})).await;
        assert_eq!(m["versions"]["1"]["destroyed"], true);
        // Undelete cannot bring back a destroyed version.
        h.ok(Operation::Update, "undelete/s", json!({"versions": [1]}))
            .await;
        let r = h
            .ok(Operation::Read, "data/s", json!({"version": 1}))
            .await
            .unwrap();
        assert_eq!(r.status, Some(404));
    }

    #[tokio::test]
    async fn metadata_shape_and_delete() {
        let h = Harness::new().await;
        h.put("data/m", json!({"a": 1})).await;
        h.put("data/m", json!({"a": 2})).await;
        let m = h.data(Operation::Read, "metadata/m", json!({})).await;
        let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cas_required",
                "created_time",
                "current_version",
                "custom_metadata",
                "delete_version_after",
                "max_versions",
                "oldest_version",
                "updated_time",
                "versions"
            ]
        );
        assert_eq!(m["current_version"], 2);
        assert_eq!(m["oldest_version"], 0);
        assert_eq!(m["max_versions"], 0);
        assert_eq!(m["delete_version_after"], "0s");
        assert_eq!(m["cas_required"], false);
        assert_eq!(m["versions"]["1"]["deletion_time"], "");
        assert_eq!(m["versions"]["2"]["destroyed"], false);
        assert_eq!(m["updated_time"], m["versions"]["2"]["created_time"]);
        assert_eq!(m["created_time"], m["versions"]["1"]["created_time"]);

        h.ok(
            Operation::Update,
            "metadata/m",
            json!({"max_versions": 5, "delete_version_after": "1h", "custom_metadata": {"owner": "ops"}}),
        )
        .await;
        let m = h.data(Operation::Read, "metadata/m", json!({})).await;
        assert_eq!(m["max_versions"], 5);
        assert_eq!(m["delete_version_after"], "1h0m0s");
        assert_eq!(m["custom_metadata"], json!({"owner": "ops"}));
        // custom_metadata is echoed on data reads and writes.
        let w = h.put("data/m", json!({"a": 3})).await;
        assert_eq!(w["custom_metadata"], json!({"owner": "ops"}));
        assert_ne!(
            w["deletion_time"], "",
            "delete_version_after sets a future deletion time"
        );
        let r = h.data(Operation::Read, "data/m", json!({})).await;
        assert_eq!(r["data"], json!({"a": 3}), "not yet past its deletion time");

        assert!(
            h.ok(Operation::Delete, "metadata/m", json!({}))
                .await
                .is_none()
        );
        assert!(
            h.ok(Operation::Read, "metadata/m", json!({}))
                .await
                .is_none()
        );
        assert!(h.ok(Operation::Read, "data/m", json!({})).await.is_none());
        for v in 1..=3 {
            assert!(h.storage.get(&version_key("m", v)).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn max_versions_prunes_oldest() {
        let h = Harness::new().await;
        h.ok(Operation::Update, "config", json!({"max_versions": 3}))
            .await;
        let c = h.data(Operation::Read, "config", json!({})).await;
        assert_eq!(
            c,
            json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 3})
        );
        for i in 1..=5 {
            h.put("data/p", json!({"i": i})).await;
        }
        let m = h.data(Operation::Read, "metadata/p", json!({})).await;
        assert_eq!(m["current_version"], 5);
        assert_eq!(m["oldest_version"], 3);
        let versions: Vec<&String> = m["versions"].as_object().unwrap().keys().collect();
        assert_eq!(versions, ["3", "4", "5"]);
        assert!(
            h.ok(Operation::Read, "data/p", json!({"version": 2}))
                .await
                .is_none()
        );
        assert!(h.storage.get(&version_key("p", 1)).await.unwrap().is_none());
        assert!(h.storage.get(&version_key("p", 2)).await.unwrap().is_none());
        let r = h
            .data(Operation::Read, "data/p", json!({"version": 3}))
            .await;
        assert_eq!(r["data"], json!({"i": 3}));

        // Without any setting, 10 versions are kept.
        for i in 1..=12 {
            h.put("data/q", json!({"i": i})).await;
        }
        let m = h.data(Operation::Read, "metadata/q", json!({})).await;
        assert_eq!(
            m["versions"].as_object().unwrap().len(),
            3,
            "mount max_versions 3 applies"
        );
        h.ok(Operation::Update, "config", json!({"max_versions": 0}))
            .await;
        for i in 1..=12 {
            h.put("data/r", json!({"i": i})).await;
        }
        let m = h.data(Operation::Read, "metadata/r", json!({})).await;
        assert_eq!(m["versions"].as_object().unwrap().len(), 10);
        assert_eq!(m["oldest_version"], 3);
    }

    #[tokio::test]
    async fn config_delete_version_after() {
        let h = Harness::new().await;
        h.ok(
            Operation::Update,
            "config",
            json!({"delete_version_after": "3h25m19s"}),
        )
        .await;
        let c = h.data(Operation::Read, "config", json!({})).await;
        assert_eq!(c["delete_version_after"], "3h25m19s");
        h.ok(
            Operation::Update,
            "config",
            json!({"delete_version_after": "-1s"}),
        )
        .await;
        let c = h.data(Operation::Read, "config", json!({})).await;
        assert_eq!(c["delete_version_after"], "-1s");
        let e = h
            .err(
                Operation::Update,
                "config",
                json!({"delete_version_after": "soon"}),
            )
            .await;
        assert_eq!(e.status(), 400);
        let e = h
            .err(Operation::Update, "config", json!({"max_versions": -2}))
            .await;
        assert_eq!(e.status(), 400);
    }

    #[tokio::test]
    async fn expired_versions_read_as_deleted() {
        let h = Harness::new().await;
        h.put("data/e", json!({"a": 1})).await;
        // Simulate a version written long ago with a 1s delete_version_after.
        let mut meta = load_meta(&h.storage, "e").await.unwrap().unwrap();
        let vm = meta.versions.get_mut(&1).unwrap();
        vm.created_time -= 10_000_000_000;
        vm.deletion_time = Some(vm.created_time + 1_000_000_000);
        store_meta(&h.storage, "e", &meta).await.unwrap();
        let r = h.ok(Operation::Read, "data/e", json!({})).await.unwrap();
        assert_eq!(r.status, Some(404));
        assert_eq!(r.data.unwrap()["data"], Value::Null);
    }

    /// A key stored as JSON (every version before `kv_codec`) reads as it
    /// did, and its next write keeps its history and stores it binary.
    #[tokio::test]
    async fn keys_stored_as_json_by_earlier_versions_read_and_move_over() {
        let h = Harness::new().await;
        let t = 1_765_000_000_000_000_000i64;
        let old_meta = json!({
            "key": "app/db",
            "versions": {
                "1": {"created_time": t, "deletion_time": null, "destroyed": false},
                "2": {"created_time": t + 1, "deletion_time": null, "destroyed": false}
            },
            "current_version": 2, "oldest_version": 0, "created_time": t, "updated_time": t + 1,
            "max_versions": 0, "cas_required": false, "delete_version_after": 0,
            "custom_metadata": {"owner": "payments"}
        });
        h.storage
            .put_json(&metadata_key("app/db"), &old_meta)
            .await
            .unwrap();
        for (v, secret) in [(1, "one"), (2, "two")] {
            let data = json!({"data": {"pw": secret}, "created_time": t + v - 1});
            h.storage
                .put_json(&version_key("app/db", v as u64), &data)
                .await
                .unwrap();
        }
        let r = h
            .ok(Operation::Read, "data/app/db", json!({}))
            .await
            .unwrap();
        let d = r.data.unwrap();
        assert_eq!(d["data"]["pw"], "two");
        assert_eq!(d["metadata"]["version"], 2);
        assert_eq!(d["metadata"]["custom_metadata"]["owner"], "payments");

        h.put("data/app/db", json!({"pw": "three"})).await;
        let stored = h
            .storage
            .get(&metadata_key("app/db"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(stored[0], b'{', "metadata is stored binary after a write");
        let stored = h
            .storage
            .get(&version_key("app/db", 3))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(stored[0], b'{', "a new version is stored binary");
        let r = h
            .ok(Operation::Read, "metadata/app/db", json!({}))
            .await
            .unwrap();
        let m = r.data.unwrap();
        assert_eq!(m["current_version"], 3);
        assert_eq!(m["versions"].as_object().unwrap().len(), 3);
        assert_eq!(m["custom_metadata"]["owner"], "payments");
        let r = h
            .ok(Operation::Read, "data/app/db", json!({"version": 1}))
            .await
            .unwrap();
        assert_eq!(r.data.unwrap()["data"]["pw"], "one");
    }

    #[tokio::test]
    async fn custom_metadata_limits() {
        let h = Harness::new().await;
        let too_many: Map<String, Value> = (0..65)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect();
        let e = h
            .err(
                Operation::Update,
                "metadata/c",
                json!({"custom_metadata": too_many}),
            )
            .await;
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .contains("payload must contain at most 64 keys, provided 65"),
            "{e}"
        );

        let long_key = "k".repeat(129);
        let e = h
            .err(
                Operation::Update,
                "metadata/c",
                json!({"custom_metadata": {long_key: "v"}}),
            )
            .await;
        assert!(e.to_string().contains("must be 0 < len(key) <= 128"), "{e}");
        let e = h
            .err(
                Operation::Update,
                "metadata/c",
                json!({"custom_metadata": {"k": "v".repeat(513)}}),
            )
            .await;
        assert!(
            e.to_string().contains("must be 0 < len(value) <= 512"),
            "{e}"
        );
        let e = h
            .err(
                Operation::Update,
                "metadata/c",
                json!({"custom_metadata": {"k": "", "j": "a\u{7}"}}),
            )
            .await;
        assert!(e.to_string().starts_with("2 errors occurred"), "{e}");
        // Nothing was written.
        assert!(
            h.ok(Operation::Read, "metadata/c", json!({}))
                .await
                .is_none()
        );

        let ok: Map<String, Value> = (0..64)
            .map(|i| (format!("k{i}"), Value::from("v".repeat(512))))
            .collect();
        h.ok(
            Operation::Update,
            "metadata/c",
            json!({"custom_metadata": ok}),
        )
        .await;
        let m = h.data(Operation::Read, "metadata/c", json!({})).await;
        assert_eq!(m["custom_metadata"].as_object().unwrap().len(), 64);
        assert_eq!(m["current_version"], 0);
    }

    #[tokio::test]
    async fn metadata_patch_merges() {
        let h = Harness::new().await;
        let e = h
            .err(Operation::Patch, "metadata/mp", json!({"max_versions": 2}))
            .await;
        assert_eq!(e.status(), 404);
        h.ok(
            Operation::Update,
            "metadata/mp",
            json!({"max_versions": 4, "custom_metadata": {"a": "1", "b": "2"}}),
        )
        .await;
        h.ok(
            Operation::Patch,
            "metadata/mp",
            json!({"cas_required": true, "custom_metadata": {"a": null, "c": "3"}}),
        )
        .await;
        let m = h.data(Operation::Read, "metadata/mp", json!({})).await;
        assert_eq!(m["max_versions"], 4);
        assert_eq!(m["cas_required"], true);
        assert_eq!(m["custom_metadata"], json!({"b": "2", "c": "3"}));
    }

    #[tokio::test]
    async fn data_patch_is_a_merge_patch() {
        let h = Harness::new().await;
        let e = h
            .err(Operation::Patch, "data/dp", json!({"data": {"a": 1}}))
            .await;
        assert_eq!(e.status(), 404);
        h.put("data/dp", json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4}))
            .await;
        let w = h
            .data(
                Operation::Patch,
                "data/dp",
                json!({"data": {"b": {"c": null, "x": 9}, "e": null, "f": "new"}}),
            )
            .await;
        assert_eq!(w["version"], 2);
        let r = h.data(Operation::Read, "data/dp", json!({})).await;
        assert_eq!(
            r["data"],
            json!({"a": 1, "b": {"d": 3, "x": 9}, "f": "new"})
        );
        // CAS applies to patch.
        let e = h
            .err(
                Operation::Patch,
                "data/dp",
                json!({"data": {"a": 2}, "options": {"cas": 1}}),
            )
            .await;
        assert_eq!(
            e.to_string(),
            "check-and-set parameter did not match the current version"
        );
        let e = h.err(Operation::Patch, "data/dp", json!({})).await;
        assert_eq!(e.to_string(), "no data provided");
        // Patching a deleted latest version: 404 with its metadata.
        h.ok(Operation::Delete, "data/dp", json!({})).await;
        let r = h
            .ok(Operation::Patch, "data/dp", json!({"data": {"a": 3}}))
            .await
            .unwrap();
        assert_eq!(r.status, Some(404));
        assert_eq!(r.data.unwrap()["version"], 2);
    }

    #[tokio::test]
    async fn list_with_folders() {
        let h = Harness::new().await;
        for p in ["app/db", "app/api", "app/nested/deep", "top", "app"] {
            h.put(&format!("data/{p}"), json!({"x": 1})).await;
        }
        let l = h.data(Operation::List, "metadata/", json!({})).await;
        assert_eq!(l["keys"], json!(["app", "app/", "top"]));
        let l = h.data(Operation::List, "metadata/app/", json!({})).await;
        assert_eq!(l["keys"], json!(["api", "db", "nested/"]));
        // Vault lists "app" as "app/".
        let l = h.data(Operation::List, "metadata/app", json!({})).await;
        assert_eq!(l["keys"], json!(["api", "db", "nested/"]));
        assert!(
            h.ok(Operation::List, "metadata/none/", json!({}))
                .await
                .is_none()
        );
    }

    /// OpenBao's paginated LIST on `metadata/`: `after` and `limit`, as
    /// OpenBao 2.7.2 answers them (checked against `bao server -dev`).
    #[tokio::test]
    async fn list_pages_with_after_and_limit() {
        let h = Harness::new().await;
        for p in ["b", "a", "c/d", "c/e", "c0", "c-x", "d/e/f"] {
            h.put(&format!("data/pg/{p}"), json!({"x": 1})).await;
        }
        let page = |q: Value| {
            let h = &h;
            async move { h.data(Operation::List, "metadata/pg/", q).await["keys"].clone() }
        };
        assert_eq!(
            page(json!({})).await,
            json!(["a", "b", "c-x", "c/", "c0", "d/"])
        );
        assert_eq!(page(json!({"limit": "2"})).await, json!(["a", "b"]));
        assert_eq!(
            page(json!({"after": "a", "limit": 2})).await,
            json!(["b", "c-x"])
        );
        assert_eq!(
            page(json!({"after": "c"})).await,
            json!(["c-x", "c/", "c0", "d/"])
        );
        assert_eq!(page(json!({"after": "c/"})).await, json!(["c0", "d/"]));
        assert_eq!(
            page(json!({"after": "bb", "limit": 1})).await,
            json!(["c-x"])
        );
        assert_eq!(
            page(json!({"limit": -1})).await,
            page(json!({"limit": 0})).await
        );
        assert!(
            h.ok(Operation::List, "metadata/pg/", json!({"after": "zz"}))
                .await
                .is_none()
        );
        let e = h
            .err(Operation::List, "metadata/pg/", json!({"limit": "abc"}))
            .await;
        assert_eq!(e.status(), 400, "{e}");
    }

    #[tokio::test]
    async fn existence_check_tells_create_from_update() {
        let h = Harness::new().await;
        let ctx_exists = |path: &'static str| {
            let kv = h.kv.clone();
            let storage = h.storage.clone();
            async move {
                let req = Request::new(Operation::Update, format!("secret/data/{path}"));
                let mut caps = BTreeMap::new();
                caps.insert("path".to_string(), path.to_string());
                let fields = FieldData::from_parts(Map::new(), caps);
                kv.exists(Ctx {
                    req: &req,
                    fields: &fields,
                    route: R_DATA,
                    storage: &storage,
                })
                .await
                .unwrap()
            }
        };
        assert!(!ctx_exists("ex").await);
        h.put("data/ex", json!({"a": 1})).await;
        assert!(ctx_exists("ex").await);
    }

    #[tokio::test]
    async fn subkeys_strip_values() {
        let h = Harness::new().await;
        h.put(
            "data/sk",
            json!({"foo": "abc", "bar": {"baz": 1, "q": {"z": true}}, "e": {}}),
        )
        .await;
        let r = h.data(Operation::Read, "subkeys/sk", json!({})).await;
        assert_eq!(
            r["subkeys"],
            json!({"foo": null, "bar": {"baz": null, "q": {"z": null}}, "e": null})
        );
        assert_eq!(r["metadata"]["version"], 1);
        let r = h
            .data(Operation::Read, "subkeys/sk", json!({"depth": 1}))
            .await;
        assert_eq!(r["subkeys"], json!({"foo": null, "bar": null, "e": null}));
        let r = h
            .data(Operation::Read, "subkeys/sk", json!({"depth": 2}))
            .await;
        assert_eq!(
            r["subkeys"],
            json!({"foo": null, "bar": {"baz": null, "q": null}, "e": null})
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_yield_distinct_versions() {
        let h = Arc::new(Harness::new().await);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let w = h.put("data/hot", json!({"writer": i})).await;
                w["version"].as_u64().unwrap()
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
        let m = h.data(Operation::Read, "metadata/hot", json!({})).await;
        assert_eq!(m["current_version"], 50);
        // Default window: the latest 10 remain, each with its data.
        assert_eq!(m["versions"].as_object().unwrap().len(), 10);
        for v in 41..=50 {
            assert!(
                h.storage
                    .get(&version_key("hot", v))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(
            h.storage
                .get(&version_key("hot", 40))
                .await
                .unwrap()
                .is_none()
        );

        // Concurrent CAS writers at the same version: exactly one wins.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                h.call(
                    Operation::Update,
                    "data/hot",
                    json!({"data": {"w": i}, "options": {"cas": 50}}),
                )
                .await
                .is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn upgrade_from_v1_moves_every_entry_once() {
        let h = Harness::new().await;
        // What a KV v1 mount leaves in its storage view.
        for (path, data) in [
            ("a", json!({"x": "1"})),
            ("dir/b", json!({"y": "2", "n": {"deep": [1, 2]}})),
            ("dir/sub/c", json!({"ttl": "1h"})),
        ] {
            h.storage
                .put_json(&kv_v1::entry_key(path), &data)
                .await
                .unwrap();
        }
        assert_eq!(h.kv.upgrade_from_v1(&h.storage).await.unwrap(), 3);

        let got = h.data(Operation::Read, "data/dir/b", json!({})).await;
        assert_eq!(got["data"], json!({"y": "2", "n": {"deep": [1, 2]}}));
        assert_eq!(got["metadata"]["version"], 1);
        let md = h.data(Operation::Read, "metadata/a", json!({})).await;
        assert_eq!(
            (md["current_version"].clone(), md["oldest_version"].clone()),
            (json!(1), json!(1))
        );
        let l = h.data(Operation::List, "metadata/", json!({})).await;
        assert_eq!(l["keys"], json!(["a", "dir/"]));
        // Nothing is left in v1 form, and a second run moves nothing.
        assert!(kv_v1::entry_paths(&h.storage).await.unwrap().is_empty());
        assert_eq!(h.kv.upgrade_from_v1(&h.storage).await.unwrap(), 0);
        assert_eq!(
            h.data(Operation::Read, "metadata/a", json!({})).await["current_version"],
            1
        );

        // A v1 entry found later (a write that raced the upgrade, or a run
        // cut short) becomes the key's next version; nothing is lost.
        h.storage
            .put_json(&kv_v1::entry_key("a"), &json!({"x": "late"}))
            .await
            .unwrap();
        h.kv.initialize(&h.storage).await.unwrap();
        let got = h.data(Operation::Read, "data/a", json!({})).await;
        assert_eq!(got["data"], json!({"x": "late"}));
        assert_eq!(got["metadata"]["version"], 2);
        let old = h
            .data(Operation::Read, "data/a", json!({"version": 1}))
            .await;
        assert_eq!(old["data"], json!({"x": "1"}));
    }

    #[tokio::test]
    async fn v1_style_paths_get_vaults_hint() {
        let h = Harness::new().await;
        for (op, path, command) in [
            (Operation::Read, "app/db", "get"),
            (Operation::Update, "app/db", "put"),
            (Operation::Delete, "app/db", "delete"),
            (Operation::List, "", "list"),
            (Operation::List, "app/", "list"),
        ] {
            let r = h.ok(op, path, json!({"a": "b"})).await.expect("a response");
            assert_eq!(r.status, Some(404), "{op:?} {path}");
            assert!(r.data.is_none());
            assert!(
                r.warnings[0].contains(&format!("use 'bao kv {command}'")),
                "{:?}",
                r.warnings
            );
        }
        // Nothing was written by the PUT.
        assert!(
            h.ok(Operation::List, "metadata/", json!({}))
                .await
                .is_none()
        );
        // Paths of the v2 layout with the wrong operation stay 405.
        for (op, path) in [
            (Operation::List, "data/x"),
            (Operation::List, "data/"),
            (Operation::Delete, "config"),
            (Operation::Update, "subkeys/x"),
        ] {
            let e = h.err(op, path, json!({})).await;
            assert_eq!(e.status(), 405, "{op:?} {path}");
        }
    }
}
