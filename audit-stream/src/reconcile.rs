//! Putting back request events that travelled in the Raft log.
//!
//! A KV write on a one-voter Raft node does not sync its request event to
//! the audit log before it happens: the event, already hashed and
//! serialized by each file device ([`crate::broker::EncodedEvent`]), travels
//! inside the write's Raft entry, whose append is synced before the write
//! applies, and reaches the audit log together with the response event
//! (one sync for both). If the process dies, or the audit pair cannot be
//! written, after the entry was appended, the write may have applied while
//! its request event is only in the Raft log. The core then hands those
//! carried events here, at unseal (from a scan of the Raft log) or once the
//! device works again: [`reconcile`] reads the device's log from where the
//! event could first have landed, and appends every carried event whose
//! request id has no request event there, with a `reconciled` member added
//! (`{"raft_index": N, "node": "…"}`) so a reader can tell it was put back,
//! counted in `custos_audit_reconciled_events_total{path}`.
//!
//! An event already in the log is never appended again, so running this
//! twice over the same entries changes nothing the second time. A damaged
//! event (not a JSON object) cannot be put back: it is passed over with an
//! error naming its request id and Raft index, counted in
//! `custos_audit_carried_damaged_total{path}`, and never holds back the
//! others.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::AuditError;
use crate::log::{AuditLog, Record};
use crate::metrics;

/// One request event to make sure of: as the device encoded it, with the
/// Raft entry it travelled in.
#[derive(Clone, PartialEq, Eq)]
pub struct CarriedEvent {
    pub request_id: String,
    /// The index of the Raft entry that carried it.
    pub raft_index: u64,
    /// The log's durable sequence number when it was encoded: a copy
    /// written by its audit pair is after this.
    pub log_seq: u64,
    /// The device's serialized event (one JSON object).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for CarriedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarriedEvent")
            .field("request_id", &self.request_id)
            .field("raft_index", &self.raft_index)
            .field("log_seq", &self.log_seq)
            .finish_non_exhaustive()
    }
}

/// Just what is needed to tell a request event's id.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    request: Option<HeadRequest>,
}

#[derive(Deserialize)]
struct HeadRequest {
    #[serde(default)]
    id: String,
}

/// Append to `log` (the file device at `device`) each of `carried` that the
/// log does not already hold, marked as reconciled by `node`, in one group
/// commit. Returns how many were appended.
pub async fn reconcile(
    device: &str,
    log: &AuditLog,
    node: &str,
    carried: &[CarriedEvent],
) -> Result<usize, AuditError> {
    let Some(from) = carried.iter().map(|c| c.log_seq + 1).min() else {
        return Ok(0);
    };
    let logged = logged_request_ids(log, from)?;
    let mut missing = Vec::new();
    let mut queued = HashSet::new();
    for c in carried {
        if logged.contains(&c.request_id) || !queued.insert(c.request_id.as_str()) {
            continue;
        }
        match mark_reconciled(c, node) {
            Ok(event) => missing.push(event),
            Err(e) => report_damaged(device, &c.request_id, c.raft_index, &e.to_string()),
        }
    }
    let n = missing.len();
    if n > 0 {
        log.append_many(missing).await?;
        metrics::device_counter(metrics::RECONCILED, device, n as u64);
        tracing::warn!(
            device,
            events = n,
            "audit: request events of applied writes put back from the Raft log"
        );
    }
    Ok(n)
}

/// A carried request event that cannot be put back into `device`'s log:
/// its write applied and the log will not show its request. Loud, because
/// it is an audit gap; the message names the request, never its bytes.
pub fn report_damaged(device: &str, request_id: &str, raft_index: u64, why: &str) {
    metrics::device_counter(metrics::CARRIED_DAMAGED, device, 1);
    tracing::error!(
        device,
        request_id,
        raft_index,
        error = why,
        "audit: a request event carried in the Raft log is damaged and cannot be put back"
    );
}

/// The request ids of the request events durable in `log` from `from_seq` on.
fn logged_request_ids(log: &AuditLog, from_seq: u64) -> Result<HashSet<String>, AuditError> {
    let mut reader = log.reader(from_seq);
    let mut ids = HashSet::new();
    let mut batch: Vec<Record> = Vec::new();
    loop {
        batch.clear();
        let more = reader.fill_batch(&mut batch, "audit reconciliation")?;
        for r in &batch {
            if let Ok(Head {
                kind,
                request: Some(HeadRequest { id }),
            }) = serde_json::from_slice::<Head>(&r.event)
                && kind == "request"
            {
                ids.insert(id);
            }
        }
        if !more {
            return Ok(ids);
        }
    }
}

/// The carried bytes with `"reconciled": {"raft_index", "node"}` added.
fn mark_reconciled(c: &CarriedEvent, node: &str) -> Result<Vec<u8>, AuditError> {
    let bad = || {
        AuditError::Encode(format!(
            "carried request event {} (Raft index {}) is not a JSON object",
            c.request_id, c.raft_index
        ))
    };
    let mut event: Map<String, Value> = serde_json::from_slice(&c.bytes).map_err(|_| bad())?;
    event.insert(
        "reconciled".into(),
        json!({"raft_index": c.raft_index, "node": node}),
    );
    serde_json::to_vec(&event).map_err(|e| AuditError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogDir, LogOptions};

    fn request(id: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"type": "request", "request": {"id": id, "path": "secret/data/x"}}),
        )
        .expect("json")
    }

    fn carried(id: &str, raft_index: u64, log_seq: u64) -> CarriedEvent {
        CarriedEvent {
            request_id: id.into(),
            raft_index,
            log_seq,
            bytes: request(id),
        }
    }

    fn events(log: &AuditLog) -> Vec<Value> {
        let mut r = log.reader(1);
        let mut out = Vec::new();
        while let Some(rec) = r.try_next().expect("read") {
            out.push(rec.json().expect("json"));
        }
        out
    }

    #[tokio::test]
    async fn only_events_missing_from_the_log_are_appended_once_and_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(LogDir::new(dir.path()), LogOptions::default()).expect("open");
        // Before the carried events were encoded: an event with the same id
        // as one of them must not count (it is before `log_seq`).
        log.append(request("b")).await.expect("append");
        let seq = log.durable_seq();
        // Its pair landed for "a"; "b" and "c" were lost with the process.
        log.append(request("a")).await.expect("append");
        let response = json!({"type": "response", "request": {"id": "b"}});
        log.append(serde_json::to_vec(&response).expect("json"))
            .await
            .expect("append");
        let all = [
            carried("a", 7, seq),
            carried("b", 7, seq),
            carried("c", 8, seq),
            carried("c", 8, seq),
        ];
        let n = reconcile("file/", &log, "node-1", &all)
            .await
            .expect("reconcile");
        assert_eq!(n, 2);
        let evs = events(&log);
        assert_eq!(evs.len(), 5);
        assert_eq!(evs[3]["request"]["id"], json!("b"));
        assert_eq!(
            evs[3]["reconciled"],
            json!({"raft_index": 7, "node": "node-1"})
        );
        assert_eq!(evs[4]["request"]["id"], json!("c"));
        assert_eq!(evs[4]["reconciled"]["raft_index"], json!(8));
        // A second pass over the same entries finds them all.
        let again = reconcile("file/", &log, "node-1", &all)
            .await
            .expect("reconcile");
        assert_eq!(again, 0);
        assert_eq!(events(&log).len(), 5);
        log.shutdown().await;
    }

    #[tokio::test]
    async fn a_damaged_carried_event_is_passed_over_and_holds_back_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(LogDir::new(dir.path()), LogOptions::default()).expect("open");
        let mut bad = carried("r1", 12, 0);
        bad.bytes = b"s3cret-not-json".to_vec();
        let good = carried("r2", 13, 0);
        let n = reconcile("file/", &log, "n", &[bad.clone(), good])
            .await
            .expect("the others are put back");
        assert_eq!(n, 1);
        let evs = events(&log);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["request"]["id"], json!("r2"));
        // What is reported names the entry, never the bytes.
        let msg = mark_reconciled(&bad, "n").expect_err("damaged").to_string();
        assert!(msg.contains("r1") && msg.contains("12"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        log.shutdown().await;
    }
}
