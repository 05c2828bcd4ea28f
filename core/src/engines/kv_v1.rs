//! The KV version 1 secrets engine: one unversioned JSON object per path,
//! as Vault's `kv` (passthrough) backend serves it, and what `secrets enable
//! kv` mounts when no version is asked for.
//!
//! Requests come from the router with a mount-relative path (`app/db`,
//! `app/`) and the request body; each secret is stored in the mount's
//! [`StorageView`] (already behind the barrier) under [`ENTRY_PREFIX`]
//! (`v1/<path>`, the body's JSON as sent). That prefix keeps v1 entries apart
//! from the KV v2 layout (`config`, `metadata/`, `versions/`) in the same
//! view, so an upgrade to v2 (`sys/mounts/<mount>/tune` with
//! `options.version=2`) can move them without a name clash: the v2 backend's
//! [`crate::engines::kv::KvBackend::initialize`] moves every `v1/` entry into
//! version 1 of a v2 key, one atomic batch per key, so a crash half way
//! through resumes at the next mount.
//!
//! Reads answer the stored object as top-level `data`, with Vault's
//! `lease_duration`: the entry's own `ttl` (or else `lease`) when it parses
//! as a duration, otherwise the mount's default lease TTL. No lease is
//! created and nothing is renewable, as in Vault. Secret values never appear
//! in errors or logs.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use crate::logical::{Backend, Ctx, Operation as Op, PathSpec, Response, parse_duration};
use crate::storage::StorageView;

/// Where v1 entries live inside the mount's storage view.
pub const ENTRY_PREFIX: &str = "v1/";

static PATHS: [PathSpec; 1] = [PathSpec {
    pattern: "(?P<path>.*)",
    operations: &[Op::Read, Op::Update, Op::Delete, Op::List],
    fields: &[],
    existence_check: true,
    help: "Pass-through secret storage: read, write, list and delete any path.",
}];

/// The KV v1 backend of one mount. Stateless but for the mount's default
/// lease TTL, which the core hands in when it builds (or, after a tune,
/// rebuilds) the mount.
pub struct KvV1Backend {
    default_ttl: i64,
}

impl KvV1Backend {
    /// `default_ttl`: the mount's `default_lease_ttl`, or the server's when
    /// the mount sets none; the `lease_duration` of entries without `ttl`.
    pub fn new(default_ttl: i64) -> Self {
        KvV1Backend { default_ttl }
    }
}

/// The storage key of a v1 entry.
pub fn entry_key(path: &str) -> String {
    format!("{ENTRY_PREFIX}{path}")
}

/// The `path` capture, with no `..` segment.
fn path_of<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str> {
    let path = ctx.fields.capture("path").unwrap_or_default();
    if path.split('/').any(|seg| seg == "..") {
        return Err(CoreError::bad_request(
            "invalid request: path must not contain '..' segments",
        ));
    }
    Ok(path)
}

/// The lease duration Vault gives a read: `ttl`, else `lease`, when present
/// and a valid duration (seconds as an integer, or a Go duration string,
/// possibly negative); the mount default otherwise.
fn lease_duration(data: &Map<String, Value>, default_ttl: i64) -> i64 {
    let raw = data.get("ttl").or_else(|| data.get("lease"));
    raw.and_then(duration_secs).unwrap_or(default_ttl)
}

/// Go's `parseutil.ParseDurationSecond` over a JSON value: integers are
/// seconds, strings are integers or duration strings (`""` is zero); a
/// leading `-` negates. Anything else (floats, bools, objects) fails.
fn duration_secs(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => parse_duration(rest).map(|d| -d),
                Some(_) => None,
                None => parse_duration(s),
            }
        }
        _ => None,
    }
}

#[async_trait]
impl Backend for KvV1Backend {
    fn paths(&self) -> &'static [PathSpec] {
        &PATHS
    }

    /// Reads and lists only read storage: a standby may serve them.
    fn serves_on_standby(&self, _route: usize, req: &crate::logical::Request) -> bool {
        matches!(req.operation, Op::Read | Op::List)
    }

    /// Writes and deletes only write the mount's storage.
    fn writes_only_storage(&self, _route: usize, req: &crate::logical::Request) -> bool {
        matches!(req.operation, Op::Create | Op::Update | Op::Delete)
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let path = path_of(&ctx)?;
        match ctx.req.operation {
            Op::Read => {
                if path.is_empty() || path.ends_with('/') {
                    return Ok(None);
                }
                let Some(data) = ctx
                    .storage
                    .get_json::<Map<String, Value>>(&entry_key(path))
                    .await?
                else {
                    return Ok(None);
                };
                let mut resp = Response::data(Map::new());
                resp.lease_duration = lease_duration(&data, self.default_ttl);
                resp.data = Some(data);
                Ok(Some(resp))
            }
            Op::Create | Op::Update => {
                // Vault tells `<mount>` (no key at all) from `<mount>/` and
                // `<mount>/dir/` (a folder).
                if path.is_empty() && !ctx.req.path.ends_with('/') {
                    return Err(CoreError::bad_request("missing path"));
                }
                if path.is_empty() || path.ends_with('/') {
                    return Err(CoreError::bad_request(
                        "cannot write to a path ending in '/'",
                    ));
                }
                let data = ctx.fields.raw();
                if data.is_empty() {
                    return Err(CoreError::bad_request("missing data fields"));
                }
                ctx.storage.put_json(&entry_key(path), data).await?;
                Ok(None)
            }
            Op::Delete => {
                if !path.is_empty() && !path.ends_with('/') {
                    ctx.storage.delete(&entry_key(path)).await?;
                }
                Ok(None)
            }
            Op::List => {
                let prefix = if path.is_empty() || path.ends_with('/') {
                    path.to_string()
                } else {
                    format!("{path}/")
                };
                Response::list(ctx.storage.list(&entry_key(&prefix)).await?)
            }
            Op::Patch => Err(CoreError::UnsupportedOperation),
        }
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        let path = path_of(&ctx)?;
        if path.is_empty() || path.ends_with('/') {
            return Ok(false);
        }
        Ok(ctx.storage.get(&entry_key(path)).await?.is_some())
    }
}

/// The path of every v1 entry in the view, for the upgrade to KV v2.
pub async fn entry_paths(storage: &StorageView) -> Result<Vec<String>> {
    let keys = storage.list_recursive(ENTRY_PREFIX).await?;
    Ok(keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(ENTRY_PREFIX).map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::barrier::Barrier;
    use crate::logical::{FieldData, Request};
    use crate::storage::memory::MemoryStore;

    struct Harness {
        kv: KvV1Backend,
        storage: StorageView,
    }

    impl Harness {
        async fn new() -> Self {
            let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
            barrier.initialize(&[7u8; 32]).await.unwrap();
            Harness {
                kv: KvV1Backend::new(2_764_800),
                storage: StorageView::new(barrier, "logical/test-v1/"),
            }
        }

        /// `full` is the request path after `kv1/` as the client sent it;
        /// `"-"` stands for the mount without its slash (`kv1`).
        async fn call(&self, op: Op, full: &str, body: Value) -> Result<Option<Response>> {
            let (req_path, rel) = match full {
                "-" => ("kv1".to_string(), String::new()),
                _ => (format!("kv1/{full}"), full.to_string()),
            };
            let mut captures = BTreeMap::new();
            captures.insert("path".to_string(), rel.clone());
            let raw = match body {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            let mut req = Request::new(op, req_path);
            req.mount_point = "kv1/".into();
            req.mount_type = "kv".into();
            req.relative_path = rel;
            req.data = raw.clone();
            let (fields, _) = FieldData::validate(&PATHS[0], &raw, captures)?;
            self.kv
                .handle(Ctx {
                    req: &req,
                    fields: &fields,
                    route: 0,
                    storage: &self.storage,
                })
                .await
        }
    }

    #[tokio::test]
    async fn write_read_list_delete() {
        let h = Harness::new().await;
        assert!(
            h.call(Op::Update, "app/db", json!({"user": "u", "n": 1}))
                .await
                .unwrap()
                .is_none()
        );
        h.call(Op::Update, "app/other", json!({"x": "y"}))
            .await
            .unwrap();
        h.call(Op::Update, "top", json!({"x": "y"})).await.unwrap();

        let r = h
            .call(Op::Read, "app/db", Value::Null)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Value::Object(r.data.unwrap()), json!({"user": "u", "n": 1}));
        assert_eq!(r.lease_duration, 2_764_800);
        assert!(!r.renewable);

        let keys = |r: Option<Response>| r.unwrap().data.unwrap()["keys"].clone();
        assert_eq!(
            keys(h.call(Op::List, "", Value::Null).await.unwrap()),
            json!(["app/", "top"])
        );
        assert_eq!(
            keys(h.call(Op::List, "app", Value::Null).await.unwrap()),
            json!(["db", "other"])
        );
        assert!(
            h.call(Op::List, "nope/", Value::Null)
                .await
                .unwrap()
                .is_none()
        );

        h.call(Op::Delete, "app/db", Value::Null).await.unwrap();
        assert!(
            h.call(Op::Read, "app/db", Value::Null)
                .await
                .unwrap()
                .is_none()
        );
        // Deleting what is not there is fine, as in Vault.
        h.call(Op::Delete, "app/db", Value::Null).await.unwrap();
        // Folders and the root read as 404.
        assert!(
            h.call(Op::Read, "app/", Value::Null)
                .await
                .unwrap()
                .is_none()
        );
        assert!(h.call(Op::Read, "", Value::Null).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_writes_are_refused_and_change_nothing() {
        let h = Harness::new().await;
        for (path, body, want) in [
            ("k", json!({}), "missing data fields"),
            (
                "dir/",
                json!({"a": "b"}),
                "cannot write to a path ending in '/'",
            ),
            (
                "",
                json!({"a": "b"}),
                "cannot write to a path ending in '/'",
            ),
            ("-", json!({"a": "b"}), "missing path"),
            ("a/../b", json!({"a": "b"}), "'..'"),
        ] {
            let e = h.call(Op::Update, path, body).await.unwrap_err();
            assert_eq!(e.status(), 400, "{path}");
            assert!(e.to_string().contains(want), "{path}: {e}");
        }
        assert!(h.call(Op::List, "", Value::Null).await.unwrap().is_none());
    }

    #[test]
    fn lease_duration_follows_ttl_then_lease_then_default() {
        let d = 2_764_800;
        let ld = |v: Value| lease_duration(v.as_object().unwrap(), d);
        assert_eq!(ld(json!({"a": "b"})), d);
        assert_eq!(ld(json!({"ttl": "1h"})), 3600);
        assert_eq!(ld(json!({"ttl": 90})), 90);
        assert_eq!(ld(json!({"ttl": "30"})), 30);
        assert_eq!(ld(json!({"ttl": "2d"})), 172_800);
        assert_eq!(ld(json!({"ttl": "-5s"})), -5);
        assert_eq!(ld(json!({"ttl": ""})), 0);
        assert_eq!(ld(json!({"lease": "30m"})), 1800);
        // `ttl` wins even when `lease` is also set.
        assert_eq!(ld(json!({"ttl": "", "lease": "10s"})), 0);
        // What does not parse falls back to the mount default.
        assert_eq!(ld(json!({"ttl": "bogus"})), d);
        assert_eq!(ld(json!({"ttl": 1.7})), d);
        assert_eq!(ld(json!({"ttl": true})), d);
    }
}
