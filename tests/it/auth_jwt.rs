//! JWT/OIDC login end to end against a real dev server: tokens signed here
//! with a real JWT library (jsonwebtoken; RS256 and ES256 keys generated
//! per run), verified by the server with PEM keys or through a JWKS
//! endpoint this test serves itself (axum on 127.0.0.1:0, also serving an
//! OIDC discovery document). GitLab-CI-shaped and GitHub-Actions-shaped
//! claims bound with exact and glob `bound_claims`; key rotation (a new
//! `kid` makes the server refetch), a JWKS endpoint that goes down, hangs
//! or answers garbage; every bad token the issue lists refused with Vault's
//! wording and no token issued; the JWT only HMAC'd in the audit log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Server, dev_server, read_audit_events};

// ---------------------------------------------------------------- keys

/// A signing key and how the server sees it (PEM, JWK).
struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    public_pem: String,
    jwk: Value,
}

fn rsa_key(kid: &str) -> TestKey {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
    let public = private.to_public_key();
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
    TestKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
        public_pem: public.to_public_key_pem(LineEnding::LF).expect("spki"),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
    }
}

fn ec_key(kid: &str) -> TestKey {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let public = p256::ecdsa::VerifyingKey::from(&private);
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
    let point = public.to_encoded_point(false);
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_pem(pem.as_bytes()).expect("encoding key"),
        public_pem: public.to_public_key_pem(LineEnding::LF).expect("spki"),
        jwk: json!({
            "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
            "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
        }),
    }
}

/// RSA key generation is slow in a debug build: three keys, made once.
static RSA1: LazyLock<TestKey> = LazyLock::new(|| rsa_key("rsa-1"));
static RSA2: LazyLock<TestKey> = LazyLock::new(|| rsa_key("rsa-2"));
static RSA_OTHER: LazyLock<TestKey> = LazyLock::new(|| rsa_key("rsa-1"));

impl TestKey {
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }

    fn sign_with_kid(&self, claims: &Value, kid: &str) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }
}

/// A token with a hand-made header and signature (`alg: none`, HMAC).
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An id token as GitLab CI issues it (`id_tokens:` with `aud`).
fn gitlab_claims() -> Value {
    let t = now();
    json!({
        "iss": "https://gitlab.example.com", "aud": "https://custos.example.com",
        "sub": "project_path:group/app:ref_type:branch:ref:main",
        "iat": t, "nbf": t, "exp": t + 300, "jti": "3c5c0ff2",
        "namespace_id": "7", "namespace_path": "group", "project_id": "42",
        "project_path": "group/app", "user_id": "5", "user_login": "alice",
        "user_email": "alice@example.com", "pipeline_id": "1001", "pipeline_source": "push",
        "job_id": "2002", "ref": "main", "ref_type": "branch", "ref_protected": "true",
        "environment": "production", "environment_protected": "true",
        "groups": ["group/devs", "group/ops"]
    })
}

/// An OIDC token as GitHub Actions issues it.
fn github_claims() -> Value {
    let t = now();
    json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://github.com/org",
        "sub": "repo:org/repo:ref:refs/heads/main", "iat": t, "nbf": t, "exp": t + 300,
        "repository": "org/repo", "repository_owner": "org", "ref": "refs/heads/main",
        "ref_type": "branch", "workflow": "deploy", "actor": "octocat", "event_name": "push",
        "job_workflow_ref": "org/repo/.github/workflows/deploy.yml@refs/heads/main"
    })
}

fn with(mut claims: Value, changes: Value) -> Value {
    if let (Some(c), Some(ch)) = (claims.as_object_mut(), changes.as_object()) {
        for (k, v) in ch {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

// ---------------------------------------------------------------- JWKS

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Garbage,
    NoKeys,
    Error500,
    Hang,
}

/// The test's identity provider: `/keys` (JWKS) and
/// `/.well-known/openid-configuration`, counting key fetches.
struct Provider {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> Provider {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let keys = Arc::new(Mutex::new(keys));
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, m, h, u) = (keys.clone(), mode.clone(), hits.clone(), url.clone());
        let app = axum::Router::new()
            .route(
                "/keys",
                get(move || {
                    let (k, m, h) = (k.clone(), m.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let mode = *m.lock().expect("mode");
                        match mode {
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                (axum::http::StatusCode::OK, String::new())
                            }
                            Mode::Error500 => {
                                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down".into())
                            }
                            Mode::Garbage => (axum::http::StatusCode::OK, "<html>not json".into()),
                            Mode::NoKeys => (axum::http::StatusCode::OK, "{\"nope\": 1}".into()),
                            Mode::Ok => {
                                let keys = k.lock().expect("keys").clone();
                                (
                                    axum::http::StatusCode::OK,
                                    json!({ "keys": keys }).to_string(),
                                )
                            }
                        }
                    }
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let u = u.clone();
                    async move { json!({"issuer": u, "jwks_uri": format!("{u}/keys")}).to_string() }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider {
            url,
            keys,
            mode,
            hits,
            task,
        }
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().expect("mode") = m;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- HTTP

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = s.client().request(m, s.url(path));
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn root(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = call(s, method, path, Some("root"), body).await;
    assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
    v
}

async fn login(s: &Server, role: &str, jwt: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": role, "jwt": jwt}),
    )
    .await
}

/// Log in and expect a 400 whose error contains `want`, with no token.
async fn refused(s: &Server, role: &str, jwt: &str, want: &str) {
    let (st, v) = login(s, role, jwt).await;
    assert_eq!(st, 400, "{want}: {v}");
    let msg = v["errors"][0].as_str().unwrap_or("");
    assert!(msg.contains(want), "want {want:?}, got {v}");
    assert!(v.get("auth").is_none_or(Value::is_null), "{v}");
}

async fn token_count(s: &Server) -> usize {
    root(s, "LIST", "auth/token/accessors", Value::Null).await["data"]["keys"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn metrics(s: &Server) -> String {
    s.client()
        .get(s.url("sys/metrics?format=prometheus"))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default()
}

/// A mount with PEM keys for RSA1 and an EC key, GitLab's issuer.
async fn static_mount(s: &Server, ec: &TestKey) {
    root(s, "POST", "sys/auth/jwt", json!({"type": "jwt"})).await;
    let v = call(
        s,
        "POST",
        "auth/jwt/config",
        Some("root"),
        json!({
            "jwt_validation_pubkeys": [RSA1.public_pem, ec.public_pem],
            "bound_issuer": "https://gitlab.example.com",
            "jwt_supported_algs": ["RS256", "ES256"],
        }),
    )
    .await;
    assert_eq!(v.0, 204, "{v:?}");
    root(
        s,
        "POST",
        "auth/jwt/role/ci",
        json!({
            "role_type": "jwt", "user_claim": "user_login",
            "bound_audiences": "https://custos.example.com",
            "bound_claims": {"project_path": "group/app", "ref": "main", "ref_protected": "true"},
            "claim_mappings": {"project_path": "project_path", "ref": "ref", "environment": "environment"},
            "groups_claim": "groups",
            "token_policies": "ci-deploy", "token_ttl": "10m", "token_max_ttl": "1h",
        }),
    )
    .await;
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn gitlab_ci_id_token_logs_in_with_pem_keys_and_bound_claims() {
    let s = dev_server();
    let ec = ec_key("ec-1");
    static_mount(&s, &ec).await;
    root(
        &s,
        "PUT",
        "sys/policies/acl/ci-deploy",
        json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    root(
        &s,
        "POST",
        "secret/data/app/db",
        json!({"data": {"password": "s3cr3t"}}),
    )
    .await;

    let role = root(&s, "GET", "auth/jwt/role/ci", Value::Null).await;
    assert_eq!(role["data"]["role_type"], json!("jwt"));
    assert_eq!(
        role["data"]["bound_audiences"],
        json!(["https://custos.example.com"])
    );
    assert_eq!(role["data"]["bound_claims_type"], json!("string"));
    assert_eq!(role["data"]["token_ttl"], json!(600));
    assert_eq!(role["data"]["oidc_scopes"], Value::Null);
    let cfg = root(&s, "GET", "auth/jwt/config", Value::Null).await;
    assert_eq!(cfg["data"]["status"], json!("valid"));
    assert_eq!(
        cfg["data"]["bound_issuer"],
        json!("https://gitlab.example.com")
    );
    assert_eq!(
        cfg["data"]["jwt_validation_pubkeys"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let jwt = RSA1.sign(&gitlab_claims());
    let (st, v) = login(&s, "ci", &jwt).await;
    assert_eq!(st, 200, "{v}");
    let auth = &v["auth"];
    assert_eq!(auth["policies"], json!(["ci-deploy", "default"]));
    assert_eq!(auth["lease_duration"], json!(600));
    assert_eq!(
        auth["metadata"],
        json!({"project_path": "group/app", "ref": "main", "environment": "production", "role": "ci"})
    );
    assert_eq!(auth["orphan"], json!(true));
    let token = auth["client_token"].as_str().expect("token").to_string();
    let entity = auth["entity_id"].as_str().expect("entity").to_string();
    let (st, r) = call(&s, "GET", "secret/data/app/db", Some(&token), Value::Null).await;
    assert_eq!(
        (st, &r["data"]["data"]["password"]),
        (200, &json!("s3cr3t"))
    );
    let me = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await
    .1;
    assert_eq!(me["data"]["display_name"], json!("jwt-alice"));
    assert_eq!(me["data"]["path"], json!("auth/jwt/login"));

    // ES256 from the same user: same entity. A single-element aud list and
    // a list with the bound audience among others both match.
    let (st, v) = login(
        &s,
        "ci",
        &ec.sign(&with(
            gitlab_claims(),
            json!({"aud": ["x", "https://custos.example.com"]}),
        )),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["auth"]["entity_id"], json!(entity));

    // Bound claims: another project, an unprotected ref, a missing claim.
    refused(&s, "ci", &RSA1.sign(&with(gitlab_claims(), json!({"project_path": "group/other"}))),
        "error validating claims: claim \"project_path\" does not match any associated bound claim values").await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"ref_protected": "false"}))),
        "claim \"ref_protected\" does not match",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"ref": null}))),
        "claim \"ref\" is missing",
    )
    .await;
    // GitLab sends ref_protected as a string; a boolean does not match "true".
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"ref_protected": true}))),
        "does not match",
    )
    .await;

    // Glob bound claims: any project under group/, tags v*, protected envs.
    root(
        &s,
        "POST",
        "auth/jwt/role/release",
        json!({
            "role_type": "jwt", "user_claim": "user_login", "bound_audiences": ["https://custos.example.com"],
            "bound_claims_type": "glob",
            "bound_claims": {"project_path": "group/*", "ref": ["v*", "release-*"], "environment": "prod*"},
            "token_policies": ["ci-deploy"],
        }),
    )
    .await;
    let tag = with(
        gitlab_claims(),
        json!({"project_path": "group/lib", "ref": "v1.4.2", "ref_type": "tag"}),
    );
    assert_eq!(login(&s, "release", &RSA1.sign(&tag)).await.0, 200);
    refused(
        &s,
        "release",
        &RSA1.sign(&with(tag.clone(), json!({"ref": "main"}))),
        "claim \"ref\" does not match",
    )
    .await;
    refused(
        &s,
        "release",
        &RSA1.sign(&with(tag.clone(), json!({"project_path": "evil/lib"}))),
        "project_path",
    )
    .await;
    refused(
        &s,
        "release",
        &RSA1.sign(&with(tag, json!({"environment": "staging"}))),
        "environment",
    )
    .await;

    // The JWT is only HMAC'd in the audit log, and never printed.
    let events = read_audit_events(&s.dir.join("audit"));
    let logins: Vec<&Value> = events
        .iter()
        .filter(|e| e["request"]["path"] == json!("auth/jwt/login"))
        .collect();
    assert!(logins.len() >= 4, "{}", logins.len());
    for e in &logins {
        let j = e["request"]["data"]["jwt"].as_str().unwrap_or("");
        assert!(j.starts_with("hmac-sha256:"), "{e}");
    }
    let ok = logins
        .iter()
        .find(|e| e["type"] == json!("response") && e["response"]["auth"].is_object())
        .expect("a successful login's response");
    assert!(
        ok["response"]["auth"]["client_token"]
            .as_str()
            .unwrap_or("")
            .starts_with("hmac-sha256:")
    );
    let raw = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    let payload = jwt.split('.').nth(1).unwrap_or("-");
    assert!(!raw.contains(payload), "a JWT in clear in the audit log");
    assert!(!s.output().contains(payload), "a JWT in the server output");
}

#[tokio::test]
async fn groups_claim_becomes_external_group_membership() {
    let s = dev_server();
    let ec = ec_key("ec-1");
    static_mount(&s, &ec).await;
    let accessor = root(&s, "GET", "sys/auth", Value::Null).await["data"]["jwt/"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_string();
    assert!(accessor.starts_with("auth_jwt_"), "{accessor}");
    let g = root(
        &s,
        "POST",
        "identity/group",
        json!({"name": "ops", "type": "external", "policies": ["ops-policy"]}),
    )
    .await;
    let group_id = g["data"]["id"].as_str().expect("group id").to_string();
    root(
        &s,
        "POST",
        "identity/group-alias",
        json!({"name": "group/ops", "mount_accessor": accessor, "canonical_id": group_id}),
    )
    .await;
    let (st, v) = login(&s, "ci", &RSA1.sign(&gitlab_claims())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["auth"]["identity_policies"], json!(["ops-policy"]), "{v}");
    assert_eq!(
        v["auth"]["policies"],
        json!(["ci-deploy", "default", "ops-policy"])
    );
    // Not in the group any more: the next login drops the membership.
    let (st, v) = login(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"groups": ["group/devs"]}))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["auth"]
            .get("identity_policies")
            .is_none_or(|p| p == &json!([]) || p.is_null()),
        "{v}"
    );
    // The groups claim must be there and be strings.
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"groups": null}))),
        "failed to fetch groups: \"groups\" claim not found in token",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(gitlab_claims(), json!({"groups": [1, 2]}))),
        "in groups claim could not be parsed as string",
    )
    .await;
}

#[tokio::test]
async fn github_actions_through_jwks_with_rotation_outage_and_discovery() {
    let s = dev_server();
    let ec = ec_key("ec-1");
    let mut idp = Provider::start(vec![RSA1.jwk.clone(), ec.jwk.clone()]).await;
    root(&s, "POST", "sys/auth/jwt", json!({"type": "jwt"})).await;

    // A JWKS URL that answers garbage, no key set or an error is refused at
    // config write, and nothing is stored.
    for (mode, _) in [
        (Mode::Garbage, ()),
        (Mode::NoKeys, ()),
        (Mode::Error500, ()),
    ] {
        idp.set_mode(mode);
        let (st, v) = call(
            &s,
            "POST",
            "auth/jwt/config",
            Some("root"),
            json!({"jwks_url": format!("{}/keys", idp.url)}),
        )
        .await;
        assert_eq!(
            (st, v["errors"][0].as_str()),
            (400, Some("error checking jwks URL")),
            "{v}"
        );
    }
    assert_eq!(
        call(&s, "GET", "auth/jwt/config", Some("root"), Value::Null)
            .await
            .0,
        404
    );
    idp.set_mode(Mode::Ok);

    let before = idp.hits();
    root(
        &s,
        "POST",
        "auth/jwt/config",
        json!({"jwks_url": format!("{}/keys", idp.url)}),
    )
    .await;
    assert_eq!(idp.hits(), before + 1, "config write checks the JWKS once");
    root(
        &s,
        "POST",
        "auth/jwt/role/deploy",
        json!({
            "role_type": "jwt", "user_claim": "repository", "bound_audiences": "https://github.com/org",
            "bound_subject": "repo:org/repo:ref:refs/heads/main",
            "bound_claims_type": "glob", "bound_claims": {"repository": "org/*", "job_workflow_ref": "org/repo/.github/workflows/*@refs/heads/main"},
            "claim_mappings": {"actor": "actor", "workflow": "workflow"},
        }),
    )
    .await;

    // Cached: many logins, RS256 and ES256, no further fetch.
    let fetched = idp.hits();
    for key in [&*RSA1, &ec, &*RSA1] {
        let (st, v) = login(&s, "deploy", &key.sign(&github_claims())).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["auth"]["metadata"]["actor"], json!("octocat"));
    }
    assert_eq!(idp.hits(), fetched, "logins use the cached key set");
    refused(
        &s,
        "deploy",
        &RSA1.sign(&with(
            github_claims(),
            json!({"sub": "repo:org/repo:ref:refs/heads/dev"}),
        )),
        "error validating token: invalid subject (sub) claim",
    )
    .await;
    refused(
        &s,
        "deploy",
        &RSA1.sign(&with(
            github_claims(),
            json!({"aud": "https://github.com/other"}),
        )),
        "invalid audience (aud) claim",
    )
    .await;

    // Key rotation: the provider publishes rsa-2; its first token makes the
    // server refetch once, after which it is cached too.
    idp.keys.lock().expect("keys").push(RSA2.jwk.clone());
    let (st, v) = login(&s, "deploy", &RSA2.sign(&github_claims())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(idp.hits(), fetched + 1);
    assert_eq!(
        login(&s, "deploy", &RSA2.sign(&github_claims())).await.0,
        200
    );
    assert_eq!(idp.hits(), fetched + 1);

    // A key the provider does not publish, under a known kid: refused.
    refused(
        &s,
        "deploy",
        &RSA_OTHER.sign(&github_claims()),
        "failed to verify id token signature",
    )
    .await;

    // Made-up kids cannot make the server hammer the provider: refetches
    // are gated (a burst of 3, then one per 10 s).
    let start = Instant::now();
    let hits_before = idp.hits();
    for i in 0..20 {
        refused(
            &s,
            "deploy",
            &RSA_OTHER.sign_with_kid(&github_claims(), &format!("made-up-{i}")),
            "failed to verify id token signature",
        )
        .await;
    }
    let allowed = 3 + (start.elapsed().as_secs() / 10) as usize + 1;
    assert!(
        idp.hits() - hits_before <= allowed,
        "{} fetches for 20 unknown kids",
        idp.hits() - hits_before
    );

    // The provider goes down: cached keys keep working; an unknown key is
    // refused with a clear error, never a 500.
    idp.set_mode(Mode::Error500);
    idp.task.abort();
    let _ = (&mut idp.task).await;
    let (st, v) = login(&s, "deploy", &ec.sign(&github_claims())).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = login(&s, "deploy", &rsa_key("rsa-3").sign(&github_claims())).await;
    assert_eq!(st, 400, "{v}");

    let m = metrics(&s).await;
    assert!(
        m.contains("custos_auth_jwks_fetches_total{outcome=\"success\"}"),
        "{m}"
    );
    assert!(
        m.contains("custos_auth_jwks_fetches_total{outcome=\"rate_limited\"}"),
        "{m}"
    );
    assert!(
        m.contains("custos_auth_jwks_fetches_total{outcome=\"invalid\"}"),
        "{m}"
    );
    assert!(
        m.contains("custos_auth_logins_total{mount_type=\"jwt\",outcome=\"success\"}"),
        "{m}"
    );

    // OIDC discovery on a second mount of type oidc: the jwks_uri comes
    // from .well-known/openid-configuration.
    let idp2 = Provider::start(vec![RSA1.jwk.clone()]).await;
    root(&s, "POST", "sys/auth/oidc", json!({"type": "oidc"})).await;
    root(
        &s,
        "POST",
        "auth/oidc/config",
        json!({"oidc_discovery_url": idp2.url, "bound_issuer": idp2.url}),
    )
    .await;
    let cfg = root(&s, "GET", "auth/oidc/config", Value::Null).await;
    assert_eq!(cfg["data"]["status"], json!("valid"), "{cfg}");
    root(&s, "POST", "auth/oidc/role/gh", json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": "https://github.com/org"})).await;
    let (st, v) = call(
        &s,
        "POST",
        "auth/oidc/login",
        None,
        json!({"role": "gh", "jwt": RSA1.sign(&with(github_claims(), json!({"iss": idp2.url})))}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // The browser flow is not offered: a clear 400.
    let (st, v) = call(
        &s,
        "POST",
        "auth/oidc/oidc/auth_url",
        None,
        json!({"role": "gh", "redirect_uri": "http://localhost/cb"}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("not supported"),
        "{v}"
    );
}

#[tokio::test]
async fn a_hanging_jwks_endpoint_times_out_with_a_clear_error() {
    let s = dev_server();
    let idp = Provider::start(vec![RSA1.jwk.clone()]).await;
    root(&s, "POST", "sys/auth/jwt", json!({"type": "jwt"})).await;
    idp.set_mode(Mode::Hang);
    let (st, v) = call(
        &s,
        "POST",
        "auth/jwt/config",
        Some("root"),
        json!({"jwks_url": format!("{}/keys", idp.url)}),
    )
    .await;
    assert_eq!(
        (st, v["errors"][0].as_str()),
        (400, Some("error checking jwks URL")),
        "{v}"
    );
    // skip_jwks_validation stores it with a warning; the first login then
    // times out with an error naming the fetch, not a 500.
    let (st, v) = call(
        &s,
        "POST",
        "auth/jwt/config",
        Some("root"),
        json!({"jwks_url": format!("{}/keys", idp.url), "skip_jwks_validation": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["warnings"], json!(["error checking jwks URL"]));
    root(&s, "POST", "auth/jwt/role/r", json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "repo:org/repo:ref:refs/heads/main", "bound_audiences": "https://github.com/org"})).await;
    refused(
        &s,
        "r",
        &RSA1.sign(&github_claims()),
        "error verifying token signature: fetching keys",
    )
    .await;
    idp.set_mode(Mode::Ok);
}

#[tokio::test]
async fn bad_tokens_and_bad_config_get_vaults_errors_and_no_token() {
    let s = dev_server();
    let ec = ec_key("ec-1");
    static_mount(&s, &ec).await;
    let before = token_count(&s).await;
    let good = gitlab_claims();
    let t = now();

    // Malformed and truncated tokens.
    let jwt = RSA1.sign(&good);
    refused(&s, "ci", "garbage", "error validating token: error verifying token signature: malformed jwt: compact JWS format must have three parts").await;
    refused(&s, "ci", "a.b", "three parts").await;
    refused(
        &s,
        "ci",
        &jwt[..jwt.len() - 20],
        "no known key successfully validated the token signature",
    )
    .await;
    refused(&s, "ci", &jwt[..jwt.rfind('.').unwrap_or(0)], "three parts").await;
    refused(
        &s,
        "ci",
        &format!("!!!.{}", jwt.split_once('.').map_or("", |x| x.1)),
        "illegal base64",
    )
    .await;
    refused(
        &s,
        "ci",
        &format!(
            "{}.bm90IGpzb24.{}",
            jwt.split('.').next().unwrap_or(""),
            jwt.rsplit('.').next().unwrap_or("")
        ),
        "payload is not valid JSON",
    )
    .await;
    // alg none, and HS256 "signed" with the public key (algorithm confusion).
    refused(
        &s,
        "ci",
        &raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
        "unexpected signature algorithm \"none\"",
    )
    .await;
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(RSA1.public_pem.as_bytes()),
    )
    .expect("hs256");
    refused(&s, "ci", &hs, "unexpected signature algorithm \"HS256\"").await;
    // A header claiming RS256 over an ES256 signature, and an unknown key.
    refused(
        &s,
        "ci",
        &raw_token(&json!({"alg": "RS256"}), &good, &[7u8; 64]),
        "no known key",
    )
    .await;
    refused(&s, "ci", &rsa_key("x").sign(&good), "no known key").await;
    // Times.
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(
            good.clone(),
            json!({"exp": t - 600, "iat": t - 900, "nbf": t - 900}),
        )),
        "error validating token: invalid expiration time (exp) claim: token is expired",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"nbf": t + 600, "iat": null}))),
        "invalid not before (nbf) claim: token not yet valid",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(
            good.clone(),
            json!({"nbf": null, "iat": null, "exp": null}),
        )),
        "no issued at (iat), not before (nbf), or expiration time (exp) claims in token",
    )
    .await;
    // Issuer, audience.
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(
            good.clone(),
            json!({"iss": "https://evil.example.com"}),
        )),
        "invalid issuer (iss) claim",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"aud": "https://other"}))),
        "invalid audience (aud) claim",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"aud": null}))),
        "invalid audience (aud) claim",
    )
    .await;
    // User claim.
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"user_login": null}))),
        "claim \"user_login\" not found in token",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"user_login": 7}))),
        "claim \"user_login\" could not be converted to string",
    )
    .await;
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"environment": ["a"]}))),
        "error converting claim 'environment' to string",
    )
    .await;
    // A huge token.
    refused(
        &s,
        "ci",
        &RSA1.sign(&with(good.clone(), json!({"pad": "x".repeat(100_000)}))),
        "larger than",
    )
    .await;
    // Request shape: no role, unknown role, no jwt, a jwt of the wrong type.
    let (st, v) = call(&s, "POST", "auth/jwt/login", None, json!({"jwt": jwt})).await;
    assert_eq!(
        (st, v["errors"][0].as_str()),
        (400, Some("missing role")),
        "{v}"
    );
    refused(&s, "nope", &jwt, "role \"nope\" could not be found").await;
    let (st, v) = call(&s, "POST", "auth/jwt/login", None, json!({"role": "ci"})).await;
    assert_eq!(
        (st, v["errors"][0].as_str()),
        (400, Some("missing token")),
        "{v}"
    );
    let (st, v) = call(
        &s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": "ci", "jwt": ["a"]}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let r = s
        .client()
        .post(s.url("auth/jwt/login"))
        .body("{\"role\": \"ci\", \"jwt\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    // An aud in the token but no audiences bound on the role.
    root(
        &s,
        "POST",
        "auth/jwt/role/noaud",
        json!({"role_type": "jwt", "user_claim": "user_login", "bound_subject": good["sub"]}),
    )
    .await;
    refused(
        &s,
        "noaud",
        &jwt,
        "audience claim found in JWT but no audiences bound to the role",
    )
    .await;
    // A browser-flow role cannot log in with a JWT.
    root(&s, "POST", "auth/jwt/role/web", json!({"user_claim": "sub", "allowed_redirect_uris": "http://localhost:8250/oidc/callback"})).await;
    refused(&s, "web", &jwt, "role with oidc role_type is not allowed").await;
    // A role bound to another network.
    root(&s, "POST", "auth/jwt/role/far", json!({"role_type": "jwt", "user_claim": "user_login", "bound_audiences": "https://custos.example.com", "token_bound_cidrs": "10.0.0.0/8"})).await;
    assert_eq!(login(&s, "far", &jwt).await.0, 403);
    assert_eq!(
        token_count(&s).await,
        before,
        "no refused login issued a token"
    );
    // The default role stands in for a missing one.
    let mut cfg = root(&s, "GET", "auth/jwt/config", Value::Null).await["data"].clone();
    cfg["default_role"] = json!("ci");
    if let Some(c) = cfg.as_object_mut() {
        c.remove("status");
    }
    root(&s, "POST", "auth/jwt/config", cfg).await;
    let (st, v) = call(&s, "POST", "auth/jwt/login", None, json!({"jwt": jwt})).await;
    assert_eq!(st, 200, "{v}");

    // Bad config and roles: clear 400s, nothing changed.
    let cfg_before = root(&s, "GET", "auth/jwt/config", Value::Null).await["data"].clone();
    for (body, want) in [
        (
            json!({}),
            "exactly one of 'jwt_validation_pubkeys', 'jwks_url', 'jwks_pairs', 'oidc_discovery_url', or 'provider_config' must be set",
        ),
        (
            json!({"jwt_validation_pubkeys": [RSA1.public_pem], "jwks_url": "http://127.0.0.1:1/keys"}),
            "exactly one of",
        ),
        (
            json!({"jwt_validation_pubkeys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]}),
            "error parsing public key: data does not contain any valid public keys",
        ),
        (
            json!({"jwt_validation_pubkeys": [RSA1.public_pem], "jwt_supported_algs": "HS256"}),
            "invalid jwt_supported_algs: unsupported signing algorithm \"HS256\"",
        ),
        (
            json!({"jwt_validation_pubkeys": [RSA1.public_pem], "jwt_supported_algs": "none"}),
            "unsupported signing algorithm \"none\"",
        ),
        (
            json!({"jwks_url": "http://127.0.0.1:1/keys"}),
            "error checking jwks URL",
        ),
        (
            json!({"jwks_url": "http://127.0.0.1:1/keys", "jwks_ca_pem": "not a pem"}),
            "error checking jwks_ca_pem",
        ),
        (
            json!({"oidc_discovery_url": "http://127.0.0.1:1"}),
            "error checking oidc discovery URL: ",
        ),
        (
            json!({"oidc_discovery_url": "http://127.0.0.1:1/.well-known/openid-configuration"}),
            "'oidc_discovery_url' contains '.well-known' component",
        ),
        (
            json!({"jwt_validation_pubkeys": 5}),
            "jwt_validation_pubkeys",
        ),
    ] {
        let (st, v) = call(&s, "POST", "auth/jwt/config", Some("root"), body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap_or("").contains(want),
            "{want}: {v}"
        );
    }
    assert_eq!(
        root(&s, "GET", "auth/jwt/config", Value::Null).await["data"],
        cfg_before
    );
    for (body, want) in [
        (
            json!({"role_type": "jwt", "bound_subject": "x"}),
            "a user claim must be defined on the role",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub"}),
            "must have at least one bound constraint when creating/updating a role",
        ),
        (
            json!({"user_claim": "sub"}),
            "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified.",
        ),
        (
            json!({"role_type": "saml", "user_claim": "sub"}),
            "invalid 'role_type': saml",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "bound_claims_type": "regex"}),
            "invalid 'bound_claims_type': regex",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_claims_type": "glob", "bound_claims": {"a": 1}}),
            "claim is not a string: 1",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "claim_mappings": {"a": "role"}}),
            "metadata key \"role\" is reserved",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "token_bound_cidrs": "10.0.0.0/33"}),
            "CIDR",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "bound_claims": "abc"}),
            "bound_claims",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "token_ttl": 100, "token_max_ttl": 50}),
            "token_ttl",
        ),
        (
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "x", "clock_skew_leeway": "soon"}),
            "clock_skew_leeway",
        ),
    ] {
        let (st, v) = call(&s, "POST", "auth/jwt/role/bad", Some("root"), body.clone()).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap_or("").contains(want),
            "{want}: {v}"
        );
    }
    assert_eq!(
        call(&s, "GET", "auth/jwt/role/bad", Some("root"), Value::Null)
            .await
            .0,
        404
    );
    let roles = root(&s, "LIST", "auth/jwt/role", Value::Null).await;
    assert_eq!(roles["data"]["keys"], json!(["ci", "far", "noaud", "web"]));

    // Nothing of any token reached the server's output.
    let out = s.output();
    assert!(
        !out.contains(jwt.split('.').nth(1).unwrap_or("-")),
        "a JWT in the server output"
    );
    assert!(
        !out.contains("xxxxxxxxxxxxxxxx"),
        "a huge JWT in the server output"
    );
}
