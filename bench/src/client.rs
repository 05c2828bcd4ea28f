//! A minimal Vault-API HTTP client for load generation.
//!
//! Requests come from the workloads (`workload.rs`) and the server set-up code
//! (`servers.rs`) and go over HTTP/1.1 with keep-alive and `TCP_NODELAY` to any
//! Vault-compatible address. The client is target-neutral: an address and a
//! token are all it knows. Replies come back as a status code and the whole
//! body, which the caller verifies.
//!
//! Two ways to send: [`VaultClient`] (hyper-util's pooled client, shared by
//! set-up tasks) and [`Conn`], one keep-alive connection owned by one load
//! worker and driven inside that worker's task. The measured load uses
//! [`Conn`]: no pool to check out of and no separate connection task to wake,
//! so the generator spends less of the machine's CPU that the servers under
//! test also need.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One keep-alive HTTP/1.1 connection, used by one task at a time, which also
/// drives it: while a call waits, it polls the connection itself (no task of
/// its own). A connection the server closed is reopened by the next call.
pub struct Conn {
    addr: String,
    host: HeaderValue,
    token: HeaderValue,
    /// Headers sent on every request (see [`VaultClient::with_header`]).
    extra: Vec<(HeaderName, HeaderValue)>,
    live: Option<(Sender, Driver)>,
}

impl Conn {
    async fn open(&self) -> Result<(Sender, Driver)> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| anyhow!("http handshake with {}: {e}", self.addr))?;
        Ok((sender, Box::pin(driver)))
    }

    /// The connection, ready for a request: the kept-alive one if the
    /// server has not closed it meanwhile, else a new one.
    async fn ready(&mut self) -> Result<&mut (Sender, Driver)> {
        if let Some((sender, driver)) = &mut self.live
            && matches!(
                drive(driver, poll_fn(|cx| sender.poll_ready(cx))).await,
                Ok(Ok(()))
            )
        {
            return self
                .live
                .as_mut()
                .ok_or_else(|| anyhow!("connection vanished"));
        }
        self.live = None;
        let (mut sender, mut driver) = self.open().await?;
        drive(&mut driver, poll_fn(|cx| sender.poll_ready(cx)))
            .await?
            .map_err(|e| anyhow!("new connection to {}: {e}", self.addr))?;
        Ok(self.live.insert((sender, driver)))
    }

    /// `method /v1/<path>` with an optional JSON body.
    pub async fn call(&mut self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply> {
        let req = Request::builder()
            .method(method)
            .uri(format!("/v1/{path}"))
            .header(http::header::HOST, self.host.clone());
        let req = finish_request(req, &self.token, &self.extra, body)?;
        let (sender, driver) = self.ready().await?;
        let res = async {
            let resp = drive(driver, sender.send_request(req)).await??;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = drive(driver, resp.into_body().collect()).await??.to_bytes();
            Ok::<_, anyhow::Error>(Reply {
                status,
                headers,
                body,
            })
        }
        .await;
        if res.is_err() {
            // Whatever state the connection is in, the next call starts anew.
            self.live = None;
        }
        res
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<Reply> {
        self.call(Method::POST, path, Some(body)).await
    }
}

/// The Vault token header (when there is a token), the client's extra
/// headers, the JSON content type (when there is a body), and the body.
fn finish_request(
    mut req: http::request::Builder,
    token: &HeaderValue,
    extra: &[(HeaderName, HeaderValue)],
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>> {
    if !token.is_empty() {
        req = req.header("X-Vault-Token", token.clone());
    }
    for (k, v) in extra {
        req = req.header(k.clone(), v.clone());
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    req.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| anyhow!("building request: {e}"))
}

/// Wait for `fut` while driving the connection it depends on. The
/// connection finishing first (closed by the server, or failed) is an error.
async fn drive<F: Future>(driver: &mut Driver, fut: F) -> Result<F::Output> {
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match driver.as_mut().poll(cx) {
            Poll::Pending => match fut.as_mut().poll(cx) {
                Poll::Ready(v) => Poll::Ready(Ok(v)),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(end) => Poll::Ready(match fut.as_mut().poll(cx) {
                Poll::Ready(v) => Ok(v),
                Poll::Pending => Err(match end {
                    Ok(()) => anyhow!("the server closed the connection"),
                    Err(e) => anyhow!("connection: {e}"),
                }),
            }),
        }
    })
    .await
}

/// One HTTP reply: status and full body.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
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
    extra: Vec<(HeaderName, HeaderValue)>,
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
            extra: Vec::new(),
        })
    }

    /// This client, also sending `name: value` on every request (e.g.
    /// `X-Vault-Index` for reads served by a cluster's standbys).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("the value of {name} is not a valid header value"))?;
        self.extra.push((name, value));
        Ok(self)
    }

    pub fn addr(&self) -> &str {
        &self.base
    }

    /// A connection of its own to this client's server, for one load worker.
    pub fn conn(&self) -> Result<Conn> {
        let uri: Uri = self
            .base
            .parse()
            .with_context(|| format!("bad server address {:?}", self.base))?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("server address {:?} has no host:port", self.base))?
            .clone();
        if uri.scheme_str() != Some("http") {
            return Err(anyhow!(
                "load connections speak plain http, not {:?}",
                self.base
            ));
        }
        Ok(Conn {
            host: HeaderValue::from_str(authority.as_str())
                .context("server address is not a valid Host header")?,
            addr: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            token: self.token.clone(),
            extra: self.extra.clone(),
            live: None,
        })
    }

    /// `method /v1/<path>` with an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply> {
        let uri: Uri = format!("{}/v1/{}", self.base, path)
            .parse()
            .with_context(|| format!("bad request path {path:?}"))?;
        let req = finish_request(
            Request::builder().method(method).uri(uri),
            &self.token,
            &self.extra,
            body,
        )?;
        let resp = self.http.request(req).await.map_err(|e| anyhow!("{e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers one request per connection and then closes it
    /// (without saying so), counting connections: a [`Conn`] must notice the
    /// close and carry on over a new connection, sending the token and body.
    #[tokio::test]
    async fn conn_reopens_a_connection_the_server_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let body = format!("{{\"n\":{}}}", seen.len());
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
                seen.push(text);
                // Dropped here: closed with no `Connection: close`.
            }
            seen
        });
        let client = VaultClient::new(&format!("http://{addr}"), "tok-1", 1)
            .unwrap()
            .with_header("X-Vault-Index", "djE6MTI=")
            .unwrap();
        let mut conn = client.conn().unwrap();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let r = conn
                .post("transit/encrypt/k", Bytes::from("{}"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            bodies.push(String::from_utf8(r.body.to_vec()).unwrap());
            // Let the server's close arrive while the connection is idle.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(bodies, ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("POST /v1/transit/encrypt/k HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        let lower = seen[0].to_ascii_lowercase();
        assert!(lower.contains("x-vault-token: tok-1\r\n"), "{}", seen[0]);
        assert!(lower.contains(&format!("host: {addr}\r\n")), "{}", seen[0]);
        assert!(lower.contains("x-vault-index: dje6mti=\r\n"), "{}", seen[0]);
    }

    #[test]
    fn conn_refuses_an_address_it_cannot_speak_to() {
        let c = VaultClient::new("https://127.0.0.1:8200", "t", 1).unwrap();
        assert!(c.conn().is_err());
    }
}
