//! `GET sys/audit-query` end to end: a real dev server (file audit device),
//! two tokens reading a KV v2 secret at different versions, the query
//! listing both with the versions they read, and a token without an
//! explicit grant refused.

use serde_json::{Value, json};

use crate::harness::{Server, dev_server};

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = s.client();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = c.request(m, s.url(path)).header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A token with `policies`; returns (token, accessor).
async fn token(s: &Server, policies: &[&str], name: &str) -> (String, String) {
    let (st, t) = call(
        s,
        "POST",
        "auth/token/create",
        "root",
        Some(json!({"policies": policies, "display_name": name})),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    (
        t["auth"]["client_token"]
            .as_str()
            .expect("token")
            .to_owned(),
        t["auth"]["accessor"].as_str().expect("accessor").to_owned(),
    )
}

async fn audit_hash(s: &Server, input: &str) -> String {
    let (st, h) = call(
        s,
        "POST",
        "sys/audit-hash/file",
        "root",
        Some(json!({"input": input})),
    )
    .await;
    assert_eq!(st, 200, "{h}");
    h["data"]["hash"].as_str().expect("hash").to_owned()
}

fn client<'a>(answer: &'a Value, accessor_hash: &str) -> Option<&'a Value> {
    answer["data"]["clients"]
        .as_array()?
        .iter()
        .find(|c| c["accessor"] == json!(accessor_hash))
}

#[tokio::test]
async fn audit_query_lists_readers_with_versions_and_needs_a_grant() {
    let s = dev_server();
    let (st, _) = call(
        &s,
        "PUT",
        "sys/policies/acl/reader",
        "root",
        Some(json!({"policy": "path \"secret/data/app/db\" { capabilities = [\"read\"] }"})),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/app/db",
        "root",
        Some(json!({"data": {"password": "one"}})),
    )
    .await;
    assert_eq!(st, 200);
    let (ta, acc_a) = token(&s, &["reader"], "svc-a").await;
    let (tb, acc_b) = token(&s, &["reader"], "svc-b").await;

    let (st, r) = call(&s, "GET", "secret/data/app/db", &ta, None).await;
    assert_eq!((st, &r["data"]["metadata"]["version"]), (200, &json!(1)));
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/app/db",
        "root",
        Some(json!({"data": {"password": "two"}})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, r) = call(&s, "GET", "secret/data/app/db", &tb, None).await;
    assert_eq!((st, &r["data"]["metadata"]["version"]), (200, &json!(2)));
    let (st, _) = call(&s, "GET", "secret/data/app/db?version=1", &tb, None).await;
    assert_eq!(st, 200);

    // The log holds accessors HMAC'd with the file device's salt.
    let ha = audit_hash(&s, &acc_a).await;
    let hb = audit_hash(&s, &acc_b).await;

    let (st, q) = call(
        &s,
        "GET",
        "sys/audit-query?path=secret/data/app/db",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["data"]["source"], json!("local"));
    let a = client(&q, &ha).unwrap_or_else(|| panic!("token A listed: {q}"));
    let b = client(&q, &hb).unwrap_or_else(|| panic!("token B listed: {q}"));
    assert_eq!(a["versions"], json!([1]));
    assert_eq!(a["reads"], json!(1));
    assert_eq!(a["display_name"], json!("token-svc-a"));
    assert_eq!(b["versions"], json!([1, 2]));
    assert_eq!(b["max_version"], json!(2));
    assert!(a["policies"].as_array().unwrap().contains(&json!("reader")));
    assert_eq!(a["remote_address"], json!("127.0.0.1"));

    // The rotator's question: who read v2 or later; the KV logical path
    // is accepted too; an accessor filter is hashed by the server.
    let (st, q) = call(
        &s,
        "GET",
        "sys/audit-query?path=secret/app/db&min_version=2&since=0",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    let listed: Vec<&Value> = q["data"]["clients"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{q}");
    assert_eq!(listed[0]["accessor"], json!(hb));
    let (st, q) = call(
        &s,
        "GET",
        &format!("sys/audit-query?path=secret/data/app/db&accessor={acc_a}"),
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["data"]["clients"].as_array().unwrap().len(), 1);
    assert!(client(&q, &ha).is_some());
    // A future window is empty.
    let (st, q) = call(
        &s,
        "GET",
        "sys/audit-query?path=secret/data/app/db&since=2100-01-01T00:00:00Z",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(q["data"]["clients"], json!([]));

    // Without an explicit grant: 403. Bad input: 400.
    let (st, _) = call(
        &s,
        "GET",
        "sys/audit-query?path=secret/data/app/db",
        &ta,
        None,
    )
    .await;
    assert_eq!(st, 403);
    let (st, e) = call(
        &s,
        "GET",
        "sys/audit-query?path=secret/data/app/db&since=soon",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = call(&s, "GET", "sys/audit-query", "root", None).await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = call(
        &s,
        "GET",
        "sys/audit-query?path=x&source=elasticsearch",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 400, "no elasticsearch device: {e}");

    // The index file lives beside the log.
    assert!(s.dir.join("audit").join("audit.index.redb").exists());
}
