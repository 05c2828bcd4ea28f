//! JWT roles (`role/:name`), Vault's `path_role.go`: what a token must say
//! to log in through the role (audiences, subject, bound claims), which
//! claim names the user and its groups, which claims become alias metadata,
//! and the `token_*` parameters of the tokens it issues.
//!
//! Roles are written by operators through the ACL'd `role/` paths and stored
//! as JSON at `role/<lower-cased name>` in the mount's storage (Vault's field
//! names, so a role reads back as Vault shows it); `login` reads them.
//! Browser-flow (`oidc`) roles may be stored, as Vault stores them, but
//! cannot log in here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims::bound_values;
use crate::auth::{TokenParams, parse_cidrs, sanitize_policies};
use crate::error::{CoreError, Result};
use crate::logical::{FieldData, Operation};
use crate::storage::StorageView;

pub const ROLE_PREFIX: &str = "role/";
const RESERVED_METADATA: &[&str] = &["role"];
const CALLBACK_MODES: &[&str] = &["device", "direct", "client"];
const OAUTH2_METADATA: &[&str] = &["id_token", "refresh_token", "access_token"];

/// A stored role (Vault's `jwtRole`, same JSON names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtRole {
    #[serde(flatten)]
    pub token: TokenParams,
    pub role_type: String,
    /// Seconds; 0 = the default (150), negative = none.
    pub expiration_leeway: i64,
    pub not_before_leeway: i64,
    /// Seconds; 0 = the default (60), negative = none.
    pub clock_skew_leeway: i64,
    pub bound_audiences: Option<Vec<String>>,
    pub bound_subject: String,
    pub bound_claims_type: String,
    pub bound_claims: Option<Map<String, Value>>,
    pub claim_mappings: Option<BTreeMap<String, String>>,
    pub oauth2_metadata: Option<Vec<String>>,
    pub user_claim: String,
    pub user_claim_json_pointer: bool,
    pub groups_claim: String,
    pub oidc_scopes: Option<Vec<String>>,
    pub allowed_redirect_uris: Option<Vec<String>>,
    pub callback_mode: String,
    pub poll_interval: i64,
    /// Accepted and shown; this server never logs tokens or claims.
    pub verbose_oidc_logging: bool,
    pub max_age: i64,
    pub token_policies_template_claims: bool,
    pub oidc_disable_confirmation: bool,
    // Deprecated spellings, kept so a read shows them as Vault does.
    pub policies: Vec<String>,
    pub num_uses: i64,
    pub ttl: i64,
    pub max_ttl: i64,
    pub period: i64,
    pub bound_cidrs: Vec<String>,
}

impl JwtRole {
    /// Vault's `role()` fix-ups of older entries.
    fn normalised(mut self) -> Self {
        if self.role_type.is_empty() {
            self.role_type = "jwt".into();
        }
        if self.bound_claims_type.is_empty() {
            self.bound_claims_type = "string".into();
        }
        self
    }

    pub fn uses_globs(&self) -> bool {
        self.bound_claims_type == "glob"
    }
}

pub async fn load(storage: &StorageView, name: &str) -> Result<Option<JwtRole>> {
    Ok(storage
        .get_json::<JwtRole>(&format!("{ROLE_PREFIX}{name}"))
        .await?
        .map(JwtRole::normalised))
}

/// A signed duration field (`-1` disables a leeway): seconds as a number,
/// or a Go duration string with an optional leading `-`.
fn signed_duration(f: &FieldData, name: &str) -> Result<Option<i64>> {
    let bad = |shown: &str| {
        CoreError::bad_request(format!(
            "error converting input {shown} for field \"{name}\": expected signed duration"
        ))
    };
    match f.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| bad("number")),
        Some(Value::String(s)) => {
            let s = s.trim();
            let (neg, rest) = match s.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, s),
            };
            let v = crate::logical::parse_duration(rest).ok_or_else(|| bad("string"))?;
            Ok(Some(if neg { -v } else { v }))
        }
        Some(_) => Err(bad("value")),
    }
}

/// Vault's `tokenutil.UpgradeValue` for one deprecated field: the new field
/// wins (and the old one follows it, or is cleared); the old one alone sets
/// both.
fn upgrade<T: Clone + Default>(
    f: &FieldData,
    old_key: &str,
    new_key: &str,
    old_val: Option<T>,
    old: &mut T,
    new: &mut T,
) {
    if f.has(new_key) {
        *old = if f.has(old_key) {
            new.clone()
        } else {
            T::default()
        };
    } else if let Some(v) = old_val {
        *old = v.clone();
        *new = v;
    }
}

/// Create or update a role from a request, as Vault's
/// `pathRoleCreateUpdate`; returns the warnings to show.
pub fn apply(
    existing: Option<JwtRole>,
    f: &FieldData,
    op: Operation,
) -> Result<(JwtRole, Vec<String>)> {
    let mut role = match existing {
        Some(r) => r,
        None if op == Operation::Update => {
            return Err(CoreError::bad_request(
                "role entry not found during update operation",
            ));
        }
        None => JwtRole::default(),
    };
    let bad = |m: String| Err(CoreError::bad_request(m));

    let role_type = f.str("role_type").unwrap_or("");
    let role_type = if role_type.is_empty() {
        "oidc"
    } else {
        role_type
    };
    if role_type != "jwt" && role_type != "oidc" {
        return bad(format!("invalid 'role_type': {role_type}"));
    }
    role.role_type = role_type.to_string();

    role.token.apply(f)?;
    // Deprecated spellings (`policies` is handled by TokenParams::apply for
    // the token field; here the old field itself is kept or cleared).
    let policies = f.strings("policies").map(sanitize_policies);
    let mut tp = role.token.token_policies.clone();
    upgrade(
        f,
        "policies",
        "token_policies",
        policies,
        &mut role.policies,
        &mut tp,
    );
    role.token.token_policies = tp;
    let cidrs = match f.strings("bound_cidrs") {
        Some(v) => Some(parse_cidrs("bound_cidrs", &v)?),
        None => None,
    };
    let mut tc = role.token.token_bound_cidrs.clone();
    upgrade(
        f,
        "bound_cidrs",
        "token_bound_cidrs",
        cidrs,
        &mut role.bound_cidrs,
        &mut tc,
    );
    role.token.token_bound_cidrs = tc;
    if let Some(n) = f.int("num_uses")
        && n < 0
    {
        return bad("num_uses cannot be negative".into());
    }
    let mut v = role.token.token_num_uses;
    upgrade(
        f,
        "num_uses",
        "token_num_uses",
        f.int("num_uses"),
        &mut role.num_uses,
        &mut v,
    );
    role.token.token_num_uses = v;
    let mut v = role.token.token_ttl;
    upgrade(
        f,
        "ttl",
        "token_ttl",
        f.duration_secs("ttl"),
        &mut role.ttl,
        &mut v,
    );
    role.token.token_ttl = v;
    let mut v = role.token.token_max_ttl;
    upgrade(
        f,
        "max_ttl",
        "token_max_ttl",
        f.duration_secs("max_ttl"),
        &mut role.max_ttl,
        &mut v,
    );
    role.token.token_max_ttl = v;
    let mut v = role.token.token_period;
    upgrade(
        f,
        "period",
        "token_period",
        f.duration_secs("period"),
        &mut role.period,
        &mut v,
    );
    role.token.token_period = v;

    if let Some(v) = signed_duration(f, "expiration_leeway")? {
        role.expiration_leeway = v;
    }
    if let Some(v) = signed_duration(f, "not_before_leeway")? {
        role.not_before_leeway = v;
    }
    if let Some(v) = signed_duration(f, "clock_skew_leeway")? {
        role.clock_skew_leeway = v;
    }
    if let Some(v) = f.strings("bound_audiences") {
        role.bound_audiences = Some(v);
    }
    if let Some(v) = f.str("bound_subject") {
        role.bound_subject = v.to_string();
    }
    if let Some(v) = f.bool("verbose_oidc_logging") {
        role.verbose_oidc_logging = v;
    }
    if let Some(v) = f.duration_secs("max_age") {
        role.max_age = v;
    }
    if let Some(v) = f.bool("token_policies_template_claims") {
        if v {
            return bad("token_policies_template_claims is not supported by this server".into());
        }
        role.token_policies_template_claims = v;
    }

    let claims_type = f.str("bound_claims_type").unwrap_or("string");
    let claims_type = if claims_type.is_empty() {
        "string"
    } else {
        claims_type
    };
    match claims_type {
        "string" | "glob" => role.bound_claims_type = claims_type.to_string(),
        other => return bad(format!("invalid 'bound_claims_type': {other}")),
    }
    if let Some(bound) = f.map("bound_claims") {
        for (_, values) in bound {
            let Some(list) = bound_values(values) else {
                return bad(format!(
                    "claim is not a string or list: {}",
                    super::claims::show(values)
                ));
            };
            if claims_type == "glob" {
                for v in list {
                    if !v.is_string() {
                        return bad(format!("claim is not a string: {}", super::claims::show(v)));
                    }
                }
            }
        }
        role.bound_claims = Some(bound.clone());
    }
    if let Some(mappings) = f.string_map("claim_mappings") {
        let mut targets = std::collections::BTreeSet::new();
        for target in mappings.values() {
            if RESERVED_METADATA.contains(&target.as_str()) {
                return bad(format!(
                    "metadata key {target:?} is reserved and may not be a mapping destination"
                ));
            }
            if !targets.insert(target.as_str()) {
                return bad(format!(
                    "multiple keys are mapped to metadata key {target:?}"
                ));
            }
        }
        role.claim_mappings = Some(mappings);
    }
    if let Some(md) = f.strings("oauth2_metadata") {
        if let Some(bad_name) = md.iter().find(|m| !OAUTH2_METADATA.contains(&m.as_str())) {
            return bad(format!("Unrecognized oauth2 metadata name {bad_name}"));
        }
        role.oauth2_metadata = Some(md);
    }
    if let Some(v) = f.str("user_claim") {
        role.user_claim = v.to_string();
    }
    if role.user_claim.is_empty() {
        return bad("a user claim must be defined on the role".into());
    }
    if let Some(v) = f.bool("user_claim_json_pointer") {
        role.user_claim_json_pointer = v;
    }
    if let Some(v) = f.str("groups_claim") {
        role.groups_claim = v.to_string();
    }
    if let Some(v) = f.strings("oidc_scopes") {
        role.oidc_scopes = Some(v);
    }
    if let Some(v) = f.strings("allowed_redirect_uris") {
        role.allowed_redirect_uris = Some(v);
    }
    if let Some(v) = f.int("poll_interval") {
        role.poll_interval = v;
    }
    let mode = f.str("callback_mode").unwrap_or("client");
    if !CALLBACK_MODES.contains(&mode) {
        return bad(format!("invalid 'callback_mode': {mode}"));
    }
    role.callback_mode = mode.to_string();
    role.oidc_disable_confirmation = f.bool("oidc_disable_confirmation").unwrap_or(false);

    if role.role_type == "oidc"
        && role
            .allowed_redirect_uris
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        return bad(
            "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified.".into(),
        );
    }
    if role.role_type != "oidc"
        && role.bound_audiences.as_ref().is_none_or(Vec::is_empty)
        && role.token.token_bound_cidrs.is_empty()
        && role.bound_subject.is_empty()
        && role.bound_claims.as_ref().is_none_or(Map::is_empty)
    {
        return bad("must have at least one bound constraint when creating/updating a role".into());
    }
    if role.token.token_max_ttl > 0 && role.token.token_ttl > role.token.token_max_ttl {
        return bad("ttl should not be greater than max ttl".into());
    }
    let mut warnings = Vec::new();
    if role.verbose_oidc_logging {
        warnings.push(
            "verbose_oidc_logging has been enabled for this role. This is not recommended in \
             production since sensitive information may be present in OIDC responses."
                .to_string(),
        );
    }
    Ok((role, warnings))
}

/// A role as `role/:name` reads it.
pub fn to_json(r: &JwtRole) -> Map<String, Value> {
    let list = |v: &Option<Vec<String>>| v.clone().map_or(Value::Null, Value::from);
    let mut d = Map::new();
    d.insert("role_type".into(), r.role_type.clone().into());
    d.insert("expiration_leeway".into(), r.expiration_leeway.into());
    d.insert("not_before_leeway".into(), r.not_before_leeway.into());
    d.insert("clock_skew_leeway".into(), r.clock_skew_leeway.into());
    d.insert("bound_audiences".into(), list(&r.bound_audiences));
    d.insert("bound_subject".into(), r.bound_subject.clone().into());
    d.insert(
        "bound_claims_type".into(),
        r.bound_claims_type.clone().into(),
    );
    d.insert(
        "bound_claims".into(),
        r.bound_claims.clone().map_or(Value::Null, Value::Object),
    );
    d.insert(
        "claim_mappings".into(),
        r.claim_mappings.as_ref().map_or(Value::Null, |m| {
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect(),
            )
        }),
    );
    d.insert("oauth2_metadata".into(), list(&r.oauth2_metadata));
    d.insert("user_claim".into(), r.user_claim.clone().into());
    d.insert(
        "user_claim_json_pointer".into(),
        r.user_claim_json_pointer.into(),
    );
    d.insert("groups_claim".into(), r.groups_claim.clone().into());
    d.insert(
        "allowed_redirect_uris".into(),
        list(&r.allowed_redirect_uris),
    );
    let mode = if r.callback_mode.is_empty() {
        "client"
    } else {
        &r.callback_mode
    };
    d.insert("callback_mode".into(), mode.into());
    d.insert("oidc_scopes".into(), list(&r.oidc_scopes));
    d.insert("verbose_oidc_logging".into(), r.verbose_oidc_logging.into());
    d.insert("max_age".into(), r.max_age.into());
    d.insert(
        "token_policies_template_claims".into(),
        r.token_policies_template_claims.into(),
    );
    d.insert(
        "oidc_disable_confirmation".into(),
        r.oidc_disable_confirmation.into(),
    );
    r.token.populate(&mut d);
    // OpenBao 2.7's tokenutil field; this server has no strict IP binding.
    d.entry("token_strictly_bind_ip")
        .or_insert(Value::Bool(false));
    if r.poll_interval > 0 {
        d.insert("poll_interval".into(), r.poll_interval.into());
    }
    if !r.policies.is_empty() {
        d.insert("policies".into(), d["token_policies"].clone());
    }
    if !r.bound_cidrs.is_empty() {
        d.insert("bound_cidrs".into(), d["token_bound_cidrs"].clone());
    }
    if r.ttl > 0 {
        d.insert("ttl".into(), r.ttl.into());
    }
    if r.max_ttl > 0 {
        d.insert("max_ttl".into(), r.max_ttl.into());
    }
    if r.period > 0 {
        d.insert("period".into(), r.period.into());
    }
    if r.num_uses > 0 {
        d.insert("num_uses".into(), r.num_uses.into());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> FieldData {
        FieldData::from_json(&v)
    }

    fn write(v: Value) -> Result<JwtRole> {
        apply(None, &fields(v), Operation::Create).map(|(r, _)| r)
    }

    fn err(v: Value) -> String {
        write(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn role_validation_follows_vault() {
        assert_eq!(
            err(json!({"role_type": "jwt", "bound_subject": "x"})),
            "a user claim must be defined on the role"
        );
        assert_eq!(
            err(json!({"role_type": "jwt", "user_claim": "sub"})),
            "must have at least one bound constraint when creating/updating a role"
        );
        assert!(err(json!({"user_claim": "sub"})).contains("allowed_redirect_uris"));
        assert_eq!(
            err(json!({"role_type": "xx", "user_claim": "sub"})),
            "invalid 'role_type': xx"
        );
        assert_eq!(
            err(
                json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "bound_claims_type": "regex"})
            ),
            "invalid 'bound_claims_type': regex"
        );
        assert_eq!(
            err(
                json!({"role_type": "jwt", "user_claim": "sub", "bound_claims_type": "glob", "bound_claims": {"a": 1}})
            ),
            "claim is not a string: 1"
        );
        assert!(err(json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "claim_mappings": {"a": "role"}})).contains("reserved"));
        assert!(err(json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "claim_mappings": {"a": "m", "b": "m"}})).contains("multiple keys"));
        assert!(err(json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "token_bound_cidrs": ["10.0.0.0/33"]})).contains("CIDR"));
        assert!(err(json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "callback_mode": "x"})).contains("callback_mode"));
    }

    #[test]
    fn role_fields_and_deprecated_spellings() {
        let r = write(json!({
            "role_type": "jwt", "user_claim": "user_login", "bound_audiences": ["a", "b"],
            "bound_claims": {"project_path": "g/p"}, "policies": ["ci"], "ttl": 600,
            "clock_skew_leeway": -1, "expiration_leeway": "-1", "not_before_leeway": "1m"
        }))
        .unwrap();
        assert_eq!(r.token.token_policies, vec!["ci"]);
        assert_eq!(r.policies, vec!["ci"]);
        assert_eq!((r.token.token_ttl, r.ttl), (600, 600));
        assert_eq!(
            (
                r.clock_skew_leeway,
                r.expiration_leeway,
                r.not_before_leeway
            ),
            (-1, -1, 60)
        );
        let d = to_json(&r);
        assert_eq!(d["bound_audiences"], json!(["a", "b"]));
        assert_eq!(d["policies"], json!(["ci"]));
        assert_eq!(d["oidc_scopes"], Value::Null);
        assert_eq!(d["callback_mode"], json!("client"));
        // An update that names only the new field clears the old one.
        let (r, _) = apply(
            Some(r),
            &fields(json!({"role_type": "jwt", "token_ttl": 60})),
            Operation::Update,
        )
        .unwrap();
        assert_eq!((r.token.token_ttl, r.ttl), (60, 0));
        // An update without role_type makes it an oidc role, as in Vault.
        assert!(apply(Some(r), &fields(json!({})), Operation::Update).is_err());
    }
}
