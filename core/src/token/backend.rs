//! The `auth/token/` backend: Vault's token API over the [`TokenStore`].
//!
//! Requests arrive from the router with the caller's resolved token in
//! `ctx.req.auth` (already looked up and its use consumed by the pipeline),
//! the raw token in `ctx.req.client_token`, and `ctx.req.has_sudo`. Create
//! applies Vault's `handleCreateCommon` rules (policy subsets, sudo-only
//! fields, TTL calculation) and hands a decided [`CreateTokenRequest`] to the
//! store; lookups and renewals answer in Vault's exact shapes; revocations
//! answer 204. Token roles are not supported yet: `create/:role` is "unknown
//! role" and `roles` lists nothing.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::TokenEntry;
use super::store::{CreateTokenRequest, TokenStore, calculate_ttl};
use crate::barrier::rfc3339;
use crate::error::{CoreError, Result};
use crate::logical::{
    AuthResponse, Backend, Ctx, FieldData, FieldKind, FieldSpec, Operation, PathSpec, Response,
};

/// Policies no token may be given.
use crate::policy::NON_ASSIGNABLE_POLICIES;

const CREATE_FIELDS: &[FieldSpec] = &[
    FieldSpec::new("id", FieldKind::String),
    FieldSpec::new("role_name", FieldKind::String),
    FieldSpec::new("policies", FieldKind::CommaStringSlice),
    FieldSpec::new("meta", FieldKind::StringMap),
    FieldSpec::new("metadata", FieldKind::StringMap),
    FieldSpec::new("no_parent", FieldKind::Bool),
    FieldSpec::new("no_default_policy", FieldKind::Bool),
    FieldSpec::new("lease", FieldKind::Duration),
    FieldSpec::new("ttl", FieldKind::Duration),
    FieldSpec::new("explicit_max_ttl", FieldKind::Duration),
    FieldSpec::new("period", FieldKind::Duration),
    FieldSpec::new("display_name", FieldKind::String),
    FieldSpec::new("num_uses", FieldKind::Int),
    FieldSpec::new("renewable", FieldKind::Bool),
    FieldSpec::new("type", FieldKind::String),
    FieldSpec::new("entity_alias", FieldKind::String),
    FieldSpec::new("format", FieldKind::String),
];
const TOKEN_FIELD: &[FieldSpec] = &[FieldSpec::new("token", FieldKind::String)];
const ACCESSOR_FIELD: &[FieldSpec] = &[FieldSpec::new("accessor", FieldKind::String)];
const RENEW_FIELDS: &[FieldSpec] = &[
    FieldSpec::new("token", FieldKind::String),
    FieldSpec::new("increment", FieldKind::Duration),
];
const RENEW_ACCESSOR_FIELDS: &[FieldSpec] = &[
    FieldSpec::new("accessor", FieldKind::String),
    FieldSpec::new("increment", FieldKind::Duration),
];

use Operation::{List, Read, Update};

const P_CREATE: &str = "create";
const P_CREATE_ORPHAN: &str = "create-orphan";
const P_CREATE_ROLE: &str = r"create/(?P<role_name>\w(?:[\w.-]*\w)?)";
const P_LOOKUP: &str = "lookup";
const P_LOOKUP_SELF: &str = "lookup-self";
const P_LOOKUP_ACCESSOR: &str = "lookup-accessor";
const P_RENEW: &str = "renew";
const P_RENEW_SELF: &str = "renew-self";
const P_RENEW_ACCESSOR: &str = "renew-accessor";
const P_REVOKE: &str = "revoke";
const P_REVOKE_SELF: &str = "revoke-self";
const P_REVOKE_ACCESSOR: &str = "revoke-accessor";
const P_REVOKE_ORPHAN: &str = "revoke-orphan";
const P_ACCESSORS: &str = "accessors/?";
const P_ROLES: &str = "roles/?";
const P_TIDY: &str = "tidy";

const fn row(
    pattern: &'static str,
    operations: &'static [Operation],
    fields: &'static [FieldSpec],
    help: &'static str,
) -> PathSpec {
    PathSpec {
        pattern,
        operations,
        fields,
        existence_check: false,
        help,
    }
}

static PATHS: &[PathSpec] = &[
    row(
        P_CREATE_ORPHAN,
        &[Update],
        CREATE_FIELDS,
        "Create an orphan token.",
    ),
    row(
        P_CREATE_ROLE,
        &[Update],
        CREATE_FIELDS,
        "Create a token against a role.",
    ),
    row(P_CREATE, &[Update], CREATE_FIELDS, "Create a child token."),
    row(
        P_LOOKUP_SELF,
        &[Read, Update],
        TOKEN_FIELD,
        "Look up the calling token.",
    ),
    row(
        P_LOOKUP_ACCESSOR,
        &[Update],
        ACCESSOR_FIELD,
        "Look up a token by accessor.",
    ),
    row(P_LOOKUP, &[Read, Update], TOKEN_FIELD, "Look up a token."),
    row(
        P_RENEW_SELF,
        &[Update],
        RENEW_FIELDS,
        "Renew the calling token.",
    ),
    row(
        P_RENEW_ACCESSOR,
        &[Update],
        RENEW_ACCESSOR_FIELDS,
        "Renew a token by accessor.",
    ),
    row(P_RENEW, &[Update], RENEW_FIELDS, "Renew a token."),
    row(
        P_REVOKE_SELF,
        &[Update],
        &[],
        "Revoke the calling token and its children.",
    ),
    row(
        P_REVOKE_ACCESSOR,
        &[Update],
        ACCESSOR_FIELD,
        "Revoke a token by accessor.",
    ),
    row(
        P_REVOKE_ORPHAN,
        &[Update],
        TOKEN_FIELD,
        "Revoke a token, orphaning its children.",
    ),
    row(
        P_REVOKE,
        &[Update],
        TOKEN_FIELD,
        "Revoke a token and its children.",
    ),
    row(P_ACCESSORS, &[List], &[], "List token accessors."),
    row(P_ROLES, &[List], &[], "List token roles."),
    row(
        P_TIDY,
        &[Update],
        &[],
        "Revoke expired tokens and clean up indexes.",
    ),
];

/// The backend mounted at `auth/token/`.
pub struct TokenBackend {
    store: Arc<TokenStore>,
    /// The core, for the identity store's `identity_policies` in lookups.
    core: Option<std::sync::Weak<crate::core::Core>>,
}

impl TokenBackend {
    pub fn new(store: Arc<TokenStore>) -> Self {
        TokenBackend { store, core: None }
    }

    /// Show `identity_policies` in lookups of tokens with an entity, from
    /// this core's identity store.
    pub fn with_core(mut self, core: std::sync::Weak<crate::core::Core>) -> Self {
        self.core = Some(core);
        self
    }

    /// A lookup answer: [`lookup_data`] plus, for a token with an entity,
    /// what identity adds (`crate::identity::lookup_additions`).
    async fn lookup_response(&self, e: &TokenEntry, id: &str) -> Result<Option<Response>> {
        let mut d = lookup_data(e, id, self.store.now());
        if !e.entity_id.is_empty()
            && let Some(core) = self.core.as_ref().and_then(std::sync::Weak::upgrade)
        {
            let u = core.unsealed()?;
            crate::identity::lookup_additions(&u.identity, &e.entity_id, &mut d).await?;
        }
        Ok(Some(Response::data(d)))
    }
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

fn requester<'a>(ctx: &'a Ctx<'_>) -> Result<&'a TokenEntry> {
    ctx.req.auth.as_deref().ok_or(CoreError::PermissionDenied)
}

fn client_token<'a>(ctx: &'a Ctx<'_>) -> Option<&'a str> {
    ctx.req
        .client_token
        .as_ref()
        .map(|t| t.expose())
        .filter(|t| !t.is_empty())
}

/// A non-empty string field.
fn field<'a>(f: &'a FieldData, name: &str) -> Option<&'a str> {
    f.str(name).map(str::trim).filter(|s| !s.is_empty())
}

/// Vault's `policyutil.SanitizePolicies`: trim, lowercase, drop empties;
/// `root` swallows everything else; optionally add `default`; sort, dedup.
pub(crate) fn sanitize_policies(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if out.iter().any(|p| p == "root") {
        return vec!["root".to_string()];
    }
    if add_default && !out.iter().any(|p| p == "default") {
        out.push("default".to_string());
    }
    out.sort();
    out.dedup();
    out
}

/// Vault's display name: `token` or `token-<name>` with anything outside
/// `[a-zA-Z0-9-]` replaced by `-`, one trailing `-` trimmed.
fn display_name(requested: Option<&str>) -> String {
    match requested {
        None => "token".to_string(),
        Some(name) => {
            let full: String = format!("token-{name}")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            full.strip_suffix('-').map(str::to_string).unwrap_or(full)
        }
    }
}

/// A create request decided by Vault's rules, plus its warnings.
pub(crate) struct CreatePlan {
    pub req: CreateTokenRequest,
    pub warnings: Vec<String>,
}

/// Vault's `handleCreateCommon` without roles: validate the fields against
/// the parent and the caller's privileges and decide the token.
pub(crate) fn plan_create(
    parent: &TokenEntry,
    f: &FieldData,
    is_sudo: bool,
    orphan_endpoint: bool,
    path: String,
    now: i64,
) -> Result<CreatePlan> {
    if parent.num_uses < 0 {
        return Err(bad("parent token lookup failed: no parent found"));
    }
    if parent.num_uses > 0 {
        return Err(bad("restricted use token cannot generate child tokens"));
    }
    let mut renewable = f.bool("renewable").unwrap_or(true);
    match field(f, "type").unwrap_or("service") {
        "service" => {}
        "batch" => return Err(bad("batch tokens are not supported")),
        _ => return Err(bad("invalid 'token_type' value")),
    }
    let num_uses = f.int("num_uses").unwrap_or(0);
    if num_uses < 0 {
        return Err(bad("number of uses cannot be negative"));
    }
    if field(f, "entity_alias").is_some() {
        return Err(bad(
            "'entity_alias' is only allowed in combination with token role",
        ));
    }
    let display_name = display_name(field(f, "display_name"));

    let id = match f.str("id").filter(|s| !s.is_empty()) {
        None => None,
        Some(id) => {
            if !is_sudo {
                return Err(bad("root or sudo privileges required to specify token id"));
            }
            if id.starts_with("hvs.") {
                return Err(bad("custom token ID cannot have the 'hvs.' prefix"));
            }
            if id.starts_with("s.") {
                return Err(bad("custom token ID cannot have the 's.' prefix"));
            }
            if id.contains('.') {
                return Err(bad("custom token ID cannot have a '.' in the value"));
            }
            Some(id.to_string())
        }
    };

    let no_default = f.bool("no_default_policy").unwrap_or(false);
    let requested = f.strings("policies").unwrap_or_default();
    let requested = sanitize_policies(&requested, false);
    let (base, add_default) = if requested.is_empty() {
        // Inherit the parent's; "default" only if the parent has it.
        (sanitize_policies(&parent.policies, false), false)
    } else if !is_sudo {
        let parent_policies = sanitize_policies(&parent.policies, false);
        if !requested.iter().all(|p| parent_policies.contains(p)) {
            return Err(bad("child policies must be subset of parent"));
        }
        (
            requested,
            !no_default && parent.policies.iter().any(|p| p == "default"),
        )
    } else {
        (requested, !no_default)
    };
    let mut policies = sanitize_policies(&base, add_default);
    if no_default {
        policies.retain(|p| p != "default");
    }
    if let Some(p) = policies
        .iter()
        .find(|p| NON_ASSIGNABLE_POLICIES.contains(&p.as_str()))
    {
        return Err(bad(format!("cannot assign policy \"{p}\"")));
    }
    let root = policies.iter().any(|p| p == "root");
    if root && !parent.is_root() {
        return Err(bad(
            "root tokens may not be created without parent token being root",
        ));
    }

    let orphan = if f.bool("no_parent").unwrap_or(false) {
        if !is_sudo {
            return Err(bad(
                "root or sudo privileges required to create orphan token",
            ));
        }
        true
    } else {
        orphan_endpoint
    };
    let entity_id = if orphan {
        String::new()
    } else {
        parent.entity_id.clone()
    };

    let explicit_max_ttl = f.duration_secs("explicit_max_ttl").unwrap_or(0);
    if explicit_max_ttl < 0 {
        return Err(bad("explicit_max_ttl must be positive"));
    }
    let period = f.duration_secs("period").unwrap_or(0);
    if period < 0 {
        return Err(bad("period must be positive"));
    }
    if period > 0 && !is_sudo {
        return Err(bad(
            "root or sudo privileges required to create periodic token",
        ));
    }
    let mut ttl = match f.duration_secs("ttl") {
        Some(t) => t,
        None => f.duration_secs("lease").unwrap_or(0),
    };
    if ttl < 0 {
        return Err(bad("ttl must be positive"));
    }

    let mut warnings = Vec::new();
    if period > 0 || ttl > 0 || !root {
        let (t, w) = calculate_ttl(now, 0, ttl, period, explicit_max_ttl, now)?;
        ttl = t;
        warnings.extend(w);
    }
    if ttl == 0 && explicit_max_ttl > 0 {
        ttl = explicit_max_ttl;
    }
    if ttl == 0 {
        if parent.ttl != 0 {
            return Err(bad(
                "expiring root tokens cannot create non-expiring root tokens",
            ));
        }
        renewable = false;
    }

    let meta = f
        .string_map("meta")
        .or_else(|| f.string_map("metadata"))
        .unwrap_or_default();

    Ok(CreatePlan {
        req: CreateTokenRequest {
            id,
            policies,
            meta,
            display_name,
            path,
            num_uses,
            ttl,
            explicit_max_ttl,
            period,
            renewable,
            orphan,
            entity_id,
            creation_time: now,
            ..Default::default()
        },
        warnings,
    })
}

/// The `auth` block for a token just created or renewed.
fn auth_response(token: &str, e: &TokenEntry, lease_duration: i64) -> AuthResponse {
    AuthResponse {
        client_token: token.to_string(),
        accessor: e.accessor.clone(),
        policies: e.policies.clone(),
        token_policies: e.policies.clone(),
        identity_policies: Vec::new(),
        metadata: (!e.meta.is_empty()).then(|| e.meta.clone()),
        lease_duration,
        renewable: e.renewable && e.expire_time != 0,
        entity_id: e.entity_id.clone(),
        token_type: e.token_type.clone(),
        orphan: e.parent_hash.is_empty(),
        mfa_requirement: None,
        num_uses: e.num_uses,
    }
}

/// The `data` of a lookup, field for field as Vault answers.
pub(crate) fn lookup_data(e: &TokenEntry, id: &str, now: i64) -> Map<String, Value> {
    let expired = e.is_expired_at(now);
    let mut d = Map::new();
    d.insert("accessor".into(), json!(e.accessor));
    d.insert("creation_time".into(), json!(e.creation_time));
    d.insert("creation_ttl".into(), json!(e.ttl));
    d.insert("display_name".into(), json!(e.display_name));
    d.insert("entity_id".into(), json!(e.entity_id));
    d.insert(
        "expire_time".into(),
        if e.expire_time == 0 {
            Value::Null
        } else {
            json!(rfc3339(e.expire_time))
        },
    );
    d.insert("explicit_max_ttl".into(), json!(e.explicit_max_ttl));
    d.insert("id".into(), json!(id));
    d.insert("issue_time".into(), json!(rfc3339(e.creation_time)));
    d.insert(
        "meta".into(),
        if e.meta.is_empty() {
            Value::Null
        } else {
            json!(e.meta)
        },
    );
    d.insert("num_uses".into(), json!(e.num_uses));
    d.insert("orphan".into(), json!(e.parent_hash.is_empty()));
    d.insert("path".into(), json!(e.path));
    d.insert("policies".into(), json!(e.policies));
    d.insert(
        "renewable".into(),
        json!(e.renewable && e.expire_time != 0 && !expired),
    );
    d.insert(
        "ttl".into(),
        json!(if e.expire_time == 0 {
            0
        } else {
            (e.expire_time - now).max(0)
        }),
    );
    d.insert("type".into(), json!(e.token_type));
    if e.period != 0 {
        d.insert("period".into(), json!(e.period));
    }
    if e.last_renewal_time != 0 {
        d.insert("last_renewal_time".into(), json!(e.last_renewal_time));
        d.insert("last_renewal".into(), json!(rfc3339(e.last_renewal_time)));
    }
    if !e.bound_cidrs.is_empty() {
        d.insert("bound_cidrs".into(), json!(e.bound_cidrs));
    }
    d
}

impl TokenBackend {
    async fn create(&self, ctx: &Ctx<'_>, orphan_endpoint: bool) -> Result<Option<Response>> {
        let parent = ctx
            .req
            .auth
            .as_deref()
            .ok_or_else(|| bad("parent token lookup failed: no parent found"))?;
        let is_sudo = ctx.req.has_sudo || parent.is_root();
        let rel = if ctx.req.relative_path.is_empty() {
            if orphan_endpoint {
                P_CREATE_ORPHAN
            } else {
                P_CREATE
            }
        } else {
            ctx.req.relative_path.trim_end_matches('/')
        };
        let plan = plan_create(
            parent,
            ctx.fields,
            is_sudo,
            orphan_endpoint,
            format!("auth/token/{rel}"),
            self.store.now(),
        )?;
        let (token, entry) = self.store.create(Some(parent), plan.req).await?;
        Ok(Some(Response {
            auth: Some(auth_response(&token, &entry, entry.ttl)),
            warnings: plan.warnings,
            ..Default::default()
        }))
    }

    /// Resolve the token to look up: the `token` field, else the caller's
    /// own. The caller's own entry is answered from the request (it may be on
    /// its last use, already revoked for everyone else).
    async fn lookup(&self, ctx: &Ctx<'_>, token: &str) -> Result<Option<Response>> {
        let hash = self.store.hash_token(token)?;
        let own = ctx
            .req
            .auth
            .as_deref()
            .filter(|a| a.id_hash == hash)
            .cloned();
        let entry = match own {
            Some(e) => e,
            None => self
                .store
                .lookup_hash(&hash)
                .await?
                .ok_or_else(|| CoreError::Forbidden("bad token".into()))?,
        };
        self.lookup_response(&entry, token).await
    }

    async fn renew(&self, hash: &str, token: &str, increment: i64) -> Result<Option<Response>> {
        if self.store.lookup_hash(hash).await?.is_none() {
            return Err(bad("token not found"));
        }
        let (entry, warnings) = self.store.renew(hash, increment).await?;
        let lease = (entry.expire_time - self.store.now()).max(0);
        Ok(Some(Response {
            auth: Some(auth_response(token, &entry, lease)),
            warnings,
            ..Default::default()
        }))
    }
}

#[async_trait]
impl Backend for TokenBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    /// Lookups change nothing (an expired token found on the way is revoked,
    /// which is housekeeping, not something the caller asked for).
    fn is_pure(&self, route: usize, _req: &crate::logical::Request) -> bool {
        PATHS
            .get(route)
            .is_some_and(|p| matches!(p.pattern, P_LOOKUP | P_LOOKUP_SELF | P_LOOKUP_ACCESSOR))
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let spec = PATHS
            .get(ctx.route)
            .ok_or_else(|| CoreError::internal("token backend: route out of range"))?;
        let f = ctx.fields;
        match spec.pattern {
            P_CREATE => self.create(&ctx, false).await,
            P_CREATE_ORPHAN => self.create(&ctx, true).await,
            P_CREATE_ROLE => Err(bad(format!(
                "unknown role {}",
                f.capture("role_name").unwrap_or_default()
            ))),
            P_LOOKUP => {
                let token = field(f, "token")
                    .or_else(|| client_token(&ctx))
                    .ok_or_else(|| bad("missing token ID"))?
                    .to_string();
                self.lookup(&ctx, &token).await
            }
            P_LOOKUP_SELF => {
                let me = requester(&ctx)?;
                let token = client_token(&ctx).unwrap_or_default();
                self.lookup_response(me, token).await
            }
            P_LOOKUP_ACCESSOR => {
                let accessor = field(f, "accessor").ok_or_else(|| bad("missing accessor"))?;
                let entry = self
                    .store
                    .lookup_accessor(accessor)
                    .await?
                    .ok_or_else(|| bad("invalid accessor"))?;
                self.lookup_response(&entry, "").await
            }
            P_RENEW => {
                let token = field(f, "token").ok_or_else(|| bad("missing token ID"))?;
                let hash = self.store.hash_token(token)?;
                self.renew(&hash, token, f.duration_secs("increment").unwrap_or(0))
                    .await
            }
            P_RENEW_SELF => {
                let me = requester(&ctx)?;
                let token = client_token(&ctx).unwrap_or_default();
                self.renew(
                    &me.id_hash,
                    token,
                    f.duration_secs("increment").unwrap_or(0),
                )
                .await
            }
            P_RENEW_ACCESSOR => {
                let accessor = field(f, "accessor").ok_or_else(|| bad("missing accessor"))?;
                let entry = self
                    .store
                    .lookup_accessor(accessor)
                    .await?
                    .ok_or_else(|| bad("invalid accessor"))?;
                self.renew(
                    &entry.id_hash,
                    "",
                    f.duration_secs("increment").unwrap_or(0),
                )
                .await
            }
            P_REVOKE => {
                let token = field(f, "token").ok_or_else(|| bad("missing token ID"))?;
                let hash = self.store.hash_token(token)?;
                if self.store.lookup_hash(&hash).await?.is_some() {
                    self.store.revoke_tree(&hash).await?;
                }
                Ok(None)
            }
            P_REVOKE_SELF => {
                let me = requester(&ctx)?;
                self.store.revoke_tree(&me.id_hash).await?;
                Ok(None)
            }
            P_REVOKE_ACCESSOR => {
                let accessor = field(f, "accessor").ok_or_else(|| bad("missing accessor"))?;
                if self.store.accessor_hash(accessor).await?.is_none() {
                    return Ok(Some(
                        Response::default().with_warning("No token found with this accessor"),
                    ));
                }
                let entry = self
                    .store
                    .lookup_accessor(accessor)
                    .await?
                    .ok_or_else(|| bad("token not found"))?;
                self.store.revoke_tree(&entry.id_hash).await?;
                Ok(None)
            }
            P_REVOKE_ORPHAN => {
                let me = requester(&ctx)?;
                if !(ctx.req.has_sudo || me.is_root()) {
                    return Err(bad("root or sudo privileges required to revoke and orphan"));
                }
                let token = field(f, "token").ok_or_else(|| bad("missing token ID"))?;
                let hash = self.store.hash_token(token)?;
                if self.store.lookup_hash(&hash).await?.is_none() {
                    return Err(bad("token to revoke not found"));
                }
                self.store.revoke_orphan(&hash).await?;
                Ok(None)
            }
            P_ACCESSORS => {
                let keys = self.store.list_accessors().await?;
                let mut d = Map::new();
                d.insert("keys".into(), json!(keys));
                Ok(Some(Response::data(d)))
            }
            P_ROLES => Ok(None),
            P_TIDY => {
                self.store.tidy_expired().await?;
                Ok(Some(Response {
                    status: Some(202),
                    warnings: vec![
                        "Tidy operation successfully started. Any information from the operation will be printed to Vault's server logs.".to_string(),
                    ],
                    ..Default::default()
                }))
            }
            _ => Err(CoreError::UnsupportedOperation),
        }
    }
}
