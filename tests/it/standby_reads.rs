//! Reads served by standbys for a client's `X-Vault-Index` (issue 19 item
//! 3), on three real `custos server --config` processes on loopback with a
//! file audit device each (the cluster harness of `cluster_ha`):
//!
//! - a write on the leader answers with `X-Vault-Index`; the same key read
//!   on a standby with that header is 200 with the new value every time,
//!   served by the standby itself (its counter and its own audit log say
//!   so) and answered with an index of its own;
//! - a forged or garbage index, or an unknown `X-Vault-Inconsistent`, is a
//!   400 in Vault's shape on any node;
//! - a write, a token-store read and a read with a use-limited token sent to
//!   a standby with an index are forwarded (the use is spent on the active
//!   node);
//! - a standby that cannot reach the index (removed from the cluster, so it
//!   applies nothing more) answers 412 to `X-Vault-Inconsistent: fail`.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster_harness::TestCluster;

const INDEX: &str = "X-Vault-Index";

/// One request: status, body, and the `X-Vault-Index` of the answer.
async fn send(
    cl: &TestCluster,
    req: reqwest::RequestBuilder,
    token: &str,
) -> (u16, Value, Option<String>) {
    let r = req
        .header("X-Vault-Token", token)
        .send()
        .await
        .expect("request");
    let _ = cl;
    let status = r.status().as_u16();
    let index = r
        .headers()
        .get(INDEX)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, index)
}

/// The sum of `custos_standby_reads_total{outcome=...}` on node `i`.
async fn standby_reads(cl: &TestCluster, i: usize, outcome: &str) -> u64 {
    let text = cl.metrics(i).await;
    text.lines()
        .filter(|l| {
            l.starts_with("custos_standby_reads_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn assert_vault_error(status: u16, body: &Value, want_status: u16, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let errors = body["errors"].as_array().expect("errors array");
    assert!(!errors.is_empty(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_serve_reads_at_the_clients_index_and_forward_the_rest() {
    let cl = TestCluster::start(3, true).await;
    let leader = cl.leader().await;
    let standbys: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let tok = cl.token.clone();

    // Read-your-writes through the standbys, every time.
    const ROUNDS: usize = 30;
    for n in 0..ROUNDS {
        let path = format!("secret/data/ryw/{}", n % 5);
        let (status, body, index) = send(
            &cl,
            cl.c.post(cl.nodes[leader].url(&path))
                .json(&json!({"data": {"n": n}})),
            &tok,
        )
        .await;
        assert_eq!(status, 200, "write {n}: {body}");
        let index = index.expect("a write's answer carries X-Vault-Index");
        let s = standbys[n % 2];
        let (status, body, answered) = send(
            &cl,
            cl.c.get(cl.nodes[s].url(&path)).header(INDEX, &index),
            &tok,
        )
        .await;
        assert_eq!(status, 200, "read {n} on node{}: {body}", s + 1);
        assert_eq!(body["data"]["data"]["n"], json!(n), "read {n}: {body}");
        assert!(answered.is_some(), "a standby's answer carries its index");
    }
    let local: u64 = standby_reads(&cl, standbys[0], "local").await
        + standby_reads(&cl, standbys[1], "local").await;
    assert!(
        local >= ROUNDS as u64,
        "the standbys served the reads themselves: {local}"
    );
    // ...and audited them in their own logs.
    for &s in &standbys {
        let log = std::fs::read_to_string(cl.nodes[s].dir.join("audit").join("audit.log"))
            .expect("standby audit log");
        assert!(
            log.contains("secret/data/ryw/"),
            "node{} audited the reads it served",
            s + 1
        );
    }

    // A fresh index from the leader, for the rest.
    let (_, _, index) = send(
        &cl,
        cl.c.post(cl.nodes[leader].url("secret/data/k"))
            .json(&json!({"data": {"v": "one"}})),
        &tok,
    )
    .await;
    let index = index.expect("index");

    // Forged and garbage indexes: 400 in Vault's shape, on any node.
    let raw = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&index)
            .expect("base64 index"),
    )
    .expect("utf8 index");
    let mut parts: Vec<String> = raw.split(':').map(str::to_string).collect();
    let n: u64 = parts[1].parse().expect("index number");
    parts[1] = (n + 1000).to_string();
    let forged = base64::engine::general_purpose::STANDARD.encode(parts.join(":"));
    for bad in [forged.as_str(), "not-an-index", ""] {
        for node in [leader, standbys[0]] {
            let (status, body, _) = send(
                &cl,
                cl.c.get(cl.nodes[node].url("secret/data/k"))
                    .header(INDEX, bad),
                &tok,
            )
            .await;
            assert_vault_error(status, &body, 400, &format!("index {bad:?}"));
        }
    }
    let (status, body, _) = send(
        &cl,
        cl.c.get(cl.nodes[standbys[0]].url("secret/data/k"))
            .header(INDEX, &index)
            .header("X-Vault-Inconsistent", "sometimes"),
        &tok,
    )
    .await;
    assert_vault_error(status, &body, 400, "unknown X-Vault-Inconsistent");

    // A write sent to a standby with an index is forwarded (a standby
    // cannot write: had it served it, it would have failed).
    let s = standbys[0];
    let forwarded_before = standby_reads(&cl, s, "forwarded").await;
    let (status, body, index2) = send(
        &cl,
        cl.c.post(cl.nodes[s].url("secret/data/k"))
            .header(INDEX, &index)
            .json(&json!({"data": {"v": "two"}})),
        &tok,
    )
    .await;
    assert_eq!(status, 200, "write through a standby: {body}");
    let index2 = index2.expect("the active node's index comes back");
    let (status, body, _) = send(&cl, cl.c.get(cl.nodes[leader].url("secret/data/k")), &tok).await;
    assert_eq!((status, &body["data"]["data"]["v"]), (200, &json!("two")));

    // A token-store read (not a route a standby serves) is forwarded.
    let (status, body, _) = send(
        &cl,
        cl.c.get(cl.nodes[s].url("auth/token/lookup-self"))
            .header(INDEX, &index2),
        &tok,
    )
    .await;
    assert_eq!(status, 200, "lookup-self through a standby: {body}");

    // A use-limited token's read goes to the active node, which spends
    // the use.
    let (status, body, _) = send(
        &cl,
        cl.c.post(cl.nodes[leader].url("auth/token/create"))
            .json(&json!({"num_uses": 5, "policies": ["root"]})),
        &tok,
    )
    .await;
    assert_eq!(status, 200, "token create: {body}");
    let limited = body["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let (status, body, idx3) = send(
        &cl,
        cl.c.get(cl.nodes[s].url("secret/data/k"))
            .header(INDEX, &index2),
        &limited,
    )
    .await;
    assert_eq!(status, 200, "read with a use-limited token: {body}");
    assert_eq!(body["data"]["data"]["v"], json!("two"));
    let (status, body, _) = send(
        &cl,
        cl.c.post(cl.nodes[leader].url("auth/token/lookup"))
            .json(&json!({"token": limited})),
        &tok,
    )
    .await;
    assert_eq!(status, 200, "lookup: {body}");
    assert_eq!(
        body["data"]["num_uses"],
        json!(4),
        "the use was spent on the active node"
    );
    assert!(idx3.is_some());
    let forwarded_after = standby_reads(&cl, s, "forwarded").await;
    assert!(
        forwarded_after >= forwarded_before + 2,
        "lookup-self and the use-limited read were forwarded: {forwarded_before} -> {forwarded_after}"
    );

    // A standby that cannot catch up (removed from the cluster, it applies
    // nothing more) answers 412 to X-Vault-Inconsistent: fail.
    let lagging = standbys[1];
    let (status, body, _) = send(
        &cl,
        cl.c.post(cl.nodes[leader].url("sys/storage/raft/remove-peer"))
            .json(&json!({"server_id": cl.nodes[lagging].name})),
        &tok,
    )
    .await;
    assert!(status == 200 || status == 204, "remove-peer: {body}");
    let (status, body, ahead) = send(
        &cl,
        cl.c.post(cl.nodes[leader].url("secret/data/k"))
            .json(&json!({"data": {"v": "three"}})),
        &tok,
    )
    .await;
    assert_eq!(status, 200, "write after the removal: {body}");
    let ahead = ahead.expect("index");
    let (status, body, _) = send(
        &cl,
        cl.c.get(cl.nodes[lagging].url("secret/data/k"))
            .header(INDEX, &ahead)
            .header("X-Vault-Inconsistent", "fail"),
        &tok,
    )
    .await;
    assert_vault_error(status, &body, 412, "a lagging standby told to fail");
    assert_eq!(body["errors"][0], json!("required index state not present"));
    assert!(standby_reads(&cl, lagging, "inconsistent").await >= 1);
}
