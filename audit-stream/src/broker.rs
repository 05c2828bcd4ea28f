//! The audit broker: fans each event out to every enabled audit device.
//!
//! The core calls [`AuditBroker::log_request`] before routing a request and
//! [`AuditBroker::log_response`] before replying. Every device receives the
//! same event, hashes its own copy with its own salt and records it; the
//! devices run concurrently. As in Vault, the call succeeds when **at least
//! one** device recorded the event and fails (the core answers 500) when every
//! device failed. With no device enabled nothing is audited and the call
//! succeeds, as in Vault.
//!
//! Devices are added and removed at run time (`sys/audit`), so the list sits
//! behind a lock; a call works on a snapshot of it. A device failure is logged
//! with the device path and the error kind only, never the event, and counted
//! in `custos_audit_device_failure_total{path}`.
//!
//! The broker also holds the **shippers** ([`crate::ship::Shipper`]: the
//! `kafka` and `elasticsearch` devices). They are never on the request path
//! (they read the local log the `file` device wrote), but they are listed
//! with the devices by `sys/audit`, together with each one's backlog
//! ([`AuditBroker::backlog`]), and stopped (their worker tasks awaited)
//! before the devices at shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::log::AuditLog;
use crate::metrics;
use crate::ship::{Shipper, SinkStatus};

/// One audit device (file, and later socket or syslog). Devices hash the
/// events they get themselves, with their own salt.
#[async_trait]
pub trait AuditDevice: Send + Sync {
    /// The device's mount path, e.g. `file/`.
    fn path(&self) -> &str;
    /// The device type, e.g. `file`.
    fn kind(&self) -> &str;
    /// The operator's description.
    fn description(&self) -> &str;
    /// The options it was enabled with, as shown by `sys/audit`.
    fn options(&self) -> BTreeMap<String, String>;
    /// Hash a copy of `event` and record it durably before returning.
    async fn log(&self, event: &AuditEvent) -> Result<(), AuditError>;
    /// Record several events, in order, durably before returning. Devices
    /// that can should make one sync cover them all.
    async fn log_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        for e in events {
            self.log(e).await?;
        }
        Ok(())
    }
    /// Hash a copy of `event` and serialize it exactly as this device would
    /// record it, without recording it: for an event that travels in the
    /// Raft log before it is written here ([`AuditBroker::encode_for_devices`]).
    /// `None`: the device cannot (it is then audited the usual way).
    fn encode(&self, _event: &AuditEvent) -> Option<Result<EncodedEvent, AuditError>> {
        None
    }
    /// Record `encoded` (from [`AuditDevice::encode`]) and then `event`, in
    /// order, durably before returning, with one sync where it can.
    async fn log_encoded_then(
        &self,
        _encoded: &EncodedEvent,
        _event: &AuditEvent,
    ) -> Result<(), AuditError> {
        Err(AuditError::Encode(format!(
            "audit device {} cannot record pre-encoded events",
            self.path()
        )))
    }
    /// HMAC `input` with this device's salt (`sys/audit-hash`).
    fn hash(&self, input: &str) -> String;
    /// Reopen the underlying output (log rotation, SIGHUP).
    async fn reopen(&self) -> Result<(), AuditError>;
    /// Record what is queued and stop; later `log` calls fail.
    async fn shutdown(&self);
    /// The durable local log this device writes, if it writes one (the
    /// `file` device): for the workers that follow it (query index,
    /// access metrics).
    fn local_log(&self) -> Option<Arc<crate::log::AuditLog>> {
        None
    }
    /// Could the device record an event now (`sys/health`)? `Err` names
    /// why not. A device that cannot tell without trying says `Ok`.
    fn health(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// An event as one device records it: hashed with that device's salt and
/// serialized, not yet written. A request event of a write travels in its
/// Raft entry in this form (see `custos_core::storage`), so that a write
/// applied before its audit pair was written can have its request event put
/// back in the log exactly as the device would have written it
/// ([`crate::reconcile`]); no secret is in it that the device would not write.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The device's mount path.
    pub device: String,
    /// The device log's last durable sequence number when this was encoded:
    /// if the event reached the log, it is after this.
    pub log_seq: u64,
    /// The serialized event: one JSON object, no line break.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for EncodedEvent {
    // `log_raw` devices write raw values: sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedEvent")
            .field("device", &self.device)
            .field("log_seq", &self.log_seq)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// A device as listed by `GET sys/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub options: BTreeMap<String, String>,
    pub local: bool,
}

/// The state of a local audit log, as `sys/audit` shows it for a `file`
/// device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogStatus {
    /// The last fsynced sequence number.
    pub durable_seq: u64,
    pub segments: u64,
    pub size_bytes: u64,
    /// Free bytes on its file system at the last group commit.
    pub free_bytes: u64,
}

/// What `sys/audit` shows as a device's `backlog`: the local log's state
/// for a `file` device, what is not yet shipped for a sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Backlog {
    Log(LogStatus),
    Sink(SinkStatus),
}

/// Holds the enabled audit devices and records events on them.
#[derive(Default)]
pub struct AuditBroker {
    devices: RwLock<Vec<Arc<dyn AuditDevice>>>,
    /// Local logs of `file` devices, by device path.
    logs: RwLock<Vec<(String, Arc<AuditLog>)>>,
    shippers: RwLock<Vec<Arc<Shipper>>>,
    /// Stamped into every event's `node_id` on a cluster (empty: none).
    node_id: std::sync::OnceLock<String>,
}

fn read<T: Clone>(l: &RwLock<Vec<T>>) -> Vec<T> {
    match l.read() {
        Ok(d) => d.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(l: &RwLock<Vec<T>>) -> std::sync::RwLockWriteGuard<'_, Vec<T>> {
    match l.write() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn same_path(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl AuditBroker {
    /// A broker with no devices (audits nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker with these devices.
    pub fn with_devices(devices: Vec<Arc<dyn AuditDevice>>) -> Self {
        AuditBroker {
            devices: RwLock::new(devices),
            ..AuditBroker::default()
        }
    }

    /// Name the node this broker writes for: every event it records from
    /// now on carries it in `node_id`, on every device and sink alike. Set
    /// once, when the server is a cluster member; later calls are ignored.
    pub fn set_node_id(&self, node_id: impl Into<String>) {
        let _ = self.node_id.set(node_id.into());
    }

    /// Put this node's id into an event that has none.
    fn stamp(&self, event: &mut AuditEvent) {
        if let Some(id) = self.node_id.get()
            && event.node_id.is_empty()
        {
            event.node_id.clone_from(id);
        }
    }

    fn snapshot(&self) -> Vec<Arc<dyn AuditDevice>> {
        match self.devices.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<dyn AuditDevice>>> {
        match self.devices.write() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Enable a device. Fails if a device already has its path.
    pub fn add(&self, device: Arc<dyn AuditDevice>) -> Result<(), AuditError> {
        let mut devices = self.write();
        if devices.iter().any(|d| same_path(d.path(), device.path()))
            || self.shipper(device.path()).is_some()
        {
            return Err(AuditError::DuplicatePath(device.path().to_owned()));
        }
        devices.push(device);
        Ok(())
    }

    /// Remember the local log behind the `file` device at `path`, for
    /// [`AuditBroker::backlog`].
    pub fn register_log(&self, path: &str, log: Arc<AuditLog>) {
        write(&self.logs).push((path.to_owned(), log));
    }

    /// The local log behind the `file` device at `path`.
    pub fn log_of(&self, path: &str) -> Option<Arc<AuditLog>> {
        read(&self.logs)
            .into_iter()
            .find(|(p, _)| same_path(p, path))
            .map(|(_, l)| l)
    }

    /// Add a running shipper (a `kafka` or `elasticsearch` device). Fails if
    /// a device or shipper already has its path; the caller then shuts it
    /// down.
    pub fn add_shipper(&self, shipper: Arc<Shipper>) -> Result<(), AuditError> {
        if self.get(shipper.path()).is_some() {
            return Err(AuditError::DuplicatePath(shipper.path().to_owned()));
        }
        let mut shippers = write(&self.shippers);
        if shippers.iter().any(|s| same_path(s.path(), shipper.path())) {
            return Err(AuditError::DuplicatePath(shipper.path().to_owned()));
        }
        shippers.push(shipper);
        Ok(())
    }

    /// The shippers, in the order they were added.
    pub fn shippers(&self) -> Vec<Arc<Shipper>> {
        read(&self.shippers)
    }

    /// The shipper at `path`, if any.
    pub fn shipper(&self, path: &str) -> Option<Arc<Shipper>> {
        read(&self.shippers)
            .into_iter()
            .find(|s| same_path(s.path(), path))
    }

    /// True when a device or a shipper is enabled at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some() || self.shipper(path).is_some()
    }

    /// The backlog of the device or shipper at `path` (see [`Backlog`]);
    /// `None` for devices without a local log.
    pub fn backlog(&self, path: &str) -> Option<Backlog> {
        if let Some(s) = self.shipper(path) {
            return Some(Backlog::Sink(s.status()));
        }
        self.log_of(path).map(|l| {
            Backlog::Log(LogStatus {
                durable_seq: l.durable_seq(),
                segments: l.segment_count(),
                size_bytes: l.size_bytes(),
                free_bytes: l.free_bytes(),
            })
        })
    }

    /// Disable the device at `path` and return it; the caller shuts it down.
    pub fn remove(&self, path: &str) -> Option<Arc<dyn AuditDevice>> {
        let mut devices = self.write();
        let idx = devices.iter().position(|d| same_path(d.path(), path))?;
        Some(devices.remove(idx))
    }

    /// The device at `path`, if enabled.
    pub fn get(&self, path: &str) -> Option<Arc<dyn AuditDevice>> {
        self.snapshot()
            .into_iter()
            .find(|d| same_path(d.path(), path))
    }

    /// True when no device is enabled (nothing is audited).
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Number of enabled devices.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// The enabled devices, for `GET sys/audit`.
    pub fn list(&self) -> Vec<DeviceInfo> {
        let mut out: Vec<DeviceInfo> = self
            .snapshot()
            .iter()
            .map(|d| DeviceInfo {
                path: d.path().to_owned(),
                kind: d.kind().to_owned(),
                description: d.description().to_owned(),
                options: d.options(),
                local: false,
            })
            .collect();
        // Then the sinks (kafka, elasticsearch), which ship a local log.
        out.extend(self.shippers().iter().map(|s| DeviceInfo {
            path: s.path().to_owned(),
            kind: s.kind().to_owned(),
            description: s.description().to_owned(),
            options: s.options(),
            local: false,
        }));
        out
    }

    /// The first enabled device that writes a durable local log, with its
    /// mount path (whose salt hashed the log's accessors).
    pub fn local_log(&self) -> Option<(String, Arc<crate::log::AuditLog>)> {
        self.snapshot()
            .iter()
            .find_map(|d| d.local_log().map(|l| (d.path().to_owned(), l)))
    }

    /// HMAC `input` with the salt of the device at `path` (`sys/audit-hash`).
    /// A shipper hashes with the salt of the `file` device it ships, since
    /// that is how the events it delivers were hashed.
    pub fn hash(&self, path: &str, input: &str) -> Option<String> {
        if let Some(d) = self.get(path) {
            return Some(d.hash(input));
        }
        let s = self.shipper(path)?;
        self.get(s.source()).map(|d| d.hash(input))
    }

    /// Could an event be recorded now? The broker's rule for `sys/health`:
    /// `Err` only when devices are enabled and none of them could record
    /// (the request would be refused): a full disk when that is why every
    /// device fails (as [`AuditBroker::log_request`] answers), else the
    /// first other failure.
    pub fn health(&self) -> Result<(), AuditError> {
        let mut errors = Vec::new();
        for d in self.snapshot() {
            match d.health() {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e),
            }
        }
        let first_other = errors.iter().position(|e| !e.is_disk_full()).unwrap_or(0);
        match errors.into_iter().nth(first_other) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Record a request event; fails only if devices exist and none recorded it.
    pub async fn log_request(&self, mut event: AuditEvent) -> Result<(), AuditError> {
        self.stamp(&mut event);
        self.log(&event).await
    }

    /// Record a response event; fails only if devices exist and none recorded it.
    pub async fn log_response(&self, mut event: AuditEvent) -> Result<(), AuditError> {
        self.stamp(&mut event);
        self.log(&event).await
    }

    /// Record a request event and its response event together, in order,
    /// with one sync where the device allows it. Used for reads, whose
    /// response is held back until both are durable.
    pub async fn log_pair(
        &self,
        request: AuditEvent,
        response: AuditEvent,
    ) -> Result<(), AuditError> {
        let mut events = [request, response];
        for e in &mut events {
            self.stamp(e);
        }
        let devices = self.snapshot();
        self.on_every_device(&devices, &events[1], |d| d.log_all(&events))
            .await
    }

    /// What each enabled device would record for `request` (stamped here
    /// like every event), for [`AuditBroker::log_encoded_pair`]; `None`
    /// when no device is enabled, one cannot encode in advance, or encoding
    /// fails (the caller then audits the usual way, which reports a
    /// failure).
    pub fn encode_for_devices(&self, request: &mut AuditEvent) -> Option<Vec<EncodedEvent>> {
        self.stamp(request);
        let devices = self.snapshot();
        if devices.is_empty() {
            return None;
        }
        devices.iter().map(|d| d.encode(request)?.ok()).collect()
    }

    /// [`AuditBroker::log_pair`] for a request event encoded earlier by
    /// [`AuditBroker::encode_for_devices`]: each device records its own
    /// encoded bytes, then the response, with one sync. A device enabled
    /// since then records both events the usual way.
    pub async fn log_encoded_pair(
        &self,
        request: &AuditEvent,
        encoded: &[EncodedEvent],
        mut response: AuditEvent,
    ) -> Result<(), AuditError> {
        self.stamp(&mut response);
        let devices = self.snapshot();
        let response = &response;
        self.on_every_device(&devices, response, |d| async move {
            match encoded.iter().find(|e| same_path(&e.device, d.path())) {
                Some(e) => d.log_encoded_then(e, response).await,
                None => d.log_all(&[request.clone(), response.clone()]).await,
            }
        })
        .await
    }

    async fn log(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let devices = self.snapshot();
        self.on_every_device(&devices, event, |d| d.log(event))
            .await
    }

    /// Run `record` on every device of `devices` at once and settle the
    /// outcomes for `event` ([`AuditBroker::settle`]). With no device
    /// enabled nothing is audited and the call succeeds, as in Vault.
    async fn on_every_device<'a, Fut>(
        &self,
        devices: &'a [Arc<dyn AuditDevice>],
        event: &AuditEvent,
        record: impl Fn(&'a Arc<dyn AuditDevice>) -> Fut,
    ) -> Result<(), AuditError>
    where
        Fut: std::future::Future<Output = Result<(), AuditError>>,
    {
        if devices.is_empty() {
            return Ok(());
        }
        let results = futures::future::join_all(devices.iter().map(record)).await;
        self.settle(devices, results, event)
    }

    /// Count and log each device's outcome; fail when none recorded the
    /// event(s). When every failure is a full disk, say so (the server
    /// answers 503 rather than 500).
    fn settle(
        &self,
        devices: &[Arc<dyn AuditDevice>],
        results: Vec<Result<(), AuditError>>,
        event: &AuditEvent,
    ) -> Result<(), AuditError> {
        let mut failed = 0;
        let mut disk_full: Option<AuditError> = None;
        let mut all_disk_full = true;
        for (device, result) in devices.iter().zip(results) {
            match result {
                Ok(()) => metrics::device_counter(metrics::DEVICE_LOG, device.path(), 1),
                Err(e) => {
                    failed += 1;
                    all_disk_full &= e.is_disk_full();
                    if e.is_disk_full() && disk_full.is_none() {
                        disk_full = Some(e.clone());
                    }
                    metrics::device_counter(metrics::DEVICE_FAILURE, device.path(), 1);
                    tracing::error!(
                        device = device.path(),
                        event_type = event.kind.as_str(),
                        error_kind = e.kind_label(),
                        error = %e,
                        "audit device failed to record an event"
                    );
                }
            }
        }
        if failed == devices.len()
            && all_disk_full
            && let Some(e) = disk_full
        {
            Err(e)
        } else if failed == devices.len() {
            Err(AuditError::NoDeviceRecorded {
                failed,
                total: devices.len(),
            })
        } else {
            Ok(())
        }
    }

    /// Reopen every device's output (SIGHUP). Returns the failures by path.
    pub async fn reopen_all(&self) -> Vec<(String, AuditError)> {
        let mut failures = Vec::new();
        for d in self.snapshot() {
            if let Err(e) = d.reopen().await {
                tracing::error!(device = d.path(), error = %e, "audit device reopen failed");
                failures.push((d.path().to_owned(), e));
            }
        }
        failures
    }

    /// Stop every shipper (awaiting its worker), then flush and stop every
    /// device, and forget them all.
    pub async fn shutdown(&self) {
        let shippers = std::mem::take(&mut *write(&self.shippers));
        for s in shippers {
            s.shutdown().await;
        }
        write(&self.logs).clear();
        let devices = std::mem::take(&mut *self.write());
        for d in devices {
            d.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AuditRequest;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        path: String,
        fail: bool,
        logged: AtomicUsize,
        nodes: std::sync::Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(path: &str, fail: bool) -> Arc<Self> {
            Arc::new(Fake {
                path: path.into(),
                fail,
                logged: AtomicUsize::new(0),
                nodes: std::sync::Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl AuditDevice for Fake {
        fn path(&self) -> &str {
            &self.path
        }
        fn kind(&self) -> &str {
            "fake"
        }
        fn description(&self) -> &str {
            ""
        }
        fn options(&self) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        async fn log(&self, event: &AuditEvent) -> Result<(), AuditError> {
            if self.fail {
                return Err(AuditError::Closed);
            }
            self.logged.fetch_add(1, Ordering::SeqCst);
            self.nodes.lock().unwrap().push(event.node_id.clone());
            Ok(())
        }
        fn hash(&self, input: &str) -> String {
            format!("h:{input}")
        }
        async fn reopen(&self) -> Result<(), AuditError> {
            Ok(())
        }
        async fn shutdown(&self) {}
    }

    fn ev() -> AuditEvent {
        AuditEvent::request(None, AuditRequest::new("id", "read", "sys/health"))
    }

    #[tokio::test]
    async fn every_device_gets_the_node_id() {
        let (a, b) = (Fake::new("a/", false), Fake::new("b/", false));
        let broker = AuditBroker::with_devices(vec![a.clone(), b.clone()]);
        broker.log_request(ev()).await.unwrap();
        broker.set_node_id("node2");
        broker.set_node_id("ignored");
        broker.log_response(ev()).await.unwrap();
        broker.log_pair(ev(), ev()).await.unwrap();
        for d in [a, b] {
            assert_eq!(*d.nodes.lock().unwrap(), ["", "node2", "node2", "node2"]);
        }
        let json = serde_json::to_value({
            let mut e = ev();
            broker.stamp(&mut e);
            e
        })
        .unwrap();
        assert_eq!(json["node_id"], "node2");
        assert!(serde_json::to_value(ev()).unwrap().get("node_id").is_none());
    }

    #[tokio::test]
    async fn no_devices_succeeds() {
        let b = AuditBroker::new();
        assert!(b.is_empty());
        b.log_request(ev()).await.unwrap();
    }

    #[tokio::test]
    async fn one_good_is_enough_all_bad_fails() {
        let good = Fake::new("good/", false);
        let b = AuditBroker::with_devices(vec![Fake::new("bad/", true), good.clone()]);
        b.log_request(ev()).await.unwrap();
        assert_eq!(good.logged.load(Ordering::SeqCst), 1);

        let only_bad = AuditBroker::with_devices(vec![Fake::new("bad/", true)]);
        assert_eq!(
            only_bad.log_response(ev()).await,
            Err(AuditError::NoDeviceRecorded {
                failed: 1,
                total: 1
            })
        );
    }

    #[tokio::test]
    async fn add_remove_list_hash() {
        let b = AuditBroker::new();
        b.add(Fake::new("file/", false)).unwrap();
        assert!(matches!(
            b.add(Fake::new("file", false)),
            Err(AuditError::DuplicatePath(_))
        ));
        assert_eq!(b.list().len(), 1);
        assert_eq!(b.list()[0].kind, "fake");
        assert_eq!(b.hash("file", "x").as_deref(), Some("h:x"));
        assert!(b.hash("nope/", "x").is_none());
        assert!(b.remove("file/").is_some());
        assert!(b.is_empty());
    }
}
