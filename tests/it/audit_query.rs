//! `GET sys/audit-query` end to end: a real dev server (file audit device),
//! two tokens reading a KV v2 secret at different versions, the query
//! listing both with the versions they read, and a token without an
//! explicit grant refused; and transit decrypts under two key versions,
//! the query reporting each client's `key_versions` and `max_key_version`
//! keeping only those still on the old one.

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

/// The KEK rotator's question: who still decrypts under the old key
/// version? Encrypt under v1, rotate, decrypt a v1 and a v2 ciphertext
/// (and a batch over both) as different clients, then ask the query.
#[tokio::test]
async fn audit_query_reports_transit_key_versions_and_filters_old_ones() {
    let s = dev_server();
    let (st, e) = call(
        &s,
        "POST",
        "sys/mounts/transit",
        "root",
        Some(json!({"type": "transit"})),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {e}");
    let (st, e) = call(&s, "POST", "transit/keys/orders", "root", None).await;
    assert_eq!(st, 200, "{e}");
    let encrypt = |pt: &'static str| {
        let s = &s;
        async move {
            let (st, r) = call(
                s,
                "POST",
                "transit/encrypt/orders",
                "root",
                Some(json!({"plaintext": pt})),
            )
            .await;
            assert_eq!(st, 200, "{r}");
            r["data"]["ciphertext"]
                .as_str()
                .expect("ciphertext")
                .to_owned()
        }
    };
    let ct1 = encrypt("b25l").await;
    assert!(ct1.starts_with("vault:v1:"), "{ct1}");
    let (st, e) = call(&s, "POST", "transit/keys/orders/rotate", "root", None).await;
    assert_eq!(st, 200, "{e}");
    let ct2 = encrypt("dHdv").await;
    assert!(ct2.starts_with("vault:v2:"), "{ct2}");

    let (st, _) = call(
        &s,
        "PUT",
        "sys/policies/acl/orders",
        "root",
        Some(json!({"policy": "path \"transit/decrypt/orders\" { capabilities = [\"update\"] }"})),
    )
    .await;
    assert_eq!(st, 204);
    let (t_old, acc_old) = token(&s, &["orders"], "lagging").await;
    let (t_new, acc_new) = token(&s, &["orders"], "moved").await;
    let (t_batch, acc_batch) = token(&s, &["orders"], "batcher").await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        - 1;

    // The client's answer carries nothing new.
    let (st, r) = call(
        &s,
        "POST",
        "transit/decrypt/orders",
        &t_old,
        Some(json!({"ciphertext": ct1})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["data"], json!({"plaintext": "b25l"}));
    let (st, r) = call(
        &s,
        "POST",
        "transit/decrypt/orders",
        &t_new,
        Some(json!({"ciphertext": ct2})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = call(
        &s,
        "POST",
        "transit/decrypt/orders",
        &t_batch,
        Some(json!({"batch_input": [
            {"ciphertext": ct2}, {"ciphertext": ct1}, {"ciphertext": ct2},
        ]})),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    let (ho, hn, hb) = (
        audit_hash(&s, &acc_old).await,
        audit_hash(&s, &acc_new).await,
        audit_hash(&s, &acc_batch).await,
    );
    // Every decrypting client, with the key versions it used.
    let (st, q) = call(
        &s,
        "GET",
        &format!("sys/audit-query?path=transit/decrypt/orders&operation=update&since={since}"),
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(
        q["data"]["clients"].as_array().map(Vec::len),
        Some(3),
        "{q}"
    );
    let old = client(&q, &ho).unwrap_or_else(|| panic!("lagging listed: {q}"));
    assert_eq!(old["key_versions"], json!([1]));
    assert_eq!(old["min_key_version"], json!(1));
    assert_eq!(old["versions"], json!([]));
    let new = client(&q, &hn).unwrap_or_else(|| panic!("moved listed: {q}"));
    assert_eq!(new["key_versions"], json!([2]));
    assert_eq!(new["min_key_version"], json!(2));
    let batch = client(&q, &hb).unwrap_or_else(|| panic!("batcher listed: {q}"));
    assert_eq!(batch["key_versions"], json!([1, 2]));
    assert_eq!(batch["min_key_version"], json!(1));

    // The rotator's call: only the clients still decrypting under v1.
    let (st, q) = call(
        &s,
        "GET",
        &format!(
            "sys/audit-query?path=transit/decrypt/orders&operation=update&since={since}&max_key_version=1"
        ),
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    let mut listed: Vec<&str> = q["data"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["accessor"].as_str())
        .collect();
    listed.sort_unstable();
    let mut want = vec![ho.as_str(), hb.as_str()];
    want.sort_unstable();
    assert_eq!(listed, want, "{q}");
    let (st, q) = call(
        &s,
        "GET",
        &format!(
            "sys/audit-query?path=transit/decrypt/orders&operation=update&since={since}&max_key_version=0"
        ),
        "root",
        None,
    )
    .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["data"]["clients"], json!([]));
    let (st, e) = call(
        &s,
        "GET",
        "sys/audit-query?path=transit/decrypt/orders&max_key_version=-1",
        "root",
        None,
    )
    .await;
    assert_eq!(st, 400, "{e}");

    // The event itself: response.key_versions, outside response.data.
    let events = crate::harness::read_audit_events(&s.dir.join("audit"));
    let batch_event = events
        .iter()
        .find(|e| {
            e["type"] == json!("response")
                && e["request"]["path"] == json!("transit/decrypt/orders")
                && e["auth"]["accessor"] == json!(hb)
        })
        .unwrap_or_else(|| panic!("batch response event in the log"));
    assert_eq!(batch_event["response"]["key_versions"], json!([1, 2]));
    assert!(
        batch_event["response"]["data"]
            .get("key_versions")
            .is_none()
    );
    let kv_or_sys = events
        .iter()
        .filter(|e| e["type"] == json!("response"))
        .filter(|e| {
            !e["request"]["path"]
                .as_str()
                .unwrap_or("")
                .starts_with("transit/")
        })
        .all(|e| e["response"].get("key_versions").is_none());
    assert!(kv_or_sys, "non-transit events carry no key_versions");
}
