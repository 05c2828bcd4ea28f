//! Cubbyhole and response wrapping against a real server: per-token
//! cubbyholes, `X-Vault-Wrap-TTL` on a KV read and on a token creation (the
//! auth block comes back from the unwrap), `sys/wrapping/wrap|unwrap|
//! lookup|rewrap`, single use under concurrent unwraps, expiry, policies
//! that demand wrapping, bad input, and an audit log that holds only HMACs
//! of wrapping tokens and of the wrapped secret.

use serde_json::{Value, json};

use crate::harness::{
    Server, bao_bin, config_server, dev_server, init_unseal_mount, read_audit_events,
};

const INVALID: &str = "wrapping token is not valid or does not exist";

async fn call_with(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    wrap_ttl: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = s.client().request(m, s.url(path));
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(w) = wrap_ttl {
        rb = rb.header("X-Vault-Wrap-TTL", w);
    }
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    call_with(s, method, path, token, None, body).await
}

async fn root(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = call(s, method, path, Some(&s.root_token), body).await;
    assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
    v
}

/// A new token with the default policy (which grants its own cubbyhole and
/// the wrapping endpoints).
async fn default_token(s: &Server) -> String {
    let v = root(
        s,
        "POST",
        "auth/token/create",
        json!({"policies": ["default"]}),
    )
    .await;
    v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// GET with `X-Vault-Wrap-TTL`; returns the wrap_info.
async fn wrapped_read(s: &Server, path: &str, ttl: &str) -> Value {
    let (st, v) = call_with(s, "GET", path, Some(&s.root_token), Some(ttl), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["data"],
        Value::Null,
        "a wrapped answer carries no data: {v}"
    );
    assert_eq!(v["request_id"], json!(""), "{v}");
    v["wrap_info"].clone()
}

fn errors(v: &Value) -> String {
    v["errors"].to_string()
}

#[tokio::test]
async fn each_token_has_its_own_cubbyhole_gone_with_the_token() {
    let s = dev_server();
    let (a, b) = (default_token(&s).await, default_token(&s).await);
    let (st, _) = call(
        &s,
        "POST",
        "cubbyhole/app/db",
        Some(&a),
        json!({"password": "p-a"}),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "POST", "cubbyhole/note", Some(&a), json!({"n": 1})).await;
    assert_eq!(st, 204);
    let (st, v) = call(&s, "GET", "cubbyhole/app/db", Some(&a), Value::Null).await;
    assert_eq!((st, &v["data"]), (200, &json!({"password": "p-a"})), "{v}");
    let (st, v) = call(&s, "LIST", "cubbyhole/", Some(&a), Value::Null).await;
    assert_eq!(
        (st, &v["data"]["keys"]),
        (200, &json!(["app/", "note"])),
        "{v}"
    );

    // Another token, and root, see nothing of it, and write their own.
    for other in [b.as_str(), s.root_token.as_str()] {
        let (st, _) = call(&s, "GET", "cubbyhole/app/db", Some(other), Value::Null).await;
        assert_eq!(st, 404);
        let (st, _) = call(&s, "LIST", "cubbyhole/", Some(other), Value::Null).await;
        assert_eq!(st, 404);
    }
    let (st, _) = call(
        &s,
        "POST",
        "cubbyhole/app/db",
        Some(&b),
        json!({"password": "p-b"}),
    )
    .await;
    assert_eq!(st, 204);
    let (_, v) = call(&s, "GET", "cubbyhole/app/db", Some(&a), Value::Null).await;
    assert_eq!(v["data"]["password"], "p-a");

    // Delete, bad input.
    let (st, _) = call(&s, "DELETE", "cubbyhole/note", Some(&a), Value::Null).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "GET", "cubbyhole/note", Some(&a), Value::Null).await;
    assert_eq!(st, 404);
    let (st, v) = call(&s, "POST", "cubbyhole/empty", Some(&a), json!({})).await;
    assert_eq!(
        (st, errors(&v)),
        (400, r#"["missing data fields"]"#.to_string())
    );

    // Revoked: the token and its cubbyhole are gone; b's stays.
    root(&s, "POST", "auth/token/revoke", json!({"token": a})).await;
    let (st, _) = call(&s, "GET", "cubbyhole/app/db", Some(&a), Value::Null).await;
    assert_eq!(st, 403);
    let (_, v) = call(&s, "GET", "cubbyhole/app/db", Some(&b), Value::Null).await;
    assert_eq!(v["data"]["password"], "p-b");

    // Still listed as Vault lists it.
    let mounts = root(&s, "GET", "sys/mounts", Value::Null).await;
    assert_eq!(
        mounts["data"]["cubbyhole/"]["type"], "cubbyhole",
        "{mounts}"
    );
}

#[tokio::test]
async fn a_wrapped_kv_read_unwraps_once() {
    let s = dev_server();
    root(
        &s,
        "POST",
        "secret/data/app",
        json!({"data": {"api_key": "k-123"}}),
    )
    .await;
    let info = wrapped_read(&s, "secret/data/app", "5m").await;
    let w = info["token"].as_str().expect("token").to_string();
    assert_eq!(info["ttl"], 300);
    assert_eq!(info["creation_path"], "secret/data/app");
    assert!(
        info["accessor"].as_str().is_some_and(|a| !a.is_empty()),
        "{info}"
    );
    assert!(info.get("wrapped_accessor").is_none(), "{info}");

    // The wrapping token: response-wrapping only, one use, orphan.
    let v = root(&s, "POST", "auth/token/lookup", json!({"token": w})).await;
    assert_eq!(v["data"]["policies"], json!(["response-wrapping"]), "{v}");
    assert_eq!(v["data"]["num_uses"], 1, "{v}");
    assert_eq!(v["data"]["orphan"], true, "{v}");

    // Lookup needs no token and spends nothing.
    let (st, v) = call(&s, "POST", "sys/wrapping/lookup", None, json!({"token": w})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["creation_ttl"], 300);
    assert_eq!(v["data"]["creation_path"], "secret/data/app");
    assert_eq!(v["data"]["creation_time"], info["creation_time"]);

    // The wrapping token can do nothing but unwrap.
    let (st, _) = call(&s, "GET", "secret/data/app", Some(&w), Value::Null).await;
    assert_eq!(st, 403);
    let (st, v) = call(&s, "POST", "sys/wrapping/unwrap", Some(&w), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["data"], json!({"api_key": "k-123"}), "{v}");
    assert_eq!(v["data"]["metadata"]["version"], 1, "{v}");

    // Second time, either way: Vault's 400, nothing inside.
    for token in [Some(w.as_str()), Some(s.root_token.as_str())] {
        let (st, v) = call(
            &s,
            "POST",
            "sys/wrapping/unwrap",
            token,
            json!({"token": w}),
        )
        .await;
        assert_eq!((st, errors(&v)), (400, json!([INVALID]).to_string()));
    }
    let (st, v) = call(&s, "POST", "sys/wrapping/lookup", None, json!({"token": w})).await;
    assert_eq!((st, errors(&v)), (400, json!([INVALID]).to_string()));
}

#[tokio::test]
async fn a_wrapped_token_creation_unwraps_to_its_auth_block() {
    let s = dev_server();
    let (st, v) = call_with(
        &s,
        "POST",
        "auth/token/create",
        Some(&s.root_token),
        Some("60"),
        json!({"policies": ["default"]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["auth"], Value::Null, "the token is inside, not here: {v}");
    let info = &v["wrap_info"];
    let w = info["token"].as_str().expect("wrapping token");
    assert_eq!(info["creation_path"], "auth/token/create");

    // A third party (here root) unwraps it: the auth block, a working token.
    let v = root(&s, "POST", "sys/wrapping/unwrap", json!({"token": w})).await;
    let token = v["auth"]["client_token"].as_str().expect("client token");
    assert_eq!(
        v["auth"]["accessor"], info["wrapped_accessor"],
        "{v} {info}"
    );
    assert_eq!(v["auth"]["policies"], json!(["default"]), "{v}");
    let (st, me) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["data"]["accessor"], info["wrapped_accessor"]);
}

#[tokio::test]
async fn wrap_and_rewrap_move_data_to_a_new_token() {
    let s = dev_server();
    let user = default_token(&s).await;
    let payload = json!({"role_id": "r-1", "n": 5, "nested": {"k": [1, 2]}});
    let (st, v) = call(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&user),
        payload.clone(),
    )
    .await;
    assert_eq!(
        (st, errors(&v)),
        (
            400,
            json!(["endpoint requires response wrapping to be used"]).to_string()
        )
    );
    let (st, v) = call_with(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&user),
        Some("2m"),
        payload.clone(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let first = v["wrap_info"]["token"].as_str().expect("token").to_string();

    // The default policy does not grant rewrap (as Vault's); root may.
    let (st, _) = call(
        &s,
        "POST",
        "sys/wrapping/rewrap",
        Some(&user),
        json!({"token": first}),
    )
    .await;
    assert_eq!(st, 403);
    let (st, v) = call(
        &s,
        "POST",
        "sys/wrapping/rewrap",
        Some(&s.root_token),
        json!({"token": first}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let second = v["wrap_info"]["token"].as_str().expect("token").to_string();
    assert_ne!(first, second);
    assert_eq!(v["wrap_info"]["ttl"], 120, "same TTL: {v}");
    assert_eq!(v["wrap_info"]["creation_path"], "sys/wrapping/wrap", "{v}");
    let (st, _) = call(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": first}),
    )
    .await;
    assert_eq!(st, 400, "the old token is spent");

    let (st, v) = call(
        &s,
        "POST",
        "sys/wrapping/unwrap",
        Some(&user),
        json!({"token": second}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"], payload);
}

#[tokio::test]
async fn concurrent_unwraps_deliver_once() {
    let s = dev_server();
    let (_, v) = call_with(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&s.root_token),
        Some("60"),
        json!({"s": "once"}),
    )
    .await;
    let w = v["wrap_info"]["token"].as_str().expect("token").to_string();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, url, w, root) = (
            s.client(),
            s.url("sys/wrapping/unwrap"),
            w.clone(),
            s.root_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Half as the wrapping token, half naming it in the body.
            let rb = if i % 2 == 0 {
                c.post(url).header("X-Vault-Token", &w)
            } else {
                c.post(url)
                    .header("X-Vault-Token", &root)
                    .json(&json!({"token": w}))
            };
            let r = rb.send().await.expect("send");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        let (st, body) = t.await.expect("task");
        match st {
            200 => {
                assert!(body.contains("once"), "{body}");
                delivered += 1;
            }
            400 | 403 => assert!(!body.contains("once"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(delivered, 1, "exactly one unwrap delivers");
}

#[tokio::test]
async fn an_expired_wrapping_token_unwraps_nothing() {
    let s = dev_server();
    let (_, v) = call_with(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(&s.root_token),
        Some("1s"),
        json!({"s": "late"}),
    )
    .await;
    let w = v["wrap_info"]["token"].as_str().expect("token").to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, v) = call(
        &s,
        "POST",
        "sys/wrapping/unwrap",
        Some(&s.root_token),
        json!({"token": w}),
    )
    .await;
    assert_eq!((st, errors(&v)), (400, json!([INVALID]).to_string()));
    let (st, _) = call(&s, "POST", "sys/wrapping/lookup", None, json!({"token": w})).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn bad_wrapping_input_is_a_clear_4xx() {
    let s = dev_server();
    let r = &s.root_token;
    for (ttl, msg) in [
        (
            "abc",
            r#"error parsing X-Vault-Wrap-TTL header: time: invalid duration \"abc\""#,
        ),
        (
            "-5",
            "error parsing X-Vault-Wrap-TTL header: requested wrap ttl cannot be negative",
        ),
        (
            "5x",
            r#"error parsing X-Vault-Wrap-TTL header: time: unknown unit \"x\" in duration \"5x\""#,
        ),
    ] {
        let (st, v) = call_with(&s, "GET", "sys/mounts", Some(r), Some(ttl), Value::Null).await;
        assert_eq!((st, errors(&v)), (400, format!("[\"{msg}\"]")), "{ttl}");
    }
    let cases = [
        (
            Some(r.as_str()),
            json!({"token": 5}),
            403,
            "error validating wrapping token: could not decode token in request body",
        ),
        (
            Some(r.as_str()),
            json!({"token": ""}),
            403,
            "error validating wrapping token: empty token in request body",
        ),
        (
            None,
            Value::Null,
            403,
            "error validating wrapping token: token is empty",
        ),
        (Some(r.as_str()), Value::Null, 400, INVALID),
        (Some("bogus"), json!({"token": "nope"}), 400, INVALID),
    ];
    for (token, body, status, msg) in cases {
        let (st, v) = call(&s, "POST", "sys/wrapping/unwrap", token, body.clone()).await;
        assert_eq!(
            (st, errors(&v)),
            (status, json!([msg]).to_string()),
            "{body}"
        );
    }
    let (st, _) = call(&s, "GET", "sys/wrapping/wrap", Some(r), Value::Null).await;
    assert_eq!(st, 405);
    // A header of 0 asks for nothing.
    let (st, v) = call_with(&s, "GET", "sys/mounts", Some(r), Some("0"), Value::Null).await;
    assert_eq!((st, &v["wrap_info"]), (200, &Value::Null), "{v}");
}

#[tokio::test]
async fn policies_can_demand_wrapping() {
    let s = dev_server();
    root(
        &s,
        "POST",
        "secret/data/handoff",
        json!({"data": {"k": "v"}}),
    )
    .await;
    root(
        &s,
        "PUT",
        "sys/policies/acl/must-wrap",
        json!({"policy": "path \"secret/data/handoff\" {\n capabilities = [\"read\"]\n min_wrapping_ttl = \"10s\"\n max_wrapping_ttl = \"5m\"\n}"}),
    )
    .await;
    let v = root(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["must-wrap"]}),
    )
    .await;
    let t = v["auth"]["client_token"].as_str().expect("token");
    let read = |ttl: Option<&'static str>| {
        call_with(&s, "GET", "secret/data/handoff", Some(t), ttl, Value::Null)
    };
    assert_eq!(read(None).await.0, 403);
    assert_eq!(read(Some("5s")).await.0, 403);
    assert_eq!(read(Some("10m")).await.0, 403);
    let (st, v) = read(Some("1m")).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["wrap_info"]["token"].is_string(), "{v}");
}

#[tokio::test]
async fn audit_sees_wrap_info_hmacd_and_never_the_wrapped_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = config_server(dir.path());
    init_unseal_mount(&mut s).await;
    root(
        &s,
        "POST",
        "secret/data/app",
        json!({"data": {"api_key": "plain-secret-value"}}),
    )
    .await;
    let info = wrapped_read(&s, "secret/data/app", "5m").await;
    let w = info["token"].as_str().expect("token").to_string();
    let (st, _) = call(&s, "POST", "sys/wrapping/unwrap", Some(&w), Value::Null).await;
    assert_eq!(st, 200);

    let events = read_audit_events(&dir.path().join("audit"));
    let text = events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains(&w),
        "a wrapping token in clear in the audit log"
    );
    let wrapped = events
        .iter()
        .find(|e| {
            e["type"] == "response"
                && e["request"]["path"] == "secret/data/app"
                && e["response"]["wrap_info"].is_object()
        })
        .expect("the wrapped read's response event");
    let wi = &wrapped["response"]["wrap_info"];
    assert!(
        wi["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("hmac-sha256:")),
        "{wi}"
    );
    assert!(
        wi["accessor"]
            .as_str()
            .is_some_and(|t| t.starts_with("hmac-sha256:")),
        "{wi}"
    );
    assert_eq!(wi["ttl"], 300);
    assert_eq!(wrapped["request"]["wrap_ttl"], 300, "{wrapped}");
    assert!(
        wrapped["response"].get("data").is_none(),
        "the wrapped read logs no data: {wrapped}"
    );
    // The unwrap is audited as the response it holds, values HMAC'd.
    let unwrap = events
        .iter()
        .find(|e| e["type"] == "response" && e["request"]["path"] == "sys/wrapping/unwrap")
        .expect("the unwrap's response event");
    let key = &unwrap["response"]["data"]["data"]["api_key"];
    assert!(
        key.as_str().is_some_and(|k| k.starts_with("hmac-sha256:")),
        "{unwrap}"
    );
    assert!(
        !text.contains("plain-secret-value"),
        "the wrapped secret in clear in the audit log"
    );
}

#[tokio::test]
async fn a_wrapped_login_unwraps_to_its_token() {
    let s = dev_server();
    root(&s, "POST", "sys/auth/userpass", json!({"type": "userpass"})).await;
    root(
        &s,
        "POST",
        "auth/userpass/users/ci",
        json!({"password": "pw-ci", "token_policies": "default"}),
    )
    .await;
    let (st, v) = call_with(
        &s,
        "POST",
        "auth/userpass/login/ci",
        None,
        Some("60"),
        json!({"password": "pw-ci"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["auth"], Value::Null, "{v}");
    let info = &v["wrap_info"];
    assert_eq!(info["creation_path"], "auth/userpass/login/ci", "{v}");
    let w = info["token"].as_str().expect("wrapping token");
    let (st, v) = call(&s, "POST", "sys/wrapping/unwrap", Some(w), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["auth"]["accessor"], info["wrapped_accessor"], "{v}");
    let token = v["auth"]["client_token"].as_str().expect("client token");
    let (st, me) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["data"]["meta"]["username"], "ci", "{me}");
}

/// AppRole secret-id delivery: an orchestrator that may fetch secret-ids
/// only wrapped hands the wrapping token to the application, which unwraps
/// it and logs in; the wrap_info names the secret-id's accessor.
#[tokio::test]
async fn approle_secret_ids_are_delivered_wrapped() {
    let s = dev_server();
    root(&s, "POST", "sys/auth/approle", json!({"type": "approle"})).await;
    root(
        &s,
        "POST",
        "auth/approle/role/web",
        json!({"token_policies": "default"}),
    )
    .await;
    let role_id =
        root(&s, "GET", "auth/approle/role/web/role-id", Value::Null).await["data"]["role_id"]
            .as_str()
            .expect("role id")
            .to_string();
    root(
        &s,
        "PUT",
        "sys/policies/acl/deployer",
        json!({"policy": "path \"auth/approle/role/web/secret-id\" {\n capabilities = [\"update\"]\n min_wrapping_ttl = \"10s\"\n max_wrapping_ttl = \"5m\"\n}"}),
    )
    .await;
    let v = root(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["deployer"]}),
    )
    .await;
    let deployer = v["auth"]["client_token"].as_str().expect("token");

    let path = "auth/approle/role/web/secret-id";
    let (st, _) = call(&s, "POST", path, Some(deployer), Value::Null).await;
    assert_eq!(st, 403, "unwrapped secret-ids are refused by the policy");
    let (st, v) = call_with(&s, "POST", path, Some(deployer), Some("2m"), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    let info = v["wrap_info"].clone();
    assert_eq!(info["creation_path"], path);
    let w = info["token"].as_str().expect("wrapping token");

    let (st, v) = call(&s, "POST", "sys/wrapping/unwrap", Some(w), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["data"]["secret_id_accessor"], info["wrapped_accessor"],
        "{v}"
    );
    let secret_id = v["data"]["secret_id"].as_str().expect("secret id");
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": secret_id}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["auth"]["client_token"].is_string(), "{v}");
}

/// The real `bao agent` with AppRole auto-auth and a wrapped secret-id
/// (`secret_id_response_wrapping_path`): it checks the wrapping token's
/// creation path with `sys/wrapping/lookup`, unwraps it as the client token,
/// logs in and writes the token to its sink.
#[tokio::test]
async fn bao_agent_logs_in_with_a_wrapped_secret_id() {
    let Some(bao) = bao_bin() else {
        return;
    };
    let s = dev_server();
    root(&s, "POST", "sys/auth/approle", json!({"type": "approle"})).await;
    root(
        &s,
        "POST",
        "auth/approle/role/agent",
        json!({"token_policies": "default"}),
    )
    .await;
    let role_id =
        root(&s, "GET", "auth/approle/role/agent/role-id", Value::Null).await["data"]["role_id"]
            .as_str()
            .expect("role id")
            .to_string();
    let path = "auth/approle/role/agent/secret-id";
    let (st, v) = call_with(
        &s,
        "POST",
        path,
        Some(&s.root_token),
        Some("5m"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let wrapped = v["wrap_info"]["token"].as_str().expect("wrapping token");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("role_id"), &role_id).expect("write");
    std::fs::write(file("secret_id"), wrapped).expect("write");
    let config = format!(
        r#"vault {{ address = "http://{addr}" }}
auto_auth {{
  method "approle" {{
    mount_path = "auth/approle"
    config = {{
      role_id_file_path = "{role}"
      secret_id_file_path = "{secret}"
      secret_id_response_wrapping_path = "{path}"
      remove_secret_id_file_after_reading = false
    }}
  }}
  sink "file" {{ config = {{ path = "{sink}" }} }}
}}
exit_after_auth = true
"#,
        addr = s.addr,
        role = file("role_id").display(),
        secret = file("secret_id").display(),
        sink = file("token").display(),
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
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("bao agent finished within 60 s")
        .expect("join")
        .expect("bao agent ran");
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
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
    assert_eq!(me["data"]["meta"]["role_name"], "agent", "{me}");
    // The wrapping token was spent by the agent's unwrap.
    let (st, _) = call(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": wrapped}),
    )
    .await;
    assert_eq!(st, 400);
}
