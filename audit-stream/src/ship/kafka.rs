//! The Kafka sink: audit records to a Kafka topic through librdkafka
//! (`rdkafka`, bundled, built without cmake).
//!
//! Records come from the shipper worker ([`super::worker`]) in batches; each
//! becomes one message: key = the event id (`<request.id>-<type>`), value =
//! the event JSON as recorded, timestamp = the event time, header
//! `custos_seq` = the record's sequence number in this node's local log. The
//! producer is idempotent (`enable.idempotence=true`, which implies
//! `acks=all` and ordered, duplicate-free retries inside librdkafka); a
//! record counts as acknowledged only when its **delivery report** says so,
//! and the worker moves the checkpoint only over acknowledged records.
//!
//! A delivery that fails (broker down longer than `message_timeout`, local
//! queue full) is reported back as unacknowledged and the worker sends it
//! again after its backoff, so Kafka sees every event at least once and,
//! after a crash between delivery and checkpoint, possibly twice (consumers
//! deduplicate by key). A librdkafka *fatal* error (the idempotent
//! producer's guarantees broke) makes the sink drop the producer and build a
//! new one, and so does any outage: after a failed delivery or probe the next
//! attempt starts a fresh producer session (new producer id), rather than
//! resuming an idempotent sequence against a broker that may have restarted
//! and lost it (unacknowledged records are resent by the worker anyway). `security.protocol`, `sasl.*` and `ssl.*` options are passed to
//! librdkafka verbatim.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use time::format_description::well_known::Rfc3339;

use super::config::KafkaOptions;
use super::{Outgoing, SendOutcome, Sink, SinkError};
use crate::error::AuditError;

/// How long a metadata request of the health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds between two warnings relayed from librdkafka.
const WARN_EVERY_SECS: u64 = 60;

/// A librdkafka client context that keeps librdkafka's own chatter out of
/// the server log: while a broker is down librdkafka reports the same error
/// many times a second, and the shipper already logs the outage (with its
/// backoff). Errors are relayed as one warning a minute; the rest at debug.
#[derive(Debug, Default)]
pub struct QuietContext {
    last_warn: AtomicU64,
}

impl QuietContext {
    fn relay(&self, what: &str, message: &str) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let last = self.last_warn.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_SECS
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: "librdkafka", "{what}: {message} (repeats are logged at debug for a minute)");
        } else {
            tracing::debug!(target: "librdkafka", "{what}: {message}");
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => self.relay(fac, log_message),
            _ => tracing::debug!(target: "librdkafka", "{fac}: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.relay(&error.to_string(), reason);
    }
}

impl ConsumerContext for QuietContext {}

/// The librdkafka configuration of a sink's producer.
pub fn client_config(o: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.brokers)
        .set("client.id", &o.client_id)
        .set(
            "message.timeout.ms",
            o.message_timeout.as_millis().to_string(),
        )
        .set("compression.type", &o.compression);
    for (k, v) in &o.passthrough {
        c.set(k, v);
    }
    // Set last so nothing can turn them off.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5");
    c
}

/// Ships audit records to one Kafka topic.
pub struct KafkaSink {
    opts: KafkaOptions,
    producer: FutureProducer<QuietContext>,
    /// The sink failed since this producer was made: start a new one.
    stale: bool,
}

fn create(o: &KafkaOptions) -> Result<FutureProducer<QuietContext>, AuditError> {
    client_config(o)
        .create_with_context(QuietContext::default())
        .map_err(|e| AuditError::InvalidOption {
            name: "brokers".into(),
            reason: format!("cannot create the Kafka producer: {e}"),
        })
}

/// Errors an operator must fix; anything else is retried as an outage.
fn classify(e: &KafkaError) -> SinkError {
    let code = e.rdkafka_error_code();
    match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic,
        ) => SinkError::Rejected(e.to_string()),
        _ => SinkError::Unavailable(e.to_string()),
    }
}

fn event_millis(time: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(time, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

impl KafkaSink {
    /// A sink for `opts`; does not connect yet (librdkafka connects lazily,
    /// the first probe waits for metadata).
    pub fn new(opts: KafkaOptions) -> Result<KafkaSink, AuditError> {
        let producer = create(&opts)?;
        Ok(KafkaSink {
            opts,
            producer,
            stale: false,
        })
    }

    /// After an outage, replace the producer (see the module docs).
    fn refresh(&mut self) {
        if !self.stale {
            return;
        }
        match create(&self.opts) {
            Ok(p) => {
                tracing::debug!(topic = %self.opts.topic, "new Kafka producer session after an outage");
                self.producer = p;
                self.stale = false;
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate the Kafka producer"),
        }
    }

    /// Replace the producer after a fatal error.
    fn recover_from_fatal(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(
                topic = %self.opts.topic,
                code = ?code,
                reason = %reason,
                "Kafka producer hit a fatal error; creating a new producer (unacknowledged records are sent again)"
            );
            match create(&self.opts) {
                Ok(p) => self.producer = p,
                Err(e) => tracing::error!(error = %e, "cannot recreate the Kafka producer"),
            }
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn probe(&mut self) -> Result<(), SinkError> {
        self.recover_from_fatal();
        self.refresh();
        let producer = self.producer.clone();
        let topic = self.opts.topic.clone();
        let md = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                .map(|md| {
                    md.topics()
                        .first()
                        .map(|t| (t.error(), t.partitions().len()))
                })
        })
        .await
        .map_err(|e| SinkError::Unavailable(format!("probe task failed: {e}")))?;
        let r = match md {
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
            Ok(None) => Err(SinkError::Unavailable(format!(
                "no metadata for topic {:?}",
                self.opts.topic
            ))),
            Ok(Some((Some(err), _))) => {
                let code = RDKafkaErrorCode::from(err);
                Err(SinkError::Rejected(format!(
                    "topic {:?}: {code} (create the topic or allow auto-creation)",
                    self.opts.topic
                )))
            }
            Ok(Some((None, 0))) => Err(SinkError::Unavailable(format!(
                "topic {:?} has no partitions yet",
                self.opts.topic
            ))),
            Ok(Some((None, _))) => Ok(()),
        };
        if r.is_err() {
            self.stale = true;
        }
        r
    }

    async fn send(&mut self, batch: &[&Outgoing]) -> Result<SendOutcome, SinkError> {
        self.refresh();
        let mut failed: SendOutcome = Vec::new();
        let mut waits = Vec::with_capacity(batch.len());
        let seqs: Vec<String> = batch.iter().map(|o| o.seq.to_string()).collect();
        for (i, o) in batch.iter().enumerate() {
            let headers = OwnedHeaders::new().insert(Header {
                key: "custos_seq",
                value: Some(seqs[i].as_str()),
            });
            let mut rec = FutureRecord::to(&self.opts.topic)
                .key(o.id.as_str())
                .payload(o.payload.as_slice())
                .headers(headers);
            if let Some(ms) = event_millis(&o.time) {
                rec = rec.timestamp(ms);
            }
            match self.producer.send_result(rec) {
                Ok(w) => waits.push((i, w)),
                Err((e, _)) => {
                    // Local queue full (or similar): this and the rest wait
                    // for the next attempt, keeping the order.
                    let err = match e.rdkafka_error_code() {
                        Some(RDKafkaErrorCode::QueueFull) => {
                            SinkError::Unavailable("librdkafka queue is full".into())
                        }
                        _ => classify(&e),
                    };
                    failed.extend((i..batch.len()).map(|j| (j, err.clone())));
                    break;
                }
            }
        }
        let results =
            futures::future::join_all(waits.into_iter().map(|(i, w)| async move { (i, w.await) }))
                .await;
        for (i, r) in results {
            match r {
                Ok(Ok(_delivery)) => {}
                Ok(Err((e, _msg))) => failed.push((i, classify(&e))),
                Err(_canceled) => failed.push((
                    i,
                    SinkError::Unavailable("the producer dropped the message".into()),
                )),
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        if !failed.is_empty() {
            self.stale = true;
            self.recover_from_fatal();
        }
        Ok(failed)
    }

    /// Nothing to wait for: records in flight were not checkpointed, so
    /// the next start sends them again; dropping the producer purges them.
    async fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn config_forces_idempotence_and_passes_tls_sasl_through() {
        let opts: BTreeMap<String, String> = [
            ("brokers", "127.0.0.1:9092"),
            ("topic", "audit"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("ssl.ca.location", "/etc/ca.pem"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let (k, _) = KafkaOptions::from_map(&opts).unwrap();
        let c = client_config(&k);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("message.timeout.ms"), Some("30000"));
        assert_eq!(event_millis("1970-01-01T00:00:01.5Z"), Some(1500));
    }
}
