//! `telemetry { metrics_prefix = "vault" }` at the scrape endpoint: a dev
//! server's `/v1/sys/metrics` exposes Vault's names for the metrics with a
//! Vault equivalent and keeps `custos_` names for the rest.
//!
//! Its own test binary (not a module of one shared `it` binary) because the
//! metrics prefix is process-global state.

use custos_core::server::{DevOptions, start_dev};

async fn scrape(base: &str) -> String {
    let r = reqwest::get(format!("{base}/v1/sys/metrics?format=prometheus"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_prefix_renames_mapped_metrics_only() {
    let (server, _dev) = start_dev(&DevOptions {
        root_token_id: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.addrs[0]);
    let custos = scrape(&base).await;
    assert!(custos.contains("\ncustos_core_unsealed{"), "{custos}");
    assert!(
        custos.contains("# TYPE custos_core_unsealed gauge"),
        "{custos}"
    );

    custos_core::metrics::set_prefix("vault");
    let vault = scrape(&base).await;
    custos_core::metrics::set_prefix("custos");
    assert!(vault.contains("\nvault_core_unsealed{"), "{vault}");
    assert!(
        vault.contains("# TYPE vault_core_unsealed gauge"),
        "{vault}"
    );
    assert!(!vault.contains("custos_core_unsealed"), "{vault}");
    // No Vault equivalent: the Custos name stays.
    assert!(vault.contains("custos_core_initialized"), "{vault}");
    server.shutdown().await;
}
