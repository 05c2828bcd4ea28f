//! The mount's `config` (Vault's `path_config.go`): where signing keys come
//! from — exactly one of `jwt_validation_pubkeys`, `jwks_url` (+
//! `jwks_ca_pem`) or `oidc_discovery_url` (+ `oidc_discovery_ca_pem`) —
//! plus `bound_issuer`, `default_role` and `jwt_supported_algs`.
//!
//! Written by operators; checked before it is stored (PEM keys parse, a
//! JWKS or discovery URL answers with something usable, algorithms are
//! asymmetric), stored as JSON at `config` in the mount's storage, and
//! turned into a [`super::keys::KeySet`] that the backend caches until the
//! next write (or a standby's invalidation). The OIDC browser-flow fields
//! are accepted and shown as Vault shows them; `oidc_client_secret` is kept
//! in a redacting [`Secret`] and never read back.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::keys::{KeySet, RemoteKeys, Source, parse_pem};
use super::token::ALLOWED_ALGS;
use crate::error::{CoreError, Result};
use crate::logical::{FieldData, Secret};

pub const CONFIG_KEY: &str = "config";

/// The stored config (Vault's `jwtConfig`, same JSON names).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    pub oidc_discovery_url: String,
    pub oidc_discovery_ca_pem: String,
    pub oidc_client_id: String,
    #[serde(serialize_with = "ser_secret", deserialize_with = "de_secret")]
    pub oidc_client_secret: Secret,
    pub oidc_response_mode: String,
    pub oidc_response_types: Vec<String>,
    pub jwks_url: String,
    pub jwks_ca_pem: String,
    pub jwt_validation_pubkeys: Vec<String>,
    pub jwt_supported_algs: Vec<String>,
    pub bound_issuer: String,
    pub default_role: String,
    pub provider_config: Map<String, Value>,
    pub override_allowed_server_names: Vec<String>,
    pub namespace_in_state: bool,
}

fn ser_secret<S: Serializer>(s: &Secret, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Secret, D::Error> {
    Ok(Secret::new(String::deserialize(d)?))
}

impl JwtConfig {
    /// Build the key set this config describes (no network).
    pub fn key_set(&self) -> std::result::Result<KeySet, String> {
        if !self.jwt_validation_pubkeys.is_empty() {
            let keys = self
                .jwt_validation_pubkeys
                .iter()
                .map(|p| parse_pem(p).map_err(|e| format!("error parsing public key: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            return Ok(KeySet::Static(keys));
        }
        if !self.jwks_url.is_empty() {
            return RemoteKeys::new(Source::Jwks(self.jwks_url.clone()), &self.jwks_ca_pem)
                .map(KeySet::Remote);
        }
        if !self.oidc_discovery_url.is_empty() {
            return RemoteKeys::new(
                Source::Discovery(self.oidc_discovery_url.clone()),
                &self.oidc_discovery_ca_pem,
            )
            .map(KeySet::Remote);
        }
        Err("unsupported config type".into())
    }

    fn has_response_type(&self, t: &str) -> bool {
        (self.oidc_response_types.is_empty() && t == "code")
            || self.oidc_response_types.iter().any(|x| x == t)
    }

    /// The config as `config` reads it.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert(
            "oidc_discovery_url".into(),
            self.oidc_discovery_url.clone().into(),
        );
        d.insert(
            "oidc_discovery_ca_pem".into(),
            self.oidc_discovery_ca_pem.clone().into(),
        );
        d.insert("oidc_client_id".into(), self.oidc_client_id.clone().into());
        d.insert(
            "oidc_response_mode".into(),
            self.oidc_response_mode.clone().into(),
        );
        d.insert(
            "oidc_response_types".into(),
            self.oidc_response_types.clone().into(),
        );
        d.insert("default_role".into(), self.default_role.clone().into());
        d.insert(
            "jwt_validation_pubkeys".into(),
            self.jwt_validation_pubkeys.clone().into(),
        );
        d.insert(
            "jwt_supported_algs".into(),
            self.jwt_supported_algs.clone().into(),
        );
        d.insert("jwks_url".into(), self.jwks_url.clone().into());
        d.insert("jwks_ca_pem".into(), self.jwks_ca_pem.clone().into());
        d.insert("bound_issuer".into(), self.bound_issuer.clone().into());
        d.insert(
            "provider_config".into(),
            Value::Object(self.provider_config.clone()),
        );
        d.insert(
            "override_allowed_server_names".into(),
            self.override_allowed_server_names.clone().into(),
        );
        d.insert("namespace_in_state".into(), self.namespace_in_state.into());
        d
    }
}

/// A config write, checked as Vault's `pathConfigWrite` checks it. Returns
/// the config, the key set it built (already fetched once for a URL, so
/// the first logins need no fetch) and the warnings to show.
pub async fn from_request(
    f: &FieldData,
    existing: Option<&JwtConfig>,
) -> Result<(JwtConfig, KeySet, Vec<String>)> {
    let s = |k: &str| f.str(k).unwrap_or("").to_string();
    let list = |k: &str| f.strings(k).unwrap_or_default();
    let c = JwtConfig {
        oidc_discovery_url: s("oidc_discovery_url"),
        oidc_discovery_ca_pem: s("oidc_discovery_ca_pem"),
        oidc_client_id: s("oidc_client_id"),
        oidc_client_secret: Secret::new(s("oidc_client_secret")),
        oidc_response_mode: s("oidc_response_mode"),
        oidc_response_types: list("oidc_response_types"),
        jwks_url: s("jwks_url"),
        jwks_ca_pem: s("jwks_ca_pem"),
        jwt_validation_pubkeys: list("jwt_validation_pubkeys"),
        jwt_supported_algs: list("jwt_supported_algs"),
        bound_issuer: s("bound_issuer"),
        default_role: s("default_role").to_lowercase(),
        provider_config: f.map("provider_config").cloned().unwrap_or_default(),
        override_allowed_server_names: list("override_allowed_server_names"),
        namespace_in_state: match (f.bool("namespace_in_state"), existing) {
            (Some(v), _) => v,
            (None, Some(e)) => e.namespace_in_state,
            (None, None) => true,
        },
    };
    let skip_validation = f.bool("skip_jwks_validation").unwrap_or(false);
    let bad = |m: String| CoreError::bad_request(m);
    let mut warnings = Vec::new();

    let sources = [
        !c.oidc_discovery_url.is_empty(),
        !c.jwt_validation_pubkeys.is_empty(),
        !c.jwks_url.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(bad("exactly one of 'jwt_validation_pubkeys', 'jwks_url', 'jwks_pairs', 'oidc_discovery_url', or 'provider_config' must be set".into()));
    }
    if c.oidc_client_id.is_empty() != c.oidc_client_secret.is_empty() {
        return Err(bad(
            "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC".into(),
        ));
    }
    let keys = if !c.oidc_discovery_url.is_empty() {
        if c.oidc_discovery_url
            .contains(".well-known/openid-configuration")
        {
            return Err(bad(
                "'oidc_discovery_url' contains '.well-known' component".into()
            ));
        }
        let keys = c
            .key_set()
            .map_err(|e| bad(format!("error checking oidc discovery URL: {e}")))?;
        if let KeySet::Remote(r) = &keys
            && let Err(e) = r.discover().await
        {
            if !skip_validation {
                return Err(bad(format!("error checking oidc discovery URL: {e}")));
            }
            warnings.push("error checking oidc discovery URL".to_string());
        }
        keys
    } else if !c.oidc_client_id.is_empty() {
        return Err(bad("'oidc_discovery_url' must be set for OIDC".into()));
    } else if !c.jwks_url.is_empty() {
        let keys = c
            .key_set()
            .map_err(|_| bad("error checking jwks_ca_pem".into()))?;
        if let KeySet::Remote(r) = &keys
            && let Err(e) = r.prime().await
        {
            tracing::warn!(error = %e, "JWT auth config: checking jwks_url failed");
            if !skip_validation {
                return Err(bad("error checking jwks URL".into()));
            }
            warnings.push("error checking jwks URL".to_string());
        }
        keys
    } else {
        c.key_set().map_err(bad)?
    };

    if let Some(a) = c
        .jwt_supported_algs
        .iter()
        .find(|a| !ALLOWED_ALGS.contains(&a.as_str()))
    {
        return Err(bad(format!(
            "invalid jwt_supported_algs: unsupported signing algorithm {a:?}"
        )));
    }
    if c.oidc_response_types
        .iter()
        .any(|t| t != "code" && t != "id_token")
    {
        return Err(bad(format!(
            "invalid response_types [{}]. 'code' and 'id_token' are allowed",
            c.oidc_response_types.join(" ")
        )));
    }
    match c.oidc_response_mode.as_str() {
        "" | "query" if c.has_response_type("id_token") => {
            return Err(bad(
                "query response_mode may not be used with an id_token response_type".into(),
            ));
        }
        "" | "query" | "form_post" => {}
        other => return Err(bad(format!("invalid response_mode: {other:?}"))),
    }
    if !c.provider_config.is_empty() {
        return Err(bad(
            "invalid provider_config: provider-specific configuration is not supported by this server"
                .into(),
        ));
    }
    Ok((c, keys, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> FieldData {
        FieldData::from_json(&v)
    }

    const EC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n-----END PUBLIC KEY-----\n";

    async fn err(v: Value) -> String {
        from_request(&fields(v), None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn config_checks_follow_vault() {
        assert!(err(json!({})).await.starts_with("exactly one of"));
        assert!(
            err(json!({"jwt_validation_pubkeys": [EC], "jwks_url": "http://127.0.0.1:1/k"}))
                .await
                .starts_with("exactly one of")
        );
        assert_eq!(
            err(json!({"jwt_validation_pubkeys": ["garbage"]})).await,
            "error parsing public key: data does not contain any valid public keys"
        );
        assert_eq!(
            err(json!({"jwt_validation_pubkeys": [EC], "jwt_supported_algs": ["HS256"]})).await,
            "invalid jwt_supported_algs: unsupported signing algorithm \"HS256\""
        );
        assert_eq!(
            err(json!({"oidc_discovery_url": "http://x/.well-known/openid-configuration"})).await,
            "'oidc_discovery_url' contains '.well-known' component"
        );
        assert_eq!(
            err(json!({"jwks_url": "http://127.0.0.1:1/keys", "jwks_ca_pem": "junk"})).await,
            "error checking jwks_ca_pem"
        );
        assert_eq!(
            err(json!({"jwks_url": "http://127.0.0.1:1/keys"})).await,
            "error checking jwks URL"
        );
        assert!(
            err(json!({"oidc_discovery_url": "http://127.0.0.1:1"}))
                .await
                .starts_with("error checking oidc discovery URL: ")
        );
        assert!(
            err(json!({"jwt_validation_pubkeys": [EC], "provider_config": {"provider": "azure"}}))
                .await
                .contains("provider_config")
        );
        let (c, _, w) = from_request(
            &fields(json!({"jwks_url": "http://127.0.0.1:1/keys", "skip_jwks_validation": true})),
            None,
        )
        .await
        .unwrap();
        assert_eq!(w, vec!["error checking jwks URL"]);
        assert!(c.namespace_in_state);
        assert_eq!(
            err(json!({"jwt_validation_pubkeys": [EC], "oidc_client_secret": "s3cret"})).await,
            "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC"
        );
        let (c, keys, _) = from_request(
            &fields(json!({"jwt_validation_pubkeys": [EC], "default_role": "CI"})),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.default_role, "ci");
        assert!(matches!(keys, KeySet::Static(ref k) if k.len() == 1));
        assert!(!c.to_json().contains_key("oidc_client_secret"));
    }
}
