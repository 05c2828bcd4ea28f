//! The audit query: "which clients read path P, at which KV versions,
//! between t1 and t2" — what the rotator asks before it retires a credential
//! ("has every consumer moved to version ≥ v since t?"), and what people ask
//! after an incident. For transit paths it also answers "under which key
//! versions": each posting keeps the response event's `key_versions` (the
//! versions of the ciphertexts a decrypt or rewrap opened, of the proofs a
//! verify checked, the version a sign or hmac used), and `max_key_version`
//! keeps only the events that used a version ≤ N — the KEK rotator's "who
//! still decrypts under the old version?".
//!
//! Two sources give the same answer ([`QueryAnswer`]):
//!
//! * **local** ([`index`]): a worker ([`index::run_indexer`]) follows the
//!   durable local audit log ([`crate::log::AuditLog`], fsynced records only)
//!   and keeps a redb index beside it (`<log dir>/audit.index.redb`): one
//!   [`Posting`] per successful response event, keyed by
//!   `(request path, event time, sequence number)`. A query reads only the
//!   postings of one path inside the time range — never the whole log — and
//!   only of records the log still holds: the index follows retention.
//! * **elasticsearch** ([`elasticsearch`]): the same question as an `_search`
//!   over the documents an `elasticsearch` audit sink shipped
//!   (`<index>-*`, `_id` = event id), turned into the same postings.
//!
//! On a cluster each node indexes only the requests it served; the server
//! asks every node for its local answer and [`merge`]s them into one, with
//! the same grouping, order and limit (`core/src/audit_nodes.rs`). Events
//! carry the writing node's `node_id`, so an Elasticsearch query can keep one
//! node's (`QueryParams::node`).
//!
//! Both feed an [`Aggregator`], so the grouping (per client accessor), the
//! filters (operation, minimum KV version, maximum transit key version,
//! accessor) and the output shape are
//! written once. Accessors are compared as they are in the log: HMAC'd with
//! the device's salt when `hmac_accessor` is on (the default); the server
//! hashes an `accessor` filter with that salt before matching.

pub mod elasticsearch;
pub mod index;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::log::AuditLog;

pub use elasticsearch::{EsOptions, EsQuery};
pub use index::{AuditIndex, INDEX_FILE, run_indexer};
pub use view::{EventView, format_nanos, parse_time_param};

/// What can go wrong answering a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The caller's parameters are wrong (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The index database failed.
    #[error("audit index: {0}")]
    Index(String),
    /// Reading the local log failed.
    #[error("audit log: {0}")]
    Log(#[from] crate::error::AuditError),
    /// Elasticsearch is unreachable or answered an error.
    #[error("elasticsearch: {0}")]
    Elasticsearch(String),
    /// The requested source is not available on this server.
    #[error("{0}")]
    Unavailable(String),
}

/// Default and maximum number of clients in an answer.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;

/// One query. Times are unix nanoseconds, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParams {
    /// The request path exactly as clients sent it (`secret/data/app/db`).
    pub path: String,
    pub since: i64,
    pub until: i64,
    /// `read` unless given.
    pub operation: String,
    /// Only reads that returned at least this KV version.
    pub min_version: Option<u64>,
    /// Only transit operations that used a key version ≤ this one (at least
    /// one of the event's `key_versions`); events without key versions are
    /// left out when set.
    pub max_key_version: Option<u64>,
    /// Only this client: accessor values as they may appear in the log
    /// (the HMAC and, for `hmac_accessor=false` devices, the raw value).
    pub accessors: Vec<String>,
    /// At most this many clients (most recent readers first).
    pub limit: usize,
    /// Only the events this node wrote (its `node_id`). Elasticsearch
    /// filters on the documents' `node_id`; a local index holds one node's
    /// events only, so the server routes the query to that node instead.
    pub node: Option<String>,
}

impl QueryParams {
    /// A query for every read of `path` at any time.
    pub fn new(path: impl Into<String>) -> QueryParams {
        QueryParams {
            path: path.into(),
            since: i64::MIN,
            until: i64::MAX,
            operation: "read".into(),
            min_version: None,
            max_key_version: None,
            accessors: Vec::new(),
            limit: DEFAULT_LIMIT,
            node: None,
        }
    }

    /// Check the parameters: a path, a sane range and limit.
    pub fn validate(&self) -> Result<(), QueryError> {
        if self.path.trim_matches('/').is_empty() {
            return Err(QueryError::BadRequest(
                "missing required parameter \"path\"".into(),
            ));
        }
        if self.since > self.until {
            return Err(QueryError::BadRequest(
                "\"since\" is after \"until\"".into(),
            ));
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(QueryError::BadRequest(format!(
                "\"limit\" must be between 1 and {MAX_LIMIT}"
            )));
        }
        Ok(())
    }

    /// Does a posting of this path pass the non-key filters?
    fn accepts(&self, p: &Posting) -> bool {
        p.time >= self.since
            && p.time <= self.until
            && p.operation == self.operation
            && self
                .min_version
                .is_none_or(|min| p.version.is_some_and(|v| v >= min))
            && self
                .max_key_version
                .is_none_or(|max| p.key_versions.first().is_some_and(|v| *v <= max))
            && (self.accessors.is_empty() || self.accessors.contains(&p.accessor))
    }
}

/// What the index keeps of one successful response event: enough to answer
/// a query without reading the log again. No secret: the accessor is as the
/// device wrote it (HMAC'd by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// Sequence number in the local log (0 when from Elasticsearch).
    #[serde(rename = "s")]
    pub seq: u64,
    /// Event time, unix nanoseconds.
    #[serde(rename = "t")]
    pub time: i64,
    #[serde(rename = "o")]
    pub operation: String,
    #[serde(rename = "a", default)]
    pub accessor: String,
    #[serde(rename = "d", default)]
    pub display_name: String,
    #[serde(rename = "p", default)]
    pub policies: Vec<String>,
    #[serde(rename = "r", default)]
    pub remote_address: String,
    #[serde(rename = "ro", default)]
    pub role: String,
    #[serde(rename = "e", default)]
    pub entity_id: String,
    #[serde(rename = "v", default)]
    pub version: Option<u64>,
    /// Transit key versions used, distinct and ascending (empty for
    /// anything else). Absent in postings indexed before it existed, which
    /// is right: their events carried none.
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    pub key_versions: Vec<u64>,
}

impl Posting {
    /// The posting of an event, when it is a successful response with a
    /// path and a parseable time; `seq` is its place in the local log.
    pub fn from_event(ev: &EventView, seq: u64) -> Option<Posting> {
        if !ev.is_successful_response() || ev.request.path.is_empty() {
            return None;
        }
        Some(Posting {
            seq,
            time: ev.time_nanos()?,
            operation: ev.request.operation.clone(),
            accessor: ev.auth.accessor.clone(),
            display_name: ev.auth.display_name.clone(),
            policies: ev.auth.policies.clone(),
            remote_address: ev.request.remote_address.clone(),
            role: ev.role(),
            entity_id: ev.auth.entity_id.clone(),
            version: ev.kv_version(),
            key_versions: ev.key_versions(),
        })
    }

    /// The client a posting belongs to: its token accessor, else (no token)
    /// its display name and address.
    fn client_key(&self) -> String {
        if self.accessor.is_empty() {
            format!("anon:{}@{}", self.display_name, self.remote_address)
        } else {
            self.accessor.clone()
        }
    }
}

/// One client in an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReads {
    /// As in the log: `hmac-sha256:…` unless the device has `hmac_accessor=false`.
    pub accessor: String,
    pub display_name: String,
    pub policies: Vec<String>,
    pub remote_address: String,
    /// Auth role (`role_name`/`role` token metadata), empty when none.
    pub role: String,
    pub entity_id: String,
    pub reads: u64,
    pub first_read: String,
    pub last_read: String,
    /// Distinct KV versions read, ascending.
    pub versions: Vec<u64>,
    /// The highest of `versions`; absent when no read returned a version.
    pub max_version: Option<u64>,
    /// Distinct transit key versions the client's matching events used
    /// (decrypt, rewrap, verify: the versions of its inputs; sign, hmac: the
    /// version used), ascending; empty for KV and other paths.
    #[serde(default)]
    pub key_versions: Vec<u64>,
    /// The lowest of `key_versions`: the oldest key version the client still
    /// used in the range; absent when none.
    #[serde(default)]
    pub min_key_version: Option<u64>,
}

/// The answer to a query, the same shape from either source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub clients: Vec<ClientReads>,
    /// Postings (local) or documents (Elasticsearch) examined.
    pub events_scanned: u64,
    /// `local` or `elasticsearch`.
    pub source: String,
    /// More clients matched than `limit`.
    pub truncated: bool,
    /// Local answers once retention deleted the log's oldest segments: the
    /// time of the oldest record the log still holds. The answer is complete
    /// from there on; events before it are gone from the log and the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_from: Option<String>,
    /// On a cluster, local answers merged from every node ([`merge`]): the
    /// nodes whose events the answer holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Nodes that were asked and did not answer: the answer leaves out
    /// their events (a partial answer; the server adds a warning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_missing: Vec<String>,
}

/// The key [`Posting::client_key`] gives the client of an answer's row.
fn row_key(c: &ClientReads) -> String {
    if c.accessor.is_empty() {
        format!("anon:{}@{}", c.display_name, c.remote_address)
    } else {
        c.accessor.clone()
    }
}

/// The order of [`Aggregator::finish`]: most recent read first, ties by
/// accessor, then display name.
fn answer_order(a: &ClientReads, b: &ClientReads) -> std::cmp::Ordering {
    view::parse_rfc3339_nanos(&b.last_read)
        .cmp(&view::parse_rfc3339_nanos(&a.last_read))
        .then_with(|| a.accessor.cmp(&b.accessor))
        .then_with(|| a.display_name.cmp(&b.display_name))
}

/// One answer from the answers of several nodes' local logs, each asked
/// the same query with limit [`MAX_LIMIT`]: a client's rows are added up
/// (reads summed, versions united, first read the earliest, last read and
/// who-it-was the latest), ordered as one node orders them and cut at
/// `limit`. Exact unless a node's own answer was truncated (more than
/// [`MAX_LIMIT`] clients): then a client may miss that node's reads, and the
/// merged answer says `truncated`. Membership of the first `limit` clients
/// is exact even so: a client's latest read ranks it on the node that saw
/// it at least as high as in the merged order. `complete_from` is the latest
/// of the nodes' (the merged answer is complete only from there on).
pub fn merge(answers: Vec<(String, QueryAnswer)>, limit: usize) -> QueryAnswer {
    let mut by_client: BTreeMap<String, ClientReads> = BTreeMap::new();
    let mut merged = QueryAnswer {
        clients: Vec::new(),
        events_scanned: 0,
        source: Source::Local.as_str().to_owned(),
        truncated: false,
        complete_from: None,
        nodes: Vec::new(),
        nodes_missing: Vec::new(),
    };
    for (node, answer) in answers {
        merged.nodes.push(node);
        merged.events_scanned += answer.events_scanned;
        merged.truncated |= answer.truncated;
        if let Some(from) = answer.complete_from {
            let later = merged.complete_from.as_ref().is_none_or(|have| {
                view::parse_rfc3339_nanos(&from) > view::parse_rfc3339_nanos(have)
            });
            if later {
                merged.complete_from = Some(from);
            }
        }
        for row in answer.clients {
            match by_client.entry(row_key(&row)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(row);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let have = o.get_mut();
                    have.reads += row.reads;
                    let mut versions: BTreeSet<u64> = have.versions.drain(..).collect();
                    versions.extend(row.versions.iter().copied());
                    have.versions = versions.into_iter().collect();
                    have.max_version = have.versions.last().copied();
                    let mut kv: BTreeSet<u64> = have.key_versions.drain(..).collect();
                    kv.extend(row.key_versions.iter().copied());
                    have.key_versions = kv.into_iter().collect();
                    have.min_key_version = have.key_versions.first().copied();
                    if view::parse_rfc3339_nanos(&row.first_read)
                        < view::parse_rfc3339_nanos(&have.first_read)
                    {
                        have.first_read = row.first_read;
                    }
                    if view::parse_rfc3339_nanos(&row.last_read)
                        >= view::parse_rfc3339_nanos(&have.last_read)
                    {
                        have.last_read = row.last_read;
                        have.accessor = row.accessor;
                        have.display_name = row.display_name;
                        have.policies = row.policies;
                        have.remote_address = row.remote_address;
                        have.role = row.role;
                        have.entity_id = row.entity_id;
                    }
                }
            }
        }
    }
    let mut clients: Vec<ClientReads> = by_client.into_values().collect();
    clients.sort_by(answer_order);
    merged.truncated |= clients.len() > limit;
    clients.truncate(limit);
    merged.clients = clients;
    merged
}

#[derive(Default)]
struct Acc {
    first: Option<Posting>,
    last_time: i64,
    last: Option<Posting>,
    reads: u64,
    versions: BTreeSet<u64>,
    key_versions: BTreeSet<u64>,
}

/// Groups postings per client. Feed it with [`Aggregator::push`] (in any
/// order), then [`Aggregator::finish`].
pub struct Aggregator<'q> {
    params: &'q QueryParams,
    clients: BTreeMap<String, Acc>,
    scanned: u64,
}

impl<'q> Aggregator<'q> {
    pub fn new(params: &'q QueryParams) -> Self {
        Aggregator {
            params,
            clients: BTreeMap::new(),
            scanned: 0,
        }
    }

    /// Consider one posting of the queried path.
    pub fn push(&mut self, p: Posting) {
        self.scanned += 1;
        if !self.params.accepts(&p) {
            return;
        }
        let acc = self.clients.entry(p.client_key()).or_default();
        acc.reads += 1;
        if let Some(v) = p.version {
            acc.versions.insert(v);
        }
        acc.key_versions.extend(p.key_versions.iter().copied());
        if acc.first.as_ref().is_none_or(|f| p.time < f.time) {
            acc.first = Some(p.clone());
        }
        if acc.last.is_none() || p.time >= acc.last_time {
            acc.last_time = p.time;
            acc.last = Some(p);
        }
    }

    /// The answer: clients by most recent read first (ties by accessor),
    /// cut at `limit`. Display name, policies, address and role are those of
    /// the client's latest read.
    pub fn finish(self, source: &str) -> QueryAnswer {
        let mut clients: Vec<ClientReads> = self
            .clients
            .into_values()
            .filter_map(|acc| {
                let first = acc.first?;
                let last = acc.last?;
                Some(ClientReads {
                    accessor: last.accessor,
                    display_name: last.display_name,
                    policies: last.policies,
                    remote_address: last.remote_address,
                    role: last.role,
                    entity_id: last.entity_id,
                    reads: acc.reads,
                    first_read: format_nanos(first.time),
                    last_read: format_nanos(last.time),
                    max_version: acc.versions.last().copied(),
                    versions: acc.versions.into_iter().collect(),
                    min_key_version: acc.key_versions.first().copied(),
                    key_versions: acc.key_versions.into_iter().collect(),
                })
            })
            .collect();
        clients.sort_by(answer_order);
        let truncated = clients.len() > self.params.limit;
        clients.truncate(self.params.limit);
        QueryAnswer {
            clients,
            events_scanned: self.scanned,
            source: source.to_owned(),
            truncated,
            complete_from: None,
            nodes: Vec::new(),
            nodes_missing: Vec::new(),
        }
    }
}

/// Where an answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Elasticsearch,
}

impl Source {
    /// `local` (also the default for an empty value) or `elasticsearch`.
    pub fn parse(s: &str) -> Result<Source, QueryError> {
        match s {
            "" | "local" => Ok(Source::Local),
            "elasticsearch" | "es" => Ok(Source::Elasticsearch),
            other => Err(QueryError::BadRequest(format!(
                "unknown source {other:?}: use \"local\" or \"elasticsearch\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Elasticsearch => "elasticsearch",
        }
    }
}

/// How long a local query waits for the index to reach the log's durable
/// end before answering 503.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// What the server holds to answer `sys/audit-query`: the local log and its
/// index, the device whose salt hashed the log, and Elasticsearch when an
/// `elasticsearch` audit device is configured.
#[derive(Debug)]
pub struct AuditQueryService {
    device: String,
    log: Arc<AuditLog>,
    index: Arc<AuditIndex>,
    es: Option<EsQuery>,
}

impl AuditQueryService {
    pub fn new(
        device: String,
        log: Arc<AuditLog>,
        index: Arc<AuditIndex>,
        es: Option<EsQuery>,
    ) -> AuditQueryService {
        AuditQueryService {
            device,
            log,
            index,
            es,
        }
    }

    /// The mount path of the audit device that writes the local log.
    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn index(&self) -> &Arc<AuditIndex> {
        &self.index
    }

    /// Answer `q` from `source`.
    pub async fn query(&self, q: QueryParams, source: Source) -> Result<QueryAnswer, QueryError> {
        q.validate()?;
        let started = Instant::now();
        let answer = match source {
            Source::Local => {
                let durable = self.log.durable_seq();
                if !self.index.wait_for(durable, CATCH_UP_WAIT).await {
                    return Err(QueryError::Unavailable(format!(
                        "the audit query index is catching up with the local log (record {} of {durable}); retry shortly",
                        self.index.indexed_seq()
                    )));
                }
                let index = self.index.clone();
                let dir = self.log.log_dir().clone();
                tokio::task::spawn_blocking(move || {
                    // Never answer a record retention deleted, even before
                    // the worker prunes it.
                    let floor = index.follow_retention(&dir)?;
                    let mut answer = index.query(&q)?;
                    if floor > 1 {
                        answer.complete_from = oldest_record_time(&dir, floor);
                    }
                    Ok::<_, QueryError>(answer)
                })
                .await
                .map_err(|e| QueryError::Index(e.to_string()))??
            }
            Source::Elasticsearch => match &self.es {
                Some(es) => es.query(&q).await?,
                None => {
                    return Err(QueryError::BadRequest(
                        "no elasticsearch audit device is configured".into(),
                    ));
                }
            },
        };
        ::metrics::histogram!(crate::metrics::QUERY_SECONDS, "source" => source.as_str())
            .record(started.elapsed().as_secs_f64());
        Ok(answer)
    }
}

/// The event time of the first record at or after `seq` in the log in
/// `dir`, as the event has it; `None` when there is none or it cannot be read.
fn oldest_record_time(dir: &crate::log::LogDir, seq: u64) -> Option<String> {
    let mut reader = crate::log::LogReader::open(dir.clone(), seq).ok()?;
    let rec = reader.try_next().ok()??;
    let time = EventView::parse(&rec.event).ok()?.time;
    (!time.is_empty()).then_some(time)
}

/// Turn `secret/app/db` into `secret/data/app/db` for a KV v2 mount at
/// `mount` (`secret/`); paths already under `data/` (or another KV v2 API
/// prefix) are kept.
pub fn kv2_data_path(mount: &str, path: &str) -> String {
    let Some(rest) = path.strip_prefix(mount) else {
        return path.to_owned();
    };
    const API: [&str; 6] = [
        "data/",
        "metadata/",
        "delete/",
        "undelete/",
        "destroy/",
        "subkeys/",
    ];
    if API.iter().any(|p| rest.starts_with(p)) || rest == "config" {
        return path.to_owned();
    }
    format!("{mount}data/{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(acc: &str, t: i64, v: Option<u64>) -> Posting {
        Posting {
            seq: 1,
            time: t,
            operation: "read".into(),
            accessor: acc.into(),
            display_name: format!("dn-{acc}"),
            policies: vec!["app".into()],
            remote_address: "10.0.0.1".into(),
            role: String::new(),
            entity_id: String::new(),
            version: v,
            key_versions: Vec::new(),
        }
    }

    fn decrypt(acc: &str, t: i64, kv: &[u64]) -> Posting {
        Posting {
            operation: "update".into(),
            version: None,
            key_versions: kv.to_vec(),
            ..posting(acc, t, None)
        }
    }

    #[test]
    fn key_versions_are_aggregated_per_client() {
        let mut q = QueryParams::new("transit/decrypt/orders");
        q.operation = "update".into();
        let mut agg = Aggregator::new(&q);
        agg.push(decrypt("a", 10, &[2]));
        agg.push(decrypt("a", 20, &[1, 3])); // a batch over two versions
        agg.push(decrypt("a", 30, &[2]));
        agg.push(decrypt("b", 40, &[3]));
        agg.push(decrypt("c", 50, &[])); // an event without versions
        let ans = agg.finish("local");
        assert_eq!(ans.clients.len(), 3);
        let by = |acc: &str| ans.clients.iter().find(|c| c.accessor == acc).unwrap();
        assert_eq!(by("a").key_versions, vec![1, 2, 3]);
        assert_eq!(by("a").min_key_version, Some(1));
        assert_eq!(by("a").reads, 3);
        assert!(by("a").versions.is_empty());
        assert_eq!(by("b").key_versions, vec![3]);
        assert_eq!(by("b").min_key_version, Some(3));
        assert!(by("c").key_versions.is_empty());
        assert_eq!(by("c").min_key_version, None);
    }

    #[test]
    fn max_key_version_keeps_only_events_under_old_versions() {
        let mut q = QueryParams::new("transit/decrypt/orders");
        q.operation = "update".into();
        q.max_key_version = Some(1);
        let mut agg = Aggregator::new(&q);
        agg.push(decrypt("old", 10, &[1]));
        agg.push(decrypt("old", 20, &[2])); // not under v1: left out
        agg.push(decrypt("mixed", 30, &[1, 2])); // a batch with one v1 item
        agg.push(decrypt("moved", 40, &[2]));
        agg.push(decrypt("moved", 45, &[3]));
        agg.push(decrypt("none", 50, &[]));
        agg.push(posting("kv", 60, Some(1))); // a read, other operation
        let ans = agg.finish("local");
        assert_eq!(ans.events_scanned, 7);
        let names: Vec<&str> = ans.clients.iter().map(|c| c.accessor.as_str()).collect();
        assert_eq!(names, vec!["mixed", "old"]);
        // Versions are those of the matching events only.
        assert_eq!(ans.clients[0].key_versions, vec![1, 2]);
        assert_eq!(ans.clients[1].key_versions, vec![1]);
        assert_eq!(ans.clients[1].reads, 1);
        assert_eq!(ans.clients[1].min_key_version, Some(1));
        // N = 0 matches nothing; N above every version matches every event
        // that has versions.
        q.max_key_version = Some(0);
        let mut agg = Aggregator::new(&q);
        agg.push(decrypt("old", 10, &[1]));
        assert!(agg.finish("local").clients.is_empty());
        q.max_key_version = Some(u64::MAX);
        let mut agg = Aggregator::new(&q);
        agg.push(decrypt("old", 10, &[1]));
        agg.push(decrypt("none", 20, &[]));
        assert_eq!(agg.finish("local").clients.len(), 1);
    }

    #[test]
    fn postings_without_key_versions_still_decode() {
        // As indexed before key versions existed.
        let old = br#"{"s":1,"t":5,"o":"read","a":"x","v":2}"#;
        let p: Posting = serde_json::from_slice(old).unwrap();
        assert!(p.key_versions.is_empty());
        assert_eq!(p.version, Some(2));
        // Empty key versions are not written; present ones round-trip.
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("\"k\""), "{json}");
        let with = Posting {
            key_versions: vec![1, 4],
            ..p
        };
        let back: Posting = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.key_versions, vec![1, 4]);
        // Answers from an older server (no key version fields) decode too.
        let c: ClientReads = serde_json::from_value(serde_json::json!({
            "accessor": "a", "display_name": "d", "policies": [], "remote_address": "",
            "role": "", "entity_id": "", "reads": 1, "first_read": "x", "last_read": "y",
            "versions": [1], "max_version": 1
        }))
        .unwrap();
        assert!(c.key_versions.is_empty());
        assert_eq!(c.min_key_version, None);
    }

    #[test]
    fn groups_filters_and_orders() {
        let mut q = QueryParams::new("secret/data/a");
        q.since = 10;
        q.until = 100;
        q.min_version = Some(2);
        let mut agg = Aggregator::new(&q);
        agg.push(posting("a", 5, Some(3))); // too early
        agg.push(posting("a", 20, Some(1))); // version too low
        agg.push(posting("a", 30, Some(2)));
        agg.push(posting("a", 40, Some(3)));
        agg.push(posting("b", 50, Some(2)));
        agg.push(posting("c", 60, None)); // no version
        let mut w = posting("d", 70, Some(9));
        w.operation = "update".into();
        agg.push(w);
        let ans = agg.finish("local");
        assert_eq!(ans.events_scanned, 7);
        assert_eq!(ans.clients.len(), 2);
        assert_eq!(ans.clients[0].accessor, "b");
        assert_eq!(ans.clients[1].accessor, "a");
        assert_eq!(ans.clients[1].reads, 2);
        assert_eq!(ans.clients[1].versions, vec![2, 3]);
        assert_eq!(ans.clients[1].max_version, Some(3));
    }

    #[test]
    fn merged_node_answers_equal_one_answer_over_every_event() {
        // Three nodes' postings; clients read through several nodes.
        let nodes: Vec<Vec<Posting>> = vec![
            vec![
                posting("a", 10, Some(1)),
                posting("b", 20, Some(2)),
                posting("c", 95, Some(4)),
            ],
            vec![
                posting("a", 50, Some(3)),
                posting("d", 60, None),
                posting("b", 5, Some(1)),
            ],
            vec![
                posting("a", 30, Some(2)),
                posting("e", 70, Some(5)),
                decrypt("f", 80, &[2]),
            ],
        ];
        for limit in [1, 2, 3, 10] {
            let mut q = QueryParams::new("secret/data/a");
            q.limit = limit;
            let mut all = Aggregator::new(&q);
            for p in nodes.iter().flatten() {
                all.push(p.clone());
            }
            let want = all.finish("local");
            let mut per_node = q.clone();
            per_node.limit = MAX_LIMIT;
            let answers = nodes
                .iter()
                .enumerate()
                .map(|(i, ps)| {
                    let mut agg = Aggregator::new(&per_node);
                    for p in ps {
                        agg.push(p.clone());
                    }
                    (format!("n{i}"), agg.finish("local"))
                })
                .collect();
            let got = merge(answers, limit);
            assert_eq!(got.clients, want.clients, "limit {limit}");
            assert_eq!(got.truncated, want.truncated, "limit {limit}");
            assert_eq!(got.events_scanned, want.events_scanned);
            assert_eq!(got.nodes, ["n0", "n1", "n2"]);
        }
        // A's rows added up: 3 reads over 3 nodes, versions 1..3.
        let mut q = QueryParams::new("secret/data/a");
        q.limit = MAX_LIMIT;
        let answers = nodes
            .iter()
            .map(|ps| {
                let mut agg = Aggregator::new(&q);
                ps.iter().for_each(|p| agg.push(p.clone()));
                ("n".to_owned(), agg.finish("local"))
            })
            .collect();
        let got = merge(answers, 10);
        let a = got.clients.iter().find(|c| c.accessor == "a").unwrap();
        assert_eq!((a.reads, a.versions.clone()), (3, vec![1, 2, 3]));
        assert_eq!(a.first_read, format_nanos(10));
        assert_eq!(a.last_read, format_nanos(50));
    }

    #[test]
    fn validates() {
        assert!(QueryParams::new("").validate().is_err());
        let mut q = QueryParams::new("x");
        q.since = 2;
        q.until = 1;
        assert!(q.validate().is_err());
        q.until = 3;
        q.limit = 0;
        assert!(q.validate().is_err());
    }

    #[test]
    fn kv2_paths() {
        assert_eq!(
            kv2_data_path("secret/", "secret/app/db"),
            "secret/data/app/db"
        );
        assert_eq!(
            kv2_data_path("secret/", "secret/data/app"),
            "secret/data/app"
        );
        assert_eq!(kv2_data_path("kv/", "secret/app"), "secret/app");
    }
}
