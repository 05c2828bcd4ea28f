//! Start, initialise and stop the two servers being compared.
//!
//! Each server gets its own data directory (under `target/bench/`, on the
//! same disk a deployment would use), a config file with persistent Raft
//! storage and a file audit device, and free ports. It is then initialised
//! with one key share, unsealed, and given kv-v2 at `secret/` and transit at
//! `transit/` through the HTTP API, exactly as an operator would. Servers are
//! child processes of the harness; [`Server`]'s `Drop` kills exactly that
//! child, so an error or Ctrl-C path never leaves one running.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

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
                "Raft (openraft on redb): every log append fsync'd before commit; \
                 file audit device: group-committed, fsync'd before the response (fail closed)"
            }
            Kind::OpenBao => {
                "Raft (hashicorp/raft, BoltDB log): fsync'd per batch before commit; \
                 file audit device: written, not fsync'd (OpenBao default)"
            }
        }
    }
}

/// A running, initialised, unsealed server.
pub struct Server {
    pub kind: Kind,
    pub addr: String,
    pub token: String,
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
}

fn log_tail(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A port `p` such that `p` and `p + 1` are both free (OpenBao binds its
/// cluster listener on the API port + 1).
fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair found")
}

fn custos_config(dir: &Path, port: u16) -> String {
    format!(
        r#"# Written by custos-bench: persistent Raft storage and a file audit device.
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

audit "file" "file" {{
  options {{
    file_path = "{audit}/"
  }}
}}
"#,
        cport = port + 1,
        raft = dir.join("raft").display(),
        audit = dir.join("audit").display(),
    )
}

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
    file_path = "{audit}/audit.log"
  }}
}}
"#,
        cport = port + 1,
        raft = dir.join("raft").display(),
        audit = dir.join("audit").display(),
    )
}

/// Start `kind` from `bin` in a fresh directory under `parent`, then
/// initialise, unseal and mount `secret/` (kv-v2) and `transit/`.
pub async fn start(kind: Kind, bin: &Path, parent: &Path) -> Result<Server> {
    let dir = parent.join(kind.name());
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
            Kind::Custos => custos_config(&dir, port),
            Kind::OpenBao => openbao_config(&dir, port),
        },
    )?;
    let version = Command::new(bin)
        .arg(if kind == Kind::Custos {
            "--version"
        } else {
            "version"
        })
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let log = fs::File::create(dir.join("server.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("server");
    match kind {
        Kind::Custos => cmd.arg("--config").arg(&cfg),
        Kind::OpenBao => cmd.arg(format!("-config={}", cfg.display())),
    };
    for v in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"] {
        cmd.env_remove(v);
    }
    let child = cmd
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} ({})", kind.name(), bin.display()))?;
    let mut server = Server {
        kind,
        addr: format!("http://127.0.0.1:{port}"),
        token: String::new(),
        pid: child.id(),
        version,
        dir,
        transit_missing: None,
        child,
    };
    bootstrap(&mut server).await.with_context(|| {
        format!(
            "{} did not come up; its log ends:\n{}",
            kind.name(),
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

    // The audit device must be live: we compare with audit on for both.
    let audit = c.get("sys/audit").await?;
    let text = String::from_utf8_lossy(&audit.body);
    if !audit.ok() || !text.contains("file/") {
        bail!(
            "no file audit device listed by sys/audit: {} {}",
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
async fn mount(c: &VaultClient, path: &str, body: serde_json::Value) -> Result<()> {
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

    #[test]
    fn configs_have_raft_and_audit() {
        let d = Path::new("/data/x");
        for cfg in [custos_config(d, 8200), openbao_config(d, 8200)] {
            assert!(cfg.contains("storage \"raft\""));
            assert!(cfg.contains("audit \"file\" \"file\""));
            assert!(cfg.contains("127.0.0.1:8201"));
            assert!(cfg.contains("/data/x/raft"));
        }
    }

    #[test]
    fn port_pair_is_free() {
        let p = free_port_pair().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
