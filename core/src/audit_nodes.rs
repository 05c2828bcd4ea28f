//! Every node's audit log, seen from any node: `sys/audit-query` (local
//! source) and `sys/audit-verify` on a cluster.
//!
//! Each node keeps its own audit log and query index (`custos_audit::log`,
//! `custos_audit::query::index`): a read a standby served from its own state
//! is in the standby's log, a forwarded request in the active node's. So the
//! node that answers one of these requests (the active node: `sys/` is
//! forwarded there) asks every other member of the Raft configuration, at
//! the `api_addr` forwarding uses (`crate::cluster`), for its own answer,
//! with the caller's token and the signed origin header of
//! `crate::forward` marked as a fan-out question for that path (so a
//! standby serves it itself rather than forwarding it back, and checks the
//! token without spending a use: a use-limited token spends one use per
//! request, as in Vault, not one per node asked), and `node=<that node's
//! id>`. A node asked for itself answers from its local log only, so there
//! is no fan-out loop whoever asks whom.
//!
//! * `sys/audit-query`: peers are asked with `limit` = `MAX_LIMIT` and their
//!   answers merged by `custos_audit::query::merge` (the same grouping,
//!   order and limit as one node's answer); `nodes` lists the nodes that
//!   answered.
//! * `sys/audit-verify` (sudo): each node runs `custos_audit::log::verify`
//!   on its log directory, the checks `custos audit verify --dir` runs;
//!   the answer holds one report per node and `clean` for all of them.
//!
//! A node that does not answer (down, unreachable, an error) never leaves a
//! silent gap: the answer names it in `nodes_missing` and in a warning
//! (Vault's `warnings`), and `custos_audit_query_peer_failures_total`
//! counts it. `node=<id>` asks that one node; on a server without a cluster
//! the only node is this one.

use std::collections::BTreeMap;
use std::time::Duration;

use custos_audit::query::{AuditQueryService, MAX_LIMIT, QueryAnswer, QueryError, QueryParams};
use serde_json::{Map, Value, json};

use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::logical::{Request, Response};

/// How long a peer may take to answer (a local query waits up to
/// `custos_audit::query::CATCH_UP_WAIT`, 10 s, for its index).
pub const PEER_WAIT: Duration = Duration::from_secs(20);

/// A member of the Raft configuration other than this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its `node_id` (the configured name, else the Raft id).
    pub name: String,
    /// Its `api_addr`.
    pub api_addr: String,
}

/// This node's name and the other members, when this server is a cluster
/// member; `None` otherwise.
pub fn members(core: &Core) -> Option<(String, Vec<Peer>)> {
    core.cluster()?;
    let raft = core.raft()?;
    let m = raft.raft().metrics();
    let m = m.borrow();
    let mut me = m.id.to_string();
    let mut peers = Vec::new();
    for (id, n) in m.membership_config.membership().nodes() {
        let name = if n.name.is_empty() {
            id.to_string()
        } else {
            n.name.clone()
        };
        if *id == m.id {
            me = name;
        } else {
            peers.push(Peer {
                name,
                api_addr: n.addr.clone(),
            });
        }
    }
    Some((me, peers))
}

/// Which nodes a request with `node` asks: this one (`local`) and which
/// peers. An unknown node is a 400 naming the known ones.
fn plan(core: &Core, node: Option<&str>) -> Result<(String, bool, Vec<Peer>)> {
    let (me, peers) = members(core).unwrap_or_else(|| (core.node_label(), Vec::new()));
    match node {
        None => Ok((me, true, peers)),
        Some(n) if n == me => Ok((me, true, Vec::new())),
        Some(n) => match peers.iter().find(|p| p.name == n) {
            Some(p) => Ok((me, false, vec![p.clone()])),
            None => {
                let mut known: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                known.push(&me);
                known.sort_unstable();
                Err(CoreError::bad_request(format!(
                    "unknown node {n:?}: the cluster's nodes are {}",
                    known.join(", ")
                )))
            }
        },
    }
}

/// A `QueryError` as the API answers it.
pub fn query_error(e: QueryError) -> CoreError {
    match e {
        QueryError::BadRequest(m) => CoreError::bad_request(m),
        QueryError::Unavailable(m) => CoreError::Unavailable(m),
        other => CoreError::Internal(other.to_string()),
    }
}

/// Why a peer gave no answer.
struct PeerFailure {
    /// `unreachable` or `error` (the metric's `reason`).
    reason: &'static str,
    message: String,
}

/// `GET <peer>/v1/<path>?<params>&node=<peer>` with the caller's token;
/// the answer's `data`.
async fn ask(
    core: &Core,
    req: &Request,
    peer: &Peer,
    path: &str,
    params: &[(&str, String)],
) -> std::result::Result<Map<String, Value>, PeerFailure> {
    let fail = |reason, message: String| PeerFailure { reason, message };
    if peer.api_addr.is_empty() {
        return Err(fail("unreachable", "it has no api_addr".into()));
    }
    let client = req
        .remote_addr
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let origin = crate::forward::fan_out_header(core, client, &req.id, path)
        .map_err(|e| fail("error", e.to_string()))?;
    let mut query: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    query.push(("node", &peer.name));
    let mut call = crate::cluster::forwarding_client()
        .get(format!("{}/v1/{path}", peer.api_addr.trim_end_matches('/')))
        .query(&query)
        .header(crate::forward::FORWARDED_HEADER, origin);
    if let Some(token) = &req.client_token {
        call = call.header("X-Vault-Token", token.expose());
    }
    let resp = match tokio::time::timeout(PEER_WAIT, call.send()).await {
        Err(_) => return Err(fail("unreachable", format!("no answer in {PEER_WAIT:?}"))),
        Ok(Err(e)) => return Err(fail("unreachable", without_url(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let body: Value = match tokio::time::timeout(PEER_WAIT, resp.json()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(fail("error", format!("{status}: {}", without_url(&e)))),
        Err(_) => return Err(fail("unreachable", format!("no answer in {PEER_WAIT:?}"))),
    };
    if !status.is_success() {
        let errors: Vec<&str> = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        return Err(fail("error", format!("{status}: {}", errors.join("; "))));
    }
    match body.get("data") {
        Some(Value::Object(d)) => Ok(d.clone()),
        _ => Err(fail("error", format!("{status}: an answer without data"))),
    }
}

/// A reqwest error without the URL (it carries the query parameters).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

/// Ask every peer in `peers` concurrently; failures are counted and
/// turned into warnings.
async fn ask_all(
    core: &Core,
    req: &Request,
    peers: &[Peer],
    path: &str,
    params: &[(&str, String)],
) -> Vec<(Peer, std::result::Result<Map<String, Value>, String>)> {
    let answers =
        futures::future::join_all(peers.iter().map(|p| ask(core, req, p, path, params))).await;
    peers
        .iter()
        .cloned()
        .zip(answers)
        .map(|(peer, answer)| {
            let answer = answer.map_err(|f| {
                crate::metrics::counter_inc(
                    crate::metrics::AUDIT_QUERY_PEER_FAILURES,
                    &[("peer", peer.name.clone()), ("reason", f.reason.to_owned())],
                );
                tracing::warn!(peer = %peer.name, reason = f.reason, error = %f.message, path, "a node did not answer an audit fan-out");
                f.message
            });
            (peer, answer)
        })
        .collect()
}

fn missing_warning(peer: &Peer, why: &str) -> String {
    format!(
        "node {:?} ({}) did not answer: {why}; this answer leaves out its audit log",
        peer.name, peer.api_addr
    )
}

/// `sys/audit-query` from the local logs: this node's, a named node's, or
/// (on a cluster, no `node`) every node's merged. `params` are the
/// caller's query fields as given, passed on to peers.
pub async fn query(
    core: &Core,
    req: &Request,
    service: &AuditQueryService,
    q: QueryParams,
    node: Option<String>,
    params: Vec<(&str, String)>,
) -> Result<Option<Response>> {
    let (me, local, peers) = plan(core, node.as_deref())?;
    let single = members(core).is_none();
    let limit = q.limit;
    let mut wide = q.clone();
    if !peers.is_empty() || !local {
        wide.limit = MAX_LIMIT;
    }
    let mut answers: Vec<(String, QueryAnswer)> = Vec::new();
    if local {
        let answer = service
            .query(wide, custos_audit::query::Source::Local)
            .await
            .map_err(query_error)?;
        if peers.is_empty() {
            // This node only: its answer as it is.
            let mut answer = answer;
            if !single {
                answer.nodes = vec![me];
            }
            return data(answer, Vec::new());
        }
        answers.push((me, answer));
    }
    let mut params = params;
    params.push(("limit", MAX_LIMIT.to_string()));
    params.push(("source", "local".into()));
    let mut warnings = Vec::new();
    let mut missing = Vec::new();
    for (peer, answer) in ask_all(core, req, &peers, "sys/audit-query", &params).await {
        let parsed = answer.and_then(|d| {
            serde_json::from_value::<QueryAnswer>(Value::Object(d))
                .map_err(|e| format!("an answer this node cannot read: {e}"))
        });
        match parsed {
            Ok(a) => answers.push((peer.name, a)),
            Err(why) => {
                warnings.push(missing_warning(&peer, &why));
                missing.push(peer.name);
            }
        }
    }
    if answers.is_empty() {
        return Err(CoreError::Unavailable(format!(
            "no node answered the audit query: {}",
            warnings.join("; ")
        )));
    }
    let mut merged = custos_audit::query::merge(answers, limit);
    merged.nodes_missing = missing;
    data(merged, warnings)
}

fn data<T: serde::Serialize>(value: T, warnings: Vec<String>) -> Result<Option<Response>> {
    let Value::Object(map) = serde_json::to_value(value).map_err(CoreError::internal)? else {
        return Err(CoreError::internal("an answer that is not an object"));
    };
    let mut resp = Response::data(map);
    resp.warnings = warnings;
    Ok(Some(resp))
}

/// This node's log checked, as one entry of `nodes` in `sys/audit-verify`.
async fn verify_here(core: &Core) -> Result<Value> {
    let u = core.unsealed()?;
    let Some((device, log)) = u.audit.local_log() else {
        return Err(CoreError::bad_request(
            "audit verify needs a file audit device (the local audit log)",
        ));
    };
    let dir = log.log_dir().clone();
    let shown = dir.dir().display().to_string();
    let report = tokio::task::spawn_blocking(move || custos_audit::log::verify(dir))
        .await
        .map_err(CoreError::internal)?
        .map_err(|e| CoreError::Internal(format!("verifying the audit log: {e}")))?;
    Ok(json!({
        "device": device,
        "dir": shown,
        "clean": report.is_clean(),
        "report": report,
    }))
}

/// `sys/audit-verify`: every node's log checked (or `node`'s), one report
/// per node; `clean` when every node answered and every log is clean.
pub async fn verify(core: &Core, req: &Request, node: Option<String>) -> Result<Option<Response>> {
    let (me, local, peers) = plan(core, node.as_deref())?;
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    if local {
        nodes.insert(me, verify_here(core).await?);
    }
    let mut warnings = Vec::new();
    let mut missing = Vec::new();
    for (peer, answer) in ask_all(core, req, &peers, "sys/audit-verify", &[]).await {
        let entry =
            answer.and_then(
                |mut d| match d.get_mut("nodes").and_then(|n| n.get_mut(&peer.name)) {
                    Some(v) => Ok(v.take()),
                    None => Err("an answer without its own report".to_owned()),
                },
            );
        match entry {
            Ok(v) => {
                nodes.insert(peer.name, v);
            }
            Err(why) => {
                warnings.push(missing_warning(&peer, &why));
                missing.push(peer.name);
            }
        }
    }
    let clean = missing.is_empty()
        && nodes
            .values()
            .all(|v| v.get("clean").and_then(Value::as_bool) == Some(true));
    data(
        json!({"clean": clean, "nodes": nodes, "nodes_missing": missing}),
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_nodes_are_named_with_their_address() {
        let p = Peer {
            name: "node3".into(),
            api_addr: "http://127.0.0.1:8210".into(),
        };
        let w = missing_warning(&p, "connection refused");
        assert!(w.contains("\"node3\""), "{w}");
        assert!(w.contains("http://127.0.0.1:8210"), "{w}");
        assert!(w.contains("connection refused"), "{w}");
    }
}
