//! The rotator's HTTP client of a Custos (or Vault-compatible) server: the
//! few calls it makes — KV v2 reads and check-and-set writes, metadata,
//! destroy, list, transit key reads and rotations, and `sys/audit-query` —
//! with Vault's errors classified so the run engine can tell what heals by
//! itself (sealed, unreachable, 5xx, 429) from what needs a person (403, bad
//! path, a lost check-and-set race).
//!
//! The token is read from `token_file` or `VAULT_TOKEN` and never printed;
//! error messages carry the API path and Vault's `errors`, never a body.

use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::config::{KvPath, ServerSettings};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{path}: server unreachable: {message}")]
    Unreachable { path: String, message: String },
    #[error("{path}: server is sealed")]
    Sealed { path: String },
    #[error(
        "{path}: permission denied (the rotator's token lacks a capability; see `custos rotator policy`)"
    )]
    Forbidden { path: String },
    #[error("{path}: check-and-set conflict")]
    CasConflict { path: String },
    #[error("{path}: {status}: {}", errors.join("; "))]
    Status {
        path: String,
        status: u16,
        errors: Vec<String>,
    },
    #[error("{path}: malformed response: {message}")]
    Malformed { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

impl ApiError {
    /// Errors that may heal without anyone acting: retry them with backoff.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } | ApiError::Sealed { .. } => true,
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
    fn malformed(path: &str, message: impl Into<String>) -> ApiError {
        ApiError::Malformed {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A KV v2 secret version as read.
#[derive(Debug, Clone)]
pub struct KvVersion {
    pub data: serde_json::Map<String, Value>,
    pub version: u64,
}

/// A client holding the server address and the rotator's token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    addr: String,
    token: std::sync::Arc<Zeroizing<String>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Api {
    /// A client for `server`, with the token from `token_file` or
    /// `VAULT_TOKEN`.
    pub fn from_settings(server: &ServerSettings) -> ApiResult<Api> {
        let token = match &server.token_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| ApiError::Config(format!("token_file {}: {e}", f.display())))?
                .trim()
                .to_owned(),
            None => std::env::var("VAULT_TOKEN").unwrap_or_default(),
        };
        if token.is_empty() {
            return Err(ApiError::Config(
                "no token: set server { token_file = \"...\" } or VAULT_TOKEN".into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &server.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| ApiError::Config(format!("ca_cert {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ApiError::Config(format!("ca_cert {}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| ApiError::Config(format!("http client: {e}")))?;
        Ok(Api {
            http,
            addr: server.address.trim_end_matches('/').to_owned(),
            token: std::sync::Arc::new(Zeroizing::new(token)),
        })
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// The token, for the envelope crate's transit client.
    pub fn token(&self) -> &str {
        self.token.as_str()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> ApiResult<Option<Value>> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", self.token.as_str());
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ApiError::Unreachable {
            path: path.to_owned(),
            message: without_url(&e),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ApiError::Unreachable {
            path: path.to_owned(),
            message: without_url(&e),
        })?;
        let json: Option<Value> = if text.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&text)
                    .map_err(|_| ApiError::malformed(path, format!("status {status}, not JSON")))?,
            )
        };
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let errors: Vec<String> = json
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let path = path.to_owned();
        Err(match status {
            404 => {
                return Ok(None);
            }
            403 => ApiError::Forbidden { path },
            503 if errors.iter().any(|e| e.contains("sealed")) => ApiError::Sealed { path },
            400 if errors.iter().any(|e| e.contains("check-and-set")) => {
                ApiError::CasConflict { path }
            }
            _ => ApiError::Status {
                path,
                status,
                errors,
            },
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> ApiResult<Option<Value>> {
        self.call(reqwest::Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> ApiResult<Option<Value>> {
        self.call(reqwest::Method::POST, path, &[], Some(body))
            .await
    }

    /// `LIST path`: the keys, empty when nothing is there.
    pub async fn list(&self, path: &str) -> ApiResult<Vec<String>> {
        let v = self
            .call(
                reqwest::Method::GET,
                path,
                &[("list", "true".to_owned())],
                None,
            )
            .await?;
        Ok(v.and_then(|v| v["data"]["keys"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect())
    }

    /// The secret's latest version, or `None` when it has none readable.
    pub async fn kv_read(&self, p: &KvPath, version: Option<u64>) -> ApiResult<Option<KvVersion>> {
        let q: Vec<(&str, String)> = version
            .map(|v| ("version", v.to_string()))
            .into_iter()
            .collect();
        let Some(v) = self.get(&p.data(), &q).await? else {
            return Ok(None);
        };
        let path = p.data();
        let data = match &v["data"]["data"] {
            Value::Object(m) => m.clone(),
            Value::Null => return Ok(None),
            _ => return Err(ApiError::malformed(&path, "data.data is not an object")),
        };
        let version = v["data"]["metadata"]["version"]
            .as_u64()
            .ok_or_else(|| ApiError::malformed(&path, "no data.metadata.version"))?;
        Ok(Some(KvVersion { data, version }))
    }

    /// The secret's `current_version` (0 when it does not exist).
    pub async fn kv_current_version(&self, p: &KvPath) -> ApiResult<u64> {
        let v = self.get(&p.metadata(), &[]).await?;
        Ok(v.and_then(|v| v["data"]["current_version"].as_u64())
            .unwrap_or(0))
    }

    /// Write `data` only if the secret's current version is `cas` (0: only
    /// if it does not exist). Returns the new version.
    pub async fn kv_write_cas(&self, p: &KvPath, data: &Value, cas: u64) -> ApiResult<u64> {
        let path = p.data();
        let v = self
            .post(&path, &json!({"options": {"cas": cas}, "data": data}))
            .await?
            .ok_or_else(|| ApiError::malformed(&path, "empty response to a write"))?;
        v["data"]["version"]
            .as_u64()
            .ok_or_else(|| ApiError::malformed(&path, "no data.version"))
    }

    /// Destroy versions (permanently; idempotent).
    pub async fn kv_destroy(&self, p: &KvPath, versions: &[u64]) -> ApiResult<()> {
        self.post(&p.destroy(), &json!({ "versions": versions }))
            .await
            .map(|_| ())
    }

    /// Every key under a KV v2 prefix, recursively, as paths relative to it.
    pub async fn kv_list_recursive(&self, prefix: &KvPath) -> ApiResult<Vec<String>> {
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(d) = dirs.pop() {
            let p = prefix.child(&d);
            let meta = format!("{}/", p.metadata().trim_end_matches('/'));
            for k in self.list(&meta).await? {
                let rel = format!("{d}{k}");
                if k.ends_with('/') {
                    dirs.push(rel);
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// `GET sys/internal/ui/mounts/<path>`: the mount's type and version.
    pub async fn mount_of(&self, path: &str) -> ApiResult<Option<(String, String, String)>> {
        let p = format!("sys/internal/ui/mounts/{path}");
        let Some(v) = self.get(&p, &[]).await? else {
            return Ok(None);
        };
        let d = &v["data"];
        Ok(Some((
            d["path"].as_str().unwrap_or_default().to_owned(),
            d["type"].as_str().unwrap_or_default().to_owned(),
            d["options"]["version"].as_str().unwrap_or("1").to_owned(),
        )))
    }

    /// `transit/keys/<name>`: (latest_version, min_decryption_version).
    pub async fn transit_key(&self, mount: &str, name: &str) -> ApiResult<Option<(u64, u64)>> {
        let p = format!("{mount}/keys/{name}");
        let Some(v) = self.get(&p, &[]).await? else {
            return Ok(None);
        };
        let latest = v["data"]["latest_version"]
            .as_u64()
            .ok_or_else(|| ApiError::malformed(&p, "no data.latest_version"))?;
        let min_dec = v["data"]["min_decryption_version"].as_u64().unwrap_or(1);
        Ok(Some((latest, min_dec)))
    }

    /// `sys/audit-query`: the API's `data` object.
    pub async fn audit_query(&self, query: &[(&str, String)]) -> ApiResult<Value> {
        let v = self
            .get("sys/audit-query", query)
            .await?
            .ok_or_else(|| ApiError::Status {
                path: "sys/audit-query".into(),
                status: 404,
                errors: vec![
                    "this server has no audit query (is it Custos with a file audit device?)"
                        .into(),
                ],
            })?;
        Ok(v["data"].clone())
    }
}

/// A reqwest error without its URL (which holds only the address, but keep
/// messages short and uniform).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = src {
        last = Some(s.to_string());
        src = s.source();
    }
    match last {
        Some(l) => format!("{kind} ({l})"),
        None => kind.to_owned(),
    }
}
