//! Shippers: stream the durable local audit log to Kafka and Elasticsearch.
//!
//! Records come from the local log ([`crate::log::AuditLog`], written by the
//! `file` device) through a following [`crate::log::LogReader`], which never
//! yields a record that is not fsynced; they go to a [`Sink`] ([`kafka`],
//! [`elasticsearch`]). One [`Shipper`] per sink runs one worker task
//! ([`worker`]): the project's Worker shape — a loop with a `watch` shutdown
//! signal, its own metrics, and a `JoinHandle` that [`Shipper::shutdown`]
//! awaits (the broker calls it at seal and shutdown).
//!
//! The contract, in the words of the issue:
//!
//! * each shipper reads from its own persisted checkpoint
//!   ([`crate::log::Checkpoint`], `<log dir>/audit.checkpoints/<sink>.json`);
//! * it batches records, sends them, and stores the checkpoint **only after
//!   the sink acknowledged** every record up to it (Kafka: delivery reports;
//!   Elasticsearch: per-item `_bulk` results);
//! * while the sink is down it retries with capped exponential backoff
//!   ([`backoff`]) forever: the backlog only grows on disk and drains in order
//!   when the sink returns; only the failed items of a batch are sent again;
//! * segments are deleted only when every registered sink's checkpoint is
//!   past them and retention allows ([`crate::log::AuditLog::prune`] with the
//!   lowest checkpoint).
//!
//! Each record is identified by its event id (`<request.id>-<type>`, as
//! [`crate::AuditEvent::event_id`]): the Kafka message key and the
//! Elasticsearch `_id`, so a resent record never duplicates in Elasticsearch
//! and is recognisable in Kafka. The payload is the event JSON exactly as the
//! file device recorded it (hashed, Vault's audit format), without the log's
//! `custos_seq`/`custos_crc` framing; the sequence number travels beside it
//! (Kafka header `custos_seq`), because it is local to one node's log.
//!
//! Options are parsed in [`config`]; sink health and backlog are published as
//! `custos_audit_sink_*` metrics ([`crate::metrics`]) and as a
//! [`SinkStatus`] for `sys/audit`.

pub mod backoff;
pub mod config;
pub mod elasticsearch;
pub mod kafka;
pub mod reconcile;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::AuditError;
use crate::log::{AuditLog, LogDir};

pub use config::{EsOptions, KafkaOptions, ShipOptions, SinkOptions, redact_options};

/// One record of the local log, ready to ship.
#[derive(Clone)]
pub struct Outgoing {
    /// Its sequence number in the local log.
    pub seq: u64,
    /// The event id: `<request.id>-<type>` (Kafka key, Elasticsearch `_id`).
    pub id: String,
    /// The event's `time` member (RFC 3339), empty when missing.
    pub time: String,
    /// The event JSON as recorded.
    pub payload: Vec<u8>,
    /// The first sequence number of its segment and its line's bytes on disk.
    pub segment: u64,
    pub line_len: u64,
}

impl std::fmt::Debug for Outgoing {
    // The payload is hashed audit data, but `log_raw` devices hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    time: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    request: HeadRequest,
}

#[derive(Deserialize, Default)]
struct HeadRequest {
    #[serde(default)]
    id: String,
}

impl Outgoing {
    /// Build from a log record: read the event id and time from its JSON.
    /// A record that is not an audit event (no `request.id`) gets the id
    /// `custos-seq-<seq>` so it still ships exactly once per id.
    pub fn from_record(rec: crate::log::Record) -> Outgoing {
        let (id, time) = match serde_json::from_slice::<Head>(&rec.event) {
            Ok(h) if !h.request.id.is_empty() && !h.kind.is_empty() => {
                (format!("{}-{}", h.request.id, h.kind), h.time)
            }
            Ok(h) => (format!("custos-seq-{}", rec.seq), h.time),
            Err(_) => (format!("custos-seq-{}", rec.seq), String::new()),
        };
        Outgoing {
            seq: rec.seq,
            id,
            time,
            payload: rec.event,
            segment: rec.segment,
            line_len: rec.line_len,
        }
    }
}

/// Why a sink did not take a batch or an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink is unreachable or overloaded (connection refused, timeout,
    /// 429, 5xx, Kafka delivery timeout): retry with backoff.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The sink refused the data (mapping error, other 4xx, authorization):
    /// an operator must act. Still retried (at the backoff cap), never
    /// skipped: the checkpoint stops before the record.
    #[error("sink rejected the records: {0}")]
    Rejected(String),
}

impl SinkError {
    /// The `reason` label of `custos_audit_sink_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Rejected(_) => "rejected",
        }
    }
}

/// What a sink did with a batch: the indices (into the batch) of the
/// records it did **not** acknowledge, each with its error. Empty: all done.
pub type SendOutcome = Vec<(usize, SinkError)>;

/// A destination for audit records. Implementations: [`kafka::KafkaSink`],
/// [`elasticsearch::ElasticsearchSink`].
#[async_trait]
pub trait Sink: Send {
    /// `kafka` or `elasticsearch`.
    fn kind(&self) -> &'static str;
    /// Check that the sink is reachable and ready (Elasticsearch: install
    /// the index template). Called before the first shipment and while idle.
    async fn probe(&mut self) -> Result<(), SinkError>;
    /// Send the records; returns the ones not acknowledged. `Err` means
    /// none of them was.
    async fn send(&mut self, batch: &[&Outgoing]) -> Result<SendOutcome, SinkError>;
    /// Flush what is in flight (bounded) and release connections.
    async fn close(&mut self);
}

/// Backlog and health of one sink, for `sys/audit` and `custos audit verify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SinkStatus {
    /// 1 when the last shipment or probe succeeded.
    pub up: bool,
    /// Records in the local log not yet acknowledged by the sink.
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Seconds since the oldest unacknowledged record was written (0 when
    /// caught up).
    pub lag_seconds: f64,
    /// The last acknowledged sequence number.
    pub checkpoint: u64,
    /// The last durable sequence number of the local log.
    pub durable_seq: u64,
    /// The last error, if the sink is failing (no event content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// State the worker shares with its [`Shipper`] handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) up: bool,
    pub(crate) checkpoint: u64,
    /// Where the acknowledged part of the log ends: (segment, byte offset).
    pub(crate) acked_pos: (u64, u64),
    /// Event time of the oldest record sent but not yet acknowledged.
    pub(crate) oldest_pending: Option<time::OffsetDateTime>,
    pub(crate) last_error: Option<String>,
}

pub(crate) type SharedState = Arc<Mutex<Shared>>;

pub(crate) fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    match s.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Bytes of the log between the acknowledged position and the durable end.
pub(crate) fn backlog_bytes(dir: &LogDir, acked: (u64, u64), durable: (u64, u64)) -> u64 {
    let Ok(segments) = dir.segments() else {
        return 0;
    };
    let mut total = 0u64;
    for s in segments {
        if s.first_seq < acked.0 || s.first_seq > durable.0 {
            continue;
        }
        let len = if s.first_seq == durable.0 {
            durable.1
        } else {
            std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0)
        };
        let start = if s.first_seq == acked.0 { acked.1 } else { 0 };
        total += len.saturating_sub(start);
    }
    total
}

/// A running shipper: one sink, its worker task and its status.
pub struct Shipper {
    path: String,
    kind: &'static str,
    description: String,
    options: BTreeMap<String, String>,
    source: String,
    log: Arc<AuditLog>,
    shared: SharedState,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// Register the sink's checkpoint (so retention waits for it) and start
    /// its worker on the current tokio runtime. `path` is the device's mount
    /// path (the checkpoint name and the metrics' `sink` label); `source` is
    /// the mount path of the `file` device whose log it ships.
    pub fn start(
        path: &str,
        description: &str,
        shown_options: BTreeMap<String, String>,
        source: &str,
        log: Arc<AuditLog>,
        sink: Box<dyn Sink>,
        opts: ShipOptions,
    ) -> Result<Shipper, AuditError> {
        let ckpt_dir = log.checkpoint_dir();
        let checkpoint = crate::log::Checkpoint::register(&ckpt_dir, path, 0)?;
        let shared: SharedState = Arc::new(Mutex::new(Shared {
            checkpoint,
            ..Shared::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let kind = sink.kind();
        let task = tokio::spawn(worker::run(
            worker::WorkerCtx {
                sink_name: path.to_owned(),
                log: log.clone(),
                opts,
                shared: shared.clone(),
            },
            sink,
            stop_rx,
        ));
        Ok(Shipper {
            path: path.to_owned(),
            kind,
            description: description.to_owned(),
            options: shown_options,
            source: source.to_owned(),
            log,
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The device's mount path, e.g. `kafka/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `kafka` or `elasticsearch`.
    pub fn kind(&self) -> &str {
        self.kind
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The options as shown by `sys/audit` (credentials redacted).
    pub fn options(&self) -> BTreeMap<String, String> {
        self.options.clone()
    }

    /// The mount path of the `file` device whose log this sink ships.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The log it ships.
    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Backlog and health now.
    pub fn status(&self) -> SinkStatus {
        let durable = *self.log.subscribe().borrow();
        let s = lock(&self.shared);
        let records = durable.seq.saturating_sub(s.checkpoint);
        let oldest = match s.oldest_pending {
            Some(t) => Some(t),
            None if records > 0 => worker::oldest_unacked_time(&self.log, s.checkpoint),
            None => None,
        };
        let lag_seconds = if records == 0 {
            0.0
        } else {
            oldest
                .map(|t| {
                    (time::OffsetDateTime::now_utc() - t)
                        .as_seconds_f64()
                        .max(0.0)
                })
                .unwrap_or(0.0)
        };
        SinkStatus {
            up: s.up,
            records,
            bytes: if records == 0 {
                0
            } else {
                backlog_bytes(
                    self.log.log_dir(),
                    s.acked_pos,
                    (durable.segment, durable.offset),
                )
            },
            lag_seconds,
            checkpoint: s.checkpoint,
            durable_seq: durable.seq,
            last_error: s.last_error.clone(),
        }
    }

    /// Stop the worker and wait for it. Records it sent but that were not
    /// acknowledged are sent again by the next start. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = match self.task.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(t) = task
            && let Err(e) = t.await
        {
            tracing::error!(sink = %self.path, error = %e, "audit shipper task failed");
        }
    }
}
