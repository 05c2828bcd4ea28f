//! A three-node cluster of real `custos server --config` processes on
//! loopback: node 1 starts a cluster, nodes 2 and 3 join it through
//! `retry_join` and are unsealed with node 1's key. `sys/health` answers
//! 429 on standbys; a secret written through one standby is read back
//! through the other (both forwarded to the leader); `sys/step-down` moves
//! leadership while a client writes (retrying once on another node) and no
//! write is lost; the secret survives `kill -9` of the leader and is read
//! through a survivor (the failover time is printed, not asserted). A
//! snapshot restored on a lone node reaches the nodes that join after it,
//! and one restored on the three nodes reaches every follower (each checked
//! on a new leader after `kill -9` of the old). The cluster comes from
//! [`crate::cluster_harness`].

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster_harness::{ClusterOptions, TestCluster};
use crate::harness::{self, get, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_replicate_and_fail_over() {
    // Nodes 2 and 3 found the cluster through retry_join (they reported its
    // seal, one share) and were unsealed with node 1's key.
    let mut cl = TestCluster::start(3, false).await;
    let (token, c) = (cl.token.clone(), cl.c.clone());
    let api1 = cl.nodes[0].api;
    assert_eq!(
        cl.nodes[0].server.as_ref().map(|s| s.addr.clone()),
        Some(format!("127.0.0.1:{api1}"))
    );
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}/v1/{path}");

    // Three voters, node 1 leading; the joined nodes unseal themselves.
    let servers = wait_for("three voters", Duration::from_secs(60), || async {
        let (status, v) = get(&c, &url(api1, "sys/storage/raft/configuration"), &token).await?;
        let servers = v["data"]["config"]["servers"].as_array()?.clone();
        (status == 200 && servers.len() == 3 && servers.iter().all(|s| s["voter"] == json!(true)))
            .then_some(servers)
    })
    .await;
    for (s, n) in servers.iter().zip(["node1", "node2", "node3"]) {
        assert!(servers.iter().any(|x| x["node_id"] == json!(n)), "{s}");
    }
    assert!(
        servers
            .iter()
            .any(|s| s["node_id"] == json!("node1") && s["leader"] == json!(true)),
        "{servers:?}"
    );
    for n in &cl.nodes[1..] {
        let (_, leader) = get(&c, &url(n.api, "sys/leader"), "")
            .await
            .expect("leader");
        assert_eq!(leader["is_self"], json!(false), "{leader}");
        assert_eq!(
            leader["leader_address"],
            json!(format!("http://127.0.0.1:{api1}")),
            "{leader}"
        );
    }

    // sys/health: 429 on a standby (200 with standbyok), 200 on the leader.
    let health = |port: u16, q: &'static str| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!("http://127.0.0.1:{port}/v1/sys/health{q}"))
                .send()
                .await
                .expect("health");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = health(api1, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["standby"], json!(false), "{v}");
    for n in &cl.nodes[1..] {
        let (status, v) = health(n.api, "").await;
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["standby"], json!(true), "{v}");
        // As OpenBao: no performance standbys, and no such field.
        assert!(v.get("performance_standby").is_none(), "{v}");
        assert_eq!(health(n.api, "?standbyok=true").await.0, 200);
        assert_eq!(health(n.api, "?standbycode=472").await.0, 472);
        assert_eq!(health(n.api, "?perfstandbyok=true").await.0, 429);
    }

    // A secret written through one standby is read back through the other
    // (both forwarded to the leader).
    let (s2, s3) = (cl.nodes[1].api, cl.nodes[2].api);
    let r = c
        .post(url(s2, "secret/data/app"))
        .header("X-Vault-Token", &token)
        .json(&json!({"data": {"password": "hunter2"}}))
        .send()
        .await
        .expect("write through a standby");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let (status, v) = get(&c, &url(s3, "secret/data/app"), &token)
        .await
        .expect("read through the other standby");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["data"]["password"], json!("hunter2"), "{v}");

    // sys/ha-status (forwarded): three nodes, node1 active.
    let (status, v) = get(&c, &url(s3, "sys/ha-status"), &token)
        .await
        .expect("ha-status");
    assert_eq!(status, 200, "{v}");
    let ha = v["data"]["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(ha.len(), 3, "{v}");
    for h in &ha {
        let active = h["hostname"] == json!("node1");
        assert_eq!(h["active_node"], json!(active), "{v}");
        assert!(
            h["api_address"]
                .as_str()
                .is_some_and(|a| a.starts_with("http://")),
            "{v}"
        );
    }

    // Step-down under writes: a client writing through node1 retries a
    // failed write once on another node and loses none.
    let writer = {
        let (c, token) = (c.clone(), token.clone());
        let ports = [api1, s2, s3];
        tokio::spawn(async move {
            let mut written = 0usize;
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                let body = json!({"data": {"n": written}});
                let path = format!("secret/data/sd{written}");
                let mut ok = false;
                for port in [ports[0], ports[1 + written % 2]] {
                    let r = c
                        .post(format!("http://127.0.0.1:{port}/v1/{path}"))
                        .header("X-Vault-Token", &token)
                        .json(&body)
                        .send()
                        .await;
                    if matches!(&r, Ok(r) if r.status().is_success()) {
                        ok = true;
                        break;
                    }
                }
                assert!(ok, "write {path} failed on two nodes");
                written += 1;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let r = c
        .put(url(s2, "sys/step-down"))
        .header("X-Vault-Token", &token)
        .send()
        .await
        .expect("step-down");
    assert_eq!(
        r.status().as_u16(),
        204,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let stepped = asked.elapsed();
    let written = writer.await.expect("writer");
    let (_, v) = get(&c, &url(api1, "sys/leader"), "").await.expect("leader");
    assert_eq!(v["is_self"], json!(false), "{v}");
    let leader_addr = v["leader_address"].as_str().unwrap_or_default().to_string();
    println!(
        "step-down: leadership moved from node1 to {leader_addr} in {} ms; {written} writes, none lost",
        stepped.as_millis()
    );
    for i in 0..written {
        let (status, v) = get(&c, &url(api1, &format!("secret/data/sd{i}")), &token)
            .await
            .expect("read back");
        assert_eq!(status, 200, "sd{i}: {v}");
        assert_eq!(v["data"]["data"]["n"], json!(i), "{v}");
    }

    // kill -9 the leader; the other two elect one of themselves, and a
    // read through either survivor succeeds.
    let leader_idx = cl
        .nodes
        .iter()
        .position(|n| leader_addr == format!("http://127.0.0.1:{}", n.api))
        .expect("the leader is a node");
    cl.kill9(leader_idx);
    let killed = Instant::now();
    let survivors: Vec<(String, u16)> = cl
        .nodes
        .iter()
        .filter(|n| n.server.is_some())
        .map(|n| (n.name.clone(), n.api))
        .collect();
    let read = wait_for(
        "the secret through a survivor",
        Duration::from_secs(30),
        || async {
            let (status, v) = get(&c, &url(survivors[0].1, "secret/data/app"), &token).await?;
            (status == 200).then_some(v)
        },
    )
    .await;
    let served = killed.elapsed();
    assert_eq!(read["data"]["data"]["password"], json!("hunter2"), "{read}");
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        for (name, api) in &survivors {
            if let Some((_, v)) = get(&c, &url(*api, "sys/leader"), "").await
                && v["is_self"] == json!(true)
            {
                return Some((name.clone(), *api));
            }
        }
        None
    })
    .await;
    println!(
        "failover: kill -9 of the leader -> first successful read through {} after {} ms ({} leads)",
        survivors[0].0,
        served.as_millis(),
        new_leader.0
    );

    // The new leader takes writes and reports itself in the configuration.
    let r = c
        .post(url(new_leader.1, "secret/data/after"))
        .header("X-Vault-Token", &token)
        .json(&json!({"data": {"k": "v"}}))
        .send()
        .await
        .expect("write after failover");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let (_, v) = get(
        &c,
        &url(new_leader.1, "sys/storage/raft/configuration"),
        &token,
    )
    .await
    .expect("configuration");
    let servers = v["data"]["config"]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        servers
            .iter()
            .any(|s| s["node_id"] == json!(new_leader.0) && s["leader"] == json!(true)),
        "{v}"
    );

    // The CLI lists the same peers.
    let out = std::process::Command::new(harness::BIN)
        .args(["operator", "raft", "list-peers"])
        .env("VAULT_ADDR", format!("http://127.0.0.1:{}", new_leader.1))
        .env("VAULT_TOKEN", &token)
        .output()
        .expect("list-peers");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["node1", "node2", "node3"] {
        assert!(text.contains(n), "{text}");
    }
    assert!(text.contains("leader"), "{text}");
}

/// `GET sys/storage/raft/snapshot` through node `i`: the archive.
async fn save_snapshot(cl: &TestCluster, i: usize) -> Vec<u8> {
    let r =
        cl.c.get(cl.nodes[i].url("sys/storage/raft/snapshot"))
            .header("X-Vault-Token", &cl.token)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("snapshot save");
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.expect("snapshot body").to_vec()
}

/// `POST sys/storage/raft/snapshot` (this cluster's) through node `i`.
async fn restore_snapshot(cl: &TestCluster, i: usize, archive: Vec<u8>) {
    let r =
        cl.c.post(cl.nodes[i].url("sys/storage/raft/snapshot"))
            .header("X-Vault-Token", &cl.token)
            .timeout(Duration::from_secs(60))
            .body(archive)
            .send()
            .await
            .expect("snapshot restore");
    let status = r.status().as_u16();
    assert_eq!(status, 204, "{}", r.text().await.unwrap_or_default());
}

/// Whether each of `paths` reads back (200) or not (404) through node `i`.
async fn present(cl: &TestCluster, i: usize, paths: &[&str]) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for p in paths {
        let url = cl.nodes[i].url(&format!("secret/data/{p}"));
        let status = get(&cl.c, &url, &cl.token).await.map_or(0, |(s, _)| s);
        out.push((p.to_string(), status));
    }
    out
}

/// A restore on a lone node stages its pairs outside the log; nodes that
/// join afterwards must get them through a snapshot, never by replaying the
/// restore's commit without its pairs. A restore on the three-node cluster
/// goes through the log to every node. Each time the leader is killed and
/// the new leader answers from its own state: exactly the restored secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_reach_nodes_that_join_later_and_every_follower() {
    let mut cl = TestCluster::start_with(
        3,
        ClusterOptions {
            lone_start: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    cl.write_until_acked(0, "restore/a", 1).await;
    let first = save_snapshot(&cl, 0).await;
    cl.write_until_acked(0, "restore/b", 1).await;
    restore_snapshot(&cl, 0, first).await;
    let want = [("restore/a", 200), ("restore/b", 404)];
    let paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
    let expect: Vec<(String, u16)> = want.iter().map(|(p, s)| (p.to_string(), *s)).collect();
    assert_eq!(present(&cl, 0, &paths).await, expect);

    cl.join(1).await;
    cl.join(2).await;
    assert_eq!(cl.voters().await, 3);
    cl.converged(0).await;
    cl.kill9(0);
    let leader = cl.leader_among(&[1, 2]).await;
    assert_eq!(
        present(&cl, leader, &paths).await,
        expect,
        "node{} after the lone restore",
        leader + 1
    );

    // node1 back as a follower; a restore on three nodes, through the log.
    cl.boot(0);
    let r = cl.unseal(0).await;
    assert!(r["errors"].is_null(), "{r}");
    cl.wait_unsealed(0).await;
    cl.write_until_acked(leader, "restore/c", 1).await;
    let second = save_snapshot(&cl, leader).await;
    cl.write_until_acked(leader, "restore/d", 1).await;
    restore_snapshot(&cl, leader, second).await;
    cl.converged(leader).await;
    cl.kill9(leader);
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let next = cl.leader_among(&rest).await;
    let want = [
        ("restore/a", 200),
        ("restore/b", 404),
        ("restore/c", 200),
        ("restore/d", 404),
    ];
    let paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
    let expect: Vec<(String, u16)> = want.iter().map(|(p, s)| (p.to_string(), *s)).collect();
    assert_eq!(
        present(&cl, next, &paths).await,
        expect,
        "node{} after the restore through the log",
        next + 1
    );
}
