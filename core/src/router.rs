//! The mount table and the router.
//!
//! The mount table (secrets engines at `core/mounts`, auth methods at
//! `core/auth`, both stored through the barrier) maps path prefixes to
//! backends. [`Router::route`] finds the longest mount prefix of a request
//! path; [`Mounted::resolve`] matches the rest against the backend's
//! [`PathSpec`] table, so `404 unsupported path`, `405 unsupported operation`
//! and field validation are decided here, once, for every backend.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::logical::{Backend, Ctx, FieldData, Operation, PathSpec, Request, Response};
use crate::storage::StorageView;

/// Per-mount tunables (`sys/mounts/:path/tune`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct MountConfig {
    #[serde(default)]
    pub default_lease_ttl: i64,
    #[serde(default)]
    pub max_lease_ttl: i64,
    #[serde(default)]
    pub force_no_cache: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listing_visibility: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_request_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_response_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough_request_headers: Vec<String>,
}

/// One row of the mount table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountEntry {
    /// With trailing slash: `secret/`, `auth/token/`.
    pub path: String,
    #[serde(rename = "type")]
    pub mount_type: String,
    #[serde(default)]
    pub description: String,
    pub uuid: String,
    pub accessor: String,
    #[serde(default)]
    pub config: MountConfig,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
}

impl MountEntry {
    pub fn new(path: &str, mount_type: &str, description: &str) -> Self {
        let uuid = uuid::Uuid::new_v4().to_string();
        let accessor = format!("{}_{}", mount_type.replace('-', "_"), &uuid[..8]);
        MountEntry {
            path: path.to_string(),
            mount_type: mount_type.to_string(),
            description: description.to_string(),
            uuid,
            accessor,
            config: MountConfig::default(),
            options: BTreeMap::new(),
            local: false,
            seal_wrap: false,
        }
    }

    /// Is this an auth method (under `auth/`)?
    pub fn is_auth(&self) -> bool {
        self.path.starts_with("auth/")
    }
}

/// A live mount: its entry, backend, compiled path table and storage.
pub struct Mounted {
    pub entry: MountEntry,
    pub backend: Arc<dyn Backend>,
    pub storage: StorageView,
    patterns: Vec<Regex>,
}

/// The outcome of matching a mount-relative path against a backend table.
pub struct Resolved<'a> {
    pub route: usize,
    pub spec: &'static PathSpec,
    pub captures: BTreeMap<String, String>,
    pub mounted: &'a Mounted,
}

impl Mounted {
    pub fn new(entry: MountEntry, backend: Arc<dyn Backend>, storage: StorageView) -> Result<Self> {
        let patterns = backend
            .paths()
            .iter()
            .map(|p| Regex::new(&format!("^(?:{})$", p.pattern)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                CoreError::Internal(format!(
                    "bad path pattern in {} backend: {e}",
                    entry.mount_type
                ))
            })?;
        Ok(Mounted {
            entry,
            backend,
            storage,
            patterns,
        })
    }

    /// Match `relative` against the table. No row matches → 404; rows match
    /// but none serves `op` → 405.
    pub fn resolve(&self, relative: &str, op: Operation) -> Result<Resolved<'_>> {
        let table = self.backend.paths();
        let want = op.table_op();
        let mut path_matched = false;
        for (i, re) in self.patterns.iter().enumerate() {
            let Some(caps) = re.captures(relative) else {
                continue;
            };
            path_matched = true;
            let spec = &table[i];
            if !spec.operations.contains(&want) {
                continue;
            }
            let mut captures = BTreeMap::new();
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    captures.insert(name.to_string(), m.as_str().to_string());
                }
            }
            return Ok(Resolved {
                route: i,
                spec,
                captures,
                mounted: self,
            });
        }
        if path_matched {
            Err(CoreError::UnsupportedOperation)
        } else {
            Err(CoreError::NotFound(format!(
                "unsupported path: {}{relative}",
                self.entry.path
            )))
        }
    }
}

impl Resolved<'_> {
    /// See [`Backend::is_pure`].
    pub fn is_pure(&self, req: &Request) -> bool {
        self.mounted.backend.is_pure(self.route, req)
    }

    /// Validate fields and run the backend's existence check.
    pub async fn exists(&self, req: &Request) -> Result<bool> {
        if !self.spec.existence_check {
            return Ok(true);
        }
        let (fields, _) = FieldData::validate(self.spec, &req.data, self.captures.clone())?;
        self.mounted
            .backend
            .exists(Ctx {
                req,
                fields: &fields,
                route: self.route,
                storage: &self.mounted.storage,
            })
            .await
    }

    /// Validate fields and call the backend. Unknown fields become a warning,
    /// as Vault does.
    pub async fn call(&self, req: &Request) -> Result<Option<Response>> {
        let (fields, unknown) = FieldData::validate(self.spec, &req.data, self.captures.clone())?;
        let mut resp = self
            .mounted
            .backend
            .handle(Ctx {
                req,
                fields: &fields,
                route: self.route,
                storage: &self.mounted.storage,
            })
            .await?;
        let accepts_any = self.spec.fields.is_empty() && req.operation != Operation::Read;
        if !unknown.is_empty()
            && !accepts_any
            && req.operation != Operation::Read
            && req.operation != Operation::List
        {
            let warning = format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                unknown.join(" ")
            );
            match resp.as_mut() {
                Some(r) => r.warnings.push(warning),
                None => resp = Some(Response::default().with_warning(warning)),
            }
        }
        Ok(resp)
    }
}

/// Longest-prefix routing over the mount table.
#[derive(Default)]
pub struct Router {
    mounts: RwLock<Vec<Arc<Mounted>>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Find the mount owning `path`, and the path relative to it. A path equal
    /// to the mount without its slash (`secret`) routes to the mount root.
    pub fn route(&self, path: &str) -> Option<(Arc<Mounted>, String)> {
        let mounts = self.mounts.read().ok()?;
        for m in mounts.iter() {
            let mp = m.entry.path.as_str();
            if let Some(rest) = path.strip_prefix(mp) {
                return Some((m.clone(), rest.to_string()));
            }
            if path == &mp[..mp.len() - 1] {
                return Some((m.clone(), String::new()));
            }
        }
        None
    }

    /// Is some mount at, above or below `path` (for mount conflicts)?
    pub fn conflicts(&self, path: &str) -> Option<String> {
        let mounts = self.mounts.read().ok()?;
        mounts
            .iter()
            .find(|m| m.entry.path.starts_with(path) || path.starts_with(&m.entry.path))
            .map(|m| m.entry.path.clone())
    }

    pub fn get(&self, path: &str) -> Option<Arc<Mounted>> {
        let mounts = self.mounts.read().ok()?;
        mounts.iter().find(|m| m.entry.path == path).cloned()
    }

    pub fn insert(&self, m: Mounted) {
        if let Ok(mut mounts) = self.mounts.write() {
            mounts.retain(|x| x.entry.path != m.entry.path);
            mounts.push(Arc::new(m));
            // Longest prefix first.
            mounts.sort_by(|a, b| {
                b.entry
                    .path
                    .len()
                    .cmp(&a.entry.path.len())
                    .then(a.entry.path.cmp(&b.entry.path))
            });
        }
    }

    pub fn remove(&self, path: &str) -> Option<Arc<Mounted>> {
        let mut mounts = self.mounts.write().ok()?;
        let idx = mounts.iter().position(|m| m.entry.path == path)?;
        Some(mounts.remove(idx))
    }

    /// All mounts, sorted by path.
    pub fn entries(&self) -> Vec<MountEntry> {
        let mut v: Vec<MountEntry> = self
            .mounts
            .read()
            .map(|m| m.iter().map(|x| x.entry.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    pub fn replace_entry(&self, entry: MountEntry) {
        if let Ok(mut mounts) = self.mounts.write()
            && let Some(slot) = mounts.iter_mut().find(|m| m.entry.path == entry.path)
        {
            let m = Mounted {
                entry,
                backend: slot.backend.clone(),
                storage: slot.storage.clone(),
                patterns: slot.patterns.clone(),
            };
            *slot = Arc::new(m);
        }
    }
}
