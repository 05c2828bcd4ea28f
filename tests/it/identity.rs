//! The identity API and templated policies end to end, against a real dev
//! server: userpass logins create entities and aliases visible through
//! `identity/`, entity and (nested) group policies reach the token
//! (`identity_policies` in lookups, the effective ACL), templated paths
//! give each entity its own secrets, a disabled or deleted entity's tokens
//! are refused, and bad input is a 400 that changes nothing.

use serde_json::{Value, json};

use crate::harness::{Server, call, dev_server, root};

async fn login(s: &Server, user: &str) -> Value {
    let (st, v) = call(
        s,
        "POST",
        &format!("auth/userpass/login/{user}"),
        None,
        json!({"password": "pw"}),
    )
    .await;
    assert_eq!(st, 200, "login {user}: {v}");
    v["auth"].clone()
}

/// userpass at `auth/userpass`, its accessor, and users `alice` and `bob`
/// with the `tpl` policy.
async fn setup(s: &Server) -> String {
    root(s, "POST", "sys/auth/userpass", json!({"type": "userpass"})).await;
    for u in ["alice", "bob"] {
        root(
            s,
            "POST",
            &format!("auth/userpass/users/{u}"),
            json!({"password": "pw", "token_policies": "tpl"}),
        )
        .await;
    }
    let auth = root(s, "GET", "sys/auth", Value::Null).await;
    auth["data"]["userpass/"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_string()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn logins_create_entities_and_aliases_visible_through_the_api() {
    let s = dev_server();
    let accessor = setup(&s).await;
    let auth = login(&s, "alice").await;
    let eid = auth["entity_id"].as_str().unwrap().to_string();
    assert!(!eid.is_empty());
    // The same alias logs in to the same entity.
    assert_eq!(login(&s, "alice").await["entity_id"], eid.as_str());
    assert_ne!(login(&s, "bob").await["entity_id"], eid.as_str());

    let e =
        root(&s, "GET", &format!("identity/entity/id/{eid}"), Value::Null).await["data"].clone();
    assert!(e["name"].as_str().unwrap().starts_with("entity_"), "{e}");
    assert_eq!(e["policies"], json!([]));
    assert_eq!(e["disabled"], false);
    assert_eq!(e["namespace_id"], "root");
    let a = &e["aliases"][0];
    assert_eq!(a["name"], "alice");
    assert_eq!(a["mount_accessor"], accessor.as_str());
    assert_eq!(a["mount_path"], "auth/userpass/");
    assert_eq!(a["mount_type"], "userpass");
    assert_eq!(a["canonical_id"], eid.as_str());
    assert_eq!(a["custom_metadata"], Value::Null);
    // Reading by name and looking up by alias find the same entity.
    let name = e["name"].as_str().unwrap();
    let by_name = root(
        &s,
        "GET",
        &format!("identity/entity/name/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(by_name["data"]["id"], eid.as_str());
    let found = root(
        &s,
        "POST",
        "identity/lookup/entity",
        json!({"alias_name": "alice", "alias_mount_accessor": accessor}),
    )
    .await;
    assert_eq!(found["data"]["id"], eid.as_str());

    let ids = root(&s, "LIST", "identity/entity/id", Value::Null).await["data"].clone();
    assert_eq!(ids["keys"].as_array().unwrap().len(), 2);
    assert_eq!(ids["key_info"][&eid]["aliases"][0]["name"], "alice");
    let aliases = root(&s, "LIST", "identity/entity-alias/id", Value::Null).await["data"].clone();
    let alias_id = a["id"].as_str().unwrap();
    assert_eq!(aliases["key_info"][alias_id]["canonical_id"], eid.as_str());
    let one = root(
        &s,
        "GET",
        &format!("identity/entity-alias/id/{alias_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(one["data"]["name"], "alice");

    // An alias made through the API, on a new entity.
    let made = root(
        &s,
        "POST",
        "identity/entity-alias",
        json!({"name": "carol", "mount_accessor": accessor, "custom_metadata": {"env": "prod"}}),
    )
    .await;
    let carol_entity = made["data"]["canonical_id"].as_str().unwrap().to_string();
    let carol = root(
        &s,
        "GET",
        &format!("identity/entity/id/{carol_entity}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        carol["data"]["aliases"][0]["custom_metadata"],
        json!({"env": "prod"})
    );

    // The gauge follows.
    let metrics = s
        .client()
        .get(s.url("sys/metrics?format=prometheus"))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("custos_identity_entities 3"), "{metrics}");
}

#[tokio::test]
async fn entity_and_nested_group_policies_reach_the_token() {
    let s = dev_server();
    setup(&s).await;
    root(
        &s,
        "PUT",
        "sys/policies/acl/grp-reader",
        json!({"policy": "path \"secret/data/shared/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    root(
        &s,
        "POST",
        "secret/data/shared/x",
        json!({"data": {"v": 1}}),
    )
    .await;
    let auth = login(&s, "alice").await;
    let token = auth["client_token"].as_str().unwrap().to_string();
    let eid = auth["entity_id"].as_str().unwrap().to_string();
    // Nothing yet: no identity_policies in the lookup, the read is denied.
    let (_, me) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert!(me["data"].get("identity_policies").is_none(), "{me}");
    let (st, _) = call(&s, "GET", "secret/data/shared/x", Some(&token), Value::Null).await;
    assert_eq!(st, 403);

    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"policies": ["ent-pol"]}),
    )
    .await;
    let child = root(
        &s,
        "POST",
        "identity/group",
        json!({"name": "child", "policies": "cp", "member_entity_ids": [eid]}),
    )
    .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let parent = root(
        &s,
        "POST",
        "identity/group",
        json!({"name": "parent", "policies": ["grp-reader"], "member_group_ids": child}),
    )
    .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The inherited group's policy now opens the path for the same token.
    let (st, v) = call(&s, "GET", "secret/data/shared/x", Some(&token), Value::Null).await;
    assert_eq!(st, 200, "{v}");
    let (_, me) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(
        strs(&me["data"]["identity_policies"]),
        ["ent-pol", "cp", "grp-reader"]
    );
    assert_eq!(me["data"]["external_namespace_policies"], json!({}));
    assert_eq!(strs(&me["data"]["policies"]), ["default", "tpl"]);

    let e =
        root(&s, "GET", &format!("identity/entity/id/{eid}"), Value::Null).await["data"].clone();
    assert_eq!(strs(&e["direct_group_ids"]), vec![child.clone()]);
    assert_eq!(strs(&e["inherited_group_ids"]), vec![parent.clone()]);
    assert_eq!(strs(&e["group_ids"]), [child.clone(), parent.clone()]);
    let g = root(
        &s,
        "GET",
        &format!("identity/group/id/{child}"),
        Value::Null,
    )
    .await["data"]
        .clone();
    assert_eq!(strs(&g["parent_group_ids"]), vec![parent.clone()]);
    assert_eq!(strs(&g["member_entity_ids"]), vec![eid.clone()]);
    assert_eq!(g["type"], "internal");
    assert_eq!(g["alias"], json!({}));

    // A cycle is refused and changes nothing.
    let (st, v) = call(
        &s,
        "POST",
        &format!("identity/group/id/{child}"),
        Some("root"),
        json!({"member_group_ids": [parent]}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["errors"][0],
        format!("cyclic relationship detected for member group ID {parent:?}")
    );
    let g = root(
        &s,
        "GET",
        &format!("identity/group/id/{child}"),
        Value::Null,
    )
    .await;
    assert_eq!(g["data"]["member_group_ids"], Value::Null);

    // A new login's auth block carries identity_policies too.
    let again = login(&s, "alice").await;
    assert_eq!(strs(&again["identity_policies"]).len(), 3, "{again}");

    // Removing the parent group takes its policy away at once.
    root(
        &s,
        "DELETE",
        &format!("identity/group/id/{parent}"),
        Value::Null,
    )
    .await;
    let (st, _) = call(&s, "GET", "secret/data/shared/x", Some(&token), Value::Null).await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn templated_policies_give_each_entity_its_own_paths() {
    let s = dev_server();
    let accessor = setup(&s).await;
    let policy = format!(
        "path \"secret/data/users/{{{{identity.entity.name}}}}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/data/alias/{{{{identity.entity.aliases.{accessor}.name}}}}\" {{ capabilities = [\"read\"] }}\n\
         path \"secret/data/team/{{{{identity.entity.metadata.team}}}}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"secret/data/static\" {{ capabilities = [\"read\"] }}\n"
    );
    root(&s, "PUT", "sys/policies/acl/tpl", json!({"policy": policy})).await;
    for p in [
        "users/alice/x",
        "users/bob/x",
        "alias/alice",
        "alias/bob",
        "team/red/x",
        "static",
    ] {
        root(
            &s,
            "POST",
            &format!("secret/data/{p}"),
            json!({"data": {"v": p}}),
        )
        .await;
    }
    // Name alice's entity "alice", give it a team.
    let a = login(&s, "alice").await;
    let alice = a["client_token"].as_str().unwrap().to_string();
    let eid = a["entity_id"].as_str().unwrap().to_string();
    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"name": "alice", "metadata": {"team": "red"}}),
    )
    .await;
    let b = login(&s, "bob").await;
    let bob = b["client_token"].as_str().unwrap().to_string();

    let read = |t: String, p: &'static str| {
        let s = &s;
        async move {
            call(s, "GET", &format!("secret/data/{p}"), Some(&t), Value::Null)
                .await
                .0
        }
    };
    assert_eq!(read(alice.clone(), "users/alice/x").await, 200);
    assert_eq!(read(alice.clone(), "users/bob/x").await, 403);
    assert_eq!(read(alice.clone(), "alias/alice").await, 200);
    assert_eq!(read(alice.clone(), "alias/bob").await, 403);
    assert_eq!(read(alice.clone(), "team/red/x").await, 200);
    assert_eq!(read(alice.clone(), "static").await, 200);
    // bob's entity has a generated name and no team: his alias path works,
    // the unresolvable team path is simply absent.
    assert_eq!(read(bob.clone(), "users/alice/x").await, 403);
    assert_eq!(read(bob.clone(), "alias/bob").await, 200);
    assert_eq!(read(bob.clone(), "team/red/x").await, 403);
    assert_eq!(read(bob.clone(), "static").await, 200);
    let (_, caps) = call(
        &s,
        "POST",
        "sys/capabilities-self",
        Some(&alice),
        json!({"paths": ["secret/data/users/alice/new", format!("identity/entity/id/{eid}")]}),
    )
    .await;
    assert_eq!(
        strs(&caps["data"]["secret/data/users/alice/new"]),
        ["create", "read", "update"]
    );
    // The default policy's templated paths: a token reads its own entity.
    assert_eq!(
        strs(&caps["data"][&format!("identity/entity/id/{eid}")]),
        ["read"]
    );

    // Renaming the entity moves the path with it (the cached ACL follows).
    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"name": "alice2"}),
    )
    .await;
    assert_eq!(read(alice.clone(), "users/alice/x").await, 403);

    // A value that would widen the path refuses the token's ACL, as OpenBao.
    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"metadata": {"team": "a/b"}}),
    )
    .await;
    let (st, v) = call(&s, "GET", "secret/data/static", Some(&alice), Value::Null).await;
    assert_eq!((st, v["errors"][0].as_str()), (400, Some("Forbidden")));

    // A token without an entity gets the policy's plain paths only.
    let t = root(
        &s,
        "POST",
        "auth/token/create",
        json!({"policies": ["tpl"]}),
    )
    .await;
    let plain = t["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(read(plain.clone(), "static").await, 200);
    assert_eq!(read(plain, "users/alice/x").await, 403);

    // Unbalanced templates are refused when written.
    let (st, v) = call(
        &s,
        "PUT",
        "sys/policies/acl/bad",
        Some("root"),
        json!({"policy": "path \"secret/{{identity.entity.id\" { capabilities = [\"read\"] }"}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["errors"][0],
        "failed to parse policy: path \"secret/{{identity.entity.id\": failed to validate policy templating: unbalanced templating characters"
    );
}

#[tokio::test]
async fn disabled_or_deleted_entities_lose_their_tokens() {
    let s = dev_server();
    setup(&s).await;
    let a = login(&s, "alice").await;
    let token = a["client_token"].as_str().unwrap().to_string();
    let eid = a["entity_id"].as_str().unwrap().to_string();
    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"disabled": true}),
    )
    .await;
    let (st, v) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(
        (st, v["errors"][0].as_str()),
        (403, Some("permission denied"))
    );
    let (st, v) = call(
        &s,
        "POST",
        "auth/userpass/login/alice",
        None,
        json!({"password": "pw"}),
    )
    .await;
    assert_eq!(
        (st, v["errors"][0].as_str()),
        (403, Some("permission denied"))
    );
    // Enabled again, the same token works.
    root(
        &s,
        "POST",
        &format!("identity/entity/id/{eid}"),
        json!({"disabled": false}),
    )
    .await;
    let (st, _) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200);
    // Deleted: its tokens are refused; a new login makes a new entity.
    root(
        &s,
        "DELETE",
        &format!("identity/entity/id/{eid}"),
        Value::Null,
    )
    .await;
    let (st, _) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
    let again = login(&s, "alice").await;
    assert_ne!(again["entity_id"], eid.as_str());
}

#[tokio::test]
async fn bad_identity_input_is_a_400_that_changes_nothing() {
    let s = dev_server();
    let accessor = setup(&s).await;
    let created = root(
        &s,
        "POST",
        "identity/entity",
        json!({"name": "svc", "policies": "a"}),
    )
    .await;
    let eid = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["data"]["aliases"], Value::Null);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "identity/entity",
            json!({"id": "nope"}),
            "entity not found from id",
        ),
        (
            "identity/entity",
            json!({"name": "x", "policies": ["root"]}),
            "policies cannot contain root",
        ),
        (
            "identity/entity",
            json!({"name": "svc", "metadata": ["a=b", "c"]}),
            "Field validation failed: error converting input for field \"metadata\": invalid key pair at index 1 in field \"metadata\"",
        ),
        (
            "identity/entity-alias",
            json!({"name": "bob", "mount_accessor": "auth_nope"}),
            "invalid mount accessor \"auth_nope\"",
        ),
        (
            "identity/entity-alias",
            json!({"name": "bob"}),
            "'id' or 'mount_accessor' and 'name' must be provided",
        ),
        (
            "identity/entity-alias",
            json!({"name": "carol", "mount_accessor": accessor, "canonical_id": "nope"}),
            "invalid canonical ID",
        ),
        (
            "identity/group",
            json!({"name": "g", "type": "weird"}),
            "invalid group type \"weird\"",
        ),
        (
            "identity/group",
            json!({"name": "g", "member_entity_ids": ["nope"]}),
            "invalid entity ID \"nope\"",
        ),
        (
            "identity/group",
            json!({"name": "g", "member_group_ids": ["nope"]}),
            "invalid member group ID \"nope\"",
        ),
        (
            "identity/group-alias",
            json!({"name": "devs", "mount_accessor": "auth_nope"}),
            "invalid mount accessor \"auth_nope\"",
        ),
        (
            "identity/lookup/entity",
            json!({}),
            "query parameter not supplied",
        ),
        (
            "identity/lookup/entity",
            json!({"alias_name": "bob"}),
            "both 'alias_name' and 'alias_mount_accessor' needs to be set",
        ),
    ];
    for (path, body, want) in cases {
        let (st, v) = call(&s, "POST", path, Some("root"), body.clone()).await;
        assert_eq!(st, 400, "{path} {body}: {v}");
        assert_eq!(v["errors"][0], want, "{path} {body}");
    }
    // Wrong types are refused by field validation.
    let (st, _) = call(
        &s,
        "POST",
        "identity/entity",
        Some("root"),
        json!({"name": "y", "disabled": "maybe"}),
    )
    .await;
    assert_eq!(st, 400);
    // Nothing changed: one entity, no groups.
    let ids = root(&s, "LIST", "identity/entity/id", Value::Null).await;
    assert_eq!(strs(&ids["data"]["keys"]), vec![eid.clone()]);
    let (st, _) = call(&s, "LIST", "identity/group/id", Some("root"), Value::Null).await;
    assert_eq!(st, 404);
    let e = root(&s, "GET", "identity/entity/name/svc", Value::Null).await;
    assert_eq!(e["data"]["metadata"], Value::Null);
    // Unknown entity: 404; without a token: 403.
    let (st, _) = call(
        &s,
        "GET",
        "identity/entity/id/nope",
        Some("root"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = call(
        &s,
        "GET",
        &format!("identity/entity/id/{eid}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
}
