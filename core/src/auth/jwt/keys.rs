//! The keys a JWT mount verifies signatures with: the configured PEM keys
//! (`jwt_validation_pubkeys`), or a JSON Web Key Set fetched from
//! `jwks_url` or from the `jwks_uri` of the `oidc_discovery_url`'s
//! `.well-known/openid-configuration`.
//!
//! A fetched set lives in memory only ([`RemoteKeys`]): fetched on first
//! use (or when the config is written), refetched when a token names a `kid`
//! the cache lacks or no cached key verifies it (key rotation), and once
//! the keys are an hour old by the next login that finds no other fetch
//! under way (after a failure, not again for a minute). Refetches go
//! through one gate: one fetch at a time, and a token bucket (3 fetches,
//! one more every 10 s) so that tokens with made-up `kid`s cannot turn
//! into a stream of requests to the provider. Fetches have bounded connect and total timeouts and a bounded
//! response size; a failed fetch keeps the cached keys, so an endpoint that
//! is down or answers garbage only affects keys not seen before. Every fetch
//! is counted in `custos_auth_jwks_fetches_total{outcome}`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use jsonwebtoken::{DecodingKey, DecodingKeyKind};
use serde_json::Value;

use super::token::{Parsed, TokenError};
use crate::metrics as m;

/// Connecting to the JWKS or discovery endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One whole fetch (connect, TLS, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set or discovery document larger than this is refused.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Cached keys are refreshed at the first login after this long (a failed
/// refresh keeps them).
pub const REFRESH_AFTER: Duration = Duration::from_secs(3600);
/// After a failed refresh of stale keys, the next is tried no sooner.
const STALE_BACKOFF: Duration = Duration::from_secs(60);
/// Token bucket for fetches: burst, and one more fetch per interval.
const FETCH_BURST: f64 = 3.0;
const FETCH_REFILL: Duration = Duration::from_secs(10);

/// One public key (public material; `Debug` shows its id and family).
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Verify with ring (constant-time, and several times faster than a
    /// big-integer RSA): the key material was parsed by jsonwebtoken from
    /// PEM or JWK; RSA keys must have 2048 to 8192 bits, as ring requires.
    fn verifies(&self, p: &Parsed<'_>) -> bool {
        use ring::signature as rs;
        if self.family != p.alg.family() {
            return false;
        }
        let (msg, sig) = (p.signing_input.as_bytes(), p.signature.as_slice());
        let rsa: Option<&'static rs::RsaParameters> = match p.alg {
            Algorithm::RS256 => Some(&rs::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => Some(&rs::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => Some(&rs::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => Some(&rs::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => Some(&rs::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => Some(&rs::RSA_PSS_2048_8192_SHA512),
            _ => None,
        };
        match (self.key.kind(), rsa) {
            (DecodingKeyKind::RsaModulusExponent { n, e }, Some(params)) => {
                rs::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            (DecodingKeyKind::RsaModulusExponent { .. }, None) => false,
            (DecodingKeyKind::SecretOrDer(der), Some(params)) => {
                rs::UnparsedPublicKey::new(params, der)
                    .verify(msg, sig)
                    .is_ok()
            }
            (DecodingKeyKind::SecretOrDer(raw), None) => {
                let alg: &'static dyn rs::VerificationAlgorithm = match p.alg {
                    Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
                    Algorithm::EdDSA => &rs::ED25519,
                    _ => return false,
                };
                rs::UnparsedPublicKey::new(alg, raw)
                    .verify(msg, sig)
                    .is_ok()
            }
        }
    }
}

/// A PEM decoder of one key family.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// Parse one `jwt_validation_pubkeys` entry: a PEM public key (PKIX or
/// PKCS#1 RSA, EC P-256/P-384, Ed25519) or certificate.
pub fn parse_pem(pem: &str) -> Result<VerifyKey, String> {
    let pem = pem.trim().as_bytes();
    let attempts: [(AlgorithmFamily, PemParser); 3] = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
    ];
    attempts
        .iter()
        .find_map(|(family, parse)| {
            parse(pem).ok().map(|key| VerifyKey {
                kid: None,
                family: *family,
                key,
            })
        })
        .ok_or_else(|| "data does not contain any valid public keys".to_string())
}

/// Parse a JWKS document; keys this server cannot use (symmetric `oct`
/// keys, encryption keys, unknown curves) are skipped. A body that is not a
/// key set is an error.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("failed to decode keys: response is not JSON: {e}"))?;
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err("failed to decode keys: no \"keys\" array".into());
    };
    Ok(keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                AlgorithmParameters::OctetKey(_) => return None,
            };
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(VerifyKey {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            })
        })
        .collect())
}

/// Where a mount's keys come from.
pub enum KeySet {
    Static(Vec<VerifyKey>),
    Remote(RemoteKeys),
}

impl KeySet {
    /// Verify the token's signature; the error is Vault's wording.
    pub async fn verify(&self, p: &Parsed<'_>) -> Result<(), TokenError> {
        match self {
            KeySet::Static(keys) => {
                if keys.iter().any(|k| k.verifies(p)) {
                    Ok(())
                } else {
                    Err(TokenError::Signature(
                        "no known key successfully validated the token signature".into(),
                    ))
                }
            }
            KeySet::Remote(r) => r.verify(p).await,
        }
    }
}

/// The URL the keys are fetched from.
#[derive(Debug, Clone)]
pub enum Source {
    Jwks(String),
    /// The issuer; the JWKS URL is its discovery document's `jwks_uri`.
    Discovery(String),
}

struct Cached {
    keys: Vec<VerifyKey>,
    /// Bumped by every successful fetch.
    generation: u64,
    fetched: Option<Instant>,
}

struct Gate {
    tokens: f64,
    refilled: Instant,
    /// Resolved from the discovery document.
    jwks_uri: Option<String>,
    /// After a failed refresh of stale keys, no other is tried before this
    /// (logins go on with the cached keys meanwhile).
    stale_backoff_until: Option<Instant>,
}

impl Gate {
    fn take(&mut self, now: Instant) -> bool {
        let gained = now.duration_since(self.refilled).as_secs_f64() / FETCH_REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(FETCH_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a refresh did not happen.
pub enum FetchError {
    /// The gate refused (too many fetches lately).
    Limited,
    /// The fetch failed; the message says how (no secrets in it).
    Failed(String),
}

/// A fetched key set and how to refetch it.
pub struct RemoteKeys {
    source: Source,
    client: reqwest::Client,
    cache: RwLock<Arc<Cached>>,
    gate: tokio::sync::Mutex<Gate>,
}

impl RemoteKeys {
    /// `ca_pem`: the CA bundle to trust instead of the system roots.
    pub fn new(source: Source, ca_pem: &str) -> Result<Self, String> {
        Ok(RemoteKeys {
            source,
            client: http_client(ca_pem)?,
            cache: RwLock::new(Arc::new(Cached {
                keys: Vec::new(),
                generation: 0,
                fetched: None,
            })),
            gate: tokio::sync::Mutex::new(Gate {
                tokens: FETCH_BURST,
                refilled: Instant::now(),
                jwks_uri: None,
                stale_backoff_until: None,
            }),
        })
    }

    fn snapshot(&self) -> Arc<Cached> {
        match self.cache.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetch now (config write: is the endpoint usable?). The keys fetched
    /// become the cache.
    pub async fn prime(&self) -> Result<(), String> {
        match self.refresh(self.snapshot().generation).await {
            Ok(_) => Ok(()),
            Err(FetchError::Limited) => Err("too many key fetches; try again shortly".into()),
            Err(FetchError::Failed(e)) => Err(e),
        }
    }

    /// Resolve the discovery document's `jwks_uri` (config write and read of
    /// `oidc_discovery_url`); once resolved, it is not fetched again until
    /// the config changes.
    pub async fn discover(&self) -> Result<String, String> {
        let Source::Discovery(issuer) = &self.source else {
            return Err("not an OIDC discovery key set".into());
        };
        let mut gate = self.gate.lock().await;
        if let Some(uri) = &gate.jwks_uri {
            return Ok(uri.clone());
        }
        let uri = discover(&self.client, issuer).await?;
        gate.jwks_uri = Some(uri.clone());
        Ok(uri)
    }

    async fn verify(&self, p: &Parsed<'_>) -> Result<(), TokenError> {
        let mut snap = self.snapshot();
        match snap.fetched {
            // Never fetched: nothing to fall back on.
            None => match self.refresh(snap.generation).await {
                Ok(s) => snap = s,
                Err(FetchError::Failed(e)) => {
                    return Err(TokenError::Signature(format!("fetching keys oidc: {e}")));
                }
                Err(FetchError::Limited) => {}
            },
            // Stale: refresh if no one else is fetching and no refresh
            // failed lately; otherwise go on with the cached keys.
            Some(t) if t.elapsed() >= REFRESH_AFTER => {
                if let Ok(s) = self.refresh_stale(snap.generation).await {
                    snap = s;
                }
            }
            Some(_) => {}
        }
        if try_keys(&snap.keys, p) {
            return Ok(());
        }
        // An unknown kid, or no cached key verifies: the provider may have
        // rotated its keys. One refetch, through the gate.
        match self.refresh(snap.generation).await {
            Ok(s) if try_keys(&s.keys, p) => Ok(()),
            Ok(_) | Err(FetchError::Limited) => Err(TokenError::Signature(
                "failed to verify id token signature".into(),
            )),
            Err(FetchError::Failed(e)) => {
                Err(TokenError::Signature(format!("fetching keys oidc: {e}")))
            }
        }
    }

    /// Refetch unless someone else did since generation `seen`; gated.
    async fn refresh(&self, seen: u64) -> Result<Arc<Cached>, FetchError> {
        let mut gate = self.gate.lock().await;
        self.refresh_locked(&mut gate, seen).await
    }

    /// The hourly refresh: never waits behind another fetch, and after a
    /// failure leaves the endpoint alone for a minute, so an identity
    /// provider that is down slows at most one login a minute.
    async fn refresh_stale(&self, seen: u64) -> Result<Arc<Cached>, FetchError> {
        let Ok(mut gate) = self.gate.try_lock() else {
            return Err(FetchError::Limited);
        };
        let now = Instant::now();
        if gate.stale_backoff_until.is_some_and(|t| now < t) {
            return Err(FetchError::Limited);
        }
        let r = self.refresh_locked(&mut gate, seen).await;
        gate.stale_backoff_until = match &r {
            Err(FetchError::Failed(_)) => Some(Instant::now() + STALE_BACKOFF),
            _ => None,
        };
        r
    }

    async fn refresh_locked(&self, gate: &mut Gate, seen: u64) -> Result<Arc<Cached>, FetchError> {
        let cur = self.snapshot();
        if cur.generation != seen {
            return Ok(cur);
        }
        if !gate.take(Instant::now()) {
            m::counter_inc(m::AUTH_JWKS_FETCHES, &[("outcome", "rate_limited".into())]);
            return Err(FetchError::Limited);
        }
        let fetched = self.fetch(gate).await;
        let outcome = match &fetched {
            Ok(_) => "success",
            Err((kind, _)) => kind,
        };
        m::counter_inc(m::AUTH_JWKS_FETCHES, &[("outcome", outcome.to_string())]);
        match fetched {
            Ok(keys) => {
                let next = Arc::new(Cached {
                    keys,
                    generation: cur.generation + 1,
                    fetched: Some(Instant::now()),
                });
                match self.cache.write() {
                    Ok(mut c) => *c = next.clone(),
                    Err(poisoned) => *poisoned.into_inner() = next.clone(),
                }
                Ok(next)
            }
            Err((_, e)) => {
                tracing::warn!(source = ?self.source, error = %e, "JWT auth: fetching the key set failed; cached keys stay in use");
                Err(FetchError::Failed(e))
            }
        }
    }

    /// One fetch of the key set. Errors are (outcome label, message).
    async fn fetch(&self, gate: &mut Gate) -> Result<Vec<VerifyKey>, (&'static str, String)> {
        let url = match &self.source {
            Source::Jwks(u) => u.clone(),
            Source::Discovery(issuer) => match &gate.jwks_uri {
                Some(u) => u.clone(),
                None => {
                    let u = discover(&self.client, issuer)
                        .await
                        .map_err(|e| ("unreachable", e))?;
                    gate.jwks_uri = Some(u.clone());
                    u
                }
            },
        };
        let body = get(&self.client, &url)
            .await
            .map_err(|e| ("unreachable", format!("get keys failed: {e}")))?;
        parse_jwks(&body).map_err(|e| ("invalid", e))
    }
}

fn try_keys(keys: &[VerifyKey], p: &Parsed<'_>) -> bool {
    keys.iter()
        .filter(|k| match &p.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .any(|k| k.verifies(p))
}

/// The HTTP client for one mount's key fetches: bounded timeouts, and the
/// given CA bundle (if any) as the only roots.
fn http_client(ca_pem: &str) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .use_rustls_tls();
    if !ca_pem.trim().is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
            .map_err(|_| "could not parse CA PEM value successfully".to_string())?;
        if certs.is_empty() {
            return Err("could not parse CA PEM value successfully".into());
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// GET a URL; 200 only, body bounded.
async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = client
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("Get {url:?}: {}", error_chain(&e)))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(status.to_string());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {url:?}: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "response from {url:?} is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Read `<issuer>/.well-known/openid-configuration` and return its
/// `jwks_uri`, checking the issuer as cap does.
async fn discover(client: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = get(client, &url).await?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("failed to decode OIDC discovery document: {e}"))?;
    let got = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if got != issuer {
        return Err(format!(
            "issuer did not match the returned issuer, expected {issuer:?} got {got:?}"
        ));
    }
    doc.get("jwks_uri")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "OIDC discovery document has no jwks_uri".to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut g = Gate {
            tokens: FETCH_BURST,
            refilled: t0,
            jwks_uri: None,
            stale_backoff_until: None,
        };
        assert!(g.take(t0) && g.take(t0) && g.take(t0));
        assert!(!g.take(t0));
        assert!(!g.take(t0 + FETCH_REFILL / 2));
        assert!(g.take(t0 + FETCH_REFILL + Duration::from_millis(1)));
        assert!(!g.take(t0 + FETCH_REFILL + Duration::from_millis(2)));
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys_and_refuses_garbage() {
        assert!(
            parse_jwks(b"not json")
                .unwrap_err()
                .contains("failed to decode keys")
        );
        assert!(
            parse_jwks(b"{\"nokeys\": []}")
                .unwrap_err()
                .contains("keys")
        );
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("e"));
        assert!(keys[0].family == AlgorithmFamily::Ec);
    }

    fn parsed(token: &str) -> super::super::token::Parsed<'_> {
        super::super::token::parse(token).unwrap_or_else(|e| panic!("{}", e.message()))
    }

    #[test]
    fn ring_verifies_what_jsonwebtoken_signs_and_nothing_else() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use jsonwebtoken::{EncodingKey, Header};
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let claims = serde_json::json!({"sub": "x", "iat": 1});

        // ES256, key from PEM and from JWK.
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(&sk);
        let enc =
            EncodingKey::from_ec_pem(sk.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let es = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &enc).unwrap();
        let pem_key = parse_pem(&vk.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
        assert!(pem_key.verifies(&parsed(&es)));
        let point = vk.to_encoded_point(false);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}]});
        let jwk_key = parse_jwks(jwks.to_string().as_bytes()).unwrap().remove(0);
        assert!(jwk_key.verifies(&parsed(&es)));
        // Another payload under the same signature does not verify.
        let mut parts: Vec<&str> = es.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(b"{\"sub\":\"y\",\"iat\":1}");
        parts[1] = &other;
        assert!(!pem_key.verifies(&parsed(&parts.join("."))));

        // EdDSA: PKCS#8 and SPKI built from a fixed seed.
        let seed = [9u8; 32];
        let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&seed);
        let tok = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(&der),
        )
        .unwrap();
        let mut spki = hex::decode("302a300506032b6570032100").unwrap();
        spki.extend_from_slice(&ed.verifying_key().to_bytes());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki)
        );
        let ed_key = parse_pem(&pem).unwrap();
        assert!(ed_key.verifies(&parsed(&tok)));
        // Keys of another family never verify.
        assert!(!ed_key.verifies(&parsed(&es)));
        assert!(!pem_key.verifies(&parsed(&tok)));
    }

    /// Keys an hour old are refreshed at a login; when the provider is down
    /// the login still verifies with them, and the next refresh waits a
    /// minute.
    #[tokio::test]
    async fn stale_keys_keep_working_while_the_provider_is_down() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use jsonwebtoken::{EncodingKey, Header};
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let sk = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let point = p256::ecdsa::VerifyingKey::from(&sk).to_encoded_point(false);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}]});
        let enc =
            EncodingKey::from_ec_pem(sk.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k".into());
        let tok = jsonwebtoken::encode(&h, &serde_json::json!({"iat": 1}), &enc).unwrap();

        // Nothing listens on port 1: every fetch fails at once.
        let r = RemoteKeys::new(Source::Jwks("http://127.0.0.1:1/keys".into()), "").unwrap();
        let Some(long_ago) = Instant::now().checked_sub(REFRESH_AFTER + Duration::from_secs(1))
        else {
            return; // a machine up for less than an hour cannot hold such an Instant
        };
        *r.cache.write().unwrap() = Arc::new(Cached {
            keys: parse_jwks(jwks.to_string().as_bytes()).unwrap(),
            generation: 1,
            fetched: Some(long_ago),
        });
        assert!(r.verify(&parsed(&tok)).await.is_ok());
        let backoff = r.gate.lock().await.stale_backoff_until;
        assert!(
            backoff.is_some_and(|t| t > Instant::now()),
            "a failed refresh backs off"
        );
        let tokens = r.gate.lock().await.tokens;
        assert!(r.verify(&parsed(&tok)).await.is_ok());
        assert!(
            r.gate.lock().await.tokens >= tokens,
            "no fetch while backing off"
        );
        // Never fetched and unreachable: a clear error naming the fetch.
        let fresh = RemoteKeys::new(Source::Jwks("http://127.0.0.1:1/keys".into()), "").unwrap();
        let e = fresh.verify(&parsed(&tok)).await.unwrap_err().message();
        assert!(e.contains("fetching keys oidc: get keys failed: "), "{e}");
    }

    #[test]
    fn pem_parsing_names_no_key() {
        assert_eq!(
            parse_pem("garbage").err().unwrap_or_default(),
            "data does not contain any valid public keys"
        );
        let ec = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n-----END PUBLIC KEY-----\n";
        let k = parse_pem(ec).unwrap_or_else(|e| panic!("{e}"));
        assert!(k.family == AlgorithmFamily::Ec);
    }
}
