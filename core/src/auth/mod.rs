//! Auth methods: the backends mounted under `auth/` that turn credentials
//! into tokens, and what they share.
//!
//! A login arrives at an auth method's unauthenticated path
//! ([`crate::logical::Backend::unauthenticated_paths`]) without a token. The
//! method checks the credentials against its own storage (users, roles,
//! secret-ids) or an outside party (a JWKS, Kubernetes' TokenReview) and
//! answers with a [`crate::logical::LoginAuth`]: the alias that logged in and
//! the token parameters of its role. [`login`] then does what Vault's
//! `handleLoginRequest` does — lockout bookkeeping ([`lockout`]), the identity
//! entity ([`crate::identity`]), the TTL, the token — so no method creates
//! tokens itself.
//!
//! [`TokenParams`] is Vault's `tokenutil`: the `token_*` fields every role
//! carries, parsed, validated and shown the same way by every method.

pub mod approle;
pub mod jwt;
pub mod kubernetes;
pub mod lockout;
pub mod login;
pub mod userpass;

/// The auth method types `sys/auth/:path` enables (besides the built-in
/// `token`); `Core::instantiate` builds their backends.
pub const METHOD_TYPES: &[&str] = &["userpass", "kubernetes", "approle", "jwt", "oidc"];

/// Whether `relative` is one of a backend's unauthenticated paths: an exact
/// entry, or a prefix entry ending in `*`.
pub fn is_unauthenticated(patterns: &[&str], relative: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => relative.starts_with(prefix),
        None => relative == *p,
    })
}

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use crate::logical::FieldData;

/// The `token_*` fields of a role, user or auth config (Vault's
/// `tokenutil.TokenParams`). Durations are whole seconds; 0 means "the
/// mount's (or the system's) default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenParams {
    pub token_bound_cidrs: Vec<String>,
    pub token_explicit_max_ttl: i64,
    pub token_max_ttl: i64,
    pub token_no_default_policy: bool,
    pub token_num_uses: i64,
    pub token_period: i64,
    pub token_policies: Vec<String>,
    /// `default`, `service` or `default-service` (batch tokens are refused
    /// when the role is written: this server issues service tokens only).
    pub token_type: String,
    pub token_ttl: i64,
    /// OpenBao's: bind the token to the address the login came from.
    pub token_strictly_bind_ip: bool,
}

/// A role's path table fields plus the `token_*` fields of
/// [`TokenParams`] (and the deprecated `policies`, `period`, `bound_cidrs`
/// spellings Vault still accepts), as one `&'static [FieldSpec]`.
#[macro_export]
macro_rules! with_token_fields {
    ($($field:expr),* $(,)?) => {
        &[
            $($field,)*
            $crate::logical::FieldSpec::new("token_bound_cidrs", $crate::logical::FieldKind::CommaStringSlice),
            $crate::logical::FieldSpec::new("token_explicit_max_ttl", $crate::logical::FieldKind::Duration),
            $crate::logical::FieldSpec::new("token_max_ttl", $crate::logical::FieldKind::Duration),
            $crate::logical::FieldSpec::new("token_no_default_policy", $crate::logical::FieldKind::Bool),
            $crate::logical::FieldSpec::new("token_num_uses", $crate::logical::FieldKind::Int),
            $crate::logical::FieldSpec::new("token_period", $crate::logical::FieldKind::Duration),
            $crate::logical::FieldSpec::new("token_policies", $crate::logical::FieldKind::CommaStringSlice),
            $crate::logical::FieldSpec::new("token_type", $crate::logical::FieldKind::String),
            $crate::logical::FieldSpec::new("token_ttl", $crate::logical::FieldKind::Duration),
            $crate::logical::FieldSpec::new("token_strictly_bind_ip", $crate::logical::FieldKind::Bool),
            $crate::logical::FieldSpec::new("policies", $crate::logical::FieldKind::CommaStringSlice),
        ]
    };
}

impl TokenParams {
    /// Apply the `token_*` fields present in `f` over `self` (an update
    /// keeps what it does not mention), and validate; on an error `self` may
    /// be half-updated, so callers apply to a copy they then store: CIDRs parse, the token
    /// type is one this server issues, `token_ttl` is not above
    /// `token_max_ttl`. The deprecated `policies` stands in for
    /// `token_policies` when only it is given.
    pub fn apply(&mut self, f: &FieldData) -> Result<()> {
        if let Some(v) = f.strings("token_bound_cidrs") {
            self.token_bound_cidrs = parse_cidrs("token_bound_cidrs", &v)?;
        }
        if let Some(v) = f.duration_secs("token_explicit_max_ttl") {
            self.token_explicit_max_ttl = v;
        }
        if let Some(v) = f.duration_secs("token_max_ttl") {
            self.token_max_ttl = v;
        }
        if let Some(v) = f.bool("token_no_default_policy") {
            self.token_no_default_policy = v;
        }
        if let Some(v) = f.int("token_num_uses") {
            if v < 0 {
                return Err(CoreError::bad_request(
                    "'token_num_uses' cannot be negative",
                ));
            }
            self.token_num_uses = v;
        }
        if let Some(v) = f.duration_secs("token_period") {
            self.token_period = v;
        }
        match (f.strings("token_policies"), f.strings("policies")) {
            (Some(p), _) | (None, Some(p)) => self.token_policies = sanitize_policies(p),
            (None, None) => {}
        }
        if let Some(t) = f.str("token_type") {
            self.token_type = match t {
                "" | "default" => "default",
                "service" => "service",
                "default-service" => "default-service",
                "batch" | "default-batch" => {
                    return Err(CoreError::bad_request(
                        "token_type \"batch\" is not supported by this server; use \"service\"",
                    ));
                }
                other => {
                    return Err(CoreError::bad_request(format!(
                        "invalid 'token_type' value {other:?}"
                    )));
                }
            }
            .to_string();
        }
        if self.token_type.is_empty() {
            self.token_type = "default".into();
        }
        if let Some(v) = f.duration_secs("token_ttl") {
            self.token_ttl = v;
        }
        if let Some(v) = f.bool("token_strictly_bind_ip") {
            self.token_strictly_bind_ip = v;
        }
        if self.token_strictly_bind_ip && !self.token_bound_cidrs.is_empty() {
            return Err(CoreError::bad_request(
                "'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one",
            ));
        }
        if self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(CoreError::bad_request(
                "'token_ttl' cannot be greater than 'token_max_ttl'",
            ));
        }
        Ok(())
    }

    /// The fields as a role read shows them (Vault's
    /// `TokenParams.PopulateTokenData`).
    pub fn populate(&self, out: &mut Map<String, Value>) {
        let t = if self.token_type.is_empty() {
            "default"
        } else {
            &self.token_type
        };
        out.insert(
            "token_bound_cidrs".into(),
            self.token_bound_cidrs.clone().into(),
        );
        out.insert(
            "token_explicit_max_ttl".into(),
            self.token_explicit_max_ttl.into(),
        );
        out.insert("token_max_ttl".into(), self.token_max_ttl.into());
        out.insert(
            "token_no_default_policy".into(),
            self.token_no_default_policy.into(),
        );
        out.insert("token_num_uses".into(), self.token_num_uses.into());
        out.insert("token_period".into(), self.token_period.into());
        out.insert("token_policies".into(), self.token_policies.clone().into());
        out.insert("token_type".into(), t.into());
        out.insert("token_ttl".into(), self.token_ttl.into());
        out.insert(
            "token_strictly_bind_ip".into(),
            self.token_strictly_bind_ip.into(),
        );
    }
}

impl TokenParams {
    /// The CIDRs a login's token is bound to: the role's, or with
    /// `token_strictly_bind_ip` the login's own address.
    pub fn bound_cidrs_for(&self, remote: Option<IpAddr>) -> Vec<String> {
        match (self.token_strictly_bind_ip, remote) {
            (true, Some(ip)) => vec![IpNet::from(ip).to_string()],
            _ => self.token_bound_cidrs.clone(),
        }
    }
}

/// Parse a list of CIDR blocks (or bare addresses, as Vault accepts),
/// naming the field in the error. Returns them normalised.
pub fn parse_cidrs(field: &str, raw: &[String]) -> Result<Vec<String>> {
    raw.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            parse_cidr(s)
                .map(|n| n.to_string())
                .ok_or_else(|| CoreError::bad_request(format!("invalid CIDR in {field}: {s:?}")))
        })
        .collect()
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whether `addr` lies in one of `cidrs` (an empty list admits everyone).
/// Entries that no longer parse admit no one.
pub fn cidrs_admit(cidrs: &[String], addr: Option<IpAddr>) -> bool {
    if cidrs.is_empty() {
        return true;
    }
    let Some(addr) = addr else {
        return false;
    };
    cidrs
        .iter()
        .filter_map(|c| parse_cidr(c))
        .any(|n| n.contains(&addr))
}

/// Vault's `policyutil.SanitizePolicies` without adding `default`:
/// trimmed, lower-cased, empty ones dropped, sorted, deduplicated.
pub fn sanitize_policies(p: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = p
        .into_iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> FieldData {
        FieldData::from_json(&v)
    }

    #[test]
    fn token_params_apply_keep_and_validate() {
        let mut p = TokenParams::default();
        p.apply(&fields(serde_json::json!({
            "token_ttl": 60, "token_max_ttl": 120,
            "policies": ["B", "a", "a"], "token_bound_cidrs": ["10.0.0.0/8", "127.0.0.1"]
        })))
        .unwrap();
        assert_eq!(p.token_policies, vec!["a", "b"]);
        assert_eq!(p.token_bound_cidrs, vec!["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(p.token_type, "default");
        // An update keeps what it does not mention.
        p.apply(&fields(serde_json::json!({"token_num_uses": 3})))
            .unwrap();
        assert_eq!((p.token_ttl, p.token_num_uses), (60, 3));

        let mut bad = p.clone();
        let e = bad
            .apply(&fields(
                serde_json::json!({"token_bound_cidrs": ["10.0.0.0/33"]}),
            ))
            .unwrap_err();
        assert!(e.to_string().contains("token_bound_cidrs"), "{e}");
        assert_eq!(bad.token_bound_cidrs, p.token_bound_cidrs);
        let e = p
            .clone()
            .apply(&fields(serde_json::json!({"token_ttl": 500})))
            .unwrap_err();
        assert!(e.to_string().contains("token_max_ttl"), "{e}");
        assert!(
            p.clone()
                .apply(&fields(serde_json::json!({"token_type": "batch"})))
                .is_err()
        );
    }

    #[test]
    fn cidrs_admit_only_inside() {
        let c = vec!["10.1.0.0/16".to_string()];
        assert!(cidrs_admit(&c, Some("10.1.2.3".parse().unwrap())));
        assert!(!cidrs_admit(&c, Some("10.2.0.1".parse().unwrap())));
        assert!(!cidrs_admit(&c, None));
        assert!(cidrs_admit(&[], None));
    }
}
