//! Key ceremonies and clustering under an auto seal, end to end: real
//! `custos` processes sealed by a second real Custos serving transit (see
//! `autounseal.rs`).
//!
//! - Recovery keys authorise root token generation (`custos operator
//!   generate-root`) and both rekeys: of the recovery keys (`custos
//!   operator rekey -target=recovery`, `sys/rotate/recovery/*`) and of the
//!   barrier key (`sys/rotate/root/*`: a new root key through the seal, no
//!   shares); old recovery keys stop working, new ones unseal after a seal,
//!   and a kill -9 right after the rekeys leaves a node that unseals itself.
//! - Three auto-sealed nodes form a cluster through `retry_join` with nobody
//!   giving keys; a follower restarted by kill -9 comes back unsealed on its
//!   own and serves a secret written on the leader.
//! - The real `bao` CLI (`CUSTOS_TEST_OPENBAO_BIN`; skipped with a reason
//!   when unset) initialises an auto-sealed node with recovery keys and
//!   reads its status.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::autounseal::{
    init_with_recovery, node_config, put, start_transit, status, wait_for_read,
};
use crate::harness::{BIN, Server, bao_bin, free_port, get, start_with_config, wait_for};

/// `custos` with `VAULT_ADDR` and `VAULT_TOKEN` set.
fn cli(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("VAULT_ADDR", format!("http://{}", s.addr))
        .env("VAULT_TOKEN", token)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .output()
        .expect("run custos")
}

fn json_out(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|k| k.as_str().expect("string").to_string())
        .collect()
}

/// Generate a root token with `keys` through `custos operator
/// generate-root`; `Err(stderr)` when the keys do not authorise it.
fn generate_root(s: &Server, token: &str, keys: &[String]) -> Result<String, String> {
    let st = json_out(&cli(
        s,
        token,
        &["operator", "generate-root", "-init", "-format=json"],
    ));
    let (otp, nonce) = (
        st["otp"].as_str().expect("otp").to_string(),
        st["nonce"].as_str().expect("nonce").to_string(),
    );
    assert_eq!(st["required"], json!(keys.len()), "{st}");
    let mut last = Value::Null;
    for k in keys {
        let o = cli(
            s,
            token,
            &[
                "operator",
                "generate-root",
                &format!("-nonce={nonce}"),
                "-format=json",
                k,
            ],
        );
        if !o.status.success() {
            // The attempt stays (Vault resets only its progress): cancel.
            let c = cli(s, token, &["operator", "generate-root", "-cancel"]);
            assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        last = json_out(&o);
    }
    assert_eq!(last["complete"], json!(true), "{last}");
    let encoded = last["encoded_token"].as_str().expect("encoded").to_string();
    let v = json_out(&cli(
        s,
        token,
        &[
            "operator",
            "generate-root",
            &format!("-decode={encoded}"),
            &format!("-otp={otp}"),
            "-format=json",
        ],
    ));
    Ok(v["token"].as_str().expect("token").to_string())
}

async fn lookup_policies(s: &Server, token: &str) -> Value {
    let c = s.client();
    let (code, v) = get(&c, &s.url("auth/token/lookup-self"), token)
        .await
        .expect("lookup-self");
    assert_eq!(code, 200, "{v}");
    v["data"]["policies"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_keys_authorise_root_generation_and_both_rekeys() {
    let transit = start_transit().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = node_config(dir.path(), &transit.stanza(&transit.server.root_token, ""));
    let mut s = start_with_config(dir.path(), &cfg);
    let recovery = init_with_recovery(&mut s, 3, 2).await;
    let root = s.root_token.clone();

    // Generate root: authorised by recovery keys (required = their
    // threshold); the decoded token is a root token.
    let new_root = generate_root(&s, &root, &recovery[1..3]).expect("generate root");
    assert_eq!(lookup_policies(&s, &new_root).await, json!(["root"]));
    // A forged recovery key combination does not authenticate.
    let mut forged = recovery[0].clone();
    forged.replace_range(
        4..8,
        if &forged[4..8] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    let e = generate_root(&s, &root, &[recovery[1].clone(), forged]).unwrap_err();
    assert!(
        e.contains("root generation aborted: unable to authenticate"),
        "{e}"
    );

    // Rekey the recovery keys (3 of ... to 2 of 2) with the CLI.
    let st = json_out(&cli(
        &s,
        &root,
        &[
            "operator",
            "rekey",
            "-target=recovery",
            "-init",
            "-key-shares=2",
            "-key-threshold=2",
            "-format=json",
        ],
    ));
    assert_eq!(
        (&st["t"], &st["n"], &st["required"]),
        (&json!(2), &json!(2), &json!(2)),
        "{st}"
    );
    let nonce = st["nonce"].as_str().expect("nonce").to_string();
    let mut done = Value::Null;
    for k in &recovery[..2] {
        done = json_out(&cli(
            &s,
            &root,
            &[
                "operator",
                "rekey",
                "-target=recovery",
                &format!("-nonce={nonce}"),
                "-format=json",
                k,
            ],
        ));
    }
    assert_eq!(done["complete"], json!(true), "{done}");
    let new_recovery = strings(&done["keys_base64"]);
    assert_eq!(new_recovery.len(), 2);
    let st = status(&s).await;
    assert_eq!((&st["t"], &st["n"]), (&json!(2), &json!(2)), "{st}");
    // Old recovery keys stop working; the new ones authorise.
    let e = generate_root(&s, &root, &recovery[..2]).unwrap_err();
    assert!(e.contains("recovery key does not match"), "{e}");
    generate_root(&s, &root, &new_recovery).expect("new recovery keys authorise");

    // Rekey of the barrier key under the auto seal: recovery keys
    // authorise a new root key; no shares come back (OpenBao's rules).
    let (code, v) = put(
        &s,
        "sys/rotate/root/init",
        &root,
        json!({"secret_shares": 3, "secret_threshold": 2, "require_verification": true}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["errors"][0],
        "requiring verification not supported when rotating the barrier key with recovery keys"
    );
    let (code, v) = put(&s, "sys/rotate/root/init", &root, json!({})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (&v["data"]["t"], &v["data"]["n"], &v["data"]["required"]),
        (&json!(1), &json!(1), &json!(2)),
        "{v}"
    );
    let nonce = v["data"]["nonce"].as_str().expect("nonce").to_string();
    let mut last = Value::Null;
    for k in &new_recovery {
        let (code, v) = put(
            &s,
            "sys/rotate/root/update",
            &root,
            json!({"key": k, "nonce": nonce}),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        last = v;
    }
    assert_eq!(last["data"]["complete"], json!(true), "{last}");
    assert_eq!(last["data"]["keys"], json!([]), "{last}");

    // kill -9 right after: the node unseals itself through transit with the
    // rotated root key; data and the rekeyed recovery keys are in effect.
    s.kill9();
    drop(s);
    let mut s = start_with_config(dir.path(), &cfg);
    s.root_token = root.clone();
    let v = wait_for_read(&s, &root, Duration::from_secs(60)).await;
    assert_eq!(v["password"], "hunter2");
    let (code, v) = put(&s, "sys/seal", &root, json!({})).await;
    assert_eq!(code, 204, "{v}");
    for k in &recovery[..2] {
        put(&s, "sys/unseal", "", json!({"key": k})).await;
    }
    assert_eq!(
        status(&s).await["sealed"],
        json!(true),
        "old recovery keys unsealed"
    );
    put(&s, "sys/unseal", "", json!({"reset": true})).await;
    let mut v = Value::Null;
    for k in &new_recovery {
        (_, v) = put(&s, "sys/unseal", "", json!({"key": k})).await;
    }
    assert_eq!(v["sealed"], json!(false), "{v}");
    wait_for_read(&s, &root, Duration::from_secs(10)).await;
    // The CLI refuses an unknown target without calling the server.
    let o = cli(&s, &root, &["operator", "rekey", "-target=hsmx", "-status"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unknown target"));
}

fn cluster_node_config(
    dir: &Path,
    name: &str,
    api: u16,
    cluster: u16,
    join: Option<u16>,
    seal: &str,
) -> String {
    let retry = join
        .map(|p| format!("  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{p}\"\n  }}\n"))
        .unwrap_or_default();
    format!(
        r#"
api_addr     = "http://127.0.0.1:{api}"
cluster_addr = "http://127.0.0.1:{cluster}"
storage "raft" {{
  path    = "{raft}"
  node_id = "{name}"
{retry}}}
listener "tcp" {{
  address     = "127.0.0.1:{api}"
  tls_disable = true
}}
{seal}
"#,
        raft = dir.join("raft").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_unseal_nodes_join_and_a_restarted_follower_unseals_itself() {
    let transit = start_transit().await;
    let seal = transit.stanza(&transit.server.root_token, "");
    let tmp = tempfile::tempdir().expect("tempdir");
    let api1 = free_port();
    let mut nodes: Vec<(u16, std::path::PathBuf, Server)> = Vec::new();
    for i in 1..=3u16 {
        let name = format!("node{i}");
        let dir = tmp.path().join(&name);
        std::fs::create_dir_all(&dir).expect("dir");
        let api = if i == 1 { api1 } else { free_port() };
        let cfg = dir.join("server.hcl");
        let join = (i > 1).then_some(api1);
        std::fs::write(
            &cfg,
            cluster_node_config(&dir, &name, api, free_port(), join, &seal),
        )
        .expect("config");
        let mut server = start_with_config(&dir, &cfg);
        if i == 1 {
            init_with_recovery(&mut server, 1, 1).await;
        }
        nodes.push((api, cfg, server));
    }
    let root = nodes[0].2.root_token.clone();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}/v1/{path}");

    // Nobody gives keys: the joining nodes decrypt the cluster's root key
    // through the same transit key, join and unseal.
    wait_for("three voters", Duration::from_secs(90), || async {
        let (code, v) = get(&c, &url(api1, "sys/storage/raft/configuration"), &root).await?;
        let servers = v["data"]["config"]["servers"].as_array()?.clone();
        (code == 200 && servers.len() == 3 && servers.iter().all(|s| s["voter"] == json!(true)))
            .then_some(())
    })
    .await;
    for (api, _, _) in &nodes[1..] {
        wait_for(
            "a joined node to unseal",
            Duration::from_secs(60),
            || async {
                let (_, v) = get(&c, &url(*api, "sys/seal-status"), "").await?;
                (v["sealed"] == json!(false) && v["type"] == json!("transit")).then_some(())
            },
        )
        .await;
    }

    // Write on the leader, then kill -9 a follower and restart it: it comes
    // back unsealed by itself and serves the write (forwarded or local).
    let (code, v) = put(
        &nodes[0].2,
        "secret/data/app",
        &root,
        json!({"data": {"password": "after-join"}}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (api, cfg, mut follower) = nodes.pop().expect("node3");
    follower.kill9();
    drop(follower);
    let dir = cfg.parent().expect("dir").to_path_buf();
    let restarted = start_with_config(&dir, &cfg);
    assert_eq!(restarted.addr, format!("127.0.0.1:{api}"));
    let v = wait_for_read(&restarted, &root, Duration::from_secs(90)).await;
    assert_eq!(v["password"], "after-join");
    let st = status(&restarted).await;
    assert_eq!(
        (&st["sealed"], &st["type"]),
        (&json!(false), &json!("transit")),
        "{st}"
    );
    let (_, leader) = get(&c, &url(api, "sys/leader"), "").await.expect("leader");
    assert_eq!(leader["is_self"], json!(false), "{leader}");
}

fn bao(bin: &str, s: &Server, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("BAO_ADDR", format!("http://{}", s.addr))
        .env("VAULT_ADDR", format!("http://{}", s.addr))
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_TOKEN")
        .output()
        .expect("run bao")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_cli_initialises_an_auto_sealed_node_and_reads_its_status() {
    let Some(bin) = bao_bin() else { return };
    let transit = start_transit().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = node_config(dir.path(), &transit.stanza(&transit.server.root_token, ""));
    let s = start_with_config(dir.path(), &cfg);

    // Before init: `bao status` exits 2 (sealed), and says the seal type.
    let o = bao(&bin, &s, &["status", "-format=json"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let st: Value = serde_json::from_slice(&o.stdout).expect("status json");
    assert_eq!(st["type"], "transit", "{st}");
    assert_eq!(st["initialized"], json!(false), "{st}");

    let o = bao(
        &bin,
        &s,
        &[
            "operator",
            "init",
            "-recovery-shares=1",
            "-recovery-threshold=1",
            "-format=json",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let init: Value = serde_json::from_slice(&o.stdout).expect("init json");
    assert_eq!(init["unseal_keys_b64"], json!([]), "{init}");
    assert_eq!(init["recovery_keys_shares"], json!(1), "{init}");
    assert_eq!(init["recovery_keys_threshold"], json!(1), "{init}");
    assert_eq!(strings(&init["recovery_keys_b64"]).len(), 1, "{init}");
    assert_eq!(strings(&init["recovery_keys_hex"]).len(), 1, "{init}");
    let token = init["root_token"].as_str().expect("root token");
    assert!(token.starts_with("hvs."), "{init}");

    // Unsealed at once: `bao status` exits 0 with the recovery seal.
    let o = bao(&bin, &s, &["status", "-format=json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let st: Value = serde_json::from_slice(&o.stdout).expect("status json");
    assert_eq!(
        (&st["type"], &st["sealed"], &st["initialized"]),
        (&json!("transit"), &json!(false), &json!(true)),
        "{st}"
    );
    assert_eq!(st["recovery_seal"], json!(true), "{st}");
    assert_eq!(st["recovery_seal_type"], json!("shamir"), "{st}");
    assert_eq!((&st["t"], &st["n"]), (&json!(1), &json!(1)), "{st}");
    // The table form names the recovery seal type as OpenBao prints it.
    let o = bao(&bin, &s, &["status"]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Recovery Seal Type"), "{text}");
    assert!(text.contains("transit"), "{text}");
    // A second init is refused by the CLI with a non-zero exit.
    let o = bao(
        &bin,
        &s,
        &[
            "operator",
            "init",
            "-recovery-shares=1",
            "-recovery-threshold=1",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
}
