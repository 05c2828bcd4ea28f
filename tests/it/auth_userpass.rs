//! Logging in with userpass end to end, against a real dev server: the
//! token a login issues (policies, TTLs, identity entity, bound CIDRs),
//! wrong and malformed credentials refused with Vault's errors and no token,
//! login lockout with `sys/locked-users`, and the audit log holding only
//! HMACs of passwords and issued tokens.

use serde_json::{Value, json};

use crate::harness::{Server, call, dev_server, read_audit_events, root};

async fn login(s: &Server, user: &str, password: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        &format!("auth/userpass/login/{user}"),
        None,
        json!({"password": password}),
    )
    .await
}

async fn setup(s: &Server) {
    root(s, "POST", "sys/auth/userpass", json!({"type": "userpass"})).await;
    root(
        s,
        "PUT",
        "sys/policies/acl/kv-reader",
        json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    root(
        s,
        "POST",
        "auth/userpass/users/alice",
        json!({"password": "correct horse", "token_policies": "kv-reader",
               "token_ttl": "1h", "token_max_ttl": "2h"}),
    )
    .await;
    root(
        s,
        "POST",
        "secret/data/app/db",
        json!({"data": {"password": "s3cr3t"}}),
    )
    .await;
}

#[tokio::test]
async fn userpass_login_issues_a_token_with_the_users_policies_and_an_entity() {
    let s = dev_server();
    setup(&s).await;

    let auths = root(&s, "GET", "sys/auth", Value::Null).await;
    let accessor = auths["data"]["userpass/"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_string();
    assert!(accessor.starts_with("auth_userpass_"), "{accessor}");

    let user = root(&s, "GET", "auth/userpass/users/alice", Value::Null).await;
    assert_eq!(user["data"]["token_policies"], json!(["kv-reader"]));
    assert_eq!(user["data"]["token_ttl"], json!(3600));
    assert!(user["data"].get("password").is_none() && user["data"].get("password_hash").is_none());
    let list = root(&s, "LIST", "auth/userpass/users", Value::Null).await;
    assert_eq!(list["data"]["keys"], json!(["alice"]));

    // A token sent along with a login is ignored, as Vault does.
    let (st, v) = call(
        &s,
        "POST",
        "auth/userpass/login/Alice",
        Some("bogus"),
        json!({"password": "correct horse"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let auth = &v["auth"];
    assert_eq!(auth["policies"], json!(["default", "kv-reader"]));
    assert_eq!(auth["token_policies"], json!(["default", "kv-reader"]));
    assert_eq!(auth["metadata"], json!({"username": "alice"}));
    assert_eq!(auth["lease_duration"], json!(3600));
    assert_eq!(auth["renewable"], json!(true));
    assert_eq!(auth["orphan"], json!(true));
    assert_eq!(auth["token_type"], json!("service"));
    let entity = auth["entity_id"].as_str().expect("entity_id").to_string();
    assert!(!entity.is_empty());
    let token = auth["client_token"].as_str().expect("token").to_string();

    // The token reads what kv-reader allows and nothing else.
    let (st, r) = call(&s, "GET", "secret/data/app/db", Some(&token), Value::Null).await;
    assert_eq!(
        (st, &r["data"]["data"]["password"]),
        (200, &json!("s3cr3t"))
    );
    let (st, _) = call(
        &s,
        "POST",
        "secret/data/app/db",
        Some(&token),
        json!({"data": {}}),
    )
    .await;
    assert_eq!(st, 403);
    let me = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await
    .1;
    assert_eq!(me["data"]["display_name"], json!("userpass-alice"));
    assert_eq!(me["data"]["entity_id"], json!(entity));
    assert_eq!(me["data"]["path"], json!("auth/userpass/login/Alice"));

    // Renewals stay under the user's token_max_ttl (2h).
    let r = call(
        &s,
        "POST",
        "auth/token/renew-self",
        Some(&token),
        json!({"increment": "10h"}),
    )
    .await
    .1;
    let renewed = r["auth"]["lease_duration"]
        .as_i64()
        .expect("lease_duration");
    assert!(renewed <= 7200 && renewed > 7000, "{r}");

    // The same user logs in to the same entity.
    let again = login(&s, "alice", "correct horse").await.1;
    assert_eq!(again["auth"]["entity_id"], json!(entity));
    assert_ne!(again["auth"]["client_token"], json!(token));

    // Password change: the old one stops working.
    root(
        &s,
        "POST",
        "auth/userpass/users/alice/password",
        json!({"password": "battery staple"}),
    )
    .await;
    assert_eq!(login(&s, "alice", "correct horse").await.0, 400);
    assert_eq!(login(&s, "alice", "battery staple").await.0, 200);
}

#[tokio::test]
async fn bad_logins_get_vaults_errors_and_no_token() {
    let s = dev_server();
    setup(&s).await;
    let before = root(&s, "LIST", "auth/token/accessors", Value::Null).await["data"]["keys"]
        .as_array()
        .map(Vec::len);

    for (user, body, want) in [
        (
            "alice",
            json!({"password": "wrong"}),
            "invalid username or password",
        ),
        (
            "nobody",
            json!({"password": "wrong"}),
            "invalid username or password",
        ),
        ("alice", json!({}), "missing password"),
        (
            "alice",
            json!({"password": ["not", "a", "string"]}),
            "password",
        ),
    ] {
        let (st, v) = call(
            &s,
            "POST",
            &format!("auth/userpass/login/{user}"),
            None,
            body,
        )
        .await;
        assert_eq!(st, 400, "{user}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap_or("").contains(want),
            "{user}: {v}"
        );
        assert!(v.get("auth").is_none_or(Value::is_null), "{v}");
    }
    // Malformed JSON, and a user name the path table refuses.
    let r = s
        .client()
        .post(s.url("auth/userpass/login/alice"))
        .body("{\"password\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let (st, v) = login(&s, "-bad-", "x").await;
    assert_eq!(st, 404, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("unsupported path"),
        "{v}"
    );

    // Users: bad input changes nothing.
    for body in [
        json!({"password": "x", "token_bound_cidrs": ["10.0.0.0/33"]}),
        json!({"password": "x", "password_hash": "$2b$10$abc"}),
        json!({"password_hash": "not-bcrypt"}),
        json!({"token_type": "nonsense", "password": "x"}),
    ] {
        let (st, v) = call(
            &s,
            "POST",
            "auth/userpass/users/bob",
            Some("root"),
            body.clone(),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
    }
    let (st, _) = call(
        &s,
        "GET",
        "auth/userpass/users/bob",
        Some("root"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 404);

    // A user bound to another network may not log in from here.
    root(
        &s,
        "POST",
        "auth/userpass/users/carol",
        json!({"password": "pw", "token_bound_cidrs": "10.0.0.0/8"}),
    )
    .await;
    assert_eq!(login(&s, "carol", "pw").await.0, 403);
    // token_strictly_bind_ip: the token works only from the login's address.
    root(
        &s,
        "POST",
        "auth/userpass/users/dave",
        json!({"password": "pw", "token_strictly_bind_ip": true}),
    )
    .await;
    let t = login(&s, "dave", "pw").await.1["auth"]["client_token"]
        .as_str()
        .map(str::to_string)
        .expect("token");
    let me = call(&s, "GET", "auth/token/lookup-self", Some(&t), Value::Null).await;
    assert_eq!(
        (me.0, &me.1["data"]["bound_cidrs"]),
        (200, &json!(["127.0.0.1/32"])),
        "{}",
        me.1
    );
    let (st, v) = call(&s, "POST", "auth/userpass/users/erin", Some("root"),
        json!({"password": "pw", "token_strictly_bind_ip": true, "token_bound_cidrs": "10.0.0.0/8"})).await;
    assert_eq!(st, 400, "{v}");

    let after = root(&s, "LIST", "auth/token/accessors", Value::Null).await["data"]["keys"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        before.map(|n| n + 1),
        after,
        "no failed login left a token (dave's is the one)"
    );
}

#[tokio::test]
async fn lockout_after_threshold_lists_and_unlocks() {
    let s = dev_server();
    setup(&s).await;
    root(
        &s,
        "POST",
        "sys/auth/userpass/tune",
        json!({"user_lockout_config": {"lockout_threshold": "3", "lockout_duration": "10m"}}),
    )
    .await;
    let accessor = root(&s, "GET", "sys/auth", Value::Null).await["data"]["userpass/"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_string();

    for _ in 0..3 {
        assert_eq!(login(&s, "alice", "wrong").await.0, 400);
    }
    // Locked: even the right password is refused, before it is checked.
    let (st, v) = login(&s, "alice", "correct horse").await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["errors"], json!(["permission denied"]));
    // Unknown users are not locked (nothing to protect, nothing stored).
    for _ in 0..4 {
        login(&s, "nobody", "wrong").await;
    }

    let locked = root(&s, "GET", "sys/locked-users", Value::Null).await;
    assert_eq!(locked["data"]["total"], json!(1), "{locked}");
    let ns = &locked["data"]["by_namespace"][0];
    assert_eq!(ns["namespace_id"], json!("root"));
    assert_eq!(ns["mount_accessors"][0]["mount_accessor"], json!(accessor));
    assert_eq!(
        ns["mount_accessors"][0]["alias_identifiers"],
        json!(["alice"])
    );

    root(
        &s,
        "POST",
        &format!("sys/locked-users/{accessor}/unlock/alice"),
        Value::Null,
    )
    .await;
    assert_eq!(login(&s, "alice", "correct horse").await.0, 200);
    let locked = root(&s, "GET", "sys/locked-users", Value::Null).await;
    assert_eq!(locked["data"]["total"], json!(0), "{locked}");

    let metrics = s
        .client()
        .get(s.url("sys/metrics?format=prometheus"))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("custos_auth_lockouts_total{mount_type=\"userpass\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("custos_auth_logins_total{mount_type=\"userpass\",outcome=\"locked\"} 1")
    );
}

#[tokio::test]
async fn logins_are_audited_with_passwords_and_tokens_hmacd() {
    let s = dev_server();
    setup(&s).await;
    let v = login(&s, "alice", "correct horse").await.1;
    let token = v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    login(&s, "alice", "not-it").await;

    let events = read_audit_events(&s.dir.join("audit"));
    let logins: Vec<&Value> = events
        .iter()
        .filter(|e| e["request"]["path"] == json!("auth/userpass/login/alice"))
        .collect();
    assert_eq!(logins.len(), 4, "request and response of both logins");
    let ok = logins
        .iter()
        .find(|e| e["type"] == json!("response") && e["response"]["auth"].is_object())
        .expect("the successful login's response");
    let hashed = ok["response"]["auth"]["client_token"]
        .as_str()
        .unwrap_or("");
    assert!(hashed.starts_with("hmac-sha256:"), "{ok}");
    assert!(
        ok["response"]["auth"]["entity_id"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    let failed = logins
        .iter()
        .find(|e| e["type"] == json!("response") && e["error"].is_string())
        .expect("the failed login's response");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid username or password")
    );
    for e in &logins {
        let pw = e["request"]["data"]["password"].as_str().unwrap_or("");
        assert!(pw.starts_with("hmac-sha256:"), "{e}");
    }
    let raw = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    for secret in ["correct horse", "not-it", token.as_str()] {
        assert!(
            !raw.contains(secret),
            "{secret:?} in clear in the audit log"
        );
    }
    assert!(!s.output().contains("correct horse") && !s.output().contains(&token));
}
