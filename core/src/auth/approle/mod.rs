//! The AppRole auth method (`auth/approle`), Vault's API: machines log in
//! with a role's `role_id` and a `secret_id` issued against the role.
//!
//! Requests come from the router: role and secret-id management under the
//! ACL, `login` unauthenticated (core audits it, checks lockout by
//! `role_id` through [`Backend::lockout_key`], and turns the
//! [`crate::logical::LoginAuth`] this method answers with into a token).
//! Everything lives in the mount's own storage, laid out as Vault's:
//!
//! | key | value |
//! |---|---|
//! | `salt` | the mount's salt for the indexes below |
//! | `role/<name>` | the role ([`role::Role`], name lower-cased) |
//! | `role_id/<salted role_id>` | `{"name": <role name>}`: the login's index |
//! | `secret_id/<hmac(name)>/<hmac(secret_id)>` | a secret-id's properties ([`secret_id::SecretIdEntry`]) |
//! | `accessor/<salted accessor>` | `{"secret_id_hmac": ...}`: the accessor index |
//!
//! (`secret_id_local/` and `accessor_local/` for roles created with
//! `local_secret_ids`.) A secret-id is never stored: only its HMAC under the
//! role's own key, so storage (and a snapshot) cannot log anyone in. A
//! secret-id's entry and its accessor index are written and deleted in one
//! atomic batch. Uses are spent under a per-secret-id lock, so of two
//! concurrent logins with a one-use secret-id exactly one wins (writes all
//! run on the active node; standbys forward them). Expired secret-ids are
//! refused at login and removed by `tidy/secret-id` and by the periodic
//! tidy ([`Backend::periodic`], about once a minute).

mod login;
mod role;
mod secret_id;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock as StdRwLock};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, Operation as Op, PathSpec, Response, Secret,
};
use crate::storage::StorageView;
use crate::with_token_fields;

/// Where the salt for the `role_id/` and `accessor/` indexes lives.
const SALT_KEY: &str = "salt";
/// Vault's `maxHmacInputLength`: longer role names and secret-ids are refused.
const MAX_HMAC_INPUT: usize = 4096;
/// Lock shards (Vault's `locksutil` uses 256).
const LOCK_SHARDS: usize = 256;

/// A role name, as Vault's `framework.GenericNameRegex`.
macro_rules! role {
    ($rest:literal) => {
        concat!(r"role/(?P<role_name>\w(?:[\w.@-]*\w)?)", $rest)
    };
}

const R_ROLE_LIST: usize = 0;
const R_ROLE: usize = 1;
const R_LOCAL_SECRET_IDS: usize = 2;
const R_POLICIES: usize = 3;
const R_BOUND_CIDR_LIST: usize = 4;
const R_SECRET_ID_BOUND_CIDRS: usize = 5;
const R_TOKEN_BOUND_CIDRS: usize = 6;
const R_BIND_SECRET_ID: usize = 7;
const R_SECRET_ID_NUM_USES: usize = 8;
const R_SECRET_ID_TTL: usize = 9;
const R_PERIOD: usize = 10;
const R_TOKEN_NUM_USES: usize = 11;
const R_TOKEN_TTL: usize = 12;
const R_TOKEN_MAX_TTL: usize = 13;
const R_ROLE_ID: usize = 14;
const R_SECRET_ID: usize = 15;
const R_SECRET_ID_LOOKUP: usize = 16;
const R_SECRET_ID_DESTROY: usize = 17;
const R_ACCESSOR_LOOKUP: usize = 18;
const R_ACCESSOR_DESTROY: usize = 19;
const R_CUSTOM_SECRET_ID: usize = 20;
const R_LOGIN: usize = 21;
const R_TIDY: usize = 22;

const RUD: &[Op] = &[Op::Read, Op::Update, Op::Delete];
const NAME: F = F::new("role_name", K::String);

/// The fields a secret-id is issued with (generate and custom).
macro_rules! secret_id_fields {
    ($($extra:expr),* $(,)?) => {
        &[
            NAME,
            F::new("metadata", K::String),
            F::new("cidr_list", K::CommaStringSlice),
            F::new("token_bound_cidrs", K::CommaStringSlice),
            F::new("num_uses", K::Int),
            F::new("ttl", K::Duration),
            $($extra,)*
        ]
    };
}

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "role/?",
        operations: &[Op::List],
        fields: &[F::new("after", K::String), F::new("limit", K::Int)],
        existence_check: false,
        help: "Lists all the roles registered with the backend.",
    },
    PathSpec {
        pattern: role!(""),
        operations: RUD,
        fields: with_token_fields![
            NAME,
            F::new("bind_secret_id", K::Bool),
            F::new("bound_cidr_list", K::CommaStringSlice),
            F::new("secret_id_bound_cidrs", K::CommaStringSlice),
            F::new("secret_id_num_uses", K::Int),
            F::new("secret_id_ttl", K::Duration),
            F::new("period", K::Duration),
            F::new("role_id", K::String),
            F::new("local_secret_ids", K::Bool),
        ],
        existence_check: true,
        help: "Register an role with the backend.",
    },
    PathSpec {
        pattern: role!("/local-secret-ids"),
        operations: &[Op::Read],
        fields: &[NAME],
        existence_check: false,
        help: "Enables cluster local secret IDs",
    },
    PathSpec {
        pattern: role!("/policies"),
        operations: RUD,
        fields: &[
            NAME,
            F::new("policies", K::CommaStringSlice),
            F::new("token_policies", K::CommaStringSlice),
        ],
        existence_check: false,
        help: "Policies of the role.",
    },
    PathSpec {
        pattern: role!("/bound-cidr-list"),
        operations: RUD,
        fields: &[NAME, F::new("bound_cidr_list", K::CommaStringSlice)],
        existence_check: false,
        help: "Deprecated: use secret-id-bound-cidrs.",
    },
    PathSpec {
        pattern: role!("/secret-id-bound-cidrs"),
        operations: RUD,
        fields: &[NAME, F::new("secret_id_bound_cidrs", K::CommaStringSlice)],
        existence_check: false,
        help: "CIDR blocks that may log in with the role's secret-ids.",
    },
    PathSpec {
        pattern: role!("/token-bound-cidrs"),
        operations: RUD,
        fields: &[NAME, F::new("token_bound_cidrs", K::CommaStringSlice)],
        existence_check: false,
        help: "CIDR blocks that may use the tokens the role issues.",
    },
    PathSpec {
        pattern: role!("/bind-secret-id"),
        operations: RUD,
        fields: &[NAME, F::new("bind_secret_id", K::Bool)],
        existence_check: false,
        help: "Impose secret_id to be presented during login using this role.",
    },
    PathSpec {
        pattern: role!("/secret-id-num-uses"),
        operations: RUD,
        fields: &[NAME, F::new("secret_id_num_uses", K::Int)],
        existence_check: false,
        help: "Use limit of the SecretID generated against the role.",
    },
    PathSpec {
        pattern: role!("/secret-id-ttl"),
        operations: RUD,
        fields: &[NAME, F::new("secret_id_ttl", K::Duration)],
        existence_check: false,
        help: "Duration in seconds of the SecretID generated against the role.",
    },
    PathSpec {
        pattern: role!("/period"),
        operations: RUD,
        fields: &[
            NAME,
            F::new("period", K::Duration),
            F::new("token_period", K::Duration),
        ],
        existence_check: false,
        help: "Updates the value of 'period' on the role",
    },
    PathSpec {
        pattern: role!("/token-num-uses"),
        operations: RUD,
        fields: &[NAME, F::new("token_num_uses", K::Int)],
        existence_check: false,
        help: "Number of times issued tokens can be used",
    },
    PathSpec {
        pattern: role!("/token-ttl"),
        operations: RUD,
        fields: &[NAME, F::new("token_ttl", K::Duration)],
        existence_check: false,
        help: "The lifetime of the tokens the role issues.",
    },
    PathSpec {
        pattern: role!("/token-max-ttl"),
        operations: RUD,
        fields: &[NAME, F::new("token_max_ttl", K::Duration)],
        existence_check: false,
        help: "The maximum lifetime of the tokens the role issues.",
    },
    PathSpec {
        pattern: role!("/role-id"),
        operations: &[Op::Read, Op::Update],
        fields: &[NAME, F::new("role_id", K::String)],
        existence_check: false,
        help: "Returns the 'role_id' of the role.",
    },
    PathSpec {
        pattern: role!("/secret-id/?"),
        operations: &[Op::Update, Op::List],
        fields: secret_id_fields![F::new("after", K::String), F::new("limit", K::Int)],
        existence_check: false,
        help: "Generate a SecretID against this role.",
    },
    PathSpec {
        pattern: role!("/secret-id/lookup/?"),
        operations: &[Op::Update],
        fields: &[NAME, F::new("secret_id", K::String)],
        existence_check: false,
        help: "Read the properties of an issued secret_id",
    },
    PathSpec {
        pattern: role!("/secret-id/destroy/?"),
        operations: &[Op::Update, Op::Delete],
        fields: &[NAME, F::new("secret_id", K::String)],
        existence_check: false,
        help: "Invalidate an issued secret_id",
    },
    PathSpec {
        pattern: role!("/secret-id-accessor/lookup/?"),
        operations: &[Op::Update],
        fields: &[NAME, F::new("secret_id_accessor", K::String)],
        existence_check: false,
        help: "Read an issued secret_id, using its accessor",
    },
    PathSpec {
        pattern: role!("/secret-id-accessor/destroy/?"),
        operations: &[Op::Update, Op::Delete],
        fields: &[NAME, F::new("secret_id_accessor", K::String)],
        existence_check: false,
        help: "Delete an issued secret_id, using its accessor",
    },
    PathSpec {
        pattern: role!("/custom-secret-id"),
        operations: &[Op::Update],
        fields: secret_id_fields![F::new("secret_id", K::String)],
        existence_check: false,
        help: "Assign a SecretID of choice against the role.",
    },
    PathSpec {
        pattern: "login",
        operations: &[Op::Update],
        fields: &[F::new("role_id", K::String), F::new("secret_id", K::String)],
        existence_check: false,
        help: "Issue a token based on the credentials supplied",
    },
    PathSpec {
        pattern: "tidy/secret-id",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Trigger the clean-up of expired SecretID entries.",
    },
];

/// The mount's salt (Vault's `salt.Salt` with SHA-256): indexes are
/// `hex(sha256(salt || value))`, so storage never holds a role_id or an
/// accessor in the clear either.
struct Salt(Secret);

impl Salt {
    fn id(&self, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.0.expose().as_bytes());
        h.update(value.as_bytes());
        hex::encode(h.finalize())
    }
}

/// `hex(hmac_sha256(key, value))` (Vault's `createHMAC`), refusing values
/// longer than Vault's limit.
fn create_hmac(key: &str, value: &str) -> Result<String> {
    if key.is_empty() {
        return Err(CoreError::internal("invalid HMAC key"));
    }
    if value.len() > MAX_HMAC_INPUT {
        return Err(CoreError::bad_request(format!(
            "value is longer than maximum of {MAX_HMAC_INPUT} bytes"
        )));
    }
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(CoreError::internal)?;
    m.update(value.as_bytes());
    Ok(hex::encode(m.finalize().into_bytes()))
}

fn shard(key: &str) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_SHARDS
}

/// The backend: locks and the cached salt; everything else is in storage.
pub struct AppRoleBackend {
    /// The mount's maximum lease TTL (its tune, else the server's), which
    /// caps secret-id TTLs and role periods as Vault's `MaxLeaseTTL()`.
    max_lease_ttl: i64,
    salt: StdRwLock<Option<Arc<Salt>>>,
    salt_init: Mutex<()>,
    /// Role changes, by lower-cased role name.
    role_locks: Vec<RwLock<()>>,
    /// Secret-id changes (uses spent, destroy, tidy), by secret-id HMAC.
    secret_locks: Vec<Mutex<()>>,
    tidy_running: AtomicBool,
}

impl AppRoleBackend {
    /// `max_lease_ttl` in seconds: the mount's tuned maximum, else the
    /// server's.
    pub fn new(max_lease_ttl: i64) -> Self {
        AppRoleBackend {
            max_lease_ttl,
            salt: StdRwLock::new(None),
            salt_init: Mutex::new(()),
            role_locks: (0..LOCK_SHARDS).map(|_| RwLock::new(())).collect(),
            secret_locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            tidy_running: AtomicBool::new(false),
        }
    }

    fn role_lock(&self, name: &str) -> &RwLock<()> {
        &self.role_locks[shard(&name.to_lowercase())]
    }

    fn secret_lock(&self, secret_id_hmac: &str) -> &Mutex<()> {
        &self.secret_locks[shard(secret_id_hmac)]
    }

    /// The mount's salt, created on first use (writes run on the active
    /// node, so one node creates it) and cached until another node's write
    /// of it arrives ([`Backend::invalidate`]).
    async fn salt(&self, storage: &StorageView) -> Result<Arc<Salt>> {
        if let Some(s) = self.cached_salt() {
            return Ok(s);
        }
        let _g = self.salt_init.lock().await;
        if let Some(s) = self.cached_salt() {
            return Ok(s);
        }
        let value = match storage.get(SALT_KEY).await? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| CoreError::Storage("approle salt is not UTF-8".into()))?,
            None => {
                let v = uuid::Uuid::new_v4().to_string();
                storage.put(SALT_KEY, v.clone().into_bytes()).await?;
                v
            }
        };
        let salt = Arc::new(Salt(Secret::new(value)));
        if let Ok(mut w) = self.salt.write() {
            *w = Some(salt.clone());
        }
        Ok(salt)
    }

    fn cached_salt(&self) -> Option<Arc<Salt>> {
        self.salt.read().ok().and_then(|g| g.clone())
    }
}

/// The role name of a request, lower-cased as every new role is stored.
fn role_name(ctx: &Ctx<'_>) -> Result<String> {
    let name = ctx.fields.capture("role_name").unwrap_or_default();
    if name.is_empty() {
        return Err(CoreError::bad_request("missing role_name"));
    }
    Ok(name.to_lowercase())
}

#[async_trait]
impl Backend for AppRoleBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login"]
    }

    /// Vault's alias lookahead: failed logins count under the role_id sent.
    fn lockout_key(&self, relative: &str, data: &Map<String, Value>) -> Option<String> {
        if relative != "login" {
            return None;
        }
        data.get("role_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    }

    fn is_pure(&self, route: usize, _req: &crate::logical::Request) -> bool {
        // Lookups only read (a lookup that finds a secret-id without its
        // accessor deletes it, but that is a repair, not a change a client
        // asked for; Vault's lookups are reads too).
        route == R_ACCESSOR_LOOKUP
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        match ctx.route {
            R_ROLE => Ok(role::load(ctx.storage, &role_name(&ctx)?).await?.is_some()),
            _ => Ok(true),
        }
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        match ctx.route {
            R_ROLE_LIST => role::list(&ctx).await,
            R_ROLE => match ctx.req.operation {
                Op::Read => self.role_read(&ctx).await,
                Op::Delete => self.role_delete(&ctx).await,
                _ => self.role_write(&ctx).await,
            },
            R_LOCAL_SECRET_IDS => {
                self.role_field_read(&ctx, role::Field::LocalSecretIds)
                    .await
            }
            R_ROLE_ID if ctx.req.operation == Op::Update || ctx.req.operation == Op::Create => {
                self.role_id_write(&ctx).await
            }
            R_POLICIES
            | R_BOUND_CIDR_LIST
            | R_SECRET_ID_BOUND_CIDRS
            | R_TOKEN_BOUND_CIDRS
            | R_BIND_SECRET_ID
            | R_SECRET_ID_NUM_USES
            | R_SECRET_ID_TTL
            | R_PERIOD
            | R_TOKEN_NUM_USES
            | R_TOKEN_TTL
            | R_TOKEN_MAX_TTL
            | R_ROLE_ID => {
                let field = role::Field::of_route(ctx.route);
                match ctx.req.operation {
                    Op::Read => self.role_field_read(&ctx, field).await,
                    Op::Delete => self.role_field_delete(&ctx, field).await,
                    _ => self.role_field_write(&ctx, field).await,
                }
            }
            R_SECRET_ID => match ctx.req.operation {
                Op::List => self.secret_id_list(&ctx).await,
                _ => {
                    let generated = Secret::new(uuid::Uuid::new_v4().to_string());
                    self.secret_id_issue(&ctx, generated).await
                }
            },
            R_CUSTOM_SECRET_ID => {
                let given = Secret::new(ctx.fields.str("secret_id").unwrap_or_default());
                self.secret_id_issue(&ctx, given).await
            }
            R_SECRET_ID_LOOKUP => self.secret_id_lookup(&ctx).await,
            R_SECRET_ID_DESTROY => self.secret_id_destroy(&ctx).await,
            R_ACCESSOR_LOOKUP => self.accessor_lookup(&ctx).await,
            R_ACCESSOR_DESTROY => self.accessor_destroy(&ctx).await,
            R_LOGIN => self.login(&ctx).await,
            R_TIDY => self.tidy_endpoint(ctx.storage).await,
            _ => Err(CoreError::UnsupportedOperation),
        }
    }

    async fn periodic(&self, mount: &str, storage: &StorageView, now_ns: i64) -> Result<()> {
        if !self.tidy_running.swap(true, Ordering::AcqRel) {
            let result = self.tidy(storage, now_ns).await;
            self.tidy_running.store(false, Ordering::Release);
            match result {
                Ok(n) if n > 0 => {
                    tracing::info!(mount, removed = n, "approle: tidied expired secret-ids");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(mount, error = %e, "approle: secret-id tidy failed"),
            }
        }
        Ok(())
    }

    fn invalidate(&self, key: &str) {
        if key == SALT_KEY
            && let Ok(mut w) = self.salt.write()
        {
            *w = None;
        }
    }
}

impl AppRoleBackend {
    /// `tidy/secret-id`: Vault starts the tidy in the background and answers
    /// 202 at once; here it runs within the request (it only lists and
    /// deletes expired entries), with the same answer. One at a time.
    async fn tidy_endpoint(&self, storage: &StorageView) -> Result<Option<Response>> {
        if self.tidy_running.swap(true, Ordering::AcqRel) {
            return Ok(Some(
                Response::default().with_warning("Tidy operation already in progress."),
            ));
        }
        let result = self.tidy(storage, secret_id::now_nanos()).await;
        self.tidy_running.store(false, Ordering::Release);
        let removed = result?;
        if removed > 0 {
            tracing::info!(removed, "approle: tidied expired secret-ids");
        }
        Ok(Some(Response {
            status: Some(202),
            warnings: vec![
                "Tidy operation successfully started. Any information from the operation will be printed to OpenBao's server logs.".into(),
            ],
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_refuses_long_values_and_empty_keys() {
        let h = create_hmac("k", "v").unwrap();
        assert_eq!(h.len(), 64);
        assert_ne!(h, create_hmac("k2", "v").unwrap());
        assert!(create_hmac("k", &"x".repeat(MAX_HMAC_INPUT + 1)).is_err());
        assert!(create_hmac("", "v").is_err());
    }

    /// Through the router as the server calls it, with the periodic tidy
    /// given a clock a minute ahead: the expired secret-id and its accessor
    /// index go, the unexpiring one stays.
    #[tokio::test]
    async fn periodic_tidy_removes_only_expired_secret_ids() {
        use crate::barrier::Barrier;
        use crate::logical::Request;
        use crate::router::{MountEntry, Mounted};
        use crate::storage::memory::MemoryStore;

        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[7u8; 32]).await.unwrap();
        let storage = StorageView::new(barrier, "auth/approle-test/");
        let backend = Arc::new(AppRoleBackend::new(768 * 3600));
        let entry = MountEntry::new("auth/approle/", "approle", "");
        let mounted = Mounted::new(entry, backend.clone(), storage.clone()).unwrap();
        let call = |op: Op, path: &str, body: Value| {
            let mut req = Request::new(op, format!("auth/approle/{path}"));
            req.relative_path = path.to_string();
            if let Value::Object(m) = body {
                req.data = m;
            }
            let mounted = &mounted;
            let path = path.to_string();
            async move { mounted.resolve(&path, req.operation)?.call(&req).await }
        };
        call(Op::Create, "role/app", serde_json::json!({}))
            .await
            .unwrap();
        let short = call(
            Op::Update,
            "role/app/secret-id",
            serde_json::json!({"ttl": 60}),
        )
        .await
        .unwrap()
        .and_then(|r| r.data)
        .unwrap();
        call(Op::Update, "role/app/secret-id", serde_json::json!({}))
            .await
            .unwrap();
        let accessors = |r: Option<Response>| -> Vec<Value> {
            r.and_then(|r| r.data)
                .and_then(|d| d.get("keys").and_then(Value::as_array).cloned())
                .unwrap_or_default()
        };
        let all = call(Op::List, "role/app/secret-id", Value::Null)
            .await
            .unwrap();
        assert_eq!(accessors(all).len(), 2);
        let accessor_keys = storage.list("accessor/").await.unwrap();
        assert_eq!(accessor_keys.len(), 2);

        let now = secret_id::now_nanos();
        backend
            .periodic("auth/approle/", &storage, now)
            .await
            .unwrap();
        let all = call(Op::List, "role/app/secret-id", Value::Null)
            .await
            .unwrap();
        assert_eq!(accessors(all).len(), 2, "nothing expired yet");

        backend
            .periodic("auth/approle/", &storage, now + 61_000_000_000)
            .await
            .unwrap();
        let left = accessors(
            call(Op::List, "role/app/secret-id", Value::Null)
                .await
                .unwrap(),
        );
        assert_eq!(left.len(), 1);
        assert_ne!(left[0], short["secret_id_accessor"]);
        assert_eq!(storage.list("accessor/").await.unwrap().len(), 1);
        let gone = call(
            Op::Update,
            "role/app/secret-id/lookup",
            serde_json::json!({"secret_id": short["secret_id"]}),
        )
        .await
        .unwrap();
        assert!(gone.is_none());
    }

    #[test]
    fn role_paths_match_vault_names() {
        let re = regex::Regex::new(&format!("^{}$", role!("/secret-id/?"))).unwrap();
        assert!(re.is_match("role/my-app.v2@x/secret-id"));
        assert!(re.is_match("role/a/secret-id/"));
        assert!(!re.is_match("role/-a/secret-id"));
        assert!(!re.is_match("role/a/b/secret-id"));
    }
}
