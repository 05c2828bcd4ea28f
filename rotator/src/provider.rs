//! Where API keys come from and where they are revoked.
//!
//! * `random`: the key is made here from the OS random generator; there is
//!   nothing to revoke outside Custos (retiring destroys the old KV version).
//! * `http`: a team's own key issuer behind this webhook contract
//!   (docs/rotation.md has it in full):
//!   - `POST {url}/keys` with `Idempotency-Key: <run id>` and JSON
//!     `{"job": ..., "run_id": ...}` → 200/201 `{"id": ..., "secret": ...}`.
//!     The same idempotency key must return the same key (a rotator that
//!     crashed after the call asks again), so the issuer makes exactly one
//!     key per run.
//!   - `GET {url}/test` with `X-Api-Key: <secret>` → 2xx when the key works.
//!   - `DELETE {url}/keys/{id}` → 2xx when revoked, 404 when it is already
//!     gone (both mean done).
//!
//!   Every call carries `Authorization: Bearer <token>` when `token_file` is
//!   set. 5xx, 429 and timeouts are retried; other answers are errors.
//!
//! Key material lives in [`zeroize::Zeroizing`] and never reaches a log or
//! an error message.

use std::time::Duration;

use base64::Engine as _;
use rand::RngCore;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::config::{ProviderConfig, RandomFormat};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("provider {url} answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("provider {url}: malformed answer: {message}")]
    Malformed { url: String, message: String },
    #[error("provider: {0}")]
    Config(String),
}

impl ProviderError {
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Unreachable { .. } => true,
            ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A credential just made.
pub struct NewCredential {
    pub id: String,
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub enum Provider {
    Random {
        bytes: usize,
        format: RandomFormat,
    },
    Http {
        url: String,
        token: Option<Zeroizing<String>>,
        http: reqwest::Client,
    },
}

impl Provider {
    pub fn from_config(c: &ProviderConfig) -> Result<Provider, ProviderError> {
        match c {
            ProviderConfig::Random { bytes, format } => Ok(Provider::Random {
                bytes: *bytes,
                format: *format,
            }),
            ProviderConfig::Http {
                url,
                token_file,
                timeout,
            } => {
                let token = match token_file {
                    Some(f) => Some(Zeroizing::new(
                        std::fs::read_to_string(f)
                            .map_err(|e| {
                                ProviderError::Config(format!("token_file {}: {e}", f.display()))
                            })?
                            .trim()
                            .to_owned(),
                    )),
                    None => None,
                };
                let http = reqwest::Client::builder()
                    .timeout(*timeout)
                    .connect_timeout(Duration::from_secs(5).min(*timeout))
                    .build()
                    .map_err(|e| ProviderError::Config(e.to_string()))?;
                Ok(Provider::Http {
                    url: url.clone(),
                    token,
                    http,
                })
            }
        }
    }

    /// The key id a `random` provider gives run `run_id`'s key.
    pub fn random_key_id(run_id: &str) -> String {
        format!("rnd-{run_id}")
    }

    /// Make the run's new credential. Idempotent per `run_id` (`random`
    /// makes a fresh secret each time; it has no effect outside Custos).
    pub async fn create(&self, job: &str, run_id: &str) -> Result<NewCredential, ProviderError> {
        match self {
            Provider::Random { bytes, format } => Ok(NewCredential {
                id: Self::random_key_id(run_id),
                secret: random_secret(*bytes, *format),
            }),
            Provider::Http { url, token, http } => {
                let u = format!("{url}/keys");
                let mut req = http
                    .post(&u)
                    .header("Idempotency-Key", run_id)
                    .json(&json!({ "job": job, "run_id": run_id }));
                if let Some(t) = token {
                    req = req.bearer_auth(t.as_str());
                }
                let v = send(req, &u, &[200, 201]).await?;
                let id = v["id"].as_str().filter(|s| !s.is_empty());
                let secret = v["secret"].as_str().filter(|s| !s.is_empty());
                match (id, secret) {
                    (Some(id), Some(secret)) => Ok(NewCredential {
                        id: id.to_owned(),
                        secret: Zeroizing::new(secret.to_owned()),
                    }),
                    _ => Err(ProviderError::Malformed {
                        url: u,
                        message: "expected {\"id\": string, \"secret\": string}".into(),
                    }),
                }
            }
        }
    }

    /// Check that a new credential works before it is promoted.
    pub async fn test(&self, cred: &NewCredential) -> Result<(), ProviderError> {
        match self {
            Provider::Random { .. } => Ok(()),
            Provider::Http { url, token, http } => {
                let u = format!("{url}/test");
                let mut req = http.get(&u).header("X-Api-Key", cred.secret.as_str());
                if let Some(t) = token {
                    req = req.bearer_auth(t.as_str());
                }
                send(req, &u, &[200, 204]).await.map(|_| ())
            }
        }
    }

    /// Revoke the credential `id`. Already gone counts as done.
    pub async fn revoke(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Provider::Random { .. } => Ok(()),
            Provider::Http { url, token, http } => {
                let u = format!("{url}/keys/{}", encode_segment(id));
                let mut req = http.delete(&u);
                if let Some(t) = token {
                    req = req.bearer_auth(t.as_str());
                }
                send(req, &u, &[200, 202, 204, 404]).await.map(|_| ())
            }
        }
    }
}

async fn send(req: reqwest::RequestBuilder, url: &str, ok: &[u16]) -> Result<Value, ProviderError> {
    let resp = req.send().await.map_err(|e| ProviderError::Unreachable {
        url: url.to_owned(),
        message: if e.is_timeout() {
            "timed out".into()
        } else {
            "connection failed".into()
        },
    })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if !ok.contains(&status) {
        // The body of an error may echo a key: keep only a short, known
        // shape (`{"error": "..."}`) and never a secret-looking blob.
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(|s| s.chars().take(200).collect()))
            .unwrap_or_default();
        return Err(ProviderError::Status {
            url: url.to_owned(),
            status,
            message,
        });
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|_| ProviderError::Malformed {
        url: url.to_owned(),
        message: "not JSON".into(),
    })
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn random_secret(bytes: usize, format: RandomFormat) -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    match format {
        RandomFormat::Alphanumeric => {
            const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            // `bytes` of entropy: ceil(bytes * 8 / log2(62)) characters, by
            // rejection sampling (no modulo bias).
            let len = (bytes * 8 * 1000).div_ceil(5954);
            let mut out = Zeroizing::new(String::with_capacity(len));
            while out.len() < len {
                let mut b = [0u8; 1];
                rng.fill_bytes(&mut b);
                if (b[0] as usize) < 248 {
                    out.push(SET[b[0] as usize % 62] as char);
                }
            }
            out
        }
        _ => {
            let mut raw = Zeroizing::new(vec![0u8; bytes]);
            rng.fill_bytes(&mut raw);
            Zeroizing::new(match format {
                RandomFormat::Hex => hex::encode(&*raw),
                RandomFormat::Base64Url => {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw)
                }
                _ => base64::engine::general_purpose::STANDARD.encode(&*raw),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_formats() {
        assert_eq!(random_secret(32, RandomFormat::Hex).len(), 64);
        assert_eq!(random_secret(32, RandomFormat::Base64).len(), 44);
        assert_eq!(random_secret(32, RandomFormat::Base64Url).len(), 43);
        let a = random_secret(32, RandomFormat::Alphanumeric);
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(
            *random_secret(16, RandomFormat::Hex),
            *random_secret(16, RandomFormat::Hex)
        );
    }

    #[test]
    fn ids_are_path_safe() {
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn credential_debug_hides_the_secret() {
        let c = NewCredential {
            id: "k1".into(),
            secret: Zeroizing::new("s3cret".into()),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
