//! Envelope encryption over a Vault-compatible transit engine (Custos,
//! OpenBao or Vault): data is encrypted locally with a per-record data key
//! (DEK, AES-256-GCM), and only the DEK goes to the server, wrapped by a
//! named transit key (the KEK).
//!
//! Data flow: [`Envelope::seal`] asks `transit/datakey/plaintext/<kek>` for a
//! fresh DEK (the server returns it in clear and wrapped), encrypts the data
//! with it here, forgets the clear DEK and returns a [`SealedRecord`]
//! `{wrapped_dek, nonce, ciphertext}` for the caller to store anywhere.
//! [`Envelope::open`] unwraps the DEK through `transit/decrypt/<kek>` and
//! decrypts locally. Rotating the KEK (`transit/keys/<kek>/rotate`) and then
//! [`Envelope::rewrap_all`] moves every stored `wrapped_dek` to the newest KEK
//! version through batched `transit/rewrap/<kek>` calls: the server never
//! returns a DEK in clear for that, and the data ciphertexts are untouched.
//! After that, raising `min_decryption_version` retires the old KEK version.
//!
//! The rotator and applications use this crate as ordinary least-privilege
//! HTTP clients ([`TransitClient`]); it has no dependency on the server's
//! internals. Clear DEKs and plaintexts live in [`zeroize::Zeroizing`]
//! buffers; the token never prints.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Associated data of every local encryption: ties a ciphertext to this
/// format. (Not the wrapped DEK: that changes on every rewrap.)
const AAD: &[u8] = b"custos-envelope-v1";
/// Items per batched transit call.
pub const BATCH_SIZE: usize = 500;

/// What can go wrong talking to transit or opening a record.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server refused the call; `errors` is Vault's `errors` list.
    #[error("transit {path} answered {status}: {}", errors.join("; "))]
    Transit {
        path: String,
        status: u16,
        errors: Vec<String>,
    },
    #[error("malformed response from {0}")]
    Malformed(String),
    /// A record that does not decrypt with its DEK (tampered or corrupt).
    #[error("record does not decrypt: {0}")]
    Crypto(&'static str),
}

pub type Result<T, E = EnvelopeError> = std::result::Result<T, E>;

/// One encrypted record, as stored by the application. All fields are text
/// (base64 or transit's `vault:vN:` form) so it serializes anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    /// The DEK wrapped by the KEK, `vault:v<KEK version>:...`.
    pub wrapped_dek: String,
    /// Base64 of the 12-byte AES-GCM nonce.
    pub nonce: String,
    /// Base64 of the AES-256-GCM ciphertext and tag.
    pub ciphertext: String,
}

impl SealedRecord {
    /// The KEK version that wrapped this record's DEK.
    pub fn kek_version(&self) -> Option<u32> {
        let rest = self.wrapped_dek.strip_prefix("vault:v")?;
        rest.split_once(':')?.0.parse().ok()
    }
}

/// A client token that never prints.
#[derive(Clone)]
struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A data key: clear (zeroized on drop) and wrapped by the KEK.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: String,
}

/// A thin HTTP client for one transit mount.
#[derive(Debug, Clone)]
pub struct TransitClient {
    http: reqwest::Client,
    addr: String,
    token: Token,
    mount: String,
}

/// Result of [`Envelope::rewrap_all`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Records whose wrapped DEK changed KEK version.
    pub rewrapped: usize,
    /// Records already on the newest version (their wrapped DEK is still
    /// re-encrypted by the server, which is harmless).
    pub unchanged: usize,
    /// Records the server could not rewrap, with its error; left as they were.
    pub failed: Vec<(usize, String)>,
}

impl TransitClient {
    /// A client for the transit engine mounted at `mount` (e.g. `transit`).
    pub fn new(
        addr: impl Into<String>,
        token: impl Into<String>,
        mount: impl Into<String>,
    ) -> Result<Self> {
        let addr = addr.into().trim_end_matches('/').to_string();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(EnvelopeError::Config(format!(
                "server address {addr:?} must start with http:// or https://"
            )));
        }
        let mount = mount.into().trim_matches('/').to_string();
        if mount.is_empty() {
            return Err(EnvelopeError::Config("transit mount path is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(TransitClient {
            http,
            addr,
            token: Token(Zeroizing::new(token.into())),
            mount,
        })
    }

    /// Address and token from `VAULT_ADDR` and `VAULT_TOKEN`, as every Vault client.
    pub fn from_env(mount: impl Into<String>) -> Result<Self> {
        let addr = std::env::var("VAULT_ADDR")
            .map_err(|_| EnvelopeError::Config("VAULT_ADDR is not set".into()))?;
        let token = std::env::var("VAULT_TOKEN")
            .map_err(|_| EnvelopeError::Config("VAULT_TOKEN is not set".into()))?;
        Self::new(addr, token, mount)
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// POST `body` to `<mount>/<path>` and return the whole response body.
    /// A 400 that carries `batch_results` (some batch items failed) is not an
    /// error: the caller reads the per-item errors.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Value> {
        let full = format!("{}/{}", self.mount, path);
        let resp = self
            .http
            .post(format!("{}/v1/{full}", self.addr))
            .header("X-Vault-Token", self.token.0.as_str())
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status == 204 {
            return Ok(Value::Null);
        }
        let value: Value = resp
            .json()
            .await
            .map_err(|_| EnvelopeError::Malformed(full.clone()))?;
        if status < 300 || value.pointer("/data/batch_results").is_some() {
            return Ok(value);
        }
        let errors = value["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Err(EnvelopeError::Transit {
            path: full,
            status,
            errors,
        })
    }

    /// Create the named key (idempotent).
    pub async fn create_key(&self, name: &str, key_type: &str) -> Result<()> {
        self.write(&format!("keys/{name}"), &json!({ "type": key_type }))
            .await?;
        Ok(())
    }

    /// Rotate the named key; returns the new latest version.
    pub async fn rotate(&self, name: &str) -> Result<u64> {
        let v = self
            .write(&format!("keys/{name}/rotate"), &json!({}))
            .await?;
        v.pointer("/data/latest_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| EnvelopeError::Malformed(format!("keys/{name}/rotate")))
    }

    /// Set `min_decryption_version` (retire older versions).
    pub async fn set_min_decryption_version(&self, name: &str, version: u64) -> Result<()> {
        self.write(
            &format!("keys/{name}/config"),
            &json!({ "min_decryption_version": version }),
        )
        .await?;
        Ok(())
    }

    /// A fresh 256-bit data key, clear and wrapped.
    pub async fn datakey(&self, name: &str) -> Result<DataKey> {
        let path = format!("datakey/plaintext/{name}");
        let v = self.write(&path, &json!({ "bits": 256 })).await?;
        let wrapped = v
            .pointer("/data/ciphertext")
            .and_then(Value::as_str)
            .ok_or_else(|| EnvelopeError::Malformed(path.clone()))?
            .to_string();
        let clear = Zeroizing::new(
            v.pointer("/data/plaintext")
                .and_then(Value::as_str)
                .ok_or_else(|| EnvelopeError::Malformed(path.clone()))?
                .to_string(),
        );
        let plaintext = Zeroizing::new(
            B64.decode(clear.as_bytes())
                .map_err(|_| EnvelopeError::Malformed(path))?,
        );
        Ok(DataKey { plaintext, wrapped })
    }

    /// Decrypt many ciphertexts, [`BATCH_SIZE`] per call; one result each.
    pub async fn decrypt_batch(
        &self,
        name: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<std::result::Result<Zeroizing<Vec<u8>>, String>>> {
        let path = format!("decrypt/{name}");
        let mut out = Vec::with_capacity(ciphertexts.len());
        for chunk in ciphertexts.chunks(BATCH_SIZE) {
            let items: Vec<Value> = chunk.iter().map(|c| json!({ "ciphertext": c })).collect();
            let v = self.write(&path, &json!({ "batch_input": items })).await?;
            let results = batch_results(&v, chunk.len(), &path)?;
            for r in results {
                if let Some(e) = r
                    .get("error")
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                {
                    out.push(Err(e.to_string()));
                    continue;
                }
                let clear = Zeroizing::new(r["plaintext"].as_str().unwrap_or_default().to_string());
                match B64.decode(clear.as_bytes()) {
                    Ok(p) => out.push(Ok(Zeroizing::new(p))),
                    Err(_) => out.push(Err("server returned invalid base64".into())),
                }
            }
        }
        Ok(out)
    }

    /// Rewrap many ciphertexts to the latest version, [`BATCH_SIZE`] per call.
    pub async fn rewrap_batch(
        &self,
        name: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<std::result::Result<String, String>>> {
        let path = format!("rewrap/{name}");
        let mut out = Vec::with_capacity(ciphertexts.len());
        for chunk in ciphertexts.chunks(BATCH_SIZE) {
            let items: Vec<Value> = chunk.iter().map(|c| json!({ "ciphertext": c })).collect();
            let v = self.write(&path, &json!({ "batch_input": items })).await?;
            for r in batch_results(&v, chunk.len(), &path)? {
                match (
                    r.get("error").and_then(Value::as_str),
                    r.get("ciphertext").and_then(Value::as_str),
                ) {
                    (Some(e), _) if !e.is_empty() => out.push(Err(e.to_string())),
                    (_, Some(ct)) => out.push(Ok(ct.to_string())),
                    _ => out.push(Err("no ciphertext in rewrap result".into())),
                }
            }
        }
        Ok(out)
    }
}

fn batch_results<'a>(v: &'a Value, want: usize, path: &str) -> Result<&'a Vec<Value>> {
    v.pointer("/data/batch_results")
        .and_then(Value::as_array)
        .filter(|a| a.len() == want)
        .ok_or_else(|| EnvelopeError::Malformed(path.to_string()))
}

/// Envelope encryption of records under one KEK.
#[derive(Debug, Clone)]
pub struct Envelope {
    client: TransitClient,
    kek: String,
}

fn seal_local(dek: &[u8], plaintext: &[u8]) -> Result<(String, String)> {
    let cipher = Aes256Gcm::new_from_slice(dek)
        .map_err(|_| EnvelopeError::Crypto("data key is not 256 bits"))?;
    let mut nonce = [0u8; 12];
    getrandom_fill(&mut nonce)?;
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), AAD, &mut buf)
        .map_err(|_| EnvelopeError::Crypto("encryption failed"))?;
    buf.extend_from_slice(&tag);
    Ok((B64.encode(nonce), B64.encode(&buf)))
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    use aes_gcm::aead::rand_core::RngCore;
    aes_gcm::aead::OsRng
        .try_fill_bytes(buf)
        .map_err(|_| EnvelopeError::Crypto("no randomness available"))
}

fn open_local(dek: &[u8], rec: &SealedRecord) -> Result<Zeroizing<Vec<u8>>> {
    let cipher = Aes256Gcm::new_from_slice(dek)
        .map_err(|_| EnvelopeError::Crypto("data key is not 256 bits"))?;
    let nonce = B64
        .decode(&rec.nonce)
        .ok()
        .filter(|n| n.len() == 12)
        .ok_or(EnvelopeError::Crypto("nonce is not 12 bytes of base64"))?;
    let mut buf = Zeroizing::new(
        B64.decode(&rec.ciphertext)
            .map_err(|_| EnvelopeError::Crypto("ciphertext is not base64"))?,
    );
    if buf.len() < 16 {
        return Err(EnvelopeError::Crypto("ciphertext too short"));
    }
    let tag_at = buf.len() - 16;
    let tag = aes_gcm::Tag::clone_from_slice(&buf[tag_at..]);
    buf.truncate(tag_at);
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(&nonce), AAD, &mut buf, &tag)
        .map_err(|_| EnvelopeError::Crypto("authentication failed"))?;
    Ok(buf)
}

impl Envelope {
    /// Records under the transit key `kek` (create it with
    /// [`TransitClient::create_key`] first, or let your policy allow upsert).
    pub fn new(client: TransitClient, kek: impl Into<String>) -> Self {
        Envelope {
            client,
            kek: kek.into(),
        }
    }

    pub fn client(&self) -> &TransitClient {
        &self.client
    }

    pub fn kek(&self) -> &str {
        &self.kek
    }

    /// Encrypt one record under a fresh DEK.
    pub async fn seal(&self, plaintext: &[u8]) -> Result<SealedRecord> {
        let dek = self.client.datakey(&self.kek).await?;
        let (nonce, ciphertext) = seal_local(&dek.plaintext, plaintext)?;
        Ok(SealedRecord {
            wrapped_dek: dek.wrapped,
            nonce,
            ciphertext,
        })
    }

    /// Encrypt many records, each under its own DEK, with up to
    /// `concurrency` data-key requests in flight. Order is preserved.
    pub async fn seal_many(
        &self,
        plaintexts: &[&[u8]],
        concurrency: usize,
    ) -> Result<Vec<SealedRecord>> {
        futures::stream::iter(plaintexts.iter().map(|p| self.seal(p)))
            .buffered(concurrency.max(1))
            .try_collect()
            .await
    }

    /// Decrypt one record: unwrap its DEK through transit, decrypt locally.
    pub async fn open(&self, rec: &SealedRecord) -> Result<Zeroizing<Vec<u8>>> {
        let mut r = self
            .client
            .decrypt_batch(&self.kek, &[rec.wrapped_dek.as_str()])
            .await?;
        let dek = match r.pop() {
            Some(Ok(dek)) => dek,
            Some(Err(e)) => {
                return Err(EnvelopeError::Transit {
                    path: format!("{}/decrypt/{}", self.client.mount, self.kek),
                    status: 400,
                    errors: vec![e],
                });
            }
            None => return Err(EnvelopeError::Malformed("decrypt".into())),
        };
        open_local(&dek, rec)
    }

    /// Decrypt many records with batched DEK unwrapping; one result each.
    pub async fn open_many(
        &self,
        recs: &[SealedRecord],
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>>>> {
        let wrapped: Vec<&str> = recs.iter().map(|r| r.wrapped_dek.as_str()).collect();
        let deks = self.client.decrypt_batch(&self.kek, &wrapped).await?;
        Ok(deks
            .into_iter()
            .zip(recs)
            .map(|(dek, rec)| match dek {
                Ok(dek) => open_local(&dek, rec),
                Err(e) => Err(EnvelopeError::Transit {
                    path: format!("{}/decrypt/{}", self.client.mount, self.kek),
                    status: 400,
                    errors: vec![e],
                }),
            })
            .collect())
    }

    /// Move every record's wrapped DEK to the KEK's latest version with
    /// batched `rewrap` calls. Data ciphertexts and nonces are not touched and
    /// no DEK is ever returned in clear. Records that fail stay as they were
    /// and are listed in the report.
    pub async fn rewrap_all(&self, recs: &mut [SealedRecord]) -> Result<RewrapReport> {
        let wrapped: Vec<String> = recs.iter().map(|r| r.wrapped_dek.clone()).collect();
        let refs: Vec<&str> = wrapped.iter().map(String::as_str).collect();
        let results = self.client.rewrap_batch(&self.kek, &refs).await?;
        let mut report = RewrapReport::default();
        for (i, (rec, r)) in recs.iter_mut().zip(results).enumerate() {
            match r {
                Ok(new) => {
                    let before = rec.kek_version();
                    rec.wrapped_dek = new;
                    if rec.kek_version() != before {
                        report.rewrapped += 1;
                    } else {
                        report.unchanged += 1;
                    }
                }
                Err(e) => report.failed.push((i, e)),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_encryption_round_trips_and_detects_tampering() {
        let dek = [7u8; 32];
        let (nonce, ciphertext) = seal_local(&dek, b"record").unwrap();
        let mut rec = SealedRecord {
            wrapped_dek: "vault:v3:xyz".into(),
            nonce,
            ciphertext,
        };
        assert_eq!(rec.kek_version(), Some(3));
        assert_eq!(open_local(&dek, &rec).unwrap().as_slice(), b"record");
        assert!(open_local(&[8u8; 32], &rec).is_err(), "wrong DEK");
        let mut raw = B64.decode(&rec.ciphertext).unwrap();
        raw[0] ^= 1;
        rec.ciphertext = B64.encode(raw);
        assert!(matches!(
            open_local(&dek, &rec),
            Err(EnvelopeError::Crypto(_))
        ));
    }

    #[test]
    fn token_never_prints() {
        let c = TransitClient::new("http://127.0.0.1:1", "s.supersecret", "transit").unwrap();
        assert!(!format!("{c:?}").contains("supersecret"));
        assert!(TransitClient::new("127.0.0.1:1", "t", "transit").is_err());
    }
}
