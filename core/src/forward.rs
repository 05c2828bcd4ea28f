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
//! **A peer's fan-out question.** `crate::audit_nodes` asks every peer for
//! its own part of `sys/audit-query` / `sys/audit-verify` with the caller's
//! token and [`fan_out_header`]: the same header with a `fan-out` field
//! before the MAC (`<client> <request id> <unix ms> fan-out <hex MAC>`),
//! the MAC then also covering `fan-out` and the request's path, so it
//! proves a member of the cluster asked this very endpoint. A peer that
//! verifies it ([`Origin::fan_out`]) checks the token (valid, policies allow
//! the path) without spending a use: the caller's request spent its one use
//! on the node that answers it, as in Vault, whichever node serves it. A
//! header that does not verify (forged, stale, another path) is ignored as
//! above, so the request is charged like any other. A standby's forwarded
//! request carries no `fan-out` field and is charged on the active node.
//!
//! **Reads served by a standby** (Vault's consistency headers, as Vault
//! Enterprise's performance standbys take them). Every answer of the
//! request pipeline on a cluster node carries [`INDEX_HEADER`]
//! (`X-Vault-Index`): the Raft index this node had applied when it answered
//! — after a write, at least the index the write was applied at — opaque to
//! clients: base64 of `v1:<index>:<hex HMAC-SHA256>`, the MAC under
//! `HMAC(root key, "custos-index")`, so only the cluster mints one. A
//! client that sends it back asks for state at least that new:
//!
//! - on a standby, a `GET`/`LIST` outside `sys/`, without response
//!   wrapping, to a route whose backend says a standby may serve it
//!   ([`crate::logical::Backend::serves_on_standby`]: KV v1 and v2 reads,
//!   metadata and lists, cubbyhole reads) with a token of unlimited uses is
//!   served by the standby from its own state once it has applied that
//!   index and its caches have followed every change up to it
//!   ([`crate::storage::raft::ApplyProgress`]), audited in the standby's own
//!   audit log; the answer carries the standby's index;
//! - if the standby has not got there within [`INDEX_WAIT`] (2 s), the read
//!   is forwarded to the active node, or answered `412` with `required index
//!   state not present` when the client sent `X-Vault-Inconsistent: fail`;
//!   with `X-Vault-Inconsistent: forward-active-node` it is forwarded at once;
//! - everything else (writes, logins, renewals, anything touching leases or
//!   use counts, `sys/`) is forwarded as without the header; a header that
//!   is not an index this cluster issued is refused with `400` on any node.
//!
//! So a client that passes on the index of its last answer reads its own
//! writes on any node; a read whose index is older may see state as old as
//! that index (never older than what the client already saw). Without the
//! header, reads are forwarded as before: read-your-writes by default. An
//! index is tied to the root key: after a rekey rotates it, indexes issued
//! before are refused with `400` and the client starts afresh.

use std::net::SocketAddr;
use std::sync::Arc;
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
/// The index of the state an answer reflects, or a client asks for.
pub const INDEX_HEADER: &str = "x-vault-index";
/// What a standby does when it has not reached the client's index.
pub const INCONSISTENT_HEADER: &str = "x-vault-inconsistent";
/// How long a standby waits to reach a client's index.
pub const INDEX_WAIT: Duration = Duration::from_secs(2);
/// Domain separation of the index key.
const INDEX_CONTEXT: &[u8] = b"custos-index";
/// Vault's answer when a standby is behind and may not forward.
pub const INDEX_NOT_PRESENT: &str = "required index state not present";

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

/// What the client wants when the node it asked is behind its index
/// (`X-Vault-Inconsistent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBehind {
    /// Wait up to [`INDEX_WAIT`], then forward (no header, or `await-state`).
    WaitThenForward,
    /// Wait up to [`INDEX_WAIT`], then answer 412 (`fail`).
    WaitThenFail,
    /// Forward at once (`forward-active-node`).
    Forward,
}

/// A client's `X-Vault-Index`, verified, with its `X-Vault-Inconsistent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedIndex {
    pub index: u64,
    pub when_behind: WhenBehind,
}

/// The index key derived from the root key, and the last `X-Vault-Index`
/// issued, kept per unsealed state (`Unsealed::index_cache`, emptied when
/// the root key rotates). A node answers many requests at one applied
/// index; without it every answer paid two HMAC-SHA256 runs (one to derive
/// the key, one to sign): +33k instructions per kv-read under callgrind.
#[derive(Default)]
pub struct IndexCache {
    key: Option<zeroize::Zeroizing<Vec<u8>>>,
    last: Option<(u64, HeaderValue)>,
}

impl IndexCache {
    /// The index key, derived once.
    fn key(&mut self, u: &crate::core::Unsealed) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        if let Some(k) = &self.key {
            return Ok(k.clone());
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&u.root_key()).map_err(CoreError::internal)?;
        mac.update(INDEX_CONTEXT);
        let key = zeroize::Zeroizing::new(mac.finalize().into_bytes().to_vec());
        self.key = Some(key.clone());
        Ok(key)
    }
}

fn index_key(core: &Core) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let u = core.unsealed()?;
    let mut cache = u.index_cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.key(&u)
}

fn index_mac(key: &[u8], index: u64) -> Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(CoreError::internal)?;
    mac.update(format!("v1:{index}").as_bytes());
    Ok(mac)
}

fn encode_index(key: &[u8], index: u64) -> Result<String> {
    use base64::Engine as _;
    let tag = hex::encode(index_mac(key, index)?.finalize().into_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(format!("v1:{index}:{tag}")))
}

fn bad_index() -> CoreError {
    CoreError::bad_request("invalid X-Vault-Index header: not an index this cluster issued")
}

/// The index in `value`, when its MAC verifies under `key`.
fn decode_index(key: &[u8], value: &str) -> Result<u64> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| bad_index())?;
    let text = String::from_utf8(raw).map_err(|_| bad_index())?;
    let mut parts = text.split(':');
    let (Some("v1"), Some(index), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_index());
    };
    let index: u64 = index.parse().map_err(|_| bad_index())?;
    let tag = hex::decode(tag).map_err(|_| bad_index())?;
    index_mac(key, index)?
        .verify_slice(&tag)
        .map_err(|_| bad_index())?;
    Ok(index)
}

/// The `X-Vault-Index` of this node's state now (see the module docs);
/// `None` without Raft or while sealed.
pub fn index_header(core: &Core) -> Option<HeaderValue> {
    let applied = core.raft()?.progress().applied();
    let u = core.unsealed().ok()?;
    let mut cache = u.index_cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((index, value)) = &cache.last
        && *index == applied
    {
        return Some(value.clone());
    }
    let key = cache.key(&u).ok()?;
    let value = HeaderValue::from_str(&encode_index(&key, applied).ok()?).ok()?;
    cache.last = Some((applied, value.clone()));
    Some(value)
}

/// The client's `X-Vault-Index` and `X-Vault-Inconsistent`: `None` without
/// an index; 400 for an index this cluster did not issue or an unknown
/// `X-Vault-Inconsistent` (see the module docs).
pub fn wanted_index(core: &Core, headers: &HeaderMap) -> Result<Option<WantedIndex>> {
    let Some(raw) = headers.get(INDEX_HEADER) else {
        return Ok(None);
    };
    let raw = raw.to_str().map_err(|_| bad_index())?;
    let index = decode_index(&index_key(core)?, raw)?;
    let mut when_behind = WhenBehind::WaitThenForward;
    for v in headers.get_all(INCONSISTENT_HEADER) {
        for item in v.to_str().unwrap_or("\u{0}").split(',') {
            when_behind = match item.trim() {
                "fail" => WhenBehind::WaitThenFail,
                "forward-active-node" => WhenBehind::Forward,
                "await-state" => when_behind,
                _ => {
                    return Err(CoreError::bad_request(
                        "invalid X-Vault-Inconsistent header: expected \"fail\" or \"forward-active-node\"",
                    ));
                }
            };
        }
    }
    Ok(Some(WantedIndex { index, when_behind }))
}

/// Is this node an unsealed standby of a cluster (not the active node)?
pub fn is_standby(core: &Core) -> bool {
    let Some(raft) = core.raft() else {
        return false;
    };
    core.cluster().is_some() && !core.is_sealed() && (!raft.is_leader() || raft.is_stepping_down())
}

/// Might a standby serve this request itself for an `X-Vault-Index`?
/// Reads and lists outside `sys/` (ceremonies, raft, metrics and every
/// node-local endpoint live there) without response wrapping; the route
/// and the token are checked by the pipeline
/// ([`crate::logical::Request::standby_read`]).
pub fn may_read_locally(path: &str, method: &Method, list: bool, headers: &HeaderMap) -> bool {
    let read = matches!(method.as_str(), "GET" | "HEAD" | "LIST") || list;
    read && !path.starts_with("sys/")
        && !is_local(path)
        && !headers.contains_key("x-vault-wrap-ttl")
        && !headers.contains_key(FORWARDED_HEADER)
}

/// What a standby does with a read that wants `wanted`.
#[derive(Debug, PartialEq, Eq)]
pub enum StandbyRead {
    /// Reached: serve it here.
    Local,
    /// Send it to the active node.
    Forward,
    /// 412 (`X-Vault-Inconsistent: fail`).
    Inconsistent,
}

/// Wait (see [`WhenBehind`]) until this node reached `wanted.index`.
pub async fn standby_read(core: &Core, wanted: WantedIndex) -> StandbyRead {
    let Some(raft) = core.raft() else {
        return StandbyRead::Forward;
    };
    let progress = raft.progress();
    if progress.reached(wanted.index) {
        return StandbyRead::Local;
    }
    if wanted.when_behind == WhenBehind::Forward {
        return StandbyRead::Forward;
    }
    if progress.wait_for(wanted.index, INDEX_WAIT).await {
        return StandbyRead::Local;
    }
    match wanted.when_behind {
        WhenBehind::WaitThenFail => StandbyRead::Inconsistent,
        _ => StandbyRead::Forward,
    }
}

/// Count a standby read by outcome (`custos_standby_reads_total`).
pub fn count_standby_read(outcome: &'static str) {
    crate::metrics::counter_inc(
        crate::metrics::STANDBY_READS,
        &[("outcome", outcome.to_string())],
    );
}

/// An https:// api_addr is checked against the web PKI and the CAs given
/// for joining (`crate::cluster::forwarding_client`).
fn client() -> reqwest::Client {
    crate::cluster::forwarding_client()
}

fn forwarding_key(core: &Core) -> Result<Vec<u8>> {
    let u = core.unsealed()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&u.root_key()).map_err(CoreError::internal)?;
    mac.update(KEY_CONTEXT);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// The marker field of a fan-out question's origin header.
const FAN_OUT: &str = "fan-out";

/// The origin MAC over the header's fields; for a fan-out question also
/// over [`FAN_OUT`] and the path asked (`fan_out`), so a forward's tag never
/// verifies as a fan-out's nor one path's as another's.
fn mac_of(
    key: &[u8],
    client: &str,
    request_id: &str,
    at_ms: u128,
    fan_out: Option<&str>,
) -> Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(CoreError::internal)?;
    mac.update(format!("{client} {request_id} {at_ms}").as_bytes());
    if let Some(path) = fan_out {
        mac.update(format!(" {FAN_OUT} {path}").as_bytes());
    }
    Ok(mac)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// The value of [`FORWARDED_HEADER`] for a request from `client` a
/// standby forwards.
pub(crate) fn origin_header(
    core: &Core,
    client: SocketAddr,
    request_id: &str,
) -> Result<HeaderValue> {
    signed_origin(core, client, request_id, None)
}

/// The value of [`FORWARDED_HEADER`] for `crate::audit_nodes` asking a peer
/// for its own answer to `path` on behalf of `client` (see the module docs:
/// the peer checks the token without spending a use).
pub(crate) fn fan_out_header(
    core: &Core,
    client: SocketAddr,
    request_id: &str,
    path: &str,
) -> Result<HeaderValue> {
    signed_origin(core, client, request_id, Some(path))
}

fn signed_origin(
    core: &Core,
    client: SocketAddr,
    request_id: &str,
    fan_out: Option<&str>,
) -> Result<HeaderValue> {
    let key = forwarding_key(core)?;
    let at = now_ms();
    let mac = mac_of(&key, &client.to_string(), request_id, at, fan_out)?;
    let tag = hex::encode(mac.finalize().into_bytes());
    let marker = if fan_out.is_some() {
        format!(" {FAN_OUT}")
    } else {
        String::new()
    };
    HeaderValue::from_str(&format!("{client} {request_id} {at}{marker} {tag}"))
        .map_err(CoreError::internal)
}

/// Who a member of the cluster sent a request for ([`verified_origin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The client's address, for the audit log.
    pub client: SocketAddr,
    /// The request id the client's answer carries.
    pub request_id: String,
    /// A peer's fan-out question for this very path (`crate::audit_nodes`):
    /// the token is checked but spends no use.
    pub fan_out: bool,
}

/// The origin in `raw` (a [`FORWARDED_HEADER`] value) of a request for
/// `path`, when its MAC verifies under `key` and its timestamp is within
/// [`FORWARD_SKEW`] of `now`.
fn parse_origin(key: &[u8], raw: &str, path: &str, now: u128) -> Option<Origin> {
    let parts: Vec<&str> = raw.split(' ').collect();
    let (client, id, at, fan_out, tag) = match parts.as_slice() {
        [client, id, at, tag] => (*client, *id, *at, false, *tag),
        [client, id, at, FAN_OUT, tag] => (*client, *id, *at, true, *tag),
        _ => return None,
    };
    let addr: SocketAddr = client.parse().ok()?;
    let at_ms: u128 = at.parse().ok()?;
    let tag = hex::decode(tag).ok()?;
    let ok = now.abs_diff(at_ms) <= FORWARD_SKEW.as_millis()
        && mac_of(key, client, id, at_ms, fan_out.then_some(path))
            .ok()?
            .verify_slice(&tag)
            .is_ok();
    ok.then(|| Origin {
        client: addr,
        request_id: id.to_string(),
        fan_out,
    })
}

/// The client address and request id a member of the cluster sent this
/// request (for `path`) for, and whether it is a peer's fan-out question,
/// when its [`FORWARDED_HEADER`] verifies (see the module docs); `None`
/// otherwise.
pub fn verified_origin(core: &Core, headers: &HeaderMap, path: &str) -> Option<Origin> {
    let raw = headers.get(FORWARDED_HEADER)?.to_str().ok()?;
    let key = forwarding_key(core).ok()?;
    let origin = parse_origin(&key, raw, path, now_ms());
    if origin.is_none() {
        tracing::warn!(
            "forwarded request with an invalid or stale origin header; auditing the connection's address"
        );
    }
    origin
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
    fn indexes_verify_only_under_their_key() {
        let key = b"k1".to_vec();
        let v = encode_index(&key, 42).unwrap();
        assert_eq!(decode_index(&key, &v).unwrap(), 42);
        // Another cluster's (or a rotated root key's) index.
        assert!(decode_index(b"k2", &v).is_err());
        // A forged index: the same tag on another number.
        use base64::Engine as _;
        let raw = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(&v)
                .unwrap(),
        )
        .unwrap();
        let forged = raw.replacen("v1:42:", "v1:43:", 1);
        let forged = base64::engine::general_purpose::STANDARD.encode(forged);
        assert!(decode_index(&key, &forged).is_err());
        for junk in ["", "!!", "djE6NDI=", "djE6eDpmZg=="] {
            let e = decode_index(&key, junk).unwrap_err();
            assert_eq!(e.status(), 400, "{junk}");
        }
    }

    #[test]
    fn only_plain_reads_outside_sys_may_be_served_by_a_standby() {
        let none = HeaderMap::new();
        let get = Method::GET;
        let list = Method::from_bytes(b"LIST").unwrap();
        assert!(may_read_locally("secret/data/x", &get, false, &none));
        assert!(may_read_locally("secret/metadata/", &list, false, &none));
        assert!(may_read_locally("secret/metadata/", &get, true, &none));
        assert!(!may_read_locally(
            "secret/data/x",
            &Method::POST,
            false,
            &none
        ));
        assert!(!may_read_locally(
            "secret/data/x",
            &Method::PUT,
            false,
            &none
        ));
        assert!(!may_read_locally(
            "secret/data/x",
            &Method::DELETE,
            false,
            &none
        ));
        assert!(!may_read_locally(
            "secret/data/x",
            &Method::PATCH,
            false,
            &none
        ));
        assert!(!may_read_locally("sys/mounts", &get, false, &none));
        assert!(!may_read_locally(
            "sys/generate-root/attempt",
            &get,
            false,
            &none
        ));
        let mut wrap = HeaderMap::new();
        wrap.insert("x-vault-wrap-ttl", HeaderValue::from_static("60"));
        assert!(!may_read_locally("secret/data/x", &get, false, &wrap));
    }

    #[test]
    fn origin_mac_covers_every_field() {
        let key = b"k".to_vec();
        let tag = mac_of(&key, "1.2.3.4:5", "id", 7, None)
            .unwrap()
            .finalize()
            .into_bytes();
        assert!(
            mac_of(&key, "1.2.3.4:5", "id", 7, None)
                .unwrap()
                .verify_slice(&tag)
                .is_ok()
        );
        assert!(
            mac_of(&key, "1.2.3.4:6", "id", 7, None)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
        assert!(
            mac_of(&key, "1.2.3.4:5", "id2", 7, None)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
        assert!(
            mac_of(&key, "1.2.3.4:5", "id", 8, None)
                .unwrap()
                .verify_slice(&tag)
                .is_err()
        );
    }

    #[test]
    fn a_fan_out_marker_verifies_only_as_signed_for_its_path() {
        let key = b"k".to_vec();
        let now = 1_000_000u128;
        let signed = |fan_out: Option<&str>| {
            let tag = mac_of(&key, "1.2.3.4:5", "id", now, fan_out)
                .unwrap()
                .finalize()
                .into_bytes();
            hex::encode(tag)
        };
        let forward = format!("1.2.3.4:5 id {now} {}", signed(None));
        let fan_out = format!(
            "1.2.3.4:5 id {now} fan-out {}",
            signed(Some("sys/audit-query"))
        );
        let o = parse_origin(&key, &forward, "sys/audit-query", now).unwrap();
        assert!(!o.fan_out);
        assert_eq!(o.request_id, "id");
        let o = parse_origin(&key, &fan_out, "sys/audit-query", now).unwrap();
        assert!(o.fan_out);
        // A forward's tag with the marker added (a client cannot ask not to
        // be charged), a fan-out's tag for another path, without its marker,
        // under another key, or stale: none verifies.
        let tag = signed(None);
        let forged = format!("1.2.3.4:5 id {now} fan-out {tag}");
        assert!(parse_origin(&key, &forged, "sys/audit-query", now).is_none());
        assert!(parse_origin(&key, &fan_out, "secret/data/x", now).is_none());
        let tag = signed(Some("sys/audit-query"));
        let stripped = format!("1.2.3.4:5 id {now} {tag}");
        assert!(parse_origin(&key, &stripped, "sys/audit-query", now).is_none());
        assert!(parse_origin(b"other", &fan_out, "sys/audit-query", now).is_none());
        let later = now + FORWARD_SKEW.as_millis() + 1;
        assert!(parse_origin(&key, &fan_out, "sys/audit-query", later).is_none());
        let zeros = "0".repeat(64);
        for junk in [
            String::new(),
            format!("1.2.3.4:5 id {now} fan-out {zeros}"),
            format!(
                "1.2.3.4:5 id {now} other {}",
                signed(Some("sys/audit-query"))
            ),
            format!("1.2.3.4:5 id {now} fan-out x {zeros}"),
        ] {
            assert!(
                parse_origin(&key, &junk, "sys/audit-query", now).is_none(),
                "{junk}"
            );
        }
    }
}
