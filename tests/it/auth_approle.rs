//! AppRole end to end, against a real dev server: roles, role-ids and
//! secret-ids through Vault's paths, the token a login issues (policies,
//! TTLs, use limits, bound CIDRs), secret-id use limits (concurrent logins
//! with a one-use secret-id: exactly one wins), expiry, destroy and accessor
//! paths, tidy, lockout by role_id, wrapped secret-id delivery, bad input
//! refused with Vault's errors and no token, and the audit log holding only
//! HMACs of secret-ids.

use serde_json::{Value, json};

use crate::harness::{Server, call, dev_server, read_audit_events, root};

async fn login(s: &Server, role_id: &str, secret_id: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": secret_id}),
    )
    .await
}

fn error_of(v: &Value) -> String {
    v["errors"][0].as_str().unwrap_or_default().to_string()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Enable approle, a reader policy and a secret; create role `app` with
/// `body`; return its role_id.
async fn setup(s: &Server, body: Value) -> String {
    root(s, "POST", "sys/auth/approle", json!({"type": "approle"})).await;
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
        "secret/data/app/db",
        json!({"data": {"password": "s3cr3t"}}),
    )
    .await;
    root(s, "POST", "auth/approle/role/app", body).await;
    str_of(&root(s, "GET", "auth/approle/role/app/role-id", Value::Null).await["data"]["role_id"])
}

async fn new_secret_id(s: &Server, role: &str, body: Value) -> (String, String) {
    let v = root(
        s,
        "POST",
        &format!("auth/approle/role/{role}/secret-id"),
        body,
    )
    .await;
    (
        str_of(&v["data"]["secret_id"]),
        str_of(&v["data"]["secret_id_accessor"]),
    )
}

async fn token_count(s: &Server) -> usize {
    root(s, "LIST", "auth/token/accessors", Value::Null).await["data"]["keys"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn approle_login_issues_a_token_with_the_roles_parameters() {
    let s = dev_server();
    let role_id = setup(
        &s,
        json!({"token_policies": "kv-reader", "token_ttl": "1h", "token_max_ttl": "2h",
               "secret_id_ttl": "10m", "secret_id_num_uses": 5}),
    )
    .await;
    assert_eq!(role_id.len(), 36, "a UUID role_id");

    let role = root(&s, "GET", "auth/approle/role/app", Value::Null).await["data"].clone();
    assert_eq!(role["bind_secret_id"], json!(true));
    assert_eq!(role["token_policies"], json!(["kv-reader"]));
    assert_eq!(
        (role["token_ttl"].clone(), role["token_max_ttl"].clone()),
        (json!(3600), json!(7200))
    );
    assert_eq!(
        (
            role["secret_id_ttl"].clone(),
            role["secret_id_num_uses"].clone()
        ),
        (json!(600), json!(5))
    );
    assert_eq!(role["secret_id_bound_cidrs"], Value::Null);
    assert_eq!(role["local_secret_ids"], json!(false));
    assert!(
        role.get("role_id").is_none() && role.get("hmac_key").is_none(),
        "{role}"
    );
    assert_eq!(
        root(&s, "LIST", "auth/approle/role", Value::Null).await["data"]["keys"],
        json!(["app"])
    );

    let issued = root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id",
        json!({"metadata": "{\"env\":\"prod\"}"}),
    )
    .await;
    let d = &issued["data"];
    assert_eq!(
        (d["secret_id_ttl"].clone(), d["secret_id_num_uses"].clone()),
        (json!(600), json!(5))
    );
    let secret_id = str_of(&d["secret_id"]);
    let accessor = str_of(&d["secret_id_accessor"]);

    let (st, v) = login(&s, &role_id, &secret_id).await;
    assert_eq!(st, 200, "{v}");
    let auth = &v["auth"];
    assert_eq!(auth["policies"], json!(["default", "kv-reader"]));
    assert_eq!(auth["metadata"], json!({"env": "prod", "role_name": "app"}));
    assert_eq!(auth["lease_duration"], json!(3600));
    assert_eq!(
        (auth["renewable"].clone(), auth["orphan"].clone()),
        (json!(true), json!(true))
    );
    let entity = str_of(&auth["entity_id"]);
    assert!(!entity.is_empty());
    let token = str_of(&auth["client_token"]);

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
    assert_eq!(me["data"]["display_name"], json!("approle"));
    assert_eq!(me["data"]["meta"]["role_name"], json!("app"));
    assert_eq!(me["data"]["path"], json!("auth/approle/login"));

    // Each login spent a use; the same role_id maps to the same entity.
    let again = login(&s, &role_id, &secret_id).await.1;
    assert_eq!(again["auth"]["entity_id"], json!(entity));
    let looked = root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id/lookup",
        json!({"secret_id": secret_id}),
    )
    .await;
    assert_eq!(looked["data"]["secret_id_num_uses"], json!(3));
    assert_eq!(looked["data"]["secret_id_accessor"], json!(accessor));
    assert_eq!(looked["data"]["metadata"], json!({"env": "prod"}));
    assert!(looked["data"].get("secret_id").is_none());
    let by_accessor = root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id-accessor/lookup",
        json!({"secret_id_accessor": accessor}),
    )
    .await;
    assert_eq!(by_accessor["data"]["secret_id_num_uses"], json!(3));
    assert_eq!(
        root(&s, "LIST", "auth/approle/role/app/secret-id", Value::Null).await["data"]["keys"],
        json!([accessor])
    );

    // Token use limit and token-bound CIDRs are honoured.
    root(
        &s,
        "POST",
        "auth/approle/role/app/token-num-uses",
        json!({"token_num_uses": 2}),
    )
    .await;
    let t2 = str_of(&login(&s, &role_id, &secret_id).await.1["auth"]["client_token"]);
    for _ in 0..2 {
        assert_eq!(
            call(&s, "GET", "secret/data/app/db", Some(&t2), Value::Null)
                .await
                .0,
            200
        );
    }
    assert_eq!(
        call(&s, "GET", "secret/data/app/db", Some(&t2), Value::Null)
            .await
            .0,
        403
    );
    root(
        &s,
        "DELETE",
        "auth/approle/role/app/token-num-uses",
        Value::Null,
    )
    .await;
    root(
        &s,
        "POST",
        "auth/approle/role/app/token-bound-cidrs",
        json!({"token_bound_cidrs": "10.0.0.0/8"}),
    )
    .await;
    let (st, v) = login(&s, &role_id, &secret_id).await;
    assert_eq!(st, 200, "{v}");
    let far = str_of(&v["auth"]["client_token"]);
    assert_eq!(
        call(&s, "GET", "secret/data/app/db", Some(&far), Value::Null)
            .await
            .0,
        403
    );

    // The fifth use is the last: then the secret-id is gone.
    assert_eq!(login(&s, &role_id, &secret_id).await.0, 200);
    let (st, v) = login(&s, &role_id, &secret_id).await;
    assert_eq!(
        (st, error_of(&v)),
        (400, "invalid role or secret ID".to_string()),
        "{v}"
    );
    assert_eq!(
        call(
            &s,
            "LIST",
            "auth/approle/role/app/secret-id",
            Some("root"),
            Value::Null
        )
        .await
        .0,
        404
    );

    // A custom role_id moves the index: the old one no longer logs in.
    root(
        &s,
        "POST",
        "auth/approle/role/app/role-id",
        json!({"role_id": "my-app-id"}),
    )
    .await;
    let (sid, _) = new_secret_id(&s, "app", json!({})).await;
    assert_eq!(login(&s, &role_id, &sid).await.0, 400);
    assert_eq!(login(&s, "my-app-id", &sid).await.0, 200);
    // Another role may not take it.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/other",
        Some("root"),
        json!({"role_id": "my-app-id"}),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (400, "role_id already in use".to_string())
    );

    // Deleting the role takes its secret-ids and role_id with it.
    root(&s, "DELETE", "auth/approle/role/app", Value::Null).await;
    assert_eq!(login(&s, "my-app-id", &sid).await.0, 400);
    assert_eq!(
        call(
            &s,
            "GET",
            "auth/approle/role/app",
            Some("root"),
            Value::Null
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn role_fields_and_sub_paths_read_back_as_written() {
    let s = dev_server();
    setup(
        &s,
        json!({"policies": "a,b", "period": "1h", "bound_cidr_list": "127.0.0.0/8"}),
    )
    .await;
    let role = root(&s, "GET", "auth/approle/role/app", Value::Null).await["data"].clone();
    assert_eq!(role["policies"], json!(["a", "b"]));
    assert_eq!(role["token_policies"], json!(["a", "b"]));
    assert_eq!(
        (role["period"].clone(), role["token_period"].clone()),
        (json!(3600), json!(3600))
    );
    assert_eq!(role["secret_id_bound_cidrs"], json!(["127.0.0.0/8"]));

    for (sub, field, value, shown) in [
        (
            "secret-id-num-uses",
            "secret_id_num_uses",
            json!(7),
            json!(7),
        ),
        ("secret-id-ttl", "secret_id_ttl", json!("5m"), json!(300)),
        ("token-ttl", "token_ttl", json!(60), json!(60)),
        ("token-max-ttl", "token_max_ttl", json!("2m"), json!(120)),
        ("token-num-uses", "token_num_uses", json!(3), json!(3)),
        (
            "bind-secret-id",
            "bind_secret_id",
            json!(false),
            json!(false),
        ),
        (
            "secret-id-bound-cidrs",
            "secret_id_bound_cidrs",
            json!("10.0.0.0/8"),
            json!(["10.0.0.0/8"]),
        ),
        ("policies", "token_policies", json!("c"), json!(["c"])),
    ] {
        let path = format!("auth/approle/role/app/{sub}");
        let (st, v) = call(&s, "POST", &path, Some("root"), json!({ field: value })).await;
        assert_eq!(st, 204, "{sub}: {v}");
        let got = root(&s, "GET", &path, Value::Null).await;
        assert_eq!(got["data"][field], shown, "{sub}: {got}");
        // A write without the field is refused with Vault's "missing ..."
        // (the CIDR paths, as Vault's, store the role unchanged).
        let (st, v) = call(&s, "POST", &path, Some("root"), json!({})).await;
        if sub.ends_with("cidrs") {
            assert_eq!(st, 204, "{sub}: {v}");
        } else {
            assert_eq!(st, 400, "{sub}: {v}");
            assert!(error_of(&v).starts_with("missing "), "{sub}: {v}");
        }
    }
    // token_ttl above token_max_ttl is refused.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/app/token-ttl",
        Some("root"),
        json!({"token_ttl": 600}),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (
            400,
            "token_ttl should not be greater than token_max_ttl".into()
        )
    );
    // bind_secret_id is off and CIDRs bound: still a valid role. Removing
    // the last constraint is refused.
    let (st, v) = call(
        &s,
        "DELETE",
        "auth/approle/role/app/secret-id-bound-cidrs",
        Some("root"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (
            400,
            "at least one constraint should be enabled on the role".into()
        )
    );
    root(
        &s,
        "DELETE",
        "auth/approle/role/app/bind-secret-id",
        Value::Null,
    )
    .await;
    assert_eq!(
        root(
            &s,
            "GET",
            "auth/approle/role/app/bind-secret-id",
            Value::Null
        )
        .await["data"]["bind_secret_id"],
        json!(true)
    );
    root(&s, "DELETE", "auth/approle/role/app/period", Value::Null).await;
    let p = root(&s, "GET", "auth/approle/role/app/period", Value::Null).await;
    assert_eq!(p["data"], json!({"token_period": 0}));
    assert_eq!(
        root(
            &s,
            "GET",
            "auth/approle/role/app/local-secret-ids",
            Value::Null
        )
        .await["data"],
        json!({"local_secret_ids": false})
    );
    // Sub-paths of a role that does not exist.
    assert_eq!(
        call(
            &s,
            "GET",
            "auth/approle/role/nope/token-ttl",
            Some("root"),
            Value::Null
        )
        .await
        .0,
        404
    );
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/nope/token-ttl",
        Some("root"),
        json!({"token_ttl": 1}),
    )
    .await;
    assert_eq!((st, error_of(&v)), (404, "unsupported path".into()));
    // local_secret_ids only at creation.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/app",
        Some("root"),
        json!({"local_secret_ids": true}),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (
            400,
            "local_secret_ids can only be modified during role creation".into()
        )
    );

    // A role without bind_secret_id logs in with its role_id alone, from
    // inside its CIDR blocks.
    root(
        &s,
        "POST",
        "auth/approle/role/open",
        json!({"bind_secret_id": false, "secret_id_bound_cidrs": "127.0.0.0/8"}),
    )
    .await;
    let rid = str_of(
        &root(&s, "GET", "auth/approle/role/open/role-id", Value::Null).await["data"]["role_id"],
    );
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": rid}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    root(
        &s,
        "POST",
        "auth/approle/role/open/secret-id-bound-cidrs",
        json!({"secret_id_bound_cidrs": "10.0.0.0/8"}),
    )
    .await;
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": rid}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        error_of(&v).contains("unauthorized by CIDR restrictions on the role"),
        "{v}"
    );
    // And cannot be issued secret-ids.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/open/secret-id",
        Some("root"),
        json!({}),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (400, "bind_secret_id is not set on the role".into())
    );

    // Paging the role list.
    let page = root(
        &s,
        "LIST",
        "auth/approle/role?after=app&limit=1",
        Value::Null,
    )
    .await;
    assert_eq!(page["data"]["keys"], json!(["open"]));
}

#[tokio::test]
async fn secret_id_limits_cidrs_destroy_and_accessors() {
    let s = dev_server();
    let role_id = setup(
        &s,
        json!({"secret_id_num_uses": 3, "secret_id_ttl": "1h", "token_bound_cidrs": "127.0.0.0/8"}),
    )
    .await;

    // Per-secret-id limits may only narrow the role's.
    for (body, want) in [
        (
            json!({"num_uses": 4}),
            "num_uses cannot be higher than the role's secret_id_num_uses",
        ),
        (
            json!({"num_uses": 0}),
            "num_uses cannot be higher than the role's secret_id_num_uses",
        ),
        (json!({"num_uses": -1}), "num_uses cannot be negative"),
        (
            json!({"ttl": "2h"}),
            "ttl cannot be longer than the role's secret_id_ttl",
        ),
        (
            json!({"cidr_list": "10.0.0.0/33"}),
            "failed to validate CIDR blocks",
        ),
        (
            json!({"cidr_list": "127.0.0.1"}),
            "failed to validate CIDR blocks",
        ),
        (
            json!({"token_bound_cidrs": "10.0.0.0/8"}),
            "failed to verify subset relationship",
        ),
        (json!({"metadata": "a=b=c"}), "failed to parse metadata"),
        (json!({"num_uses": "many"}), "num_uses"),
    ] {
        let (st, v) = call(
            &s,
            "POST",
            "auth/approle/role/app/secret-id",
            Some("root"),
            body.clone(),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(want), "{body}: {v}");
    }

    // A secret-id bound to another network cannot log in from here; one
    // bound to loopback can, and passes its token CIDRs to the token.
    let (far, _) = new_secret_id(&s, "app", json!({"cidr_list": "10.0.0.0/8"})).await;
    let (st, v) = login(&s, &role_id, &far).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        error_of(&v).contains("unauthorized by CIDR restrictions on the secret ID"),
        "{v}"
    );
    // A refused login spends no use.
    let far_lookup = root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id/lookup",
        json!({"secret_id": far}),
    )
    .await;
    assert_eq!(far_lookup["data"]["secret_id_num_uses"], json!(3));
    let (near, _) = new_secret_id(&s, "app", json!({"cidr_list": "127.0.0.1/32", "token_bound_cidrs": "127.0.0.1/32", "num_uses": 2, "ttl": 600})).await;
    let (st, v) = login(&s, &role_id, &near).await;
    assert_eq!(st, 200, "{v}");
    let near_token = str_of(&v["auth"]["client_token"]);
    let (st, _) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&near_token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200);
    let looked = root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id/lookup",
        json!({"secret_id": near}),
    )
    .await;
    assert_eq!(looked["data"]["secret_id_num_uses"], json!(1));
    assert_eq!(looked["data"]["secret_id_ttl"], json!(600));
    assert_eq!(looked["data"]["cidr_list"], json!(["127.0.0.1/32"]));

    // Destroy by secret-id and by accessor.
    let (a, _) = new_secret_id(&s, "app", json!({})).await;
    root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id/destroy",
        json!({"secret_id": a}),
    )
    .await;
    assert_eq!(login(&s, &role_id, &a).await.0, 400);
    assert_eq!(
        call(
            &s,
            "POST",
            "auth/approle/role/app/secret-id/lookup",
            Some("root"),
            json!({"secret_id": a})
        )
        .await
        .0,
        204
    );
    let (b, b_acc) = new_secret_id(&s, "app", json!({})).await;
    root(
        &s,
        "POST",
        "auth/approle/role/app/secret-id-accessor/destroy",
        json!({"secret_id_accessor": b_acc}),
    )
    .await;
    assert_eq!(login(&s, &role_id, &b).await.0, 400);
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/app/secret-id-accessor/lookup",
        Some("root"),
        json!({"secret_id_accessor": b_acc}),
    )
    .await;
    // As Vault: a 404 whose envelope carries the error in `data`.
    assert_eq!(st, 404, "{v}");
    assert!(
        str_of(&v["data"]["error"])
            .starts_with("failed to find accessor entry for secret_id_accessor"),
        "{v}"
    );

    // A secret-id's own token CIDRs bind the token it logs in to.
    root(&s, "POST", "auth/approle/role/loose", json!({})).await;
    let loose = root(&s, "GET", "auth/approle/role/loose/role-id", Value::Null).await;
    let loose_id = str_of(&loose["data"]["role_id"]);
    let (bound, _) = new_secret_id(&s, "loose", json!({"token_bound_cidrs": "10.0.0.0/8"})).await;
    let (st, v) = login(&s, &loose_id, &bound).await;
    assert_eq!(st, 200, "{v}");
    let elsewhere = str_of(&v["auth"]["client_token"]);
    let (st, _) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&elsewhere),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);

    // A custom secret-id works once registered, and only once registered.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/app/custom-secret-id",
        Some("root"),
        json!({"secret_id": "my-own-secret-id-123"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["secret_id"], json!("my-own-secret-id-123"));
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/app/custom-secret-id",
        Some("root"),
        json!({"secret_id": "my-own-secret-id-123"}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        error_of(&v).contains("SecretID is already registered"),
        "{v}"
    );
    assert_eq!(login(&s, &role_id, "my-own-secret-id-123").await.0, 200);
}

#[tokio::test]
async fn concurrent_logins_with_a_one_use_secret_id_let_exactly_one_in() {
    let s = dev_server();
    let role_id = setup(&s, json!({"secret_id_num_uses": 1})).await;
    // The losers' failed logins would otherwise lock the role_id out.
    root(
        &s,
        "POST",
        "sys/auth/approle/tune",
        json!({"user_lockout_config": {"lockout_disable": true}}),
    )
    .await;
    for round in 0..5 {
        let (secret_id, _) = new_secret_id(&s, "app", json!({})).await;
        let before = token_count(&s).await;
        let attempts = (0..12).map(|_| {
            let (c, url) = (s.client(), s.url("auth/approle/login"));
            let body = json!({"role_id": role_id, "secret_id": secret_id});
            tokio::spawn(async move {
                let r = c.post(url).json(&body).send().await.expect("send");
                let st = r.status().as_u16();
                (st, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        });
        let mut ok = 0;
        for h in futures::future::join_all(attempts).await {
            let (st, v) = h.expect("task");
            match st {
                200 => ok += 1,
                400 => assert_eq!(error_of(&v), "invalid role or secret ID", "{v}"),
                other => panic!("round {round}: unexpected {other} {v}"),
            }
        }
        assert_eq!(
            ok, 1,
            "round {round}: exactly one login may spend the one use"
        );
        assert_eq!(
            token_count(&s).await,
            before + 1,
            "round {round}: one token issued"
        );
    }
}

#[tokio::test]
async fn expired_secret_ids_are_refused_and_tidied() {
    let s = dev_server();
    let role_id = setup(&s, json!({})).await;
    let (short, _) = new_secret_id(&s, "app", json!({"ttl": 1})).await;
    let (long, long_acc) = new_secret_id(&s, "app", json!({})).await;
    assert_eq!(
        root(&s, "LIST", "auth/approle/role/app/secret-id", Value::Null).await["data"]["keys"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    // Tidy removes the expired one, and only it.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/tidy/secret-id",
        Some("root"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("Tidy operation successfully started"),
        "{v}"
    );
    assert_eq!(
        root(&s, "LIST", "auth/approle/role/app/secret-id", Value::Null).await["data"]["keys"],
        json!([long_acc])
    );
    let (st, v) = login(&s, &role_id, &short).await;
    assert_eq!(
        (st, error_of(&v)),
        (400, "invalid role or secret ID".into())
    );
    assert_eq!(login(&s, &role_id, &long).await.0, 200);

    // Expired but not yet tidied: refused at login all the same.
    let (short, _) = new_secret_id(&s, "app", json!({"ttl": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, v) = login(&s, &role_id, &short).await;
    assert_eq!(
        (st, error_of(&v)),
        (400, "invalid role or secret ID".into())
    );
}

#[tokio::test]
async fn bad_input_gets_vaults_errors_changes_nothing_and_issues_no_token() {
    let s = dev_server();
    let role_id = setup(&s, json!({})).await;
    let (secret_id, _) = new_secret_id(&s, "app", json!({})).await;
    let before = token_count(&s).await;
    let role_before = root(&s, "GET", "auth/approle/role/app", Value::Null).await["data"].clone();

    for (body, want) in [
        (
            json!({"role_id": role_id, "secret_id": "wrong"}),
            "invalid role or secret ID",
        ),
        (
            json!({"role_id": "unknown", "secret_id": secret_id}),
            "invalid role or secret ID",
        ),
        (json!({"secret_id": secret_id}), "missing role_id"),
        (json!({"role_id": role_id}), "missing secret_id"),
        (json!({"role_id": role_id, "secret_id": ["a"]}), "secret_id"),
        (
            json!({"role_id": role_id, "secret_id": "x".repeat(5000)}),
            "longer than maximum",
        ),
    ] {
        let (st, v) = call(&s, "POST", "auth/approle/login", None, body.clone()).await;
        assert_eq!(st, 400, "{v}");
        assert!(error_of(&v).contains(want), "{v}");
        assert!(v.get("auth").is_none_or(Value::is_null), "{v}");
    }
    // Malformed JSON and a huge body.
    let r = s
        .client()
        .post(s.url("auth/approle/login"))
        .body("{\"role_id\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let huge = json!({"role_id": role_id, "secret_id": "y".repeat(40 << 20)});
    let r = s
        .client()
        .post(s.url("auth/approle/login"))
        .json(&huge)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);

    // Role writes with bad fields change nothing.
    for body in [
        json!({"secret_id_bound_cidrs": "10.0.0.0/33"}),
        json!({"secret_id_bound_cidrs": "127.0.0.1"}),
        json!({"token_bound_cidrs": "not-an-ip"}),
        json!({"secret_id_num_uses": -1}),
        json!({"secret_id_num_uses": "lots"}),
        json!({"token_ttl": "2h", "token_max_ttl": "1h"}),
        json!({"token_type": "nonsense"}),
        json!({"bind_secret_id": false}),
        json!({"role_id": ""}),
        json!({"period": "800h"}),
    ] {
        let (st, v) = call(
            &s,
            "POST",
            "auth/approle/role/app",
            Some("root"),
            body.clone(),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v["errors"].is_array(), "{v}");
    }
    assert_eq!(
        root(&s, "GET", "auth/approle/role/app", Value::Null).await["data"],
        role_before
    );

    // Unknown roles.
    let (st, v) = call(
        &s,
        "POST",
        "auth/approle/role/nope/secret-id",
        Some("root"),
        json!({}),
    )
    .await;
    assert_eq!(
        (st, error_of(&v)),
        (404, "role \"nope\" does not exist".into())
    );
    for path in ["secret-id/lookup", "secret-id/destroy"] {
        let (st, v) = call(
            &s,
            "POST",
            &format!("auth/approle/role/nope/{path}"),
            Some("root"),
            json!({"secret_id": "x"}),
        )
        .await;
        assert_eq!(
            (st, error_of(&v)),
            (400, "role \"nope\" does not exist".into()),
            "{path}"
        );
    }
    let (st, _) = call(
        &s,
        "GET",
        "auth/approle/role/nope",
        Some("root"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 404);
    // Management needs a token; a login path needs none.
    assert_eq!(
        call(&s, "GET", "auth/approle/role/app", None, Value::Null)
            .await
            .0,
        403
    );

    assert_eq!(
        token_count(&s).await,
        before,
        "no failed login left a token"
    );
    assert_eq!(
        login(&s, &role_id, &secret_id).await.0,
        200,
        "the secret-id still works"
    );
}

#[tokio::test]
async fn lockout_counts_wrong_secret_ids_by_role_id() {
    let s = dev_server();
    let role_id = setup(&s, json!({})).await;
    let (secret_id, _) = new_secret_id(&s, "app", json!({})).await;
    root(
        &s,
        "POST",
        "sys/auth/approle/tune",
        json!({"user_lockout_config": {"lockout_threshold": "2", "lockout_duration": "10m"}}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(login(&s, &role_id, "wrong").await.0, 400);
    }
    let (st, v) = login(&s, &role_id, &secret_id).await;
    assert_eq!(
        (st, v["errors"].clone()),
        (403, json!(["permission denied"]))
    );
    let locked = root(&s, "GET", "sys/locked-users", Value::Null).await;
    let ids = &locked["data"]["by_namespace"][0]["mount_accessors"][0]["alias_identifiers"];
    assert_eq!(ids, &json!([role_id]), "{locked}");
}

#[tokio::test]
async fn wrapped_secret_id_unwraps_once_and_logs_in() {
    let s = dev_server();
    let role_id = setup(&s, json!({})).await;
    let r = s
        .client()
        .post(s.url("auth/approle/role/app/secret-id"))
        .header("X-Vault-Token", "root")
        .header("X-Vault-Wrap-TTL", "60s")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["data"].is_null(),
        "the secret-id travels only wrapped: {v}"
    );
    let wrap = &v["wrap_info"];
    assert_eq!(wrap["ttl"], json!(60));
    assert_eq!(
        wrap["creation_path"],
        json!("auth/approle/role/app/secret-id")
    );
    let accessor = str_of(&wrap["wrapped_accessor"]);
    assert!(!accessor.is_empty(), "{v}");
    let wrapping_token = str_of(&wrap["token"]);

    let (st, u) = call(
        &s,
        "POST",
        "sys/wrapping/unwrap",
        Some(&wrapping_token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["data"]["secret_id_accessor"], json!(accessor));
    let secret_id = str_of(&u["data"]["secret_id"]);
    let (st, again) = call(
        &s,
        "POST",
        "sys/wrapping/unwrap",
        Some(&wrapping_token),
        Value::Null,
    )
    .await;
    assert!(
        st == 400 || st == 403,
        "a wrapping token unwraps once: {st} {again}"
    );
    assert_eq!(login(&s, &role_id, &secret_id).await.0, 200);
}

#[tokio::test]
async fn secret_ids_appear_in_the_audit_log_only_as_hmacs() {
    let s = dev_server();
    let role_id = setup(&s, json!({})).await;
    let (secret_id, _) = new_secret_id(&s, "app", json!({})).await;
    let (custom_status, _) = call(
        &s,
        "POST",
        "auth/approle/role/app/custom-secret-id",
        Some("root"),
        json!({"secret_id": "custom-secret-value-42"}),
    )
    .await;
    assert_eq!(custom_status, 200);
    let token = str_of(&login(&s, &role_id, &secret_id).await.1["auth"]["client_token"]);
    login(&s, &role_id, "a-wrong-secret-id-77").await;

    let events = read_audit_events(&s.dir.join("audit"));
    let logins: Vec<&Value> = events
        .iter()
        .filter(|e| e["request"]["path"] == json!("auth/approle/login"))
        .collect();
    assert_eq!(logins.len(), 4, "request and response of both logins");
    for e in &logins {
        assert!(
            str_of(&e["request"]["data"]["secret_id"]).starts_with("hmac-sha256:"),
            "{e}"
        );
    }
    let generated = events
        .iter()
        .find(|e| {
            e["type"] == json!("response")
                && e["request"]["path"] == json!("auth/approle/role/app/secret-id")
        })
        .expect("the secret-id generation's response");
    assert!(
        str_of(&generated["response"]["data"]["secret_id"]).starts_with("hmac-sha256:"),
        "{generated}"
    );
    let raw = std::fs::read_dir(s.dir.join("audit"))
        .expect("audit dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    for secret in [
        secret_id.as_str(),
        "custom-secret-value-42",
        "a-wrong-secret-id-77",
        token.as_str(),
    ] {
        assert!(
            !raw.contains(secret),
            "{secret:?} in clear in the audit log"
        );
        assert!(
            !s.output().contains(secret),
            "{secret:?} in the server's output"
        );
    }
}
