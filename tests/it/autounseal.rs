//! Auto-unseal end to end: a Custos node with `seal "transit"` served by a
//! second real Custos (its transit engine), and with `seal "awskms"` served
//! by moto, the AWS KMS stand-in (`CUSTOS_TEST_KMS`, started by
//! scripts/test.sh; the awskms test skips with a reason when it is unset).
//! Each node is the real binary, restarted as a process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    BIN, Server, free_port, get, init_unseal_mount, start_with_config, unseal, wait_for,
    write_config_with,
};

/// A persistent Custos on a fixed port (so it can stop and come back at
/// the same address) serving transit key `autounseal` at `transit/`.
pub(crate) struct TransitServer {
    pub(crate) server: Server,
    dir: PathBuf,
    cfg: PathBuf,
}

fn transit_config(dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("transit.hcl");
    std::fs::write(
        &cfg,
        format!(
            r#"
storage "raft" {{
  path    = "{raft}"
  node_id = "transit1"
}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
"#,
            raft = dir.join("raft").display()
        ),
    )
    .expect("write transit config");
    cfg
}

pub(crate) async fn start_transit() -> TransitServer {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let cfg = transit_config(&dir, free_port());
    let mut server = start_with_config(&dir, &cfg);
    init_unseal_mount(&mut server).await;
    let c = server.client();
    let r = c
        .post(server.url("sys/mounts/transit"))
        .header("X-Vault-Token", &server.root_token)
        .json(&json!({"type": "transit"}))
        .send()
        .await
        .expect("mount transit");
    assert_eq!(
        r.status().as_u16(),
        204,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let r = c
        .post(server.url("transit/keys/autounseal"))
        .header("X-Vault-Token", &server.root_token)
        .json(&json!({}))
        .send()
        .await
        .expect("create key");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    TransitServer { server, dir, cfg }
}

impl TransitServer {
    pub(crate) fn stanza(&self, token: &str, extra: &str) -> String {
        format!(
            r#"seal "transit" {{
  address    = "http://{}"
  token      = "{token}"
  mount_path = "transit/"
  key_name   = "autounseal"
  {extra}
}}
"#,
            self.server.addr
        )
    }

    /// Stop and start again at the same address, and unseal.
    async fn restart(&mut self) {
        let (root, key) = (
            self.server.root_token.clone(),
            self.server.unseal_key.clone(),
        );
        self.server.kill9();
        let mut s = start_with_config(&self.dir, &self.cfg);
        s.root_token = root;
        s.unseal_key = key;
        unseal(&s).await;
        self.server = s;
    }
}

/// The node under test: its data dir and a config with `seal` (HCL) and
/// unauthenticated metrics.
pub(crate) fn node_config(dir: &Path, seal: &str) -> PathBuf {
    write_config_with(
        dir,
        &format!("telemetry {{\n  unauthenticated_metrics_access = true\n}}\n{seal}"),
    )
}

pub(crate) async fn status(s: &Server) -> Value {
    s.client()
        .get(s.url("sys/seal-status"))
        .send()
        .await
        .expect("seal-status")
        .json()
        .await
        .expect("seal-status json")
}

pub(crate) async fn put(s: &Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    let r = s
        .client()
        .put(s.url(path))
        .header("X-Vault-Token", token)
        .json(&body)
        .send()
        .await
        .expect("put");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn metrics(s: &Server) -> String {
    s.client()
        .get(s.url("sys/metrics?format=prometheus"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default()
}

/// Wait until `s` reads `secret/data/app` with `token`; returns the value.
pub(crate) async fn wait_for_read(s: &Server, token: &str, limit: Duration) -> Value {
    let c = s.client();
    let url = s.url("secret/data/app");
    wait_for("a KV read", limit, || async {
        match get(&c, &url, token).await {
            Some((200, v)) => Some(v["data"]["data"].clone()),
            _ => None,
        }
    })
    .await
}

/// Init through `sys/init` with recovery keys: the node unseals at once.
pub(crate) async fn init_with_recovery(s: &mut Server, shares: u64, threshold: u64) -> Vec<String> {
    let (code, v) = put(
        s,
        "sys/init",
        "",
        json!({"recovery_shares": shares, "recovery_threshold": threshold}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["keys"], json!([]), "{v}");
    assert_eq!(v["keys_base64"], json!([]), "{v}");
    let rk: Vec<String> = v["recovery_keys_base64"]
        .as_array()
        .expect("recovery keys")
        .iter()
        .map(|k| k.as_str().expect("str").to_string())
        .collect();
    assert_eq!(rk.len() as u64, shares);
    assert_eq!(
        v["recovery_keys"].as_array().map(Vec::len),
        Some(shares as usize)
    );
    s.root_token = v["root_token"].as_str().expect("root").to_string();
    assert_eq!(
        status(s).await["sealed"],
        json!(false),
        "unsealed after init"
    );
    let (code, v) = put(
        s,
        "sys/mounts/secret",
        &s.root_token.clone(),
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let (code, v) = put(
        s,
        "secret/data/app",
        &s.root_token.clone(),
        json!({"data": {"password": "hunter2"}}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    rk
}

/// Start the node and measure process start → first successful KV read.
async fn restart_and_time_first_read(dir: &Path, cfg: &Path, token: &str) -> (Server, Duration) {
    let t0 = Instant::now();
    let mut s = start_with_config(dir, cfg);
    s.root_token = token.to_string();
    let v = wait_for_read(&s, token, Duration::from_secs(30)).await;
    let took = t0.elapsed();
    assert_eq!(v["password"], "hunter2");
    (s, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_auto_unseal_restart_outage_and_recovery_keys() {
    let mut transit = start_transit().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = node_config(dir.path(), &transit.stanza(&transit.server.root_token, ""));
    let mut s = start_with_config(dir.path(), &cfg);

    let st = status(&s).await;
    assert_eq!(st["type"], "transit", "{st}");
    assert_eq!(st["recovery_seal"], json!(true), "{st}");
    assert_eq!(st["initialized"], json!(false), "{st}");

    // Barrier key parameters do not apply to an auto seal (OpenBao's words).
    let (code, v) = put(
        &s,
        "sys/init",
        "",
        json!({"secret_shares": 5, "secret_threshold": 3}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["errors"][0],
        "parameters secret_shares,secret_threshold not applicable to seal type transit"
    );
    let (code, v) = put(
        &s,
        "sys/init",
        "",
        json!({"recovery_shares": 3, "recovery_threshold": 1}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["errors"][0],
        "invalid recovery configuration: threshold must be greater than one for multiple shares"
    );
    assert_eq!(status(&s).await["initialized"], json!(false));

    let recovery = init_with_recovery(&mut s, 3, 2).await;
    let root = s.root_token.clone();
    let st = status(&s).await;
    assert_eq!(
        (&st["t"], &st["n"], &st["recovery_seal_type"]),
        (&json!(2), &json!(3), &json!("shamir")),
        "{st}"
    );

    // A process restart comes back unsealed with nobody present.
    s.kill9();
    drop(s);
    let (s, took) = restart_and_time_first_read(dir.path(), &cfg, &root).await;
    eprintln!(
        "auto-unseal (transit): process start to first KV read {} ms",
        took.as_millis()
    );
    let m = metrics(&s).await;
    assert!(
        m.contains("custos_seal_autounseal_last_success_timestamp_seconds"),
        "{m}"
    );
    assert!(m.contains("custos_seal_info{type=\"transit\"} 1"), "{m}");

    // The transit server is down at start: up, sealed, answering, retrying.
    let mut s = s;
    s.kill9();
    drop(s);
    transit.server.kill9();
    let mut s = start_with_config(dir.path(), &cfg);
    s.root_token = root.clone();
    let c = s.client();
    let st = status(&s).await;
    assert_eq!(st["sealed"], json!(true), "{st}");
    assert_eq!(st["type"], "transit", "{st}");
    let health = c.get(s.url("sys/health")).send().await.expect("health");
    assert_eq!(health.status().as_u16(), 503);
    let m = wait_for(
        "a counted unreachable failure",
        Duration::from_secs(20),
        || async {
            let m = metrics(&s).await;
            m.contains("custos_seal_autounseal_failures_total{reason=\"unreachable\"}")
                .then_some(m)
        },
    )
    .await;
    assert!(m.contains("custos_seal_autounseal_retrying 1"), "{m}");
    let out = s.output();
    assert!(out.contains("auto-unseal failed"), "{out}");
    assert!(
        !out.contains(&transit.server.root_token),
        "token in the log"
    );
    // The transit server returns: the node unseals by itself.
    transit.restart().await;
    wait_for_read(&s, &root, Duration::from_secs(120)).await;
    assert!(
        metrics(&s)
            .await
            .contains("custos_seal_autounseal_retrying 0")
    );

    // After an operator's seal, the recovery keys unseal (through transit).
    let (code, v) = put(&s, "sys/seal", &root, json!({})).await;
    assert_eq!(code, 204, "{v}");
    let (_, v) = put(&s, "sys/unseal", "", json!({"key": recovery[2]})).await;
    assert_eq!(
        (&v["sealed"], &v["progress"]),
        (&json!(true), &json!(1)),
        "{v}"
    );
    let (_, v) = put(&s, "sys/unseal", "", json!({"key": recovery[0]})).await;
    assert_eq!(v["sealed"], json!(false), "{v}");
    wait_for_read(&s, &root, Duration::from_secs(10)).await;

    // A wrong token: sealed, one clear line naming the refusal, no token.
    s.kill9();
    drop(s);
    let bad = "s.definitely-not-a-token";
    let cfg = node_config(dir.path(), &transit.stanza(bad, ""));
    let s = start_with_config(dir.path(), &cfg);
    let m = wait_for("a counted refusal", Duration::from_secs(20), || async {
        let m = metrics(&s).await;
        m.contains("custos_seal_autounseal_failures_total{reason=\"refused\"}")
            .then_some(m)
    })
    .await;
    assert!(
        m.contains("custos_core_unsealed{node_id=\"node1\"} 0"),
        "{m}"
    );
    assert_eq!(status(&s).await["sealed"], json!(true));
    let out = s.output();
    assert!(
        out.contains("auto-unseal failed") && out.contains("403"),
        "{out}"
    );
    assert!(!out.contains(bad), "token in the log: {out}");
}

fn custos_cli(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("VAULT_ADDR", format!("http://{addr}"))
        .env_remove("VAULT_TOKEN")
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .output()
        .expect("run custos")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_migration_shamir_to_transit_and_back_keeps_the_data() {
    let transit = start_transit().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A Shamir node with 3 unseal keys, threshold 2, and a secret.
    let shamir_cfg = node_config(dir.path(), "");
    let mut s = start_with_config(dir.path(), &shamir_cfg);
    let (code, v) = put(
        &s,
        "sys/init",
        "",
        json!({"secret_shares": 3, "secret_threshold": 2}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let keys: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("str").to_string())
        .collect();
    let root = v["root_token"].as_str().expect("root").to_string();
    s.root_token = root.clone();
    for k in &keys[..2] {
        put(&s, "sys/unseal", "", json!({"key": k})).await;
    }
    let (code, v) = put(
        &s,
        "sys/mounts/secret",
        &root,
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
    assert_eq!(code, 204, "{v}");
    put(
        &s,
        "secret/data/app",
        &root,
        json!({"data": {"password": "hunter2"}}),
    )
    .await;
    s.kill9();
    drop(s);

    // Shamir → transit: the transit stanza added; migration mode.
    let transit_cfg = node_config(dir.path(), &transit.stanza(&transit.server.root_token, ""));
    let s = start_with_config(dir.path(), &transit_cfg);
    let st = status(&s).await;
    assert_eq!(
        (
            &st["sealed"],
            &st["migration"],
            &st["type"],
            &st["t"],
            &st["n"]
        ),
        (
            &json!(true),
            &json!(true),
            &json!("transit"),
            &json!(2),
            &json!(3)
        ),
        "{st}"
    );
    let (code, v) = put(&s, "sys/unseal", "", json!({"key": keys[0]})).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["errors"][0],
        "migrate option not provided and seal migration is pending"
    );
    // Unseal keys with -migrate, through the CLI.
    for k in &keys[1..3] {
        let o = custos_cli(&s.addr, &["operator", "unseal", "-migrate", k]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let st = status(&s).await;
    assert_eq!(
        (&st["sealed"], &st["migration"]),
        (&json!(false), &json!(false)),
        "{st}"
    );
    assert_eq!(
        wait_for_read(&s, &root, Duration::from_secs(10)).await["password"],
        "hunter2"
    );
    drop(s);
    // Restart: unsealed by itself; the old unseal keys are recovery keys.
    let mut s = start_with_config(dir.path(), &transit_cfg);
    wait_for_read(&s, &root, Duration::from_secs(30)).await;
    let st = status(&s).await;
    assert_eq!(
        (&st["recovery_seal"], &st["t"], &st["n"]),
        (&json!(true), &json!(2), &json!(3))
    );
    s.kill9();
    drop(s);

    // Transit → Shamir: the transit stanza disabled; the recovery keys
    // (the old unseal keys) with migrate.
    let back_cfg = node_config(
        dir.path(),
        &transit.stanza(&transit.server.root_token, "disabled = \"true\""),
    );
    let s = start_with_config(dir.path(), &back_cfg);
    let st = status(&s).await;
    assert_eq!(
        (
            &st["sealed"],
            &st["migration"],
            &st["type"],
            &st["recovery_seal"]
        ),
        (&json!(true), &json!(true), &json!("shamir"), &json!(false)),
        "{st}"
    );
    for k in [&keys[2], &keys[0]] {
        let (code, v) = put(&s, "sys/unseal", "", json!({"key": k, "migrate": true})).await;
        assert_eq!(code, 200, "{v}");
    }
    assert_eq!(status(&s).await["sealed"], json!(false));
    drop(s);
    // A Shamir node again: sealed at start; the shares unseal it.
    let mut s = start_with_config(dir.path(), &shamir_cfg);
    s.root_token = root.clone();
    let st = status(&s).await;
    assert_eq!(
        (&st["sealed"], &st["type"], &st["migration"]),
        (&json!(true), &json!("shamir"), &json!(false))
    );
    s.unseal_key = keys[1].clone();
    put(&s, "sys/unseal", "", json!({"key": keys[0]})).await;
    unseal(&s).await;
    assert_eq!(
        wait_for_read(&s, &root, Duration::from_secs(10)).await["password"],
        "hunter2"
    );
}

/// moto's KMS API with its default (unchecked) credentials.
async fn moto_create_key(endpoint: &str) -> String {
    let r = reqwest::Client::new()
        .post(endpoint)
        .header("X-Amz-Target", "TrentService.CreateKey")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body("{}")
        .send()
        .await
        .expect("moto CreateKey (is CUSTOS_TEST_KMS up?)");
    assert!(r.status().is_success(), "moto CreateKey: {}", r.status());
    let v: Value = r.json().await.expect("moto json");
    v["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("KeyId")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awskms_auto_unseal_through_the_moto_stand_in() {
    let Ok(endpoint) = std::env::var("CUSTOS_TEST_KMS") else {
        eprintln!(
            "skipping: CUSTOS_TEST_KMS is not set (moto, the AWS KMS stand-in; scripts/test.sh starts it)"
        );
        return;
    };
    let key_id = moto_create_key(&endpoint).await;
    let stanza = |key: &str| {
        format!(
            r#"seal "awskms" {{
  region     = "us-east-1"
  endpoint   = "{endpoint}"
  access_key = "testing"
  secret_key = "testing-secret"
  kms_key_id = "{key}"
}}
"#
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = node_config(dir.path(), &stanza(&key_id));
    let mut s = start_with_config(dir.path(), &cfg);
    assert_eq!(status(&s).await["type"], "awskms");
    init_with_recovery(&mut s, 1, 1).await;
    let root = s.root_token.clone();
    s.kill9();
    drop(s);
    let (s, took) = restart_and_time_first_read(dir.path(), &cfg, &root).await;
    eprintln!(
        "auto-unseal (awskms, moto stand-in): process start to first KV read {} ms",
        took.as_millis()
    );
    assert!(
        metrics(&s)
            .await
            .contains("custos_seal_info{type=\"awskms\"} 1")
    );
    drop(s);

    // A key id KMS does not know: sealed, refused, clearly logged.
    let cfg = node_config(dir.path(), &stanza("00000000-0000-0000-0000-000000000000"));
    let s = start_with_config(dir.path(), &cfg);
    wait_for("a counted refusal", Duration::from_secs(20), || async {
        metrics(&s)
            .await
            .contains("custos_seal_autounseal_failures_total{reason=\"refused\"}")
            .then_some(())
    })
    .await;
    assert_eq!(status(&s).await["sealed"], json!(true));
    let out = s.output();
    assert!(
        out.contains("auto-unseal failed") && out.contains("NotFoundException"),
        "{out}"
    );
    assert!(!out.contains("testing-secret"), "secret key in the log");
}
