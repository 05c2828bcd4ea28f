//! The JWT/OIDC auth method (`auth/jwt`, also mountable as type `oidc`),
//! Vault's API: `config`, `role/:name`, and `login` with a JWT — a GitLab CI
//! `id_token`, a GitHub Actions OIDC token, any issuer's signed JWT.
//!
//! Requests come from the router: `config` and `role/` under the ACL,
//! `login` unauthenticated. A login parses the token ([`token`]), verifies
//! its signature against the configured keys ([`keys`]: PEM keys, or a JWKS
//! cached in memory and refetched on rotation), checks the registered
//! claims and the role's bindings ([`claims`]), and answers with a
//! [`LoginAuth`] — alias name from the role's `user_claim`, alias metadata
//! from `claim_mappings` plus the role name, group aliases from
//! `groups_claim` — from which core issues the token. Config and roles live
//! in the mount's storage ([`config`], [`role`]); the parsed config and its
//! keys are cached here until a config write or an invalidation. The
//! browser OIDC flow (`oidc/auth_url`, `oidc/callback`) answers a clear 400.

pub mod claims;
pub mod config;
pub mod keys;
pub mod role;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, LoginAlias, LoginAuth, Operation as Op, PathSpec,
    Response,
};
use crate::with_token_fields;
use async_trait::async_trait;
use config::{CONFIG_KEY, JwtConfig};
use keys::KeySet;
use role::ROLE_PREFIX;

const R_LOGIN: usize = 0;
const R_ROLE_LIST: usize = 1;
const R_ROLE: usize = 2;
const R_CONFIG: usize = 3;
const R_OIDC: usize = 4;

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "login",
        operations: &[Op::Update],
        fields: &[F::new("role", K::String), F::new("jwt", K::String)],
        existence_check: false,
        help: "Authenticate with a signed JWT.",
    },
    PathSpec {
        pattern: "role/?",
        operations: &[Op::List],
        fields: &[F::new("after", K::String), F::new("limit", K::Int)],
        existence_check: false,
        help: "List roles.",
    },
    PathSpec {
        pattern: r"role/(?P<name>\w(?:[\w.-]*\w)?)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: with_token_fields![
            F::new("name", K::String),
            F::new("role_type", K::String),
            F::new("num_uses", K::Int),
            F::new("ttl", K::Duration),
            F::new("max_ttl", K::Duration),
            F::new("period", K::Duration),
            F::new("bound_cidrs", K::CommaStringSlice),
            F::new("expiration_leeway", K::Any),
            F::new("not_before_leeway", K::Any),
            F::new("clock_skew_leeway", K::Any),
            F::new("bound_subject", K::String),
            F::new("bound_audiences", K::CommaStringSlice),
            F::new("bound_claims_type", K::String),
            F::new("bound_claims", K::Map),
            F::new("claim_mappings", K::StringMap),
            F::new("oauth2_metadata", K::CommaStringSlice),
            F::new("user_claim", K::String),
            F::new("user_claim_json_pointer", K::Bool),
            F::new("groups_claim", K::String),
            F::new("oidc_scopes", K::CommaStringSlice),
            F::new("allowed_redirect_uris", K::CommaStringSlice),
            F::new("callback_mode", K::String),
            F::new("poll_interval", K::Int),
            F::new("verbose_oidc_logging", K::Bool),
            F::new("max_age", K::Duration),
            F::new("token_policies_template_claims", K::Bool),
            F::new("oidc_disable_confirmation", K::Bool),
        ],
        existence_check: true,
        help: "Create, read, update or delete a role.",
    },
    PathSpec {
        pattern: "config",
        operations: &[Op::Read, Op::Update],
        fields: &[
            F::new("oidc_discovery_url", K::String),
            F::new("oidc_discovery_ca_pem", K::String),
            F::new("oidc_client_id", K::String),
            F::new("oidc_client_secret", K::String),
            F::new("oidc_response_mode", K::String),
            F::new("oidc_response_types", K::CommaStringSlice),
            F::new("jwks_url", K::String),
            F::new("jwks_ca_pem", K::String),
            F::new("default_role", K::String),
            F::new("jwt_validation_pubkeys", K::CommaStringSlice),
            F::new("jwt_supported_algs", K::CommaStringSlice),
            F::new("bound_issuer", K::String),
            F::new("provider_config", K::Map),
            F::new("override_allowed_server_names", K::CommaStringSlice),
            F::new("namespace_in_state", K::Bool),
            F::new("skip_jwks_validation", K::Bool),
        ],
        existence_check: false,
        help: "Configure the JWT auth method: signing keys, issuer, default role.",
    },
    PathSpec {
        pattern: r"oidc/(?P<step>auth_url|callback|poll)",
        operations: &[Op::Read, Op::Update],
        fields: &[],
        existence_check: false,
        help: "The browser OIDC flow (not supported by this server).",
    },
];

/// The parsed config and its keys.
struct Loaded {
    config: JwtConfig,
    keys: KeySet,
}

/// One mount's backend: storage holds config and roles; this holds the
/// parsed config and the key cache.
#[derive(Default)]
pub struct JwtBackend {
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Serialises loading and config writes, so a slow load cannot put back
    /// a config older than a write.
    load_lock: tokio::sync::Mutex<()>,
    /// Bumped by every invalidation; a load that started before one does
    /// not cache what it read.
    generation: AtomicU64,
}

impl JwtBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn cached(&self) -> Option<Arc<Loaded>> {
        match self.loaded.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, v: Option<Arc<Loaded>>) {
        match self.loaded.write() {
            Ok(mut l) => *l = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.set(None);
    }

    /// The config and keys, from the cache or from storage.
    async fn loaded(&self, ctx: &Ctx<'_>) -> Result<Option<Arc<Loaded>>> {
        if let Some(l) = self.cached() {
            return Ok(Some(l));
        }
        let _g = self.load_lock.lock().await;
        if let Some(l) = self.cached() {
            return Ok(Some(l));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(config) = ctx.storage.get_json::<JwtConfig>(CONFIG_KEY).await? else {
            return Ok(None);
        };
        let keys = config.key_set().map_err(|e| {
            CoreError::bad_request(format!(
                "error configuring token validator: keyset configuration error: {e}"
            ))
        })?;
        let l = Arc::new(Loaded { config, keys });
        if self.generation.load(Ordering::SeqCst) == generation {
            self.set(Some(l.clone()));
        }
        Ok(Some(l))
    }

    async fn config_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let Some(l) = self.loaded(ctx).await? else {
            return Ok(None);
        };
        let mut data = l.config.to_json();
        let mut resp = Response::default();
        let status = match &l.keys {
            KeySet::Remote(r) if !l.config.oidc_discovery_url.is_empty() => {
                match r.discover().await {
                    Ok(_) => "valid",
                    Err(e) => {
                        resp.warnings.push(format!(
                            "failed to construct JWK validator: keyset configuration error: {e}"
                        ));
                        "invalid"
                    }
                }
            }
            _ => "valid",
        };
        data.insert("status".into(), status.into());
        resp.data = Some(data);
        Ok(Some(resp))
    }

    async fn config_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let _g = self.load_lock.lock().await;
        let existing = ctx.storage.get_json::<JwtConfig>(CONFIG_KEY).await?;
        let (config, keys, warnings) = config::from_request(ctx.fields, existing.as_ref()).await?;
        ctx.storage.put_json(CONFIG_KEY, &config).await?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.set(Some(Arc::new(Loaded { config, keys })));
        if warnings.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response {
            warnings,
            ..Default::default()
        }))
    }

    async fn role_list(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let mut names = ctx.storage.list(ROLE_PREFIX).await?;
        names.sort();
        if let Some(after) = ctx.fields.str("after").filter(|a| !a.is_empty()) {
            names.retain(|n| n.as_str() > after);
        }
        if let Some(limit) = ctx.fields.int("limit").filter(|l| *l > 0) {
            names.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Response::list(names)
    }

    async fn role(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx);
        let key = format!("{ROLE_PREFIX}{name}");
        match ctx.req.operation {
            Op::Read => Ok(role::load(ctx.storage, &name)
                .await?
                .map(|r| Response::data(role::to_json(&r)))),
            Op::Delete => {
                ctx.storage.delete(&key).await?;
                Ok(None)
            }
            op => {
                let existing = role::load(ctx.storage, &name).await?;
                let (r, warnings) = role::apply(existing, ctx.fields, op)?;
                ctx.storage.put_json(&key, &r).await?;
                if warnings.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Response {
                    warnings,
                    ..Default::default()
                }))
            }
        }
    }

    /// Vault's `pathLogin`, in its order and with its wording.
    async fn login(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let bad = |m: String| Err(CoreError::bad_request(m));
        let Some(l) = self.loaded(ctx).await? else {
            return bad("could not load configuration".into());
        };
        let mut role_name = ctx.fields.str("role").unwrap_or("").to_lowercase();
        if role_name.is_empty() {
            role_name = l.config.default_role.clone();
        }
        if role_name.is_empty() {
            return bad("missing role".into());
        }
        let Some(role) = role::load(ctx.storage, &role_name).await? else {
            return bad(format!("role {role_name:?} could not be found"));
        };
        if role.role_type == "oidc" {
            return bad("role with oidc role_type is not allowed".into());
        }
        let jwt = ctx.fields.str("jwt").unwrap_or("");
        if jwt.is_empty() {
            return bad("missing token".into());
        }
        let remote = ctx.req.remote_addr.map(|a| a.ip());
        if !crate::auth::cidrs_admit(&role.token.token_bound_cidrs, remote) {
            return Err(CoreError::PermissionDenied);
        }

        let parsed = token::parse(jwt).map_err(|e| CoreError::bad_request(e.message()))?;
        l.keys
            .verify(&parsed)
            .await
            .map_err(|e| CoreError::bad_request(e.message()))?;
        let no_audiences = Vec::new();
        let expected = token::Expected {
            issuer: &l.config.bound_issuer,
            subject: &role.bound_subject,
            audiences: role.bound_audiences.as_ref().unwrap_or(&no_audiences),
            algorithms: &l.config.jwt_supported_algs,
            not_before_leeway: role.not_before_leeway,
            expiration_leeway: role.expiration_leeway,
            clock_skew_leeway: role.clock_skew_leeway,
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        token::validate_claims(&parsed, &expected)
            .map_err(|e| CoreError::bad_request(e.message()))?;
        let claims = &parsed.claims;
        if role.bound_audiences.as_ref().is_none_or(Vec::is_empty)
            && !token::audiences(claims).unwrap_or_default().is_empty()
        {
            return bad("audience claim found in JWT but no audiences bound to the role".into());
        }

        let name = claims::user_name(claims, &role.user_claim, role.user_claim_json_pointer)
            .map_err(CoreError::bad_request)?;
        let mut metadata = claims::extract_metadata(
            claims,
            role.claim_mappings.as_ref().unwrap_or(&Default::default()),
        )
        .map_err(CoreError::bad_request)?;
        metadata.insert("role".into(), role_name.clone());
        let group_aliases = if role.groups_claim.is_empty() {
            Vec::new()
        } else {
            claims::groups(claims, &role.groups_claim).map_err(CoreError::bad_request)?
        };
        if let Some(bound) = &role.bound_claims {
            claims::validate_bound_claims(role.uses_globs(), bound, claims)
                .map_err(|e| CoreError::bad_request(format!("error validating claims: {e}")))?;
        }

        Ok(Some(Response {
            login: Some(Box::new(LoginAuth {
                alias: LoginAlias {
                    name: name.clone(),
                    metadata: metadata.clone(),
                },
                display_name: name,
                metadata,
                token: role.token,
                group_aliases,
            })),
            ..Default::default()
        }))
    }
}

fn role_name(ctx: &Ctx<'_>) -> String {
    ctx.fields
        .capture("name")
        .unwrap_or_default()
        .to_lowercase()
}

#[async_trait]
impl Backend for JwtBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login", "oidc/auth_url", "oidc/callback", "oidc/poll"]
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        Ok(role::load(ctx.storage, &role_name(&ctx)).await?.is_some())
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        match (ctx.route, ctx.req.operation) {
            (R_LOGIN, _) => self.login(&ctx).await,
            (R_ROLE_LIST, _) => self.role_list(&ctx).await,
            (R_ROLE, _) => self.role(&ctx).await,
            (R_CONFIG, Op::Read) => self.config_read(&ctx).await,
            (R_CONFIG, _) => self.config_write(&ctx).await,
            (R_OIDC, _) => Err(CoreError::bad_request(
                "the OIDC browser flow is not supported by this server; log in with a signed JWT at login (role, jwt)",
            )),
            _ => Err(CoreError::UnsupportedOperation),
        }
    }

    fn invalidate(&self, key: &str) {
        if key == CONFIG_KEY {
            self.reset();
        }
    }
}
