//! `auth/approle/login` (Vault's `pathLoginUpdate`): role_id → role (through
//! the salted `role_id/` index), secret-id → its entry (through the role's
//! HMAC), then the secret-id's and the role's CIDR bindings against the
//! caller's address, and one use spent. The answer is a
//! [`LoginAuth`] whose alias is the role_id and whose metadata carries
//! `role_name` (and the secret-id's metadata); core issues the token.
//!
//! Wrong secret-ids are [`CoreError::InvalidCredentials`] (Vault's
//! `ErrInvalidCredentials`, counted by lockout); an unknown role_id is a
//! plain 400, as in Vault. Neither message says which part was wrong, and no
//! message ever carries the secret-id.

use std::collections::BTreeMap;

use super::AppRoleBackend;
use super::role::{self, Role};
use super::secret_id::{
    SecretIdEntry, addr_in_blocks, entry_key, now_nanos, token_cidrs, verify_cidr_subset,
};
use crate::error::{CoreError, Result};
use crate::logical::{Ctx, LoginAlias, LoginAuth, Response, Secret};
use crate::storage::BatchOp;

const INVALID: &str = "invalid role or secret ID";

impl AppRoleBackend {
    pub(super) async fn login(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let role_id = ctx.fields.str("role_id").unwrap_or_default().trim();
        if role_id.is_empty() {
            return Err(CoreError::bad_request("missing role_id"));
        }
        let Some(name) = role::name_for_role_id(self, ctx.storage, role_id).await? else {
            return Err(CoreError::bad_request(INVALID));
        };
        let role = {
            let _g = self.role_lock(&name).read().await;
            role::load(ctx.storage, &name).await?
        };
        let Some(role) = role else {
            return Err(CoreError::bad_request(INVALID));
        };
        let remote = ctx.req.remote_addr.map(|a| a.ip());

        let mut metadata = BTreeMap::new();
        let mut entry = None;
        if role.bind_secret_id {
            let secret_id = Secret::new(ctx.fields.str("secret_id").unwrap_or_default().trim());
            if secret_id.is_empty() {
                return Err(CoreError::bad_request("missing secret_id"));
            }
            let e = self.spend_secret_id(ctx, &role, &secret_id, remote).await?;
            metadata = e.metadata.clone();
            entry = Some(e);
        }

        if !role.secret_id_bound_cidrs.is_empty() {
            let admitted = remote.is_some_and(|ip| addr_in_blocks(ip, &role.secret_id_bound_cidrs));
            if !admitted {
                return Err(CoreError::bad_request(format!(
                    "source address {:?} unauthorized by CIDR restrictions on the role",
                    remote.map(|ip| ip.to_string()).unwrap_or_default()
                )));
            }
        }

        let mut token = role.login_token();
        if let Some(e) = entry.as_ref().filter(|e| !e.token_bound_cidrs.is_empty()) {
            token.token_bound_cidrs = token_cidrs(e)?;
        }
        metadata.insert("role_name".into(), role.name.clone());
        Ok(Some(Response {
            login: Some(Box::new(LoginAuth {
                alias: LoginAlias {
                    name: role.role_id.clone(),
                    metadata: metadata.clone(),
                },
                display_name: String::new(),
                metadata,
                token,
                group_aliases: Vec::new(),
            })),
            ..Default::default()
        }))
    }

    /// Check a secret-id of `role` and spend one of its uses: unknown or
    /// expired → invalid credentials; outside its CIDR blocks → 400; its
    /// last use deletes it. Limited secret-ids are read, checked and
    /// written under their lock, so concurrent logins never spend one use
    /// twice; the loser of a race for the last use finds nothing.
    async fn spend_secret_id(
        &self,
        ctx: &Ctx<'_>,
        role: &Role,
        secret_id: &Secret,
        remote: Option<std::net::IpAddr>,
    ) -> Result<SecretIdEntry> {
        let secret_hmac = super::create_hmac(&role.hmac_key, secret_id.expose()).map_err(|e| {
            CoreError::bad_request(format!("failed to create HMAC of secret_id: {e}"))
        })?;
        let role_hmac = super::create_hmac(&role.hmac_key, &role.name)?;
        let key = entry_key(role, &role_hmac, &secret_hmac);

        // Unlimited secret-ids need no lock: nothing about them changes.
        let peek = ctx.storage.get_json::<SecretIdEntry>(&key).await?;
        let Some(peek) = peek else {
            return Err(CoreError::InvalidCredentials(INVALID.into()));
        };
        let now = now_nanos();
        let limited = peek.secret_id_num_uses != 0;
        let guard = if limited || peek.expired(now) {
            Some(self.secret_lock(&secret_hmac).lock().await)
        } else {
            None
        };
        let entry = if guard.is_some() {
            match ctx.storage.get_json::<SecretIdEntry>(&key).await? {
                Some(e) => e,
                None => return Err(CoreError::InvalidCredentials(INVALID.into())),
            }
        } else {
            peek
        };
        let accessor_key = self
            .accessor_key(
                ctx.storage,
                &entry.secret_id_accessor,
                &role.secret_id_prefix,
            )
            .await?;
        if ctx.storage.get(&accessor_key).await?.is_none() {
            // A secret-id without its accessor is revoked on sight (Vault).
            let _g = match guard {
                Some(g) => g,
                None => self.secret_lock(&secret_hmac).lock().await,
            };
            ctx.storage.delete(&key).await?;
            return Err(CoreError::bad_request(INVALID));
        }
        if entry.expired(now) {
            ctx.storage
                .batch(vec![
                    BatchOp::Delete { key: accessor_key },
                    BatchOp::Delete { key },
                ])
                .await?;
            return Err(CoreError::InvalidCredentials(INVALID.into()));
        }

        verify_cidr_subset(&entry.cidr_list, &role.secret_id_bound_cidrs)?;
        if !entry.cidr_list.is_empty() {
            let Some(ip) = remote else {
                return Err(CoreError::bad_request(
                    "failed to get connection information",
                ));
            };
            if !addr_in_blocks(ip, &entry.cidr_list) {
                // Vault's two wordings: limited secret-ids say "by".
                let how = if limited { "by" } else { "through" };
                return Err(CoreError::bad_request(format!(
                    "source address {:?} unauthorized {how} CIDR restrictions on the secret ID",
                    ip.to_string()
                )));
            }
        }

        if limited {
            if entry.secret_id_num_uses == 1 {
                ctx.storage
                    .batch(vec![
                        BatchOp::Delete { key: accessor_key },
                        BatchOp::Delete { key },
                    ])
                    .await?;
            } else {
                let mut spent = entry.clone();
                spent.secret_id_num_uses -= 1;
                spent.last_updated_time = now;
                ctx.storage.put_json(&key, &spent).await?;
            }
        }
        drop(guard);
        Ok(entry)
    }
}
