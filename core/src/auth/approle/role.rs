//! AppRole roles: `role/`, `role/:name` and the per-field sub-paths
//! (`policies`, `secret-id-ttl`, `role-id`, ...), as Vault's
//! `path_role.go`.
//!
//! A role is stored as JSON at `role/<lower-cased name>` in the mount's
//! storage, together with the `role_id/<salted role_id>` index that login
//! looks it up by; the two are written in one atomic batch, and a role_id
//! another role holds is refused. Each role carries its own HMAC key for its
//! secret-ids. Reads answer in Vault's shapes (`null` for CIDR lists never
//! set, the deprecated `policies`/`period` only when they were used).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{AppRoleBackend, MAX_HMAC_INPUT, role_name, secret_id};
use crate::auth::{TokenParams, parse_cidrs, sanitize_policies};
use crate::error::{CoreError, Result};
use crate::logical::{Ctx, FieldData, Operation as Op, Response};
use crate::storage::{BatchOp, StorageView};

pub(super) const ROLE_PREFIX: &str = "role/";
const ROLE_ID_PREFIX: &str = "role_id/";
pub(super) const SECRET_ID_PREFIX: &str = "secret_id/";
pub(super) const SECRET_ID_LOCAL_PREFIX: &str = "secret_id_local/";

/// A stored role (Vault's `roleStorageEntry`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Role {
    #[serde(flatten)]
    pub token: TokenParams,
    /// Lower-cased role name.
    pub name: String,
    pub role_id: String,
    /// Key of the HMACs this role's secret-ids are stored under.
    pub hmac_key: String,
    /// Deprecated spelling of `token_policies`, kept to show it as Vault does.
    pub policies: Vec<String>,
    pub secret_id_num_uses: i64,
    pub secret_id_ttl: i64,
    pub bind_secret_id: bool,
    /// Deprecated spelling of `secret_id_bound_cidrs`; moved over on load.
    pub bound_cidr_list: Vec<String>,
    pub secret_id_bound_cidrs: Vec<String>,
    /// Deprecated spelling of `token_period`.
    pub period: i64,
    /// `secret_id/` or `secret_id_local/` (`local_secret_ids`).
    pub secret_id_prefix: String,
}

impl Role {
    /// Whether at least one login constraint holds (Vault's
    /// `validateRoleConstraints`).
    fn constrained(&self) -> bool {
        self.bind_secret_id
            || !self.bound_cidr_list.is_empty()
            || !self.secret_id_bound_cidrs.is_empty()
            || !self.token.token_bound_cidrs.is_empty()
    }

    /// The token parameters a login through this role gets: the deprecated
    /// `policies` and `period` stand in when the new fields are unset.
    pub fn login_token(&self) -> TokenParams {
        let mut t = self.token.clone();
        if t.token_period == 0 && self.period > 0 {
            t.token_period = self.period;
        }
        if t.token_policies.is_empty() && !self.policies.is_empty() {
            t.token_policies = self.policies.clone();
        }
        t
    }
}

#[derive(Serialize, Deserialize)]
struct RoleIdEntry {
    name: String,
}

/// Read a role, upgrading old layouts as Vault's `roleEntry` does (in
/// memory; the next write stores the upgrade).
pub(super) async fn load(storage: &StorageView, name: &str) -> Result<Option<Role>> {
    let Some(mut role) = storage
        .get_json::<Role>(&format!("{ROLE_PREFIX}{}", name.to_lowercase()))
        .await?
    else {
        return Ok(None);
    };
    if !role.bound_cidr_list.is_empty() {
        role.secret_id_bound_cidrs = std::mem::take(&mut role.bound_cidr_list);
    }
    if role.secret_id_prefix.is_empty() {
        role.secret_id_prefix = SECRET_ID_PREFIX.into();
    }
    if role.name.is_empty() {
        role.name = name.to_lowercase();
    }
    Ok(Some(role))
}

/// The role name a role_id belongs to.
pub(super) async fn name_for_role_id(
    b: &AppRoleBackend,
    storage: &StorageView,
    role_id: &str,
) -> Result<Option<String>> {
    let salt = b.salt(storage).await?;
    Ok(storage
        .get_json::<RoleIdEntry>(&format!("{ROLE_ID_PREFIX}{}", salt.id(role_id)))
        .await?
        .map(|e| e.name))
}

/// Store a role and its role_id index in one batch (Vault's
/// `setRoleEntry`): the role needs a constraint, its role_id may not belong
/// to another role, and a changed role_id drops the old index.
pub(super) async fn save(
    b: &AppRoleBackend,
    storage: &StorageView,
    role: &Role,
    previous_role_id: &str,
) -> Result<()> {
    if !role.constrained() {
        return Err(CoreError::bad_request(
            "at least one constraint should be enabled on the role",
        ));
    }
    if role.role_id.is_empty() {
        return Err(CoreError::bad_request("missing role_id"));
    }
    if let Some(owner) = name_for_role_id(b, storage, &role.role_id).await?
        && owner != role.name
    {
        return Err(CoreError::bad_request("role_id already in use"));
    }
    let salt = b.salt(storage).await?;
    let mut ops = Vec::with_capacity(3);
    if !previous_role_id.is_empty() && previous_role_id != role.role_id {
        ops.push(BatchOp::Delete {
            key: format!("{ROLE_ID_PREFIX}{}", salt.id(previous_role_id)),
        });
    }
    ops.push(BatchOp::Put {
        key: format!("{ROLE_PREFIX}{}", role.name),
        value: serde_json::to_vec(role).map_err(CoreError::internal)?,
    });
    ops.push(BatchOp::Put {
        key: format!("{ROLE_ID_PREFIX}{}", salt.id(&role.role_id)),
        value: serde_json::to_vec(&RoleIdEntry {
            name: role.name.clone(),
        })
        .map_err(CoreError::internal)?,
    });
    storage.batch(ops).await
}

/// `LIST role/` with Vault's `after` and `limit`.
pub(super) async fn list(ctx: &Ctx<'_>) -> Result<Option<Response>> {
    let keys = ctx.storage.list(ROLE_PREFIX).await?;
    Response::list(page(keys, ctx.fields))
}

/// Vault's `ListPage`: sorted keys after `after`, at most `limit` (≤ 0: all).
pub(super) fn page(mut keys: Vec<String>, f: &FieldData) -> Vec<String> {
    keys.sort();
    if let Some(after) = f.str("after").filter(|a| !a.is_empty()) {
        keys.retain(|k| k.as_str() > after);
    }
    if let Some(limit) = f.int("limit").filter(|l| *l > 0) {
        keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    keys
}

/// Validate CIDR blocks as Go's `net.ParseCIDR` (a prefix length is
/// required), keeping them as given.
pub(super) fn validate_cidr_blocks(what: &str, blocks: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks.iter().map(|b| b.trim()).filter(|b| !b.is_empty()) {
        if b.parse::<ipnet::IpNet>().is_err() {
            return Err(CoreError::bad_request(format!(
                "{what}: invalid CIDR address: {b}"
            )));
        }
        out.push(b.to_string());
    }
    Ok(out)
}

/// Seconds as Go's `time.Duration.String()`.
fn go_duration(secs: i64) -> String {
    crate::engines::kv::go_duration(secs)
}

/// A list that Go would show as `null` when it was never set.
fn list_or_null(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

/// The per-field sub-paths of a role.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    LocalSecretIds,
    Policies,
    BoundCidrList,
    SecretIdBoundCidrs,
    TokenBoundCidrs,
    BindSecretId,
    SecretIdNumUses,
    SecretIdTtl,
    Period,
    TokenNumUses,
    TokenTtl,
    TokenMaxTtl,
    RoleId,
}

impl Field {
    pub(super) fn of_route(route: usize) -> Field {
        match route {
            super::R_POLICIES => Field::Policies,
            super::R_BOUND_CIDR_LIST => Field::BoundCidrList,
            super::R_SECRET_ID_BOUND_CIDRS => Field::SecretIdBoundCidrs,
            super::R_TOKEN_BOUND_CIDRS => Field::TokenBoundCidrs,
            super::R_BIND_SECRET_ID => Field::BindSecretId,
            super::R_SECRET_ID_NUM_USES => Field::SecretIdNumUses,
            super::R_SECRET_ID_TTL => Field::SecretIdTtl,
            super::R_PERIOD => Field::Period,
            super::R_TOKEN_NUM_USES => Field::TokenNumUses,
            super::R_TOKEN_TTL => Field::TokenTtl,
            super::R_TOKEN_MAX_TTL => Field::TokenMaxTtl,
            super::R_ROLE_ID => Field::RoleId,
            _ => Field::LocalSecretIds,
        }
    }
}

/// Vault answers an update of a field of a role that does not exist with
/// `logical.ErrUnsupportedPath`.
fn unsupported_path() -> CoreError {
    CoreError::NotFound("unsupported path".into())
}

impl AppRoleBackend {
    /// `role/:name` create and update (Vault's `pathRoleCreateUpdate`).
    pub(super) async fn role_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        if name.len() > MAX_HMAC_INPUT {
            return Err(CoreError::bad_request(format!(
                "role_name is longer than maximum of {MAX_HMAC_INPUT} bytes"
            )));
        }
        let create = ctx.req.operation == Op::Create;
        let _g = self.role_lock(&name).write().await;
        let mut role = match load(ctx.storage, &name).await? {
            Some(r) => r,
            None if create => Role {
                name: name.clone(),
                hmac_key: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            },
            None => {
                return Err(CoreError::NotFound(format!(
                    "role name {name:?} doesn't exist"
                )));
            }
        };
        let mut warnings = Vec::new();

        // Vault's backwards-compatible spellings of the token type.
        let adjusted;
        let f = match ctx.fields.str("token_type") {
            Some(t @ ("default-service" | "default-batch")) => {
                let to = t.trim_start_matches("default-");
                warnings.push(format!("{t} has no useful meaning; adjusting to {to}"));
                let mut values = ctx.fields.raw().clone();
                values.insert("token_type".into(), json!(to));
                let captures = [("role_name".to_string(), name.clone())].into();
                adjusted = FieldData::from_parts(values, captures);
                &adjusted
            }
            _ => ctx.fields,
        };

        let mut token = role.token.clone();
        token.apply(f)?;
        role.token = token;

        if let Some(local) = f.bool("local_secret_ids") {
            if !create {
                return Err(CoreError::bad_request(
                    "local_secret_ids can only be modified during role creation",
                ));
            }
            if local {
                role.secret_id_prefix = SECRET_ID_LOCAL_PREFIX.into();
            }
        }
        if role.secret_id_prefix.is_empty() {
            role.secret_id_prefix = SECRET_ID_PREFIX.into();
        }

        let previous_role_id = role.role_id.clone();
        if f.raw().contains_key("role_id") {
            role.role_id = f.str("role_id").unwrap_or_default().to_string();
        } else if create {
            role.role_id = uuid::Uuid::new_v4().to_string();
        }
        if role.role_id.is_empty() {
            return Err(CoreError::bad_request(
                "invalid role_id supplied, or failed to generate a role_id",
            ));
        }

        match f.bool("bind_secret_id") {
            Some(v) => role.bind_secret_id = v,
            None if create => role.bind_secret_id = true,
            None => {}
        }

        if let Some(cidrs) = f
            .strings("secret_id_bound_cidrs")
            .or_else(|| f.strings("bound_cidr_list"))
        {
            role.secret_id_bound_cidrs =
                validate_cidr_blocks("failed to validate CIDR blocks", &cidrs)?;
        }

        if let Some(n) = f.int("secret_id_num_uses") {
            role.secret_id_num_uses = n;
        }
        if role.secret_id_num_uses < 0 {
            return Err(CoreError::bad_request(
                "secret_id_num_uses cannot be negative",
            ));
        }
        if let Some(ttl) = f.duration_secs("secret_id_ttl") {
            role.secret_id_ttl = ttl;
        }

        // Vault's tokenutil.UpgradeValue for the deprecated spellings.
        if f.has("token_policies") {
            role.policies.clear();
        } else if let Some(p) = f.strings("policies") {
            role.policies = sanitize_policies(p);
            role.token.token_policies = role.policies.clone();
        }
        if f.has("token_period") {
            role.period = 0;
        } else if let Some(p) = f.duration_secs("period") {
            role.period = p;
            role.token.token_period = p;
        }

        if role.period > self.max_lease_ttl {
            return Err(CoreError::bad_request(format!(
                "period of {:?} is greater than the backend's maximum lease TTL of {:?}",
                go_duration(role.period),
                go_duration(self.max_lease_ttl)
            )));
        }
        if role.token.token_max_ttl > self.max_lease_ttl {
            warnings.push(
                "token_max_ttl is greater than the backend mount's maximum TTL value; issued tokens' max TTL value will be truncated".into(),
            );
        }

        save(self, ctx.storage, &role, &previous_role_id).await?;
        Ok((!warnings.is_empty()).then(|| Response {
            warnings,
            ..Default::default()
        }))
    }

    /// `GET role/:name`.
    pub(super) async fn role_read(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).read().await;
        let Some(role) = load(ctx.storage, &name).await? else {
            return Ok(None);
        };
        let mut data = Map::new();
        data.insert("bind_secret_id".into(), json!(role.bind_secret_id));
        data.insert(
            "secret_id_bound_cidrs".into(),
            list_or_null(&role.secret_id_bound_cidrs),
        );
        data.insert("secret_id_num_uses".into(), json!(role.secret_id_num_uses));
        data.insert("secret_id_ttl".into(), json!(role.secret_id_ttl));
        data.insert(
            "local_secret_ids".into(),
            json!(role.secret_id_prefix == SECRET_ID_LOCAL_PREFIX),
        );
        role.login_token().populate(&mut data);
        if role.period != 0 {
            data.insert("period".into(), json!(role.period));
        }
        if !role.policies.is_empty() {
            data.insert("policies".into(), json!(role.policies));
        }
        let mut resp = Response::data(data);
        if !role.constrained() {
            resp.warnings.push(
                "Role does not have any constraints set on it. Updates to this role will require a constraint to be set".into(),
            );
        }
        Ok(Some(resp))
    }

    /// `DELETE role/:name`: its secret-ids (and their accessors) and its
    /// role_id index go with it, in one batch.
    pub(super) async fn role_delete(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).write().await;
        let Some(role) = load(ctx.storage, &name).await? else {
            return Ok(None);
        };
        let salt = self.salt(ctx.storage).await?;
        let mut ops = self.secret_id_flush_ops(ctx.storage, &role).await?;
        ops.push(BatchOp::Delete {
            key: format!("{ROLE_ID_PREFIX}{}", salt.id(&role.role_id)),
        });
        ops.push(BatchOp::Delete {
            key: format!("{ROLE_PREFIX}{}", role.name),
        });
        for chunk in ops.chunks(512) {
            ctx.storage.batch(chunk.to_vec()).await?;
        }
        Ok(None)
    }

    /// `POST role/:name/role-id`.
    pub(super) async fn role_id_write(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).write().await;
        let Some(mut role) = load(ctx.storage, &name).await? else {
            return Err(unsupported_path());
        };
        let previous = std::mem::take(&mut role.role_id);
        role.role_id = ctx.fields.str("role_id").unwrap_or_default().to_string();
        if role.role_id.is_empty() {
            return Err(CoreError::bad_request("missing role_id"));
        }
        save(self, ctx.storage, &role, &previous).await?;
        Ok(None)
    }

    /// `GET role/:name/<field>`.
    pub(super) async fn role_field_read(
        &self,
        ctx: &Ctx<'_>,
        field: Field,
    ) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).read().await;
        let Some(role) = load(ctx.storage, &name).await? else {
            return Ok(None);
        };
        let t = role.login_token();
        let mut warnings = Vec::new();
        let data = match field {
            Field::LocalSecretIds => json!({
                "local_secret_ids": role.secret_id_prefix == SECRET_ID_LOCAL_PREFIX
            }),
            Field::Policies => {
                let mut d = json!({ "token_policies": t.token_policies });
                if !role.policies.is_empty() {
                    d["policies"] = json!(role.policies);
                }
                d
            }
            Field::BoundCidrList => {
                warnings.push(
                    "The \"bound_cidr_list\" field is deprecated and will be removed. Please use \"secret_id_bound_cidrs\" instead.".to_string(),
                );
                json!({ "bound_cidr_list": list_or_null(&role.bound_cidr_list) })
            }
            Field::SecretIdBoundCidrs => {
                json!({ "secret_id_bound_cidrs": list_or_null(&role.secret_id_bound_cidrs) })
            }
            Field::TokenBoundCidrs => {
                json!({ "token_bound_cidrs": list_or_null(&t.token_bound_cidrs) })
            }
            Field::BindSecretId => json!({ "bind_secret_id": role.bind_secret_id }),
            Field::SecretIdNumUses => json!({ "secret_id_num_uses": role.secret_id_num_uses }),
            Field::SecretIdTtl => json!({ "secret_id_ttl": role.secret_id_ttl }),
            Field::Period => {
                let mut d = json!({ "token_period": t.token_period });
                if role.period > 0 {
                    d["period"] = json!(role.period);
                }
                d
            }
            Field::TokenNumUses => json!({ "token_num_uses": t.token_num_uses }),
            Field::TokenTtl => json!({ "token_ttl": t.token_ttl }),
            Field::TokenMaxTtl => json!({ "token_max_ttl": t.token_max_ttl }),
            Field::RoleId => json!({ "role_id": role.role_id }),
        };
        let mut resp = Response::data(data.as_object().cloned().unwrap_or_default());
        resp.warnings = warnings;
        Ok(Some(resp))
    }

    /// `POST role/:name/<field>`: each needs its field (Vault's
    /// "missing <field>") and keeps the role's constraints valid.
    pub(super) async fn role_field_write(
        &self,
        ctx: &Ctx<'_>,
        field: Field,
    ) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let f = ctx.fields;
        let _g = self.role_lock(&name).write().await;
        let Some(mut role) = load(ctx.storage, &name).await? else {
            return Err(unsupported_path());
        };
        let missing = |what: &str| CoreError::bad_request(format!("missing {what}"));
        match field {
            Field::Policies => match (f.strings("token_policies"), f.strings("policies")) {
                (Some(p), old) => {
                    role.token.token_policies = sanitize_policies(p);
                    role.policies = match old {
                        Some(_) => role.token.token_policies.clone(),
                        None => Vec::new(),
                    };
                }
                (None, Some(p)) => {
                    role.policies = sanitize_policies(p);
                    role.token.token_policies = role.policies.clone();
                }
                (None, None) => return Err(missing("token_policies")),
            },
            Field::BoundCidrList | Field::SecretIdBoundCidrs => {
                let key = if field == Field::BoundCidrList {
                    "bound_cidr_list"
                } else {
                    "secret_id_bound_cidrs"
                };
                if let Some(cidrs) = f.strings(key) {
                    if cidrs.is_empty() {
                        return Err(missing("bound_cidr_list"));
                    }
                    role.secret_id_bound_cidrs =
                        validate_cidr_blocks("failed to validate CIDR blocks", &cidrs)?;
                }
            }
            Field::TokenBoundCidrs => {
                if let Some(cidrs) = f.strings("token_bound_cidrs") {
                    role.token.token_bound_cidrs = parse_cidrs("token_bound_cidrs", &cidrs)
                        .map_err(|e| {
                            CoreError::bad_request(format!(
                                "failed to parse token_bound_cidrs: {e}"
                            ))
                        })?;
                }
            }
            Field::BindSecretId => {
                role.bind_secret_id = f
                    .bool("bind_secret_id")
                    .ok_or_else(|| missing("bind_secret_id"))?;
            }
            Field::SecretIdNumUses => {
                let n = f
                    .int("secret_id_num_uses")
                    .ok_or_else(|| missing("secret_id_num_uses"))?;
                if n < 0 {
                    return Err(CoreError::bad_request(
                        "secret_id_num_uses cannot be negative",
                    ));
                }
                role.secret_id_num_uses = n;
            }
            Field::SecretIdTtl => {
                role.secret_id_ttl = f
                    .duration_secs("secret_id_ttl")
                    .ok_or_else(|| missing("secret_id_ttl"))?;
            }
            Field::Period => {
                match (f.duration_secs("token_period"), f.duration_secs("period")) {
                    (Some(p), old) => {
                        role.token.token_period = p;
                        role.period = if old.is_some() { p } else { 0 };
                    }
                    (None, Some(p)) => {
                        role.period = p;
                        role.token.token_period = p;
                    }
                    (None, None) => return Err(missing("period")),
                }
                if role.token.token_period > self.max_lease_ttl {
                    return Err(CoreError::bad_request(format!(
                        "period of {:?} is greater than the backend's maximum lease TTL of {:?}",
                        go_duration(role.period),
                        go_duration(self.max_lease_ttl)
                    )));
                }
            }
            Field::TokenNumUses => {
                let n = f
                    .int("token_num_uses")
                    .ok_or_else(|| missing("token_num_uses"))?;
                if n < 0 {
                    return Err(CoreError::bad_request(
                        "'token_num_uses' cannot be negative",
                    ));
                }
                role.token.token_num_uses = n;
            }
            Field::TokenTtl => {
                let ttl = f
                    .duration_secs("token_ttl")
                    .ok_or_else(|| missing("token_ttl"))?;
                if role.token.token_max_ttl > 0 && ttl > role.token.token_max_ttl {
                    return Err(CoreError::bad_request(
                        "token_ttl should not be greater than token_max_ttl",
                    ));
                }
                role.token.token_ttl = ttl;
            }
            Field::TokenMaxTtl => {
                let max = f
                    .duration_secs("token_max_ttl")
                    .ok_or_else(|| missing("token_max_ttl"))?;
                if max > 0 && role.token.token_ttl > max {
                    return Err(CoreError::bad_request(
                        "token_max_ttl should be greater than or equal to token_ttl",
                    ));
                }
                role.token.token_max_ttl = max;
            }
            Field::RoleId | Field::LocalSecretIds => return Err(CoreError::UnsupportedOperation),
        }
        save(self, ctx.storage, &role, "").await?;
        Ok(None)
    }

    /// `DELETE role/:name/<field>`: back to the field's default.
    pub(super) async fn role_field_delete(
        &self,
        ctx: &Ctx<'_>,
        field: Field,
    ) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).write().await;
        let Some(mut role) = load(ctx.storage, &name).await? else {
            return Ok(None);
        };
        match field {
            Field::Policies => {
                role.token.token_policies.clear();
                role.policies.clear();
            }
            Field::BoundCidrList => role.bound_cidr_list.clear(),
            Field::SecretIdBoundCidrs => role.secret_id_bound_cidrs.clear(),
            Field::TokenBoundCidrs => role.token.token_bound_cidrs.clear(),
            Field::BindSecretId => role.bind_secret_id = true,
            Field::SecretIdNumUses => role.secret_id_num_uses = 0,
            Field::SecretIdTtl => role.secret_id_ttl = 0,
            Field::Period => {
                role.token.token_period = 0;
                role.period = 0;
            }
            Field::TokenNumUses => role.token.token_num_uses = 0,
            Field::TokenTtl => role.token.token_ttl = 0,
            Field::TokenMaxTtl => role.token.token_max_ttl = 0,
            Field::RoleId | Field::LocalSecretIds => return Err(CoreError::UnsupportedOperation),
        }
        save(self, ctx.storage, &role, "").await?;
        Ok(None)
    }

    /// The deletes that remove every secret-id of `role` and its accessor.
    async fn secret_id_flush_ops(
        &self,
        storage: &StorageView,
        role: &Role,
    ) -> Result<Vec<BatchOp>> {
        let role_hmac = super::create_hmac(&role.hmac_key, &role.name)?;
        let dir = format!("{}{role_hmac}/", role.secret_id_prefix);
        let mut ops = Vec::new();
        for hmac in storage.list(&dir).await? {
            let key = format!("{dir}{hmac}");
            if let Some(entry) = storage.get_json::<secret_id::SecretIdEntry>(&key).await? {
                ops.push(BatchOp::Delete {
                    key: self
                        .accessor_key(storage, &entry.secret_id_accessor, &role.secret_id_prefix)
                        .await?,
                });
            }
            ops.push(BatchOp::Delete { key });
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_need_a_prefix_length_as_go() {
        let ok =
            validate_cidr_blocks("x", &["10.0.0.0/8".into(), " 127.0.0.1/32 ".into()]).unwrap();
        assert_eq!(ok, vec!["10.0.0.0/8", "127.0.0.1/32"]);
        let e = validate_cidr_blocks("failed to validate CIDR blocks", &["127.0.0.1".into()])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to validate CIDR blocks: invalid CIDR address: 127.0.0.1"
        );
        assert!(validate_cidr_blocks("x", &["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn pages_follow_after_and_limit() {
        let f = FieldData::from_json(&json!({"after": "b", "limit": 1}));
        let keys = vec!["c".to_string(), "a".into(), "b".into(), "d".into()];
        assert_eq!(page(keys.clone(), &f), vec!["c"]);
        assert_eq!(page(keys, &FieldData::default()), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn deprecated_fields_stand_in_at_login() {
        let role = Role {
            policies: vec!["p".into()],
            period: 60,
            ..Default::default()
        };
        let t = role.login_token();
        assert_eq!(
            (t.token_policies, t.token_period),
            (vec!["p".to_string()], 60)
        );
    }
}
