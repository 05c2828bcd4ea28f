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
    /// Auth mounts: login lockout settings (see `crate::auth::lockout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_lockout_config: Option<crate::auth::lockout::LockoutTune>,
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
    /// `options` came as an object, even an empty one (an API call that
    /// left it out): `sys/mounts` shows `{}` then, and `null` when it was
    /// sent as `null` (the CLI) or the mount is built in, as OpenBao does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub options_set: bool,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
}

impl MountEntry {
    pub fn new(path: &str, mount_type: &str, description: &str) -> Self {
        let uuid = uuid::Uuid::new_v4().to_string();
        // Vault's shape: `kv_1a2b3c4d`, and `auth_userpass_1a2b3c4d` for
        // auth methods.
        let kind = if path.starts_with("auth/") {
            "auth_"
        } else {
            ""
        };
        let accessor = format!("{kind}{}_{}", mount_type.replace('-', "_"), &uuid[..8]);
        MountEntry {
            path: path.to_string(),
            mount_type: mount_type.to_string(),
            description: description.to_string(),
            uuid,
            accessor,
            config: MountConfig::default(),
            options: BTreeMap::new(),
            options_set: false,
            local: false,
            seal_wrap: false,
        }
    }

    /// Is this an auth method (under `auth/`)?
    pub fn is_auth(&self) -> bool {
        self.path.starts_with("auth/")
    }
}

/// Mounts every server has, which can be neither disabled nor moved, and
/// which nothing may be mounted under or moved into (Vault's
/// `protectedMounts` and reserved prefixes).
pub const PROTECTED_MOUNTS: &[&str] = &["sys/", "cubbyhole/", "identity/", "auth/token/"];

/// Is `path` (with trailing slash) one of [`PROTECTED_MOUNTS`]?
pub fn is_protected(path: &str) -> bool {
    PROTECTED_MOUNTS.contains(&path)
}

/// May a secrets engine be mounted (or moved) at `path`? Not under `sys/`,
/// `cubbyhole/` or `identity/`, and not under `auth/` (auth methods go
/// through `sys/auth`).
pub fn is_reserved_secret_path(path: &str) -> bool {
    ["sys/", "cubbyhole/", "identity/", "auth/"]
        .iter()
        .any(|r| path.starts_with(r))
}

/// The secrets-engine mounts Vault and OpenBao always have, with the type,
/// description and flags they list them with in `sys/mounts`: `sys/`
/// (seal-wrapped, passes `Accept` through), `cubbyhole/` (local to each
/// cluster) and `identity/` (passes `Authorization` through).
pub fn builtin_secret_mounts() -> [MountEntry; 3] {
    let mut sys = MountEntry::new(
        "sys/",
        "system",
        "system endpoints used for control, policy and debugging",
    );
    sys.seal_wrap = true;
    sys.config.passthrough_request_headers = vec!["Accept".into()];
    let mut cubbyhole = MountEntry::new(
        "cubbyhole/",
        "cubbyhole",
        "per-token private secret storage",
    );
    cubbyhole.local = true;
    let mut identity = MountEntry::new("identity/", "identity", "identity store");
    identity.config.passthrough_request_headers = vec!["Authorization".into()];
    [sys, cubbyhole, identity]
}

/// Bring a stored secrets-engine table up to date with
/// [`builtin_secret_mounts`]: add the ones missing (tables written before
/// they existed), and give `sys/` the flags OpenBao gives it when it still
/// has the bare ones an older version wrote. Returns whether anything
/// changed, so the caller knows to persist the table.
pub fn ensure_builtin_mounts(table: &mut Vec<MountEntry>) -> bool {
    let mut changed = false;
    for builtin in builtin_secret_mounts() {
        match table.iter_mut().find(|e| e.path == builtin.path) {
            None => {
                table.push(builtin);
                changed = true;
            }
            Some(e)
                if e.path == "sys/"
                    && !e.seal_wrap
                    && e.config.passthrough_request_headers.is_empty() =>
            {
                e.seal_wrap = true;
                e.config.passthrough_request_headers = builtin.config.passthrough_request_headers;
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed
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

    /// See [`Backend::writes_only_storage`].
    pub fn writes_only_storage(&self, req: &Request) -> bool {
        self.mounted.backend.writes_only_storage(self.route, req)
    }

    /// See [`Backend::serves_on_standby`]; only ever a read or a list.
    pub fn serves_on_standby(&self, req: &Request) -> bool {
        matches!(req.operation, Operation::Read | Operation::List)
            && self.mounted.backend.serves_on_standby(self.route, req)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};
    use zeroize::Zeroizing;

    use super::*;
    use crate::core::{Core, CoreOptions};
    use crate::logical::{Operation as Op, Request, Secret};
    use crate::storage::memory::MemoryStore;

    #[test]
    fn builtin_mounts_are_added_once_and_keep_their_ids() {
        let mut table = Vec::new();
        assert!(ensure_builtin_mounts(&mut table));
        let paths: Vec<&str> = table.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["sys/", "cubbyhole/", "identity/"]);
        let before = table.clone();
        assert!(!ensure_builtin_mounts(&mut table));
        assert_eq!(table, before);

        // A table from before: a bare sys/ entry only. It keeps its UUID and
        // gains OpenBao's flags; the others are added.
        let old_sys = MountEntry::new("sys/", "system", "system endpoints");
        let mut table = vec![old_sys.clone()];
        assert!(ensure_builtin_mounts(&mut table));
        assert_eq!(table.len(), 3);
        assert_eq!(table[0].uuid, old_sys.uuid);
        assert!(table[0].seal_wrap);
        assert_eq!(table[0].config.passthrough_request_headers, ["Accept"]);
        let cubby = table
            .iter()
            .find(|e| e.path == "cubbyhole/")
            .map(|e| e.local);
        assert_eq!(cubby, Some(true));
    }

    #[test]
    fn reserved_paths() {
        for p in [
            "sys/",
            "sys/x/",
            "cubbyhole/",
            "identity/a/",
            "auth/",
            "auth/x/",
        ] {
            assert!(is_reserved_secret_path(p), "{p}");
        }
        for p in ["secret/", "system/", "kv/sys/"] {
            assert!(!is_reserved_secret_path(p), "{p}");
        }
        assert!(is_protected("auth/token/") && !is_protected("secret/"));
    }

    /// An initialized, unsealed core over memory, and its root token.
    async fn core() -> (Arc<Core>, String, Zeroizing<Vec<u8>>) {
        let core = Core::new(CoreOptions::default(), Arc::new(MemoryStore::new()), None);
        let (shares, root) = core.initialize(1, 1).await.unwrap();
        let share = shares.into_iter().next().unwrap();
        assert!(core.submit_unseal_share(&share).await.unwrap());
        (core, root, share)
    }

    async fn call(
        core: &Core,
        token: &str,
        op: Op,
        path: &str,
        body: Value,
    ) -> crate::error::Result<crate::logical::Response> {
        let mut req = Request::new(op, path);
        req.client_token = Some(Secret::new(token));
        if let Value::Object(m) = body {
            req.data = m;
        }
        core.handle(req).await
    }

    async fn data(core: &Core, token: &str, op: Op, path: &str, body: Value) -> Value {
        match call(core, token, op, path, body).await {
            Ok(r) => Value::Object(r.data.unwrap_or_default()),
            Err(e) => panic!("{op:?} {path}: {e}"),
        }
    }

    async fn err(core: &Core, token: &str, op: Op, path: &str, body: Value) -> (u16, String) {
        match call(core, token, op, path, body).await {
            Ok(r) => panic!("{op:?} {path}: expected an error, got {r:?}"),
            Err(e) => (e.status(), e.to_string()),
        }
    }

    #[tokio::test]
    async fn builtin_mounts_are_listed_and_cannot_be_disabled_or_moved() {
        let (core, root, share) = core().await;
        let t = root.as_str();
        let mounts = data(&core, t, Op::Read, "sys/mounts", json!({})).await;
        assert_eq!(mounts["sys/"]["type"], "system");
        assert_eq!(mounts["sys/"]["seal_wrap"], true);
        assert_eq!(mounts["cubbyhole/"]["type"], "cubbyhole");
        assert_eq!(mounts["cubbyhole/"]["local"], true);
        assert_eq!(mounts["identity/"]["description"], "identity store");
        assert_eq!(
            mounts["identity/"]["config"]["passthrough_request_headers"],
            json!(["Authorization"])
        );
        assert_eq!(mounts["cubbyhole/"]["options"], Value::Null);
        let ui = data(
            &core,
            t,
            Op::Read,
            "sys/internal/ui/mounts/cubbyhole/x",
            json!({}),
        )
        .await;
        assert_eq!(ui["path"], "cubbyhole/");

        for p in ["sys", "cubbyhole", "identity"] {
            let e = err(&core, t, Op::Delete, &format!("sys/mounts/{p}"), json!({})).await;
            assert_eq!(e, (400, format!("cannot unmount \"{p}/\"")));
            let body = json!({"from": p, "to": "elsewhere"});
            let e = err(&core, t, Op::Update, "sys/remount", body).await;
            assert_eq!(e, (400, format!("cannot remount \"{p}/\"")));
            let body = json!({"from": "nope", "to": format!("{p}/x")});
            let e = err(&core, t, Op::Update, "sys/remount", body).await;
            assert_eq!(e, (400, format!("cannot remount to destination {p}/x/")));
            let e = err(
                &core,
                t,
                Op::Update,
                &format!("sys/mounts/{p}"),
                json!({"type": "kv"}),
            )
            .await;
            assert_eq!(e, (400, format!("cannot mount \"{p}/\"")));
        }
        let e = err(
            &core,
            t,
            Op::Update,
            "sys/mounts/auth/x",
            json!({"type": "kv"}),
        )
        .await;
        assert_eq!(e, (400, "cannot mount \"auth/x/\"".to_string()));

        // They survive a seal and unseal with the same identity.
        let uuids: Vec<Value> = ["sys/", "cubbyhole/", "identity/"]
            .iter()
            .map(|p| mounts[*p]["uuid"].clone())
            .collect();
        core.seal_now().await.unwrap();
        assert!(core.submit_unseal_share(&share).await.unwrap());
        let again = data(&core, t, Op::Read, "sys/mounts", json!({})).await;
        for (p, uuid) in ["sys/", "cubbyhole/", "identity/"].iter().zip(uuids) {
            assert_eq!(again[*p]["uuid"], uuid, "{p}");
        }
    }

    #[tokio::test]
    async fn kv_v1_mount_upgrades_to_v2_through_tune() {
        let (core, root, share) = core().await;
        let t = root.as_str();
        call(
            &core,
            t,
            Op::Update,
            "sys/mounts/old",
            json!({"type": "kv"}),
        )
        .await
        .unwrap();
        let ui = data(&core, t, Op::Read, "sys/internal/ui/mounts/old", json!({})).await;
        assert_eq!(ui["options"], json!({}));
        call(&core, t, Op::Update, "old/app/db", json!({"user": "u"}))
            .await
            .unwrap();
        let r = call(&core, t, Op::Read, "old/app/db", json!({}))
            .await
            .unwrap();
        assert_eq!(r.lease_duration, 768 * 3600);
        assert_eq!(
            Value::Object(r.data.unwrap_or_default()),
            json!({"user": "u"})
        );

        // Tuned default TTL reaches v1 reads.
        call(
            &core,
            t,
            Op::Update,
            "sys/mounts/old/tune",
            json!({"default_lease_ttl": "1h"}),
        )
        .await
        .unwrap();
        let r = call(&core, t, Op::Read, "old/app/db", json!({}))
            .await
            .unwrap();
        assert_eq!(r.lease_duration, 3600);

        let up = json!({"options": {"version": "2"}});
        let r = call(&core, t, Op::Update, "sys/mounts/old/tune", up.clone())
            .await
            .unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("Upgrading mount from version 1 to version 2"));
        let got = data(&core, t, Op::Read, "old/data/app/db", json!({})).await;
        assert_eq!(got["data"], json!({"user": "u"}));
        assert_eq!(got["metadata"]["version"], 1);
        // Again: nothing to do, no warning.
        let r = call(&core, t, Op::Update, "sys/mounts/old/tune", up)
            .await
            .unwrap();
        assert!(r.warnings.is_empty());
        let down = json!({"options": {"version": "1"}});
        let e = err(&core, t, Op::Update, "sys/mounts/old/tune", down).await;
        assert_eq!(
            e,
            (400, "cannot downgrade mount from version 2".to_string())
        );

        // After a restart the mount is still v2 with the data.
        core.seal_now().await.unwrap();
        assert!(core.submit_unseal_share(&share).await.unwrap());
        let got = data(&core, t, Op::Read, "old/data/app/db", json!({})).await;
        assert_eq!(got["data"], json!({"user": "u"}));
    }

    #[tokio::test]
    async fn remount_moves_the_mount_and_its_data() {
        let (core, root, _) = core().await;
        let t = root.as_str();
        call(
            &core,
            t,
            Op::Update,
            "sys/mounts/a",
            json!({"type": "kv", "options": {"version": "1"}}),
        )
        .await
        .unwrap();
        call(&core, t, Op::Update, "a/k", json!({"v": "1"}))
            .await
            .unwrap();
        let moved = data(
            &core,
            t,
            Op::Update,
            "sys/remount",
            json!({"from": "a", "to": "b/c"}),
        )
        .await;
        let id = moved["migration_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let st = data(
            &core,
            t,
            Op::Read,
            &format!("sys/remount/status/{id}"),
            json!({}),
        )
        .await;
        assert_eq!(st["migration_info"]["status"], "success");
        assert_eq!(st["migration_info"]["target_mount"], "b/c/");
        let got = data(&core, t, Op::Read, "b/c/k", json!({})).await;
        assert_eq!(got, json!({"v": "1"}));
        let mounts = data(&core, t, Op::Read, "sys/mounts", json!({})).await;
        assert!(mounts.get("a/").is_none() && mounts.get("b/c/").is_some());
        let e = err(
            &core,
            t,
            Op::Update,
            "sys/remount",
            json!({"from": "a", "to": "d"}),
        )
        .await;
        assert_eq!(e, (400, "no matching mount at \"a/\"".to_string()));
    }
}
