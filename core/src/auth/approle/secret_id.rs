//! AppRole secret-ids: issuing (`role/:name/secret-id`, `custom-secret-id`),
//! listing accessors, lookup and destroy by secret-id or accessor, and the
//! tidy that removes expired ones — Vault's `validation.go`,
//! `path_role.go` and `path_tidy_user_id.go`.
//!
//! A secret-id arrives in a request (custom) or is drawn here (a UUID), is
//! returned once to the caller, and is stored only as
//! `hmac(role key, secret_id)`: its entry at
//! `<prefix><hmac(role name)>/<hmac(secret_id)>` and its accessor index at
//! `accessor/<salted accessor>` are written and deleted together in one
//! batch. Changes to one secret-id (issue, spend a use, destroy, tidy) hold
//! its lock shard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::role::{self, Role, SECRET_ID_LOCAL_PREFIX, SECRET_ID_PREFIX, validate_cidr_blocks};
use super::{AppRoleBackend, create_hmac, role_name};
use crate::auth::parse_cidrs;
use crate::engines::kv::fmt_time;
use crate::error::{CoreError, Result};
use crate::logical::{Ctx, Response, Secret};
use crate::storage::{BatchOp, StorageView};

const ACCESSOR_PREFIX: &str = "accessor/";
const ACCESSOR_LOCAL_PREFIX: &str = "accessor_local/";
/// Go's zero `time.Time`, as Vault shows a secret-id that never expires.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A secret-id's stored properties (Vault's `secretIDStorageEntry`). Times
/// are unix nanoseconds; 0 is "never" for the expiration.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct SecretIdEntry {
    pub secret_id_accessor: String,
    pub secret_id_num_uses: i64,
    pub secret_id_ttl: i64,
    pub creation_time: i64,
    pub expiration_time: i64,
    pub last_updated_time: i64,
    pub metadata: BTreeMap<String, String>,
    pub cidr_list: Vec<String>,
    pub token_bound_cidrs: Vec<String>,
}

impl SecretIdEntry {
    pub(super) fn expired(&self, now_ns: i64) -> bool {
        self.expiration_time != 0 && now_ns > self.expiration_time
    }

    /// Vault's `ToResponseData`.
    fn response(&self) -> Response {
        let time = |ns: i64| {
            if ns == 0 {
                GO_ZERO_TIME.to_string()
            } else {
                fmt_time(ns)
            }
        };
        let data = json!({
            "secret_id_accessor": self.secret_id_accessor,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_ttl": self.secret_id_ttl,
            "creation_time": time(self.creation_time),
            "expiration_time": time(self.expiration_time),
            "last_updated_time": time(self.last_updated_time),
            "metadata": self.metadata,
            "cidr_list": self.cidr_list,
            "token_bound_cidrs": self.token_bound_cidrs,
        });
        Response::data(data.as_object().cloned().unwrap_or_default())
    }
}

#[derive(Serialize, Deserialize)]
struct AccessorEntry {
    secret_id_hmac: String,
}

pub(super) fn now_nanos() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn accessor_prefix(secret_id_prefix: &str) -> &'static str {
    if secret_id_prefix == SECRET_ID_LOCAL_PREFIX {
        ACCESSOR_LOCAL_PREFIX
    } else {
        ACCESSOR_PREFIX
    }
}

/// Where a secret-id's entry lives.
pub(super) fn entry_key(role: &Role, role_hmac: &str, secret_hmac: &str) -> String {
    format!("{}{role_hmac}/{secret_hmac}", role.secret_id_prefix)
}

/// Vault's `strutil.ParseArbitraryKeyValues`: a JSON object (optionally
/// base64'd), else comma-separated `key=value` pairs (lower-cased, as
/// Vault's parser does).
fn parse_metadata(input: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    use base64::Engine;
    let input = input.trim();
    let mut out = BTreeMap::new();
    if input.is_empty() {
        return Ok(out);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(input)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let input = decoded.as_deref().unwrap_or(input);
    match serde_json::from_str::<BTreeMap<String, String>>(input) {
        Ok(m) => out = m,
        Err(_) => {
            let mut pairs: Vec<String> = input
                .split(',')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect();
            pairs.sort();
            pairs.dedup();
            for kv in pairs {
                let shards: Vec<&str> = kv.split('=').collect();
                if shards.len() != 2 {
                    return Err("failed to parse the input: invalid <key,value> format".into());
                }
                let (k, v) = (shards[0].trim(), shards[1].trim());
                if k.is_empty() || v.is_empty() {
                    return Err(format!(
                        "failed to parse the input: invalid <key,value> pair: key: {k:?} value: {v:?}"
                    ));
                }
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    if let Some((k, _)) = out.iter().find(|(k, v)| !k.is_empty() && v.is_empty()) {
        return Err(format!("invalid value for key {k:?}"));
    }
    Ok(out)
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// Vault's `verifyCIDRRoleSecretIDSubset`: every block on the secret-id
/// lies within one of the role's (when the role has any).
pub(super) fn verify_cidr_subset(secret_cidrs: &[String], role_cidrs: &[String]) -> Result<()> {
    if secret_cidrs.is_empty() || role_cidrs.is_empty() {
        return Ok(());
    }
    let parse = |s: &str| -> Option<ipnet::IpNet> {
        let s = s.trim();
        if s.contains('/') {
            s.parse().ok()
        } else {
            s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
        }
    };
    let fail = || {
        CoreError::bad_request(format!(
            "failed to verify subset relationship between CIDR blocks on the role {} and CIDR blocks on the secret ID {}",
            go_quoted_list(role_cidrs),
            go_quoted_list(secret_cidrs)
        ))
    };
    let outer: Vec<ipnet::IpNet> = role_cidrs
        .iter()
        .map(|c| parse(c).ok_or_else(fail))
        .collect::<Result<_>>()?;
    for inner in secret_cidrs {
        let inner = parse(inner).ok_or_else(fail)?;
        let inside = outer
            .iter()
            .any(|o| o.prefix_len() <= inner.prefix_len() && o.contains(&inner.network()));
        if !inside {
            return Err(fail());
        }
    }
    Ok(())
}

/// Whether `addr` lies in one of the (Go `ParseCIDR`-valid) `cidrs`.
pub(super) fn addr_in_blocks(addr: std::net::IpAddr, cidrs: &[String]) -> bool {
    cidrs
        .iter()
        .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&addr))
}

impl AppRoleBackend {
    /// Vault's `deriveSecretIDTTL`: capped by the mount's maximum lease TTL.
    fn derive_ttl(&self, ttl: i64) -> i64 {
        if ttl < 0 || ttl > self.max_lease_ttl {
            self.max_lease_ttl
        } else {
            ttl
        }
    }

    /// The storage key of an accessor's index entry.
    pub(super) async fn accessor_key(
        &self,
        storage: &StorageView,
        accessor: &str,
        secret_id_prefix: &str,
    ) -> Result<String> {
        let salt = self.salt(storage).await?;
        Ok(format!(
            "{}{}",
            accessor_prefix(secret_id_prefix),
            salt.id(accessor)
        ))
    }

    async fn accessor_entry(
        &self,
        storage: &StorageView,
        accessor: &str,
        secret_id_prefix: &str,
    ) -> Result<Option<AccessorEntry>> {
        if accessor.is_empty() {
            return Ok(None);
        }
        let key = self
            .accessor_key(storage, accessor, secret_id_prefix)
            .await?;
        storage.get_json(&key).await
    }

    /// The role a management request names; Vault answers 500 "role does
    /// not exist" for an unknown one here, this server a 400.
    async fn role_for(&self, ctx: &Ctx<'_>) -> Result<Role> {
        let name = role_name(ctx)?;
        role::load(ctx.storage, &name)
            .await?
            .ok_or_else(|| CoreError::bad_request(format!("role {name:?} does not exist")))
    }

    /// Generate (`role/:name/secret-id`) or assign (`custom-secret-id`) a
    /// secret-id (Vault's `handleRoleSecretIDCommon`).
    pub(super) async fn secret_id_issue(
        &self,
        ctx: &Ctx<'_>,
        secret_id: Secret,
    ) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        if secret_id.is_empty() {
            return Err(CoreError::bad_request("missing secret_id"));
        }
        let f = ctx.fields;
        let _g = self.role_lock(&name).read().await;
        let Some(role) = role::load(ctx.storage, &name).await? else {
            return Err(CoreError::NotFound(format!("role {name:?} does not exist")));
        };
        if !role.bind_secret_id {
            return Err(CoreError::bad_request(
                "bind_secret_id is not set on the role",
            ));
        }

        let cidr_list = validate_cidr_blocks(
            "failed to validate CIDR blocks",
            &f.strings("cidr_list").unwrap_or_default(),
        )?;
        verify_cidr_subset(&cidr_list, &role.secret_id_bound_cidrs)?;
        let token_cidrs = validate_cidr_blocks(
            "failed to validate token CIDR blocks",
            &f.strings("token_bound_cidrs").unwrap_or_default(),
        )?;
        verify_cidr_subset(&token_cidrs, &role.token.token_bound_cidrs)?;

        let num_uses = match f.int("num_uses") {
            Some(n) if n < 0 => {
                return Err(CoreError::bad_request("num_uses cannot be negative"));
            }
            Some(n) if role.secret_id_num_uses > 0 && (n == 0 || n > role.secret_id_num_uses) => {
                return Err(CoreError::bad_request(
                    "num_uses cannot be higher than the role's secret_id_num_uses",
                ));
            }
            Some(n) => n,
            None => role.secret_id_num_uses,
        };
        let ttl = match f.duration_secs("ttl") {
            Some(t) if role.secret_id_ttl > 0 && (t == 0 || t > role.secret_id_ttl) => {
                return Err(CoreError::bad_request(
                    "ttl cannot be longer than the role's secret_id_ttl",
                ));
            }
            Some(t) => t,
            None => role.secret_id_ttl,
        };
        let metadata = parse_metadata(f.str("metadata").unwrap_or_default())
            .map_err(|e| CoreError::bad_request(format!("failed to parse metadata: {e}")))?;

        let secret_hmac = create_hmac(&role.hmac_key, secret_id.expose()).map_err(|e| {
            CoreError::bad_request(format!(
                "failed to store secret_id: failed to create HMAC of secret ID: {e}"
            ))
        })?;
        let role_hmac = create_hmac(&role.hmac_key, &role.name)?;
        let key = entry_key(&role, &role_hmac, &secret_hmac);

        let _s = self.secret_lock(&secret_hmac).lock().await;
        if ctx.storage.get(&key).await?.is_some() {
            return Err(CoreError::bad_request(
                "failed to store secret_id: SecretID is already registered",
            ));
        }
        let now = now_nanos();
        let derived = self.derive_ttl(ttl);
        let entry = SecretIdEntry {
            secret_id_accessor: uuid::Uuid::new_v4().to_string(),
            secret_id_num_uses: num_uses,
            secret_id_ttl: ttl,
            creation_time: now,
            expiration_time: if derived != 0 {
                now.saturating_add(derived.saturating_mul(1_000_000_000))
            } else {
                0
            },
            last_updated_time: now,
            metadata,
            cidr_list,
            token_bound_cidrs: token_cidrs,
        };
        let accessor_key = self
            .accessor_key(
                ctx.storage,
                &entry.secret_id_accessor,
                &role.secret_id_prefix,
            )
            .await?;
        ctx.storage
            .batch(vec![
                BatchOp::Put {
                    key: accessor_key,
                    value: serde_json::to_vec(&AccessorEntry {
                        secret_id_hmac: secret_hmac,
                    })
                    .map_err(CoreError::internal)?,
                },
                BatchOp::Put {
                    key,
                    value: serde_json::to_vec(&entry).map_err(CoreError::internal)?,
                },
            ])
            .await?;
        let data = json!({
            "secret_id": secret_id.expose(),
            "secret_id_accessor": entry.secret_id_accessor,
            "secret_id_ttl": derived,
            "secret_id_num_uses": entry.secret_id_num_uses,
        });
        Ok(Some(Response::data(
            data.as_object().cloned().unwrap_or_default(),
        )))
    }

    /// `LIST role/:name/secret-id`: the accessors of the role's secret-ids.
    pub(super) async fn secret_id_list(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let name = role_name(ctx)?;
        let _g = self.role_lock(&name).read().await;
        let Some(role) = role::load(ctx.storage, &name).await? else {
            return Err(CoreError::bad_request(format!(
                "role {name:?} does not exist"
            )));
        };
        let role_hmac = create_hmac(&role.hmac_key, &role.name)?;
        let dir = format!("{}{role_hmac}/", role.secret_id_prefix);
        let hmacs = role::page(ctx.storage.list(&dir).await?, ctx.fields);
        let mut accessors = Vec::with_capacity(hmacs.len());
        for h in hmacs.iter().filter(|h| !h.is_empty()) {
            let entry: Option<SecretIdEntry> = ctx.storage.get_json(&format!("{dir}{h}")).await?;
            match entry {
                Some(e) => accessors.push(e.secret_id_accessor),
                None => {
                    return Err(CoreError::internal(
                        "storage entry for SecretID is present but no content found at the index",
                    ));
                }
            }
        }
        Response::list(accessors)
    }

    /// The HMACs of a secret-id given in the request, for `role`.
    fn hmacs_of(role: &Role, secret_id: &str) -> Result<(String, String)> {
        let secret_hmac = create_hmac(&role.hmac_key, secret_id).map_err(|e| {
            CoreError::bad_request(format!("failed to create HMAC of secret_id: {e}"))
        })?;
        Ok((create_hmac(&role.hmac_key, &role.name)?, secret_hmac))
    }

    /// `role/:name/secret-id/lookup`.
    pub(super) async fn secret_id_lookup(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        role_name(ctx)?;
        let secret_id = Secret::new(ctx.fields.str("secret_id").unwrap_or_default());
        if secret_id.is_empty() {
            return Err(CoreError::bad_request("missing secret_id"));
        }
        let role = self.role_for(ctx).await?;
        let (role_hmac, secret_hmac) = Self::hmacs_of(&role, secret_id.expose())?;
        let key = entry_key(&role, &role_hmac, &secret_hmac);
        let _s = self.secret_lock(&secret_hmac).lock().await;
        let Some(entry) = ctx.storage.get_json::<SecretIdEntry>(&key).await? else {
            return Ok(None);
        };
        if self
            .accessor_entry(
                ctx.storage,
                &entry.secret_id_accessor,
                &role.secret_id_prefix,
            )
            .await?
            .is_none()
        {
            ctx.storage.delete(&key).await?;
            return Err(CoreError::bad_request("invalid secret id"));
        }
        Ok(Some(entry.response()))
    }

    /// `role/:name/secret-id/destroy`.
    pub(super) async fn secret_id_destroy(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        role_name(ctx)?;
        let secret_id = Secret::new(ctx.fields.str("secret_id").unwrap_or_default());
        if secret_id.is_empty() {
            return Err(CoreError::bad_request("missing secret_id"));
        }
        let role = self.role_for(ctx).await?;
        let (role_hmac, secret_hmac) = Self::hmacs_of(&role, secret_id.expose())?;
        let key = entry_key(&role, &role_hmac, &secret_hmac);
        let _s = self.secret_lock(&secret_hmac).lock().await;
        let Some(entry) = ctx.storage.get_json::<SecretIdEntry>(&key).await? else {
            return Ok(None);
        };
        self.delete_secret_id(ctx.storage, &role, &key, &entry)
            .await?;
        Ok(None)
    }

    /// Delete a secret-id's entry and its accessor index together.
    async fn delete_secret_id(
        &self,
        storage: &StorageView,
        role: &Role,
        key: &str,
        entry: &SecretIdEntry,
    ) -> Result<()> {
        let accessor_key = self
            .accessor_key(storage, &entry.secret_id_accessor, &role.secret_id_prefix)
            .await?;
        storage
            .batch(vec![
                BatchOp::Delete { key: accessor_key },
                BatchOp::Delete {
                    key: key.to_string(),
                },
            ])
            .await
    }

    /// `role/:name/secret-id-accessor/lookup`.
    pub(super) async fn accessor_lookup(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        role_name(ctx)?;
        let accessor = ctx.fields.str("secret_id_accessor").unwrap_or_default();
        if accessor.is_empty() {
            return Err(CoreError::bad_request("missing secret_id_accessor"));
        }
        let role = self.role_for(ctx).await?;
        let Some(index) = self
            .accessor_entry(ctx.storage, accessor, &role.secret_id_prefix)
            .await?
        else {
            // Vault answers this one as an error response with a 404
            // status: the envelope, with the error inside `data`.
            let msg = format!("failed to find accessor entry for secret_id_accessor: {accessor:?}");
            let mut resp = Response::data(
                json!({ "error": msg })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            resp.status = Some(404);
            return Ok(Some(resp));
        };
        let role_hmac = create_hmac(&role.hmac_key, &role.name)?;
        let key = entry_key(&role, &role_hmac, &index.secret_id_hmac);
        Ok(ctx
            .storage
            .get_json::<SecretIdEntry>(&key)
            .await?
            .map(|e| e.response()))
    }

    /// `role/:name/secret-id-accessor/destroy`.
    pub(super) async fn accessor_destroy(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        role_name(ctx)?;
        let accessor = ctx.fields.str("secret_id_accessor").unwrap_or_default();
        if accessor.is_empty() {
            return Err(CoreError::bad_request("missing secret_id_accessor"));
        }
        let role = self.role_for(ctx).await?;
        let Some(index) = self
            .accessor_entry(ctx.storage, accessor, &role.secret_id_prefix)
            .await?
        else {
            return Err(CoreError::NotFound(format!(
                "failed to find accessor entry for secret_id_accessor: {accessor:?}"
            )));
        };
        let role_hmac = create_hmac(&role.hmac_key, &role.name)?;
        let key = entry_key(&role, &role_hmac, &index.secret_id_hmac);
        let _s = self.secret_lock(&index.secret_id_hmac).lock().await;
        let Some(entry) = ctx.storage.get_json::<SecretIdEntry>(&key).await? else {
            return Err(CoreError::Forbidden("invalid secret id accessor".into()));
        };
        self.delete_secret_id(ctx.storage, &role, &key, &entry)
            .await?;
        Ok(None)
    }

    /// Remove expired secret-ids, secret-ids whose accessor index is gone,
    /// and accessor indexes whose secret-id is gone (Vault's
    /// `tidySecretIDinternal`). Returns how many entries were deleted.
    pub(super) async fn tidy(&self, storage: &StorageView, now_ns: i64) -> Result<usize> {
        let mut removed = 0;
        for (secret_prefix, accessor_prefix) in [
            (SECRET_ID_PREFIX, ACCESSOR_PREFIX),
            (SECRET_ID_LOCAL_PREFIX, ACCESSOR_LOCAL_PREFIX),
        ] {
            let salt = self.salt(storage).await?;
            // Accessor index: salted accessor -> secret-id HMAC.
            let mut accessors = BTreeMap::new();
            for salted in storage.list(accessor_prefix).await? {
                if let Some(a) = storage
                    .get_json::<AccessorEntry>(&format!("{accessor_prefix}{salted}"))
                    .await?
                {
                    accessors.insert(salted, a.secret_id_hmac);
                }
            }
            let mut keep = std::collections::BTreeSet::new();
            let mut live_hmacs = std::collections::BTreeSet::new();
            for role_dir in storage.list(secret_prefix).await? {
                let dir = format!("{secret_prefix}{role_dir}");
                for secret_hmac in storage.list(&dir).await? {
                    let key = format!("{dir}{secret_hmac}");
                    let _s = self.secret_lock(&secret_hmac).lock().await;
                    let Some(entry) = storage.get_json::<SecretIdEntry>(&key).await? else {
                        continue;
                    };
                    let salted = salt.id(&entry.secret_id_accessor);
                    let accessor_key = format!("{accessor_prefix}{salted}");
                    if storage.get(&accessor_key).await?.is_none() {
                        storage.delete(&key).await?;
                        removed += 1;
                        continue;
                    }
                    if entry.expired(now_ns) {
                        storage
                            .batch(vec![
                                BatchOp::Delete { key: accessor_key },
                                BatchOp::Delete { key },
                            ])
                            .await?;
                        removed += 1;
                        continue;
                    }
                    keep.insert(salted);
                    live_hmacs.insert(secret_hmac);
                }
            }
            for (salted, secret_hmac) in accessors {
                if keep.contains(&salted) {
                    continue;
                }
                let _s = self.secret_lock(&secret_hmac).lock().await;
                if live_hmacs.contains(&secret_hmac) {
                    continue;
                }
                // Re-check under the lock: a secret-id issued since the
                // listing writes its accessor and entry together.
                let still_index = storage
                    .get_json::<AccessorEntry>(&format!("{accessor_prefix}{salted}"))
                    .await?;
                if still_index.is_some_and(|a| a.secret_id_hmac == secret_hmac)
                    && !self
                        .secret_exists(storage, secret_prefix, &secret_hmac)
                        .await?
                {
                    storage
                        .delete(&format!("{accessor_prefix}{salted}"))
                        .await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Whether any role holds a secret-id with this HMAC.
    async fn secret_exists(
        &self,
        storage: &StorageView,
        secret_prefix: &str,
        secret_hmac: &str,
    ) -> Result<bool> {
        for role_dir in storage.list(secret_prefix).await? {
            if storage
                .get(&format!("{secret_prefix}{role_dir}{secret_hmac}"))
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Parse the token CIDRs a secret-id carries for the token a login issues.
pub(super) fn token_cidrs(entry: &SecretIdEntry) -> Result<Vec<String>> {
    parse_cidrs("token_bound_cidrs", &entry.token_bound_cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn md(v: &str) -> Value {
        json!(parse_metadata(v).unwrap_or_default())
    }

    #[test]
    fn metadata_parses_like_vault() {
        assert_eq!(
            md(r#"{"env":"prod","Team":"A"}"#),
            json!({"env": "prod", "Team": "A"})
        );
        // base64 of {"a":"b"}
        assert_eq!(md("eyJhIjoiYiJ9"), json!({"a": "b"}));
        assert_eq!(md("Env=Prod, team=a"), json!({"env": "prod", "team": "a"}));
        assert_eq!(md(""), json!({}));
        assert!(parse_metadata("a=b=c").is_err());
        assert!(parse_metadata("a=").is_err());
        assert!(parse_metadata(r#"{"a":""}"#).is_err());
    }

    #[test]
    fn secret_cidrs_must_lie_within_the_roles() {
        let role = vec!["10.0.0.0/8".to_string(), "192.168.1.1/32".into()];
        assert!(verify_cidr_subset(&["10.1.0.0/16".into()], &role).is_ok());
        assert!(verify_cidr_subset(&["192.168.1.1/32".into()], &role).is_ok());
        let e = verify_cidr_subset(&["11.0.0.0/16".into()], &role).unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"on the role ["10.0.0.0/8" "192.168.1.1/32"]"#),
            "{e}"
        );
        assert!(verify_cidr_subset(&["10.0.0.0/7".into()], &role).is_err());
        assert!(verify_cidr_subset(&["11.0.0.0/16".into()], &[]).is_ok());
    }

    #[test]
    fn addresses_match_blocks() {
        let blocks = vec!["127.0.0.0/8".to_string()];
        assert!(addr_in_blocks("127.0.0.1".parse().unwrap(), &blocks));
        assert!(!addr_in_blocks("10.0.0.1".parse().unwrap(), &blocks));
    }

    #[test]
    fn expiry_is_exclusive_and_zero_never_expires() {
        let e = SecretIdEntry {
            expiration_time: 100,
            ..Default::default()
        };
        assert!(!e.expired(100) && e.expired(101));
        assert!(!SecretIdEntry::default().expired(i64::MAX));
    }
}
