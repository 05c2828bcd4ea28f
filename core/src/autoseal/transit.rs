//! `seal "transit"`: the root key is encrypted and decrypted by a transit
//! key of another Custos, OpenBao or Vault, through its HTTP API
//! (`POST <address>/v1/<mount_path>/encrypt/<key_name>` and `/decrypt/`).
//!
//! Settings come from the stanza (checked by [`super::check_stanza`]), with
//! Vault's environment fallbacks when a key is absent: `VAULT_ADDR`/`BAO_ADDR`
//! for `address`, `VAULT_TRANSIT_SEAL_TOKEN` then `VAULT_TOKEN`/`BAO_TOKEN`
//! for `token`, `VAULT_TRANSIT_SEAL_KEY_NAME`, `VAULT_TRANSIT_SEAL_MOUNT_PATH`,
//! `VAULT_TRANSIT_SEAL_DISABLE_RENEWAL`, and `VAULT_CACERT`,
//! `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`, `VAULT_TLS_SERVER_NAME`,
//! `VAULT_SKIP_VERIFY` (each also as `BAO_*`). The token is held in a
//! [`Secret`] and never logged; errors name the address, mount and key only.
//! `namespace` is accepted and ignored (Custos has no namespaces).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{KeyWrapper, WrapError};
use crate::logical::Secret;

/// Keys a `seal "transit"` stanza may hold (besides `disabled`).
pub const KEYS: &[&str] = &[
    "address",
    "token",
    "key_name",
    "mount_path",
    "namespace",
    "disable_renewal",
    "tls_ca_cert",
    "tls_client_cert",
    "tls_client_key",
    "tls_server_name",
    "tls_skip_verify",
];

/// Per-call bound: a transit server that does not answer within this is
/// treated as unreachable and retried by the caller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Some(false),
        _ => None,
    }
}

/// The resolved settings of one transit seal.
pub struct TransitSeal {
    address: String,
    token: Secret,
    key_name: String,
    mount_path: String,
    tls_ca_cert: Option<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
    tls_server_name: Option<String>,
    tls_skip_verify: bool,
    disable_renewal: bool,
    client: OnceCell<(reqwest::Client, String)>,
}

impl TransitSeal {
    /// Resolve the stanza's options and the environment. Missing required
    /// settings are reported by name (no values).
    pub fn from_options(o: &BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let get = |k: &str, env: &[&str]| {
            o.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| env_first(env))
        };
        let required = |k: &str, v: Option<String>, env: &str| {
            v.ok_or_else(|| (k.to_string(), format!("is required (or set {env})")))
        };
        let address = required(
            "address",
            get("address", &["VAULT_ADDR", "BAO_ADDR"]),
            "VAULT_ADDR",
        )?;
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err((
                "address".into(),
                "must be an http:// or https:// URL".into(),
            ));
        }
        let token = required(
            "token",
            get(
                "token",
                &["VAULT_TRANSIT_SEAL_TOKEN", "VAULT_TOKEN", "BAO_TOKEN"],
            ),
            "VAULT_TRANSIT_SEAL_TOKEN",
        )?;
        let key_name = required(
            "key_name",
            get("key_name", &["VAULT_TRANSIT_SEAL_KEY_NAME"]),
            "VAULT_TRANSIT_SEAL_KEY_NAME",
        )?;
        let mount_path = required(
            "mount_path",
            get("mount_path", &["VAULT_TRANSIT_SEAL_MOUNT_PATH"]),
            "VAULT_TRANSIT_SEAL_MOUNT_PATH",
        )?;
        let mount_path = mount_path.trim_matches('/').to_string();
        if mount_path.is_empty() {
            return Err(("mount_path".into(), "must not be empty".into()));
        }
        for k in ["disable_renewal", "tls_skip_verify"] {
            if let Some(v) = o.get(k)
                && parse_bool(v).is_none()
            {
                return Err((k.to_string(), "expected a bool".into()));
            }
        }
        let tls_skip_verify = get("tls_skip_verify", &["VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY"])
            .and_then(|v| parse_bool(&v))
            .unwrap_or(false);
        let disable_renewal = get("disable_renewal", &["VAULT_TRANSIT_SEAL_DISABLE_RENEWAL"])
            .and_then(|v| parse_bool(&v))
            .unwrap_or(false);
        Ok(TransitSeal {
            address: address.trim_end_matches('/').to_string(),
            token: Secret::new(token),
            key_name,
            mount_path,
            tls_ca_cert: get("tls_ca_cert", &["VAULT_CACERT", "BAO_CACERT"]),
            tls_client_cert: get("tls_client_cert", &["VAULT_CLIENT_CERT", "BAO_CLIENT_CERT"]),
            tls_client_key: get("tls_client_key", &["VAULT_CLIENT_KEY", "BAO_CLIENT_KEY"]),
            tls_server_name: get(
                "tls_server_name",
                &["VAULT_TLS_SERVER_NAME", "BAO_TLS_SERVER_NAME"],
            ),
            tls_skip_verify,
            disable_renewal,
            client: OnceCell::new(),
        })
    }

    /// The HTTP client and the base URL to send to. With `tls_server_name`,
    /// the URL names that host (for SNI and certificate checks) and the
    /// client resolves it to the configured address.
    async fn client(&self) -> Result<&(reqwest::Client, String), WrapError> {
        self.client
            .get_or_try_init(|| async {
                let mut b = reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .connect_timeout(Duration::from_secs(5))
                    .danger_accept_invalid_certs(self.tls_skip_verify);
                if let Some(path) = &self.tls_ca_cert {
                    let pem = std::fs::read(path)
                        .map_err(|e| WrapError::Config(format!("tls_ca_cert {path}: {e}")))?;
                    for cert in reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| WrapError::Config(format!("tls_ca_cert {path}: {e}")))?
                    {
                        b = b.add_root_certificate(cert);
                    }
                }
                if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
                    let mut pem = std::fs::read(cert)
                        .map_err(|e| WrapError::Config(format!("tls_client_cert {cert}: {e}")))?;
                    pem.extend(
                        std::fs::read(key)
                            .map_err(|e| WrapError::Config(format!("tls_client_key {key}: {e}")))?,
                    );
                    let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                        WrapError::Config(
                            "tls_client_cert/tls_client_key: not a PEM certificate and key".into(),
                        )
                    })?;
                    b = b.identity(id);
                }
                let mut base = self.address.clone();
                if let Some(name) = &self.tls_server_name
                    && let Ok(url) = reqwest::Url::parse(&self.address)
                    && let Some(host) = url.host_str()
                    && host != name
                {
                    let port = url.port_or_known_default().unwrap_or(8200);
                    let addr = tokio::net::lookup_host((host, port))
                        .await
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| WrapError::Unreachable(format!("cannot resolve {host}")))?;
                    b = b.resolve(name, addr);
                    let mut u = url.clone();
                    let _ = u.set_host(Some(name));
                    base = u.as_str().trim_end_matches('/').to_string();
                }
                let client = b
                    .build()
                    .map_err(|e| WrapError::Config(format!("HTTP client: {e}")))?;
                Ok((client, base))
            })
            .await
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value, WrapError> {
        let path = format!("{}/{op}/{}", self.mount_path, self.key_name);
        self.post(&path, op, body).await
    }

    async fn post(&self, path: &str, op: &str, body: Value) -> Result<Value, WrapError> {
        let (client, base) = self.client().await?;
        let url = format!("{base}/v1/{path}");
        let r = client
            .post(&url)
            .header("X-Vault-Token", self.token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                WrapError::Unreachable(format!(
                    "{}: {}",
                    self.address,
                    if e.is_timeout() {
                        "timed out".to_string()
                    } else if e.is_connect() {
                        "connection refused or failed".to_string()
                    } else {
                        "request failed".to_string()
                    }
                ))
            })?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            // The transit server's own error words: they name keys and
            // paths, never our plaintext or token.
            let errors = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let what = format!(
                "{} answered {status} for {op} with key {:?} at mount {:?}: {errors}",
                self.address, self.key_name, self.mount_path
            );
            return Err(if status >= 500 || status == 429 {
                WrapError::Unreachable(what)
            } else {
                WrapError::Refused(what)
            });
        }
        Ok(v)
    }
}

#[async_trait::async_trait]
impl KeyWrapper for TransitSeal {
    fn seal_type(&self) -> &'static str {
        "transit"
    }

    fn describe(&self) -> String {
        format!(
            "transit key {:?} at {}/v1/{}",
            self.key_name, self.address, self.mount_path
        )
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
        let v = self
            .call("encrypt", json!({"plaintext": B64.encode(plaintext)}))
            .await?;
        v["data"]["ciphertext"]
            .as_str()
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| {
                WrapError::Refused(format!("{}: encrypt answered no ciphertext", self.address))
            })
    }

    /// Renew the token (`auth/token/renew-self`), as Vault's transit seal
    /// keeps its token alive; `None` when renewal is disabled or the token
    /// is not renewable (a root or non-periodic token without TTL).
    async fn renew(&self) -> Result<Option<Duration>, WrapError> {
        if self.disable_renewal {
            return Ok(None);
        }
        let v = self
            .post("auth/token/renew-self", "renew-self", json!({}))
            .await?;
        let ttl = v["auth"]["lease_duration"].as_u64().unwrap_or(0);
        let renewable = v["auth"]["renewable"].as_bool().unwrap_or(false);
        Ok((renewable && ttl > 0).then(|| Duration::from_secs(ttl)))
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        let ct = std::str::from_utf8(ciphertext).map_err(|_| {
            WrapError::Decrypt("stored ciphertext is not a transit ciphertext".into())
        })?;
        let v = self.call("decrypt", json!({"ciphertext": ct})).await?;
        let b64 = Zeroizing::new(
            v["data"]["plaintext"]
                .as_str()
                .ok_or_else(|| {
                    WrapError::Refused(format!("{}: decrypt answered no plaintext", self.address))
                })?
                .to_string(),
        );
        B64.decode(b64.as_bytes()).map(Zeroizing::new).map_err(|_| {
            WrapError::Decrypt("decrypt answered a plaintext that is not base64".into())
        })
    }
}
