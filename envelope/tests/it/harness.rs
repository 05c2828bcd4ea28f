//! Start a Custos dev server on port 0 with transit mounted at `transit/`.

use custos_core::server::{DevHandle, DevOptions, RunningServer, start_dev};
use custos_envelope::TransitClient;

pub struct Server {
    pub server: RunningServer,
    pub _dev: DevHandle,
    pub addr: String,
}

impl Server {
    pub async fn start() -> Server {
        let opts = DevOptions {
            root_token_id: Some("root".into()),
            listen: "127.0.0.1:0".parse().expect("literal address"),
            data_dir: None,
        };
        let (server, dev) = start_dev(&opts).await.expect("dev server starts");
        let addr = format!("http://{}", server.addrs[0]);
        let resp = reqwest::Client::new()
            .post(format!("{addr}/v1/sys/mounts/transit"))
            .header("X-Vault-Token", "root")
            .json(&serde_json::json!({"type": "transit"}))
            .send()
            .await
            .expect("mount request");
        assert!(
            resp.status().is_success(),
            "mounting transit: {}",
            resp.status()
        );
        Server {
            server,
            _dev: dev,
            addr,
        }
    }

    pub fn client(&self) -> TransitClient {
        TransitClient::new(&self.addr, "root", "transit").expect("client")
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}
