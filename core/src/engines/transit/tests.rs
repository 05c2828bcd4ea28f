//! Transit through the router, as the server calls it: a MemoryStore behind a
//! real barrier, a mounted [`TransitBackend`], `Mounted::resolve(...)` then
//! the existence check (create vs update) and `call(...)`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::barrier::Barrier;
use crate::logical::Request;
use crate::router::{MountEntry, Mounted};
use crate::storage::memory::MemoryStore;

struct Harness {
    mounted: Mounted,
    backend: Arc<TransitBackend>,
    storage: StorageView,
}

/// Status and body of a call, errors included, the way HTTP would see them.
struct Out {
    status: u16,
    data: Map<String, Value>,
    warnings: Vec<String>,
    error: String,
    /// What the audit event records (`response.key_versions`).
    key_versions: Vec<u64>,
}

impl Harness {
    async fn new() -> Self {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[9u8; 32]).await.unwrap();
        let storage = StorageView::new(barrier, "logical/transit-test/");
        let backend = Arc::new(TransitBackend::new());
        let entry = MountEntry::new("transit/", "transit", "");
        let mounted = Mounted::new(entry, backend.clone(), storage.clone()).unwrap();
        Harness {
            mounted,
            backend,
            storage,
        }
    }

    async fn call(&self, op: Op, path: &str, body: Value) -> Out {
        let mut req = Request::new(op, format!("transit/{path}"));
        req.mount_point = "transit/".into();
        req.mount_type = "transit".into();
        req.relative_path = path.into();
        if let Value::Object(m) = body {
            req.data = m;
        }
        let result = async {
            let r = self.mounted.resolve(path, op)?;
            if op == Op::Update && !r.exists(&req).await? {
                req.operation = Op::Create;
            }
            r.call(&req).await
        }
        .await;
        match result {
            Ok(Some(resp)) => Out {
                status: resp.status.unwrap_or(200),
                data: resp.data.unwrap_or_default(),
                warnings: resp.warnings,
                error: String::new(),
                key_versions: resp.key_versions,
            },
            Ok(None) => Out {
                status: if matches!(op, Op::Read | Op::List) {
                    404
                } else {
                    204
                },
                data: Map::new(),
                warnings: vec![],
                error: String::new(),
                key_versions: vec![],
            },
            Err(e) => Out {
                status: e.status(),
                data: Map::new(),
                warnings: vec![],
                error: e.to_string(),
                key_versions: vec![],
            },
        }
    }

    async fn ok(&self, op: Op, path: &str, body: Value) -> Map<String, Value> {
        let out = self.call(op, path, body).await;
        assert_eq!(out.status, 200, "{path}: {}", out.error);
        out.data
    }

    async fn err(&self, path: &str, body: Value, status: u16, contains: &str) {
        let out = self.call(Op::Update, path, body).await;
        assert_eq!(out.status, status, "{path}: {}", out.error);
        assert!(
            out.error.contains(contains),
            "{path}: {:?} lacks {contains:?}",
            out.error
        );
    }

    async fn encrypt(&self, key: &str, plaintext: &[u8]) -> String {
        let d = self
            .ok(
                Op::Update,
                &format!("encrypt/{key}"),
                json!({"plaintext": B64.encode(plaintext)}),
            )
            .await;
        d["ciphertext"].as_str().unwrap().to_string()
    }

    async fn decrypt(&self, key: &str, ct: &str) -> Out {
        self.call(
            Op::Update,
            &format!("decrypt/{key}"),
            json!({"ciphertext": ct}),
        )
        .await
    }
}

#[tokio::test]
async fn key_lifecycle_matches_vault_shapes() {
    let h = Harness::new().await;
    let d = h.ok(Op::Update, "keys/k1", json!({})).await;
    assert_eq!(d["type"], "aes256-gcm96");
    assert_eq!(d["latest_version"], 1);
    assert_eq!(d["min_decryption_version"], 1);
    assert_eq!(d["min_encryption_version"], 0);
    assert_eq!(d["supports_encryption"], true);
    assert_eq!(d["supports_signing"], false);
    assert!(d["keys"]["1"].is_i64());
    for k in [
        "deletion_allowed",
        "exportable",
        "derived",
        "auto_rotate_period",
        "imported_key",
        "allow_plaintext_backup",
    ] {
        assert!(d.contains_key(k), "missing {k}");
    }
    assert!(
        !d.contains_key("convergent_encryption"),
        "only derived keys show it"
    );

    let ed = h
        .ok(Op::Update, "keys/ed", json!({"type": "ed25519"}))
        .await;
    assert_eq!(ed["keys"]["1"]["name"], "ed25519");
    assert_eq!(
        B64.decode(ed["keys"]["1"]["public_key"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let ec = h
        .ok(Op::Update, "keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    assert!(
        ec["keys"]["1"]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(ec["keys"]["1"]["name"], "P-256");

    let list = h.ok(Op::List, "keys/", json!({})).await;
    assert_eq!(list["keys"], json!(["ec", "ed", "k1"]));

    h.err(
        "keys/bad",
        json!({"type": "rot13"}),
        400,
        "unknown key type rot13",
    )
    .await;
    h.err("keys/bad", json!({"type": "hmac"}), 400, "invalid key size")
        .await;
    h.err(
        "keys/bad",
        json!({"key_size": 32}),
        400,
        "key_size is not valid",
    )
    .await;
    h.err(
        "keys/bad",
        json!({"auto_rotate_period": "10m"}),
        400,
        "at least an hour",
    )
    .await;
    h.err(
        "keys/bad",
        json!({"type": "ecdsa-p256", "derived": true}),
        400,
        "not supported",
    )
    .await;
    assert_eq!(h.call(Op::Read, "keys/bad", json!({})).await.status, 404);

    // Delete only when allowed.
    let del = h.call(Op::Delete, "keys/k1", json!({})).await;
    assert_eq!(del.status, 400);
    assert!(del.error.contains("deletion is not allowed for this key"));
    h.ok(
        Op::Update,
        "keys/k1/config",
        json!({"deletion_allowed": true}),
    )
    .await;
    assert_eq!(h.call(Op::Delete, "keys/k1", json!({})).await.status, 204);
    assert_eq!(h.call(Op::Read, "keys/k1", json!({})).await.status, 404);
    assert!(h.storage.get("policy/k1").await.unwrap().is_none());
    assert_eq!(h.call(Op::Delete, "keys/k1", json!({})).await.status, 400);
}

#[tokio::test]
async fn encrypt_upserts_and_round_trips_every_cipher() {
    let h = Harness::new().await;
    for kt in [
        "aes256-gcm96",
        "aes128-gcm96",
        "chacha20-poly1305",
        "xchacha20-poly1305",
    ] {
        let name = format!("up-{kt}");
        let d = h
            .ok(
                Op::Update,
                &format!("encrypt/{name}"),
                json!({"plaintext": "aGVsbG8=", "type": kt}),
            )
            .await;
        let ct = d["ciphertext"].as_str().unwrap();
        assert!(ct.starts_with("vault:v1:"), "{ct}");
        let back = h.decrypt(&name, ct).await;
        assert_eq!(back.data["plaintext"], "aGVsbG8=");
        let read = h.ok(Op::Read, &format!("keys/{name}"), json!({})).await;
        assert_eq!(read["type"], kt);
    }
    h.err(
        "encrypt/x",
        json!({"plaintext": "aGk=", "type": "ecdsa-p256"}),
        400,
        "not supported for this operation",
    )
    .await;
    h.err("encrypt/x", json!({}), 400, "missing plaintext to encrypt")
        .await;
    h.err(
        "encrypt/x",
        json!({"plaintext": "!!"}),
        400,
        "illegal base64 data",
    )
    .await;
    // A context on upsert makes a derived key.
    h.ok(
        Op::Update,
        "encrypt/der",
        json!({"plaintext": "aGk=", "context": "Y3R4"}),
    )
    .await;
    assert_eq!(h.ok(Op::Read, "keys/der", json!({})).await["derived"], true);
    // disable_upsert stops creation by encrypt.
    h.ok(Op::Update, "config/keys", json!({"disable_upsert": true}))
        .await;
    h.err(
        "encrypt/nope",
        json!({"plaintext": "aGk="}),
        400,
        "encryption key not found",
    )
    .await;
}

#[tokio::test]
async fn bad_ciphertexts_are_400_never_500() {
    let h = Harness::new().await;
    let ct = h.encrypt("k", b"secret").await;
    let raw = B64.decode(&ct["vault:v1:".len()..]).unwrap();
    let mut tampered = raw.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    let tampered = format!("vault:v1:{}", B64.encode(&tampered));
    for (bad, want) in [
        (tampered.as_str(), "message authentication failed"),
        ("vault:v7:AAAA", "version is too new"),
        ("vault:v1:%%%", "could not decode base64"),
        ("nope", "no prefix"),
        ("vault:vX:AAAA", "version number could not be decoded"),
    ] {
        let out = h.decrypt("k", bad).await;
        assert_eq!(out.status, 400, "{bad}: {}", out.error);
        assert!(out.error.contains(want), "{bad}: {}", out.error);
    }
    assert_eq!(h.decrypt("missing", &ct).await.status, 400);

    // Derived key: the wrong context fails cleanly.
    h.ok(Op::Update, "keys/d", json!({"derived": true})).await;
    let d = h
        .ok(
            Op::Update,
            "encrypt/d",
            json!({"plaintext": "aGk=", "context": "YQ=="}),
        )
        .await;
    let dct = d["ciphertext"].as_str().unwrap();
    h.err(
        "decrypt/d",
        json!({"ciphertext": dct, "context": "Yg=="}),
        400,
        "authentication failed",
    )
    .await;
    h.err(
        "decrypt/d",
        json!({"ciphertext": dct}),
        400,
        "missing 'context'",
    )
    .await;
    h.err(
        "decrypt/d",
        json!({"ciphertext": dct, "context": "!"}),
        400,
        "illegal base64",
    )
    .await;
    let ok = h
        .ok(
            Op::Update,
            "decrypt/d",
            json!({"ciphertext": dct, "context": "YQ=="}),
        )
        .await;
    assert_eq!(ok["plaintext"], "aGk=");
}

#[tokio::test]
async fn batches_report_per_item_errors_with_vaults_status_rules() {
    let h = Harness::new().await;
    h.ok(Op::Update, "keys/b", json!({})).await;
    let out = h
        .call(
            Op::Update,
            "encrypt/b",
            json!({"batch_input": [{"plaintext": "aGk="}, {"plaintext": "!!"}, {"plaintext": "aGk=", "reference": "r3"}]}),
        )
        .await;
    assert_eq!(out.status, 400, "any failed item makes the batch a 400");
    let results = out.data["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results[0]["ciphertext"]
            .as_str()
            .unwrap()
            .starts_with("vault:v1:")
    );
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("illegal base64")
    );
    assert_eq!(results[2]["reference"], "r3");

    // partial_failure_response_code applies when something succeeded.
    let out = h
        .call(
            Op::Update,
            "encrypt/b",
            json!({"batch_input": [{"plaintext": "aGk="}, {"plaintext": "aGk=", "key_version": 9}], "partial_failure_response_code": 207}),
        )
        .await;
    assert_eq!(out.status, 207);

    let good = results[0]["ciphertext"].as_str().unwrap();
    let out = h
        .call(
            Op::Update,
            "decrypt/b",
            json!({"batch_input": [{"ciphertext": good}, {"ciphertext": "bad"}]}),
        )
        .await;
    assert_eq!(out.status, 400);
    let r = out.data["batch_results"].as_array().unwrap();
    assert_eq!(r[0]["plaintext"], "aGk=");
    assert_eq!(r[1]["plaintext"], "");
    assert!(r[1]["error"].as_str().unwrap().contains("no prefix"));

    // Rewrap batches are 200 even with failed items, as in Vault.
    let out = h
        .call(
            Op::Update,
            "rewrap/b",
            json!({"batch_input": [{"ciphertext": good}, {"ciphertext": "bad"}]}),
        )
        .await;
    assert_eq!(out.status, 200);

    h.err(
        "encrypt/b",
        json!({"batch_input": []}),
        400,
        "missing batch input to process",
    )
    .await;
    h.err(
        "encrypt/b",
        json!({"batch_input": "x"}),
        400,
        "must be an array",
    )
    .await;
    h.err(
        "encrypt/b",
        json!({"batch_input": [{"plaintext": 5}]}),
        400,
        "expected type 'string'",
    )
    .await;
    h.err(
        "encrypt/b",
        json!({"batch_input": [{"plaintext": "aGk="}, {"plaintext": "aGk=", "context": "YQ=="}]}),
        400,
        "context should be set either in all the request blocks or in none",
    )
    .await;
}

#[tokio::test]
async fn rotate_rewrap_and_min_decryption_version() {
    let h = Harness::new().await;
    let v1 = h.encrypt("r", b"payload").await;
    let d = h.ok(Op::Update, "keys/r/rotate", json!({})).await;
    assert_eq!(d["latest_version"], 2);
    let rw = h
        .ok(Op::Update, "rewrap/r", json!({"ciphertext": v1}))
        .await;
    assert_eq!(rw["key_version"], 2);
    assert!(
        !rw.contains_key("plaintext"),
        "rewrap never returns plaintext"
    );
    let v2 = rw["ciphertext"].as_str().unwrap().to_string();
    assert!(v2.starts_with("vault:v2:"));

    h.err(
        "keys/r/config",
        json!({"min_decryption_version": 5}),
        400,
        "latest key version is 2",
    )
    .await;
    h.err(
        "keys/r/config",
        json!({"min_decryption_version": -1}),
        400,
        "cannot be negative",
    )
    .await;
    h.err(
        "keys/r/config",
        json!({"min_decryption_version": 2, "min_encryption_version": 1}),
        400,
        "must be greater than or equal to min decryption version",
    )
    .await;
    let cfg = h
        .ok(
            Op::Update,
            "keys/r/config",
            json!({"min_decryption_version": 2}),
        )
        .await;
    assert_eq!(cfg["min_decryption_version"], 2);
    assert_eq!(
        cfg["keys"].as_object().unwrap().len(),
        1,
        "v1 is no longer listed"
    );

    let old = h.decrypt("r", &v1).await;
    assert_eq!(old.status, 400);
    assert_eq!(old.error, policy::ERR_TOO_OLD);
    assert_eq!(
        h.decrypt("r", &v2).await.data["plaintext"],
        B64.encode(b"payload")
    );

    // min_decryption_version 0 is forced to 1 with Vault's warning.
    let out = h
        .call(
            Op::Update,
            "keys/r/config",
            json!({"min_decryption_version": 0}),
        )
        .await;
    assert_eq!(out.status, 200);
    assert!(out.warnings[0].contains("forcing minimum to 1"));

    // Trim: needs min_encryption_version, cannot exceed the minimums.
    h.ok(
        Op::Update,
        "keys/r/config",
        json!({"min_decryption_version": 2, "min_encryption_version": 2}),
    )
    .await;
    h.err(
        "keys/r/trim",
        json!({}),
        400,
        "missing min_available_version",
    )
    .await;
    h.err(
        "keys/r/trim",
        json!({"min_available_version": 3}),
        400,
        "cannot be greater",
    )
    .await;
    let t = h
        .ok(
            Op::Update,
            "keys/r/trim",
            json!({"min_available_version": 2}),
        )
        .await;
    assert_eq!(t["min_available_version"], 2);
    h.err(
        "keys/r/trim",
        json!({"min_available_version": 1}),
        400,
        "cannot be decremented",
    )
    .await;
    h.err(
        "keys/r/config",
        json!({"min_decryption_version": 1}),
        400,
        "min available version",
    )
    .await;
    // The trimmed version is gone from storage, not just hidden.
    let raw = h.storage.get("policy/r").await.unwrap().unwrap();
    let stored: KeyPolicy = serde_json::from_slice(&raw).unwrap();
    assert_eq!(stored.keys.keys().copied().collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn cache_is_invalidated_by_every_key_change() {
    let h = Harness::new().await;
    let v1 = h.encrypt("c", b"x").await;
    assert!(h.backend.cached("c").0.is_some(), "encrypt caches the key");
    h.ok(Op::Update, "keys/c/rotate", json!({})).await;
    assert_eq!(h.backend.cached("c").0.unwrap().latest_version, 2);
    assert!(h.encrypt("c", b"x").await.starts_with("vault:v2:"));
    h.ok(
        Op::Update,
        "keys/c/config",
        json!({"min_decryption_version": 2, "deletion_allowed": true}),
    )
    .await;
    assert_eq!(h.decrypt("c", &v1).await.status, 400);
    assert_eq!(h.call(Op::Delete, "keys/c", json!({})).await.status, 204);
    assert!(h.backend.cached("c").0.is_none());
    assert_eq!(h.decrypt("c", &v1).await.error, "encryption key not found");

    // A second backend on the same storage (a restarted node) reads it back.
    let v = h.encrypt("p", b"persisted").await;
    let fresh = TransitBackend::new();
    let p = fresh.policy(&h.storage, "p").await.unwrap().unwrap();
    assert_eq!(p.decrypt(b"", &v, b"").unwrap().as_slice(), b"persisted");
}

#[tokio::test]
async fn key_material_is_only_stored_through_the_barrier() {
    let physical = Arc::new(MemoryStore::new());
    let barrier = Arc::new(Barrier::new(physical.clone()));
    barrier.initialize(&[3u8; 32]).await.unwrap();
    let storage = StorageView::new(barrier, "logical/m/");
    let mounted = Mounted::new(
        MountEntry::new("transit/", "transit", ""),
        Arc::new(TransitBackend::new()),
        storage.clone(),
    )
    .unwrap();
    let mut req = Request::new(Op::Update, "transit/keys/secretkey");
    req.relative_path = "keys/secretkey".into();
    mounted
        .resolve("keys/secretkey", Op::Update)
        .unwrap()
        .call(&req)
        .await
        .unwrap();
    let plain = storage.get("policy/secretkey").await.unwrap().unwrap();
    let p: KeyPolicy = serde_json::from_slice(&plain).unwrap();
    let key_b64 = B64.encode(p.keys[&1].key.expose());
    let raw = crate::storage::PhysicalStore::get(physical.as_ref(), "logical/m/policy/secretkey")
        .await
        .unwrap()
        .unwrap();
    let raw_text = String::from_utf8_lossy(&raw);
    assert!(
        !raw_text.contains(&key_b64),
        "key material must be sealed by the barrier"
    );
    assert!(
        !raw_text.contains("aes256-gcm96"),
        "the whole policy is sealed"
    );
}

#[tokio::test]
async fn datakey_random_hash_hmac() {
    let h = Harness::new().await;
    h.ok(Op::Update, "keys/dk", json!({})).await;
    for (bits, len) in [(128, 16), (256, 32), (512, 64)] {
        let d = h
            .ok(Op::Update, "datakey/plaintext/dk", json!({"bits": bits}))
            .await;
        let pt = B64.decode(d["plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(pt.len(), len);
        let back = h.decrypt("dk", d["ciphertext"].as_str().unwrap()).await;
        assert_eq!(back.data["plaintext"], d["plaintext"]);
    }
    let w = h.ok(Op::Update, "datakey/wrapped/dk", json!({})).await;
    assert!(!w.contains_key("plaintext"));
    assert_eq!(w["key_version"], 1);
    h.err(
        "datakey/plaintext/dk",
        json!({"bits": 100}),
        400,
        "invalid bit length",
    )
    .await;
    h.err(
        "datakey/other/dk",
        json!({}),
        400,
        "must be 'plaintext' or 'wrapped'",
    )
    .await;
    h.err(
        "datakey/wrapped/none",
        json!({}),
        400,
        "encryption key not found",
    )
    .await;

    let r = h.ok(Op::Update, "random/8", json!({"format": "hex"})).await;
    assert_eq!(r["random_bytes"].as_str().unwrap().len(), 16);
    let r = h.ok(Op::Update, "random", json!({})).await;
    assert_eq!(
        B64.decode(r["random_bytes"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    h.err("random/0", json!({}), 400, "cannot be less than 1")
        .await;
    h.err("random/200000", json!({}), 400, "should be less than")
        .await;
    h.err(
        "random",
        json!({"format": "foo"}),
        400,
        "unsupported encoding format",
    )
    .await;

    let s = h.ok(Op::Update, "hash", json!({"input": "aGVsbG8="})).await;
    assert_eq!(
        s["sum"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let s = h
        .ok(Op::Update, "hash/sha3-256", json!({"input": "aGVsbG8="}))
        .await;
    assert_eq!(
        s["sum"],
        "3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392"
    );
    h.err(
        "hash",
        json!({"input": "aGk=", "algorithm": "md5"}),
        400,
        "unsupported algorithm",
    )
    .await;
    h.err("hash", json!({}), 400, "input missing").await;

    let m = h
        .ok(Op::Update, "hmac/dk", json!({"input": "aGVsbG8="}))
        .await;
    let mac = m["hmac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("vault:v1:"));
    let v = h
        .ok(
            Op::Update,
            "verify/dk",
            json!({"input": "aGVsbG8=", "hmac": mac}),
        )
        .await;
    assert_eq!(v["valid"], true);
    let v = h
        .ok(
            Op::Update,
            "verify/dk",
            json!({"input": "aGk=", "hmac": mac}),
        )
        .await;
    assert_eq!(v["valid"], false);
    h.err(
        "verify/dk",
        json!({"input": "aGk="}),
        400,
        "neither a 'signature' nor an 'hmac'",
    )
    .await;
    h.err(
        "hmac/dk",
        json!({"input": "aGk=", "key_version": 5}),
        400,
        "latest key version is 1",
    )
    .await;
    let b = h
        .ok(
            Op::Update,
            "hmac/dk/sha2-512",
            json!({"batch_input": [{"input": "aGk="}, {"input": "!"}]}),
        )
        .await;
    assert!(
        b["batch_results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("base64")
    );
}

#[tokio::test]
async fn sign_and_verify_with_signing_keys() {
    let h = Harness::new().await;
    h.ok(Op::Update, "keys/ed", json!({"type": "ed25519"}))
        .await;
    h.ok(Op::Update, "keys/ec", json!({"type": "ecdsa-p256"}))
        .await;
    for (key, extra) in [
        ("ed", json!({})),
        ("ec", json!({})),
        ("ec", json!({"marshaling_algorithm": "jws"})),
        ("ec", json!({"hash_algorithm": "sha2-512"})),
        ("ec", json!({"prehashed": true})),
    ] {
        let mut body = json!({"input": "aGVsbG8="});
        let mut verify = extra.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let s = h.ok(Op::Update, &format!("sign/{key}"), body).await;
        assert_eq!(s["key_version"], 1);
        let sig = s["signature"].as_str().unwrap();
        verify["input"] = json!("aGVsbG8=");
        verify["signature"] = json!(sig);
        let v = h
            .ok(Op::Update, &format!("verify/{key}"), verify.clone())
            .await;
        assert_eq!(v["valid"], true, "{key} {extra}");
        verify["input"] = json!("aGk=");
        let v = h.ok(Op::Update, &format!("verify/{key}"), verify).await;
        assert_eq!(v["valid"], false, "{key} {extra}");
    }
    h.err(
        "sign/ec",
        json!({"input": "aGk=", "hash_algorithm": "md5"}),
        400,
        "invalid hash algorithm",
    )
    .await;
    h.err(
        "sign/ec",
        json!({"input": "aGk=", "marshaling_algorithm": "x"}),
        400,
        "invalid marshaling type",
    )
    .await;
    h.err(
        "sign/ec",
        json!({"input": "aGk=", "key_version": 3}),
        400,
        "higher than the latest",
    )
    .await;
    h.err(
        "sign/nokey",
        json!({"input": "aGk="}),
        400,
        "signing key not found",
    )
    .await;
    h.ok(Op::Update, "keys/aes", json!({})).await;
    h.err(
        "sign/aes",
        json!({"input": "aGk="}),
        400,
        "does not support signing",
    )
    .await;
    h.err(
        "verify/ec",
        json!({"input": "aGk=", "signature": "vault:v1:YWJj"}),
        400,
        "supplied signature is invalid",
    )
    .await;
    h.err(
        "verify/ed",
        json!({"input": "aGk=", "signature": "vault:v9:YWJj"}),
        400,
        "version is too new",
    )
    .await;
    h.err(
        "verify/ed",
        json!({"batch_input": [{"input": "aGk=", "signature": "x"}, {"input": "aGk="}]}),
        400,
        "missing 'signature'",
    )
    .await;

    // Derived Ed25519: a public key per context.
    h.ok(
        Op::Update,
        "keys/ded",
        json!({"type": "ed25519", "derived": true}),
    )
    .await;
    let read = h.ok(Op::Read, "keys/ded", json!({})).await;
    assert_eq!(read["keys"]["1"]["public_key"], "");
    let read = h.ok(Op::Read, "keys/ded", json!({"context": "YWJj"})).await;
    let pk = read["keys"]["1"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let s = h
        .ok(
            Op::Update,
            "sign/ded",
            json!({"input": "aGk=", "context": "YWJj"}),
        )
        .await;
    assert_eq!(s["public_key"], pk);
    h.err(
        "sign/ded",
        json!({"input": "aGk="}),
        400,
        "missing 'context'",
    )
    .await;
}

#[tokio::test]
async fn rewrap_batch_moves_every_item_to_the_latest_version() {
    let h = Harness::new().await;
    let mut cts = Vec::new();
    for i in 0..50u8 {
        cts.push(h.encrypt("bulk", &[i; 7]).await);
    }
    h.ok(Op::Update, "keys/bulk/rotate", json!({})).await;
    let items: Vec<Value> = cts.iter().map(|c| json!({"ciphertext": c})).collect();
    let out = h
        .ok(Op::Update, "rewrap/bulk", json!({"batch_input": items}))
        .await;
    let results = out["batch_results"].as_array().unwrap();
    h.ok(
        Op::Update,
        "keys/bulk/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["key_version"], 2);
        let back = h.decrypt("bulk", r["ciphertext"].as_str().unwrap()).await;
        assert_eq!(back.data["plaintext"], B64.encode([i as u8; 7]));
    }
}

#[tokio::test]
async fn responses_name_the_key_versions_used_for_the_audit_log_only() {
    let h = Harness::new().await;
    let v1 = h.encrypt("kek", b"one").await;
    h.ok(Op::Update, "keys/kek/rotate", json!({})).await;
    h.ok(Op::Update, "keys/kek/rotate", json!({})).await;
    let v3 = h.encrypt("kek", b"three").await;

    // Single decrypts: the ciphertext's version, not in the client's data.
    let out = h.decrypt("kek", &v1).await;
    assert_eq!((out.status, out.key_versions.as_slice()), (200, &[1][..]));
    assert!(!out.data.contains_key("key_versions"));
    assert_eq!(h.decrypt("kek", &v3).await.key_versions, vec![3]);
    // A failed decrypt used no key.
    let out = h
        .decrypt("kek", "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(out.status, 400);
    assert!(out.key_versions.is_empty());

    // A batch: every distinct version of the items that decrypted, sorted;
    // a bad item adds nothing.
    let batch = json!({"batch_input": [
        {"ciphertext": v3}, {"ciphertext": v1}, {"ciphertext": v3},
        {"ciphertext": "vault:v2:AAAA"},
    ]});
    let out = h.call(Op::Update, "decrypt/kek", batch.clone()).await;
    assert_eq!(out.key_versions, vec![1, 3]);
    let out = h.call(Op::Update, "rewrap/kek", batch).await;
    assert_eq!(out.key_versions, vec![1, 3]);
    let out = h
        .call(Op::Update, "rewrap/kek", json!({"ciphertext": v1}))
        .await;
    assert_eq!(
        out.key_versions,
        vec![1],
        "rewrap records the input version"
    );

    // Encrypt and datakey are encrypt-side: nothing recorded.
    let out = h
        .call(Op::Update, "encrypt/kek", json!({"plaintext": "AA=="}))
        .await;
    assert!(out.key_versions.is_empty());
    let out = h.call(Op::Update, "datakey/plaintext/kek", json!({})).await;
    assert!(out.key_versions.is_empty());

    // hmac: the version used; verify: the version the HMAC names.
    let input = B64.encode(b"msg");
    let out = h
        .call(
            Op::Update,
            "hmac/kek",
            json!({"input": input, "key_version": 2}),
        )
        .await;
    assert_eq!(out.key_versions, vec![2]);
    let mac = out.data["hmac"].as_str().unwrap().to_string();
    let out = h
        .call(
            Op::Update,
            "verify/kek",
            json!({"input": input, "hmac": mac}),
        )
        .await;
    assert_eq!(
        (out.data["valid"].clone(), out.key_versions),
        (json!(true), vec![2])
    );

    // sign/verify with a signing key.
    h.ok(Op::Update, "keys/sig", json!({"type": "ed25519"}))
        .await;
    h.ok(Op::Update, "keys/sig/rotate", json!({})).await;
    let out = h
        .call(
            Op::Update,
            "sign/sig",
            json!({"batch_input": [{"input": input}, {"input": input}]}),
        )
        .await;
    assert_eq!(out.key_versions, vec![2]);
    let out = h
        .call(
            Op::Update,
            "sign/sig",
            json!({"input": input, "key_version": 1}),
        )
        .await;
    assert_eq!(out.key_versions, vec![1]);
    let sig = out.data["signature"].as_str().unwrap().to_string();
    let out = h
        .call(
            Op::Update,
            "verify/sig",
            json!({"input": input, "signature": sig}),
        )
        .await;
    assert_eq!(out.key_versions, vec![1]);
}

#[test]
fn version_of_reads_the_prefix_as_decrypt_does() {
    assert_eq!(version_of("vault:v7:abc"), Some(7));
    assert_eq!(version_of("vault:v0:abc"), Some(1));
    assert_eq!(version_of("vault:v-1:abc"), None);
    assert_eq!(version_of("vault:vx:abc"), None);
    assert_eq!(version_of("v1:abc"), None);
    let mut v = Vec::new();
    for x in [Some(3), Some(1), Some(3), None] {
        note_version(&mut v, x);
    }
    assert_eq!(v, vec![3, 1]);
}

#[tokio::test]
async fn auto_rotate_period_is_validated_as_openbao_does() {
    let h = Harness::new().await;
    let min = "auto rotate period must be 0 to disable or at least an hour";
    for bad in [json!("1s"), json!("59m"), json!(3599), json!(1)] {
        h.err("keys/k", json!({"auto_rotate_period": bad}), 400, min)
            .await;
    }
    h.err(
        "keys/k",
        json!({"auto_rotate_period": -5}),
        400,
        "cannot provide negative value '-5'",
    )
    .await;
    h.err(
        "keys/k",
        json!({"auto_rotate_period": "1000000000h"}),
        400,
        "invalid duration",
    )
    .await;
    // Nothing was created by the refused requests.
    assert_eq!(h.call(Op::Read, "keys/k", json!({})).await.status, 404);
    for (given, secs) in [
        (json!(0), 0),
        (json!("1h"), 3600),
        (json!(3600), 3600),
        (json!("1h30m"), 5400),
        (json!("8760h"), 31_536_000),
    ] {
        let name = format!("keys/ok{secs}");
        let d = h
            .ok(Op::Update, &name, json!({"auto_rotate_period": given}))
            .await;
        assert_eq!(d["auto_rotate_period"], json!(secs));
    }
    // The same rules on config; a refused change leaves the key as it was.
    h.err(
        "keys/ok3600/config",
        json!({"auto_rotate_period": "30m"}),
        400,
        min,
    )
    .await;
    h.err(
        "keys/ok3600/config",
        json!({"auto_rotate_period": -3600}),
        400,
        "cannot provide negative value",
    )
    .await;
    let d = h.ok(Op::Read, "keys/ok3600", json!({})).await;
    assert_eq!(d["auto_rotate_period"], json!(3600));
    let d = h
        .ok(
            Op::Update,
            "keys/ok3600/config",
            json!({"auto_rotate_period": "2h"}),
        )
        .await;
    assert_eq!(d["auto_rotate_period"], json!(7200));
}
