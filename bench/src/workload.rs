//! The benchmark workloads: what one operation sends and what it checks.
//!
//! A [`Fixture`] is the per-server data a workload needs (pre-populated KV
//! keys, a transit key and ciphertexts, pre-created tokens, request bodies
//! built once). It is filled by the `ensure_*` functions through the same
//! HTTP API any client uses, and read by [`op`], which the load engine
//! (`load.rs`) calls in a loop. Every operation verifies its replies (200 or
//! 204, and the fields it needs) and reports a failure as an error string.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::client::{Conn, VaultClient};

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Workload {
    KvWrite,
    KvRead,
    KvReadCold,
    KvMixed,
    TransitEncrypt,
    TransitDecrypt,
    TransitEncryptBatch100,
    TransitRewrapBatch100,
    TokenCreateLookup,
    TokenLookup,
    KvRead1Mib,
    ApproleLogin,
    JwtLogin,
}

const NAMES: &[(Workload, &str, &str)] = &[
    (
        Workload::KvWrite,
        "kv-write",
        "PUT secret/data/bench/w/<random of --keys>, 64 B value",
    ),
    (
        Workload::KvRead,
        "kv-read",
        "GET secret/data/bench/r/<random of --keys pre-populated>",
    ),
    (
        Workload::KvReadCold,
        "kv-read-cold",
        "kv-read's requests and keys, each server's measured window starting right after its warm-up, `sync` and `echo 3 > /proc/sys/vm/drop_caches` (needs root; the run fails otherwise). The kernel drops only clean pages no process maps: Custos's redb files (read with pread) go, its own 48 MiB in-process redb cache stays; OpenBao's bbolt file is mmap'd, so the pages its process has touched stay resident and only the rest goes; only run when named in --workloads",
    ),
    (
        Workload::KvMixed,
        "kv-mixed",
        "90% kv-read, 10% writes to the same pre-populated keys",
    ),
    (
        Workload::TransitEncrypt,
        "transit-encrypt",
        "POST transit/encrypt/bench, 32 B plaintext",
    ),
    (
        Workload::TransitDecrypt,
        "transit-decrypt",
        "POST transit/decrypt/bench, one of 64 ciphertexts",
    ),
    (
        Workload::TransitEncryptBatch100,
        "transit-encrypt-batch100",
        "POST transit/encrypt/bench with batch_input of 100 x 32 B (rps = requests)",
    ),
    (
        Workload::TransitRewrapBatch100,
        "transit-rewrap-batch100",
        "POST transit/rewrap/bench-kek with batch_input of 100 v1 ciphertexts of 32 B DEKs, key at v2: the rotator's KEK rewrap call (rps = requests; DEKs/s = 100 x rps)",
    ),
    (
        Workload::TokenCreateLookup,
        "token-create+lookup",
        "POST auth/token/create then POST auth/token/lookup of it (1 op = 2 requests)",
    ),
    (
        Workload::TokenLookup,
        "token-lookup",
        "POST auth/token/lookup of one of --tokens pre-created tokens",
    ),
    (
        Workload::KvRead1Mib,
        "kv-read-1mib",
        "GET of one of --big-keys secrets of --big-value bytes",
    ),
    (
        Workload::ApproleLogin,
        "approle-login",
        "POST auth/bench-approle/login with the role_id and one of 64 unlimited secret-ids: role and secret-id lookup + token issue",
    ),
    (
        Workload::JwtLogin,
        "jwt-login",
        "POST auth/bench-jwt/login with one of 64 pre-signed RS256 JWTs (GitLab-CI-shaped claims, bound_audiences + bound_claims), keys from jwt_validation_pubkeys: verify + token issue",
    ),
];

impl Workload {
    /// The default set (`--workloads` not given): every workload but the
    /// opt-in ones ([`Workload::cold_cache`]), so the headline run and its
    /// smoke test never drop the machine's page cache.
    pub fn all() -> Vec<Workload> {
        NAMES
            .iter()
            .map(|(w, _, _)| *w)
            .filter(|w| !w.cold_cache())
            .collect()
    }

    /// The load engine drops the kernel's page cache between this
    /// workload's warm-up and its measured window (`load::drop_page_cache`).
    pub fn cold_cache(self) -> bool {
        matches!(self, Workload::KvReadCold)
    }

    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(w, _, _)| *w == self)
            .map_or("?", |(_, n, _)| n)
    }

    pub fn describe(self) -> &'static str {
        NAMES
            .iter()
            .find(|(w, _, _)| *w == self)
            .map_or("?", |(_, _, d)| d)
    }

    pub fn needs_transit(self) -> bool {
        matches!(
            self,
            Workload::TransitEncrypt
                | Workload::TransitDecrypt
                | Workload::TransitEncryptBatch100
                | Workload::TransitRewrapBatch100
        )
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NAMES
            .iter()
            .find(|(_, n, _)| *n == s || n.replace('+', "-") == s)
            .map(|(w, _, _)| *w)
            .ok_or_else(|| {
                let names: Vec<&str> = NAMES.iter().map(|(_, n, _)| *n).collect();
                format!("unknown workload {s:?}; one of: {}", names.join(", "))
            })
    }
}

/// Sizes of the data sets the workloads use.
#[derive(Clone, Debug, Serialize)]
pub struct Dataset {
    /// KV keys pre-populated for kv-read / kv-mixed (and the kv-write key space).
    pub keys: usize,
    /// Number of large secrets for kv-read-1mib.
    pub big_keys: usize,
    /// Size in bytes of each large secret's value.
    pub big_value: usize,
    /// Tokens pre-created for token-lookup.
    pub tokens: usize,
    /// Concurrency used while pre-populating.
    pub populate_concurrency: usize,
}

/// Per-server workload state.
pub struct Fixture {
    /// How many read keys exist (0..kv_keys).
    pub kv_keys: usize,
    big_keys: usize,
    /// `None` when transit is usable; otherwise why it is not.
    pub transit_missing: Option<String>,
    transit_key: bool,
    decrypt_bodies: Vec<Bytes>,
    lookup_bodies: Vec<Bytes>,
    write_body: Bytes,
    encrypt_body: Bytes,
    batch_body: Bytes,
    /// `batch_input` of 100 ciphertexts under `bench-kek` v1 (the key is at v2).
    rewrap_body: Option<Bytes>,
    create_body: Bytes,
    /// `{"role_id": ..., "secret_id": ...}` login bodies for approle-login.
    approle_bodies: Vec<Bytes>,
    /// `{"role": "bench", "jwt": ...}` login bodies for jwt-login.
    jwt_bodies: Vec<Bytes>,
    /// Time and rate of the KV pre-population, per batch.
    pub populate_log: Vec<PopulateStat>,
}

/// One pre-population batch: how long it took and the implied write rate.
#[derive(Clone, Debug, Serialize)]
pub struct PopulateStat {
    pub from: usize,
    pub to: usize,
    pub seconds: f64,
    pub writes_per_sec: f64,
}

fn random_text(rng: &mut SmallRng, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes.div_ceil(4) * 3];
    rng.fill_bytes(&mut raw);
    let mut s = B64.encode(raw);
    s.truncate(bytes);
    s
}

fn kv_body(value: &str) -> Bytes {
    Bytes::from(json!({ "data": { "value": value } }).to_string())
}

impl Fixture {
    pub fn new(transit_missing: Option<String>) -> Self {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut pt = [0u8; 32];
        rng.fill_bytes(&mut pt);
        let pt = B64.encode(pt);
        let batch: Vec<_> = (0..100).map(|_| json!({ "plaintext": pt })).collect();
        Self {
            kv_keys: 0,
            big_keys: 0,
            transit_missing,
            transit_key: false,
            decrypt_bodies: Vec::new(),
            lookup_bodies: Vec::new(),
            write_body: kv_body(&random_text(&mut rng, 64)),
            encrypt_body: Bytes::from(json!({ "plaintext": pt }).to_string()),
            batch_body: Bytes::from(json!({ "batch_input": batch }).to_string()),
            rewrap_body: None,
            create_body: Bytes::from(json!({ "policies": ["default"], "ttl": "1h" }).to_string()),
            approle_bodies: Vec::new(),
            jwt_bodies: Vec::new(),
            populate_log: Vec::new(),
        }
    }

    /// Make the fixture ready for `w` (pre-populating what is missing).
    pub async fn ensure(&mut self, w: Workload, c: &VaultClient, ds: &Dataset) -> Result<()> {
        match w {
            Workload::KvRead | Workload::KvReadCold | Workload::KvMixed | Workload::KvWrite => {
                self.ensure_kv(c, ds.keys, ds.populate_concurrency).await
            }
            Workload::KvRead1Mib => self.ensure_big(c, ds).await,
            Workload::TokenLookup => self.ensure_tokens(c, ds.tokens).await,
            Workload::TokenCreateLookup => Ok(()),
            Workload::ApproleLogin => self.ensure_approle(c).await,
            Workload::JwtLogin => self.ensure_jwt(c).await,
            Workload::TransitEncrypt
            | Workload::TransitDecrypt
            | Workload::TransitEncryptBatch100 => self.ensure_transit(c).await,
            Workload::TransitRewrapBatch100 => self.ensure_rewrap(c).await,
        }
    }

    /// A KEK `bench-kek` with 100 DEK-sized ciphertexts under its v1, then
    /// rotated to v2: every rewrap call decrypts under v1 and encrypts under
    /// v2, as the rotator's KEK rewrap does.
    async fn ensure_rewrap(&mut self, c: &VaultClient) -> Result<()> {
        if let Some(why) = &self.transit_missing {
            bail!("transit unavailable: {why}");
        }
        if self.rewrap_body.is_some() {
            return Ok(());
        }
        c.post_json("transit/keys/bench-kek", &json!({ "type": "aes256-gcm96" }))
            .await?;
        let v = c
            .post_json(
                "transit/encrypt/bench-kek",
                &serde_json::from_slice(&self.batch_body)?,
            )
            .await?;
        let items: Vec<serde_json::Value> = v["data"]["batch_results"]
            .as_array()
            .ok_or_else(|| anyhow!("transit/encrypt batch: no data.batch_results in reply"))?
            .iter()
            .map(|r| {
                r["ciphertext"]
                    .as_str()
                    .map(|ct| json!({ "ciphertext": ct }))
                    .ok_or_else(|| anyhow!("transit/encrypt batch: an item has no ciphertext"))
            })
            .collect::<Result<_>>()?;
        c.post_json("transit/keys/bench-kek/rotate", &json!({}))
            .await?;
        self.rewrap_body = Some(Bytes::from(json!({ "batch_input": items }).to_string()));
        Ok(())
    }

    /// Pre-populate read keys `kv_keys..n` with `conc` parallel writers.
    pub async fn ensure_kv(&mut self, c: &VaultClient, n: usize, conc: usize) -> Result<()> {
        if self.kv_keys >= n {
            return Ok(());
        }
        let from = self.kv_keys;
        let t0 = Instant::now();
        let body = self.write_body.clone();
        populate(c, from, n, conc, move |i| {
            (format!("secret/data/bench/r/{i}"), body.clone())
        })
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        self.populate_log.push(PopulateStat {
            from,
            to: n,
            seconds,
            writes_per_sec: (n - from) as f64 / seconds.max(1e-9),
        });
        self.kv_keys = n;
        Ok(())
    }

    async fn ensure_big(&mut self, c: &VaultClient, ds: &Dataset) -> Result<()> {
        if self.big_keys >= ds.big_keys {
            return Ok(());
        }
        let mut rng = SmallRng::seed_from_u64(11);
        let body = kv_body(&random_text(&mut rng, ds.big_value));
        populate(c, self.big_keys, ds.big_keys, 4, move |i| {
            (format!("secret/data/bench/big/{i}"), body.clone())
        })
        .await?;
        self.big_keys = ds.big_keys;
        Ok(())
    }

    async fn ensure_tokens(&mut self, c: &VaultClient, n: usize) -> Result<()> {
        while self.lookup_bodies.len() < n {
            let v = c
                .post_json(
                    "auth/token/create",
                    &json!({ "policies": ["default"], "ttl": "24h" }),
                )
                .await?;
            let t = v["auth"]["client_token"]
                .as_str()
                .ok_or_else(|| anyhow!("auth/token/create: no auth.client_token in reply"))?;
            self.lookup_bodies
                .push(Bytes::from(json!({ "token": t }).to_string()));
        }
        Ok(())
    }

    /// A `jwt` auth mount at `bench-jwt/` verifying with a fresh RSA key's
    /// PEM (no JWKS fetches in the measured loop), a role bound on audience
    /// and project, and 64 tokens for 64 users signed with the key, valid
    /// for a day.
    async fn ensure_jwt(&mut self, c: &VaultClient) -> Result<()> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        if !self.jwt_bodies.is_empty() {
            return Ok(());
        }
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let private = key.to_pkcs8_pem(LineEnding::LF)?;
        let public = key.to_public_key().to_public_key_pem(LineEnding::LF)?;
        let mounts = c.get("sys/auth").await?;
        if !mounts.body.windows(10).any(|w| w == b"bench-jwt/") {
            c.post_json("sys/auth/bench-jwt", &json!({ "type": "jwt" }))
                .await?;
        }
        c.post_json(
            "auth/bench-jwt/config",
            &json!({ "jwt_validation_pubkeys": [public], "bound_issuer": "https://gitlab.bench" }),
        )
        .await?;
        c.post_json(
            "auth/bench-jwt/role/bench",
            &json!({
                "role_type": "jwt", "user_claim": "user_login", "bound_audiences": "bench",
                "bound_claims": { "project_path": "group/app", "ref_protected": "true" },
                "claim_mappings": { "project_path": "project_path", "ref": "ref" },
                "token_policies": "default", "token_ttl": "1h",
            }),
        )
        .await?;
        let enc = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes())?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for i in 0..64 {
            let claims = json!({
                "iss": "https://gitlab.bench", "aud": "bench", "sub": format!("project_path:group/app:ref_type:branch:ref:main:{i}"),
                "iat": now, "nbf": now, "exp": now + 86_400, "project_path": "group/app",
                "ref": "main", "ref_protected": "true", "user_login": format!("ci-{i}"),
            });
            let jwt = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                &claims,
                &enc,
            )?;
            self.jwt_bodies.push(Bytes::from(
                json!({ "role": "bench", "jwt": jwt }).to_string(),
            ));
        }
        Ok(())
    }

    /// An `approle` auth mount at `bench-approle/` with role `bench`
    /// (default policy, 1h tokens) and 64 secret-ids without a use limit,
    /// as a fleet of agents that log in again and again holds them.
    async fn ensure_approle(&mut self, c: &VaultClient) -> Result<()> {
        if !self.approle_bodies.is_empty() {
            return Ok(());
        }
        let mounts = c.get("sys/auth").await?;
        if !mounts.body.windows(14).any(|w| w == b"bench-approle/") {
            c.post_json("sys/auth/bench-approle", &json!({ "type": "approle" }))
                .await?;
        }
        c.post_json(
            "auth/bench-approle/role/bench",
            &json!({ "token_policies": "default", "token_ttl": "1h" }),
        )
        .await?;
        let r = c.get("auth/bench-approle/role/bench/role-id").await?;
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        let role_id = v["data"]["role_id"]
            .as_str()
            .ok_or_else(|| anyhow!("approle: no data.role_id in {}", r.snippet(200)))?
            .to_string();
        for _ in 0..64 {
            let v = c
                .post_json("auth/bench-approle/role/bench/secret-id", &json!({}))
                .await?;
            let secret_id = v["data"]["secret_id"]
                .as_str()
                .ok_or_else(|| anyhow!("approle: no data.secret_id in reply"))?;
            self.approle_bodies.push(Bytes::from(
                json!({ "role_id": role_id, "secret_id": secret_id }).to_string(),
            ));
        }
        Ok(())
    }

    async fn ensure_transit(&mut self, c: &VaultClient) -> Result<()> {
        if let Some(why) = &self.transit_missing {
            bail!("transit unavailable: {why}");
        }
        if !self.transit_key {
            c.post_json("transit/keys/bench", &json!({ "type": "aes256-gcm96" }))
                .await?;
            self.transit_key = true;
        }
        while self.decrypt_bodies.len() < 64 {
            let v = c
                .post_json(
                    "transit/encrypt/bench",
                    &serde_json::from_slice(&self.encrypt_body)?,
                )
                .await?;
            let ct = v["data"]["ciphertext"]
                .as_str()
                .ok_or_else(|| anyhow!("transit/encrypt: no data.ciphertext in reply"))?;
            self.decrypt_bodies
                .push(Bytes::from(json!({ "ciphertext": ct }).to_string()));
        }
        Ok(())
    }
}

/// Write `(path, body)` for every index in `from..to` with `conc` parallel
/// writers, retrying each write a few times (OpenBao's fresh KV v2 mount
/// answers 4xx/5xx for a moment while it "upgrades").
async fn populate<F>(c: &VaultClient, from: usize, to: usize, conc: usize, item: F) -> Result<()>
where
    F: Fn(usize) -> (String, Bytes) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(from));
    let done = Arc::new(AtomicU64::new(0));
    let item = Arc::new(item);
    let total = to.saturating_sub(from);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc.max(1) {
        let (c, next, done, item) = (c.clone(), next.clone(), done.clone(), item.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok::<(), anyhow::Error>(());
                }
                let (path, body) = item(i);
                let mut attempt = 0;
                loop {
                    let r = c.post(&path, body.clone()).await;
                    match r {
                        Ok(r) if r.ok() => break,
                        Ok(r) if attempt >= 30 => {
                            bail!("writing {path}: {} {}", r.status, r.snippet(200))
                        }
                        Err(e) if attempt >= 30 => bail!("writing {path}: {e}"),
                        _ => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if total >= 100_000 && d % 50_000 == 0 {
                    eprintln!(
                        "    {} {d}/{total} keys written ({:.0}/s)",
                        c.addr(),
                        d as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("populate task: {e}"))??;
    }
    Ok(())
}

/// Check a reply, turning a non-2xx into an error string.
macro_rules! check {
    ($what:expr, $r:expr) => {
        match $r {
            Ok(r) if r.ok() => r,
            Ok(r) => return Err(format!("{}: {} {}", $what, r.status, r.snippet(200))),
            Err(e) => return Err(format!("{}: {e}", $what)),
        }
    };
}

/// Run one operation of `w`; returns the number of HTTP requests it made.
pub async fn op(
    w: Workload,
    fx: &Fixture,
    c: &mut Conn,
    rng: &mut SmallRng,
) -> Result<u32, String> {
    let pick = |rng: &mut SmallRng, n: usize| rng.gen_range(0..n.max(1));
    match w {
        Workload::KvRead | Workload::KvReadCold => {
            let r = check!(
                "kv read",
                c.get(&format!("secret/data/bench/r/{}", pick(rng, fx.kv_keys)))
                    .await
            );
            if r.body.len() < 20 {
                return Err("kv read: short body".into());
            }
            Ok(1)
        }
        Workload::KvWrite => {
            let path = format!("secret/data/bench/w/{}", pick(rng, fx.kv_keys));
            check!("kv write", c.post(&path, fx.write_body.clone()).await);
            Ok(1)
        }
        Workload::KvMixed => {
            let path = format!("secret/data/bench/r/{}", pick(rng, fx.kv_keys));
            if rng.gen_ratio(1, 10) {
                check!("kv write", c.post(&path, fx.write_body.clone()).await);
            } else {
                check!("kv read", c.get(&path).await);
            }
            Ok(1)
        }
        Workload::KvRead1Mib => {
            let r = check!(
                "kv read 1mib",
                c.get(&format!("secret/data/bench/big/{}", pick(rng, fx.big_keys)))
                    .await
            );
            if r.body.len() < 1000 {
                return Err("kv read 1mib: short body".into());
            }
            Ok(1)
        }
        Workload::TransitEncrypt => {
            check!(
                "transit encrypt",
                c.post("transit/encrypt/bench", fx.encrypt_body.clone())
                    .await
            );
            Ok(1)
        }
        Workload::TransitEncryptBatch100 => {
            check!(
                "transit encrypt batch",
                c.post("transit/encrypt/bench", fx.batch_body.clone()).await
            );
            Ok(1)
        }
        Workload::TransitRewrapBatch100 => {
            let body = fx
                .rewrap_body
                .clone()
                .ok_or("transit rewrap: fixture not prepared")?;
            let r = check!(
                "transit rewrap batch",
                c.post("transit/rewrap/bench-kek", body).await
            );
            if !r.body.windows(10).any(|w| w == b"\"vault:v2:") {
                return Err("transit rewrap batch: no v2 ciphertext in reply".into());
            }
            Ok(1)
        }
        Workload::TransitDecrypt => {
            let body = fx.decrypt_bodies[pick(rng, fx.decrypt_bodies.len())].clone();
            check!(
                "transit decrypt",
                c.post("transit/decrypt/bench", body).await
            );
            Ok(1)
        }
        Workload::TokenLookup => {
            let body = fx.lookup_bodies[pick(rng, fx.lookup_bodies.len())].clone();
            check!("token lookup", c.post("auth/token/lookup", body).await);
            Ok(1)
        }
        Workload::JwtLogin => {
            let body = fx.jwt_bodies[pick(rng, fx.jwt_bodies.len())].clone();
            let r = check!("jwt login", c.post("auth/bench-jwt/login", body).await);
            if !r.body.windows(14).any(|w| w == b"\"client_token\"") {
                return Err("jwt login: no auth.client_token in reply".into());
            }
            Ok(1)
        }
        Workload::ApproleLogin => {
            let body = fx.approle_bodies[pick(rng, fx.approle_bodies.len())].clone();
            let r = check!(
                "approle login",
                c.post("auth/bench-approle/login", body).await
            );
            if !r.body.windows(14).any(|w| w == b"\"client_token\"") {
                return Err("approle login: no auth.client_token in reply".into());
            }
            Ok(1)
        }
        Workload::TokenCreateLookup => {
            let r = check!(
                "token create",
                c.post("auth/token/create", fx.create_body.clone()).await
            );
            let v: serde_json::Value = serde_json::from_slice(&r.body)
                .map_err(|e| format!("token create: bad JSON: {e}"))?;
            let t = v["auth"]["client_token"]
                .as_str()
                .ok_or("token create: no auth.client_token")?;
            let body = Bytes::from(json!({ "token": t }).to_string());
            check!("token lookup", c.post("auth/token/lookup", body).await);
            Ok(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (w, name, _) in NAMES {
            assert_eq!(w.name(), *name);
            assert_eq!(name.parse::<Workload>(), Ok(*w));
        }
        assert_eq!(
            "token-create-lookup".parse::<Workload>(),
            Ok(Workload::TokenCreateLookup)
        );
        assert!("kv-nope".parse::<Workload>().is_err());
    }

    #[test]
    fn kv_read_cold_is_named_only() {
        let cold: Workload = "kv-read-cold".parse().unwrap();
        assert_eq!(cold, Workload::KvReadCold);
        assert!(cold.cold_cache());
        assert!(!Workload::all().contains(&cold));
        assert!(Workload::all().contains(&Workload::KvRead));
        assert!(Workload::all().iter().all(|w| !w.cold_cache()));
        assert_eq!(Workload::all().len(), NAMES.len() - 1);
    }

    #[test]
    fn random_text_has_the_asked_length() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(random_text(&mut rng, 1_000_000).len(), 1_000_000);
        assert_eq!(random_text(&mut rng, 5).len(), 5);
    }
}
