//! Kubernetes auth end to end, against a real dev server and a **stand-in**
//! for the Kubernetes API server's TokenReview endpoint
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`) that the test
//! starts: it is not Kubernetes, only a small HTTP server that answers the
//! way kube-apiserver does — 401 for a reviewer bearer it does not know,
//! `authenticated: true` with `system:serviceaccount:<ns>:<name>` and the
//! uid for the service account tokens it was told about (filtered by the
//! requested audiences), `authenticated: false` with an error for anything
//! else — and that can be made slow, broken or garbage-spewing.
//!
//! Service account tokens are built by hand in both shapes Kubernetes
//! issues (legacy secret tokens with `kubernetes.io/serviceaccount/...`
//! claims, projected tokens with a `kubernetes.io` object). Their signatures
//! are not real: as in OpenBao without `pem_keys`, the login trusts the
//! TokenReview, not the signature.
//!
//! Covered: login with name and namespace globs (token, metadata, display
//! name, identity alias), wrong service account, wrong namespace, audience
//! mismatch, a token Kubernetes does not accept, malformed JWTs, the
//! TokenReview endpoint down / slow (timeout) / returning garbage, role and
//! config validation, and no JWT in clear in the audit log or server output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, bao_bin, call, dev_server, read_audit_events, root};

const REVIEWER_JWT: &str = "reviewer-jwt-0f5e1d9c";

/// The cluster CA given as `kubernetes_ca_cert` (a throwaway self-signed
/// certificate; the stand-in speaks plain HTTP, so it is parsed and
/// trusted but never used).
const CLUSTER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIUWM/pQ/lEEqihNXTInI3fEheTZZEwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjEyMDYxNjQ4NDFaGA8yMTI2MTEx
MjE2NDg0MVowFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABEZrZO+701v6iGxSjKoKmNnQ5MlUhHxVWMTaCSX3fmBUUmOjYoMA
L1I7nBOG/5fofKH3sU7QL+cxbWbA7aBjpICjUzBRMB0GA1UdDgQWBBSVaBv3S/6s
IQrnTpe2ODdLzxEWnDAfBgNVHSMEGDAWgBSVaBv3S/6sIQrnTpe2ODdLzxEWnDAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQD3TO5rwFqcsVc5LaOU
JDCup5oISpx/nS31tMU3Z49JyAIgAbw+mDZV5QeE8gfyI0LTgoh84Qsqp5r4Lqvi
OXH62UA=
-----END CERTIFICATE-----
";

/// Point the mount at `host` with the given reviewer JWT (none: `""`).
async fn configure(s: &Server, host: &str, reviewer: &str) {
    root(
        s,
        "POST",
        "auth/kubernetes/config",
        json!({"kubernetes_host": host, "token_reviewer_jwt": reviewer, "kubernetes_ca_cert": CLUSTER_CA}),
    )
    .await;
}

async fn login(s: &Server, role: &str, jwt: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        "auth/kubernetes/login",
        None,
        json!({"role": role, "jwt": jwt}),
    )
    .await
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A compact JWS with a made-up signature.
fn jwt(alg: &str, claims: &Value) -> String {
    let h = b64url(json!({"alg": alg, "kid": "sa-key"}).to_string().as_bytes());
    let p = b64url(claims.to_string().as_bytes());
    format!("{h}.{p}.{}", b64url(b"not-a-real-signature"))
}

/// A legacy (secret-based) service account token's claims.
fn legacy(ns: &str, name: &str, uid: &str) -> Value {
    json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": format!("{name}-token-7xq2p"),
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    })
}

/// A projected (bound) service account token's claims.
fn projected(ns: &str, name: &str, uid: &str, aud: &[&str]) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "aud": aud,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": format!("{name}-5d9f7"), "uid": "pod-uid-1"},
            "serviceaccount": {"name": name, "uid": uid},
        },
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Hang,
    Garbage,
    Error500,
}

/// What the stand-in knows about one token: the service account and the
/// audiences it was issued for.
#[derive(Clone)]
struct Account {
    ns: String,
    name: String,
    uid: String,
    aud: Vec<String>,
}

/// One TokenReview the stand-in received.
#[derive(Clone, Debug)]
struct Seen {
    bearer: String,
    token: String,
    audiences: Vec<String>,
}

/// The TokenReview stand-in (see the module doc).
struct TokenReviewStandIn {
    url: String,
    accounts: Arc<Mutex<HashMap<String, Account>>>,
    /// The bearer tokens allowed to create TokenReviews; a token reviewing
    /// itself is allowed when `self_review` is set (as RBAC's
    /// `system:auth-delegator` on every service account would).
    reviewers: Vec<String>,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenReviewStandIn {
    async fn start(self_review: bool) -> TokenReviewStandIn {
        use axum::http::StatusCode;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accounts: Arc<Mutex<HashMap<String, Account>>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let reviewers = vec![REVIEWER_JWT.to_string()];
        let (a, m, sn, h, rv) = (
            accounts.clone(),
            mode.clone(),
            seen.clone(),
            hits.clone(),
            reviewers.clone(),
        );
        let app = axum::Router::new().route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (a, m, sn, h, rv) = (a.clone(), m.clone(), sn.clone(), h.clone(), rv.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let mode = *m.lock().expect("mode");
                    match mode {
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return (StatusCode::OK, String::new());
                        }
                        Mode::Garbage => return (StatusCode::OK, "<html><body>502 Bad Gateway</body></html>".into()),
                        Mode::Error500 => return (StatusCode::INTERNAL_SERVER_ERROR, "etcdserver: request timed out".into()),
                        Mode::Ok => {}
                    }
                    let bearer = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or("")
                        .to_string();
                    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let token = req["spec"]["token"].as_str().unwrap_or("").to_string();
                    let audiences: Vec<String> = req["spec"]["audiences"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    sn.lock().expect("seen").push(Seen {
                        bearer: bearer.clone(),
                        token: token.clone(),
                        audiences: audiences.clone(),
                    });
                    let accounts = a.lock().expect("accounts").clone();
                    let allowed = rv.contains(&bearer) || (self_review && bearer == token && accounts.contains_key(&token));
                    if !allowed {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
                        return (StatusCode::UNAUTHORIZED, status.to_string());
                    }
                    let status = match accounts.get(&token) {
                        Some(acct) => {
                            let granted: Vec<String> = if audiences.is_empty() {
                                acct.aud.clone()
                            } else {
                                audiences.iter().filter(|x| acct.aud.contains(x)).cloned().collect()
                            };
                            if !audiences.is_empty() && granted.is_empty() {
                                json!({"authenticated": false, "error": "[invalid bearer token, token audiences are invalid for the target audiences]"})
                            } else {
                                json!({"authenticated": true, "audiences": granted, "user": {
                                    "username": format!("system:serviceaccount:{}:{}", acct.ns, acct.name),
                                    "uid": acct.uid,
                                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", acct.ns), "system:authenticated"],
                                }})
                            }
                        }
                        None => json!({"authenticated": false, "error": "invalid bearer token", "user": {}}),
                    };
                    let review = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                        "metadata": {"creationTimestamp": null}, "spec": req["spec"], "status": status});
                    (StatusCode::CREATED, review.to_string())
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenReviewStandIn {
            url,
            accounts,
            reviewers,
            mode,
            seen,
            hits,
            task,
        }
    }

    /// Make `token` a genuine token of `ns/name` (uid) for audiences `aud`.
    fn issue(&self, token: &str, ns: &str, name: &str, uid: &str, aud: &[&str]) {
        self.accounts.lock().expect("accounts").insert(
            token.to_string(),
            Account {
                ns: ns.into(),
                name: name.into(),
                uid: uid.into(),
                aud: aud.iter().map(|s| s.to_string()).collect(),
            },
        );
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().expect("mode") = m;
    }

    fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("seen").last().cloned()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TokenReviewStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn setup(s: &Server, k8s: &TokenReviewStandIn) {
    root(
        s,
        "POST",
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
    )
    .await;
    configure(s, &k8s.url, &k8s.reviewers[0]).await;
    root(
        s,
        "PUT",
        "sys/policies/acl/team-reader",
        json!({"policy": "path \"secret/data/team/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    root(
        s,
        "POST",
        "auth/kubernetes/role/web",
        json!({"bound_service_account_names": ["web", "api-*"],
               "bound_service_account_namespaces": "team-*",
               "token_policies": "team-reader", "token_ttl": "1h", "token_max_ttl": "4h"}),
    )
    .await;
    root(
        s,
        "POST",
        "secret/data/team/db",
        json!({"data": {"password": "s3cr3t"}}),
    )
    .await;
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

#[tokio::test]
async fn kubernetes_login_with_globs_issues_a_token_with_the_service_accounts_metadata() {
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    setup(&s, &k8s).await;

    let cfg = root(&s, "GET", "auth/kubernetes/config", Value::Null).await["data"].clone();
    assert_eq!(cfg["kubernetes_host"], json!(k8s.url));
    assert_eq!(cfg["token_reviewer_jwt_set"], json!(true));
    assert_eq!(cfg["disable_iss_validation"], json!(true));
    assert_eq!(cfg["pem_keys"], json!([]));
    assert_eq!(cfg["kubernetes_ca_cert"], json!(CLUSTER_CA));
    assert_eq!(cfg["disable_local_ca_jwt"], json!(false));
    assert!(cfg.get("token_reviewer_jwt").is_none(), "{cfg}");
    let role = root(&s, "GET", "auth/kubernetes/role/web", Value::Null).await["data"].clone();
    assert_eq!(role["bound_service_account_names"], json!(["web", "api-*"]));
    assert_eq!(role["bound_service_account_namespaces"], json!(["team-*"]));
    assert_eq!(role["bound_service_account_namespace_selector"], json!(""));
    assert_eq!(role["alias_name_source"], json!("serviceaccount_uid"));
    assert_eq!(role["token_policies"], json!(["team-reader"]));
    assert_eq!(role["token_ttl"], json!(3600));
    assert!(role.get("audience").is_none(), "{role}");
    assert_eq!(
        root(&s, "LIST", "auth/kubernetes/role", Value::Null).await["data"]["keys"],
        json!(["web"])
    );

    // A legacy secret token of team-a/web.
    let t = jwt("RS256", &legacy("team-a", "web", "uid-web"));
    k8s.issue(
        &t,
        "team-a",
        "web",
        "uid-web",
        &["https://kubernetes.default.svc"],
    );
    let (st, v) = login(&s, "web", &t).await;
    assert_eq!(st, 200, "{v}");
    let auth = &v["auth"];
    assert_eq!(auth["policies"], json!(["default", "team-reader"]));
    assert_eq!(auth["lease_duration"], json!(3600));
    assert_eq!(auth["orphan"], json!(true));
    assert_eq!(
        auth["metadata"],
        json!({"role": "web", "service_account_name": "web", "service_account_namespace": "team-a",
               "service_account_secret_name": "web-token-7xq2p", "service_account_uid": "uid-web"})
    );
    let seen = k8s.last().expect("a TokenReview");
    assert_eq!(
        seen.bearer, REVIEWER_JWT,
        "the reviewer JWT authorises the review"
    );
    assert_eq!(seen.token, t);
    assert!(
        seen.audiences.is_empty(),
        "a legacy token has no audience to ask for"
    );

    let token = auth["client_token"].as_str().expect("token").to_string();
    let entity = auth["entity_id"].as_str().expect("entity").to_string();
    let (st, r) = call(&s, "GET", "secret/data/team/db", Some(&token), Value::Null).await;
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
    assert_eq!(me["data"]["display_name"], json!("kubernetes-team-a-web"));
    assert_eq!(me["data"]["path"], json!("auth/kubernetes/login"));
    assert_eq!(
        me["data"]["meta"]["service_account_namespace"],
        json!("team-a")
    );
    assert_eq!(me["data"]["entity_id"], json!(entity));

    // The alias, with the metadata templated policies use, where the
    // identity API serves it.
    let (st, e) = call(
        &s,
        "GET",
        &format!("identity/entity/id/{entity}"),
        Some("root"),
        Value::Null,
    )
    .await;
    if st == 200 {
        let alias = &e["data"]["aliases"][0];
        assert_eq!(alias["name"], json!("uid-web"), "{e}");
        assert_eq!(alias["mount_type"], json!("kubernetes"));
        assert_eq!(
            alias["metadata"]["service_account_namespace"],
            json!("team-a")
        );
        assert_eq!(alias["metadata"]["service_account_name"], json!("web"));
    } else {
        println!(
            "identity/entity not served ({st}); alias metadata checked through the token's meta only"
        );
    }

    // The same service account logs in to the same entity.
    let again = login(&s, "web", &t).await.1;
    assert_eq!(again["auth"]["entity_id"], json!(entity));

    // A projected token of team-b/api-gateway (prefix glob), with an
    // audience the role asks for; the review asks for it too.
    root(
        &s,
        "POST",
        "auth/kubernetes/role/web",
        json!({"audience": "custos", "alias_name_source": "serviceaccount_name"}),
    )
    .await;
    let p = jwt(
        "ES256",
        &projected("team-b", "api-gateway", "uid-api", &["custos", "other"]),
    );
    k8s.issue(&p, "team-b", "api-gateway", "uid-api", &["custos", "other"]);
    let (st, v) = login(&s, "WEB", &p).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["auth"]["metadata"]["service_account_name"],
        json!("api-gateway")
    );
    assert_eq!(
        v["auth"]["metadata"]["service_account_secret_name"],
        json!("")
    );
    assert_eq!(v["auth"]["metadata"]["role"], json!("WEB"));
    assert_eq!(
        k8s.last().expect("review").audiences,
        vec!["custos".to_string()]
    );
    let entity2 = v["auth"]["entity_id"].as_str().unwrap_or("").to_string();
    assert_ne!(entity2, entity);
    let (st, e) = call(
        &s,
        "GET",
        &format!("identity/entity/id/{entity2}"),
        Some("root"),
        Value::Null,
    )
    .await;
    if st == 200 {
        assert_eq!(
            e["data"]["aliases"][0]["name"],
            json!("team-b/api-gateway"),
            "{e}"
        );
    }

    let m = metrics(&s).await;
    assert!(
        m.contains("custos_auth_kubernetes_token_reviews_total{outcome=\"authenticated\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("custos_auth_logins_total{mount_type=\"kubernetes\",outcome=\"success\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn without_a_reviewer_jwt_the_login_token_reviews_itself() {
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(true).await;
    setup(&s, &k8s).await;
    configure(&s, &k8s.url, "").await;
    let cfg = root(&s, "GET", "auth/kubernetes/config", Value::Null).await;
    assert_eq!(cfg["data"]["token_reviewer_jwt_set"], json!(false));

    let t = jwt("RS256", &legacy("team-a", "web", "uid-web"));
    k8s.issue(&t, "team-a", "web", "uid-web", &[]);
    let (st, v) = login(&s, "web", &t).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(k8s.last().expect("review").bearer, t);
}

#[tokio::test]
async fn bad_kubernetes_logins_get_openbaos_errors_and_no_token() {
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    root(
        &s,
        "POST",
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
    )
    .await;
    root(
        &s,
        "POST",
        "auth/kubernetes/role/web",
        json!({"bound_service_account_names": "web", "bound_service_account_namespaces": "team-*"}),
    )
    .await;
    // Before any config: refused, and no 500.
    let good = jwt("RS256", &legacy("team-a", "web", "uid-web"));
    let (st, v) = login(&s, "web", &good).await;
    assert_eq!(
        (st, &v["errors"]),
        (400, &json!(["could not load backend configuration"]))
    );

    configure(&s, &k8s.url, REVIEWER_JWT).await;
    root(
        &s,
        "POST",
        "auth/kubernetes/role/aud",
        json!({"bound_service_account_names": "*", "bound_service_account_namespaces": "*", "audience": "custos"}),
    )
    .await;
    root(
        &s,
        "POST",
        "auth/kubernetes/role/office",
        json!({"bound_service_account_names": "*", "bound_service_account_namespaces": "*",
               "token_bound_cidrs": "10.0.0.0/8"}),
    )
    .await;
    k8s.issue(&good, "team-a", "web", "uid-web", &[]);
    let before = token_count(&s).await;

    let wrong_sa = jwt("RS256", &legacy("team-a", "db", "uid-db"));
    let wrong_ns = jwt("RS256", &legacy("prod", "web", "uid-prod-web"));
    let other_aud = jwt(
        "RS256",
        &projected(
            "team-a",
            "web",
            "uid-web",
            &["https://kubernetes.default.svc"],
        ),
    );
    let unknown = jwt("RS256", &legacy("team-a", "web", "uid-stale"));
    let mut no_uid = legacy("team-a", "web", "");
    no_uid["kubernetes.io/serviceaccount/service-account.uid"] = Value::Null;
    let no_uid = jwt("RS256", &no_uid);
    let mut expired = projected("team-a", "web", "uid-web", &["custos"]);
    expired["exp"] = json!(1_000_000);
    expired["iat"] = json!(999_000);
    expired["nbf"] = json!(999_000);
    let expired = jwt("RS256", &expired);
    let huge = jwt("RS256", &json!({"pad": "x".repeat(200_000)}));
    let (h, p) = good
        .split_once('.')
        .map(|(h, rest)| {
            (
                h.to_string(),
                rest.split('.').next().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default();
    let none = format!("{}.{p}.", b64url(br#"{"alg":"none"}"#));
    let hs256 = format!("{}.{p}.{}", b64url(br#"{"alg":"HS256"}"#), b64url(b"mac"));
    let unsigned = format!("{h}.{p}.");
    let truncated = good[..good.len() / 2].to_string();

    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "wrong service account",
            "web",
            json!(wrong_sa),
            403,
            "service account name not authorized",
        ),
        (
            "wrong namespace",
            "web",
            json!(wrong_ns),
            403,
            "namespace not authorized",
        ),
        (
            "audience mismatch",
            "aud",
            json!(other_aud),
            403,
            "invalid audience (aud) claim: audience claim does not match any expected audience",
        ),
        (
            "expired",
            "aud",
            json!(expired),
            403,
            "invalid expiration time (exp) claim: token is expired",
        ),
        (
            "Kubernetes says unauthenticated",
            "web",
            json!(unknown),
            403,
            "permission denied",
        ),
        ("no uid", "web", json!(no_uid), 403, "permission denied"),
        (
            "not a JWT",
            "web",
            json!("not-a-jwt"),
            403,
            "permission denied",
        ),
        (
            "truncated",
            "web",
            json!(truncated),
            403,
            "permission denied",
        ),
        ("alg none", "web", json!(none), 403, "permission denied"),
        ("HS256", "web", json!(hs256), 403, "permission denied"),
        (
            "unsigned",
            "web",
            json!(unsigned),
            403,
            "invalid algorithm (alg) header parameter: token must be signed",
        ),
        ("huge", "web", json!(huge), 403, "permission denied"),
        (
            "bound CIDR",
            "office",
            json!(good),
            403,
            "permission denied",
        ),
        (
            "unknown role",
            "nope",
            json!(good),
            400,
            "invalid role name \"nope\"",
        ),
        ("empty role", "", json!(good), 400, "missing role"),
        ("empty jwt", "web", json!(""), 400, "missing jwt"),
        ("jwt not a string", "web", json!({"a": 1}), 400, "jwt"),
    ];
    for (what, role, jwt_value, want_status, want) in cases {
        let (st, v) = call(
            &s,
            "POST",
            "auth/kubernetes/login",
            None,
            json!({"role": role, "jwt": jwt_value}),
        )
        .await;
        assert_eq!(st, want_status, "{what}: {v}");
        let msg = v["errors"][0].as_str().unwrap_or("");
        assert!(msg.contains(want), "{what}: {v}");
        assert!(v.get("auth").is_none_or(Value::is_null), "{what}: {v}");
    }
    // Malformed JSON.
    let r = s
        .client()
        .post(s.url("auth/kubernetes/login"))
        .body("{\"role\": \"web\", \"jwt\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        token_count(&s).await,
        before,
        "no refused login left a token"
    );

    // Roles and config: bad input is refused in OpenBao's words and changes nothing.
    let role_cases = [
        (
            json!({"bound_service_account_namespaces": "*"}),
            "\"bound_service_account_names\" can not be empty",
        ),
        (
            json!({"bound_service_account_names": "a"}),
            "\"bound_service_account_namespaces\" can not be empty if \"bound_service_account_namespace_selector\" is not set",
        ),
        (
            json!({"bound_service_account_names": ["*", "a"], "bound_service_account_namespaces": "*"}),
            "can not mix \"*\" with values",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": ["*", "b"]}),
            "can not mix \"*\" with values",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "alias_name_source": "pod"}),
            "invalid alias_name_source, must be one of: serviceaccount_uid, serviceaccount_name",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "token_bound_cidrs": "10.0.0.0/33"}),
            "token_bound_cidrs",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "ttl": "2h", "max_ttl": "1h"}),
            "token ttl should not be greater than token max ttl",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespace_selector": "{\"matchLabels\":{\"team\":\"a\"}}"}),
            "not supported",
        ),
    ];
    for (body, want) in role_cases {
        let (st, v) = call(
            &s,
            "POST",
            "auth/kubernetes/role/bad",
            Some("root"),
            body.clone(),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap_or("").contains(want),
            "{body}: {v}"
        );
    }
    assert_eq!(
        call(
            &s,
            "GET",
            "auth/kubernetes/role/bad",
            Some("root"),
            Value::Null
        )
        .await
        .0,
        404
    );
    for (body, want) in [
        (json!({}), "no host provided"),
        (
            json!({"kubernetes_host": k8s.url, "disable_local_ca_jwt": true}),
            "kubernetes_ca_cert must be given when disable_local_ca_jwt is true",
        ),
        (
            json!({"kubernetes_host": k8s.url, "kubernetes_ca_cert": CLUSTER_CA, "pem_keys": "not a key"}),
            "data does not contain any valid public keys",
        ),
    ] {
        let (st, v) = call(
            &s,
            "POST",
            "auth/kubernetes/config",
            Some("root"),
            body.clone(),
        )
        .await;
        assert_eq!(
            (st, v["errors"][0].as_str().unwrap_or("")),
            (400, want),
            "{body}"
        );
    }
    // Outside a pod there is no service account CA to fall back on.
    if std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt").exists() {
        println!("running in a pod: the missing-CA refusal is not checked");
    } else {
        let (st, v) = call(
            &s,
            "POST",
            "auth/kubernetes/config",
            Some("root"),
            json!({"kubernetes_host": k8s.url}),
        )
        .await;
        assert_eq!(
            (st, v["errors"][0].as_str().unwrap_or("")),
            (
                400,
                "open /var/run/secrets/kubernetes.io/serviceaccount/ca.crt: no such file or directory"
            )
        );
    }
    let cfg = root(&s, "GET", "auth/kubernetes/config", Value::Null).await;
    assert_eq!(
        cfg["data"]["kubernetes_host"],
        json!(k8s.url),
        "a refused config write changed nothing"
    );
    assert_eq!(
        login(&s, "web", &good).await.0,
        200,
        "and logins still work"
    );
}

/// With `pem_keys`, the signature must verify before anything else happens:
/// a token with a made-up signature is refused without a TokenReview.
#[tokio::test]
async fn with_pem_keys_an_unverifiable_token_is_refused_before_any_review() {
    const KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZqx6fBTYWnFDcYGnwuiOi2G/2yeF\n\
        FInREK+LPZVYJa5Imev2zr2qDqhQVGwnTOT5qeg20oPF69OQ+8p7f2xHgQ==\n\
        -----END PUBLIC KEY-----\n";
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    setup(&s, &k8s).await;
    root(
        &s,
        "POST",
        "auth/kubernetes/config",
        json!({"kubernetes_host": k8s.url, "token_reviewer_jwt": REVIEWER_JWT,
               "kubernetes_ca_cert": CLUSTER_CA, "pem_keys": [KEY]}),
    )
    .await;
    assert_eq!(
        root(&s, "GET", "auth/kubernetes/config", Value::Null).await["data"]["pem_keys"],
        json!([KEY.trim_end()])
    );
    let t = jwt("ES256", &legacy("team-a", "web", "uid-web"));
    k8s.issue(&t, "team-a", "web", "uid-web", &[]);
    let (st, v) = login(&s, "web", &t).await;
    assert_eq!((st, &v["errors"]), (403, &json!(["permission denied"])));
    assert_eq!(
        k8s.hits(),
        0,
        "no TokenReview for a token whose signature does not verify"
    );
}

#[tokio::test]
async fn token_review_down_slow_or_garbage_refuses_the_login_with_a_4xx() {
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    setup(&s, &k8s).await;
    let t = jwt("RS256", &legacy("team-a", "web", "uid-web"));
    k8s.issue(&t, "team-a", "web", "uid-web", &[]);
    let before = token_count(&s).await;

    for (mode, outcome) in [
        (Mode::Garbage, "invalid_response"),
        (Mode::Error500, "invalid_response"),
        (Mode::Hang, "timeout"),
    ] {
        k8s.set_mode(mode);
        let (st, v) = login(&s, "web", &t).await;
        assert_eq!(
            (st, &v["errors"]),
            (403, &json!(["permission denied"])),
            "{outcome}"
        );
        let m = metrics(&s).await;
        assert!(
            m.contains(&format!(
                "custos_auth_kubernetes_token_reviews_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {m}"
        );
    }

    // A reviewer JWT Kubernetes does not accept: 401 from the API server.
    k8s.set_mode(Mode::Ok);
    configure(&s, &k8s.url, "revoked-reviewer").await;
    let (st, v) = login(&s, "web", &t).await;
    assert_eq!((st, &v["errors"]), (403, &json!(["permission denied"])));
    assert!(
        metrics(&s)
            .await
            .contains("custos_auth_kubernetes_token_reviews_total{outcome=\"rejected\"} 1")
    );

    // Nothing listening at all.
    let closed = format!("http://127.0.0.1:{}", crate::harness::free_port());
    configure(&s, &closed, REVIEWER_JWT).await;
    let (st, v) = login(&s, "web", &t).await;
    assert_eq!((st, &v["errors"]), (403, &json!(["permission denied"])));
    assert!(
        metrics(&s)
            .await
            .contains("custos_auth_kubernetes_token_reviews_total{outcome=\"unreachable\"} 1")
    );
    assert!(
        s.output().contains("TokenReview failed"),
        "the cause is logged for the operator"
    );

    assert_eq!(
        token_count(&s).await,
        before,
        "no token while the TokenReview API misbehaved"
    );
    // Back up: logins work again.
    configure(&s, &k8s.url, REVIEWER_JWT).await;
    assert_eq!(login(&s, "web", &t).await.0, 200);
}

#[tokio::test]
async fn kubernetes_jwts_never_appear_in_clear_in_the_audit_log_or_output() {
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    setup(&s, &k8s).await;
    let t = jwt("RS256", &legacy("team-a", "web", "uid-web"));
    k8s.issue(&t, "team-a", "web", "uid-web", &[]);
    let v = login(&s, "web", &t).await.1;
    let token = v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let refused = jwt("RS256", &legacy("team-a", "web", "uid-unknown"));
    assert_eq!(login(&s, "web", &refused).await.0, 403);
    k8s.set_mode(Mode::Garbage);
    assert_eq!(login(&s, "web", &t).await.0, 403);

    let events = read_audit_events(&s.dir.join("audit"));
    let logins: Vec<&Value> = events
        .iter()
        .filter(|e| e["request"]["path"] == json!("auth/kubernetes/login"))
        .collect();
    assert_eq!(logins.len(), 6, "request and response of three logins");
    for e in &logins {
        let j = e["request"]["data"]["jwt"].as_str().unwrap_or("");
        assert!(j.starts_with("hmac-sha256:"), "{e}");
    }
    let config_writes: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["request"]["path"] == json!("auth/kubernetes/config") && e["type"] == json!("request")
        })
        .collect();
    assert!(!config_writes.is_empty());
    for e in config_writes {
        let j = e["request"]["data"]["token_reviewer_jwt"]
            .as_str()
            .unwrap_or("");
        assert!(j.starts_with("hmac-sha256:"), "{e}");
    }
    let raw = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    // The JWT's signature part is unique to it; its claims are public.
    for secret in [t.as_str(), refused.as_str(), REVIEWER_JWT, token.as_str()] {
        assert!(!raw.contains(secret), "a secret in clear in the audit log");
        assert!(
            !s.output().contains(secret),
            "a secret in clear in the server output"
        );
    }
}

/// The real `bao agent` as the Agent Injector's init container runs it:
/// `auto_auth` with the `kubernetes` method reading the pod's service
/// account token from `token_path`, a template rendering a KV secret to a
/// file, `exit_after_auth`.
#[tokio::test]
async fn bao_agent_logs_in_with_a_service_account_token_and_renders_a_secret() {
    let Some(bao) = bao_bin() else {
        return;
    };
    let s = dev_server();
    let k8s = TokenReviewStandIn::start(false).await;
    setup(&s, &k8s).await;
    let sa_token = jwt(
        "RS256",
        &projected(
            "team-a",
            "web",
            "uid-web",
            &["https://kubernetes.default.svc"],
        ),
    );
    k8s.issue(
        &sa_token,
        "team-a",
        "web",
        "uid-web",
        &["https://kubernetes.default.svc"],
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("sa-token"), &sa_token).expect("write");
    let config = format!(
        r#"vault {{ address = "http://{addr}" }}
auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    config = {{
      role       = "web"
      token_path = "{sa}"
    }}
  }}
  sink "file" {{ config = {{ path = "{sink}" }} }}
}}
template {{
  contents    = "{{{{ with secret \"secret/data/team/db\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = "{out}"
}}
exit_after_auth = true
"#,
        addr = s.addr,
        sa = file("sa-token").display(),
        sink = file("token").display(),
        out = file("db-password").display(),
    );
    std::fs::write(file("agent.hcl"), config).expect("write");
    let (agent_hcl, home) = (file("agent.hcl"), dir.path().to_path_buf());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&bao)
            .arg("agent")
            .arg(format!("-config={}", agent_hcl.display()))
            .env_remove("VAULT_TOKEN")
            .env("HOME", home)
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("bao agent finished within 60 s")
        .expect("join")
        .expect("bao agent ran");
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        std::fs::read_to_string(file("db-password")).unwrap_or_default(),
        "s3cr3t",
        "{log}"
    );
    let token = std::fs::read_to_string(file("token")).expect("the agent's sink");
    let (st, me) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(token.trim()),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{me} {log}");
    assert_eq!(
        me["data"]["meta"]["service_account_name"],
        json!("web"),
        "{me}"
    );
    assert_eq!(me["data"]["display_name"], json!("kubernetes-team-a-web"));
    let seen = k8s.last().expect("a TokenReview");
    assert_eq!(
        (seen.bearer.as_str(), seen.token.as_str()),
        (REVIEWER_JWT, sa_token.as_str())
    );
    assert!(
        !log.contains(&sa_token),
        "the agent's log holds no service account token"
    );
}
