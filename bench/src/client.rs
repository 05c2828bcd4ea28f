//! A minimal Vault-API HTTP client for load generation.
//!
//! Requests come from the workloads (`workload.rs`) and the server set-up code
//! (`servers.rs`); they go over hyper-util's pooled HTTP/1.1 client with
//! keep-alive and `TCP_NODELAY` to any Vault-compatible address. The client is
//! target-neutral: an address and a token are all it knows. Replies come back
//! as a status code and the whole body, which the caller verifies.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One HTTP reply: status and full body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// 200 or 204: the only statuses a benchmark operation counts as success.
    pub fn ok(&self) -> bool {
        self.status == 200 || self.status == 204
    }

    /// The body as text, cut to `max` bytes, for error messages (error
    /// bodies are `{"errors":[...]}`, never secret values).
    pub fn snippet(&self, max: usize) -> String {
        let end = self.body.len().min(max);
        String::from_utf8_lossy(&self.body[..end]).into_owned()
    }
}

/// A cheap-to-clone client bound to one server address and token.
#[derive(Clone)]
pub struct VaultClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: HeaderValue,
}

impl VaultClient {
    /// `addr` is `http://host:port`; `pool` is the number of idle keep-alive
    /// connections kept per host (set it to the concurrency).
    pub fn new(addr: &str, token: &str, pool: usize) -> Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_keepalive(Some(Duration::from_secs(60)));
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool.max(1))
            .pool_idle_timeout(Duration::from_secs(90))
            .build(conn);
        let token = HeaderValue::from_str(token).context("token is not a valid header value")?;
        Ok(Self {
            http,
            base: addr.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub fn addr(&self) -> &str {
        &self.base
    }

    /// `method /v1/<path>` with an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply> {
        let uri: Uri = format!("{}/v1/{}", self.base, path)
            .parse()
            .with_context(|| format!("bad request path {path:?}"))?;
        let mut req = Request::builder().method(method).uri(uri);
        if !self.token.is_empty() {
            req = req.header("X-Vault-Token", self.token.clone());
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| anyhow!("building request: {e}"))?;
        let resp = self.http.request(req).await.map_err(|e| anyhow!("{e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading body: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Bytes) -> Result<Reply> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// POST a JSON value and require a 200/204; returns the parsed body
    /// (`Value::Null` for an empty one).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let r = self
            .call(Method::POST, path, Some(Bytes::from(body.to_string())))
            .await?;
        if !r.ok() {
            return Err(anyhow!("POST {path}: {} {}", r.status, r.snippet(300)));
        }
        if r.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&r.body).with_context(|| format!("POST {path}: reply is not JSON"))
    }
}
