//! Unit tests of the token store and backend over a real barrier on a
//! `MemoryStore`, with the store's clock under test control.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rand::RngCore;
use regex::Regex;
use serde_json::{Value, json};

use super::*;
use crate::barrier::Barrier;
use crate::error::{CoreError, Result};
use crate::logical::{Backend, Ctx, FieldData, Operation, Request, Response, Secret};
use crate::storage::memory::MemoryStore;
use crate::storage::{PhysicalStore, StorageView};

const T0: i64 = 1_700_000_000;

struct Fixture {
    phys: Arc<MemoryStore>,
    barrier: Arc<Barrier>,
    view: StorageView,
    store: Arc<TokenStore>,
    backend: TokenBackend,
    clock: Arc<AtomicI64>,
    root: String,
}

impl Fixture {
    async fn new() -> Self {
        let phys = Arc::new(MemoryStore::new());
        let barrier = Arc::new(Barrier::new(phys.clone()));
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        barrier.initialize(&key).await.unwrap();
        let clock = Arc::new(AtomicI64::new(T0));
        let c = clock.clone();
        let view = StorageView::new(barrier.clone(), "sys/token/");
        let store =
            Arc::new(TokenStore::new(view.clone()).with_clock(move || c.load(Ordering::SeqCst)));
        store.init().await.unwrap();
        let (root, _) = store.create_root_token(None).await.unwrap();
        let backend = TokenBackend::new(store.clone());
        Fixture {
            phys,
            barrier,
            view,
            store,
            backend,
            clock,
            root,
        }
    }

    fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    /// Route `path` like the router does and call the backend as `token`.
    async fn call_as(
        &self,
        token: &str,
        sudo: bool,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Option<Response>> {
        let auth = self.store.lookup(token).await?;
        let paths = self.backend.paths();
        let (route, captures) = paths
            .iter()
            .enumerate()
            .find_map(|(i, p)| {
                if !p.operations.contains(&op.table_op()) {
                    return None;
                }
                let re = Regex::new(&format!("^(?:{})$", p.pattern)).unwrap();
                re.captures(path).map(|c| {
                    let caps: BTreeMap<String, String> = re
                        .capture_names()
                        .flatten()
                        .filter_map(|n| c.name(n).map(|m| (n.to_string(), m.as_str().to_string())))
                        .collect();
                    (i, caps)
                })
            })
            .ok_or_else(|| CoreError::NotFound(path.to_string()))?;
        let mut req = Request::new(op, format!("auth/token/{path}"));
        req.mount_point = "auth/token/".into();
        req.mount_type = "token".into();
        req.relative_path = path.into();
        req.client_token = Some(Secret::new(token));
        req.auth = auth.map(Arc::new);
        req.has_sudo = sudo || req.auth.as_ref().is_some_and(|a| a.is_root());
        if let Value::Object(m) = body {
            req.data = m;
        }
        let (fields, _) = FieldData::validate(&paths[route], &req.data, captures)?;
        self.backend
            .handle(Ctx {
                req: &req,
                fields: &fields,
                route,
                storage: &self.view,
            })
            .await
    }

    async fn call(
        &self,
        token: &str,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Option<Response>> {
        self.call_as(token, false, op, path, body).await
    }

    /// Create a token through the backend as `parent`; returns (token, auth).
    async fn create(&self, parent: &str, body: Value) -> (String, crate::logical::AuthResponse) {
        let resp = self
            .call(parent, Operation::Update, "create", body)
            .await
            .unwrap()
            .unwrap();
        let auth = resp.auth.unwrap();
        (auth.client_token.clone(), auth)
    }

    /// Every physical key, recursively.
    async fn all_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(p) = stack.pop() {
            for item in self.phys.list(&p).await.unwrap() {
                let full = format!("{p}{item}");
                if item.ends_with('/') {
                    stack.push(full);
                } else {
                    out.push(full);
                }
            }
        }
        out
    }
}

fn err_msg(r: Result<Option<Response>>) -> (u16, String) {
    match r {
        Err(e) => (e.status(), e.to_string()),
        Ok(_) => panic!("expected an error"),
    }
}

fn data(r: Result<Option<Response>>) -> serde_json::Map<String, Value> {
    r.unwrap().unwrap().data.unwrap()
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let fx = Fixture::new().await;
    let (child, auth) = fx
        .create(&fx.root, json!({"policies": ["dev"], "meta": {"app": "x"}}))
        .await;
    assert!(
        child.starts_with("hvs.") && child.len() == 28,
        "Vault's token shape"
    );
    assert_eq!(auth.accessor.len(), 24);
    let (dev_root, _) = fx.store.create_root_token(Some("root")).await.unwrap();
    assert_eq!(dev_root, "root");

    let keys = fx.all_keys().await;
    assert!(keys.iter().any(|k| k.starts_with("sys/token/id/")));
    let secrets = [fx.root.as_str(), child.as_str(), &child[4..], &fx.root[4..]];
    for key in &keys {
        for s in secrets {
            assert!(!key.contains(s), "token in storage key {key}");
        }
        // Decrypted values (what an unsealed storage dump would show) and the
        // raw bytes alike.
        let raw = fx.phys.get(key).await.unwrap().unwrap();
        let plain = if key.starts_with(crate::barrier::PLAINTEXT_PREFIX) {
            raw.clone()
        } else {
            fx.barrier.get(key).await.unwrap().unwrap()
        };
        for bytes in [&raw, &plain] {
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "token in stored value of {key}"
                );
            }
        }
    }
    // And the hashed entries still resolve.
    assert!(fx.store.lookup(&child).await.unwrap().is_some());
    assert!(fx.store.lookup("root").await.unwrap().unwrap().is_root());
    assert!(fx.store.lookup("hvs.not-a-token").await.unwrap().is_none());
    assert!(fx.store.lookup("").await.unwrap().is_none());
}

#[tokio::test]
async fn expiry_is_enforced_and_expired_tokens_are_revoked_lazily() {
    let fx = Fixture::new().await;
    let (tok, auth) = fx.create(&fx.root, json!({"ttl": "60s"})).await;
    assert_eq!(auth.lease_duration, 60);
    assert_eq!(fx.store.count().await.unwrap(), 2);
    fx.advance(59);
    assert!(fx.store.lookup(&tok).await.unwrap().is_some());
    fx.advance(1);
    assert!(
        fx.store.lookup(&tok).await.unwrap().is_none(),
        "expired at creation + ttl"
    );
    assert_eq!(
        fx.store.count().await.unwrap(),
        1,
        "the expired entry was revoked"
    );
    assert!(
        fx.store
            .lookup_accessor(&auth.accessor)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        fx.store
            .accessor_hash(&auth.accessor)
            .await
            .unwrap()
            .is_none()
    );
    // The root token never expires.
    fx.advance(10 * 365 * 86400);
    assert!(fx.store.lookup(&fx.root).await.unwrap().is_some());
}

#[tokio::test]
async fn children_die_with_an_expired_parent_even_before_the_sweep() {
    let fx = Fixture::new().await;
    let (parent, _) = fx.create(&fx.root, json!({"ttl": "10s"})).await;
    let (child, auth) = fx.create(&parent, json!({"ttl": "1h"})).await;
    assert_eq!(
        auth.lease_duration, 3600,
        "Vault does not cap a child's TTL by its parent's"
    );
    fx.advance(10);
    assert!(fx.store.lookup(&child).await.unwrap().is_none());
    assert!(fx.store.lookup(&parent).await.unwrap().is_none());
    assert_eq!(fx.store.count().await.unwrap(), 1);
}

#[tokio::test]
async fn limited_use_tokens_are_consumed_and_revoked_after_the_last_use() {
    let fx = Fixture::new().await;
    let (tok, auth) = fx.create(&fx.root, json!({"num_uses": 2})).await;
    assert_eq!(auth.num_uses, 2);
    let e = fx.store.lookup(&tok).await.unwrap().unwrap();
    let first = fx.store.use_token(&e).await.unwrap().unwrap();
    assert_eq!(first.num_uses, 1);
    let e = fx.store.lookup(&tok).await.unwrap().unwrap();
    assert_eq!(e.num_uses, 1);
    // The last use still lets the request through...
    let last = fx.store.use_token(&e).await.unwrap();
    assert!(last.is_some());
    // ...but the token is gone for the next one.
    assert!(fx.store.lookup(&tok).await.unwrap().is_none());
    assert!(fx.store.use_token(&e).await.unwrap().is_none());
    assert_eq!(fx.store.count().await.unwrap(), 1);

    // Unlimited tokens pass through untouched.
    let root = fx.store.lookup(&fx.root).await.unwrap().unwrap();
    assert_eq!(
        fx.store.use_token(&root).await.unwrap().unwrap().num_uses,
        0
    );

    // A limited-use token cannot create children.
    let (limited, _) = fx.create(&fx.root, json!({"num_uses": 5})).await;
    let (status, msg) = err_msg(
        fx.call(&limited, Operation::Update, "create", json!({}))
            .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "restricted use token cannot generate child tokens")
    );
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"num_uses": -1}),
        )
        .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "number of uses cannot be negative")
    );
}

#[tokio::test]
async fn revoking_a_parent_revokes_its_children() {
    let fx = Fixture::new().await;
    let (a, _) = fx.create(&fx.root, json!({})).await;
    let (b, _) = fx.create(&a, json!({})).await;
    let (c, _) = fx.create(&b, json!({})).await;
    let (sibling, _) = fx.create(&fx.root, json!({})).await;
    // Warm the cache: revocation must still take effect at once.
    for t in [&a, &b, &c] {
        assert!(fx.store.lookup(t).await.unwrap().is_some());
    }
    let r = fx
        .call(&fx.root, Operation::Update, "revoke", json!({"token": a}))
        .await
        .unwrap();
    assert!(r.is_none(), "revoke answers 204");
    for t in [&a, &b, &c] {
        assert!(fx.store.lookup(t).await.unwrap().is_none());
    }
    assert!(fx.store.lookup(&sibling).await.unwrap().is_some());
    assert!(fx.store.lookup(&fx.root).await.unwrap().is_some());
    assert_eq!(fx.store.count().await.unwrap(), 2);
    assert_eq!(fx.store.list_accessors().await.unwrap().len(), 2);
    let links = fx.view.list_recursive("parent/").await.unwrap();
    assert_eq!(links.len(), 1, "only root → sibling is left: {links:?}");

    // Unknown tokens revoke fine (204), as in Vault; a missing one is a 400.
    assert!(
        fx.call(
            &fx.root,
            Operation::Update,
            "revoke",
            json!({"token": "nope"})
        )
        .await
        .unwrap()
        .is_none()
    );
    let (status, msg) = err_msg(
        fx.call(&fx.root, Operation::Update, "revoke", json!({}))
            .await,
    );
    assert_eq!((status, msg.as_str()), (400, "missing token ID"));

    // revoke-self takes the caller's tree.
    let (d, _) = fx.create(&sibling, json!({})).await;
    assert!(
        fx.call(&sibling, Operation::Update, "revoke-self", json!({}))
            .await
            .unwrap()
            .is_none()
    );
    assert!(fx.store.lookup(&sibling).await.unwrap().is_none());
    assert!(fx.store.lookup(&d).await.unwrap().is_none());
}

#[tokio::test]
async fn revoke_orphan_keeps_the_children_and_needs_sudo() {
    let fx = Fixture::new().await;
    let (a, _) = fx.create(&fx.root, json!({"policies": ["dev"]})).await;
    let (b, _) = fx.create(&a, json!({})).await;
    let (c, _) = fx.create(&b, json!({})).await;

    let (status, msg) = err_msg(
        fx.call(&a, Operation::Update, "revoke-orphan", json!({"token": b}))
            .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "root or sudo privileges required to revoke and orphan")
    );
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "revoke-orphan",
            json!({"token": "nope"}),
        )
        .await,
    );
    assert_eq!((status, msg.as_str()), (400, "token to revoke not found"));

    assert!(
        fx.call(
            &fx.root,
            Operation::Update,
            "revoke-orphan",
            json!({"token": a})
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(fx.store.lookup(&a).await.unwrap().is_none());
    let eb = fx.store.lookup(&b).await.unwrap().unwrap();
    assert!(eb.orphan && eb.parent_hash.is_empty());
    let d = data(fx.call(&b, Operation::Read, "lookup-self", json!({})).await);
    assert_eq!(d["orphan"], json!(true));
    // The grandchild keeps its parent (b), and still dies with it.
    assert!(!fx.store.lookup(&c).await.unwrap().unwrap().orphan);
    fx.store.revoke_tree(&eb.id_hash).await.unwrap();
    assert!(fx.store.lookup(&c).await.unwrap().is_none());
}

#[tokio::test]
async fn accessors_look_up_renew_and_revoke_without_revealing_the_token() {
    let fx = Fixture::new().await;
    let (tok, auth) = fx
        .create(&fx.root, json!({"display_name": "my app!", "ttl": "1h"}))
        .await;

    let d = data(
        fx.call(
            &fx.root,
            Operation::Update,
            "lookup-accessor",
            json!({"accessor": auth.accessor}),
        )
        .await,
    );
    assert_eq!(d["id"], json!(""));
    assert_eq!(d["accessor"], json!(auth.accessor));
    assert_eq!(d["display_name"], json!("token-my-app"));

    let list = data(
        fx.call_as(&fx.root, true, Operation::List, "accessors", json!({}))
            .await,
    );
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&json!(auth.accessor)));

    fx.advance(600);
    let r = fx
        .call(
            &fx.root,
            Operation::Update,
            "renew-accessor",
            json!({"accessor": auth.accessor, "increment": "2h"}),
        )
        .await
        .unwrap()
        .unwrap();
    let ra = r.auth.unwrap();
    assert_eq!(
        ra.client_token, "",
        "renew-accessor does not reveal the token"
    );
    assert_eq!(ra.lease_duration, 7200);

    assert!(
        fx.call(
            &fx.root,
            Operation::Update,
            "revoke-accessor",
            json!({"accessor": auth.accessor})
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(fx.store.lookup(&tok).await.unwrap().is_none());
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "lookup-accessor",
            json!({"accessor": auth.accessor}),
        )
        .await,
    );
    assert_eq!((status, msg.as_str()), (400, "invalid accessor"));
    let r = fx
        .call(
            &fx.root,
            Operation::Update,
            "revoke-accessor",
            json!({"accessor": "unknown"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.warnings,
        vec!["No token found with this accessor".to_string()]
    );
    let (status, msg) = err_msg(
        fx.call(&fx.root, Operation::Update, "lookup-accessor", json!({}))
            .await,
    );
    assert_eq!((status, msg.as_str()), (400, "missing accessor"));
}

#[tokio::test]
async fn child_policies_must_be_a_subset_of_the_parents() {
    let fx = Fixture::new().await;
    let (parent, auth) = fx.create(&fx.root, json!({"policies": "dev, ops"})).await;
    assert_eq!(
        auth.policies,
        vec!["default", "dev", "ops"],
        "sorted, with default"
    );
    assert_eq!(auth.token_policies, auth.policies);

    let (status, msg) = err_msg(
        fx.call(
            &parent,
            Operation::Update,
            "create",
            json!({"policies": ["admin"]}),
        )
        .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "child policies must be subset of parent")
    );
    let (status, _) = err_msg(
        fx.call(
            &parent,
            Operation::Update,
            "create",
            json!({"policies": ["dev", "root"]}),
        )
        .await,
    );
    assert_eq!(status, 400);

    let (_, a) = fx.create(&parent, json!({"policies": ["DEV"]})).await;
    assert_eq!(a.policies, vec!["default", "dev"]);
    let (_, a) = fx
        .create(
            &parent,
            json!({"policies": ["dev"], "no_default_policy": true}),
        )
        .await;
    assert_eq!(a.policies, vec!["dev"]);
    let (_, a) = fx.create(&parent, json!({})).await;
    assert_eq!(
        a.policies,
        vec!["default", "dev", "ops"],
        "empty inherits the parent's"
    );

    // Sudo (or root) may grant anything but root.
    let r = fx
        .call_as(
            &parent,
            true,
            Operation::Update,
            "create",
            json!({"policies": ["admin"]}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.auth.unwrap().policies, vec!["admin", "default"]);
    let (status, msg) = err_msg(
        fx.call_as(
            &parent,
            true,
            Operation::Update,
            "create",
            json!({"policies": ["root"]}),
        )
        .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (
            400,
            "root tokens may not be created without parent token being root"
        )
    );
    let (_, a) = fx.create(&fx.root, json!({"policies": ["admin"]})).await;
    assert_eq!(a.policies, vec!["admin", "default"]);
    let (_, a) = fx.create(&fx.root, json!({})).await;
    assert_eq!(a.policies, vec!["root"]);
    assert_eq!(
        a.lease_duration, 0,
        "a root child of a root token does not expire"
    );
    assert!(!a.renewable);
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"policies": ["response-wrapping"]}),
        )
        .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "cannot assign policy \"response-wrapping\"")
    );
}

#[tokio::test]
async fn create_applies_vaults_defaults_and_privilege_rules() {
    let fx = Fixture::new().await;
    let r = fx
        .call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"policies": ["dev"], "meta": {"team": "a"}}),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(r.data.is_none());
    let auth = r.auth.unwrap();
    assert_eq!(auth.lease_duration, DEFAULT_LEASE_TTL);
    assert!(auth.renewable);
    assert!(!auth.orphan);
    assert_eq!(auth.token_type, "service");
    assert_eq!(auth.entity_id, "");
    assert_eq!(auth.metadata.unwrap()["team"], "a");
    let tok = auth.client_token;

    // Non-sudo callers may not pick ids, orphans or periods.
    for (body, want) in [
        (
            json!({"id": "mine"}),
            "root or sudo privileges required to specify token id",
        ),
        (
            json!({"no_parent": true}),
            "root or sudo privileges required to create orphan token",
        ),
        (
            json!({"period": "1h"}),
            "root or sudo privileges required to create periodic token",
        ),
        (json!({"type": "batch"}), "batch tokens are not supported"),
        (json!({"type": "weird"}), "invalid 'token_type' value"),
        (
            json!({"entity_alias": "x"}),
            "'entity_alias' is only allowed in combination with token role",
        ),
    ] {
        let (status, msg) = err_msg(fx.call(&tok, Operation::Update, "create", body).await);
        assert_eq!((status, msg.as_str()), (400, want));
    }
    // create-orphan needs no sudo (it is ACL'd by path).
    let r = fx
        .call(&tok, Operation::Update, "create-orphan", json!({}))
        .await
        .unwrap()
        .unwrap();
    let a = r.auth.unwrap();
    assert!(a.orphan);
    let d = data(
        fx.call(&a.client_token, Operation::Read, "lookup-self", json!({}))
            .await,
    );
    assert_eq!(d["path"], json!("auth/token/create-orphan"));

    // Root may choose an id, but not Vault's reserved shapes; no duplicates.
    let (custom, _) = fx.create(&fx.root, json!({"id": "my-token"})).await;
    assert_eq!(custom, "my-token");
    assert!(fx.store.lookup("my-token").await.unwrap().is_some());
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"id": "my-token"}),
        )
        .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (400, "cannot create a token with a duplicate ID")
    );
    let (status, _) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"id": "hvs.abc"}),
        )
        .await,
    );
    assert_eq!(status, 400);

    // TTLs are capped by the system max, with Vault's warning.
    let r = fx
        .call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"ttl": "1000h"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, MAX_LEASE_TTL);
    assert_eq!(
        r.warnings,
        vec![
            "TTL of \"1000h0m0s\" exceeded the effective max_ttl of \"768h0m0s\"; TTL value is capped accordingly"
        ]
    );

    // Wrong field types are refused by the declared schema.
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"ttl": "soon"}),
        )
        .await,
    );
    assert_eq!(status, 400);
    assert!(msg.contains("\"ttl\""), "{msg}");
    let (status, _) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "create",
            json!({"num_uses": "many"}),
        )
        .await,
    );
    assert_eq!(status, 400);
    let (status, msg) = err_msg(
        fx.call(&fx.root, Operation::Update, "create/some-role", json!({}))
            .await,
    );
    assert_eq!((status, msg.as_str()), (400, "unknown role some-role"));
    assert!(
        fx.call_as(&fx.root, true, Operation::List, "roles", json!({}))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn lookup_answers_in_vaults_shape() {
    let fx = Fixture::new().await;
    let (tok, _) = fx
        .create(&fx.root, json!({"ttl": "1h", "explicit_max_ttl": "2h", "display_name": "web", "policies": ["dev"]}))
        .await;
    fx.advance(100);
    let d = data(
        fx.call(&fx.root, Operation::Update, "lookup", json!({"token": tok}))
            .await,
    );
    let keys: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "accessor",
            "creation_time",
            "creation_ttl",
            "display_name",
            "entity_id",
            "expire_time",
            "explicit_max_ttl",
            "id",
            "issue_time",
            "meta",
            "num_uses",
            "orphan",
            "path",
            "policies",
            "renewable",
            "ttl",
            "type"
        ]
    );
    assert_eq!(d["id"], json!(tok));
    assert_eq!(d["creation_time"], json!(T0));
    assert_eq!(d["creation_ttl"], json!(3600));
    assert_eq!(d["ttl"], json!(3500));
    assert_eq!(d["explicit_max_ttl"], json!(7200));
    assert_eq!(d["expire_time"], json!("2023-11-14T23:13:20Z"));
    assert_eq!(d["issue_time"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(d["meta"], Value::Null);
    assert_eq!(d["display_name"], json!("token-web"));
    assert_eq!(d["path"], json!("auth/token/create"));
    assert_eq!(d["policies"], json!(["default", "dev"]));
    assert_eq!(d["renewable"], json!(true));
    assert_eq!(d["orphan"], json!(false));
    assert_eq!(d["type"], json!("service"));

    // GET lookup without a token, and lookup-self, answer for the caller.
    let own = data(fx.call(&tok, Operation::Read, "lookup", json!({})).await);
    assert_eq!(own, d);
    assert_eq!(
        data(
            fx.call(&tok, Operation::Read, "lookup-self", json!({}))
                .await
        ),
        d
    );

    let root = data(
        fx.call(&fx.root, Operation::Read, "lookup-self", json!({}))
            .await,
    );
    assert_eq!(root["expire_time"], Value::Null);
    assert_eq!(root["ttl"], json!(0));
    assert_eq!(root["renewable"], json!(false));
    assert_eq!(root["orphan"], json!(true));
    assert_eq!(root["display_name"], json!("root"));
    assert_eq!(root["path"], json!("auth/token/root"));
    assert_eq!(root["policies"], json!(["root"]));

    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "lookup",
            json!({"token": "hvs.bogus"}),
        )
        .await,
    );
    assert_eq!((status, msg.as_str()), (403, "bad token"));
}

#[tokio::test]
async fn renew_is_capped_by_explicit_max_ttl() {
    let fx = Fixture::new().await;
    let (tok, _) = fx
        .create(&fx.root, json!({"ttl": "60s", "explicit_max_ttl": "100s"}))
        .await;
    fx.advance(50);
    let r = fx
        .call(
            &tok,
            Operation::Update,
            "renew-self",
            json!({"increment": "1h"}),
        )
        .await
        .unwrap()
        .unwrap();
    let a = r.auth.unwrap();
    assert_eq!(
        a.lease_duration, 50,
        "capped at creation + explicit_max_ttl"
    );
    assert_eq!(a.client_token, tok);
    assert_eq!(
        r.warnings,
        vec![
            "TTL of \"1h0m0s\" exceeded the effective max_ttl of \"50s\"; TTL value is capped accordingly"
        ]
    );
    let e = fx.store.lookup(&tok).await.unwrap().unwrap();
    assert_eq!(e.expire_time, T0 + 100);
    assert_eq!(e.ttl, 60, "creation_ttl does not move");
    let d = data(
        fx.call(&tok, Operation::Read, "lookup-self", json!({}))
            .await,
    );
    assert_eq!(d["last_renewal_time"], json!(T0 + 50));

    // Without an increment a renewal grants the original TTL again.
    let (tok2, _) = fx.create(&fx.root, json!({"ttl": "60s"})).await;
    fx.advance(30);
    let r = fx
        .call(&fx.root, Operation::Update, "renew", json!({"token": tok2}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, 60);

    fx.advance(50);
    assert!(
        fx.store.lookup(&tok).await.unwrap().is_none(),
        "dead at its explicit max"
    );

    // Periodic tokens renew to their period.
    let (per, a) = fx.create(&fx.root, json!({"period": "10m"})).await;
    assert_eq!(a.lease_duration, 600);
    fx.advance(500);
    let r = fx
        .call(
            &per,
            Operation::Update,
            "renew-self",
            json!({"increment": "1h"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.auth.unwrap().lease_duration, 600);

    // Not renewable: the root token, tokens created renewable=false.
    let (fixed, a) = fx
        .create(&fx.root, json!({"renewable": false, "ttl": "1h"}))
        .await;
    assert!(!a.renewable);
    let (status, msg) = err_msg(
        fx.call(&fixed, Operation::Update, "renew-self", json!({}))
            .await,
    );
    assert_eq!((status, msg.as_str()), (400, "lease is not renewable"));
    let (status, msg) = err_msg(
        fx.call(&fx.root, Operation::Update, "renew-self", json!({}))
            .await,
    );
    assert_eq!((status, msg.as_str()), (400, "lease is not renewable"));
    let (status, msg) = err_msg(
        fx.call(
            &fx.root,
            Operation::Update,
            "renew",
            json!({"token": "hvs.gone"}),
        )
        .await,
    );
    assert_eq!((status, msg.as_str()), (400, "token not found"));
}

#[tokio::test]
async fn tidy_revokes_every_expired_token_and_its_children() {
    let fx = Fixture::new().await;
    let mut short = Vec::new();
    for _ in 0..3 {
        short.push(fx.create(&fx.root, json!({"ttl": "10s"})).await.0);
    }
    let (long, _) = fx.create(&fx.root, json!({"ttl": "1h"})).await;
    let (child_of_short, _) = fx.create(&short[0], json!({"ttl": "1h"})).await;
    assert_eq!(fx.store.count().await.unwrap(), 6);
    assert_eq!(fx.store.tidy_expired().await.unwrap(), 0);

    fx.advance(11);
    assert_eq!(fx.store.tidy_expired().await.unwrap(), 4);
    assert_eq!(fx.store.count().await.unwrap(), 2);
    assert_eq!(fx.store.list_accessors().await.unwrap().len(), 2);
    assert!(fx.view.list_recursive("parent/").await.unwrap().len() == 1);
    assert!(fx.store.lookup(&long).await.unwrap().is_some());
    assert!(fx.store.lookup(&child_of_short).await.unwrap().is_none());
    assert_eq!(fx.store.tidy_expired().await.unwrap(), 0);

    // The tidy endpoint runs the same sweep.
    fx.advance(3600);
    let r = fx
        .call_as(&fx.root, true, Operation::Update, "tidy", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, Some(202));
    assert_eq!(fx.store.count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_new_store_over_the_same_storage_keeps_the_salt() {
    let fx = Fixture::new().await;
    let (tok, _) = fx.create(&fx.root, json!({})).await;
    let again = TokenStore::new(fx.view.clone());
    again.init().await.unwrap();
    assert!(again.lookup(&tok).await.unwrap().is_some());
    assert_eq!(
        again.hash_token(&tok).unwrap(),
        fx.store.hash_token(&tok).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uses_never_exceed_num_uses() {
    let fx = Fixture::new().await;
    let (tok, _) = fx.create(&fx.root, json!({"num_uses": 5})).await;
    let entry = fx.store.lookup(&tok).await.unwrap().unwrap();
    let mut handles = Vec::new();
    for _ in 0..20 {
        let store = fx.store.clone();
        let e = entry.clone();
        handles.push(tokio::spawn(async move {
            store.use_token(&e).await.unwrap().is_some()
        }));
    }
    let mut granted = 0;
    for h in handles {
        if h.await.unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 5);
    assert!(fx.store.lookup(&tok).await.unwrap().is_none());
}
