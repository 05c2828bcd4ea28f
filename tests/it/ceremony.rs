//! Key ceremonies through the real binary (`core/src/ceremony.rs`): a root
//! token generated from 3 of 5 unseal key shares decodes with its OTP into a
//! working root token; wrong nonces, duplicate and wrong keys, cancel; a
//! rekey from 3-of-5 to 2-of-3 after which the old shares no longer unseal
//! and the new ones do; the verification flow; Vault's unauthenticated
//! endpoints off by default and served when the listener enables them; and
//! no key share in clear in the audit log.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Server, dev_server, read_audit_events, start_with_config};

/// `method path` with `token` (`None`: no token) and a JSON body.
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = s.client().request(method, s.url(path));
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn first_error(v: &Value) -> String {
    v["errors"][0].as_str().unwrap_or_default().to_string()
}

/// A server whose listener serves Vault's unauthenticated ceremonies too.
fn ceremony_server(dir: &Path) -> Server {
    let cfg = dir.join("server.hcl");
    let text = format!(
        r#"
storage "raft" {{
  path    = "{raft}"
  node_id = "node1"
}}
listener "tcp" {{
  address     = "127.0.0.1:0"
  tls_disable = true
  disable_unauthed_generate_root_endpoints = false
  disable_unauthed_rekey_endpoints         = "false"
}}
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
        raft = dir.join("raft").display(),
        audit = dir.join("audit").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    start_with_config(dir, &cfg)
}

/// Initialize with `shares`/`threshold` and unseal with the first
/// `threshold` shares. Returns the shares (hex).
async fn init_and_unseal(s: &mut Server, shares: u8, threshold: u8) -> Vec<String> {
    let (st, init) = call(
        s,
        "PUT",
        "sys/init",
        None,
        Some(json!({"secret_shares": shares, "secret_threshold": threshold})),
    )
    .await;
    assert_eq!(st, 200, "{init}");
    s.root_token = init["root_token"].as_str().expect("root").to_string();
    let keys: Vec<String> = init["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    assert!(unseal_with(s, &keys[..threshold as usize]).await);
    keys
}

/// Submit `keys` to `sys/unseal` (after a reset); whether the node unsealed.
async fn unseal_with(s: &Server, keys: &[String]) -> bool {
    let (st, _) = call(s, "PUT", "sys/unseal", None, Some(json!({"reset": true}))).await;
    assert_eq!(st, 200);
    let mut sealed = true;
    for k in keys {
        let (_, r) = call(s, "PUT", "sys/unseal", None, Some(json!({"key": k}))).await;
        sealed = r["sealed"] != json!(false);
    }
    !sealed
}

/// A (hex) share with one byte changed: the right length, the wrong key.
fn forged(share: &str) -> String {
    let mut chars: Vec<char> = share.chars().collect();
    chars[10] = if chars[10] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn generate_root_from_three_of_five_shares() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ceremony_server(dir.path());
    let keys = init_and_unseal(&mut s, 5, 3).await;
    let root = s.root_token.clone();
    let tok = Some(root.as_str());
    const A: &str = "sys/generate-root-token/attempt";
    const U: &str = "sys/generate-root-token/update";

    // Authenticated: no token, no status.
    let (st, _) = call(&s, "GET", A, None, None).await;
    assert_eq!(st, 403);
    let (st, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["data"]["started"], json!(false));
    assert_eq!(r["data"]["required"], json!(3));
    assert_eq!(r["data"]["otp_length"], json!(28));

    // Start: the server draws the OTP; a second start is refused.
    let (st, r) = call(&s, "PUT", A, tok, Some(json!({}))).await;
    assert_eq!(st, 200, "{r}");
    let otp = r["data"]["otp"].as_str().expect("otp").to_string();
    let nonce = r["data"]["nonce"].as_str().expect("nonce").to_string();
    assert_eq!(otp.len(), 28);
    let (st, r) = call(&s, "PUT", A, tok, Some(json!({}))).await;
    assert_eq!(st, 400);
    assert_eq!(
        first_error(&r),
        "root generation already in progress for this namespace"
    );
    // The OTP is shown once, at start.
    let (_, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(r["data"]["otp"], json!(""));
    assert_eq!(r["data"]["nonce"], json!(nonce));

    // Wrong nonce, missing fields, a key that is not a key: 400, no progress.
    let (st, r) = call(
        &s,
        "PUT",
        U,
        tok,
        Some(json!({"key": keys[0], "nonce": "x"})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        first_error(&r).starts_with("incorrect nonce supplied"),
        "{r}"
    );
    let (st, r) = call(&s, "PUT", U, tok, Some(json!({"key": keys[0]}))).await;
    assert_eq!((st, first_error(&r).as_str()), (400, "nonce is required"));
    let (st, r) = call(
        &s,
        "PUT",
        U,
        tok,
        Some(json!({"key": "zz!!", "nonce": nonce})),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = call(
        &s,
        "PUT",
        U,
        tok,
        Some(json!({"key": "AAAA", "nonce": nonce})),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let (_, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(r["data"]["progress"], json!(0));

    // One share, then the same share again: refused, progress stays 1.
    let update = |key: &str| json!({"key": key, "nonce": nonce});
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&keys[0]))).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["data"]["progress"], json!(1));
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&keys[0]))).await;
    assert_eq!(st, 400);
    assert_eq!(
        first_error(&r),
        "given key has already been provided during this generation operation"
    );

    // A forged third share: the combination fails, progress resets, the
    // attempt (and its nonce) stays.
    call(&s, "PUT", U, tok, Some(update(&keys[1]))).await;
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&forged(&keys[2])))).await;
    assert_eq!(st, 400);
    assert!(
        first_error(&r).starts_with("root generation aborted"),
        "{r}"
    );
    let (_, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(r["data"]["progress"], json!(0));
    assert_eq!(r["data"]["started"], json!(true));
    assert_eq!(r["data"]["nonce"], json!(nonce));

    // Cancel: nothing in progress; an update is refused.
    let (st, _) = call(&s, "DELETE", A, tok, None).await;
    assert_eq!(st, 204);
    let (_, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(r["data"]["started"], json!(false));
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&keys[0]))).await;
    assert_eq!(
        (st, first_error(&r).as_str()),
        (400, "no root generation in progress")
    );

    // Start again and finish with shares 5, 3 and 1.
    let (_, r) = call(&s, "PUT", A, tok, Some(json!({}))).await;
    let otp = r["data"]["otp"].as_str().expect("otp").to_string();
    let nonce = r["data"]["nonce"].as_str().expect("nonce").to_string();
    let mut last = Value::Null;
    for k in [&keys[4], &keys[2], &keys[0]] {
        let (st, r) = call(&s, "PUT", U, tok, Some(json!({"key": k, "nonce": nonce}))).await;
        assert_eq!(st, 200, "{r}");
        last = r;
    }
    assert_eq!(last["data"]["complete"], json!(true));
    let encoded = last["data"]["encoded_token"]
        .as_str()
        .expect("encoded")
        .to_string();
    let (_, r) = call(&s, "GET", A, tok, None).await;
    assert_eq!(r["data"]["started"], json!(false), "finished attempts end");

    // Decode (Vault's OTP scheme; `bao operator generate-root -decode` is
    // exercised by the compat suite, the XOR itself by the unit tests).
    let (st, r) = call(
        &s,
        "PUT",
        "sys/decode-token",
        tok,
        Some(json!({"encoded_token": encoded, "otp": otp})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let token = r["data"]["token"].as_str().expect("token").to_string();
    assert!(
        token.starts_with("hvs.") && token.len() == 28 && token != root,
        "{token}"
    );

    // The new token is a root token: it can do what only root can.
    let (st, r) = call(&s, "GET", "auth/token/lookup-self", Some(&token), None).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["data"]["policies"], json!(["root"]));
    let (st, r) = call(
        &s,
        "PUT",
        "sys/policies/acl/from-new-root",
        Some(&token),
        Some(json!({"policy": "path \"secret/*\" { capabilities = [\"read\"] }"})),
    )
    .await;
    assert_eq!(st, 204, "{r}");
    // ... and is revoked as the seeds' procedure says.
    let (st, _) = call(&s, "PUT", "auth/token/revoke-self", Some(&token), None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "GET", "auth/token/lookup-self", Some(&token), None).await;
    assert_eq!(st, 403);

    // Audited like any request, with the key shares only HMAC'd.
    let events = read_audit_events(&dir.path().join("audit"));
    assert!(
        events
            .iter()
            .any(|e| e["request"]["path"] == json!("sys/generate-root-token/update")),
        "generate-root updates are audited"
    );
    let log = serde_json::to_string(&events).expect("json");
    for k in &keys {
        assert!(
            !log.contains(k.as_str()),
            "a key share in clear in the audit log"
        );
    }
    assert!(!log.contains(&otp) && !log.contains(&encoded));
}

#[tokio::test]
async fn rekey_from_three_of_five_to_two_of_three() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ceremony_server(dir.path());
    let old = init_and_unseal(&mut s, 5, 3).await;
    let root = s.root_token.clone();
    let tok = Some(root.as_str());
    const I: &str = "sys/rotate/root/init";
    const U: &str = "sys/rotate/root/update";

    // Bad configurations: 400 with Vault's reason, nothing started.
    for (body, reason) in [
        (json!({}), "shares must be at least one"),
        (
            json!({"secret_shares": 3, "secret_threshold": 5}),
            "threshold cannot be larger than shares",
        ),
        (
            json!({"secret_shares": 3, "secret_threshold": 1}),
            "threshold must be greater than one for multiple shares",
        ),
        (
            json!({"secret_shares": 2, "secret_threshold": 2, "pgp_keys": ["a", "b"]}),
            "pgp_keys are not supported",
        ),
        (json!({"secret_shares": "many"}), ""),
    ] {
        let (st, r) = call(&s, "PUT", I, tok, Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {r}");
        assert!(first_error(&r).contains(reason), "{body}: {r}");
    }
    let (_, r) = call(&s, "GET", I, tok, None).await;
    assert_eq!(r["data"]["started"], json!(false));

    let (st, r) = call(
        &s,
        "PUT",
        I,
        tok,
        Some(json!({"secret_shares": 3, "secret_threshold": 2})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let nonce = r["data"]["nonce"].as_str().expect("nonce").to_string();
    assert_eq!(r["data"]["required"], json!(3));
    // Wrong nonce, duplicate, forged: refused; a forged combination resets.
    let (st, _) = call(
        &s,
        "PUT",
        U,
        tok,
        Some(json!({"key": old[0], "nonce": "x"})),
    )
    .await;
    assert_eq!(st, 400);
    let update = |key: &str| json!({"key": key, "nonce": nonce});
    call(&s, "PUT", U, tok, Some(update(&old[0]))).await;
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&old[0]))).await;
    assert_eq!(st, 400, "{r}");
    call(&s, "PUT", U, tok, Some(update(&old[1]))).await;
    let (st, r) = call(&s, "PUT", U, tok, Some(update(&forged(&old[2])))).await;
    assert_eq!(st, 400, "{r}");
    let (_, r) = call(&s, "GET", I, tok, None).await;
    assert_eq!(r["data"]["progress"], json!(0));

    let mut done = Value::Null;
    for k in &old[2..5] {
        let (st, r) = call(&s, "PUT", U, tok, Some(update(k))).await;
        assert_eq!(st, 200, "{r}");
        done = r;
    }
    assert_eq!(done["data"]["complete"], json!(true), "{done}");
    let new: Vec<String> = done["data"]["keys"]
        .as_array()
        .expect("new keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    assert_eq!(new.len(), 3);
    let (_, status) = call(&s, "GET", "sys/seal-status", None, None).await;
    assert_eq!(
        (status["n"].clone(), status["t"].clone()),
        (json!(3), json!(2))
    );

    // Seal: the old shares no longer unseal, two new ones do, and the data
    // written before is there.
    let (st, _) = call(
        &s,
        "PUT",
        "sys/policies/acl/before-rekey",
        tok,
        Some(json!({"policy": "path \"a/*\" { capabilities = [\"read\"] }"})),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "PUT", "sys/seal", tok, None).await;
    assert_eq!(st, 204);
    assert!(!unseal_with(&s, &old[..3]).await, "old shares still unseal");
    assert!(
        !unseal_with(&s, &old[2..5]).await,
        "old shares still unseal"
    );
    assert!(
        unseal_with(&s, &new[1..3]).await,
        "new shares do not unseal"
    );
    let (st, _) = call(&s, "GET", "sys/policies/acl/before-rekey", tok, None).await;
    assert_eq!(st, 200);

    // Vault's unauthenticated sys/rekey (served by this listener): a
    // rekey to one share, with `bao operator rekey`'s raw shapes.
    let (st, r) = call(
        &s,
        "PUT",
        "sys/rekey/init",
        None,
        Some(json!({"secret_shares": 1, "secret_threshold": 1})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert!(r.get("data").is_none(), "raw body: {r}");
    let nonce = r["nonce"].as_str().expect("nonce").to_string();
    let mut last = Value::Null;
    for k in &new[..2] {
        let (st, r) = call(
            &s,
            "PUT",
            "sys/rekey/update",
            None,
            Some(json!({"key": k, "nonce": nonce})),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        last = r;
    }
    assert_eq!(last["complete"], json!(true), "{last}");
    let single = last["keys"][0].as_str().expect("key").to_string();
    call(&s, "PUT", "sys/seal", tok, None).await;
    assert!(!unseal_with(&s, &new[..2]).await);
    assert!(unseal_with(&s, std::slice::from_ref(&single)).await);
    let events = read_audit_events(&dir.path().join("audit"));
    assert!(
        events
            .iter()
            .any(|e| e["request"]["path"] == json!("sys/rekey/update")),
        "the unauthenticated rekey is audited"
    );
    let log = serde_json::to_string(&events).expect("json");
    assert!(!log.contains(single.as_str()) && !log.contains(new[0].as_str()));
}

#[tokio::test]
async fn rekey_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ceremony_server(dir.path());
    let old = init_and_unseal(&mut s, 3, 2).await;
    let root = s.root_token.clone();
    let tok = Some(root.as_str());
    const V: &str = "sys/rotate/root/verify";

    let (st, r) = call(&s, "GET", V, tok, None).await;
    assert_eq!(
        (st, first_error(&r).as_str()),
        (400, "no rotation configuration found")
    );
    let (_, r) = call(
        &s,
        "PUT",
        "sys/rotate/root/init",
        tok,
        Some(json!({"secret_shares": 2, "secret_threshold": 2, "require_verification": true})),
    )
    .await;
    let nonce = r["data"]["nonce"].as_str().expect("nonce").to_string();
    let mut done = Value::Null;
    for k in &old[..2] {
        let (st, r) = call(
            &s,
            "PUT",
            "sys/rotate/root/update",
            tok,
            Some(json!({"key": k, "nonce": nonce})),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        done = r;
    }
    let vnonce = done["data"]["verification_nonce"]
        .as_str()
        .expect("verification nonce")
        .to_string();
    assert!(!vnonce.is_empty(), "{done}");
    let new: Vec<String> = done["data"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    // Not in effect yet: a seal now still wants the old shares.
    let (_, status) = call(&s, "GET", "sys/seal-status", None, None).await;
    assert_eq!(status["n"], json!(3));

    // Wrong new shares: the verification fails and starts over with a new nonce.
    call(
        &s,
        "PUT",
        V,
        tok,
        Some(json!({"key": new[0], "nonce": vnonce})),
    )
    .await;
    let (st, r) = call(
        &s,
        "PUT",
        V,
        tok,
        Some(json!({"key": forged(&new[1]), "nonce": vnonce})),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    assert_eq!(
        first_error(&r),
        "rotation verification failed; incorrect key shares supplied"
    );
    let (_, r) = call(&s, "GET", V, tok, None).await;
    let vnonce2 = r["data"]["nonce"].as_str().expect("nonce").to_string();
    assert_ne!(vnonce2, vnonce);
    assert_eq!(r["data"]["progress"], json!(0));

    let mut fin = Value::Null;
    for k in &new {
        let (st, r) = call(&s, "PUT", V, tok, Some(json!({"key": k, "nonce": vnonce2}))).await;
        assert_eq!(st, 200, "{r}");
        fin = r;
    }
    assert_eq!(fin["data"]["complete"], json!(true), "{fin}");
    call(&s, "PUT", "sys/seal", tok, None).await;
    assert!(!unseal_with(&s, &old[..2]).await);
    assert!(unseal_with(&s, &new).await);
}

#[tokio::test]
async fn unauthenticated_ceremonies_are_off_by_default() {
    let s = dev_server();
    for (method, path) in [
        ("GET", "sys/generate-root/attempt"),
        ("PUT", "sys/generate-root/attempt"),
        ("PUT", "sys/generate-root/update"),
        ("GET", "sys/rekey/init"),
        ("PUT", "sys/rekey/init"),
        ("PUT", "sys/rekey/update"),
        ("GET", "sys/rekey/verify"),
    ] {
        for token in [None, Some("root")] {
            let (st, r) = call(&s, method, path, token, Some(json!({}))).await;
            assert_eq!(st, 405, "{method} {path}: {r}");
            assert_eq!(first_error(&r), "unsupported operation");
        }
    }
    // The authenticated family works on the dev server's one share.
    let (st, r) = call(&s, "GET", "sys/rotate/root/init", Some("root"), None).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["data"]["required"], json!(1));
    // Recovery keys exist only under an auto seal.
    let (st, r) = call(
        &s,
        "PUT",
        "sys/rotate/recovery/init",
        Some("root"),
        Some(json!({"secret_shares": 1, "secret_threshold": 1})),
    )
    .await;
    assert_eq!(
        (st, first_error(&r).as_str()),
        (400, "recovery keys not supported")
    );
}

/// A rekey rotates the root key in one storage batch: kill -9 right after
/// it answers leaves a node that the new shares unseal (and the old ones do
/// not), with the data written before the rekey readable.
#[tokio::test]
async fn rekey_survives_kill_9_right_after_it_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ceremony_server(dir.path());
    let old = init_and_unseal(&mut s, 3, 2).await;
    let root = s.root_token.clone();
    let tok = Some(root.as_str());
    let policy = json!({"policy": "path \"b/*\" { capabilities = [\"read\"] }"});
    let (st, _) = call(&s, "PUT", "sys/policies/acl/kept", tok, Some(policy)).await;
    assert_eq!(st, 204);
    let (st, r) = call(
        &s,
        "PUT",
        "sys/rotate/root/init",
        tok,
        Some(json!({"secret_shares": 2, "secret_threshold": 2})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let nonce = r["data"]["nonce"].as_str().expect("nonce").to_string();
    let mut done = Value::Null;
    for k in &old[..2] {
        let (st, r) = call(
            &s,
            "PUT",
            "sys/rotate/root/update",
            tok,
            Some(json!({"key": k, "nonce": nonce})),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        done = r;
    }
    let new: Vec<String> = done["data"]["keys"]
        .as_array()
        .expect("new keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    assert_eq!(new.len(), 2, "{done}");
    // The rekeyed node still serves (its in-memory root key followed).
    let (st, _) = call(&s, "GET", "sys/policies/acl/kept", tok, None).await;
    assert_eq!(st, 200);

    s.kill9();
    drop(s);
    let s = start_with_config(dir.path(), &dir.path().join("server.hcl"));
    let (_, status) = call(&s, "GET", "sys/seal-status", None, None).await;
    assert_eq!(
        (&status["sealed"], &status["n"], &status["t"]),
        (&json!(true), &json!(2), &json!(2)),
        "{status}"
    );
    assert!(!unseal_with(&s, &old[..2]).await, "old shares still unseal");
    assert!(
        !unseal_with(&s, &old[1..3]).await,
        "old shares still unseal"
    );
    assert!(unseal_with(&s, &new).await, "new shares do not unseal");
    let (st, r) = call(&s, "GET", "sys/policies/acl/kept", tok, None).await;
    assert_eq!(st, 200, "{r}");
}
