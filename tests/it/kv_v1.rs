//! KV v1 mounts and the built-in mounts through the real binary, across
//! restarts: v1 entries written through the API are on disk after a
//! restart, a v1 → v2 upgrade (`sys/mounts/<m>/tune`, `options.version=2`)
//! acknowledged before a kill -9 is complete after it, and `sys/`,
//! `cubbyhole/` and `identity/` keep their identity.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Server, config_server, init_unseal_mount, unseal};

async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = s
        .client()
        .request(method, s.url(path))
        .header("X-Vault-Token", &s.root_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// kill -9 the server, start it again on its data directory, unseal.
async fn restart(mut s: Server) -> Server {
    let (root, key, dir) = (s.root_token.clone(), s.unseal_key.clone(), s.dir.clone());
    s.kill9();
    drop(s);
    let mut s = config_server(&dir);
    s.root_token = root;
    s.unseal_key = key;
    unseal(&s).await;
    s
}

#[tokio::test]
async fn kv_v1_data_and_its_upgrade_survive_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = config_server(dir.path());
    init_unseal_mount(&mut s).await;

    let (status, mounts) = call(&s, "GET", "sys/mounts", None).await;
    assert_eq!(status, 200);
    let uuids: Vec<Value> = ["sys/", "cubbyhole/", "identity/"]
        .iter()
        .map(|p| mounts["data"][*p]["uuid"].clone())
        .collect();
    assert!(uuids.iter().all(Value::is_string), "{mounts}");

    let (status, _) = call(&s, "POST", "sys/mounts/old", Some(json!({"type": "kv"}))).await;
    assert_eq!(status, 204);
    for i in 0..50 {
        let (status, body) = call(
            &s,
            "POST",
            &format!("old/app/k{i}"),
            Some(json!({"i": i, "ttl": "1h"})),
        )
        .await;
        assert_eq!(status, 204, "{body}");
    }

    let s = restart(s).await;
    let (status, got) = call(&s, "GET", "old/app/k7", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"], json!({"i": 7, "ttl": "1h"}));
    assert_eq!(got["lease_duration"], json!(3600));
    let (_, ui) = call(&s, "GET", "sys/internal/ui/mounts/old", None).await;
    assert_eq!(ui["data"]["options"], json!({}));

    // The upgrade is acknowledged only once every entry moved: a kill -9
    // right after it loses nothing.
    let (status, body) = call(
        &s,
        "POST",
        "sys/mounts/old/tune",
        Some(json!({"options": {"version": "2"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let s = restart(s).await;
    let (_, ui) = call(&s, "GET", "sys/internal/ui/mounts/old", None).await;
    assert_eq!(ui["data"]["options"], json!({"version": "2"}));
    let (status, list) = call(&s, "LIST", "old/metadata/app/", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"]["keys"].as_array().map(Vec::len), Some(50));
    for i in [0, 7, 49] {
        let (status, got) = call(&s, "GET", &format!("old/data/app/k{i}"), None).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["data"]["data"], json!({"i": i, "ttl": "1h"}));
        assert_eq!(got["data"]["metadata"]["version"], json!(1));
    }

    let (_, mounts) = call(&s, "GET", "sys/mounts", None).await;
    for (p, uuid) in ["sys/", "cubbyhole/", "identity/"].iter().zip(uuids) {
        assert_eq!(mounts["data"][*p]["uuid"], uuid, "{p}");
    }
    let (status, _) = call(&s, "DELETE", "sys/mounts/cubbyhole", None).await;
    assert_eq!(status, 400);
}
