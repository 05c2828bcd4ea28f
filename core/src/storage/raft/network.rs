//! Raft RPCs between Custos nodes, over HTTP on each node's `cluster_addr`.
//!
//! **Client.** openraft asks the [`RaftNetworkFactory`] ([`HttpNetwork`]) for a
//! client per peer and sends `append_entries`, `vote` and `install_snapshot`
//! through it. Each peer gets one `reqwest` client (its own connection pool),
//! kept for the life of the node. Every RPC is bounded by openraft's
//! `RPCOption::hard_ttl`; a connection that cannot be made is reported
//! [`Unreachable`] (openraft backs off and retries), an RPC that takes too
//! long [`Timeout`], and an error the peer's Raft returned travels back as a
//! [`RemoteError`].
//!
//! **Server.** [`cluster_router`] serves the same three RPCs on the cluster
//! listener that `crate::server` binds: `POST /raft/append`, `/raft/vote`
//! (JSON bodies, the response is the JSON of openraft's
//! `Result<response, RaftError>`), and `/raft/snapshot`, one chunk per request:
//! the chunk's bytes are the raw body and the rest of openraft's
//! `InstallSnapshotRequest` (vote, meta, offset, done) travels as JSON in the
//! `x-custos-snapshot` header. openraft reads the leader's snapshot file and
//! writes the follower's receiving file one chunk at a time
//! ([`SNAPSHOT_CHUNK`]), so a snapshot is never whole in memory.
//!
//! `POST /raft/elect` asks a follower to start an election at once: the
//! leader's step-down hands leadership over with it (`RaftStorage::step_down`).
//!
//! **TLS.** The cluster port speaks mutual TLS only (`super::tls`): the
//! listener takes connections with a client certificate chained to the
//! cluster CA, and each peer's client verifies the server against that CA
//! under a fixed name, whatever scheme or address `cluster_addr` names.
//! While this node has no cluster TLS loaded (sealed) its RPCs fail as
//! [`Unreachable`] and openraft retries them.
//!
//! JSON is the encoding for now (entries already carry base64 values); a
//! binary encoding is still to come.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tls::{ClusterTls, https_base, peer_http_client};
use super::{CustosRaft, TypeConfig};

/// Bytes of snapshot per `install_snapshot` request.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// How long a connection to a peer may take before it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The header carrying a snapshot chunk's metadata.
const SNAPSHOT_HEADER: &str = "x-custos-snapshot";
/// Largest RPC body the cluster listener accepts (an append of big entries).
const MAX_RPC_BODY: usize = 256 * 1024 * 1024;

/// A cluster member as stored in the Raft membership.
///
/// `addr` is the node's API address (`api_addr`), where clients and joining
/// nodes reach it: the field `openraft::BasicNode` had, so memberships
/// written before clusters read unchanged. `cluster_addr` is where Raft RPCs
/// go, `name` the configured `storage "raft" { node_id }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustosNode {
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl fmt::Display for CustosNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.cluster_addr)
    }
}

/// Hands out one [`PeerClient`] per peer, sharing its HTTP client across
/// openraft's calls to [`RaftNetworkFactory::new_client`].
#[derive(Debug, Clone)]
pub struct HttpNetwork {
    id: u64,
    tls: Arc<ClusterTls>,
    /// Per peer: the client, and the TLS generation it was built for.
    clients: Arc<Mutex<HashMap<u64, (u64, reqwest::Client)>>>,
}

impl HttpNetwork {
    pub fn new(id: u64, tls: Arc<ClusterTls>) -> Self {
        HttpNetwork {
            id,
            tls,
            clients: Arc::default(),
        }
    }

    /// The HTTP client of `target` for the cluster TLS loaded now (built
    /// again when the material changed), or why there is none.
    fn http(&self, target: u64) -> Result<reqwest::Client, String> {
        let (generation, config) = self
            .tls
            .client_config()
            .ok_or("this node has no cluster TLS loaded (sealed)")?;
        let mut clients = self.clients.lock().map_err(|_| "client cache poisoned")?;
        if let Some((g, c)) = clients.get(&target)
            && *g == generation
        {
            return Ok(c.clone());
        }
        let built = peer_http_client(&config, CONNECT_TIMEOUT)?;
        clients.insert(target, (generation, built.clone()));
        Ok(built)
    }
}

/// The RPC client of one peer.
#[derive(Debug, Clone)]
pub struct PeerClient {
    id: u64,
    target: u64,
    base: String,
    network: HttpNetwork,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &CustosNode) -> Self::Network {
        PeerClient {
            id: self.id,
            target,
            base: if node.cluster_addr.is_empty() {
                String::new()
            } else {
                https_base(&node.cluster_addr)
            },
            network: self.clone(),
        }
    }
}

impl PeerClient {
    fn unreachable(&self, why: impl fmt::Display) -> Unreachable {
        let e = std::io::Error::other(format!("node {} at {:?}: {why}", self.target, self.base));
        Unreachable::new(&e)
    }

    /// POST one RPC and decode openraft's `Result` from the body.
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        body: reqwest::Body,
        headers: Vec<(&'static str, String)>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, CustosNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let http = self
            .network
            .http(self.target)
            .map_err(|e| RPCError::Unreachable(self.unreachable(e)))?;
        if self.base.is_empty() {
            return Err(RPCError::Unreachable(
                self.unreachable("the node has no cluster address"),
            ));
        }
        let ttl = option.hard_ttl();
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            })
        };
        let mut req = http
            .post(format!("{}{path}", self.base))
            .timeout(ttl)
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(timeout()),
            Err(e) => return Err(RPCError::Unreachable(self.unreachable(e))),
        };
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(RPCError::Unreachable(
                self.unreachable(format!("answered {status}")),
            ));
        }
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Err(timeout()),
            Err(e) => return Err(RPCError::Unreachable(self.unreachable(e))),
        };
        // The peer answered: it is alive, whatever its answer says.
        record_contact(self.target);
        let decoded: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// When each peer last answered an RPC of this node (the leader's view of
/// its followers: heartbeats are append-entries RPCs), for the
/// last-contact and healthy-voter metrics ([`last_contacts`]).
static PEER_CONTACT: std::sync::Mutex<std::collections::BTreeMap<u64, std::time::Instant>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn record_contact(peer: u64) {
    if let Ok(mut m) = PEER_CONTACT.lock() {
        m.insert(peer, std::time::Instant::now());
    }
}

/// Time since each peer last answered this node, by node id.
pub fn last_contacts() -> std::collections::BTreeMap<u64, Duration> {
    PEER_CONTACT
        .lock()
        .map(|m| m.iter().map(|(id, t)| (*id, t.elapsed())).collect())
        .unwrap_or_default()
}

fn json_body<T: Serialize>(v: &T) -> Result<reqwest::Body, NetworkError> {
    serde_json::to_vec(v)
        .map(reqwest::Body::from)
        .map_err(|e| NetworkError::new(&e))
}

/// The metadata of a snapshot chunk, sent in [`SNAPSHOT_HEADER`].
#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, CustosNode>,
    offset: u64,
    done: bool,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, CustosNode, RaftError<u64>>> {
        let body = json_body(&rpc).map_err(RPCError::Network)?;
        self.call(
            RPCTypes::AppendEntries,
            "/raft/append",
            body,
            vec![],
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, CustosNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let header = ChunkHeader {
            vote: rpc.vote,
            meta: rpc.meta,
            offset: rpc.offset,
            done: rpc.done,
        };
        let header =
            serde_json::to_string(&header).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(
            RPCTypes::InstallSnapshot,
            "/raft/snapshot",
            reqwest::Body::from(rpc.data),
            vec![(SNAPSHOT_HEADER, header)],
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, CustosNode, RaftError<u64>>> {
        let body = json_body(&rpc).map_err(RPCError::Network)?;
        self.call(RPCTypes::Vote, "/raft/vote", body, vec![], &option)
            .await
    }
}

/// The cluster listener's routes: the server side of [`PeerClient`].
pub fn cluster_router(raft: CustosRaft) -> axum::Router {
    axum::Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/elect", post(elect))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(raft)
}

type RpcReply = Result<Json<serde_json::Value>, (StatusCode, String)>;

fn reply<T: Serialize>(v: &T) -> RpcReply {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn bad_request(e: impl fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, e.to_string())
}

async fn append(State(raft): State<CustosRaft>, body: Bytes) -> RpcReply {
    let rpc: AppendEntriesRequest<TypeConfig> =
        serde_json::from_slice(&body).map_err(bad_request)?;
    reply(&raft.append_entries(rpc).await)
}

async fn vote(State(raft): State<CustosRaft>, body: Bytes) -> RpcReply {
    let rpc: VoteRequest<u64> = serde_json::from_slice(&body).map_err(bad_request)?;
    reply(&raft.vote(rpc).await)
}

async fn snapshot(State(raft): State<CustosRaft>, headers: HeaderMap, body: Bytes) -> RpcReply {
    let header = headers
        .get(SNAPSHOT_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad_request(format!("missing {SNAPSHOT_HEADER} header")))?;
    let h: ChunkHeader = serde_json::from_str(header).map_err(bad_request)?;
    let rpc = InstallSnapshotRequest {
        vote: h.vote,
        meta: h.meta,
        offset: h.offset,
        data: body.to_vec(),
        done: h.done,
    };
    reply(&raft.install_snapshot(rpc).await)
}

/// `POST /raft/elect`: start an election now (the leader stepping down asks
/// its most up-to-date follower, see `RaftStorage::step_down`). Refused by
/// a node that leads. Same trust as the other routes of this listener.
async fn elect(State(raft): State<CustosRaft>) -> Result<StatusCode, (StatusCode, String)> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader == Some(m.id) {
        return Err((StatusCode::CONFLICT, "this node leads".into()));
    }
    raft.trigger()
        .elect()
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask `node` to start an election now (`POST /raft/elect` on its cluster
/// address, over the cluster TLS `tls`).
pub async fn request_election(tls: &ClusterTls, node: &CustosNode) -> Result<(), String> {
    if node.cluster_addr.is_empty() {
        return Err(format!("node {node} has no cluster address"));
    }
    let (_, config) = tls
        .client_config()
        .ok_or("this node has no cluster TLS loaded (sealed)")?;
    let http = peer_http_client(&config, CONNECT_TIMEOUT)?;
    let url = format!("{}/raft/elect", https_base(&node.cluster_addr));
    let resp = http
        .post(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: {}", resp.status()))
    }
}
