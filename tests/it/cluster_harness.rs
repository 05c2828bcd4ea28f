//! The one cluster harness of the integration tests: `n` real `custos
//! server --config` processes on loopback, node1 initializing the cluster
//! and the others joining through `retry_join` and unsealed with node1's
//! key (issue 19's tests: `cluster`, `cluster_ha`, `cluster_faults`,
//! `cluster_audit`, `standby_reads`).
//!
//! Options ([`ClusterOptions`]): a file audit device on every node (its own
//! file under the node's directory), extra `storage "raft"` lines (the
//! snapshot knobs), the client's timeout, and `proxied`: every node behind
//! a fault-injecting proxy of [`crate::netfault`] on its API and cluster
//! ports, advertising the proxies' ports, so [`TestCluster::faults`] can
//! cut links between nodes. Each node's directory holds its config
//! (`server.hcl`), Raft data (`raft/`) and audit log (`audit/`); the
//! cluster's temp dir goes when the cluster is dropped, and every server
//! process with it (`harness::Server`'s drop).
//!
//! `tests/it/cluster_tls.rs` keeps its own nodes: HTTPS API listeners with
//! CA files and joins by API, a configuration this harness does not write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, Server, free_port, get, wait_for};
use crate::netfault::{Faults, Proxy};

/// How a [`TestCluster`] is built.
#[derive(Debug, Clone)]
pub(crate) struct ClusterOptions {
    /// A file audit device on every node.
    pub(crate) audit: bool,
    /// Every node behind fault-injecting proxies (see the module docs).
    pub(crate) proxied: bool,
    /// Extra lines inside `storage "raft" { }`.
    pub(crate) raft_extra: String,
    /// The test client's timeout.
    pub(crate) client_timeout: Duration,
    /// Start node1 alone: the test boots the others later
    /// ([`TestCluster::join`]).
    pub(crate) lone_start: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            audit: false,
            proxied: false,
            raft_extra: String::new(),
            client_timeout: Duration::from_secs(10),
            lone_start: false,
        }
    }
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// The node's own listeners.
    pub(crate) api: u16,
    cluster: u16,
    /// What it advertises: the proxies' ports, or its own.
    api_adv: u16,
    cluster_adv: u16,
    join: Option<u16>,
    raft_extra: String,
    /// The proxies' fault table and this node's index in it.
    faults: Option<(Arc<Faults>, usize)>,
    pub(crate) server: Option<Server>,
}

impl Node {
    fn config(&self, audit_options: Option<&str>) -> PathBuf {
        let retry = self
            .join
            .map(|p| {
                format!("  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{p}\"\n  }}\n")
            })
            .unwrap_or_default();
        let audit = audit_options
            .map(|extra| {
                format!(
                    "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n    {extra}\n  }}\n}}\n",
                    self.dir.join("audit").join("audit.log").display()
                )
            })
            .unwrap_or_default();
        let text = format!(
            r#"
api_addr     = "http://127.0.0.1:{api_adv}"
cluster_addr = "http://127.0.0.1:{cluster_adv}"
storage "raft" {{
  path    = "{raft}"
  node_id = "{name}"
{raft_extra}
{retry}}}
listener "tcp" {{
  address         = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}
{audit}"#,
            api = self.api,
            cluster = self.cluster,
            api_adv = self.api_adv,
            cluster_adv = self.cluster_adv,
            name = self.name,
            raft = self.dir.join("raft").display(),
            raft_extra = self.raft_extra,
        );
        let cfg = self.dir.join("server.hcl");
        std::fs::write(&cfg, text).expect("config");
        cfg
    }

    /// Start the server (a file audit device with these extra options when
    /// `Some`); the proxies learn its process id.
    pub(crate) fn start(&mut self, audit_options: Option<&str>) {
        let cfg = self.config(audit_options);
        let s = harness::start_with_config(&self.dir, &cfg);
        if let Some((faults, i)) = &self.faults {
            faults.set_pid(*i, Some(s.child.id()));
        }
        self.server = Some(s);
    }

    /// SIGTERM, as an operator's restart: the server shuts down gracefully
    /// (a leader hands leadership over first).
    pub(crate) fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &s.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(s.child.try_wait(), Ok(Some(_))) {
                    self.forget_pid();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            s.kill9();
        }
        self.forget_pid();
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
        self.forget_pid();
    }

    fn forget_pid(&self) {
        if let Some((faults, i)) = &self.faults {
            faults.set_pid(*i, None);
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v1/{path}", self.api)
    }
}

/// A cluster of real server processes.
pub(crate) struct TestCluster {
    _tmp: tempfile::TempDir,
    pub(crate) nodes: Vec<Node>,
    /// Cuts and heals links between proxied nodes.
    pub(crate) faults: Arc<Faults>,
    _proxies: Vec<Proxy>,
    audit_options: Option<&'static str>,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) c: reqwest::Client,
}

impl TestCluster {
    /// Node `i`'s own metrics, Prometheus text (the root token's view).
    pub(crate) async fn metrics(&self, i: usize) -> String {
        let url = self.nodes[i].url(crate::harness::METRICS_PATH);
        crate::harness::prometheus_text(&self.c, &url, &self.token).await
    }

    /// `n` nodes, with a file audit device on each when `audit`.
    pub(crate) async fn start(n: usize, audit: bool) -> TestCluster {
        Self::start_with(
            n,
            ClusterOptions {
                audit,
                ..ClusterOptions::default()
            },
        )
        .await
    }

    /// `n` nodes as `opts` says: node1 initializes, the others join through
    /// `retry_join` and are unsealed with node1's key; every node a voter.
    pub(crate) async fn start_with(n: usize, opts: ClusterOptions) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = reqwest::Client::builder()
            .timeout(opts.client_timeout)
            .build()
            .expect("client");
        let faults = Arc::new(Faults::default());
        let mut proxies = Vec::new();
        let api1 = free_port();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let dir = tmp.path().join(&name);
            std::fs::create_dir_all(&dir).expect("dir");
            let api = if i == 0 { api1 } else { free_port() };
            let cluster = free_port();
            let (api_adv, cluster_adv) = if opts.proxied {
                let a = Proxy::start(faults.clone(), i, api).await;
                let cl = Proxy::start(faults.clone(), i, cluster).await;
                let ports = (a.port, cl.port);
                proxies.push(a);
                proxies.push(cl);
                ports
            } else {
                (api, cluster)
            };
            nodes.push(Node {
                name,
                dir,
                api,
                cluster,
                api_adv,
                cluster_adv,
                join: (i > 0).then_some(api1),
                raft_extra: opts.raft_extra.clone(),
                faults: opts.proxied.then(|| (faults.clone(), i)),
                server: None,
            });
        }
        let mut cl = TestCluster {
            _tmp: tmp,
            nodes,
            faults,
            _proxies: proxies,
            audit_options: opts.audit.then_some(""),
            key: String::new(),
            token: String::new(),
            c,
        };
        cl.boot(0);
        let s = cl.nodes[0].server.as_mut().expect("node1");
        harness::init_unseal_mount(s).await;
        (cl.key, cl.token) = (s.unseal_key.clone(), s.root_token.clone());
        if opts.lone_start {
            return cl;
        }
        for i in 1..n {
            cl.join(i).await;
        }
        let voters = cl.voters().await;
        assert_eq!(voters, n, "every node is a voter");
        cl
    }

    /// Boot node `i`, which joins through `retry_join`, and unseal it.
    pub(crate) async fn join(&mut self, i: usize) {
        self.boot(i);
        self.unseal_when_found(i).await;
    }

    /// Start node `i` with the cluster's audit setting.
    pub(crate) fn boot(&mut self, i: usize) {
        let audit = self.audit_options;
        self.nodes[i].start(audit);
    }

    pub(crate) fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// `sys/unseal` on node `i` with the cluster's key; the answer.
    pub(crate) async fn unseal(&self, i: usize) -> Value {
        self.c
            .put(self.nodes[i].url("sys/unseal"))
            .json(&json!({"key": self.key}))
            .send()
            .await
            .expect("unseal")
            .json()
            .await
            .expect("unseal json")
    }

    pub(crate) async fn wait_unsealed(&self, i: usize) {
        let url = self.nodes[i].url("sys/seal-status");
        wait_for("a node to unseal", Duration::from_secs(120), || async {
            let (_, v) = get(&self.c, &url, "").await?;
            (v["sealed"] == json!(false)).then_some(())
        })
        .await;
    }

    /// Wait until node `i` reports the cluster's seal, unseal it, wait
    /// until it is unsealed.
    pub(crate) async fn unseal_when_found(&self, i: usize) {
        let url = self.nodes[i].url("sys/seal-status");
        wait_for(
            "a joining node to find the cluster",
            Duration::from_secs(60),
            || async {
                let (_, v) = get(&self.c, &url, "").await?;
                (v["n"] == json!(1)).then_some(())
            },
        )
        .await;
        let r = self.unseal(i).await;
        assert!(r["errors"].is_null(), "{r}");
        self.wait_unsealed(i).await;
    }

    /// Voters listed by the leader (through any live node).
    pub(crate) async fn voters(&self) -> usize {
        wait_for("the voters", Duration::from_secs(60), || async {
            for n in self.nodes.iter().filter(|n| n.server.is_some()) {
                let (status, v) = get(
                    &self.c,
                    &n.url("sys/storage/raft/configuration"),
                    &self.token,
                )
                .await?;
                let servers = v["data"]["config"]["servers"].as_array()?;
                if status == 200 && servers.len() == self.nodes.len() {
                    return Some(servers.iter().filter(|s| s["voter"] == json!(true)).count());
                }
            }
            None
        })
        .await
    }

    /// The index of the live node that says it leads (waits for one).
    pub(crate) async fn leader(&self) -> usize {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].server.is_some())
            .collect();
        self.leader_among(&live).await
    }

    /// The node among `among` that says it leads (waits for one).
    pub(crate) async fn leader_among(&self, among: &[usize]) -> usize {
        wait_for("a leader", Duration::from_secs(30), || async {
            for &i in among {
                if let Some((_, v)) = get(&self.c, &self.nodes[i].url("sys/leader"), "").await
                    && v["is_self"] == json!(true)
                {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// A KV v2 write of `{"n": n}` through node `i`: status and body
    /// (status 0 when the request itself failed).
    pub(crate) async fn write(&self, i: usize, path: &str, n: usize) -> (u16, String) {
        match self
            .c
            .post(self.nodes[i].url(&format!("secret/data/{path}")))
            .header("X-Vault-Token", &self.token)
            .json(&json!({"data": {"n": n}}))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// A write through node `i`, retried until acknowledged.
    pub(crate) async fn write_until_acked(&self, i: usize, path: &str, n: usize) {
        wait_for("an acknowledged write", Duration::from_secs(60), || async {
            (self.write(i, path, n).await.0 == 200).then_some(())
        })
        .await;
    }

    /// Acknowledged writes that do not read back with their value through
    /// node `i`.
    pub(crate) async fn missing(&self, i: usize, acked: &BTreeMap<String, usize>) -> Vec<String> {
        let mut missing = Vec::new();
        for (path, n) in acked {
            let got = get(
                &self.c,
                &self.nodes[i].url(&format!("secret/data/{path}")),
                &self.token,
            )
            .await;
            if !matches!(&got, Some((200, v)) if v["data"]["data"]["n"] == json!(n)) {
                missing.push(format!("{path}: {got:?}"));
            }
        }
        missing
    }

    /// [`Self::missing`], and writes applied twice: each must read back as
    /// version 1.
    pub(crate) async fn missing_or_doubled(
        &self,
        i: usize,
        acked: &BTreeMap<String, usize>,
    ) -> Vec<String> {
        let mut bad = self.missing(i, acked).await;
        for path in acked.keys() {
            if bad.iter().any(|b| b.starts_with(&format!("{path}:"))) {
                continue;
            }
            let meta = get(
                &self.c,
                &self.nodes[i].url(&format!("secret/metadata/{path}")),
                &self.token,
            )
            .await;
            if !matches!(&meta, Some((200, v)) if v["data"]["current_version"] == json!(1)) {
                bad.push(format!("{path} (metadata): {meta:?}"));
            }
        }
        bad
    }

    /// `sys/leader`'s Raft indexes of node `i`: (committed, applied).
    pub(crate) async fn indexes(&self, i: usize) -> Option<(u64, u64)> {
        let (_, v) = get(&self.c, &self.nodes[i].url("sys/leader"), "").await?;
        Some((
            v["raft_committed_index"].as_u64()?,
            v["raft_applied_index"].as_u64()?,
        ))
    }

    /// Wait until every live node has applied at least the leader's
    /// committed index as it is now.
    pub(crate) async fn converged(&self, leader: usize) {
        let (target, _) = wait_for("the leader's index", Duration::from_secs(30), || {
            self.indexes(leader)
        })
        .await;
        for i in 0..self.nodes.len() {
            if self.nodes[i].server.is_none() {
                continue;
            }
            wait_for(
                "a node to apply the leader's log",
                Duration::from_secs(120),
                || async {
                    let (_, applied) = self.indexes(i).await?;
                    (applied >= target).then_some(())
                },
            )
            .await;
        }
    }
}
