//! Start, initialise and stop the servers being compared.
//!
//! Each server gets its own data directory (under `target/bench/`, on the
//! same disk a deployment would use), a config file with persistent Raft
//! storage and (by default) a file audit device, and free ports. For
//! `compare --audit-modes` a Custos server is started per [`AuditSetup`]: no
//! audit device, the file device, or the file device plus the `kafka` and
//! `elasticsearch` sinks at addresses the caller gives (the sinks ship the
//! file device's log in the background; [`Server::sink_backlog`] reads how far
//! they got from `GET sys/audit?backlog=true`). It is then initialised
//! with one key share, unsealed, and given kv-v2 at `secret/` and transit at
//! `transit/` through the HTTP API, exactly as an operator would. Servers are
//! child processes of the harness; [`Server`]'s `Drop` kills exactly that
//! child, so an error or Ctrl-C path never leaves one running.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::VaultClient;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Custos,
    OpenBao,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Custos => "custos",
            Kind::OpenBao => "openbao",
        }
    }

    /// The durability each side runs at by default, stated in every report.
    pub fn durability(self) -> &'static str {
        match self {
            Kind::Custos => {
                "Raft (openraft; segment-file log, redb state machine): every log append fsync'd before commit; \
                 file audit device: group-committed, fsync'd before the response (fail closed)"
            }
            Kind::OpenBao => {
                "Raft (hashicorp/raft, BoltDB log): fsync'd per batch before commit; \
                 file audit device: written, not fsync'd (OpenBao default)"
            }
        }
    }
}

/// Kafka topic the `sinks` mode produces to (it must exist, or the cluster
/// must auto-create topics; `scripts/bench.sh` creates it on the tansu it starts).
pub const BENCH_TOPIC: &str = "custos-audit-bench";
/// Elasticsearch base index of the `sinks` mode (daily indices `<index>-YYYY.MM.DD`).
pub const BENCH_INDEX: &str = "custos-audit-bench";

/// Which audit devices a Custos server of `compare --audit-modes` runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// No audit device at all.
    Off,
    /// The file device (what the default comparison runs).
    File,
    /// The file device plus the `kafka` and `elasticsearch` sinks.
    Sinks,
}

impl AuditMode {
    pub fn name(self) -> &'static str {
        match self {
            AuditMode::Off => "off",
            AuditMode::File => "file",
            AuditMode::Sinks => "sinks",
        }
    }

    /// The audit device paths `sys/audit` must list in this mode.
    pub fn device_paths(self) -> &'static [&'static str] {
        match self {
            AuditMode::Off => &[],
            AuditMode::File => &["file/"],
            AuditMode::Sinks => &["file/", "kafka/", "es/"],
        }
    }
}

impl fmt::Display for AuditMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AuditMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(AuditMode::Off),
            "file" => Ok(AuditMode::File),
            "sinks" => Ok(AuditMode::Sinks),
            other => Err(format!(
                "unknown audit mode {other:?} (one of: off, file, sinks)"
            )),
        }
    }
}

/// Where the `sinks` mode ships to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkAddrs {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    pub kafka_brokers: String,
    /// Elasticsearch (API) base URL, `http(s)://host:port`.
    pub es_url: String,
}

/// The audit devices of one server's config.
#[derive(Clone, Debug)]
pub enum AuditSetup {
    Off,
    File,
    Sinks(SinkAddrs),
}

impl AuditSetup {
    pub fn mode(&self) -> AuditMode {
        match self {
            AuditSetup::Off => AuditMode::Off,
            AuditSetup::File => AuditMode::File,
            AuditSetup::Sinks(_) => AuditMode::Sinks,
        }
    }
}

/// The durability Custos runs at in `mode`, stated in every report.
pub fn custos_durability(mode: AuditMode) -> String {
    match mode {
        AuditMode::Off => "Raft (openraft; segment-file log, redb state machine): every log append fsync'd before commit; \
                           no audit device"
            .into(),
        AuditMode::File => Kind::Custos.durability().into(),
        AuditMode::Sinks => format!(
            "{}; kafka + elasticsearch sinks ship that fsync'd log in the background \
             (acks=all / per-item _bulk results; not on the request path)",
            Kind::Custos.durability()
        ),
    }
}

/// One sink's backlog as `GET sys/audit?backlog=true` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkBacklog {
    /// Device path, e.g. `kafka/`.
    pub path: String,
    /// Device type (`kafka`, `elasticsearch`).
    pub kind: String,
    /// The last shipment or health probe succeeded.
    pub up: bool,
    /// Records in the local log not yet acknowledged by the sink.
    pub records: u64,
    pub bytes: u64,
    pub lag_seconds: f64,
    /// Last acknowledged sequence number.
    pub checkpoint: u64,
    /// Last durable sequence number of the local log.
    pub durable_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The sinks' backlogs from a `sys/audit?backlog=true` reply (devices whose
/// backlog has `records`; file devices report their log state instead).
pub fn parse_sink_backlog(reply: &Value) -> Vec<SinkBacklog> {
    let devices = match reply.get("data") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => match reply.as_object() {
            Some(m) => m,
            None => return Vec::new(),
        },
    };
    let mut out: Vec<SinkBacklog> = devices
        .iter()
        .filter_map(|(path, d)| {
            let b = d.get("backlog")?;
            b.get("records")?;
            let n = |k: &str| b.get(k).and_then(Value::as_u64).unwrap_or(0);
            Some(SinkBacklog {
                path: path.clone(),
                kind: d
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                up: b.get("up").and_then(Value::as_bool).unwrap_or(false),
                records: n("records"),
                bytes: n("bytes"),
                lag_seconds: b.get("lag_seconds").and_then(Value::as_f64).unwrap_or(0.0),
                checkpoint: n("checkpoint"),
                durable_seq: n("durable_seq"),
                last_error: b
                    .get("last_error")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A running, initialised, unsealed server.
pub struct Server {
    pub kind: Kind,
    /// Name in tables and reports (`custos`, `openbao`, `custos-sinks`, ...).
    pub label: String,
    /// The audit devices it runs with.
    pub audit: AuditMode,
    /// Its durability, as stated in the report.
    pub durability: String,
    pub addr: String,
    pub token: String,
    /// The one unseal key share from `sys/init` (base64), for `snapshot`'s
    /// restore into another server, which needs the source's key.
    pub unseal_key: String,
    pub pid: u32,
    pub version: String,
    pub dir: PathBuf,
    /// `None` when the transit mount works; otherwise the server's answer.
    pub transit_missing: Option<String>,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn client(&self, pool: usize) -> Result<VaultClient> {
        VaultClient::new(&self.addr, &self.token, pool)
    }

    pub fn rss(&self) -> Option<u64> {
        crate::sysinfo::proc_rss(self.pid)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// Every sink's backlog (`GET sys/audit?backlog=true`; empty without sinks).
    pub async fn sink_backlog(&self) -> Result<Vec<SinkBacklog>> {
        let r = self.client(1)?.get("sys/audit?backlog=true").await?;
        if !r.ok() {
            bail!(
                "GET sys/audit?backlog=true: {} {}",
                r.status,
                r.snippet(300)
            );
        }
        let v: Value =
            serde_json::from_slice(&r.body).context("sys/audit?backlog=true: reply is not JSON")?;
        Ok(parse_sink_backlog(&v))
    }
}

pub(crate) fn log_tail(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A port `p` such that `p` and `p + 1` are both free (OpenBao binds its
/// cluster listener on the API port + 1).
pub(crate) fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair found")
}

fn custos_config(dir: &Path, port: u16, audit: &AuditSetup) -> String {
    let what = match audit {
        AuditSetup::Off => "no audit device",
        AuditSetup::File => "a file audit device",
        AuditSetup::Sinks(_) => "a file audit device shipped to Kafka and Elasticsearch",
    };
    let devices = match audit {
        AuditSetup::Off => String::new(),
        AuditSetup::File => file_device(dir),
        AuditSetup::Sinks(s) => format!(
            r#"{file}
audit "kafka" "kafka" {{
  options {{
    brokers = "{brokers}"
    topic   = "{BENCH_TOPIC}"
  }}
}}

audit "elasticsearch" "es" {{
  options {{
    url   = "{url}"
    index = "{BENCH_INDEX}"
  }}
}}
"#,
            file = file_device(dir),
            brokers = hcl_escape(&s.kafka_brokers),
            url = hcl_escape(&s.es_url),
        ),
    };
    format!(
        r#"# Written by custos-bench: persistent Raft storage and {what}.
disable_mlock = true
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cport}"

storage "raft" {{
  path    = "{raft}"
  node_id = "bench1"
}}

listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
{devices}"#,
        cport = port + 1,
        raft = dir.join("raft").display(),
    )
}

/// Custos's file device: a log directory under the server's directory.
fn file_device(dir: &Path) -> String {
    format!(
        r#"
audit "file" "file" {{
  options {{
    file_path = "{}/"
  }}
}}
"#,
        dir.join("audit").display()
    )
}

/// A value inside an HCL double-quoted string.
pub(crate) fn hcl_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// OpenBao's config. The audit log path is relative to the server's
/// directory (its working directory): OpenBao checks a config-declared
/// device against the mount table, and after `snapshot-force` that table is
/// the source server's, so an absolute path naming the source's directory
/// would fail the restored server's unseal (`custos-bench snapshot`).
fn openbao_config(dir: &Path, port: u16) -> String {
    format!(
        r#"# Written by custos-bench: persistent Raft storage and a file audit device.
disable_mlock = true
ui            = false
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cport}"

storage "raft" {{
  path    = "{raft}"
  node_id = "bench1"
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
"#,
        cport = port + 1,
        raft = dir.join("raft").display(),
    )
}

/// Start `kind` from `bin` in a fresh directory under `parent`, then
/// initialise, unseal and mount `secret/` (kv-v2) and `transit/`.
/// What `bin --version` (Custos) or `bin version` (OpenBao) prints, trimmed.
pub(crate) fn version_of(kind: Kind, bin: &Path) -> String {
    Command::new(bin)
        .arg(if kind == Kind::Custos {
            "--version"
        } else {
            "version"
        })
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub async fn start(kind: Kind, bin: &Path, parent: &Path) -> Result<Server> {
    start_as(kind, kind.name(), bin, parent, &AuditSetup::File).await
}

/// [`start`] with a label (also the directory name under `parent`) and the
/// audit devices to configure (OpenBao always gets its file device).
pub async fn start_as(
    kind: Kind,
    label: &str,
    bin: &Path,
    parent: &Path,
    audit: &AuditSetup,
) -> Result<Server> {
    start_with_env(kind, label, bin, parent, audit, &[]).await
}

/// The OpenTelemetry variables a server started here never inherits from
/// the shell, so a run measures only what its mode sets.
pub(crate) const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
];

/// [`start_as`] with extra environment variables for the server process
/// (`compare --trace-modes` sets the OTEL_* ones).
pub async fn start_with_env(
    kind: Kind,
    label: &str,
    bin: &Path,
    parent: &Path,
    audit: &AuditSetup,
    env: &[(&str, String)],
) -> Result<Server> {
    let audit = match kind {
        Kind::Custos => audit.clone(),
        Kind::OpenBao => AuditSetup::File,
    };
    let dir = parent.join(label);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing old {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("raft"))?;
    fs::create_dir_all(dir.join("audit"))?;
    let port = free_port_pair()?;
    let cfg = dir.join("server.hcl");
    fs::write(
        &cfg,
        match kind {
            Kind::Custos => custos_config(&dir, port, &audit),
            Kind::OpenBao => openbao_config(&dir, port),
        },
    )?;
    let version = version_of(kind, bin);
    let log = fs::File::create(dir.join("server.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("server");
    match kind {
        Kind::Custos => cmd.arg("--config").arg(&cfg),
        Kind::OpenBao => cmd.arg(format!("-config={}", cfg.display())),
    };
    for v in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"]
        .iter()
        .chain(OTEL_VARS)
    {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let child = cmd
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} ({})", kind.name(), bin.display()))?;
    let durability = match kind {
        Kind::Custos => custos_durability(audit.mode()),
        Kind::OpenBao => kind.durability().into(),
    };
    let mut server = Server {
        kind,
        label: label.into(),
        audit: audit.mode(),
        durability,
        addr: format!("http://127.0.0.1:{port}"),
        token: String::new(),
        unseal_key: String::new(),
        pid: child.id(),
        version,
        dir,
        transit_missing: None,
        child,
    };
    bootstrap(&mut server).await.with_context(|| {
        format!(
            "{label} did not come up; its log ends:\n{}",
            server.log_tail()
        )
    })?;
    Ok(server)
}

async fn wait_until<F, Fut>(server: &mut Server, what: &str, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if probe().await {
            return Ok(());
        }
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited ({status}) while waiting for {what}",
                server.kind.name()
            );
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bootstrap(s: &mut Server) -> Result<()> {
    let anon = VaultClient::new(&s.addr, "", 2)?;
    let a = anon.clone();
    wait_until(s, "the listener", || {
        let a = a.clone();
        async move { a.get("sys/seal-status").await.is_ok_and(|r| r.ok()) }
    })
    .await?;
    let init = anon
        .post_json(
            "sys/init",
            &json!({ "secret_shares": 1, "secret_threshold": 1 }),
        )
        .await?;
    let key = init["keys_base64"][0]
        .as_str()
        .or_else(|| init["keys"][0].as_str())
        .ok_or_else(|| anyhow!("sys/init: no key in reply"))?
        .to_string();
    s.token = init["root_token"]
        .as_str()
        .ok_or_else(|| anyhow!("sys/init: no root_token in reply"))?
        .to_string();
    anon.post_json("sys/unseal", &json!({ "key": key })).await?;
    s.unseal_key = key;
    let a = anon.clone();
    wait_until(s, "active and unsealed (sys/health 200)", || {
        let a = a.clone();
        async move { a.get("sys/health").await.is_ok_and(|r| r.status == 200) }
    })
    .await?;

    let c = s.client(4)?;
    mount(
        &c,
        "secret",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await
    .context("mounting kv-v2 at secret/")?;
    s.transit_missing = mount(&c, "transit", json!({ "type": "transit" }))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    if let Some(why) = &s.transit_missing {
        eprintln!(
            "  {}: transit not available ({why}); transit workloads will be skipped",
            s.kind.name()
        );
    }

    // The audit devices must be exactly the ones asked for: by default both
    // servers run with a file device; `--audit-modes` varies Custos's.
    let audit = c.get("sys/audit").await?;
    let listed: Vec<String> = serde_json::from_slice::<Value>(&audit.body)
        .ok()
        .map(|v| {
            let m = match v.get("data") {
                Some(Value::Object(m)) => m.clone(),
                _ => v.as_object().cloned().unwrap_or_default(),
            };
            m.iter()
                .filter(|(_, d)| d.get("type").is_some())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let want = s.audit.device_paths();
    if !audit.ok()
        || want.iter().any(|p| !listed.iter().any(|l| l == p))
        || (want.is_empty() && !listed.is_empty())
    {
        bail!(
            "sys/audit lists {listed:?}, expected {want:?} (audit mode {}): {} {}",
            s.audit,
            audit.status,
            audit.snippet(300)
        );
    }
    // A fresh KV v2 mount may refuse writes for a moment (OpenBao upgrades it).
    let c2 = c.clone();
    wait_until(s, "kv-v2 accepting writes", || {
        let c = c2.clone();
        async move {
            c.post(
                "secret/data/bench/probe",
                bytes::Bytes::from_static(br#"{"data":{"v":"1"}}"#),
            )
            .await
            .is_ok_and(|r| r.ok())
        }
    })
    .await?;
    Ok(())
}

/// Mount an engine; an existing mount of the same path is fine.
pub(crate) async fn mount(c: &VaultClient, path: &str, body: serde_json::Value) -> Result<()> {
    let r = c
        .post(
            &format!("sys/mounts/{path}"),
            bytes::Bytes::from(body.to_string()),
        )
        .await?;
    if r.ok() {
        return Ok(());
    }
    let text = r.snippet(400);
    if text.contains("already in use") || text.contains("existing mount") {
        return Ok(());
    }
    Err(anyhow!("{} {}", r.status, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks() -> AuditSetup {
        AuditSetup::Sinks(SinkAddrs {
            kafka_brokers: "127.0.0.1:9092,127.0.0.1:9093".into(),
            es_url: "http://127.0.0.1:9200".into(),
        })
    }

    #[test]
    fn configs_have_raft_and_audit() {
        let d = Path::new("/data/x");
        for cfg in [
            custos_config(d, 8200, &AuditSetup::File),
            openbao_config(d, 8200),
        ] {
            assert!(cfg.contains("storage \"raft\""));
            assert!(cfg.contains("audit \"file\" \"file\""));
            assert!(cfg.contains("127.0.0.1:8201"));
            assert!(cfg.contains("/data/x/raft"));
        }
    }

    #[test]
    fn audit_off_config_has_no_audit_device() {
        let cfg = custos_config(Path::new("/data/x"), 8200, &AuditSetup::Off);
        assert!(cfg.contains("storage \"raft\""));
        assert!(cfg.contains("/data/x/raft"));
        assert!(cfg.contains("listener \"tcp\""));
        assert!(!cfg.contains("audit \""), "{cfg}");
        assert!(!cfg.contains("/data/x/audit"), "{cfg}");
    }

    #[test]
    fn audit_file_config_has_only_the_file_device() {
        let cfg = custos_config(Path::new("/data/x"), 8200, &AuditSetup::File);
        assert!(cfg.contains("file_path = \"/data/x/audit/\""), "{cfg}");
        assert_eq!(cfg.matches("audit \"").count(), 1, "{cfg}");
        assert!(!cfg.contains("kafka") && !cfg.contains("elasticsearch"));
    }

    #[test]
    fn audit_sinks_config_has_file_kafka_and_es() {
        let cfg = custos_config(Path::new("/data/x"), 8200, &sinks());
        assert!(cfg.contains("storage \"raft\""));
        assert_eq!(cfg.matches("audit \"").count(), 3, "{cfg}");
        let block = |head: &str| {
            let at = cfg
                .find(head)
                .unwrap_or_else(|| panic!("no {head} in {cfg}"));
            let end = cfg[at..].find("\n}\n").map_or(cfg.len(), |e| at + e);
            cfg[at..end].to_string()
        };
        let file = block("audit \"file\" \"file\"");
        assert!(file.contains("file_path = \"/data/x/audit/\""), "{file}");
        let kafka = block("audit \"kafka\" \"kafka\"");
        assert!(
            kafka.contains("brokers = \"127.0.0.1:9092,127.0.0.1:9093\""),
            "{kafka}"
        );
        assert!(
            kafka.contains("topic   = \"custos-audit-bench\""),
            "{kafka}"
        );
        let es = block("audit \"elasticsearch\" \"es\"");
        assert!(es.contains("url   = \"http://127.0.0.1:9200\""), "{es}");
        assert!(es.contains("index = \"custos-audit-bench\""), "{es}");
        // The sinks ship the file device's log, so it must come first.
        assert!(cfg.find("\"file\" \"file\"") < cfg.find("\"kafka\" \"kafka\""));
    }

    #[test]
    fn sink_addresses_cannot_break_out_of_the_hcl_string() {
        let cfg = custos_config(
            Path::new("/d"),
            8200,
            &AuditSetup::Sinks(SinkAddrs {
                kafka_brokers: "k:1\"\naudit \"file\" \"x\" {".into(),
                es_url: "http://e\\".into(),
            }),
        );
        assert!(
            cfg.contains(r#"brokers = "k:1\"\naudit \"file\" \"x\" {""#),
            "{cfg}"
        );
        assert!(cfg.contains(r#"url   = "http://e\\""#), "{cfg}");
        assert_eq!(cfg.matches("\naudit \"").count(), 3, "{cfg}");
    }

    #[test]
    fn audit_modes_parse_and_list_their_devices() {
        assert_eq!("off".parse::<AuditMode>(), Ok(AuditMode::Off));
        assert_eq!(" sinks".parse::<AuditMode>(), Ok(AuditMode::Sinks));
        assert!("kafka".parse::<AuditMode>().is_err());
        assert!(AuditMode::Off.device_paths().is_empty());
        assert_eq!(sinks().mode().device_paths(), ["file/", "kafka/", "es/"]);
        assert!(custos_durability(AuditMode::Off).contains("no audit device"));
        assert!(custos_durability(AuditMode::Sinks).contains("kafka + elasticsearch"));
    }

    #[test]
    fn sink_backlog_is_read_from_sys_audit() {
        let reply = json!({
            "data": {
                "file/": { "type": "file", "backlog": { "durable_seq": 9, "segments": 1 } },
                "kafka/": { "type": "kafka", "backlog": {
                    "up": true, "records": 0, "bytes": 0, "lag_seconds": 0.0,
                    "checkpoint": 9, "durable_seq": 9 } },
                "es/": { "type": "elasticsearch", "backlog": {
                    "up": false, "records": 4, "bytes": 800, "lag_seconds": 2.5,
                    "checkpoint": 5, "durable_seq": 9, "last_error": "connection refused" } }
            }
        });
        let b = parse_sink_backlog(&reply);
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].path.as_str(), b[0].kind.as_str()),
            ("es/", "elasticsearch")
        );
        assert!(!b[0].up);
        assert_eq!((b[0].records, b[0].checkpoint), (4, 5));
        assert_eq!(b[0].last_error.as_deref(), Some("connection refused"));
        assert_eq!(
            (b[1].path.as_str(), b[1].up, b[1].records),
            ("kafka/", true, 0)
        );
        assert!(parse_sink_backlog(&json!({ "data": {} })).is_empty());
    }

    #[test]
    fn port_pair_is_free() {
        let p = free_port_pair().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
