//! A write's request audit event, carried in its Raft entry.
//!
//! Every state-changing request is audited before it happens. For most
//! requests that is a synced append of the request event to each file
//! device's log before the request runs, then the response event after: with
//! the Raft append in between, three syncs in a row. A KV write on a
//! one-voter Raft node takes two: the core ([`crate::core::Core`]) has each
//! file device hash and serialize the request event without writing it
//! ([`custos_audit::AuditBroker::encode_for_devices`]) and runs the engine
//! inside [`carrying`]; the first Raft write the engine makes
//! ([`crate::storage::raft::RaftStorage`]'s `batch`) [`take`]s the event and
//! proposes it inside the same entry (`Command::Audited`), whose append is
//! synced before the write applies. The core then writes the request and
//! response events to the audit log together, one sync.
//!
//! If the process dies or the audit pair cannot be written after the entry
//! was appended, the write may have applied with its request event only in
//! the Raft log. The Raft storage keeps such entries (a scan of the log at
//! open, or the core reporting a failed pair) and no snapshot purges them
//! until the core has put their events back in the audit log
//! ([`custos_audit::reconcile`]); see `docs/architecture.md`, "Two syncs per
//! write".

use std::cell::RefCell;
use std::future::Future;

use custos_audit::EncodedEvent;

/// One request's audit event as each file device encoded it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CarriedAudit {
    pub request_id: String,
    pub events: Vec<CarriedEvent>,
}

/// One device's copy of a carried event, in the form it has in the Raft
/// log: the serialized (hashed) event, raw deflate, then base64. A KV
/// write's request event is ~0.9 KB of JSON, mostly HMACs; this keeps it
/// to ~0.8 KB in the log instead of ~1.05 KB as an escaped JSON string.
/// Compressed by the request's own task ([`CarriedEvent::deflate`]), so
/// neither the Raft log's writer nor the state machine's apply, both
/// serial, spend time on it; inflated only to be put back.
#[derive(Clone, PartialEq, Eq)]
pub struct CarriedEvent {
    /// The device's mount path.
    pub device: String,
    /// The device log's durable sequence number when it was encoded.
    pub log_seq: u64,
    pub deflated: String,
}

impl std::fmt::Debug for CarriedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarriedEvent")
            .field("device", &self.device)
            .field("log_seq", &self.log_seq)
            .field("deflated", &self.deflated.len())
            .finish()
    }
}

/// A carried event inflates to at most this (an audit record's own limit
/// is far below it).
const MAX_CARRIED_EVENT: u64 = 16 * 1024 * 1024;

impl CarriedEvent {
    pub fn deflate(e: &EncodedEvent) -> CarriedEvent {
        use base64::Engine;
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(e.bytes.len() / 2),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        let _ = z.write_all(&e.bytes);
        CarriedEvent {
            device: e.device.clone(),
            log_seq: e.log_seq,
            deflated: base64::engine::general_purpose::STANDARD
                .encode(z.finish().unwrap_or_default()),
        }
    }

    /// The event as the device encoded it; an error names the request
    /// (`request_id`), never the bytes.
    pub fn inflate(&self, request_id: &str) -> Result<EncodedEvent, String> {
        use base64::Engine;
        use std::io::Read;
        let bad = || format!("bad carried audit event for request {request_id}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.deflated)
            .map_err(|_| bad())?;
        let mut bytes = Vec::with_capacity(raw.len() * 2);
        flate2::read::DeflateDecoder::new(raw.as_slice())
            .take(MAX_CARRIED_EVENT)
            .read_to_end(&mut bytes)
            .map_err(|_| bad())?;
        Ok(EncodedEvent {
            device: self.device.clone(),
            log_seq: self.log_seq,
            bytes,
        })
    }
}

#[derive(Default)]
struct Slot {
    carried: Option<CarriedAudit>,
    /// The index of the Raft entry that took it, once committed.
    index: Option<u64>,
}

tokio::task_local! {
    static SLOT: RefCell<Slot>;
}

/// Run `fut` with `carried` offered to the first Raft write it makes.
/// Returns its output and the index of the committed entry that carried the
/// event (`None`: no write took it, or its entry was not committed).
pub async fn carrying<F: Future>(carried: CarriedAudit, fut: F) -> (F::Output, Option<u64>) {
    let slot = RefCell::new(Slot {
        carried: Some(carried),
        index: None,
    });
    SLOT.scope(slot, async {
        let out = fut.await;
        let index = SLOT.with(|s| s.borrow().index);
        (out, index)
    })
    .await
}

/// The event offered to this task's first write, if any, and not yet taken.
pub fn take() -> Option<CarriedAudit> {
    SLOT.try_with(|s| s.borrow_mut().carried.take())
        .ok()
        .flatten()
}

/// Record the index of the committed entry that carried this task's event.
pub fn committed_at(index: u64) {
    let _ = SLOT.try_with(|s| s.borrow_mut().index = Some(index));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(id: &str) -> CarriedAudit {
        CarriedAudit {
            request_id: id.into(),
            events: vec![],
        }
    }

    #[test]
    fn a_carried_event_inflates_to_what_was_deflated_and_a_damaged_one_is_refused() {
        let e = EncodedEvent {
            device: "file/".into(),
            log_seq: 9,
            bytes: br#"{"type":"request","request":{"id":"r1"}}"#.to_vec(),
        };
        let c = CarriedEvent::deflate(&e);
        assert_eq!(c.inflate("r1"), Ok(e));
        let damaged = CarriedEvent {
            deflated: format!("AAAA{}", c.deflated),
            ..c
        };
        assert_eq!(
            damaged.inflate("r1"),
            Err("bad carried audit event for request r1".to_string())
        );
    }

    #[tokio::test]
    async fn only_the_first_write_takes_the_event_and_reports_its_index() {
        let (taken, index) = carrying(carried("r1"), async {
            let first = take();
            committed_at(42);
            let second = take();
            (first, second)
        })
        .await;
        assert_eq!(taken.0.map(|c| c.request_id), Some("r1".to_string()));
        assert_eq!(taken.1, None);
        assert_eq!(index, Some(42));
        // Outside a carrying scope nothing is offered.
        assert!(take().is_none());
        let ((), none) = carrying(carried("r2"), async {}).await;
        assert_eq!(none, None);
    }
}
