//! Reconciling the local audit log with its sinks, for `custos audit verify`.
//!
//! Input: a local log directory (read straight from the files, no server
//! needed) and, optionally, a Kafka topic and an Elasticsearch index. Output:
//! a [`Reconciliation`] the CLI prints, whose [`Reconciliation::gaps`] decide
//! the exit code.
//!
//! * **Local**: [`crate::log::verify`] (CRCs, sequence gaps, torn tail),
//!   then every record's event id; an id seen twice is a gap too (the log
//!   must hold each event once).
//! * **Elasticsearch** must hold exactly the local set: `_count` over the
//!   index pattern, an `ids` query per 1000 local ids to find the missing
//!   ones, and, when the count says there are more documents than local
//!   events, a scroll over all `_id`s to name the extras (only when the
//!   local log still starts at sequence 1; after retention pruned it, extra
//!   documents are expected and reported as such).
//! * **Kafka** must hold every local event at least once: the topic is read
//!   from the beginning of every partition up to the high watermark taken at
//!   the start (bounded by a timeout), keys collected. Duplicates and keys
//!   from other nodes are reported, not counted as gaps.
//!
//! Records after a sink's checkpoint (`<dir>/audit.checkpoints/<sink>.json`)
//! are its backlog: not yet acknowledged, so reported as `pending`, not as
//! gaps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{Value, json};

use super::Outgoing;
use crate::error::AuditError;
use crate::log::{Checkpoint, LogDir, LogReader, VerifyReport};

/// Most ids listed per category in a report.
const MAX_LISTED: usize = 50;

/// The local log's events.
#[derive(Debug, Clone, Default)]
pub struct LocalEvents {
    /// Event id → sequence number (the first, if duplicated).
    pub ids: HashMap<String, u64>,
    /// Ids recorded more than once.
    pub duplicates: Vec<String>,
    /// Request ids with a request event but no response event (the server
    /// stopped before answering).
    pub unanswered: usize,
    pub first_seq: Option<u64>,
}

/// Read every event id of the log in `dir`.
pub fn local_events(dir: &LogDir) -> Result<LocalEvents, AuditError> {
    let mut reader = LogReader::open(dir.clone(), 0)?;
    let mut out = LocalEvents::default();
    let mut requests: HashSet<String> = HashSet::new();
    let mut responses: HashSet<String> = HashSet::new();
    loop {
        match reader.try_next() {
            Ok(Some(rec)) => {
                let o = Outgoing::from_record(rec);
                out.first_seq.get_or_insert(o.seq);
                if let Some(rid) = o.id.strip_suffix("-request") {
                    requests.insert(rid.to_owned());
                } else if let Some(rid) = o.id.strip_suffix("-response") {
                    responses.insert(rid.to_owned());
                }
                if out.ids.insert(o.id.clone(), o.seq).is_some() {
                    out.duplicates.push(o.id);
                }
            }
            Ok(None) => break,
            // Counted by `verify`; keep reading.
            Err(AuditError::CorruptRecord { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.unanswered = requests.difference(&responses).count();
    Ok(out)
}

/// Where Kafka is.
#[derive(Debug, Clone)]
pub struct KafkaTarget {
    pub brokers: String,
    pub topic: String,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`).
    pub options: BTreeMap<String, String>,
    /// Name of the sink's checkpoint (the device path, e.g. `kafka`).
    pub sink: String,
    pub timeout: Duration,
}

/// Where Elasticsearch is.
#[derive(Clone)]
pub struct EsTarget {
    pub url: String,
    /// The index pattern to search (`custos-audit-*`, or the alias).
    pub index_pattern: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
    pub tls_skip_verify: bool,
    /// Name of the sink's checkpoint (the device path, e.g. `es`).
    pub sink: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for EsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsTarget")
            .field("url", &self.url)
            .field("index_pattern", &self.index_pattern)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

/// One sink's comparison with the local log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkReport {
    pub sink: String,
    /// Events (ids) found in the sink.
    pub found: u64,
    /// Local events the sink acknowledged (per its checkpoint) but does not hold.
    pub missing: u64,
    pub missing_ids: Vec<String>,
    /// Local events after the sink's checkpoint: not yet shipped.
    pub pending: u64,
    /// Events in the sink that the local log does not hold.
    pub extra: u64,
    pub extra_ids: Vec<String>,
    /// True when extras are expected (the local log was pruned) or allowed
    /// (Kafka: other nodes ship to the same topic).
    pub extra_allowed: bool,
    /// Kafka: messages whose key was seen more than once (at-least-once).
    pub duplicates: u64,
    pub checkpoint: Option<u64>,
}

/// Everything `custos audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    pub local: VerifyReport,
    pub local_events: u64,
    pub local_duplicates: Vec<String>,
    pub unanswered_requests: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elasticsearch: Option<SinkReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<SinkReport>,
}

impl Reconciliation {
    /// Human-readable descriptions of every gap; empty when all agree.
    pub fn gaps(&self) -> Vec<String> {
        let mut g = Vec::new();
        let l = &self.local;
        for (a, b) in &l.gaps {
            g.push(format!("local log: sequence numbers {a}..={b} are missing"));
        }
        for (seg, line) in &l.crc_errors {
            g.push(format!("local log: corrupt record at {seg}:{line}"));
        }
        for (seg, line) in &l.out_of_order {
            g.push(format!("local log: record out of order at {seg}:{line}"));
        }
        if l.torn_tail {
            g.push("local log: the last segment ends in a torn record".into());
        }
        for id in &self.local_duplicates {
            g.push(format!("local log: event {id} is recorded more than once"));
        }
        for r in [&self.elasticsearch, &self.kafka].into_iter().flatten() {
            if r.missing > 0 {
                g.push(format!(
                    "{}: {} acknowledged events missing (e.g. {})",
                    r.sink,
                    r.missing,
                    r.missing_ids
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if r.extra > 0 && !r.extra_allowed {
                g.push(format!(
                    "{}: {} events not in the local log (e.g. {})",
                    r.sink,
                    r.extra,
                    r.extra_ids
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        g
    }
}

/// The local ids a sink should hold (up to its checkpoint) and how many are
/// pending after it.
fn expected(local: &LocalEvents, checkpoint: Option<u64>) -> (HashSet<&str>, u64) {
    let mut want = HashSet::new();
    let mut pending = 0;
    for (id, seq) in &local.ids {
        if checkpoint.is_some_and(|c| *seq > c) {
            pending += 1;
        } else {
            want.insert(id.as_str());
        }
    }
    (want, pending)
}

fn es_client(t: &EsTarget) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(t.timeout)
        .danger_accept_invalid_certs(t.tls_skip_verify)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

fn es_req(
    http: &reqwest::Client,
    t: &EsTarget,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let mut r = http.request(method, format!("{}/{}", t.url.trim_end_matches('/'), path));
    if let Some(u) = &t.username {
        r = r.basic_auth(u, t.password.as_deref());
    } else if let Some(k) = &t.api_key {
        r = r.header(reqwest::header::AUTHORIZATION, format!("ApiKey {k}"));
    }
    r
}

async fn es_json(r: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
    let resp = r
        .send()
        .await
        .map_err(|e| format!("Elasticsearch {what}: {e}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("Elasticsearch {what}: response is not JSON: {e}"))?;
    if !status.is_success() {
        let reason = v
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("error");
        return Err(format!("Elasticsearch {what}: HTTP {status} {reason}"));
    }
    Ok(v)
}

fn hit_ids(v: &Value) -> Vec<String> {
    v.pointer("/hits/hits")
        .and_then(Value::as_array)
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h.get("_id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Compare Elasticsearch with the local events.
pub async fn reconcile_es(
    local: &LocalEvents,
    checkpoints: &LogDir,
    t: &EsTarget,
) -> Result<SinkReport, String> {
    let http = es_client(t)?;
    let pattern = &t.index_pattern;
    // Near-real-time search: make what was indexed visible (best effort).
    let _ = es_req(
        &http,
        t,
        reqwest::Method::POST,
        &format!("{pattern}/_refresh"),
    )
    .send()
    .await;
    let count = es_json(
        es_req(&http, t, reqwest::Method::GET, &format!("{pattern}/_count")),
        "_count",
    )
    .await?
    .get("count")
    .and_then(Value::as_u64)
    .unwrap_or(0);
    let checkpoint = Checkpoint::get(&checkpoints.checkpoint_dir(), &t.sink)
        .ok()
        .flatten();
    let (want, pending) = expected(local, checkpoint);
    let mut report = SinkReport {
        sink: format!("elasticsearch ({pattern})"),
        found: count,
        pending,
        checkpoint,
        ..SinkReport::default()
    };
    let all_local: Vec<&str> = local.ids.keys().map(String::as_str).collect();
    let mut present: HashSet<String> = HashSet::new();
    for chunk in all_local.chunks(1000) {
        let v = es_json(
            es_req(&http, t, reqwest::Method::POST, &format!("{pattern}/_search"))
                .json(&json!({"size": chunk.len(), "_source": false, "query": {"ids": {"values": chunk}}})),
            "_search",
        )
        .await?;
        present.extend(hit_ids(&v));
    }
    let mut missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|id| !present.contains(*id))
        .collect();
    missing.sort_unstable();
    report.missing = missing.len() as u64;
    report.missing_ids = missing
        .iter()
        .take(MAX_LISTED)
        .map(|s| (*s).to_owned())
        .collect();
    let extra = count.saturating_sub(present.len() as u64);
    report.extra = extra;
    report.extra_allowed = local.first_seq.is_some_and(|s| s > 1);
    if extra > 0 && !report.extra_allowed {
        // Name them: scroll over every _id.
        let mut v = es_json(
            es_req(
                &http,
                t,
                reqwest::Method::POST,
                &format!("{pattern}/_search?scroll=1m"),
            )
            .json(&json!({"size": 1000, "_source": false, "sort": ["_doc"]})),
            "_search",
        )
        .await?;
        let mut extras = Vec::new();
        loop {
            let ids = hit_ids(&v);
            if ids.is_empty() {
                break;
            }
            extras.extend(ids.into_iter().filter(|id| !local.ids.contains_key(id)));
            let Some(sid) = v
                .get("_scroll_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                break;
            };
            v = es_json(
                es_req(&http, t, reqwest::Method::POST, "_search/scroll")
                    .json(&json!({"scroll": "1m", "scroll_id": sid})),
                "scroll",
            )
            .await?;
        }
        extras.sort();
        report.extra_ids = extras.into_iter().take(MAX_LISTED).collect();
    }
    Ok(report)
}

/// Read the whole topic (up to the high watermarks at the start) and return
/// key → count. A partition is done when the message before its high
/// watermark arrived or the consumer reports its end (offsets may have holes
/// — control records of idempotent producers, a broker restart — so waiting
/// for one exact offset alone could wait forever). Blocking: call from
/// `spawn_blocking`.
pub fn kafka_keys(t: &KafkaTarget) -> Result<HashMap<String, u64>, String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &t.brokers)
        .set(
            "group.id",
            format!("custos-audit-verify-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    for (k, v) in &t.options {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer<super::kafka::QuietContext> = cfg
        .create_with_context(super::kafka::QuietContext::default())
        .map_err(|e| format!("Kafka consumer: {e}"))?;
    let deadline = Instant::now() + t.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let md = consumer
        .fetch_metadata(Some(&t.topic), left())
        .map_err(|e| format!("Kafka metadata for {:?}: {e}", t.topic))?;
    let topic = md
        .topics()
        .first()
        .ok_or_else(|| format!("Kafka topic {:?} not found", t.topic))?;
    if let Some(err) = topic.error() {
        return Err(format!(
            "Kafka topic {:?}: {}",
            t.topic,
            rdkafka::error::RDKafkaErrorCode::from(err)
        ));
    }
    let mut tpl = TopicPartitionList::new();
    // partition → high watermark (offset after the last message)
    let mut todo: HashMap<i32, i64> = HashMap::new();
    for p in topic.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(&t.topic, p.id(), left())
            .map_err(|e| format!("Kafka watermarks of partition {}: {e}", p.id()))?;
        if high > low {
            todo.insert(p.id(), high);
            tpl.add_partition_offset(&t.topic, p.id(), Offset::Offset(low))
                .map_err(|e| format!("Kafka assign: {e}"))?;
        }
    }
    let mut keys: HashMap<String, u64> = HashMap::new();
    if todo.is_empty() {
        return Ok(keys);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| format!("Kafka assign: {e}"))?;
    while !todo.is_empty() {
        if Instant::now() >= deadline {
            return Err(format!(
                "Kafka: timed out reading topic {:?} ({} partitions not read to the end, {} messages read)",
                t.topic,
                todo.len(),
                keys.values().sum::<u64>()
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                todo.remove(&p);
            }
            Some(Err(e)) => return Err(format!("Kafka consume: {e}")),
            Some(Ok(m)) => {
                if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    *keys.entry(k.to_owned()).or_insert(0) += 1;
                }
                if let Some(high) = todo.get(&m.partition())
                    && m.offset() + 1 >= *high
                {
                    todo.remove(&m.partition());
                }
            }
        }
    }
    Ok(keys)
}

/// Compare Kafka with the local events.
pub async fn reconcile_kafka(
    local: &LocalEvents,
    checkpoints: &LogDir,
    t: &KafkaTarget,
) -> Result<SinkReport, String> {
    let target = t.clone();
    let keys = tokio::task::spawn_blocking(move || kafka_keys(&target))
        .await
        .map_err(|e| format!("Kafka reader task failed: {e}"))??;
    let checkpoint = Checkpoint::get(&checkpoints.checkpoint_dir(), &t.sink)
        .ok()
        .flatten();
    let (want, pending) = expected(local, checkpoint);
    let mut missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|id| !keys.contains_key(*id))
        .collect();
    missing.sort_unstable();
    let mut extras: Vec<&String> = keys
        .keys()
        .filter(|k| !local.ids.contains_key(*k))
        .collect();
    extras.sort();
    Ok(SinkReport {
        sink: format!("kafka ({})", t.topic),
        found: keys.len() as u64,
        missing: missing.len() as u64,
        missing_ids: missing
            .iter()
            .take(MAX_LISTED)
            .map(|s| (*s).to_owned())
            .collect(),
        pending,
        extra: extras.len() as u64,
        extra_ids: extras
            .iter()
            .take(MAX_LISTED)
            .map(|s| (*s).clone())
            .collect(),
        extra_allowed: true,
        duplicates: keys.values().filter(|n| **n > 1).count() as u64,
        checkpoint,
    })
}

/// Verify the local log in `dir` and reconcile it with the given sinks.
pub async fn reconcile(
    dir: &LogDir,
    es: Option<&EsTarget>,
    kafka: Option<&KafkaTarget>,
) -> Result<Reconciliation, String> {
    let local_report = crate::log::verify(dir).map_err(|e| format!("local log: {e}"))?;
    let local = local_events(dir).map_err(|e| format!("local log: {e}"))?;
    let elasticsearch = match es {
        Some(t) => Some(reconcile_es(&local, dir, t).await?),
        None => None,
    };
    let kafka = match kafka {
        Some(t) => Some(reconcile_kafka(&local, dir, t).await?),
        None => None,
    };
    let mut dups = local.duplicates.clone();
    dups.sort();
    dups.truncate(MAX_LISTED);
    Ok(Reconciliation {
        local: local_report,
        local_events: local.ids.len() as u64,
        local_duplicates: dups,
        unanswered_requests: local.unanswered,
        elasticsearch,
        kafka,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_not_a_gap() {
        let mut l = LocalEvents::default();
        l.ids.insert("a-request".into(), 1);
        l.ids.insert("a-response".into(), 2);
        let (want, pending) = expected(&l, Some(1));
        assert_eq!((want.len(), pending), (1, 1));
        let (want, pending) = expected(&l, None);
        assert_eq!((want.len(), pending), (2, 0));
        let r = Reconciliation {
            local: VerifyReport::default(),
            local_events: 2,
            local_duplicates: vec![],
            unanswered_requests: 0,
            elasticsearch: Some(SinkReport {
                sink: "es".into(),
                missing: 1,
                missing_ids: vec!["a-request".into()],
                ..SinkReport::default()
            }),
            kafka: Some(SinkReport {
                sink: "kafka".into(),
                extra: 3,
                extra_allowed: true,
                ..SinkReport::default()
            }),
        };
        let g = r.gaps();
        assert_eq!(g.len(), 1, "{g:?}");
        assert!(g[0].contains("a-request"));
    }
}
