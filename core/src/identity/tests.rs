//! Store-level tests: logins, the API operations' rules, groups and views.

use super::*;
use crate::barrier::Barrier;
use crate::storage::memory::MemoryStore;

async fn store() -> IdentityStore {
    let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
    barrier.initialize(&[7u8; 32]).await.unwrap();
    IdentityStore::new(StorageView::new(barrier, "sys/identity/"))
}

fn mount(path: &str, kind: &str) -> MountEntry {
    MountEntry::new(path, kind, "")
}

fn alias(name: &str) -> LoginAlias {
    LoginAlias {
        name: name.into(),
        metadata: BTreeMap::from([("service_account_namespace".into(), "payments".into())]),
    }
}

#[tokio::test]
async fn external_groups_follow_the_logins_group_aliases_per_mount() {
    let s = store().await;
    let jwt = mount("auth/jwt/", "jwt");
    let other = mount("auth/oidc/", "oidc");
    let mounts = |acc: &str| {
        [jwt.clone(), other.clone()]
            .into_iter()
            .find(|m| m.accessor == acc)
    };
    let devs = s
        .upsert_group(
            None,
            GroupUpdate {
                name: Some("devs".into()),
                group_type: Some(GROUP_EXTERNAL.into()),
                policies: Some(vec!["dev-pol".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    s.upsert_group_alias(&mounts, None, "developers", &jwt.accessor, &devs.id)
        .await
        .unwrap();
    let ops = s
        .upsert_group(
            None,
            GroupUpdate {
                name: Some("ops".into()),
                group_type: Some(GROUP_EXTERNAL.into()),
                policies: Some(vec!["ops-pol".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    s.upsert_group_alias(&mounts, None, "operators", &other.accessor, &ops.id)
        .await
        .unwrap();

    let e = s
        .entity_for_login(&jwt, &alias("ci"), &["developers".into(), "unknown".into()])
        .await
        .unwrap();
    assert_eq!(e.external_group_ids, vec![devs.id.clone()]);
    assert_eq!(s.identity_policies(&e.id).await.unwrap(), ["dev-pol"]);
    // The same entity through another mount's alias keeps the first
    // mount's memberships and adds its own.
    let e2 = s
        .upsert_alias(
            &mounts,
            None,
            Some("ci"),
            Some(&other.accessor),
            Some(&e.id),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2.1, e.id);
    let e = s
        .entity_for_login(&other, &alias("ci"), &["operators".into()])
        .await
        .unwrap();
    assert_eq!(
        s.identity_policies(&e.id).await.unwrap(),
        ["dev-pol", "ops-pol"]
    );
    // A later login on the first mount without the claim drops only that
    // membership.
    s.entity_for_login(&jwt, &alias("ci"), &[]).await.unwrap();
    assert_eq!(s.identity_policies(&e.id).await.unwrap(), ["ops-pol"]);
    // Alias metadata from the login is what templates see.
    let view = s.resolve(&e.id).await.unwrap().unwrap();
    let tpl = format!(
        "k8s/{{{{identity.entity.aliases.{}.metadata.service_account_namespace}}}}",
        jwt.accessor
    );
    assert_eq!(
        template::populate(&tpl, Some(&view.template)).unwrap(),
        "k8s/payments"
    );
    // Members can't be listed by hand on an external group.
    let err = s
        .upsert_group(
            Some(&devs.id),
            GroupUpdate {
                member_entity_ids: Some(vec![e.id.clone()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "member entities can't be set manually for external groups"
    );
    // A group alias on an internal group is refused.
    let internal = s
        .upsert_group(
            None,
            GroupUpdate {
                name: Some("int".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let err = s
        .upsert_group_alias(&mounts, None, "x", &jwt.accessor, &internal.id)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "alias can't be set on an internal group");
}

#[tokio::test]
async fn views_and_generations_move_on_with_every_change() {
    let s = store().await;
    let m = mount("auth/userpass/", "userpass");
    let e = s.entity_for_login(&m, &alias("a"), &[]).await.unwrap();
    let v1 = s.resolve(&e.id).await.unwrap().unwrap();
    // Cached: the same view until something changes.
    let again = s.resolve(&e.id).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&v1, &again));
    s.upsert_entity(EntityUpdate {
        id: Some(e.id.clone()),
        policies: Some(vec!["P1".into(), "p1".into(), " ".into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let v2 = s.resolve(&e.id).await.unwrap().unwrap();
    assert!(v2.generation > v1.generation);
    assert_eq!(v2.policies, ["p1"]);
    // A replicated write elsewhere: reloaded from storage, same content.
    s.invalidate("entity/x");
    let v3 = s.resolve(&e.id).await.unwrap().unwrap();
    assert!(v3.generation > v2.generation);
    assert_eq!(v3.policies, ["p1"]);
    assert!(s.resolve("nope").await.unwrap().is_none());
    // Deleting the entity removes it from groups too.
    let g = s
        .upsert_group(
            None,
            GroupUpdate {
                name: Some("g".into()),
                member_entity_ids: Some(vec![e.id.clone()]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    s.delete_entity(Some(&e.id), None).await.unwrap();
    assert!(s.resolve(&e.id).await.unwrap().is_none());
    let m = s.mirror().await.unwrap();
    assert!(m.groups[&g.id].member_entity_ids.is_empty());
    assert!(m.by_alias.is_empty());
}

#[tokio::test]
async fn group_cycles_and_bad_metadata_are_refused() {
    let s = store().await;
    let mk = |name: &str, members: Vec<String>| GroupUpdate {
        name: Some(name.into()),
        member_group_ids: Some(members),
        ..Default::default()
    };
    let a = s
        .upsert_group(None, mk("a", vec![]))
        .await
        .unwrap()
        .unwrap();
    let b = s
        .upsert_group(None, mk("b", vec![a.id.clone()]))
        .await
        .unwrap()
        .unwrap();
    let c = s
        .upsert_group(None, mk("c", vec![b.id.clone()]))
        .await
        .unwrap()
        .unwrap();
    let err = s
        .upsert_group(Some(&a.id), mk("a", vec![c.id.clone()]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cyclic relationship detected for member group ID {:?}",
            c.id
        )
    );
    let err = s
        .upsert_group(Some(&a.id), mk("a", vec![a.id.clone()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is same as the ID of the group"));
    let err = s
        .upsert_entity(EntityUpdate {
            name: Some("x".into()),
            metadata: Some(BTreeMap::from([("vault-x".into(), "1".into())])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("reserved for internal use"),
        "{err}"
    );
    let err = s
        .upsert_group(
            None,
            GroupUpdate {
                name: Some("b".into()),
                group_type: Some("external".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "group type cannot be changed");
    // Nothing was stored by the refused writes.
    let m = s.mirror().await.unwrap();
    assert_eq!(m.entities.len(), 0);
    assert_eq!(m.groups[&a.id].member_group_ids.len(), 0);
}
