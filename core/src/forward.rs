//! Request forwarding: a standby sends what it receives to the active node
//! and returns the active node's answer unchanged.
//!
//! `crate::http` asks [`target`] for every request. A node without a
//! cluster, a sealed node, the active node, and the endpoints every node
//! answers for itself ([`is_local`]: `sys/health`, `sys/seal-status`,
//! `sys/leader`, `sys/init`, `sys/unseal`, joining, `sys/metrics`) are served
//! here. Anything else, on a standby, goes to the active node's `api_addr`
//! (from the Raft membership) with the same method, path, query, headers and
//! body; status, headers and body come back as the active node sent them,
//! the body streamed. So a client may talk to any node and reads its own
//! writes on every node (all reads are the active node's).
//!
//! While there is no leader (an election, a step-down in progress) the
//! request waits up to [`LEADER_WAIT`] for one. A request whose body is
//! buffered (all but the streamed Raft snapshots) is retried once the next
//! leader is known when the one it was sent to cannot be reached (killed).
//!
//! **Who the client was.** The standby adds `X-Forwarded-For` (informative,
//! never trusted) and [`FORWARDED_HEADER`]:
//! `<client ip:port> <request id> <unix ms> <hex HMAC-SHA256>`, the MAC over
//! the first three fields under a key derived from the cluster's root key
//! (`HMAC(root key, "custos-forward")`), which only an unsealed member of
//! the cluster holds. The active node ([`verified_origin`]) takes the client
//! address and request id from it, for its audit log and its answer's
//! `request_id`, only when the MAC verifies and the timestamp is within
//! [`FORWARD_SKEW`]; otherwise the header is ignored and the connection's
//! address is audited. A forwarded request is never forwarded again (no
//! loops while leadership moves). Within the skew a captured header can be
//! replayed to claim that client address for another request: the API
//! listener's TLS protects it like the token it travels with.
//!
//! **Stale reads** served by a standby from its own state (Vault's
//! performance standbys with `X-Vault-Index`) are not offered yet: every
//! request but the node-local ones is forwarded.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::Sha256;

use crate::core::Core;
use crate::error::{CoreError, Result};

/// The header a standby adds to a forwarded request (see the module docs).
pub const FORWARDED_HEADER: &str = "x-custos-forwarded";
/// How long a request waits for a leader to forward to.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How far a forwarded request's timestamp may be from the active node's clock.
pub const FORWARD_SKEW: Duration = Duration::from_secs(60);
/// Domain separation of the forwarding key.
const KEY_CONTEXT: &[u8] = b"custos-forward";

/// Headers that describe one hop, not the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    FORWARDED_HEADER,
];

/// Endpoints every node answers itself (Vault's unauthenticated `sys/`
/// endpoints a standby serves, joining, and its own metrics).
pub fn is_local(path: &str) -> bool {
    matches!(
        path,
        "sys/health" | "sys/seal-status" | "sys/leader" | "sys/init" | "sys/unseal" | "sys/metrics"
    ) || path.starts_with("sys/storage/raft/join")
        || path.starts_with("sys/storage/raft/bootstrap/")
}

/// Where a request goes: `None` to serve it here, else the active node's
/// API address (or why there is none).
pub async fn target(core: &Core, path: &str, headers: &HeaderMap) -> Option<Result<String>> {
    core.cluster()?;
    let raft = core.raft()?;
    if is_local(path) || headers.contains_key(FORWARDED_HEADER) || core.is_sealed() {
        return None;
    }
    let me = raft.node_id();
    if raft.is_leader() && !raft.is_stepping_down() {
        return None;
    }
    match leader_addr(core, me).await {
        // Elected here while waiting.
        Ok(a) if a.is_empty() => None,
        other => Some(other),
    }
}

/// The API address of a leader other than this node, waiting up to
/// [`LEADER_WAIT`] for one.
async fn leader_addr(core: &Core, me: u64) -> Result<String> {
    let raft = core
        .raft()
        .ok_or_else(|| CoreError::Unavailable("no raft".into()))?;
    let mut leader = raft.watch_leader();
    let found = tokio::time::timeout(
        LEADER_WAIT,
        leader.wait_for(|l| {
            l.is_some_and(|l| l != me)
                || (*l == Some(me) && raft.is_leader() && !raft.is_stepping_down())
        }),
    )
    .await;
    match found {
        Ok(Ok(_)) => {}
        _ => {
            return Err(CoreError::Unavailable(
                "no active node: the cluster is electing a leader; retry".into(),
            ));
        }
    }
    if raft.is_leader() && !raft.is_stepping_down() {
        // This node won the election meanwhile.
        return Ok(String::new());
    }
    crate::cluster::leader_api_addr(raft)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| CoreError::Unavailable("the active node has no api_addr".into()))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default()
    })
}

fn forwarding_key(core: &Core) -> Result<Vec<u8>> {
    let u = core.unsealed()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&u.root_key()).map_err(CoreError::internal)?;
    mac.update(KEY_CONTEXT);
    Ok(mac.finalize().into_bytes().to_vec())
}

fn mac_of(key: &[u8], client: &str, request_id: &str, at_ms: u128) -> Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(CoreError::internal)?;
    mac.update(format!("{client} {request_id} {at_ms}").as_bytes());
    Ok(mac)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// The value of [`FORWARDED_HEADER`] for a request from `client`.
fn origin_header(core: &Core, client: SocketAddr, request_id: &str) -> Result<HeaderValue> {
    let key = forwarding_key(core)?;
    let at = now_ms();
    let mac = mac_of(&key, &client.to_string(), request_id, at)?;
    let tag = hex::encode(mac.finalize().into_bytes());
    HeaderValue::from_str(&format!("{client} {request_id} {at} {tag}")).map_err(CoreError::internal)
}

/// On the active node: the client address and request id a member of the
/// cluster forwarded this request for, when its [`FORWARDED_HEADER`]
/// verifies (see the module docs); `None` otherwise.
pub fn verified_origin(core: &Core, headers: &HeaderMap) -> Option<(SocketAddr, String)> {
    let raw = headers.get(FORWARDED_HEADER)?.to_str().ok()?;
    let mut parts = raw.split(' ');
    let (client, id, at, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let addr: SocketAddr = client.parse().ok()?;
    let at_ms: u128 = at.parse().ok()?;
    let skew = now_ms().abs_diff(at_ms);
    let tag = hex::decode(tag).ok()?;
    let key = forwarding_key(core).ok()?;
    let ok = skew <= FORWARD_SKEW.as_millis()
        && mac_of(&key, client, id, at_ms)
            .ok()?
            .verify_slice(&tag)
            .is_ok();
    if !ok {
        tracing::warn!(%addr, "forwarded request with an invalid or stale origin header; auditing the connection's address");
        return None;
    }
    Some((addr, id.to_string()))
}

/// The body of a request to forward: buffered (retried on another leader
/// if the first cannot be reached) or streamed (sent once).
pub enum Outgoing {
    Buffered(Bytes),
    Streamed(Body),
}

/// Send the request to the active node at `base` and return its answer;
/// counted in `custos_ha_forwarded_requests_total` by outcome.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    core: &Arc<Core>,
    base: String,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Outgoing,
    client_addr: SocketAddr,
    request_id: &str,
) -> Result<axum::response::Response> {
    let result = forward_to(
        core,
        base,
        method,
        uri,
        headers,
        body,
        client_addr,
        request_id,
    )
    .await;
    let outcome = match &result {
        Ok(r) if r.headers().contains_key(SERVED_HERE) => "leader_moved",
        Ok(_) => "forwarded",
        Err(_) => "failed",
    };
    crate::metrics::counter_inc(
        crate::metrics::HA_FORWARDED,
        &[("outcome", outcome.to_string())],
    );
    result
}

#[allow(clippy::too_many_arguments)]
async fn forward_to(
    core: &Arc<Core>,
    mut base: String,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Outgoing,
    client_addr: SocketAddr,
    request_id: &str,
) -> Result<axum::response::Response> {
    let origin = origin_header(core, client_addr, request_id)?;
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| CoreError::bad_request("unsupported method"))?;
    let mut out = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        if HOP_BY_HOP.contains(&k.as_str()) || k.as_str() == "x-forwarded-for" {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", client_addr.ip()),
        None => client_addr.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(HeaderName::from_static(FORWARDED_HEADER), origin);
    let me = core.raft().map(|r| r.node_id()).unwrap_or_default();
    let mut body = Some(body);
    loop {
        let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
        let (req_body, retry) = match body.take() {
            Some(Outgoing::Buffered(b)) => {
                body = Some(Outgoing::Buffered(b.clone()));
                (reqwest::Body::from(b), true)
            }
            Some(Outgoing::Streamed(b)) => {
                (reqwest::Body::wrap_stream(b.into_data_stream()), false)
            }
            None => return Err(CoreError::internal("forward: body consumed")),
        };
        let sent = client()
            .request(method.clone(), &url)
            .headers(out.clone())
            .body(req_body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                return Ok(into_response(resp));
            }
            Err(e) if retry && e.is_connect() => {
                // The leader we knew is gone: wait for the next one.
                tracing::info!(error = %e, "forward: the active node is unreachable; waiting for the next");
                let raft = core
                    .raft()
                    .ok_or_else(|| CoreError::Unavailable("no raft".into()))?;
                let mut leader = raft.watch_leader();
                let old = crate::cluster::leader_api_addr(raft);
                let changed = tokio::time::timeout(LEADER_WAIT, async {
                    loop {
                        if leader.changed().await.is_err() {
                            return false;
                        }
                        let now = crate::cluster::leader_api_addr(raft);
                        if now.is_some() && now != old {
                            return true;
                        }
                    }
                })
                .await;
                if !matches!(changed, Ok(true)) {
                    return Err(CoreError::Unavailable(format!(
                        "the active node is unreachable: {e}"
                    )));
                }
                if raft.is_leader() {
                    // Elected here: the caller serves it.
                    return Ok(served_here_marker());
                }
                base = leader_addr(core, me).await?;
                if base.is_empty() {
                    return Ok(served_here_marker());
                }
            }
            Err(e) => {
                return Err(CoreError::Unavailable(format!(
                    "forwarding to the active node failed: {e}"
                )));
            }
        }
    }
}

/// This node became the leader while forwarding; answer 503 so the client
/// retries (here, now the active node).
fn served_here_marker() -> axum::response::Response {
    let mut r = axum::response::Response::new(Body::from(
        r#"{"errors":["leadership moved to this node while forwarding; retry"]}"#,
    ));
    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(SERVED_HERE, HeaderValue::from_static("1"));
    r
}

/// Marks [`served_here_marker`]'s answer (for the outcome label only).
const SERVED_HERE: HeaderName = HeaderName::from_static("x-custos-leader-moved");

fn into_response(resp: reqwest::Response) -> axum::response::Response {
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if matches!(
            k.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "trailer"
        ) {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    let mut r = axum::response::Response::new(Body::from_stream(resp.bytes_stream()));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_endpoints_are_not_forwarded() {
        for p in [
            "sys/health",
            "sys/seal-status",
            "sys/leader",
            "sys/unseal",
            "sys/init",
            "sys/storage/raft/join",
            "sys/storage/raft/bootstrap/challenge",
        ] {
            assert!(is_local(p), "{p}");
        }
        for p in [
            "secret/data/x",
            "sys/step-down",
            "sys/ha-status",
            "sys/storage/raft/configuration",
        ] {
            assert!(!is_local(p), "{p}");
        }
    }

    #[test]
    fn origin_mac_covers_every_field() {
        let key = b"k".to_vec();
        let tag = mac_of(&key, "1.2.3.4:5", "id", 7)
            .unwrap()
            .finalize()
            .into_bytes();
        assert!(
            mac_of(&key, "1.2.3.4:5", "id", 7)
                .unwrap()
                .verify_slice(&tag)
                .is_ok()
        );
        assert!(
            mac_of(&key, "1.2.3.4:6", "id", 7)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
        assert!(
            mac_of(&key, "1.2.3.4:5", "id2", 7)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
        assert!(
            mac_of(&key, "1.2.3.4:5", "id", 8)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
    }
}
