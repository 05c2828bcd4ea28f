//! The `file` audit device: hashes each event and appends it to the durable
//! local audit log ([`crate::log::AuditLog`]) before `log` returns.
//!
//! Events come from the broker ([`crate::broker::AuditBroker`]). The calling
//! task hashes its own copy of the event with the device's salt and
//! serializes it; the log's writer thread group-commits it (one write and one
//! `fdatasync` for many concurrent events) into a segment file as one JSON
//! line carrying `custos_seq` and `custos_crc`. [`FileDevice::record`] returns
//! the record's sequence number; the [`AuditDevice`] impl drops it.
//!
//! `file_path` names the log's **directory** (`/var/lib/custos/audit` →
//! `/var/lib/custos/audit/audit-00000000000000000001.log`, …). For Vault-style
//! configs naming a file (an existing file, or a path with an extension such
//! as `/var/log/vault_audit.log`), its parent is the directory and its stem
//! the segment prefix (`/var/log/vault_audit-<seq>.log`); see
//! [`LogDir::from_file_path`]. Either way the configured name is the live
//! log: `audit.log` in the directory, or the named file itself, is a hard
//! link to the active segment (see [`crate::log::segment`]), so `tail -F` on
//! it shows every event as it is written, across rolls.
//!
//! Options (Vault's plus the log's): `file_path` (alias `path`), `mode`
//! (octal permissions of segment files, `0` leaves them alone), `format`
//! (`json` only), `prefix` (written before each line; no `{` or line break),
//! `log_raw`, `hmac_accessor`, `elide_list_responses`; `segment_size`
//! (default 64MiB), `segment_duration` (1h), `min_free_bytes` (256MiB, `0`
//! disables the disk guard), `retention_max_age` and `retention_max_bytes`
//! (unset: keep every segment).
//!
//! `reopen` (SIGHUP, `custos audit rotate`) seals the active segment and
//! starts a new one, which the live name then shows: no segment is renamed,
//! nothing is lost. [`FileDevice::shutdown`]
//! commits what is queued and stops the writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::{AuditDevice, EncodedEvent};
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::hash::{HashOptions, Salt, elide_list_response, hash_event, hmac_sha256};
use crate::log::options::{
    DEFAULT_MIN_FREE_BYTES, DEFAULT_SEGMENT_DURATION, DEFAULT_SEGMENT_SIZE, parse_duration,
    parse_size,
};
use crate::log::{AuditLog, LogDir, LogOptions, Retention};

/// How the device formats events. Only JSON is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
}

/// Options of a file device (Vault's `file` audit device options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Permissions set on the file; `None` leaves them alone (Vault's `mode=0`).
    pub mode: Option<u32>,
    pub log_raw: bool,
    pub hmac_accessor: bool,
    /// Written before each JSON line.
    pub prefix: String,
    pub format: Format,
    /// Replace `keys` / `key_info` of list responses by their counts.
    pub elide_list_responses: bool,
    /// Roll to a new segment before one grows past this many bytes.
    pub segment_size: u64,
    /// Roll to a new segment when the active one is this old.
    pub segment_duration: Duration,
    /// Refuse events when the disk has less free space (0: never).
    pub min_free_bytes: u64,
    /// When acknowledged segments may be deleted.
    pub retention: Retention,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            mode: Some(0o600),
            log_raw: false,
            hmac_accessor: true,
            prefix: String::new(),
            format: Format::Json,
            elide_list_responses: false,
            segment_size: DEFAULT_SEGMENT_SIZE,
            segment_duration: DEFAULT_SEGMENT_DURATION,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            retention: Retention::default(),
        }
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for option values.
fn parse_bool(name: &str, v: &str) -> Result<bool, AuditError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(AuditError::InvalidOption {
            name: name.into(),
            reason: format!("{v:?} is not a boolean"),
        }),
    }
}

impl FileOptions {
    /// The options as `sys/audit` enables them (see the module docs for the
    /// list). Returns the file path
    /// (`file_path`, or its alias `path`) and the parsed options; unknown
    /// options are an error.
    pub fn from_map(
        options: &BTreeMap<String, String>,
    ) -> Result<(PathBuf, FileOptions), AuditError> {
        let mut out = FileOptions::default();
        let mut file_path = None;
        for (k, v) in options {
            match k.as_str() {
                "file_path" | "path" => file_path = Some(PathBuf::from(v)),
                "mode" => {
                    let mode =
                        u32::from_str_radix(v, 8).map_err(|_| AuditError::InvalidOption {
                            name: k.clone(),
                            reason: format!("{v:?} is not an octal file mode"),
                        })?;
                    if mode > 0o7777 {
                        return Err(AuditError::InvalidOption {
                            name: k.clone(),
                            reason: format!("{v:?} is not a file mode"),
                        });
                    }
                    out.mode = (mode != 0).then_some(mode);
                }
                "log_raw" => out.log_raw = parse_bool(k, v)?,
                "hmac_accessor" => out.hmac_accessor = parse_bool(k, v)?,
                "elide_list_responses" => out.elide_list_responses = parse_bool(k, v)?,
                "prefix" => {
                    crate::log::record_check_line_prefix(v).map_err(|reason| {
                        AuditError::InvalidOption {
                            name: k.clone(),
                            reason: reason.into(),
                        }
                    })?;
                    out.prefix = v.clone();
                }
                "segment_size" => {
                    out.segment_size = parse_size(k, v)?;
                    if out.segment_size == 0 {
                        return Err(AuditError::InvalidOption {
                            name: k.clone(),
                            reason: "must be greater than 0".into(),
                        });
                    }
                }
                "segment_duration" => out.segment_duration = parse_duration(k, v)?,
                "min_free_bytes" => out.min_free_bytes = parse_size(k, v)?,
                "retention_max_age" => out.retention.max_age = Some(parse_duration(k, v)?),
                "retention_max_bytes" => out.retention.max_bytes = Some(parse_size(k, v)?),
                "format" => match v.as_str() {
                    "json" | "" => out.format = Format::Json,
                    other => return Err(AuditError::UnsupportedFormat(other.into())),
                },
                _ => {
                    return Err(AuditError::InvalidOption {
                        name: k.clone(),
                        reason: "unknown option for a file audit device".into(),
                    });
                }
            }
        }
        let file_path = file_path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| AuditError::InvalidOption {
                name: "file_path".into(),
                reason: "required".into(),
            })?;
        Ok((file_path, out))
    }

    fn hash_options(&self) -> HashOptions {
        HashOptions {
            log_raw: self.log_raw,
            hmac_accessor: self.hmac_accessor,
        }
    }

    /// The options of the device's log; `label` is the metrics' `path`.
    pub fn log_options(&self, label: &str) -> LogOptions {
        LogOptions {
            segment_size: self.segment_size,
            segment_duration: self.segment_duration,
            min_free_bytes: self.min_free_bytes,
            retention: self.retention,
            mode: self.mode,
            line_prefix: self.prefix.clone(),
            metrics_label: label.to_owned(),
        }
    }
}

/// The `file` audit device. See the module documentation.
pub struct FileDevice {
    mount_path: String,
    description: String,
    shown_options: BTreeMap<String, String>,
    file_path: PathBuf,
    salt: Salt,
    options: FileOptions,
    log: Arc<AuditLog>,
}

impl FileDevice {
    /// Open (creating the directory if needed, recovering it after a crash)
    /// the audit log that `path` names — see [`LogDir::from_file_path`] — and
    /// start its writer thread. The device is mounted at `file/` until
    /// renamed with [`FileDevice::named`].
    pub fn open(path: PathBuf, salt: Salt, options: FileOptions) -> Result<FileDevice, AuditError> {
        let mount_path = "file/".to_owned();
        let dir = LogDir::from_file_path(&path);
        let log = AuditLog::open(dir, options.log_options(&mount_path))?;
        let mut shown_options = BTreeMap::new();
        shown_options.insert("file_path".to_owned(), path.display().to_string());
        Ok(FileDevice {
            mount_path,
            description: String::new(),
            shown_options,
            file_path: path,
            salt,
            options,
            log: Arc::new(log),
        })
    }

    /// Build a device from `sys/audit` / server-config options (see the
    /// module docs), mounted at `mount_path`.
    pub fn from_options(
        mount_path: &str,
        description: &str,
        options: &BTreeMap<String, String>,
        salt: Salt,
    ) -> Result<FileDevice, AuditError> {
        let (path, parsed) = FileOptions::from_map(options)?;
        let mut dev = FileDevice::open(path, salt, parsed)?.named(mount_path, description);
        dev.shown_options = options.clone();
        Ok(dev)
    }

    /// Set the mount path (also the `path` label of its metrics) and the
    /// description shown by `sys/audit`.
    pub fn named(mut self, mount_path: &str, description: &str) -> Self {
        self.mount_path = mount_path.to_owned();
        self.log.set_metrics_label(mount_path);
        self.description = description.to_owned();
        self
    }

    /// The configured `file_path`.
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// The directory holding the log's segments.
    pub fn dir(&self) -> &Path {
        self.log.log_dir().dir()
    }

    /// The durable log behind the device: readers, checkpoints, retention,
    /// rotation.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// fsync calls made so far (one per group-commit batch).
    pub fn fsync_count(&self) -> u64 {
        self.log.fsync_count()
    }

    /// Events written and synced so far.
    pub fn events_written(&self) -> u64 {
        self.log.records_written()
    }

    /// Hash a copy of `event` and serialize it as one JSON object.
    fn encode(&self, event: &AuditEvent) -> Result<Vec<u8>, AuditError> {
        let mut ev = event.clone();
        if self.options.elide_list_responses {
            elide_list_response(&mut ev);
        }
        hash_event(&mut ev, &self.salt, self.options.hash_options());
        serde_json::to_vec(&ev).map_err(|e| AuditError::Encode(e.to_string()))
    }

    /// Hash `event`, append it durably and return its sequence number in
    /// the log.
    pub async fn record(&self, event: &AuditEvent) -> Result<u64, AuditError> {
        let payload = self.encode(event)?;
        self.log.append(payload).await
    }
}

#[async_trait]
impl AuditDevice for FileDevice {
    fn path(&self) -> &str {
        &self.mount_path
    }

    fn kind(&self) -> &str {
        "file"
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn options(&self) -> BTreeMap<String, String> {
        self.shown_options.clone()
    }

    async fn log(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.record(event).await.map(|_| ())
    }

    async fn log_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let payloads = events
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.log.append_many(payloads).await.map(|_| ())
    }

    fn encode(&self, event: &AuditEvent) -> Option<Result<EncodedEvent, AuditError>> {
        // Read before encoding: a record appended later has a larger seq.
        let log_seq = self.log.durable_seq();
        Some(FileDevice::encode(self, event).map(|bytes| EncodedEvent {
            device: self.mount_path.clone(),
            log_seq,
            bytes,
        }))
    }

    async fn log_encoded_then(
        &self,
        encoded: &EncodedEvent,
        event: &AuditEvent,
    ) -> Result<(), AuditError> {
        let payloads = vec![encoded.bytes.clone(), FileDevice::encode(self, event)?];
        self.log.append_many(payloads).await.map(|_| ())
    }

    fn hash(&self, input: &str) -> String {
        hmac_sha256(&self.salt, input)
    }

    /// Rotate: seal the active segment and start a new one.
    async fn reopen(&self) -> Result<(), AuditError> {
        self.log.roll().await.map(|_| ())
    }

    async fn shutdown(&self) {
        self.log.shutdown().await;
    }

    fn local_log(&self) -> Option<Arc<AuditLog>> {
        Some(self.log.clone())
    }

    fn health(&self) -> Result<(), AuditError> {
        self.log.health()
    }
}
