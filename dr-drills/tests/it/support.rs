//! Shared helpers: deterministic data streams with known SHA-256, the S3 test
//! environment (from scripts/lib/services.sh's `start_garage`), unique key
//! prefixes.

use bytes::Bytes;
use custos_dr::{ByteStream, S3Config, SecretString};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MIB: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;

/// xorshift64*: cheap, reproducible bytes.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

/// `len` pseudo-random bytes from `seed`, produced lazily in 64 KiB chunks.
pub fn data_stream(seed: u64, len: u64) -> ByteStream {
    futures::stream::unfold((seed | 1, len), |(mut state, left)| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        fill(&mut state, &mut buf);
        Some((Ok(Bytes::from(buf)), (state, left - n as u64)))
    })
    .boxed()
}

/// The SHA-256 (hex) of `data_stream(seed, len)`.
pub fn data_sha256(seed: u64, len: u64) -> String {
    let mut state = seed | 1;
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fill(&mut state, &mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

/// Drains a download, returning (bytes, sha256 hex).
pub async fn drain(mut s: ByteStream) -> (u64, String) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("download chunk");
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (n, hex::encode(h.finalize()))
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("it/{test}-{nanos}/")
}

/// A manifest as the snapshot agent writes it (the fields copy checks, and a
/// few more).
pub fn manifest_json(sha256: &str, bytes: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "sha256": sha256,
            "bytes": bytes,
            "raft_index": 42,
            "raft_term": 3,
            "created": "2026-01-01T00:00:00Z",
        })
        .to_string(),
    )
}

fn is_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("1" | "true" | "TRUE" | "True" | "yes")
    )
}

/// The Garage instances started by scripts/lib/services.sh.
pub struct S3Env {
    pub primary: S3Config,
    pub copy: S3Config,
}

fn var(name: &str, missing: &mut Vec<String>) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            missing.push(name.to_string());
            String::new()
        }
    }
}

/// The S3 test environment, or `None` (after printing why) when it is not
/// set outside CI. In CI a missing variable fails the test.
pub fn s3_env(test: &str) -> Option<S3Env> {
    let mut missing = Vec::new();
    let endpoint = var("CUSTOS_TEST_S3", &mut missing);
    if !missing.is_empty() && !is_ci() {
        eprintln!(
            "skipping {test}: CUSTOS_TEST_S3 is not set (scripts/test.sh starts Garage and sets it)"
        );
        return None;
    }
    let primary = S3Config {
        aws_s3_endpoint: Some(endpoint),
        aws_s3_region: var("CUSTOS_TEST_S3_REGION", &mut missing),
        aws_s3_bucket: var("CUSTOS_TEST_S3_BUCKET", &mut missing),
        aws_access_key_id: Some(var("CUSTOS_TEST_S3_ACCESS_KEY", &mut missing)),
        aws_secret_access_key: Some(SecretString::new(var(
            "CUSTOS_TEST_S3_SECRET_KEY",
            &mut missing,
        ))),
        aws_s3_force_path_style: true,
        ..Default::default()
    };
    let copy = S3Config {
        aws_s3_endpoint: Some(var("CUSTOS_TEST_S3_COPY_ENDPOINT", &mut missing)),
        aws_s3_region: var("CUSTOS_TEST_S3_COPY_REGION", &mut missing),
        aws_s3_bucket: var("CUSTOS_TEST_S3_COPY_BUCKET", &mut missing),
        aws_access_key_id: Some(var("CUSTOS_TEST_S3_COPY_ACCESS_KEY", &mut missing)),
        aws_secret_access_key: Some(SecretString::new(var(
            "CUSTOS_TEST_S3_COPY_SECRET_KEY",
            &mut missing,
        ))),
        aws_s3_force_path_style: true,
        ..Default::default()
    };
    assert!(
        missing.is_empty(),
        "{test}: S3 test environment incomplete, missing {} (CI={})",
        missing.join(", "),
        std::env::var("CI").unwrap_or_default()
    );
    Some(S3Env { primary, copy })
}

/// A Garage of a test's own (from `CUSTOS_TEST_GARAGE_BIN`), for tests that
/// stop the server. Killed on drop.
pub struct PrivateGarage {
    child: Option<std::process::Child>,
    config_path: std::path::PathBuf,
    bin: String,
    pub config: S3Config,
    _dir: tempfile::TempDir,
}

fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

impl PrivateGarage {
    fn garage(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a single-node Garage with one bucket and key, as
    /// scripts/lib/services.sh does; `None` when CUSTOS_TEST_GARAGE_BIN is
    /// unset outside CI.
    pub async fn start(test: &str) -> Option<Self> {
        let bin = match std::env::var("CUSTOS_TEST_GARAGE_BIN") {
            Ok(b) if !b.is_empty() => b,
            _ if is_ci() => panic!("{test}: CUSTOS_TEST_GARAGE_BIN is not set (CI=true)"),
            _ => {
                eprintln!("skipping {test}: CUSTOS_TEST_GARAGE_BIN is not set");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_pair();
        let config_path = dir.path().join("garage.toml");
        let d = dir.path().display();
        std::fs::write(
            &config_path,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                 [s3_api]\ns3_region = \"garage-private\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                rpc = port + 1,
                secret = "ab".repeat(32),
            ),
        )
        .expect("write garage config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = std::process::Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        let key_id = format!("GK{}", "1d".repeat(12));
        let secret = "5e".repeat(32);
        let g = PrivateGarage {
            child: Some(child),
            config_path,
            bin,
            config: S3Config {
                aws_s3_bucket: "custos-private".into(),
                aws_s3_region: "garage-private".into(),
                aws_s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
                aws_s3_force_path_style: true,
                aws_access_key_id: Some(key_id.clone()),
                aws_secret_access_key: Some(SecretString::new(secret.clone())),
                ..Default::default()
            },
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let ok = std::process::Command::new(&g.bin)
                .arg("-c")
                .arg(&g.config_path)
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private Garage did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let node = g.garage(&["node", "id", "-q"]);
        let node = node
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        g.garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.garage(&["layout", "apply", "--version", "1"]);
        g.garage(&["bucket", "create", "custos-private"]);
        g.garage(&["key", "import", "--yes", "-n", "private", &key_id, &secret]);
        g.garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "custos-private",
            "--key",
            &key_id,
        ]);
        Some(g)
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.stop();
    }
}
