//! `custos-bench kek-rotation`: the KEK rotation at scale, end to end.
//!
//! Starts a Custos server (persistent Raft, file audit, as `compare` does),
//! seals `--deks` records with the envelope crate (a DEK per record from
//! `transit/datakey/plaintext`, data encrypted locally) and stores each as a
//! KV v2 record under `secret/orders/deks/`, then runs the real rotator
//! (`custos rotator run orders-kek`, KEK job, grace 0) and times it: transit
//! rotate, rewrap of every record with batched `transit/rewrap` and
//! check-and-set writes, verify through `sys/audit-query`, and the raised
//! `min_decryption_version`. Afterwards every record is read back, must carry
//! a wrapped DEK under the new KEK version and its untouched data ciphertext,
//! and must open to its plaintext. A scale run, not a test: it prints figures.
//! The side-by-side figure for the rewrap call itself is the
//! `transit-rewrap-batch100` workload of `compare`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::servers::{self, Kind};

const PARALLEL: usize = 64;

/// Run the scale check; returns the report as JSON.
pub async fn run(custos_bin: &Path, deks: usize, parent: &Path) -> Result<Value> {
    std::fs::create_dir_all(parent)?;
    let parent = std::fs::canonicalize(parent)?;
    let server = servers::start(Kind::Custos, custos_bin, &parent).await?;
    let addr = server.addr.clone();
    let token = server.token.clone();
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let (http, addr, token) = (http.clone(), addr.clone(), token.clone());
        async move {
            let r = http
                .post(format!("{addr}/v1/{path}"))
                .header("X-Vault-Token", &token)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {path}"))?;
            if !r.status().is_success() {
                bail!("POST {path}: {}", r.status());
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    post(
        "transit/keys/orders".into(),
        json!({"type": "aes256-gcm96"}),
    )
    .await?;

    // Seal and store.
    let client = custos_envelope::TransitClient::new(addr.clone(), token.clone(), "transit")?;
    let env = custos_envelope::Envelope::new(client, "orders");
    let plaintexts: Vec<Vec<u8>> = (0..deks)
        .map(|i| format!("order #{i}: 3 items, EUR {}.{:02}", i % 997, i % 100).into_bytes())
        .collect();
    let t0 = Instant::now();
    let refs: Vec<&[u8]> = plaintexts.iter().map(Vec::as_slice).collect();
    let recs = env.seal_many(&refs, PARALLEL).await?;
    let seal_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    futures::stream::iter(recs.iter().enumerate())
        .map(|(i, r)| {
            post(
                format!("secret/data/orders/deks/{:03}/{i}", i % 256),
                json!({"data": {"wrapped_dek": r.wrapped_dek, "nonce": r.nonce, "ciphertext": r.ciphertext}}),
            )
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let store_s = t0.elapsed().as_secs_f64();
    eprintln!("kek-rotation: {deks} records sealed in {seal_s:.1}s, stored in {store_s:.1}s");

    // Rotate with the real rotator.
    let cfg = server.dir.join("rotator.hcl");
    std::fs::write(
        &cfg,
        format!(
            r#"server {{
  address = "{addr}"
}}
job "orders-kek" {{
  kind        = "kek"
  schedule    = "@monthly"
  transit_key = "transit/orders"
  dek_prefix  = "secret/orders/deks/"
  consumers   = ["orders-svc"]
  concurrency = 64
  grace       = "0s"
  deadline    = "1h"
}}
"#
        ),
    )?;
    let t0 = Instant::now();
    let mut cmd = std::process::Command::new(custos_bin);
    cmd.args(["rotator", "run", "orders-kek", "--config"])
        .arg(&cfg)
        .env("VAULT_TOKEN", &token)
        .env("CUSTOS_LOG", "info");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let rotate_s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "custos rotator run: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("kek-rotation: rotator run finished in {rotate_s:.1}s");

    // Every record: on v2, data untouched, opens.
    let t0 = Instant::now();
    let stored: Vec<custos_envelope::SealedRecord> = futures::stream::iter(0..deks)
        .map(|i| {
            let (http, addr, token) = (http.clone(), addr.clone(), token.clone());
            async move {
                let v: Value = http
                    .get(format!(
                        "{addr}/v1/secret/data/orders/deks/{:03}/{i}",
                        i % 256
                    ))
                    .header("X-Vault-Token", &token)
                    .send()
                    .await?
                    .json()
                    .await?;
                let d = &v["data"]["data"];
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                Ok::<_, anyhow::Error>(custos_envelope::SealedRecord {
                    wrapped_dek: s("wrapped_dek"),
                    nonce: s("nonce"),
                    ciphertext: s("ciphertext"),
                })
            }
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let mut not_v2 = 0usize;
    let mut data_changed = 0usize;
    for (i, r) in stored.iter().enumerate() {
        if r.kek_version() != Some(2) {
            not_v2 += 1;
        }
        if r.ciphertext != recs[i].ciphertext || r.nonce != recs[i].nonce {
            data_changed += 1;
        }
    }
    let mut opened_ok = 0usize;
    for (chunk_i, chunk) in stored.chunks(5000).enumerate() {
        for (j, p) in env.open_many(chunk).await?.into_iter().enumerate() {
            let i = chunk_i * 5000 + j;
            if p.ok()
                .is_some_and(|p| p.as_slice() == plaintexts[i].as_slice())
            {
                opened_ok += 1;
            }
        }
    }
    let check_s = t0.elapsed().as_secs_f64();
    let key: Value = http
        .get(format!("{addr}/v1/transit/keys/orders"))
        .header("X-Vault-Token", &token)
        .send()
        .await?
        .json()
        .await?;
    let min_dec = key["data"]["min_decryption_version"].as_u64().unwrap_or(0);
    let report = json!({
        "deks": deks,
        "seal_seconds": seal_s,
        "store_seconds": store_s,
        "rotation_seconds": rotate_s,
        "rewrapped_per_second": deks as f64 / rotate_s.max(1e-9),
        "records_not_on_new_version": not_v2,
        "records_with_data_changed": data_changed,
        "records_opened": opened_ok,
        "check_seconds": check_s,
        "min_decryption_version": min_dec,
        "server_version": server.version,
    });
    eprintln!("{log}");
    if not_v2 != 0 || data_changed != 0 || opened_ok != deks || min_dec != 2 {
        bail!("kek-rotation check failed: {report}");
    }
    Ok(report)
}
