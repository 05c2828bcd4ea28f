//! The userpass auth method (`auth/userpass`), Vault's API: users with a
//! bcrypt password hash (cost 10, Vault's) and token parameters, and
//! `login/:username`.
//!
//! Requests come from the router: user management under the ACL, logins
//! unauthenticated. Users are stored in the mount's storage at
//! `user/<lower-cased name>` as JSON. A login answers with a
//! [`LoginAuth`] (alias = the username); core issues the token and counts a
//! wrong password towards lockout ([`crate::auth::lockout`]). Hashing runs on
//! the blocking pool, and a login for an unknown user compares against a
//! dummy hash so timing does not tell which users exist.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::{TokenParams, parse_cidrs};
use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, LoginAlias, LoginAuth, Operation as Op, PathSpec,
    Response,
};
use crate::with_token_fields;

/// Vault's `bcrypt.DefaultCost`: logins cost what they cost in Vault.
const BCRYPT_COST: u32 = 10;
/// Bounds on a pre-hashed `password_hash`'s cost, as OpenBao.
const MIN_COST: u32 = 5;
const MAX_COST: u32 = 12;
const USER_PREFIX: &str = "user/";
const BAD_LOGIN: &str = "invalid username or password";

/// Compared against when the user does not exist.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| bcrypt::hash("dummy", BCRYPT_COST).unwrap_or_default());

const R_LIST: usize = 0;
const R_USER: usize = 1;
const R_PASSWORD: usize = 2;
const R_POLICIES: usize = 3;
const R_LOGIN: usize = 4;

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "users/?",
        operations: &[Op::List],
        fields: &[F::new("after", K::String), F::new("limit", K::Int)],
        existence_check: false,
        help: "List users.",
    },
    PathSpec {
        pattern: r"users/(?P<username>\w(?:[\w.@-]*\w)?)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: with_token_fields![
            F::new("username", K::String),
            F::new("password", K::String),
            F::new("password_hash", K::String),
            F::new("ttl", K::Duration),
            F::new("max_ttl", K::Duration),
            F::new("bound_cidrs", K::CommaStringSlice),
        ],
        existence_check: true,
        help: "Create, read, update or delete a user.",
    },
    PathSpec {
        pattern: r"users/(?P<username>\w(?:[\w.@-]*\w)?)/password",
        operations: &[Op::Update],
        fields: &[
            F::new("username", K::String),
            F::new("password", K::String),
            F::new("password_hash", K::String),
        ],
        existence_check: false,
        help: "Reset a user's password.",
    },
    PathSpec {
        pattern: r"users/(?P<username>\w(?:[\w.@-]*\w)?)/policies",
        operations: &[Op::Update],
        fields: &[
            F::new("username", K::String),
            F::new("policies", K::CommaStringSlice),
            F::new("token_policies", K::CommaStringSlice),
        ],
        existence_check: false,
        help: "Update a user's policies.",
    },
    PathSpec {
        pattern: r"login/(?P<username>\w(?:[\w.@-]*\w)?)",
        operations: &[Op::Update],
        fields: &[F::new("username", K::String), F::new("password", K::String)],
        existence_check: false,
        help: "Log in with a username and password.",
    },
];

/// A stored user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct User {
    #[serde(flatten)]
    token: TokenParams,
    /// bcrypt hash (`$2b$10$...`).
    password_hash: String,
    /// Deprecated spellings kept so a read shows them as Vault does.
    policies: Vec<String>,
    ttl: i64,
    max_ttl: i64,
    bound_cidrs: Vec<String>,
}

/// The backend; stateless apart from its storage.
#[derive(Debug, Default)]
pub struct UserpassBackend;

fn username_of(ctx: &Ctx<'_>) -> String {
    ctx.fields
        .capture("username")
        .unwrap_or_default()
        .to_lowercase()
}

async fn load(ctx: &Ctx<'_>, name: &str) -> Result<Option<User>> {
    ctx.storage
        .get_json::<User>(&format!("{USER_PREFIX}{name}"))
        .await
}

/// Hash a new password, or check a pre-hashed one, as OpenBao does.
async fn password_hash(password: &str, pre_hashed: &str) -> Result<String> {
    match (password.is_empty(), pre_hashed.is_empty()) {
        (false, false) => Err(CoreError::bad_request(
            "only one of password or password_hash may be provided",
        )),
        (true, true) => Err(CoreError::bad_request(
            "must provide either password or password_hash",
        )),
        (false, true) => {
            let p = zeroize::Zeroizing::new(password.to_string());
            tokio::task::spawn_blocking(move || bcrypt::hash(p.as_bytes(), BCRYPT_COST))
                .await
                .map_err(CoreError::internal)?
                .map_err(|_| CoreError::internal("password hashing failed"))
        }
        (true, false) => {
            let cost = pre_hashed
                .parse::<bcrypt::HashParts>()
                .map(|h| h.get_cost())
                .map_err(|_| CoreError::bad_request("password_hash is not a valid bcrypt hash"))?;
            if cost < MIN_COST {
                return Err(CoreError::bad_request(format!(
                    "bcrypt cost of {cost} is too low, want {MIN_COST} at minimum"
                )));
            }
            if cost > MAX_COST {
                return Err(CoreError::bad_request(format!(
                    "bcrypt cost of {cost} exceeds maximum cost of {MAX_COST}"
                )));
            }
            Ok(pre_hashed.to_string())
        }
    }
}

/// Constant-work password check on the blocking pool.
async fn verify(password: &str, hash: &str) -> Result<bool> {
    let (p, h) = (
        zeroize::Zeroizing::new(password.to_string()),
        hash.to_string(),
    );
    tokio::task::spawn_blocking(move || bcrypt::verify(p.as_bytes(), &h).unwrap_or(false))
        .await
        .map_err(CoreError::internal)
}

#[async_trait]
impl Backend for UserpassBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login/*"]
    }

    fn lockout_key(&self, relative: &str, _data: &Map<String, Value>) -> Option<String> {
        relative
            .strip_prefix("login/")
            .filter(|u| !u.is_empty())
            .map(str::to_lowercase)
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        Ok(load(&ctx, &username_of(&ctx)).await?.is_some())
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        match ctx.route {
            R_LIST => {
                let mut users = ctx.storage.list(USER_PREFIX).await?;
                users.sort();
                Response::list(users)
            }
            R_USER => {
                let name = username_of(&ctx);
                let key = format!("{USER_PREFIX}{name}");
                match ctx.req.operation {
                    Op::Read => Ok(load(&ctx, &name)
                        .await?
                        .map(|u| Response::data(user_json(&u)))),
                    Op::Delete => {
                        ctx.storage.delete(&key).await?;
                        Ok(None)
                    }
                    op => {
                        let mut user = load(&ctx, &name).await?.unwrap_or_default();
                        let (pw, pre) = (
                            f.str("password").unwrap_or(""),
                            f.str("password_hash").unwrap_or(""),
                        );
                        if op == Op::Create || !pw.is_empty() || !pre.is_empty() {
                            user.password_hash = password_hash(pw, pre).await?;
                        }
                        user.token.apply(f)?;
                        // Deprecated spellings, as Vault's UpgradeValue.
                        if let Some(p) = f.strings("policies") {
                            user.policies = crate::auth::sanitize_policies(p);
                        }
                        if let Some(v) = f.duration_secs("ttl") {
                            user.ttl = v;
                            if !f.has("token_ttl") {
                                user.token.token_ttl = v;
                            }
                        }
                        if let Some(v) = f.duration_secs("max_ttl") {
                            user.max_ttl = v;
                            if !f.has("token_max_ttl") {
                                user.token.token_max_ttl = v;
                            }
                        }
                        if let Some(v) = f.strings("bound_cidrs") {
                            user.bound_cidrs = parse_cidrs("bound_cidrs", &v)?;
                            if !f.has("token_bound_cidrs") {
                                user.token.token_bound_cidrs = user.bound_cidrs.clone();
                            }
                        }
                        ctx.storage.put_json(&key, &user).await?;
                        Ok(None)
                    }
                }
            }
            R_PASSWORD => {
                let name = username_of(&ctx);
                let Some(mut user) = load(&ctx, &name).await? else {
                    return Err(CoreError::bad_request("username does not exist"));
                };
                user.password_hash = password_hash(
                    f.str("password").unwrap_or(""),
                    f.str("password_hash").unwrap_or(""),
                )
                .await?;
                ctx.storage
                    .put_json(&format!("{USER_PREFIX}{name}"), &user)
                    .await?;
                Ok(None)
            }
            R_POLICIES => {
                let name = username_of(&ctx);
                let Some(mut user) = load(&ctx, &name).await? else {
                    return Err(CoreError::bad_request("username does not exist"));
                };
                if let Some(p) = f
                    .strings("token_policies")
                    .or_else(|| f.strings("policies"))
                {
                    user.token.token_policies = crate::auth::sanitize_policies(p);
                }
                if let Some(p) = f.strings("policies") {
                    user.policies = crate::auth::sanitize_policies(p);
                }
                ctx.storage
                    .put_json(&format!("{USER_PREFIX}{name}"), &user)
                    .await?;
                Ok(None)
            }
            R_LOGIN => self.login(&ctx).await,
            _ => Err(CoreError::UnsupportedOperation),
        }
    }
}

impl UserpassBackend {
    async fn login(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = username_of(ctx);
        let password = ctx.fields.str("password").unwrap_or("");
        if password.is_empty() {
            return Err(CoreError::bad_request("missing password"));
        }
        let user = load(ctx, &name).await?;
        let hash = match &user {
            Some(u) if u.password_hash.is_empty() => {
                return Err(CoreError::bad_request(BAD_LOGIN));
            }
            Some(u) => u.password_hash.clone(),
            None => DUMMY_HASH.clone(),
        };
        if !verify(password, &hash).await? {
            // Only existing users count towards lockout, as in Vault.
            return Err(match user {
                Some(_) => CoreError::InvalidCredentials(BAD_LOGIN.into()),
                None => CoreError::bad_request(BAD_LOGIN),
            });
        }
        let Some(user) = user else {
            return Err(CoreError::bad_request(BAD_LOGIN));
        };
        let remote = ctx.req.remote_addr.map(|a| a.ip());
        if !crate::auth::cidrs_admit(&user.token.token_bound_cidrs, remote) {
            return Err(CoreError::PermissionDenied);
        }
        let metadata = BTreeMap::from([("username".to_string(), name.clone())]);
        Ok(Some(Response {
            login: Some(Box::new(LoginAuth {
                alias: LoginAlias {
                    name: name.clone(),
                    metadata: BTreeMap::new(),
                },
                display_name: name,
                metadata,
                token: user.token,
                group_aliases: Vec::new(),
            })),
            ..Default::default()
        }))
    }
}

/// A user as `users/:name` reads it: the token fields, plus the deprecated
/// spellings when they were set.
fn user_json(u: &User) -> Map<String, Value> {
    let mut data = Map::new();
    u.token.populate(&mut data);
    if u.ttl > 0 {
        data.insert("ttl".into(), u.ttl.into());
    }
    if u.max_ttl > 0 {
        data.insert("max_ttl".into(), u.max_ttl.into());
    }
    if !u.policies.is_empty() {
        data.insert("policies".into(), u.token.token_policies.clone().into());
    }
    if !u.bound_cidrs.is_empty() {
        data.insert("bound_cidrs".into(), u.bound_cidrs.clone().into());
    }
    data
}
