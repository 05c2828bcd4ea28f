//! The HTTP API as clients see it: Vault's shapes, bad input rejected with a
//! Vault-shaped 4xx and no state change, and no secret in logs or audit.

use serde_json::{Value, json};

use crate::harness::{Server, dev_server};

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let c = s.client();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = c.request(m, s.url(path));
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        rb = rb.header("Content-Type", "application/json").body(b);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn js(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).expect("json"))
}

#[tokio::test]
async fn kv_tokens_and_policies_work_like_vault() {
    let s = dev_server();
    let root = Some("root");
    let (st, h) = call(&s, "GET", "sys/health", None, None).await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["sealed"], json!(false));

    let (st, w) = call(
        &s,
        "POST",
        "secret/data/app",
        root,
        js(json!({"data": {"user": "u", "pass": "p"}})),
    )
    .await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["data"]["version"], json!(1));
    let (st, r) = call(&s, "GET", "secret/data/app", root, None).await;
    assert_eq!(st, 200);
    assert_eq!(r["data"]["data"]["pass"], json!("p"));
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/app",
        root,
        js(json!({"data": {"a": 1}, "options": {"cas": 0}})),
    )
    .await;
    assert_eq!(st, 400, "cas=0 on an existing key");
    let (st, l) = call(&s, "LIST", "secret/metadata/", root, None).await;
    assert_eq!(st, 200);
    assert_eq!(l["data"]["keys"], json!(["app"]));
    let (st, l2) = call(&s, "GET", "secret/metadata/?list=true", root, None).await;
    assert_eq!((st, &l2["data"]), (200, &l["data"]));

    // A restricted token: read-only on one path.
    let (st, _) = call(
        &s,
        "PUT",
        "sys/policies/acl/app-read",
        root,
        js(json!({"policy": "path \"secret/data/app\" { capabilities = [\"read\"] }"})),
    )
    .await;
    assert_eq!(st, 204);
    let (st, t) = call(
        &s,
        "POST",
        "auth/token/create",
        root,
        js(json!({"policies": ["app-read"], "ttl": "1h"})),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    let tok = t["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(t["auth"]["policies"], json!(["app-read", "default"]));
    let (st, _) = call(&s, "GET", "secret/data/app", Some(&tok), None).await;
    assert_eq!(st, 200);
    let (st, e) = call(
        &s,
        "POST",
        "secret/data/app",
        Some(&tok),
        js(json!({"data": {"x": "y"}})),
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(e["errors"], json!(["permission denied"]));
    let (st, me) = call(&s, "GET", "auth/token/lookup-self", Some(&tok), None).await;
    assert_eq!(st, 200, "default policy allows lookup-self");
    assert_eq!(me["data"]["policies"], json!(["app-read", "default"]));
    let (st, _) = call(&s, "POST", "auth/token/revoke-self", Some(&tok), None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "GET", "secret/data/app", Some(&tok), None).await;
    assert_eq!(st, 403, "revoked token");

    // Bearer works like X-Vault-Token.
    let r = s
        .client()
        .get(s.url("secret/data/app"))
        .header("Authorization", "Bearer root")
        .send()
        .await
        .expect("bearer");
    assert_eq!(r.status().as_u16(), 200);

    // Metrics are served (dev mode allows unauthenticated access).
    let text = s
        .client()
        .get(s.url("sys/metrics?format=prometheus"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("custos_core_unsealed"), "{text}");
    assert!(text.contains("custos_http_requests_total"));
}

#[tokio::test]
async fn bad_input_gets_vault_shaped_4xx_and_changes_nothing() {
    let s = dev_server();
    let root = Some("root");
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/keep",
        root,
        js(json!({"data": {"v": "1"}})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, policies_before) = call(&s, "LIST", "sys/policies/acl", root, None).await;
    let (_, mounts_before) = call(&s, "GET", "sys/mounts", root, None).await;

    let malformed = Some(b"{\"data\": {".to_vec());
    let not_object = Some(b"[1,2,3]".to_vec());
    let write_paths = [
        "secret/data/keep",
        "secret/metadata/keep",
        "secret/config",
        "secret/delete/keep",
        "secret/undelete/keep",
        "secret/destroy/keep",
        "auth/token/create",
        "sys/policies/acl/evil",
        "sys/mounts/evil",
        "sys/capabilities-self",
    ];
    for p in write_paths {
        for body in [&malformed, &not_object] {
            let (st, e) = call(&s, "POST", p, root, body.clone()).await;
            assert_eq!(st, 400, "{p}: {e}");
            assert!(
                e["errors"].as_array().is_some_and(|a| !a.is_empty()),
                "{p}: {e}"
            );
        }
    }
    let wrong_types = [
        ("secret/data/keep", json!({"data": "notamap"})),
        (
            "secret/data/keep",
            json!({"data": {"a": 1}, "options": {"cas": "x"}}),
        ),
        (
            "secret/data/keep",
            json!({"data": {"a": 1}, "options": "cas"}),
        ),
        ("secret/metadata/keep", json!({"max_versions": "many"})),
        ("secret/metadata/keep", json!({"custom_metadata": "x"})),
        ("secret/config", json!({"cas_required": "perhaps"})),
        ("secret/delete/keep", json!({"versions": "a,b"})),
        ("auth/token/create", json!({"ttl": "forever"})),
        ("auth/token/create", json!({"num_uses": "lots"})),
        ("auth/token/create", json!({"meta": "x"})),
        (
            "sys/policies/acl/evil",
            json!({"policy": "path \"x\" { capabilities = [\"fly\"] }"}),
        ),
        ("sys/policies/acl/evil", json!({"policy": 42})),
        ("sys/mounts/evil", json!({"type": "nosuchengine"})),
        ("sys/mounts/evil", json!({"type": "kv", "config": "x"})),
    ];
    for (p, body) in wrong_types {
        let (st, e) = call(&s, "POST", p, root, js(body.clone())).await;
        assert_eq!(st, 400, "{p} {body}: {e}");
        assert!(e["errors"].is_array(), "{p}: {e}");
    }

    // Oversize body: 33 MiB against the 32 MiB default.
    let big = vec![b' '; 33 * 1024 * 1024];
    let (st, e) = call(&s, "POST", "secret/data/keep", root, Some(big)).await;
    assert_eq!(st, 413, "{e}");

    // Unknown paths, bad tokens, bad methods.
    let (st, _) = call(&s, "GET", "sys/nonexistent", root, None).await;
    assert_eq!(st, 404);
    let (st, _) = call(&s, "GET", "nomount/x", root, None).await;
    assert_eq!(st, 404);
    let (st, _) = call(&s, "GET", "secret/nonsense/x", root, None).await;
    assert_eq!(st, 404);
    let (st, e) = call(&s, "GET", "secret/data/keep", Some("hvs.bogus"), None).await;
    assert_eq!(st, 403, "{e}");
    let (st, _) = call(&s, "GET", "secret/data/keep", None, None).await;
    assert_eq!(st, 403);
    let (st, _) = call(&s, "LIST", "secret/data/keep", root, None).await;
    assert_eq!(st, 405);
    let (st, _) = call(&s, "TRACE", "secret/data/keep", root, None).await;
    assert_eq!(st, 405);
    let (st, _) = call(
        &s,
        "PATCH",
        "secret/data/keep",
        root,
        js(json!({"data": {"v": "2"}})),
    )
    .await;
    assert_eq!(st, 415, "PATCH needs application/merge-patch+json");

    // Nothing changed.
    let (st, r) = call(&s, "GET", "secret/metadata/keep", root, None).await;
    assert_eq!(st, 200);
    assert_eq!(r["data"]["current_version"], json!(1));
    let (_, v) = call(&s, "GET", "secret/data/keep", root, None).await;
    assert_eq!(v["data"]["data"], json!({"v": "1"}));
    let (_, policies_after) = call(&s, "LIST", "sys/policies/acl", root, None).await;
    assert_eq!(policies_before["data"], policies_after["data"]);
    let (_, mounts_after) = call(&s, "GET", "sys/mounts", root, None).await;
    let keys = |v: &Value| {
        v["data"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(keys(&mounts_before), keys(&mounts_after));
    assert!(s.child_alive(), "server survived the sweep");
}

#[tokio::test]
async fn secrets_never_reach_logs_or_audit_unhashed() {
    let s = dev_server();
    let secret = format!("TOPSECRET-{}", std::process::id());
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/leak",
        Some("root"),
        js(json!({"data": {"password": secret}})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, r) = call(&s, "GET", "secret/data/leak", Some("root"), None).await;
    assert_eq!(st, 200);
    assert_eq!(r["data"]["data"]["password"], json!(secret));
    let (_, t) = call(
        &s,
        "POST",
        "auth/token/create",
        Some("root"),
        js(json!({"policies": ["default"]})),
    )
    .await;
    let token = t["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    // A failing request carrying the secret must not echo it either.
    let (st, e) = call(
        &s,
        "POST",
        "secret/data/leak",
        Some("root"),
        js(json!({"data": {"p": secret}, "options": {"cas": 99}})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(!e.to_string().contains(&secret));

    let audit = crate::harness::read_audit_events(&s.dir.join("audit"))
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(audit.contains("hmac-sha256:"), "audit events are hashed");
    assert!(audit.contains("secret/data/leak"), "audit has the path");
    for needle in [secret.as_str(), token.as_str()] {
        assert!(!audit.contains(needle), "audit log leaks a secret");
        assert!(!s.output().contains(needle), "server output leaks a secret");
    }
    // The raw data files hold ciphertext only.
    for entry in walk(&s.dir.join("raft")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds plaintext",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Server {
    fn child_alive(&self) -> bool {
        // try_wait needs &mut; a successful health call is proof enough.
        std::net::TcpStream::connect(&self.addr).is_ok()
    }
}
