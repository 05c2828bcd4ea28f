//! A source cluster with known contents, shipped as the snapshot agent ships
//! it: the one place the drill tests get their snapshots from.
//!
//! [`SourceCluster::start`] runs a dev server (127.0.0.1:0, own temp dir) and
//! writes: KV v2 `secret/` with several versions per key including a
//! deleted and a destroyed version, plus `bulk` extra keys; a KV v1 mount
//! `kv1/`; a transit key rotated twice and a derived one; a policy; a
//! token. [`SourceCluster::ship`] takes a snapshot in-process
//! (`raft_snapshot::export`), uploads it through a [`Destination`] under
//! `<prefix>/vault-snapshot-<nanos>.snap` and writes its [`Manifest`] last,
//! as the agent does. When the snapshot agent can be driven from tests,
//! `ship` is what to replace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use custos_core::core::Core;
use custos_core::logical::{Operation, Request, Secret};
use custos_core::router::MountEntry;
use custos_core::server::{DevHandle, DevOptions, RunningServer};
use custos_dr::Destination;
use custos_dr::layout;
use custos_dr::manifest::{MANIFEST_VERSION, Manifest};
use serde_json::{Value, json};

pub struct SourceCluster {
    pub server: RunningServer,
    pub handle: DevHandle,
    _dir: tempfile::TempDir,
}

/// What [`SourceCluster::start`] wrote, for the assertions.
pub const KV2_NAMED: u64 = 3;
pub const KV1_KEYS: u64 = 3;

impl SourceCluster {
    /// Start and fill a source cluster; `bulk` extra KV v2 keys of one
    /// version each.
    pub async fn start(bulk: usize) -> SourceCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = DevOptions {
            root_token_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: Some(dir.path().join("source")),
        };
        let (server, handle) = custos_core::server::start_dev(&opts)
            .await
            .expect("start source cluster");
        let c = SourceCluster {
            server,
            handle,
            _dir: dir,
        };
        c.fill(bulk).await;
        c
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.server.core
    }

    pub async fn call(&self, op: Operation, path: &str, data: Value) -> Value {
        let mut req = Request::new(op, path);
        req.client_token = Some(Secret::new(self.handle.root_token.clone()));
        if let Value::Object(m) = data {
            req.data = m;
        }
        let r = self
            .core()
            .handle(req)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        Value::Object(r.data.unwrap_or_default())
    }

    async fn put(&self, path: &str, data: Value) -> Value {
        self.call(Operation::Update, path, data).await
    }

    async fn fill(&self, bulk: usize) {
        // KV v2: app/db has v1 destroyed, v2 deleted, v3 live.
        for v in 1..=3 {
            self.put(
                "secret/data/app/db",
                json!({"data": {"password": format!("pw-{v}"), "user": "app"}}),
            )
            .await;
        }
        self.put("secret/destroy/app/db", json!({"versions": [1]}))
            .await;
        self.put("secret/delete/app/db", json!({"versions": [2]}))
            .await;
        self.put("secret/data/app/api", json!({"data": {"key": "k1"}}))
            .await;
        self.put("secret/data/app/api", json!({"data": {"key": "k2"}}))
            .await;
        self.put("secret/data/team/x/y", json!({"data": {"z": "1"}}))
            .await;
        for i in 0..bulk {
            self.put(
                &format!("secret/data/bulk/s{i:06}"),
                json!({"data": {"value": format!("v{i}")}}),
            )
            .await;
        }
        // KV v1.
        let mut kv1 = MountEntry::new("kv1/", "kv", "kv v1");
        kv1.options.insert("version".into(), "1".into());
        self.core().mount(kv1).await.expect("mount kv1/");
        for k in ["a", "cfg/b", "cfg/deep/c"] {
            self.put(&format!("kv1/{k}"), json!({"v": k})).await;
        }
        // Transit: one key rotated twice, one derived (no canary).
        self.core()
            .mount(MountEntry::new("transit/", "transit", "transit"))
            .await
            .expect("mount transit/");
        self.put("transit/keys/orders", json!({})).await;
        self.put("transit/keys/orders/rotate", json!({})).await;
        self.put("transit/keys/orders/rotate", json!({})).await;
        self.put("transit/keys/tenant", json!({"derived": true}))
            .await;
        // A policy and a token.
        self.put(
            "sys/policies/acl/app-read",
            json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"}),
        )
        .await;
        self.put(
            "auth/token/create",
            json!({"policies": ["app-read"], "ttl": "768h"}),
        )
        .await;
    }

    /// Take a snapshot and ship it to `dest` under `prefix` (the key
    /// prefix inside the destination), manifest last. Returns the snapshot
    /// key and its manifest.
    pub async fn ship(&self, dest: &dyn Destination, prefix: &str) -> (String, Manifest) {
        let started = time::OffsetDateTime::now_utc();
        let key = layout::snapshot_key(prefix, layout::DEFAULT_FILE_PREFIX, SystemTime::now());
        let export = custos_core::raft_snapshot::export(self.core())
            .await
            .expect("export");
        let info = export.info.clone();
        let uploaded = dest.upload(&key, export.archive).await.expect("upload");
        let state = export.digest.await.expect("digest task").expect("digest");
        let canaries = custos_core::engines::transit::canary::make_canaries(self.core())
            .await
            .expect("canaries");
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            snapshot_key: key.clone(),
            sha256: uploaded.sha256,
            bytes: uploaded.bytes,
            snapshot_id: info.snapshot_id,
            raft_index: info.last_log_index,
            raft_term: info.last_log_term,
            created: fmt(started),
            completed: fmt(time::OffsetDateTime::now_utc()),
            cluster_name: "source".into(),
            node: self.core().node_label(),
            config: "fixture".into(),
            custos_version: env!("CARGO_PKG_VERSION").into(),
            state,
            transit_canaries: canaries,
        };
        self.write_manifest(dest, &manifest).await;
        (key, manifest)
    }

    /// Write `n` one-version KV v2 secrets `<base>/s<i>`, 64 at a time.
    pub async fn put_many(&self, base: &str, n: usize) {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|i| async move {
                self.put(
                    &format!("{base}/s{i:07}"),
                    json!({"data": {"value": format!("value-{i}"), "owner": "bulk"}}),
                )
                .await;
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }

    /// Create a token with `ttl`.
    pub async fn create_token(&self, ttl: &str) {
        self.put(
            "auth/token/create",
            json!({"policies": ["default"], "ttl": ttl}),
        )
        .await;
    }

    /// Write one KV v2 secret (a later change between two snapshots).
    pub async fn put_test_secret(&self, path: &str, value: &str) {
        self.put(path, json!({"data": {"v": value}})).await;
    }

    pub async fn write_manifest(&self, dest: &dyn Destination, m: &Manifest) {
        dest.put_small(&layout::manifest_key(&m.snapshot_key), m.to_bytes().into())
            .await
            .expect("manifest");
    }

    /// Write the unseal key to `dir/keys.txt` (one base64 share per line).
    pub fn keys_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("keys.txt");
        std::fs::write(&p, format!("{}\n", self.handle.unseal_key)).expect("keys file");
        p
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}
