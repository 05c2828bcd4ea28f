//! A login's last step, done by core for every auth method (Vault's
//! `handleLoginRequest` after routing, and `LoginCreateToken`): the method
//! has checked the credentials and answered with a
//! [`crate::logical::LoginAuth`]; here the alias becomes an identity entity,
//! the policies are settled (the role's, `default` unless refused, and the
//! entity's and its groups'), the TTL is computed from the role and the
//! mount, and the token is created. The result is the `auth` block the
//! client receives (and the audit device records, HMAC'd).

use crate::auth::{TokenParams, sanitize_policies};
use crate::core::{Core, Unsealed};
use crate::error::{CoreError, Result};
use crate::logical::{AuthResponse, LoginAuth, Request};
use crate::router::MountEntry;
use crate::token::{CreateTokenRequest, TtlLimits, calculate_ttl_in};

/// The `display_name` Vault gives a login's token: the mount path without
/// `auth/`, slashes as dashes, then the method's name (`userpass-alice`).
fn display_name(mount: &MountEntry, name: &str) -> String {
    let source = mount.path.trim_start_matches("auth/").replace('/', "-");
    format!("{source}{name}").trim_end_matches('-').to_string()
}

/// The limits a login's TTL is computed under: the mount's tune, else the
/// server's defaults, narrowed by the role's `token_max_ttl`.
fn limits(core: &Core, mount: &MountEntry, p: &TokenParams) -> TtlLimits {
    let pick = |own: i64, server: i64| if own > 0 { own } else { server };
    TtlLimits {
        default_ttl: pick(mount.config.default_lease_ttl, core.opts.default_lease_ttl),
        max_ttl: pick(mount.config.max_lease_ttl, core.opts.max_lease_ttl),
    }
    .narrowed(p.token_max_ttl)
}

/// Turn a checked login into a token. `warnings` collects Vault's TTL
/// capping notes for the response.
pub async fn issue(
    core: &Core,
    u: &Unsealed,
    mount: &MountEntry,
    req: &Request,
    login: LoginAuth,
    warnings: &mut Vec<String>,
) -> Result<AuthResponse> {
    let entity = u
        .identity
        .entity_for_login(mount, &login.alias, &login.group_aliases)
        .await?;
    // Sorted and deduplicated, as OpenBao shows them.
    let identity_policies = sanitize_policies(u.identity.identity_policies(&entity.id).await?);

    let p = &login.token;
    let mut token_policies = p.token_policies.clone();
    if !p.token_no_default_policy {
        token_policies.push("default".into());
    }
    let token_policies = sanitize_policies(token_policies);
    let mut all = token_policies.clone();
    all.extend(identity_policies.iter().cloned());
    let all = sanitize_policies(all);
    for pol in &all {
        if pol == "root" {
            return Err(CoreError::bad_request(
                "auth methods cannot create root tokens",
            ));
        }
        if crate::policy::NON_ASSIGNABLE_POLICIES.contains(&pol.as_str()) {
            return Err(CoreError::bad_request(format!(
                "cannot assign policy {pol:?}"
            )));
        }
    }

    let limits = limits(core, mount, p);
    let now = u.tokens.now();
    let (ttl, notes) = calculate_ttl_in(
        limits,
        now,
        0,
        p.token_ttl,
        p.token_period,
        p.token_explicit_max_ttl,
        now,
    )?;
    warnings.extend(notes);

    let (token, entry) = u
        .tokens
        .create(
            None,
            CreateTokenRequest {
                policies: token_policies.clone(),
                meta: login.metadata.clone(),
                display_name: display_name(mount, &login.display_name),
                path: req.path.clone(),
                num_uses: p.token_num_uses,
                ttl,
                explicit_max_ttl: p.token_explicit_max_ttl,
                period: p.token_period,
                renewable: true,
                orphan: true,
                entity_id: entity.id.clone(),
                bound_cidrs: p.bound_cidrs_for(req.remote_addr.map(|a| a.ip())),
                max_ttl: limits.max_ttl,
                ..Default::default()
            },
        )
        .await?;
    Ok(AuthResponse {
        client_token: token,
        accessor: entry.accessor.clone(),
        policies: all,
        token_policies,
        identity_policies,
        metadata: Some(login.metadata),
        lease_duration: ttl,
        renewable: entry.renewable,
        entity_id: entity.id,
        token_type: entry.token_type.clone(),
        orphan: true,
        mfa_requirement: None,
        num_uses: entry.num_uses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_follow_vault() {
        let m = MountEntry::new("auth/userpass/", "userpass", "");
        assert_eq!(display_name(&m, "alice"), "userpass-alice");
        let m = MountEntry::new("auth/team/a/", "approle", "");
        assert_eq!(display_name(&m, ""), "team-a");
    }
}
