//! `custos rotator` end to end: a real dev server, the rotator binary
//! holding only the token `custos rotator policy` prints, a reference API-key
//! issuer behind the http provider's webhook contract (it refuses revoked
//! keys, so the test can prove no consumer was ever refused), and consumers
//! reading the secret with a real Vault client (the `bao` CLI when
//! `CUSTOS_TEST_OPENBAO_BIN` names it, as in CI; else the `custos` CLI).
//!
//! What is checked: a consumer that never moves holds retirement (exit 3,
//! `status` names it, the held gauge is 1) and the old key keeps working;
//! once it reads the new version the next tick retires; kill -9 at every
//! step leaves each run completed exactly once (issuer counts, KV
//! versions); two rotators at once perform each step once; a KEK rotation
//! rewraps every DEK record, every record still opens, and
//! `min_decryption_version` rises only after the grace window and only
//! when no consumer decrypts under the old version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Server, dev_server};

// ------------------------------------------------------------ key issuer

/// The reference provider: `POST /keys` (idempotent on `Idempotency-Key`),
/// `GET /test` (`X-Api-Key`), `DELETE /keys/{id}`, `GET /stats`.
#[derive(Default)]
struct Issuer {
    /// idempotency key → key id
    by_run: HashMap<String, String>,
    /// key id → (secret, active)
    keys: HashMap<String, (String, bool)>,
    creates: u64,
    revokes: u64,
    refused: u64,
    /// Answer 500 to this many create calls first.
    fail_creates: u64,
}

struct IssuerHandle {
    url: String,
    state: Arc<Mutex<Issuer>>,
    _rt: tokio::runtime::Runtime,
}

impl IssuerHandle {
    fn stats(&self) -> (u64, u64, u64) {
        let s = self.state.lock().unwrap();
        (s.creates, s.revokes, s.refused)
    }
    fn is_active(&self, secret: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.keys.values().any(|(k, a)| k == secret && *a)
    }
}

fn start_issuer() -> IssuerHandle {
    use axum::extract::{Path as AxPath, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{delete, get, post};
    type S = Arc<Mutex<Issuer>>;

    async fn create(State(s): State<S>, h: HeaderMap) -> (StatusCode, axum::Json<Value>) {
        let run = h
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut s = s.lock().unwrap();
        if s.fail_creates > 0 {
            s.fail_creates -= 1;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "issuer is down"})),
            );
        }
        if run.is_empty() {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "Idempotency-Key required"})),
            );
        }
        if let Some(id) = s.by_run.get(&run).cloned() {
            let secret = s.keys[&id].0.clone();
            return (
                StatusCode::OK,
                axum::Json(json!({"id": id, "secret": secret})),
            );
        }
        s.creates += 1;
        let id = format!("key-{}", s.creates);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let secret = format!("sk_{nanos:x}_{}", s.creates);
        s.by_run.insert(run, id.clone());
        s.keys.insert(id.clone(), (secret.clone(), true));
        (
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "secret": secret})),
        )
    }
    async fn test(State(s): State<S>, h: HeaderMap) -> StatusCode {
        let key = h
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut s = s.lock().unwrap();
        if s.keys.values().any(|(k, a)| k == key && *a) {
            StatusCode::OK
        } else {
            s.refused += 1;
            StatusCode::UNAUTHORIZED
        }
    }
    async fn revoke(State(s): State<S>, AxPath(id): AxPath<String>) -> StatusCode {
        let mut s = s.lock().unwrap();
        match s.keys.get_mut(&id) {
            Some((_, active)) if *active => {
                *active = false;
                s.revokes += 1;
                StatusCode::NO_CONTENT
            }
            _ => StatusCode::NOT_FOUND,
        }
    }

    let state: S = Arc::new(Mutex::new(Issuer::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind issuer");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/keys", post(create))
        .route("/test", get(test))
        .route("/keys/{id}", delete(revoke))
        .with_state(state.clone());
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    IssuerHandle {
        url: format!("http://{addr}"),
        state,
        _rt: rt,
    }
}

// ------------------------------------------------------------ helpers

/// Run a future to completion on a fresh current-thread runtime (the tests
/// are plain threads; async reqwest avoids a second reqwest feature set).
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// `method url` with a token and optional JSON body: (status, JSON body).
fn call(method: reqwest::Method, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    block(async {
        let mut r = reqwest::Client::new()
            .request(method, url)
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let v = resp.json::<Value>().await.unwrap_or(Value::Null);
                (status, v)
            }
            Err(_) => (0, Value::Null),
        }
    })
}

fn get_text(url: &str) -> String {
    block(async {
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    })
}

/// Run the custos CLI against `s` with `token`.
fn cli(s: &Server, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    cli_at(&s.addr, token, args, env)
}

fn cli_at(addr: &str, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = custos_cmd(addr, token);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run custos")
}

/// The custos binary against `addr` with `token`, quiet, no stdin; not run.
fn custos_cmd(addr: &str, token: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("VAULT_ADDR", format!("http://{addr}"))
        .env("VAULT_TOKEN", token)
        .env("CUSTOS_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// `custos rotator ARGS --config CFG` against `s`, not run.
fn rotator_cmd(s: &Server, token: &str, args: &[&str], cfg: &Path) -> Command {
    let mut c = custos_cmd(&s.addr, token);
    c.arg("rotator").args(args).arg("--config").arg(cfg);
    c
}

/// `custos rotator run JOB` started in the background, output captured.
fn spawn_rotator_run(s: &Server, token: &str, job: &str, cfg: &Path) -> std::process::Child {
    rotator_cmd(s, token, &["run", job], cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rotator")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A token with `policy` (HCL) written under `name`, displayed as `name`.
fn token_with_policy(s: &Server, name: &str, policy: &str, dir: &Path) -> String {
    let f = dir.join(format!("policy-{name}.hcl"));
    std::fs::write(&f, policy).expect("write policy");
    let o = cli(
        s,
        &s.root_token,
        &["policy", "write", name, f.to_str().expect("utf8")],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(
        s,
        &s.root_token,
        &[
            "token",
            "create",
            &format!("-policy={name}"),
            &format!("-display-name={name}"),
            "-format=json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("token json");
    v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// The rotator's token: exactly the policy `custos rotator policy` prints.
fn rotator_token(s: &Server, cfg: &Path, dir: &Path) -> String {
    let o = cli(
        s,
        &s.root_token,
        &["rotator", "policy", "--config", cfg.to_str().expect("utf8")],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let policy = String::from_utf8_lossy(&o.stdout).into_owned();
    token_with_policy(s, "rotator", &policy, dir)
}

fn rotator(s: &Server, token: &str, args: &[&str], cfg: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = rotator_cmd(s, token, args, cfg);
    c.envs(env.iter().copied());
    c.output().expect("run custos rotator")
}

fn status_json(s: &Server, token: &str, cfg: &Path, job: &str) -> Value {
    let o = rotator(s, token, &["status", job, "-format=json"], cfg, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("status json");
    v["jobs"][0].clone()
}

/// Read the secret's `api_key` with a real Vault client.
fn client_read(s: &Server, token: &str, path: &str) -> Option<String> {
    client_read_at(&s.addr, token, path)
}

fn client_read_at(addr: &str, token: &str, path: &str) -> Option<String> {
    let o = match std::env::var("CUSTOS_TEST_OPENBAO_BIN") {
        Ok(bao) if !bao.is_empty() => Command::new(bao)
            .args(["kv", "get", "-format=json", path])
            .env("VAULT_ADDR", format!("http://{addr}"))
            .env("VAULT_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run bao"),
        _ => cli_at(addr, token, &["kv", "get", "-format=json", path], &[]),
    };
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v["data"]["data"]["api_key"].as_str().map(str::to_owned)
}

/// A consumer: every `every`, read the key and use it at the issuer.
struct Consumer {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    fn start(s: &Server, token: String, path: &str, issuer: &str, every: Duration) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (stop2, reads2) = (stop.clone(), reads.clone());
        let addr = s.addr.clone();
        let path = path.to_owned();
        let test_url = format!("{issuer}/test");
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                if let Some(key) = client_read_at(&addr, &token, &path) {
                    let ok = block(async {
                        reqwest::Client::new()
                            .get(&test_url)
                            .header("X-Api-Key", key)
                            .send()
                            .await
                            .is_ok()
                    });
                    if ok {
                        reads2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let mut slept = Duration::ZERO;
                while slept < every && !stop2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        });
        Consumer {
            stop,
            reads,
            thread: Some(thread),
        }
    }
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll until `f` holds (at most `secs` seconds).
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for: {what}");
}

const CONSUMER_POLICY: &str = r#"path "secret/data/payments/*" { capabilities = ["read"] }"#;

fn write_config(dir: &Path, s: &Server, jobs: &str) -> PathBuf {
    let cfg = dir.join("rotator.hcl");
    std::fs::write(
        &cfg,
        format!(
            "server {{\n  address = \"http://{}\"\n}}\nclaim_ttl = \"2s\"\nretry_for = \"20s\"\ncheck_interval = \"1s\"\n{jobs}",
            s.addr
        ),
    )
    .expect("write rotator.hcl");
    cfg
}

fn http_job(
    name: &str,
    secret: &str,
    issuer: &str,
    consumers: &str,
    grace: &str,
    deadline: &str,
) -> String {
    format!(
        r#"
job "{name}" {{
  kind      = "api_key"
  schedule  = "0 0 3 * * Mon"
  secret    = "{secret}"
  provider "http" {{
    url = "{issuer}"
  }}
  consumers = [{consumers}]
  grace     = "{grace}"
  deadline  = "{deadline}"
  on_stuck  = "hold"
  poll_interval = "500ms"
}}
"#
    )
}

fn kv_versions(s: &Server, path: &str) -> Value {
    let o = cli(
        s,
        &s.root_token,
        &["kv", "metadata", "get", "-format=json", path],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("metadata json");
    v["data"].clone()
}

// ------------------------------------------------------------ tests

#[test]
fn a_consumer_that_never_moves_holds_retirement_until_it_reads() {
    let s = dev_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = start_issuer();
    let cfg = write_config(
        dir.path(),
        &s,
        &http_job(
            "payments-api-key",
            "secret/payments/api-key",
            &issuer.url,
            "\"payments-svc\", \"billing-worker\", \"reports-cron\"",
            "2s",
            "15s",
        ),
    );
    let rt = rotator_token(&s, &cfg, dir.path());
    let path = "secret/payments/api-key";

    // The first run writes the first key (nothing to retire).
    let o = rotator(&s, &rt, &["run", "payments-api-key"], &cfg, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let old_key = client_read(&s, &s.root_token, path).expect("first key");

    let tokens: Vec<String> = ["payments-svc", "billing-worker", "reports-cron"]
        .iter()
        .map(|n| token_with_policy(&s, n, CONSUMER_POLICY, dir.path()))
        .collect();
    // payments-svc reads every second, billing-worker every 5 s, reports-cron
    // once (the old key) and then not again.
    assert_eq!(
        client_read(&s, &tokens[2], path).as_deref(),
        Some(old_key.as_str())
    );
    let mut fast = Consumer::start(
        &s,
        tokens[0].clone(),
        path,
        &issuer.url,
        Duration::from_secs(1),
    );
    let mut slow = Consumer::start(
        &s,
        tokens[1].clone(),
        path,
        &issuer.url,
        Duration::from_secs(5),
    );

    // Held: reports-cron never moves; exit 3, the old key still works.
    let o = rotator(&s, &rt, &["run", "payments-api-key"], &cfg, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reports-cron"), "{err}");
    assert!(!err.contains("payments-svc,"), "{err}");
    assert!(
        issuer.is_active(&old_key),
        "the old key was revoked while held"
    );
    let st = status_json(&s, &rt, &cfg, "payments-api-key");
    assert_eq!(st["state"], "held", "{st}");
    assert_eq!(st["current_version"], 2, "{st}");
    assert_eq!(st["previous_version"], 1, "{st}");
    let moved: HashMap<String, bool> = st["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["moved"] == true,
            )
        })
        .collect();
    assert!(moved["payments-svc"], "{st}");
    assert!(moved["billing-worker"], "{st}");
    assert!(!moved["reports-cron"], "{st}");
    let meta = kv_versions(&s, path);
    assert_eq!(meta["versions"]["1"]["destroyed"], false, "{meta}");

    // The daemon re-checks the held run; once reports-cron reads the new
    // version, the next tick retires the old key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut text_cfg = std::fs::read_to_string(&cfg).expect("cfg");
    text_cfg.push_str(&format!(
        "telemetry {{\n  prometheus_listen = \"127.0.0.1:{port}\"\n}}\n"
    ));
    std::fs::write(&cfg, text_cfg).expect("cfg");
    let mut daemon = rotator_cmd(&s, &rt, &["serve"], &cfg)
        .env("CUSTOS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rotator serve");
    let metrics = || get_text(&format!("http://127.0.0.1:{port}/metrics"));
    eventually(30, "custos_rotator_run_held 1", || {
        metrics().contains("custos_rotator_run_held{rotation_job=\"payments-api-key\"} 1")
    });
    assert!(issuer.is_active(&old_key));
    let new_key = client_read(&s, &tokens[2], path).expect("reports-cron reads the new key");
    assert_ne!(new_key, old_key);
    eventually(60, "the held run to finish", || {
        status_json(&s, &rt, &cfg, "payments-api-key")["state"] == "idle"
    });
    eventually(10, "custos_rotator_run_held 0", || {
        let m = metrics();
        m.contains("custos_rotator_run_held{rotation_job=\"payments-api-key\"} 0")
            && m.contains(
                "custos_rotator_last_success_timestamp_seconds{rotation_job=\"payments-api-key\"}",
            )
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    fast.stop();
    slow.stop();
    assert!(fast.reads.load(Ordering::SeqCst) > 3);
    assert!(slow.reads.load(Ordering::SeqCst) > 1);

    assert!(!issuer.is_active(&old_key), "the old key was not revoked");
    let (creates, revokes, refused) = issuer.stats();
    assert_eq!((creates, revokes), (2, 1), "one create per run, one revoke");
    assert_eq!(refused, 0, "a consumer was refused its key");
    let meta = kv_versions(&s, path);
    assert_eq!(meta["current_version"], 2, "{meta}");
    assert_eq!(meta["versions"]["1"]["destroyed"], true, "{meta}");
    assert_eq!(meta["versions"]["2"]["destroyed"], false, "{meta}");
}

#[test]
fn kill_9_at_every_step_completes_each_run_exactly_once() {
    let s = dev_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = start_issuer();
    // Two 500s first: the create step retries with backoff.
    issuer.state.lock().unwrap().fail_creates = 2;
    let path = "secret/payments/crash-key";
    let cfg = write_config(
        dir.path(),
        &s,
        &http_job("crash", path, &issuer.url, "\"payments-svc\"", "0s", "60s"),
    );
    let rt = rotator_token(&s, &cfg, dir.path());
    let o = rotator(&s, &rt, &["run", "crash"], &cfg, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let consumer = token_with_policy(&s, "payments-svc", CONSUMER_POLICY, dir.path());
    let mut c = Consumer::start(&s, consumer, path, &issuer.url, Duration::from_millis(300));

    let points = [
        "create:claimed",
        "create:effect",
        "promote:claimed",
        "promote:effect",
        "retire:claimed",
        "retire:effect",
    ];
    for (i, point) in points.iter().enumerate() {
        let o = rotator(
            &s,
            &rt,
            &["run", "crash"],
            &cfg,
            &[("CUSTOS_ROTATOR_FAILPOINT", point)],
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "{point}: {}", text(&o));
        // A fresh process resumes the run (after the dead one's claim
        // expires) and finishes it.
        let o = rotator(&s, &rt, &["run", "crash"], &cfg, &[]);
        assert!(o.status.success(), "{point}: {}", text(&o));
        let (creates, revokes, _) = issuer.stats();
        assert_eq!(
            (creates, revokes),
            (i as u64 + 2, i as u64 + 1),
            "{point}: the issuer saw a create or revoke twice"
        );
        let meta = kv_versions(&s, path);
        assert_eq!(meta["current_version"], i + 2, "{point}: {meta}");
        assert_eq!(
            meta["versions"][(i + 1).to_string()]["destroyed"],
            true,
            "{point}: {meta}"
        );
    }
    c.stop();
    assert_eq!(issuer.stats().2, 0, "a consumer was refused its key");

    // Two rotators at the same time on the same job: each step once.
    let mut c = Consumer::start(
        &s,
        token_with_policy(&s, "payments-svc2", CONSUMER_POLICY, dir.path()),
        path,
        &issuer.url,
        Duration::from_millis(300),
    );
    // payments-svc is the declared consumer; keep it reading too.
    let mut c1 = Consumer::start(
        &s,
        token_with_policy(&s, "payments-svc", CONSUMER_POLICY, dir.path()),
        path,
        &issuer.url,
        Duration::from_millis(300),
    );
    let (creates0, revokes0, _) = issuer.stats();
    let (a, b) = (
        spawn_rotator_run(&s, &rt, "crash", &cfg),
        spawn_rotator_run(&s, &rt, "crash", &cfg),
    );
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let (creates, revokes, refused) = issuer.stats();
    assert_eq!(
        (creates - creates0, revokes - revokes0),
        (1, 1),
        "two rotators both acted"
    );
    assert_eq!(refused, 0);
    assert_eq!(kv_versions(&s, path)["current_version"], points.len() + 2);
    c.stop();
    c1.stop();
}

#[test]
fn kek_rotation_rewraps_every_dek_and_raises_min_decryption_only_after_grace() {
    let s = dev_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let root = s.root_token.clone();
    let addr = format!("http://{}", s.addr);
    let post = |path: &str, body: Value| {
        let (status, v) = call(
            reqwest::Method::POST,
            &format!("{addr}/v1/{path}"),
            &root,
            Some(body),
        );
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    };
    let get = |path: &str| {
        call(
            reqwest::Method::GET,
            &format!("{addr}/v1/{path}"),
            &root,
            None,
        )
        .1
    };
    post("sys/mounts/transit", json!({"type": "transit"}));
    post("transit/keys/orders", json!({"type": "aes256-gcm96"}));

    // 1,000 records sealed under KEK v1, stored as KV records (scale runs
    // with 100,000 are in the benchmark).
    const N: usize = 1000;
    let client =
        custos_envelope::TransitClient::new(addr.clone(), root.clone(), "transit").expect("client");
    let env = custos_envelope::Envelope::new(client, "orders");
    let plaintexts: Vec<Vec<u8>> = (0..N).map(|i| format!("order #{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = plaintexts.iter().map(Vec::as_slice).collect();
    let recs = rt.block_on(env.seal_many(&refs, 16)).expect("seal");
    for (i, r) in recs.iter().enumerate() {
        post(
            &format!("secret/data/orders/deks/{:02}/{i}", i % 7),
            json!({"data": {"wrapped_dek": r.wrapped_dek, "nonce": r.nonce, "ciphertext": r.ciphertext}}),
        );
    }
    let old_ct = recs[0].wrapped_dek.clone();

    let cfg = dir.path().join("rotator.hcl");
    std::fs::write(
        &cfg,
        format!(
            r#"server {{
  address = "{addr}"
}}
claim_ttl = "2s"
job "orders-kek" {{
  kind        = "kek"
  schedule    = "@monthly"
  transit_key = "transit/orders"
  dek_prefix  = "secret/orders/deks/"
  consumers   = ["orders-svc"]
  grace       = "4s"
  deadline    = "8s"
  on_stuck    = "hold"
  poll_interval = "500ms"
}}
"#
        ),
    )
    .expect("cfg");
    let tok = rotator_token(&s, &cfg, dir.path());
    let orders = token_with_policy(
        &s,
        "orders-svc",
        r#"path "transit/decrypt/orders" { capabilities = ["update"] }"#,
        dir.path(),
    );
    let decrypt_as_orders = |ct: &str| {
        let (status, _) = call(
            reqwest::Method::POST,
            &format!("{addr}/v1/transit/decrypt/orders"),
            &orders,
            Some(json!({ "ciphertext": ct })),
        );
        (200..300).contains(&status)
    };
    assert!(decrypt_as_orders(&old_ct));

    // orders-svc keeps decrypting a v1 ciphertext it cached: held.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let old2 = old_ct.clone();
    let (addr2, orders2) = (addr.clone(), orders.clone());
    let stale_reader = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            call(
                reqwest::Method::POST,
                &format!("{addr2}/v1/transit/decrypt/orders"),
                &orders2,
                Some(json!({ "ciphertext": old2 })),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let o = rotator(&s, &tok, &["run", "orders-kek"], &cfg, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("orders-svc"),
        "{}",
        text(&o)
    );
    let key = get("transit/keys/orders");
    assert_eq!(key["data"]["latest_version"], 2, "{key}");
    assert_eq!(
        key["data"]["min_decryption_version"], 1,
        "raised while a consumer used v1"
    );
    let st = status_json(&s, &tok, &cfg, "orders-kek");
    assert_eq!(st["state"], "held", "{st}");
    assert_eq!(st["rewrapped"], N, "{st}");

    // Every stored record is on v2, and every record still opens (the data
    // ciphertexts were never touched).
    let mut stored = Vec::new();
    for (i, rec) in recs.iter().enumerate() {
        let v = get(&format!("secret/data/orders/deks/{:02}/{i}", i % 7));
        let d = &v["data"]["data"];
        assert!(
            d["wrapped_dek"]
                .as_str()
                .expect("dek")
                .starts_with("vault:v2:")
        );
        assert_eq!(d["ciphertext"], json!(rec.ciphertext));
        stored.push(custos_envelope::SealedRecord {
            wrapped_dek: d["wrapped_dek"].as_str().expect("dek").to_owned(),
            nonce: d["nonce"].as_str().expect("nonce").to_owned(),
            ciphertext: d["ciphertext"].as_str().expect("ct").to_owned(),
        });
    }
    let opened = rt.block_on(env.open_many(&stored)).expect("open");
    for (i, p) in opened.into_iter().enumerate() {
        let p = p.unwrap_or_else(|e| panic!("record {i} does not open: {e}"));
        assert_eq!(p.as_slice(), plaintexts[i].as_slice());
    }

    // The consumer moves to the rewrapped records; after a full grace
    // window without v1 decrypts the run retires v1.
    stop.store(true, Ordering::SeqCst);
    let _ = stale_reader.join();
    assert!(decrypt_as_orders(&stored[0].wrapped_dek));
    // The held run is re-checked on every later tick: it stays held while
    // the last v1 decrypt is inside the grace window, and finishes once a
    // whole window has passed without one.
    let mut last = None;
    for _ in 0..20 {
        let o = rotator(&s, &tok, &["run", "orders-kek"], &cfg, &[]);
        match o.status.code() {
            Some(0) => {
                last = Some(o);
                break;
            }
            Some(3) => {
                let key = get("transit/keys/orders");
                assert_eq!(key["data"]["min_decryption_version"], 1, "{key}");
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => panic!("{}", text(&o)),
        }
    }
    assert!(last.is_some(), "the held KEK run never finished");
    let key = get("transit/keys/orders");
    assert_eq!(key["data"]["min_decryption_version"], 2, "{key}");
    assert!(!decrypt_as_orders(&old_ct), "v1 still decrypts");
    assert!(decrypt_as_orders(&stored[1].wrapped_dek));
}

#[test]
fn bad_config_and_missing_capability_are_named() {
    let s = dev_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        &s,
        r#"
job "bad" {
  kind = "api_key"
  schedule = "0 0 3 * *"
  secret = "secret/x"
  provider "random" {}
  consumers = ["a"]
}
"#,
    );
    let o = rotator(&s, &s.root_token, &["run", "bad"], &cfg, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rotator.hcl:10: job \"bad\": schedule:"),
        "{err}"
    );

    // A token without the policy: the error names the job, step and path.
    let cfg = write_config(
        dir.path(),
        &s,
        r#"
job "ok" {
  kind = "api_key"
  schedule = "@daily"
  secret = "secret/app/key"
  provider "random" {}
  consumers = ["a"]
}
"#,
    );
    let weak = token_with_policy(&s, "weak", CONSUMER_POLICY, dir.path());
    let o = rotator(&s, &weak, &["run", "ok"], &cfg, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("job \"ok\" step create"), "{err}");
    assert!(err.contains("permission denied"), "{err}");

    // A secret outside KV v2.
    let cfg = write_config(
        dir.path(),
        &s,
        r#"
job "v1" {
  kind = "api_key"
  schedule = "@daily"
  secret = "nosuchmount/app/key"
  provider "random" {}
  consumers = ["a"]
}
"#,
    );
    let o = rotator(&s, &s.root_token, &["run", "v1"], &cfg, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("step create"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_server_sealed_mid_run_is_waited_out_and_nothing_is_retired_early() {
    let s = dev_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = "secret/payments/sealed-key";
    let cfg = write_config(
        dir.path(),
        &s,
        &format!(
            r#"
job "sealed" {{
  kind      = "api_key"
  schedule  = "@daily"
  secret    = "{path}"
  provider "random" {{}}
  consumers = ["payments-svc"]
  grace     = "1s"
  deadline  = "60s"
  poll_interval = "500ms"
}}
"#
        ),
    );
    let rt = rotator_token(&s, &cfg, dir.path());
    let o = rotator(&s, &rt, &["run", "sealed"], &cfg, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let svc = token_with_policy(&s, "payments-svc", CONSUMER_POLICY, dir.path());

    // The second run promotes version 2 and waits for payments-svc.
    let child = spawn_rotator_run(&s, &rt, "sealed", &cfg);
    eventually(30, "version 2 to be promoted", || {
        kv_versions(&s, path)["current_version"] == 2
    });
    // Sealed while the run waits: its checks fail and are retried.
    let (st, v) = call(
        reqwest::Method::PUT,
        &s.url("sys/seal"),
        &s.root_token,
        None,
    );
    assert!((200..300).contains(&st), "seal: {st} {v}");
    std::thread::sleep(Duration::from_secs(3));
    block(crate::harness::unseal(&s));
    assert!(client_read(&s, &svc, path).is_some());
    let o = child.wait_with_output().expect("rotator");
    assert!(o.status.success(), "{}", text(&o));
    let meta = kv_versions(&s, path);
    assert_eq!(meta["current_version"], 2, "{meta}");
    assert_eq!(meta["versions"]["1"]["destroyed"], true, "{meta}");
}
