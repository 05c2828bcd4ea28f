//! TLS in a cluster (issue 19), on real `custos server --config` processes
//! on loopback whose API listeners serve HTTPS with a CA the test makes:
//!
//! - node2 joins through `retry_join { leader_ca_cert_file }`; node3 is
//!   first given another CA (refused: unknown issuer, it finds no cluster),
//!   then joins through `POST sys/storage/raft/join` with `leader_ca_cert`,
//!   a client certificate and `leader_tls_servername` (bad PEM and wrong
//!   types answer 400 naming the field);
//! - writes through a standby are forwarded over HTTPS, read back through
//!   the other, and survive `kill -9` of the leader;
//! - the cluster port speaks mutual TLS only: plain HTTP, TLS without a
//!   client certificate and TLS with a self-made certificate are refused,
//!   and counted in `custos_cluster_tls_handshake_failures_total`;
//! - no private key (the cluster's, the API's, the client's) appears in any
//!   node's output or audit log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::{Value, json};

use crate::harness::{self, Server, free_port, wait_for};

/// A CA and a certificate it signs for `names`, as PEM (ca, cert, key).
fn ca_and_cert(
    ca_name: &str,
    names: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.extended_key_usages = vec![eku];
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

struct Node {
    dir: PathBuf,
    api: u16,
    cluster: u16,
    server: Option<Server>,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/v1/{path}", self.api)
    }
}

fn config(node: &Node, name: &str, tls: &Path, retry_join: &str) -> PathBuf {
    let text = format!(
        r#"
api_addr     = "https://127.0.0.1:{api}"
cluster_addr = "https://127.0.0.1:{cluster}"
storage "raft" {{
  path    = "{raft}"
  node_id = "{name}"
{retry_join}}}
listener "tcp" {{
  address       = "127.0.0.1:{api}"
  tls_cert_file = "{cert}"
  tls_key_file  = "{key}"
}}
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
        api = node.api,
        cluster = node.cluster,
        raft = node.dir.join("raft").display(),
        cert = tls.join("api.crt").display(),
        key = tls.join("api.key").display(),
        audit = node.dir.join("audit").join("audit.log").display(),
    );
    let path = node.dir.join("server.hcl");
    std::fs::write(&path, text).expect("config");
    path
}

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tls_join_replicate_fail_over_and_refuse_strangers_on_the_cluster_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tls = tmp.path().join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    // The API listeners' CA and certificate (IP and DNS names), a client
    // certificate for joining, and a CA nobody uses.
    let (ca, api_cert, api_key) = ca_and_cert(
        "custos-test-api-ca",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (_, client_cert, client_key) = ca_and_cert(
        "custos-test-client-ca",
        &["joiner"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (other_ca, _, _) = ca_and_cert(
        "custos-test-other-ca",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    for (f, pem) in [
        ("ca.pem", &ca),
        ("api.crt", &api_cert),
        ("api.key", &api_key),
        ("other-ca.pem", &other_ca),
    ] {
        std::fs::write(tls.join(f), pem).expect("pem");
    }
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let dir = tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).expect("dir");
            Node {
                dir,
                api: free_port(),
                cluster: free_port(),
                server: None,
            }
        })
        .collect();
    let api1 = nodes[0].api;
    let leader_api = format!("https://127.0.0.1:{api1}");

    // node1: init, unseal, kv-v2 at secret/.
    let cfg = config(&nodes[0], "node1", &tls, "");
    nodes[0].server = Some(harness::start_with_config(&nodes[0].dir, &cfg));
    let (status, init) = send(
        c.put(nodes[0].url("sys/init"))
            .json(&json!({"secret_shares": 1, "secret_threshold": 1})),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    let key = init["keys"][0].as_str().expect("key").to_string();
    let token = init["root_token"].as_str().expect("token").to_string();
    let (_, v) = send(c.put(nodes[0].url("sys/unseal")).json(&json!({"key": key}))).await;
    assert_eq!(v["sealed"], json!(false), "{v}");
    let (status, v) = send(
        c.post(nodes[0].url("sys/mounts/secret"))
            .header("X-Vault-Token", &token)
            .json(&json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    assert_eq!(status, 204, "{v}");

    // node2 joins through retry_join with leader_ca_cert_file.
    let join2 = format!(
        "  retry_join {{\n    leader_api_addr     = \"{leader_api}\"\n    leader_ca_cert_file = \"{}\"\n  }}\n",
        tls.join("ca.pem").display()
    );
    let cfg = config(&nodes[1], "node2", &tls, &join2);
    nodes[1].server = Some(harness::start_with_config(&nodes[1].dir, &cfg));

    // node3 is given another CA: the leader's certificate is refused and it
    // finds no cluster.
    let join3 = format!(
        "  retry_join {{\n    leader_api_addr     = \"{leader_api}\"\n    leader_ca_cert_file = \"{}\"\n  }}\n",
        tls.join("other-ca.pem").display()
    );
    let cfg = config(&nodes[2], "node3", &tls, &join3);
    nodes[2].server = Some(harness::start_with_config(&nodes[2].dir, &cfg));
    let out3 = wait_for(
        "node3 to refuse the leader's certificate",
        Duration::from_secs(30),
        || async {
            let out = nodes[2].server.as_ref()?.output();
            out.contains("UnknownIssuer").then_some(out)
        },
    )
    .await;
    assert!(out3.contains("no leader answered yet"), "{out3}");
    let (_, st) = send(c.get(nodes[2].url("sys/seal-status"))).await;
    assert_eq!(st["initialized"], json!(false), "{st}");

    // sys/storage/raft/join: bad TLS fields are 400s that name the field.
    for (body, says) in [
        (
            json!({"leader_api_addr": leader_api, "leader_ca_cert": "garbage"}),
            "leader_ca_cert: no PEM certificate found",
        ),
        (
            json!({"leader_api_addr": leader_api, "leader_ca_cert": 5}),
            "leader_ca_cert: expected a string",
        ),
        (
            json!({"leader_api_addr": leader_api, "leader_client_cert": client_cert}),
            "leader_client_key: is required with leader_client_cert",
        ),
    ] {
        let (status, v) = send(c.post(nodes[2].url("sys/storage/raft/join")).json(&body)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["errors"].to_string().contains(says), "{v}");
    }
    // With the right CA, a client certificate and the name in the
    // certificate (not the address dialled), node3 joins.
    let (status, v) = send(c.post(nodes[2].url("sys/storage/raft/join")).json(&json!({
        "leader_api_addr": leader_api,
        "leader_ca_cert": ca,
        "leader_client_cert": client_cert,
        "leader_client_key": client_key,
        "leader_tls_servername": "localhost",
    })))
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["joined"], json!(true), "{v}");

    for n in &nodes[1..] {
        wait_for(
            "a joining node to report the cluster's seal",
            Duration::from_secs(30),
            || async {
                let (_, v) = send(c.get(n.url("sys/seal-status"))).await;
                (v["n"] == json!(1)).then_some(())
            },
        )
        .await;
        let (_, v) = send(c.put(n.url("sys/unseal")).json(&json!({"key": key}))).await;
        assert!(v["errors"].is_null(), "{v}");
    }
    wait_for("three voters", Duration::from_secs(60), || async {
        let (status, v) = send(
            c.get(nodes[0].url("sys/storage/raft/configuration"))
                .header("X-Vault-Token", &token),
        )
        .await;
        let servers = v["data"]["config"]["servers"].as_array()?.clone();
        (status == 200 && servers.len() == 3 && servers.iter().all(|s| s["voter"] == json!(true)))
            .then_some(())
    })
    .await;
    for n in &nodes[1..] {
        wait_for(
            "a joined node to unseal",
            Duration::from_secs(30),
            || async {
                let (_, v) = send(c.get(n.url("sys/seal-status"))).await;
                (v["sealed"] == json!(false)).then_some(())
            },
        )
        .await;
    }

    // Written through one standby, read through the other: both forwarded
    // to the active node's https:// api_addr.
    let (status, v) = send(
        c.post(nodes[1].url("secret/data/app"))
            .header("X-Vault-Token", &token)
            .json(&json!({"data": {"password": "hunter2"}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = send(
        c.get(nodes[2].url("secret/data/app"))
            .header("X-Vault-Token", &token),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["data"]["password"], json!("hunter2"), "{v}");

    // The cluster port: plain HTTP, TLS without a client certificate, and
    // TLS with a certificate of another CA (named as the cluster's) are
    // all refused before any RPC is served.
    let raft_url = |scheme: &str| format!("{scheme}://127.0.0.1:{}/raft/vote", nodes[0].cluster);
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("plain client");
    let r = plain.post(raft_url("http")).body("{}").send().await;
    assert!(r.is_err(), "plain HTTP on the cluster port: {r:?}");
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("tls client");
    let r = anonymous.post(raft_url("https")).body("{}").send().await;
    assert!(r.is_err(), "TLS without a client certificate: {r:?}");
    let (_, own_cert, own_key) = ca_and_cert(
        "self-made-ca",
        &["custos-cluster"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(
            reqwest::Identity::from_pem(format!("{own_cert}{own_key}").as_bytes())
                .expect("identity"),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .expect("stranger client");
    let r = stranger.post(raft_url("https")).body("{}").send().await;
    assert!(r.is_err(), "TLS with a self-made certificate: {r:?}");
    let metrics = wait_for(
        "the handshake failures counted",
        Duration::from_secs(10),
        || async {
            let text = c
                .get(nodes[0].url("sys/metrics?format=prometheus"))
                .header("X-Vault-Token", &token)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let line = text
                .lines()
                .find(|l| {
                    l.starts_with(
                        "custos_cluster_tls_handshake_failures_total{reason=\"handshake\"}",
                    )
                })?
                .to_string();
            let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
            (n >= 3.0).then_some(line)
        },
    )
    .await;
    println!("cluster port: {metrics}");

    // kill -9 the leader: a survivor elects itself (over TLS) and serves.
    let out1 = nodes[0]
        .server
        .as_ref()
        .map(Server::output)
        .unwrap_or_default();
    if let Some(mut s) = nodes[0].server.take() {
        s.kill9();
    }
    let killed = Instant::now();
    let leader = wait_for("a new leader", Duration::from_secs(30), || async {
        for (i, n) in nodes.iter().enumerate().skip(1) {
            let (_, v) = send(c.get(n.url("sys/leader"))).await;
            if v["is_self"] == json!(true) {
                return Some(i);
            }
        }
        None
    })
    .await;
    let (status, v) = send(
        c.post(nodes[leader].url("secret/data/after"))
            .header("X-Vault-Token", &token)
            .json(&json!({"data": {"k": "v"}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    println!(
        "failover over TLS: node{} leads and took a write {} ms after kill -9",
        leader + 1,
        killed.elapsed().as_millis()
    );
    let other = if leader == 1 { 2 } else { 1 };
    let (status, v) = send(
        c.get(nodes[other].url("secret/data/app"))
            .header("X-Vault-Token", &token),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // No private key in any node's output or audit log.
    let client_key_line = client_key.lines().nth(1).expect("key body");
    let mut audited = 0;
    for (i, n) in nodes.iter().enumerate() {
        let mut seen = match &n.server {
            Some(s) => s.output(),
            None => out1.clone(),
        };
        assert!(seen.contains("cluster TLS loaded"), "node{}: {seen}", i + 1);
        let events = harness::read_audit_events(&n.dir.join("audit"));
        audited += events.len();
        for e in events {
            seen.push_str(&e.to_string());
        }
        for needle in ["PRIVATE KEY", "BEGIN CERTIFICATE", client_key_line] {
            assert!(
                !seen.contains(needle),
                "node{}: {needle:?} in its output or audit",
                i + 1
            );
        }
    }
    assert!(audited > 0, "the nodes' audit logs are empty");
}
