//! The core's side of audit: building the broker from the declared devices
//! (with their salts kept behind the barrier), starting the shippers, and
//! turning a request and its outcome into `custos-audit` events.
//!
//! Data comes from [`crate::core::Core::handle`] (the request, the caller's
//! token entry, the result) and goes to the [`AuditBroker`], which hashes and
//! records it on every device before the pipeline may continue.
//!
//! **Devices and sinks.** [`build_broker`] (at unseal) opens every `file`
//! device first; they are on the request path (fail closed). Then each
//! `kafka` / `elasticsearch` device becomes a [`Shipper`] that streams the
//! local log of a `file` device — the one its `source` option names, else
//! the first declared — from its own checkpoint, never on the request path.
//! **Decision:** when sinks are declared without any `file` device, the
//! durable local log still exists: an implicit `file` device at `local/`
//! writes it to the sinks' `log_dir` option (which is then required, and
//! must be the same for every sink), so there is always a local source of
//! truth before a request is answered. Options are validated up front by
//! [`validate_devices`] (errors name the device and the option; `custos
//! server` calls it at start), and again when the broker is built.
//!
//! **Rotation.** Every local log opened here is also tracked process-wide
//! (weakly), so a SIGHUP handler in the binary can roll them all with
//! [`rotate_open_logs`] without holding a core; `PUT sys/audit-rotate` does
//! the same through the broker.
//!
//! **Replicated configuration (audit alike on every node).** Audit devices
//! are declared in each node's server config; the cluster's device table is
//! kept in barrier storage (`sys/audit-table`, replicated by Raft). At unseal
//! ([`build_broker`], with an [`AuditTableRole`]) a node compares what it
//! declares with the stored table ([`table_differences`]): a device's path,
//! type and shared options must be the same on every node. Options that only
//! say where and how this node keeps its own log on its own disk
//! ([`NODE_LOCAL_OPTIONS`]: `file_path`, `log_dir`, `mode`, `min_free_bytes`,
//! segment and retention limits) may differ, and a device declared with
//! `local = true` is this node's own and not compared at all. A node that
//! differs refuses to unseal, and the error names the devices and what
//! differs (type, declared on one side only, or the option *names* whose
//! values differ — never a value: options hold HMAC keys and passwords).
//! **Decision:** the node that initializes the cluster, the only voter (a
//! one-node server's config is the cluster's), and any node while the table
//! is empty record their own table instead. An active node also records its
//! table when it finds the table empty (at unseal or on becoming active,
//! see `crate::cluster`). Changing audit devices across a cluster: edit the
//! config on every node, `custos operator audit-table reset` (`DELETE
//! sys/audit-table`, sudo), then restart the nodes one at a time as for an
//! upgrade (standbys first, `custos operator step-down`, the old leader);
//! until the active node records the new table, nodes unseal unchecked. A
//! new device's HMAC salt is derived from the root key and its path when
//! none is stored, so a standby (which cannot write) hashes as the active
//! node does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use custos_audit::log::AuditLog;
use custos_audit::ship::elasticsearch::ElasticsearchSink;
use custos_audit::ship::kafka::KafkaSink;
use custos_audit::ship::{ShipOptions, Shipper, Sink, SinkOptions, redact_options};
use custos_audit::{
    AuditAuth, AuditBroker, AuditDevice, AuditEvent, AuditRequest, AuditResponse, FileDevice, Salt,
};
use serde_json::Value;

use crate::config::{AuditDeviceConfig, AuditDeviceKind};
use crate::error::{CoreError, Result};
use crate::logical::{Request, Response};
use crate::storage::StorageView;
use crate::token::TokenEntry;

/// Put back into the audit log the request events of writes that travelled
/// in their Raft entries ([`crate::storage::carry`]) and are due in
/// `ledger`: for each file device named in an event, the events its log
/// lacks are appended (see [`custos_audit::reconcile`]); an entry leaves the
/// ledger once every device still enabled has its events. A device no
/// longer enabled is passed over (there is nothing left to write its
/// events to); a damaged event is reported and passed over
/// ([`custos_audit::reconcile::report_damaged`]), so it never holds back
/// the others or the snapshots behind them. Returns the events appended.
pub async fn reconcile_carried(
    broker: &AuditBroker,
    ledger: &crate::storage::raft::carried::CarriedLedger,
    node: &str,
) -> Result<usize> {
    use custos_audit::reconcile::{CarriedEvent, reconcile, report_damaged};
    let due = ledger.due();
    if due.is_empty() {
        return Ok(0);
    }
    let mut by_device: BTreeMap<String, Vec<CarriedEvent>> = BTreeMap::new();
    for (raft_index, carried) in &due {
        for e in &carried.events {
            let e = match e.inflate(&carried.request_id) {
                Ok(e) => e,
                Err(why) => {
                    report_damaged(&e.device, &carried.request_id, *raft_index, &why);
                    continue;
                }
            };
            by_device.entry(e.device).or_default().push(CarriedEvent {
                request_id: carried.request_id.clone(),
                raft_index: *raft_index,
                log_seq: e.log_seq,
                bytes: e.bytes,
            });
        }
    }
    let mut appended = 0;
    for (device, events) in by_device {
        let Some(log) = broker.get(&device).and_then(|d| d.local_log()) else {
            tracing::warn!(
                device,
                events = events.len(),
                "carried audit events for a device no longer enabled: passed over"
            );
            continue;
        };
        appended += reconcile(&device, &log, node, &events)
            .await
            .map_err(|e| CoreError::Internal(format!("audit reconciliation on {device}: {e}")))?;
    }
    for (raft_index, carried) in &due {
        ledger.audited(*raft_index, &carried.request_id);
    }
    Ok(appended)
}

/// Mount path of the implicit `file` device that writes the local log when
/// only sinks are declared.
pub const IMPLICIT_LOG_PATH: &str = "local/";
/// Where the effective audit device table is kept (in the `sys/` view).
pub(crate) const AUDIT_TABLE_KEY: &str = "audit-table";
/// Options that only say where and how this node keeps its own log; they may
/// differ between nodes (see the module docs).
pub const NODE_LOCAL_OPTIONS: &[&str] = &[
    "file_path",
    "log_dir",
    "mode",
    "min_free_bytes",
    "segment_size",
    "segment_duration",
    "retention_max_age",
    "retention_max_bytes",
];

/// What a node does with the cluster's stored audit table at unseal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditTableRole {
    /// Initializing the cluster, or its only voter: this node's table is the
    /// cluster's; it is recorded.
    Record,
    /// A member of a multi-voter cluster: the declared table must match the
    /// stored one (when there is one). `active`: this node leads, so it
    /// records its table when none is stored (a standby cannot write).
    Match { active: bool },
    /// Reopening after a restore or a missed cache invalidation: not an
    /// operator's unseal, nothing is checked or recorded.
    Reopen,
}

/// Local logs opened by [`build_broker`] in this process (see the module docs).
static OPEN_LOGS: Mutex<Vec<Weak<AuditLog>>> = Mutex::new(Vec::new());

fn track_log(log: &Arc<AuditLog>) {
    let mut logs = match OPEN_LOGS.lock() {
        Ok(l) => l,
        Err(poisoned) => poisoned.into_inner(),
    };
    logs.retain(|w| w.strong_count() > 0);
    logs.push(Arc::downgrade(log));
}

/// Roll every open local audit log of this process to a new segment (SIGHUP,
/// like Vault's reopen): nothing is renamed or lost. Returns how many logs
/// rolled and the errors of those that could not.
pub async fn rotate_open_logs() -> (usize, Vec<String>) {
    let logs: Vec<Arc<AuditLog>> = match OPEN_LOGS.lock() {
        Ok(l) => l.iter().filter_map(Weak::upgrade).collect(),
        Err(poisoned) => poisoned
            .into_inner()
            .iter()
            .filter_map(Weak::upgrade)
            .collect(),
    };
    let mut rolled = 0;
    let mut errors = Vec::new();
    for log in logs {
        match log.roll().await {
            Ok(_) => rolled += 1,
            // Shut down meanwhile (sealed): nothing to rotate.
            Err(custos_audit::AuditError::Closed) => {}
            Err(e) => errors.push(format!("{}: {e}", log.log_dir().dir().display())),
        }
    }
    (rolled, errors)
}

fn device_error(path: &str, e: impl std::fmt::Display) -> String {
    format!("audit device {path:?}: {e}")
}

/// A sink device with its parsed options.
struct SinkPlan<'a> {
    cfg: &'a AuditDeviceConfig,
    sink: SinkOptions,
    ship: ShipOptions,
}

/// Where the sinks read from.
enum Source {
    /// The declared file devices (at least one).
    Declared,
    /// No file device: the implicit one writes to this directory.
    Implicit(PathBuf),
    /// No sinks at all.
    None,
}

/// Parse every sink's options and decide where the local log comes from.
fn plan(devices: &[AuditDeviceConfig]) -> std::result::Result<(Vec<SinkPlan<'_>>, Source), String> {
    let files: Vec<&str> = devices
        .iter()
        .filter(|d| d.kind == AuditDeviceKind::File)
        .map(|d| d.path.as_str())
        .collect();
    let mut sinks = Vec::new();
    for d in devices {
        if let Some((sink, ship)) =
            SinkOptions::parse(d.kind.as_str(), &d.options).map_err(|e| device_error(&d.path, e))?
        {
            if let Some(src) = &ship.source
                && !files
                    .iter()
                    .any(|f| f.trim_end_matches('/') == src.trim_end_matches('/'))
            {
                return Err(device_error(
                    &d.path,
                    format!("option \"source\": no file audit device is declared at {src:?}"),
                ));
            }
            sinks.push(SinkPlan { cfg: d, sink, ship });
        }
    }
    if sinks.is_empty() {
        return Ok((sinks, Source::None));
    }
    if !files.is_empty() {
        return Ok((sinks, Source::Declared));
    }
    let mut dir: Option<PathBuf> = None;
    for s in &sinks {
        match (&s.ship.log_dir, &dir) {
            (None, _) => {
                return Err(device_error(
                    &s.cfg.path,
                    "option \"log_dir\": required when no file audit device is declared (the durable local log the sink ships from lives there)",
                ));
            }
            (Some(d), Some(prev)) if d != prev => {
                return Err(device_error(
                    &s.cfg.path,
                    format!(
                        "option \"log_dir\": every sink must name the same local log directory ({} vs {})",
                        d.display(),
                        prev.display()
                    ),
                ));
            }
            (Some(d), _) => dir = Some(d.clone()),
        }
    }
    Ok((sinks, dir.map_or(Source::None, Source::Implicit)))
}

/// Check the options of every declared device without opening anything:
/// sinks fully (required options, values, `source`/`log_dir`), file devices'
/// option names and values. The message names the device and the option.
pub fn validate_devices(devices: &[AuditDeviceConfig]) -> std::result::Result<(), String> {
    for d in devices {
        if d.kind == AuditDeviceKind::File {
            custos_audit::FileOptions::from_map(&d.options)
                .map_err(|e| device_error(&d.path, e))?;
        }
    }
    plan(devices).map(|_| ())
}

fn build_sink(p: &SinkPlan<'_>) -> std::result::Result<Box<dyn Sink>, String> {
    Ok(match &p.sink {
        SinkOptions::Kafka(k) => {
            Box::new(KafkaSink::new(k.clone()).map_err(|e| device_error(&p.cfg.path, e))?)
        }
        SinkOptions::Elasticsearch(e) => Box::new(
            ElasticsearchSink::new(&p.cfg.path, e.clone())
                .map_err(|err| device_error(&p.cfg.path, err))?,
        ),
    })
}

/// Open every declared device and start every shipper. A device that cannot
/// be opened fails the unseal, as in Vault: an unaudited server must not
/// serve. See the module docs for sinks and the implicit local log.
pub async fn build_broker(
    devices: &[AuditDeviceConfig],
    system: &StorageView,
    role: AuditTableRole,
    root_key: &[u8],
) -> Result<AuditBroker> {
    let (sinks, source) = plan(devices).map_err(CoreError::Internal)?;
    check_audit_table(devices, system, role).await?;
    let salts = SaltSource {
        system,
        root_key,
        write: !matches!(role, AuditTableRole::Match { active: false }),
    };
    let broker = AuditBroker::new();
    match open_all(&broker, devices, &sinks, source, &salts).await {
        Ok(()) => Ok(broker),
        Err(e) => {
            broker.shutdown().await;
            Err(e)
        }
    }
}

async fn open_file_device(
    broker: &AuditBroker,
    path: &str,
    description: &str,
    options: &BTreeMap<String, String>,
    salts: &SaltSource<'_>,
) -> Result<(String, Arc<AuditLog>)> {
    let salt = salts.load_or_create(path).await?;
    let dev = FileDevice::from_options(path, description, options, salt)
        .map_err(|e| CoreError::Internal(device_error(path, e)))?;
    let log = dev.audit_log().clone();
    broker
        .add(Arc::new(dev) as Arc<dyn AuditDevice>)
        .map_err(|e| CoreError::Internal(device_error(path, e)))?;
    broker.register_log(path, log.clone());
    track_log(&log);
    Ok((path.to_owned(), log))
}

async fn open_all(
    broker: &AuditBroker,
    devices: &[AuditDeviceConfig],
    sinks: &[SinkPlan<'_>],
    source: Source,
    system: &SaltSource<'_>,
) -> Result<()> {
    let mut logs: Vec<(String, Arc<AuditLog>)> = Vec::new();
    for d in devices {
        match d.kind {
            AuditDeviceKind::File => {
                logs.push(
                    open_file_device(broker, &d.path, &d.description, &d.options, system).await?,
                );
            }
            AuditDeviceKind::Kafka | AuditDeviceKind::Elasticsearch => {}
        }
    }
    if let Source::Implicit(dir) = source {
        let mut options = BTreeMap::new();
        options.insert("file_path".to_owned(), dir.display().to_string());
        tracing::info!(
            dir = %dir.display(),
            "no file audit device declared: the sinks ship from an implicit local audit log"
        );
        logs.push(
            open_file_device(
                broker,
                IMPLICIT_LOG_PATH,
                "implicit durable local log of the audit sinks",
                &options,
                system,
            )
            .await?,
        );
    }
    warn_stale_checkpoints(&logs, sinks);
    for p in sinks {
        let path = p.cfg.path.as_str();
        let (src_path, log) = match &p.ship.source {
            Some(src) => logs
                .iter()
                .find(|(l, _)| l.trim_end_matches('/') == src.trim_end_matches('/'))
                .cloned(),
            None => logs.first().cloned(),
        }
        .ok_or_else(|| {
            CoreError::Internal(device_error(path, "no local audit log to ship from"))
        })?;
        let sink = build_sink(p).map_err(CoreError::Internal)?;
        let shipper = Shipper::start(
            path,
            &p.cfg.description,
            redact_options(&p.cfg.options),
            &src_path,
            log,
            sink,
            p.ship.clone(),
        )
        .map_err(|e| CoreError::Internal(device_error(path, e)))?;
        let shipper = Arc::new(shipper);
        if let Err(e) = broker.add_shipper(shipper.clone()) {
            shipper.shutdown().await;
            return Err(CoreError::Internal(device_error(path, e)));
        }
    }
    Ok(())
}

/// A checkpoint of a sink that is no longer declared holds back retention
/// forever: say so (it is not removed automatically, since it may belong to
/// another consumer of the log).
fn warn_stale_checkpoints(logs: &[(String, Arc<AuditLog>)], sinks: &[SinkPlan<'_>]) {
    for (path, log) in logs {
        let dir = log.checkpoint_dir();
        let Ok(list) = custos_audit::Checkpoint::list(&dir) else {
            continue;
        };
        for (name, seq) in list {
            let declared = sinks
                .iter()
                .any(|s| s.cfg.path.trim_end_matches('/') == name.trim_end_matches('/'));
            if !declared {
                tracing::warn!(
                    device = %path,
                    checkpoint = %name,
                    seq,
                    file = %dir.join(format!("{name}.json")).display(),
                    "a checkpoint of an audit sink that is not declared holds back log retention; delete the file if that sink is gone"
                );
            }
        }
    }
}

/// The differences between the cluster's stored table and a node's
/// declared one, one line per differing device: its path and what differs
/// (type, declared on one side only, option names). Never an option value.
/// Devices with `local = true` and [`NODE_LOCAL_OPTIONS`] are left out.
pub fn table_differences(
    stored: &[AuditDeviceConfig],
    declared: &[AuditDeviceConfig],
) -> Vec<String> {
    let by_path = |t: &[AuditDeviceConfig]| -> BTreeMap<String, AuditDeviceConfig> {
        t.iter()
            .filter(|d| !d.local)
            .map(|d| (d.path.clone(), d.clone()))
            .collect()
    };
    let (cluster, here) = (by_path(stored), by_path(declared));
    let paths: std::collections::BTreeSet<&String> = cluster.keys().chain(here.keys()).collect();
    let mut out = Vec::new();
    for p in paths {
        match (cluster.get(p), here.get(p)) {
            (Some(c), None) => out.push(format!(
                "{p:?} ({}) is in the cluster's table but not declared on this node",
                c.kind.as_str()
            )),
            (None, Some(h)) => out.push(format!(
                "{p:?} ({}) is declared on this node but not in the cluster's table",
                h.kind.as_str()
            )),
            (Some(c), Some(h)) if c.kind != h.kind => out.push(format!(
                "{p:?}: type {} on this node, {} in the cluster's table",
                h.kind.as_str(),
                c.kind.as_str()
            )),
            (Some(c), Some(h)) => {
                let names: std::collections::BTreeSet<&String> = c
                    .options
                    .keys()
                    .chain(h.options.keys())
                    .filter(|k| !NODE_LOCAL_OPTIONS.contains(&k.as_str()))
                    .filter(|k| c.options.get(*k) != h.options.get(*k))
                    .collect();
                if !names.is_empty() {
                    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
                    out.push(format!("{p:?}: options differ: {}", names.join(", ")));
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// Compare the declared devices with the cluster's stored table and record
/// them where this node's table is the cluster's (see the module docs).
async fn check_audit_table(
    devices: &[AuditDeviceConfig],
    system: &StorageView,
    role: AuditTableRole,
) -> Result<()> {
    if role == AuditTableRole::Reopen {
        return Ok(());
    }
    let stored: Vec<AuditDeviceConfig> =
        system.get_json(AUDIT_TABLE_KEY).await?.unwrap_or_default();
    let differences = table_differences(&stored, devices);
    match role {
        AuditTableRole::Match { .. } if !stored.is_empty() => {
            if differences.is_empty() {
                return Ok(());
            }
            Err(CoreError::BadRequest(format!(
                "this node's audit devices differ from the cluster's audit device table, so it stays sealed: {}. Declare the same audit devices on every node (or, to change them cluster-wide, run `custos operator audit-table reset` first)",
                differences.join("; ")
            )))
        }
        AuditTableRole::Match { active: false } => Ok(()),
        _ => {
            if !stored.is_empty() && !differences.is_empty() {
                tracing::warn!(
                    differences = %differences.join("; "),
                    "recording this node's audit devices as the cluster's audit device table"
                );
            }
            if stored.as_slice() != devices {
                system.put_json(AUDIT_TABLE_KEY, &devices).await?;
            }
            Ok(())
        }
    }
}

/// Record `devices` as the cluster's table if none is stored (an active
/// node after `sys/audit-table` was reset). Returns whether it wrote.
pub async fn record_table_if_empty(
    devices: &[AuditDeviceConfig],
    system: &StorageView,
) -> Result<bool> {
    let stored: Vec<AuditDeviceConfig> =
        system.get_json(AUDIT_TABLE_KEY).await?.unwrap_or_default();
    if !stored.is_empty() || devices.is_empty() {
        return Ok(false);
    }
    system.put_json(AUDIT_TABLE_KEY, &devices).await?;
    Ok(true)
}

/// Where the devices' HMAC salts come from: stored ones first; a missing
/// one is derived from the root key and the device path (so every node
/// derives the same) and stored where this node may write.
struct SaltSource<'a> {
    system: &'a StorageView,
    root_key: &'a [u8],
    write: bool,
}

impl SaltSource<'_> {
    async fn load_or_create(&self, path: &str) -> Result<Salt> {
        let path = path.trim_end_matches('/');
        let key = format!("audit-salt/{path}");
        if let Some(bytes) = self.system.get(&key).await? {
            return Salt::new(bytes)
                .map_err(|e| CoreError::Internal(format!("audit salt for {path:?}: {e}")));
        }
        let mut bytes = zeroize::Zeroizing::new(vec![0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(Some(b"custos-audit-salt"), self.root_key)
            .expand(path.as_bytes(), &mut bytes)
            .map_err(|_| CoreError::Internal("audit salt derivation".into()))?;
        if self.write {
            self.system.put(&key, bytes.to_vec()).await?;
        }
        Salt::new(bytes.to_vec())
            .map_err(|e| CoreError::Internal(format!("audit salt for {path:?}: {e}")))
    }
}

fn auth_of(entry: &TokenEntry, raw_token: &str) -> AuditAuth {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    AuditAuth {
        client_token: raw_token.to_string(),
        accessor: entry.accessor.clone(),
        display_name: entry.display_name.clone(),
        policies: entry.policies.clone(),
        token_policies: entry.policies.clone(),
        metadata: entry.meta.clone(),
        entity_id: entry.entity_id.clone(),
        token_type: entry.token_type.clone(),
        token_ttl: if entry.expire_time > 0 {
            (entry.expire_time - now).max(0)
        } else {
            0
        },
        token_issue_time: crate::barrier::rfc3339(entry.creation_time),
        remaining_uses: entry.num_uses,
        ..Default::default()
    }
}

fn request_of(req: &Request, entry: Option<&TokenEntry>, raw_token: &str) -> AuditRequest {
    let mut r = AuditRequest::new(req.id.clone(), req.operation.as_str(), req.path.clone());
    r.mount_point = req.mount_point.clone();
    r.mount_type = req.mount_type.clone();
    r.client_token = raw_token.to_string();
    r.client_token_accessor = entry.map(|e| e.accessor.clone()).unwrap_or_default();
    r.data = (!req.data.is_empty()).then(|| Value::Object(req.data.clone()));
    if let Some(a) = req.remote_addr {
        r.remote_address = a.ip().to_string();
        r.remote_port = a.port();
    }
    r.wrap_ttl = req.wrap_ttl;
    r
}

/// The token a request was made with, as sent, for the audit (HMAC'd
/// there); none for a login, which is made without one.
fn raw_token<'a>(req: &'a Request, entry: Option<&TokenEntry>) -> &'a str {
    match (entry, &req.client_token) {
        (Some(_), Some(t)) => t.expose(),
        _ => "",
    }
}

/// The request event; `denied` carries the error when the ACL refused it.
/// `entry` is the request's token, `None` for a login.
pub fn request_event(
    req: &Request,
    entry: Option<&TokenEntry>,
    denied: Option<&str>,
) -> AuditEvent {
    let raw = raw_token(req, entry);
    let auth = entry.map(|e| auth_of(e, raw));
    let mut ev = AuditEvent::request(auth, request_of(req, entry, raw));
    if let Some(t) = crate::traces::trace_id_of(req) {
        ev = ev.with_trace_id(t);
    }
    match denied {
        Some(e) => ev.with_error(e),
        None => ev,
    }
}

/// The response event for a finished request.
pub fn response_event(
    req: &Request,
    entry: Option<&TokenEntry>,
    result: &Result<Response>,
) -> AuditEvent {
    let raw = raw_token(req, entry);
    let mut resp = AuditResponse {
        mount_point: req.mount_point.clone(),
        mount_type: req.mount_type.clone(),
        ..Default::default()
    };
    let error = match result {
        Ok(r) => {
            // An unwrap is audited as the response it unwrapped.
            let unwrapped = crate::wrapping::audited_unwrap(req, r);
            let r = unwrapped.as_ref().unwrap_or(r);
            resp.wrap_info = r
                .wrap_info
                .as_ref()
                .map(|w| custos_audit::event::AuditWrapInfo {
                    token: w.token.expose().to_string(),
                    accessor: w.accessor.clone(),
                    ttl: w.ttl,
                    creation_time: w.creation_time.clone(),
                    creation_path: w.creation_path.clone(),
                    wrapped_accessor: w.wrapped_accessor.clone(),
                });
            resp.data = r.data.as_ref().map(|d| Value::Object(d.clone()));
            resp.warnings = r.warnings.clone();
            resp.key_versions = r.key_versions.clone();
            if let Some(a) = &r.auth {
                resp.auth = Some(AuditAuth {
                    client_token: a.client_token.clone(),
                    accessor: a.accessor.clone(),
                    policies: a.policies.clone(),
                    token_policies: a.token_policies.clone(),
                    identity_policies: a.identity_policies.clone(),
                    entity_id: a.entity_id.clone(),
                    metadata: a.metadata.clone().unwrap_or_default(),
                    token_type: a.token_type.clone(),
                    token_ttl: a.lease_duration,
                    num_uses: a.num_uses,
                    ..Default::default()
                });
            }
            None
        }
        Err(e) => Some(e.messages().join("; ")),
    };
    let ev = AuditEvent::response(
        entry.map(|e| auth_of(e, raw)),
        request_of(req, entry, raw),
        resp,
        error,
    );
    match crate::traces::trace_id_of(req) {
        Some(t) => ev.with_trace_id(t),
        None => ev,
    }
}

/// The request and response events of a request that ended before its
/// request event was written (see `refuse_before_audit` in core.rs), as
/// OpenBao writes them: both carry the error; `entry` is the token if it
/// resolved, and without one there is no `auth` block and the token as
/// presented goes in `request.client_token` (HMAC'd by each device like any
/// token).
pub fn refused_events(
    req: &Request,
    entry: Option<&TokenEntry>,
    result: &Result<Response>,
) -> (AuditEvent, AuditEvent) {
    let error = match result {
        Err(e) => Some(e.messages().join("; ")),
        Ok(_) => None,
    };
    let mut request = request_event(req, entry, error.as_deref());
    let mut response = response_event(req, entry, result);
    if entry.is_none()
        && let Some(t) = &req.client_token
    {
        request.request.client_token = t.expose().to_string();
        response.request.client_token = t.expose().to_string();
    }
    (request, response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::Barrier;
    use crate::storage::memory::MemoryStore;

    fn dev(kind: AuditDeviceKind, path: &str, opts: &[(&str, &str)]) -> AuditDeviceConfig {
        AuditDeviceConfig {
            kind,
            path: path.to_owned(),
            description: String::new(),
            local: false,
            options: opts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn validation_names_device_and_option() {
        let kafka = |extra: &[(&str, &str)]| {
            let mut o = vec![("brokers", "127.0.0.1:9"), ("topic", "t")];
            o.extend_from_slice(extra);
            dev(AuditDeviceKind::Kafka, "kafka/", &o)
        };
        let e = validate_devices(&[dev(AuditDeviceKind::Kafka, "kafka/", &[("topic", "t")])])
            .unwrap_err();
        assert!(e.contains("\"kafka/\"") && e.contains("\"brokers\""), "{e}");
        // Sinks without a file device need log_dir, the same for all.
        let e = validate_devices(&[kafka(&[])]).unwrap_err();
        assert!(e.contains("log_dir"), "{e}");
        assert!(validate_devices(&[kafka(&[("log_dir", "/x")])]).is_ok());
        let es = dev(
            AuditDeviceKind::Elasticsearch,
            "es/",
            &[
                ("url", "http://127.0.0.1:9"),
                ("index", "i"),
                ("log_dir", "/y"),
            ],
        );
        let e = validate_devices(&[kafka(&[("log_dir", "/x")]), es]).unwrap_err();
        assert!(e.contains("same local log directory"), "{e}");
        // `source` must name a declared file device.
        let file = dev(AuditDeviceKind::File, "file/", &[("file_path", "/z")]);
        let e = validate_devices(&[file.clone(), kafka(&[("source", "other")])]).unwrap_err();
        assert!(e.contains("\"source\""), "{e}");
        assert!(validate_devices(&[file, kafka(&[("source", "file")])]).is_ok());
    }

    #[tokio::test]
    async fn sinks_without_file_device_ship_an_implicit_local_log() {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[7u8; 32]).await.unwrap();
        let system = StorageView::new(barrier, "sys/");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let d = dir.to_str().unwrap();
        let devices = vec![
            dev(
                AuditDeviceKind::Kafka,
                "kafka/",
                &[("brokers", "127.0.0.1:9"), ("topic", "t"), ("log_dir", d)],
            ),
            dev(
                AuditDeviceKind::Elasticsearch,
                "es/",
                &[
                    ("url", "http://127.0.0.1:9"),
                    ("index", "i"),
                    ("log_dir", d),
                    ("sasl.password", "x"),
                ],
            ),
        ];
        // An unknown option fails the build and leaves nothing running.
        assert!(
            build_broker(&devices, &system, AuditTableRole::Record, &[1; 32])
                .await
                .is_err()
        );
        let devices = vec![devices[0].clone(), {
            let mut e = devices[1].clone();
            e.options.remove("sasl.password");
            e.options.insert("password".into(), "hunter2".into());
            e.options.insert("username".into(), "u".into());
            e
        }];
        let broker = build_broker(&devices, &system, AuditTableRole::Record, &[1; 32])
            .await
            .unwrap();
        let list = broker.list();
        let paths: Vec<&str> = list.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec![IMPLICIT_LOG_PATH, "kafka/", "es/"]);
        assert_eq!(list[2].options["password"], "<redacted>");
        broker
            .log_request(AuditEvent::request(
                None,
                AuditRequest::new("r1", "read", "sys/health"),
            ))
            .await
            .unwrap();
        let Some(custos_audit::broker::Backlog::Sink(s)) = broker.backlog("kafka/") else {
            panic!("no sink backlog");
        };
        assert_eq!((s.records, s.checkpoint, s.durable_seq), (1, 0, 1));
        assert!(
            broker.hash("es/", "x").is_some(),
            "a sink hashes with its source's salt"
        );
        assert!(broker.contains("es/"));
        assert!(dir.join("audit.checkpoints").join("kafka.json").exists());
        // The table is stored for the cluster.
        let stored: Option<Vec<AuditDeviceConfig>> =
            system.get_json(AUDIT_TABLE_KEY).await.unwrap();
        assert_eq!(stored.as_deref(), Some(devices.as_slice()));
        broker.shutdown().await;
        assert!(broker.list().is_empty());
    }

    #[tokio::test]
    async fn a_member_whose_devices_differ_stays_sealed_and_is_told_why() {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[7u8; 32]).await.unwrap();
        let system = StorageView::new(barrier, "sys/");
        let tmp = tempfile::tempdir().unwrap();
        let here = |name: &str, extra: &[(&str, &str)]| {
            let f = tmp.path().join(name);
            let mut o = vec![
                ("file_path", f.to_str().unwrap()),
                ("hmac_accessor", "true"),
            ];
            o.extend_from_slice(extra);
            dev(AuditDeviceKind::File, "file/", &o)
        };
        let member = AuditTableRole::Match { active: false };
        // Empty table: a standby unseals unchecked and records nothing.
        let b = build_broker(&[here("a", &[])], &system, member, &[1; 32])
            .await
            .unwrap();
        b.shutdown().await;
        let stored: Option<Vec<AuditDeviceConfig>> =
            system.get_json(AUDIT_TABLE_KEY).await.unwrap();
        assert!(stored.is_none());
        // The initializing node records its table.
        let b = build_broker(&[here("a", &[])], &system, AuditTableRole::Record, &[1; 32])
            .await
            .unwrap();
        b.shutdown().await;
        // Node-local options (file_path, min_free_bytes) may differ.
        let b = build_broker(
            &[here("b", &[("min_free_bytes", "1")])],
            &system,
            member,
            &[1; 32],
        )
        .await
        .unwrap();
        b.shutdown().await;
        // A shared option's value differs: refused, naming the option, not the value.
        let secret = "hunter2-secret-value";
        let kafka = dev(
            AuditDeviceKind::Kafka,
            "kafka/",
            &[("brokers", "127.0.0.1:9"), ("topic", "t")],
        );
        let Err(e) = build_broker(
            &[
                here("c", &[("hmac_accessor", "false"), ("prefix", secret)]),
                kafka,
            ],
            &system,
            member,
            &[1; 32],
        )
        .await
        else {
            panic!("a member whose devices differ unsealed");
        };
        let e = e.to_string();
        assert!(
            e.contains("\"file/\": options differ: hmac_accessor, prefix"),
            "{e}"
        );
        assert!(
            e.contains("\"kafka/\" (kafka) is declared on this node"),
            "{e}"
        );
        assert!(!e.contains(secret) && !e.contains("127.0.0.1"), "{e}");
        let diff = table_differences(
            &[here("a", &[])],
            &[dev(AuditDeviceKind::Kafka, "file/", &[])],
        );
        assert_eq!(
            diff,
            vec!["\"file/\": type kafka on this node, file in the cluster's table"]
        );
        let missing = table_differences(&[here("a", &[])], &[]);
        assert_eq!(
            missing,
            vec!["\"file/\" (file) is in the cluster's table but not declared on this node"]
        );
        // A `local` device is this node's own.
        let mut local = dev(AuditDeviceKind::File, "mine/", &[("file_path", "/x")]);
        local.local = true;
        assert!(table_differences(&[here("a", &[])], &[here("z", &[]), local]).is_empty());
        // Every node derives the same salt for a device with none stored.
        let s1 = SaltSource {
            system: &system,
            root_key: &[1; 32],
            write: false,
        };
        let h1 = s1.load_or_create("new/").await.unwrap().as_bytes().to_vec();
        let s2 = SaltSource {
            system: &system,
            root_key: &[1; 32],
            write: true,
        };
        assert_eq!(
            s2.load_or_create("new").await.unwrap().as_bytes(),
            h1.as_slice()
        );
        assert!(system.get("audit-salt/new").await.unwrap().is_some());
    }
}
