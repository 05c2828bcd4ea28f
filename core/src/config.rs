//! Server configuration: the Vault/OpenBao-shaped HCL file given to
//! `custos server -config server.hcl`, or the fixed dev-mode configuration.
//!
//! Data comes from a file (or a string, in tests) and goes to
//! [`crate::server`], which opens storage, builds the core and binds the
//! listeners from the typed [`ServerConfig`] returned here.
//!
//! The file is parsed with `hcl-rs` into an [`hcl::Body`], which this module
//! walks by hand rather than deserialising: that way every mistake names the
//! file and the exact key (`server.hcl: listener "tcp".tls_disable: expected a
//! bool, got "maybe"`), unknown keys list the keys that are allowed, and
//! syntax errors carry the line and column hcl-rs reports. Error messages never
//! echo the source line or audit option values, since those may hold secrets.
//!
//! Accepted shape (a subset of OpenBao's, plus Custos' audit devices):
//!
//! ```hcl
//! ui = false
//! log_level = "info"                 # trace, debug, info, warn, error
//! disable_mlock = true               # accepted; Custos never mlocks
//! api_addr = "http://127.0.0.1:8200"
//! cluster_addr = "http://127.0.0.1:8201"
//! cluster_name = "custos-prod"
//! default_lease_ttl = "768h"         # Go duration or integer seconds
//! max_lease_ttl = "768h"
//!
//! storage "raft" {                   # exactly one; only "raft"
//!   path    = "/var/lib/custos/raft" # required
//!   node_id = "node1"                # required; see ServerConfig::raft_node_id_u64
//!   retry_join {                     # any number: join a cluster through these
//!     leader_api_addr = "https://10.0.0.1:8200"
//!     leader_ca_cert_file     = "/etc/custos/ca.pem"     # trust only this CA (or leader_ca_cert = PEM)
//!     leader_client_cert_file = "/etc/custos/client.pem" # client certificate (or leader_client_cert)
//!     leader_client_key_file  = "/etc/custos/client.key" # its key (or leader_client_key)
//!     leader_tls_servername   = "custos.example.com"     # name the leader's certificate must carry
//!   }
//! }
//!
//! listener "tcp" {                   # one or more
//!   address          = "127.0.0.1:8200"
//!   tls_disable      = true          # also "true"/"1"/1, as Vault accepts
//!   tls_cert_file    = "/etc/custos/tls.crt"
//!   tls_key_file     = "/etc/custos/tls.key"
//!   max_request_size = 33554432      # 0/unset = 32 MiB, negative = no limit
//!   telemetry { unauthenticated_metrics_access = true }
//! }
//!
//! telemetry {
//!   metrics_prefix = "custos"
//!   prometheus_retention_time = "24h"
//!   disable_hostname = true
//!   unauthenticated_metrics_access = false  # default for listeners that do not set it
//!   otlp_endpoint = "http://127.0.0.1:4318"  # OTLP http/protobuf collector; spans to /v1/traces
//!                                            # (else OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; see crate::traces)
//! }
//!
//! audit "file" "file" {              # type, path
//!   description = "local audit log"
//!   local = false
//!   options {                        # free-form; validated by the device
//!     file_path = "/var/lib/custos/audit"
//!   }
//! }
//! ```
//!
//! Nested blocks without labels (`options`, `telemetry`) may also be written
//! as object attributes (`options = { brokers = "k:9092", topic = "t" }`);
//! that is the only way to put them on one line, because HCL 2 does not allow
//! a one-line block inside a one-line block.
//!
//! Decision on `unauthenticated_metrics_access`: Vault only has it per
//! listener. Custos also accepts it in the top-level `telemetry` block as the
//! default for every listener whose own `telemetry` block does not set it; a
//! listener's own setting always wins. The resolved value is stored on each
//! [`ListenerConfig`], so consumers only ever look at the listener.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hcl::{Block, Body, Expression, Object, ObjectKey, Structure};
use serde::{Deserialize, Serialize};

use crate::logical::parse_duration;

/// Listener address when a `listener "tcp"` block does not set one (Vault's).
pub const DEFAULT_LISTENER_ADDRESS: &str = "127.0.0.1:8200";
/// Vault's system maximum lease TTL (768h), used when `max_lease_ttl` is unset.
pub const DEFAULT_MAX_LEASE_TTL: i64 = 768 * 3600;
/// Default of `telemetry.prometheus_retention_time` (24h), in seconds.
pub const DEFAULT_PROMETHEUS_RETENTION: i64 = 24 * 3600;
/// Default of `telemetry.metrics_prefix`.
pub const DEFAULT_METRICS_PREFIX: &str = "custos";
/// Raft node id of a dev-mode server.
pub const DEV_NODE_ID: &str = "custos-dev";

const TOP_KEYS: &[&str] = &[
    "ui",
    "log_level",
    "disable_mlock",
    "api_addr",
    "cluster_addr",
    "cluster_name",
    "default_lease_ttl",
    "max_lease_ttl",
    "storage",
    "listener",
    "telemetry",
    "audit",
    "seal",
];
const RAFT_KEYS: &[&str] = &[
    "path",
    "node_id",
    "retry_join",
    "snapshot_threshold",
    "trailing_logs",
    "snapshot_interval",
];
const RETRY_JOIN_KEYS: &[&str] = &[
    "leader_api_addr",
    "leader_ca_cert_file",
    "leader_client_cert_file",
    "leader_client_key_file",
    "leader_ca_cert",
    "leader_client_cert",
    "leader_client_key",
    "leader_tls_servername",
];
const LISTENER_KEYS: &[&str] = &[
    "address",
    "tls_disable",
    "tls_cert_file",
    "tls_key_file",
    "max_request_size",
    "telemetry",
    "disable_unauthed_generate_root_endpoints",
    "disable_unauthed_rekey_endpoints",
    "cluster_address",
];
const LISTENER_TELEMETRY_KEYS: &[&str] = &["unauthenticated_metrics_access"];
const TELEMETRY_KEYS: &[&str] = &[
    "metrics_prefix",
    "prometheus_retention_time",
    "disable_hostname",
    "unauthenticated_metrics_access",
    "otlp_endpoint",
];
const AUDIT_KEYS: &[&str] = &["description", "local", "options"];
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// A configuration mistake. `Display` is the whole message, naming the file
/// and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read config file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid HCL.
    #[error("{file}:{line}:{column}: HCL syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key that is not allowed where it appears.
    #[error("{file}: unknown key \"{key}\" {context} (expected one of: {expected}){hint}")]
    UnknownKey {
        file: String,
        key: String,
        /// `at the top level`, `in listener "tcp"`, ...
        context: String,
        /// The allowed keys, comma separated.
        expected: String,
        /// Empty, or `; ` followed by advice.
        hint: String,
    },
    /// A value of the wrong type (`got` describes what was found).
    #[error("{file}: {key}: expected {expected}, got {got}")]
    WrongType {
        file: String,
        key: String,
        expected: String,
        got: String,
    },
    /// A value of the right type that is not acceptable, or a missing or
    /// repeated key or block.
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Accepted for Vault compatibility; Custos has no web UI.
    pub ui: bool,
    /// One of trace, debug, info, warn, error (`err`/`warning` are
    /// normalised to `error`/`warn`).
    pub log_level: String,
    /// Accepted for Vault compatibility; Custos never mlocks.
    pub disable_mlock: bool,
    /// URL clients should use to reach this node; derived from the first
    /// listener when unset.
    pub api_addr: Option<String>,
    pub cluster_addr: Option<String>,
    pub cluster_name: Option<String>,
    /// Seconds; `None` (or 0 in the file) means the system default.
    pub default_lease_ttl: Option<i64>,
    /// Seconds; `None` (or 0 in the file) means [`DEFAULT_MAX_LEASE_TTL`].
    pub max_lease_ttl: Option<i64>,
    pub storage: StorageConfig,
    pub listeners: Vec<ListenerConfig>,
    pub telemetry: TelemetryConfig,
    /// Audit devices in file order.
    pub audit: Vec<AuditDeviceConfig>,
    /// `seal "<type>" { ... }` stanzas (auto-unseal, `crate::autoseal`): at
    /// most one enabled and one `disabled = "true"` (the seal being migrated
    /// from). None means the Shamir seal.
    pub seals: Vec<SealStanza>,
    /// Set only by [`ServerConfig::dev`]; a dev config may have no listener.
    pub dev: bool,
}

/// `storage "raft" { ... }`: the only storage Custos has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Directory of the Raft log and state machine.
    pub path: PathBuf,
    /// This node's name in the cluster (a string, as in Vault); see
    /// [`ServerConfig::raft_node_id_u64`] for the numeric Raft id.
    pub node_id: String,
    /// `retry_join { leader_api_addr }` blocks: a node with any joins the
    /// cluster through them instead of starting a cluster of its own.
    pub retry_join: Vec<RetryJoin>,
    /// `snapshot_threshold`, `trailing_logs`, `snapshot_interval` (Vault's
    /// names): when snapshots are built and how much log stays behind them.
    pub snapshot: crate::storage::raft::SnapshotTuning,
}

/// One `retry_join { ... }` block of `storage "raft"`: where to join, and
/// (Vault's keys) how to talk TLS to that leader's API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryJoin {
    /// The API address of a node of the cluster to join.
    pub leader_api_addr: String,
    /// PEM file of the CA the leader's API certificate must chain to (then
    /// only that CA is trusted).
    pub leader_ca_cert_file: Option<PathBuf>,
    /// PEM file of a client certificate to present to the leader.
    pub leader_client_cert_file: Option<PathBuf>,
    /// PEM file of that client certificate's key.
    pub leader_client_key_file: Option<PathBuf>,
    /// The same three, inline (PEM text).
    pub leader_ca_cert: Option<String>,
    pub leader_client_cert: Option<String>,
    pub leader_client_key: Option<crate::logical::Secret>,
    /// The name the leader's certificate must carry, when it is not the
    /// host of `leader_api_addr`.
    pub leader_tls_servername: Option<String>,
}

/// A `retry_join` block's TLS settings with the files read: PEM text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderTls {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<crate::logical::Secret>,
    pub servername: Option<String>,
}

impl LeaderTls {
    /// Does this ask for anything but the default HTTPS client?
    pub fn is_custom(&self) -> bool {
        self.ca_cert.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.servername.is_some()
    }

    /// Check the PEM text: `Err((key, message))` names the offending key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        use crate::storage::raft::tls::{parse_certs, parse_key};
        if let Some(ca) = &self.ca_cert {
            parse_certs(ca.as_bytes()).map_err(|m| ("leader_ca_cert", m))?;
        }
        match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                parse_certs(c.as_bytes()).map_err(|m| ("leader_client_cert", m))?;
                parse_key(k.expose().as_bytes()).map_err(|m| ("leader_client_key", m))?;
            }
            (Some(_), None) => {
                return Err((
                    "leader_client_key",
                    "is required with leader_client_cert".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "leader_client_cert",
                    "is required with leader_client_key".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(name) = &self.servername
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err((
                "leader_tls_servername",
                format!("{:?} is not a DNS name or IP address", truncate(name)),
            ));
        }
        Ok(())
    }
}

impl RetryJoin {
    /// Read the TLS files and check the PEM text. `Err((key, message))`
    /// names the key (and, for a file, its path).
    pub fn leader_tls(&self) -> Result<LeaderTls, (&'static str, String)> {
        fn pick(
            file_key: &'static str,
            file: &Option<PathBuf>,
            inline_key: &'static str,
            inline: Option<&str>,
        ) -> Result<Option<String>, (&'static str, String)> {
            match (file, inline) {
                (Some(_), Some(_)) => Err((
                    file_key,
                    format!("set {file_key} or {inline_key}, not both"),
                )),
                (Some(f), None) => std::fs::read_to_string(f)
                    .map(Some)
                    .map_err(|e| (file_key, format!("cannot read {}: {e}", f.display()))),
                (None, Some(pem)) => Ok(Some(pem.to_string())),
                (None, None) => Ok(None),
            }
        }
        let tls = LeaderTls {
            ca_cert: pick(
                "leader_ca_cert_file",
                &self.leader_ca_cert_file,
                "leader_ca_cert",
                self.leader_ca_cert.as_deref(),
            )?,
            client_cert: pick(
                "leader_client_cert_file",
                &self.leader_client_cert_file,
                "leader_client_cert",
                self.leader_client_cert.as_deref(),
            )?,
            client_key: pick(
                "leader_client_key_file",
                &self.leader_client_key_file,
                "leader_client_key",
                self.leader_client_key.as_ref().map(|k| k.expose()),
            )?
            .map(crate::logical::Secret::new),
            servername: self.leader_tls_servername.clone(),
        };
        // A PEM problem in text read from a file names the file.
        tls.check().map_err(|(key, m)| {
            let file = match key {
                "leader_ca_cert" => self
                    .leader_ca_cert_file
                    .as_ref()
                    .map(|f| ("leader_ca_cert_file", f)),
                "leader_client_cert" => self
                    .leader_client_cert_file
                    .as_ref()
                    .map(|f| ("leader_client_cert_file", f)),
                "leader_client_key" => self
                    .leader_client_key_file
                    .as_ref()
                    .map(|f| ("leader_client_key_file", f)),
                _ => None,
            };
            match file {
                Some((fk, f)) if !m.starts_with("is required") => {
                    (fk, format!("{}: {m}", f.display()))
                }
                _ => (key, m),
            }
        })?;
        Ok(tls)
    }
}

/// One `listener "tcp" { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// `host:port` to bind.
    pub address: String,
    pub tls_disable: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Bytes; `None` or 0 = 32 MiB, negative = no limit (as in Vault).
    pub max_request_size: Option<i64>,
    pub telemetry: ListenerTelemetry,
    /// Serve Vault's unauthenticated `sys/generate-root/*` and `sys/rekey/*`
    /// (`crate::ceremony`): `disable_unauthed_generate_root_endpoints =
    /// false` / `disable_unauthed_rekey_endpoints = false`. Off by default,
    /// as in OpenBao 2.7.2.
    pub unauthed_generate_root: bool,
    pub unauthed_rekey: bool,
    /// `cluster_address`: where the cluster listener binds when it must
    /// differ from the advertised top-level `cluster_addr` (NAT, a proxy in
    /// front of the node), as in Vault.
    pub cluster_address: Option<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            address: DEFAULT_LISTENER_ADDRESS.to_string(),
            tls_disable: false,
            tls_cert_file: None,
            tls_key_file: None,
            max_request_size: None,
            telemetry: ListenerTelemetry::default(),
            unauthed_generate_root: false,
            unauthed_rekey: false,
            cluster_address: None,
        }
    }
}

/// `telemetry { ... }` inside a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerTelemetry {
    /// Serve `/v1/sys/metrics` without a token. Resolved: the listener's own
    /// setting, else the top-level `telemetry` one, else false.
    pub unauthenticated_metrics_access: bool,
}

/// The top-level `telemetry { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub metrics_prefix: String,
    /// Seconds; how long Prometheus samples are kept (Vault's default 24h).
    pub prometheus_retention_time: i64,
    pub disable_hostname: bool,
    /// Default for listeners whose own `telemetry` block does not set it.
    pub unauthenticated_metrics_access: bool,
    /// OTLP/HTTP collector base URL (`http://collector:4318`); spans are
    /// POSTed (http/protobuf) to `<endpoint>/v1/traces`. When `None`, the
    /// `OTEL_EXPORTER_OTLP_*` variables decide (see `crate::traces`), and
    /// without them there is no tracing.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_prefix: DEFAULT_METRICS_PREFIX.to_string(),
            prometheus_retention_time: DEFAULT_PROMETHEUS_RETENTION,
            disable_hostname: false,
            unauthenticated_metrics_access: false,
            otlp_endpoint: None,
        }
    }
}

/// The audit device types Custos has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDeviceKind {
    /// The durable local log; the source of truth.
    File,
    /// Shipper from the local log to Kafka.
    Kafka,
    /// Shipper from the local log to Elasticsearch.
    Elasticsearch,
}

impl AuditDeviceKind {
    pub const ALL: [AuditDeviceKind; 3] = [
        AuditDeviceKind::File,
        AuditDeviceKind::Kafka,
        AuditDeviceKind::Elasticsearch,
    ];

    /// The name used in config and in `sys/audit` (`"file"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDeviceKind::File => "file",
            AuditDeviceKind::Kafka => "kafka",
            AuditDeviceKind::Elasticsearch => "elasticsearch",
        }
    }

    /// The kind named `s`, if Custos has it.
    pub fn from_name(s: &str) -> Option<AuditDeviceKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AuditDeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for AuditDeviceKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AuditDeviceKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One `audit "<type>" "<path>" { ... }` block.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDeviceConfig {
    pub kind: AuditDeviceKind,
    /// Always ends with `/` (`"file"` in the file becomes `"file/"`).
    pub path: String,
    pub description: String,
    pub local: bool,
    /// Device options, all values as strings; validated by the device.
    pub options: BTreeMap<String, String>,
}

/// Debug output redacts option values whose key looks like a credential
/// (Kafka SASL passwords, Elasticsearch API keys, ...).
impl fmt::Debug for AuditDeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Options<'a>(&'a BTreeMap<String, String>);
        impl fmt::Debug for Options<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut m = f.debug_map();
                for (k, v) in self.0 {
                    if is_sensitive_option(k) {
                        m.entry(k, &"<redacted>");
                    } else {
                        m.entry(k, v);
                    }
                }
                m.finish()
            }
        }
        f.debug_struct("AuditDeviceConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("description", &self.description)
            .field("local", &self.local)
            .field("options", &Options(&self.options))
            .finish()
    }
}

fn is_sensitive_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "auth"]
        .iter()
        .any(|s| k.contains(s))
}

/// Map a Raft node name to openraft's numeric id, the same on every node and
/// every platform: a canonical decimal number (`"3"`, not `"03"`) is used
/// as-is, anything else is hashed with 64-bit FNV-1a over its UTF-8 bytes.
pub fn raft_node_id_from_name(node_id: &str) -> u64 {
    if let Ok(n) = node_id.parse::<u64>()
        && n.to_string() == node_id
    {
        return n;
    }
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    node_id.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Read and parse the config file at `path` (named in errors as given).
pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    parse(&src, &file)
}

/// Parse config text; `file` names the source in errors. The result has
/// passed [`ServerConfig::validate`].
pub fn parse(src: &str, file: &str) -> Result<ServerConfig, ConfigError> {
    let body = hcl::parse(src).map_err(|e| syntax_error(file, e))?;
    let top = Section::from_body(file, String::new(), &body);
    top.check_keys(TOP_KEYS)?;

    let log_level = match top.string("log_level")? {
        Some(l) => {
            normalize_log_level(&l).ok_or_else(|| top.invalid("log_level", bad_log_level(&l)))?
        }
        None => "info".to_string(),
    };
    let telemetry = parse_telemetry(&top)?;
    let storage = parse_storage(&top)?;
    let listeners = parse_listeners(&top, &telemetry)?;
    let audit = parse_audit(&top)?;
    let seals = parse_seals(&top)?;

    let cfg = ServerConfig {
        ui: top.bool("ui")?.unwrap_or(false),
        log_level,
        disable_mlock: top.bool("disable_mlock")?.unwrap_or(false),
        api_addr: top.string("api_addr")?,
        cluster_addr: top.string("cluster_addr")?,
        cluster_name: top.string("cluster_name")?,
        default_lease_ttl: top.duration("default_lease_ttl")?.filter(|s| *s > 0),
        max_lease_ttl: top.duration("max_lease_ttl")?.filter(|s| *s > 0),
        storage,
        listeners,
        telemetry,
        audit,
        seals,
        dev: false,
    };
    cfg.validate(file)?;
    Ok(cfg)
}

impl ServerConfig {
    /// The dev-mode configuration: one plain-HTTP listener on `listen` with
    /// unauthenticated metrics, Raft in `data_dir/raft` as node
    /// [`DEV_NODE_ID`], and a file audit device at `file/` writing to
    /// `data_dir/audit`.
    pub fn dev(listen: SocketAddr, data_dir: &Path) -> ServerConfig {
        let mut options = BTreeMap::new();
        options.insert(
            "file_path".to_string(),
            data_dir.join("audit").to_string_lossy().into_owned(),
        );
        ServerConfig {
            ui: false,
            log_level: "info".to_string(),
            disable_mlock: true,
            api_addr: None,
            cluster_addr: None,
            cluster_name: None,
            default_lease_ttl: None,
            max_lease_ttl: None,
            storage: StorageConfig {
                path: data_dir.join("raft"),
                node_id: DEV_NODE_ID.to_string(),
                retry_join: Vec::new(),
                snapshot: Default::default(),
            },
            listeners: vec![ListenerConfig {
                address: listen.to_string(),
                tls_disable: true,
                telemetry: ListenerTelemetry {
                    unauthenticated_metrics_access: true,
                },
                ..ListenerConfig::default()
            }],
            telemetry: TelemetryConfig::default(),
            audit: vec![AuditDeviceConfig {
                kind: AuditDeviceKind::File,
                path: "file/".to_string(),
                description: "dev-mode local audit log".to_string(),
                local: false,
                options,
            }],
            seals: Vec::new(),
            dev: true,
        }
    }

    /// This node's openraft id, from `storage.node_id`
    /// (see [`raft_node_id_from_name`]).
    pub fn raft_node_id_u64(&self) -> u64 {
        raft_node_id_from_name(&self.storage.node_id)
    }

    /// Is this node configured for a multi-node cluster (`cluster_addr` set
    /// or `retry_join` blocks)? Only then does it listen for Raft RPCs.
    pub fn is_clustered(&self) -> bool {
        !self.dev && (self.cluster_addr.is_some() || !self.storage.retry_join.is_empty())
    }

    /// The address the cluster listener binds, and the advertised
    /// `cluster_addr`: as configured, else Vault's default of the first
    /// listener's port + 1 (on the host of `api_addr` when advertised).
    pub fn cluster_addresses(&self) -> Option<(String, String)> {
        let listener = self.listeners.first()?;
        let (host, port) = listener.address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let default_port = if port == 0 { 0 } else { port.checked_add(1)? };
        let scheme = if listener.tls_disable {
            "http"
        } else {
            "https"
        };
        match &self.cluster_addr {
            Some(url) => {
                let authority = url
                    .split_once("://")
                    .map(|(_, r)| r)
                    .unwrap_or(url)
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let bind = match authority.parse::<SocketAddr>() {
                    Ok(a) => a.to_string(),
                    Err(_) => {
                        let p = authority.rsplit_once(':').map(|(_, p)| p).unwrap_or("8201");
                        format!("{host}:{p}")
                    }
                };
                let bind = listener.cluster_address.clone().unwrap_or(bind);
                Some((bind, url.trim_end_matches('/').to_string()))
            }
            None => {
                let bind = format!("{host}:{default_port}");
                let api_host = self
                    .api_addr
                    .as_deref()
                    .and_then(|u| u.split_once("://"))
                    .and_then(|(_, r)| r.split('/').next())
                    .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
                    .unwrap_or_else(|| host.to_string());
                Some((bind, format!("{scheme}://{api_host}:{default_port}")))
            }
        }
    }

    /// Cross-field and environment checks: required values present, addresses
    /// well formed, TLS files present when TLS is on, lease TTLs ordered,
    /// audit paths unique. [`parse`] already calls this; call it again for
    /// configs built in code.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        if normalize_log_level(&self.log_level).as_deref() != Some(self.log_level.as_str()) {
            return Err(invalid("log_level", bad_log_level(&self.log_level)));
        }
        for (key, v) in [
            ("api_addr", &self.api_addr),
            ("cluster_addr", &self.cluster_addr),
        ] {
            if let Some(url) = v {
                check_url(url).map_err(|m| invalid(key, m))?;
            }
        }
        if let Some(name) = &self.cluster_name
            && name.trim().is_empty()
        {
            return Err(invalid("cluster_name", "must not be empty".into()));
        }
        let max = self.max_lease_ttl.unwrap_or(DEFAULT_MAX_LEASE_TTL);
        if let Some(default) = self.default_lease_ttl
            && default > max
        {
            let key = if self.max_lease_ttl.is_some() {
                "max_lease_ttl"
            } else {
                "the system maximum"
            };
            return Err(invalid(
                "default_lease_ttl",
                format!("{default}s is greater than {key} ({max}s)"),
            ));
        }

        if self.storage.path.as_os_str().is_empty() {
            return Err(invalid("storage \"raft\".path", "is required".into()));
        }
        if self.storage.node_id.trim().is_empty() {
            return Err(invalid(
                "storage \"raft\".node_id",
                "must not be empty".into(),
            ));
        }

        if self.listeners.is_empty() && !self.dev {
            return Err(invalid(
                "listener",
                "at least one listener \"tcp\" { address = \"...\" } block is required".into(),
            ));
        }
        let mut addresses = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let name = listener_name(i);
            check_host_port(&l.address).map_err(|m| invalid(&format!("{name}.address"), m))?;
            if !addresses.insert(l.address.as_str()) {
                return Err(invalid(
                    &format!("{name}.address"),
                    format!("\"{}\" is used by another listener", l.address),
                ));
            }
            if !l.tls_disable {
                for (key, f) in [
                    ("tls_cert_file", &l.tls_cert_file),
                    ("tls_key_file", &l.tls_key_file),
                ] {
                    let key = format!("{name}.{key}");
                    let Some(f) = f else {
                        return Err(invalid(
                            &key,
                            "is required unless tls_disable = true".into(),
                        ));
                    };
                    match std::fs::metadata(f) {
                        Ok(m) if m.is_file() => {}
                        Ok(_) => {
                            return Err(invalid(&key, format!("{} is not a file", f.display())));
                        }
                        Err(e) => {
                            return Err(invalid(&key, format!("cannot read {}: {e}", f.display())));
                        }
                    }
                }
            }
        }

        for (i, rj) in self.storage.retry_join.iter().enumerate() {
            rj.leader_tls().map_err(|(key, m)| {
                invalid(&format!("storage \"raft\".retry_join[{i}].{key}"), m)
            })?;
        }

        check_metrics_prefix(&self.telemetry.metrics_prefix)
            .map_err(|m| invalid("telemetry.metrics_prefix", m))?;
        if let Some(ep) = &self.telemetry.otlp_endpoint {
            check_url(ep).map_err(|m| invalid("telemetry.otlp_endpoint", m))?;
        }
        if self.telemetry.prometheus_retention_time < 0 {
            return Err(invalid(
                "telemetry.prometheus_retention_time",
                "must not be negative".into(),
            ));
        }

        let mut paths = BTreeSet::new();
        for d in &self.audit {
            let key = format!("audit \"{}\" \"{}\"", d.kind, d.path);
            normalize_audit_path(&d.path)
                .filter(|p| *p == d.path)
                .ok_or_else(|| invalid(&key, bad_audit_path()))?;
            if !paths.insert(d.path.as_str()) {
                return Err(invalid(
                    &key,
                    format!("audit path \"{}\" is declared more than once", d.path),
                ));
            }
        }
        Ok(())
    }
}

fn syntax_error(file: &str, e: hcl::Error) -> ConfigError {
    match e {
        hcl::Error::Parse(p) => ConfigError::Syntax {
            file: file.to_string(),
            line: p.location().line(),
            column: p.location().column(),
            message: p.message().to_string(),
        },
        other => ConfigError::Syntax {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: other.to_string(),
        },
    }
}

fn listener_name(i: usize) -> String {
    if i == 0 {
        "listener \"tcp\"".to_string()
    } else {
        format!("listener \"tcp\" #{}", i + 1)
    }
}

fn normalize_log_level(l: &str) -> Option<String> {
    let l = l.trim().to_ascii_lowercase();
    let l = match l.as_str() {
        "err" => "error".to_string(),
        "warning" => "warn".to_string(),
        _ => l,
    };
    LOG_LEVELS.contains(&l.as_str()).then_some(l)
}

fn bad_log_level(l: &str) -> String {
    format!(
        "unknown log level {:?} (expected one of: {})",
        l,
        LOG_LEVELS.join(", ")
    )
}

fn bad_audit_path() -> String {
    "the path must be non-empty and relative (no leading \"/\", no empty or \"..\" segments)".into()
}

/// `"file"` → `"file/"`; `None` for unusable paths.
fn normalize_audit_path(p: &str) -> Option<String> {
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|s| s.is_empty() || s == ".." || s == ".")
    {
        return None;
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(format!("{trimmed}/"))
}

/// `host:port` where host is an IP (IPv6 in brackets) or a DNS name.
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "expected host:port (e.g. \"127.0.0.1:8200\"), got {:?}",
            truncate(addr)
        )
    };
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if !is_dns_name(host) {
        return Err(bad());
    }
    Ok(())
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        // All digits and dots would be an IPv4 address, and that failed to parse.
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `http(s)://host[:port][/path]`.
fn check_url(url: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "expected an http:// or https:// URL such as \"https://custos.example.com:8200\", got {:?}",
            truncate(url)
        )
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let host_ok = if authority.parse::<SocketAddr>().is_ok() || check_host_port(authority).is_ok() {
        true
    } else if let Some(v6) = authority
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
    {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        authority.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(authority)
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(())
}

fn check_metrics_prefix(p: &str) -> Result<(), String> {
    let mut chars = p.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid Prometheus metric name prefix (letters, digits, '_' and ':', not starting with a digit)",
            truncate(p)
        ))
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// How a value found in the file is shown in a type error.
fn describe(e: &Expression) -> String {
    match e {
        Expression::Null => "null".into(),
        Expression::Bool(b) => b.to_string(),
        Expression::Number(n) => n.to_string(),
        Expression::String(s) => format!("{:?}", truncate(s)),
        Expression::Array(_) => "a list".into(),
        Expression::Object(_) => "an object".into(),
        Expression::TemplateExpr(_) => "a template (interpolation is not supported)".into(),
        Expression::Parenthesis(inner) => describe(inner),
        _ => "an expression (only literal values are supported)".into(),
    }
}

fn unwrap_parens(e: &Expression) -> &Expression {
    match e {
        Expression::Parenthesis(inner) => unwrap_parens(inner),
        other => other,
    }
}

/// One item of a section: `key = value` or `key "label" { ... }`.
#[derive(Clone, Copy)]
enum Item<'a> {
    Attr(&'a Expression),
    Block(&'a Block),
}

/// A body being read: the top level, a block, or an object attribute used
/// as a block. `name` is how keys inside it are prefixed in messages.
struct Section<'a> {
    file: &'a str,
    name: String,
    items: Vec<(&'a str, Item<'a>)>,
}

impl<'a> Section<'a> {
    fn from_body(file: &'a str, name: String, body: &'a Body) -> Self {
        let items = body
            .iter()
            .map(|s| match s {
                Structure::Attribute(a) => (a.key(), Item::Attr(a.expr())),
                Structure::Block(b) => (b.identifier(), Item::Block(b)),
            })
            .collect();
        Section { file, name, items }
    }

    fn from_object(
        file: &'a str,
        name: String,
        obj: &'a Object<ObjectKey, Expression>,
    ) -> Result<Self, ConfigError> {
        let mut items = Vec::new();
        for (k, v) in obj.iter() {
            let key = match k {
                ObjectKey::Identifier(id) => id.as_str(),
                ObjectKey::Expression(Expression::String(s)) => s.as_str(),
                other => {
                    let got = match other {
                        ObjectKey::Expression(e) => describe(e),
                        _ => "an unsupported key".to_string(),
                    };
                    return Err(ConfigError::WrongType {
                        file: file.to_string(),
                        key: name,
                        expected: "object keys that are names or strings".into(),
                        got,
                    });
                }
            };
            items.push((key, Item::Attr(v)));
        }
        Ok(Section { file, name, items })
    }

    /// `key` as shown in messages: `listener "tcp".tls_disable`.
    fn path(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: self.path(key),
            message,
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, got: String) -> ConfigError {
        ConfigError::WrongType {
            file: self.file.to_string(),
            key: self.path(key),
            expected: expected.to_string(),
            got,
        }
    }

    fn check_keys(&self, allowed: &[&'static str]) -> Result<(), ConfigError> {
        for (key, _) in &self.items {
            if !allowed.contains(key) {
                let context = if self.name.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in {}", self.name)
                };
                let hint = match (self.name.as_str(), *key) {
                    ("", "backend") => "; `backend` is Vault's old name for `storage`",
                    ("", "ha_storage" | "ha_backend") => {
                        "; Raft storage is already highly available"
                    }
                    _ => "",
                };
                return Err(ConfigError::UnknownKey {
                    file: self.file.to_string(),
                    key: key.to_string(),
                    context,
                    expected: allowed.join(", "),
                    hint: hint.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The value of `key = value`; a block named `key` is an error.
    fn attr(&self, key: &str) -> Result<Option<&'a Expression>, ConfigError> {
        match self.items.iter().find(|(k, _)| *k == key).map(|(_, i)| *i) {
            None => Ok(None),
            Some(Item::Attr(e)) => Ok(Some(unwrap_parens(e))),
            Some(Item::Block(_)) => {
                Err(self.wrong_type(key, &format!("a value (`{key} = ...`)"), "a block".into()))
            }
        }
    }

    /// Every `key ... { }` block; `key = value` is an error.
    fn blocks(&self, key: &str, example: &str) -> Result<Vec<&'a Block>, ConfigError> {
        let mut out = Vec::new();
        for (k, item) in &self.items {
            if *k != key {
                continue;
            }
            match item {
                Item::Block(b) => out.push(*b),
                Item::Attr(e) => {
                    return Err(self.wrong_type(key, &format!("a block ({example})"), describe(e)));
                }
            }
        }
        Ok(out)
    }

    /// A label-less nested block `key { ... }` or object `key = { ... }`; at
    /// most one.
    fn nested(&self, key: &str) -> Result<Option<Section<'a>>, ConfigError> {
        let name = self.path(key);
        let mut found = None;
        for (k, item) in &self.items {
            if *k != key {
                continue;
            }
            if found.is_some() {
                return Err(self.invalid(key, "may appear only once".into()));
            }
            found = Some(match item {
                Item::Block(b) => {
                    if !b.labels().is_empty() {
                        return Err(
                            self.invalid(key, format!("takes no labels (write `{key} {{ ... }}`)"))
                        );
                    }
                    Section::from_body(self.file, name.clone(), b.body())
                }
                Item::Attr(e) => match unwrap_parens(e) {
                    Expression::Object(obj) => Section::from_object(self.file, name.clone(), obj)?,
                    other => {
                        return Err(self.wrong_type(
                            key,
                            &format!("a block (`{key} {{ ... }}`)"),
                            describe(other),
                        ));
                    }
                },
            });
        }
        Ok(found)
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.attr(key)? {
            None => Ok(None),
            Some(Expression::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", describe(other))),
        }
    }

    /// A bool as Vault reads one: `true`, `"true"`, `"1"`, `1`, `"f"`, ...
    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(e) = self.attr(key)? else {
            return Ok(None);
        };
        let v = match e {
            Expression::Bool(b) => Some(*b),
            Expression::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            // Go's strconv.ParseBool, which Vault uses.
            Expression::String(s) => match s.as_str() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
                _ => None,
            },
            _ => None,
        };
        v.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a bool", describe(e)))
    }

    /// An integer, as a number or a numeric string.
    fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(e) = self.attr(key)? else {
            return Ok(None);
        };
        let v = match e {
            Expression::Number(n) => n.as_i64().filter(|_| !n.is_f64()),
            Expression::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        v.map(Some)
            .ok_or_else(|| self.wrong_type(key, "an integer", describe(e)))
    }

    /// Seconds, from a Go duration string (`"768h"`) or integer seconds.
    fn duration(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(e) = self.attr(key)? else {
            return Ok(None);
        };
        let v = match e {
            Expression::Number(n) => n.as_i64().filter(|s| !n.is_f64() && *s >= 0),
            Expression::String(s) => parse_duration(s),
            _ => None,
        };
        v.map(Some).ok_or_else(|| {
            self.wrong_type(
                key,
                "a duration such as \"768h\", \"30m\" or integer seconds",
                describe(e),
            )
        })
    }
}

/// The single label of `kind "label" { }`, or an error showing the shape.
fn single_label<'a>(
    sec: &Section<'_>,
    b: &'a Block,
    key: &str,
    example: &str,
) -> Result<&'a str, ConfigError> {
    match b.labels() {
        [l] => Ok(l.as_str()),
        ls => Err(sec.invalid(
            key,
            format!(
                "expected one label (the {key} type), found {}; write {example}",
                ls.len()
            ),
        )),
    }
}

fn parse_telemetry(top: &Section<'_>) -> Result<TelemetryConfig, ConfigError> {
    let mut t = TelemetryConfig::default();
    let Some(sec) = top.nested("telemetry")? else {
        return Ok(t);
    };
    sec.check_keys(TELEMETRY_KEYS)?;
    if let Some(p) = sec.string("metrics_prefix")? {
        t.metrics_prefix = p;
    }
    if let Some(r) = sec.duration("prometheus_retention_time")? {
        t.prometheus_retention_time = r;
    }
    t.disable_hostname = sec.bool("disable_hostname")?.unwrap_or(false);
    t.unauthenticated_metrics_access = sec.bool("unauthenticated_metrics_access")?.unwrap_or(false);
    t.otlp_endpoint = sec.string("otlp_endpoint")?;
    Ok(t)
}

fn parse_storage(top: &Section<'_>) -> Result<StorageConfig, ConfigError> {
    const EXAMPLE: &str = "storage \"raft\" { path = \"...\", node_id = \"...\" }";
    let blocks = top.blocks("storage", EXAMPLE)?;
    let b = match blocks.as_slice() {
        [] => {
            return Err(top.invalid(
                "storage",
                format!("a storage \"raft\" block is required, e.g. {EXAMPLE}"),
            ));
        }
        [b] => *b,
        more => {
            return Err(top.invalid(
                "storage",
                format!("exactly one storage block is allowed, found {}", more.len()),
            ));
        }
    };
    let kind = single_label(top, b, "storage", "storage \"raft\" { ... }")?;
    let name = format!("storage {kind:?}");
    if kind != "raft" {
        return Err(ConfigError::Invalid {
            file: top.file.to_string(),
            key: name,
            message: format!(
                "storage type {kind:?} is not supported; Custos supports only \"raft\""
            ),
        });
    }
    let sec = Section::from_body(top.file, name, b.body());
    sec.check_keys(RAFT_KEYS)?;
    let path = sec
        .string("path")?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| sec.invalid("path", "is required (the directory for Raft data)".into()))?;
    let node_id = match sec.attr("node_id")? {
        Some(Expression::String(s)) => s.clone(),
        Some(Expression::Number(n)) if n.is_u64() => n.to_string(),
        Some(other) => return Err(sec.wrong_type("node_id", "a string", describe(other))),
        None => {
            return Err(sec.invalid(
                "node_id",
                "is required: a name unique to this node in the cluster, e.g. \"node1\"".into(),
            ));
        }
    };
    let mut retry_join = Vec::new();
    for (i, b) in sec
        .blocks("retry_join", "retry_join { leader_api_addr = \"...\" }")?
        .into_iter()
        .enumerate()
    {
        let name = format!("{}.retry_join[{i}]", sec.name);
        if !b.labels().is_empty() {
            return Err(sec.invalid(
                "retry_join",
                "takes no labels (write `retry_join { ... }`)".into(),
            ));
        }
        let rj = Section::from_body(top.file, name, b.body());
        rj.check_keys(RETRY_JOIN_KEYS)?;
        let addr = rj
            .string("leader_api_addr")?
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                rj.invalid(
                    "leader_api_addr",
                    "is required (the API address of a node of the cluster)".into(),
                )
            })?;
        check_url(&addr).map_err(|m| rj.invalid("leader_api_addr", m))?;
        let non_empty = |k: &str| -> Result<Option<String>, ConfigError> {
            match rj.string(k)? {
                Some(v) if v.trim().is_empty() => Err(rj.invalid(k, "must not be empty".into())),
                other => Ok(other),
            }
        };
        retry_join.push(RetryJoin {
            leader_api_addr: addr,
            leader_ca_cert_file: non_empty("leader_ca_cert_file")?.map(PathBuf::from),
            leader_client_cert_file: non_empty("leader_client_cert_file")?.map(PathBuf::from),
            leader_client_key_file: non_empty("leader_client_key_file")?.map(PathBuf::from),
            leader_ca_cert: non_empty("leader_ca_cert")?,
            leader_client_cert: non_empty("leader_client_cert")?,
            leader_client_key: non_empty("leader_client_key")?.map(crate::logical::Secret::new),
            leader_tls_servername: non_empty("leader_tls_servername")?,
        });
    }
    let mut snapshot = crate::storage::raft::SnapshotTuning::default();
    for (key, slot) in [
        ("snapshot_threshold", &mut snapshot.threshold),
        ("trailing_logs", &mut snapshot.trailing_logs),
    ] {
        if let Some(n) = sec.int(key)? {
            *slot = u64::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| sec.invalid(key, format!("must be a positive integer, got {n}")))?;
        }
    }
    if let Some(secs) = sec.duration("snapshot_interval")? {
        snapshot.interval = std::time::Duration::from_secs(secs.unsigned_abs());
    }
    Ok(StorageConfig {
        path: PathBuf::from(path),
        node_id,
        retry_join,
        snapshot,
    })
}

fn parse_listeners(
    top: &Section<'_>,
    telemetry: &TelemetryConfig,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut out = Vec::new();
    for (i, b) in top
        .blocks("listener", "listener \"tcp\" { address = \"...\" }")?
        .into_iter()
        .enumerate()
    {
        let kind = single_label(top, b, "listener", "listener \"tcp\" { ... }")?;
        if kind != "tcp" {
            return Err(ConfigError::Invalid {
                file: top.file.to_string(),
                key: format!("listener {kind:?}"),
                message: format!(
                    "listener type {kind:?} is not supported; Custos supports only \"tcp\""
                ),
            });
        }
        let sec = Section::from_body(top.file, listener_name(i), b.body());
        sec.check_keys(LISTENER_KEYS)?;
        let unauthenticated_metrics_access = match sec.nested("telemetry")? {
            Some(t) => {
                t.check_keys(LISTENER_TELEMETRY_KEYS)?;
                t.bool("unauthenticated_metrics_access")?
            }
            None => None,
        }
        .unwrap_or(telemetry.unauthenticated_metrics_access);
        out.push(ListenerConfig {
            address: sec
                .string("address")?
                .unwrap_or_else(|| DEFAULT_LISTENER_ADDRESS.to_string()),
            tls_disable: sec.bool("tls_disable")?.unwrap_or(false),
            tls_cert_file: sec.string("tls_cert_file")?.map(PathBuf::from),
            tls_key_file: sec.string("tls_key_file")?.map(PathBuf::from),
            max_request_size: sec.int("max_request_size")?,
            telemetry: ListenerTelemetry {
                unauthenticated_metrics_access,
            },
            unauthed_generate_root: !sec
                .bool("disable_unauthed_generate_root_endpoints")?
                .unwrap_or(true),
            unauthed_rekey: !sec
                .bool("disable_unauthed_rekey_endpoints")?
                .unwrap_or(true),
            cluster_address: sec.string("cluster_address")?,
        });
    }
    Ok(out)
}

/// One `seal "<type>" { ... }` stanza: its type, whether it is the
/// disabled (migrated-from) seal, and its other keys as strings, checked by
/// [`crate::autoseal::check_stanza`]. `Debug` redacts credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SealStanza {
    pub kind: String,
    pub disabled: bool,
    pub options: BTreeMap<String, String>,
}

impl fmt::Debug for SealStanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown =
                    if is_sensitive_option(k) && !k.ends_with("_id") && !k.starts_with("tls_") {
                        "<redacted>"
                    } else {
                        v.as_str()
                    };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("SealStanza")
            .field("kind", &self.kind)
            .field("disabled", &self.disabled)
            .field("options", &options)
            .finish()
    }
}

fn parse_seals(top: &Section<'_>) -> Result<Vec<SealStanza>, ConfigError> {
    const EXAMPLE: &str = "seal \"transit\" { address = \"...\" key_name = \"...\" }";
    let mut out: Vec<SealStanza> = Vec::new();
    for b in top.blocks("seal", EXAMPLE)? {
        let kind = single_label(top, b, "seal", EXAMPLE)?.to_string();
        let key = format!("seal {kind:?}");
        let sec = Section::from_body(top.file, key.clone(), b.body());
        let invalid = |k: &str, message: String| ConfigError::Invalid {
            file: top.file.to_string(),
            key: if k.is_empty() {
                key.clone()
            } else {
                format!("{key}.{k}")
            },
            message,
        };
        let disabled = sec.bool("disabled")?.unwrap_or(false);
        let mut options = BTreeMap::new();
        for (k, item) in &sec.items {
            if *k == "disabled" {
                continue;
            }
            // Values are never echoed: seal options hold tokens and keys.
            let v = match item {
                Item::Attr(e) => match unwrap_parens(e) {
                    Expression::String(s) => s.clone(),
                    Expression::Number(n) => n.to_string(),
                    Expression::Bool(b) => b.to_string(),
                    _ => {
                        return Err(sec.wrong_type(
                            k,
                            "a string, number or bool",
                            "another kind of value".into(),
                        ));
                    }
                },
                Item::Block(_) => {
                    return Err(sec.wrong_type(k, "a string, number or bool", "a block".into()));
                }
            };
            options.insert(k.to_string(), v);
        }
        let stanza = SealStanza {
            kind,
            disabled,
            options,
        };
        crate::autoseal::check_stanza(&stanza).map_err(|(k, m)| invalid(&k, m))?;
        if out.iter().any(|o| o.disabled == stanza.disabled) {
            return Err(invalid(
                "",
                if stanza.disabled {
                    "only one seal may be disabled (the seal being migrated from)".into()
                } else {
                    "only one seal may be enabled; mark the seal being migrated from with disabled = \"true\"".into()
                },
            ));
        }
        out.push(stanza);
    }
    Ok(out)
}

fn parse_audit(top: &Section<'_>) -> Result<Vec<AuditDeviceConfig>, ConfigError> {
    const EXAMPLE: &str = "audit \"file\" \"file\" { options { file_path = \"...\" } }";
    let mut out: Vec<AuditDeviceConfig> = Vec::new();
    for b in top.blocks("audit", EXAMPLE)? {
        let labels: Vec<&str> = b.labels().iter().map(|l| l.as_str()).collect();
        let [kind_name, raw_path] = labels.as_slice() else {
            let key = match labels.first() {
                Some(k) => format!("audit {k:?}"),
                None => "audit".to_string(),
            };
            return Err(ConfigError::Invalid {
                file: top.file.to_string(),
                key,
                message: format!(
                    "expected two labels, the device type and its path, found {}; write {EXAMPLE}",
                    labels.len()
                ),
            });
        };
        let key = format!("audit {kind_name:?} {raw_path:?}");
        let invalid = |message: String| ConfigError::Invalid {
            file: top.file.to_string(),
            key: key.clone(),
            message,
        };
        let supported = AuditDeviceKind::ALL.map(|k| k.as_str()).join(", ");
        let kind = match AuditDeviceKind::from_name(kind_name) {
            Some(k) => k,
            None if matches!(*kind_name, "socket" | "syslog") => {
                return Err(invalid(format!(
                    "audit device type {kind_name:?} is not supported by Custos (supported: {supported})"
                )));
            }
            None => {
                return Err(invalid(format!(
                    "unknown audit device type {kind_name:?} (supported: {supported})"
                )));
            }
        };
        let path = normalize_audit_path(raw_path).ok_or_else(|| invalid(bad_audit_path()))?;
        if out.iter().any(|d| d.path == path) {
            return Err(invalid(format!(
                "audit path {path:?} is declared more than once"
            )));
        }
        let sec = Section::from_body(top.file, key.clone(), b.body());
        sec.check_keys(AUDIT_KEYS)?;
        let mut options = BTreeMap::new();
        if let Some(opts) = sec.nested("options")? {
            for (k, item) in &opts.items {
                // Values are never echoed: options may hold credentials.
                let v = match item {
                    Item::Attr(e) => match unwrap_parens(e) {
                        Expression::String(s) => s.clone(),
                        Expression::Number(n) => n.to_string(),
                        Expression::Bool(b) => b.to_string(),
                        _ => {
                            return Err(opts.wrong_type(
                                k,
                                "a string, number or bool",
                                "another kind of value".into(),
                            ));
                        }
                    },
                    Item::Block(_) => {
                        return Err(opts.wrong_type(
                            k,
                            "a string, number or bool",
                            "a block".into(),
                        ));
                    }
                };
                options.insert(k.to_string(), v);
            }
        }
        out.push(AuditDeviceConfig {
            kind,
            path,
            description: sec.string("description")?.unwrap_or_default(),
            local: sec.bool("local")?.unwrap_or(false),
            options,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
ui = false
log_level = "info"
disable_mlock = true
api_addr = "http://127.0.0.1:8200"
cluster_addr = "http://127.0.0.1:8201"
cluster_name = "custos-prod"
default_lease_ttl = "768h"
max_lease_ttl = "768h"

storage "raft" {
  path    = "/var/lib/custos/raft"
  node_id = "node1"
}

listener "tcp" {
  address            = "127.0.0.1:8200"
  tls_disable        = true
  tls_cert_file      = "/etc/custos/tls.crt"
  tls_key_file       = "/etc/custos/tls.key"
  max_request_size   = 33554432
  telemetry {
    unauthenticated_metrics_access = true
  }
}

telemetry {
  metrics_prefix = "custos"
  prometheus_retention_time = "24h"
  disable_hostname = true
  unauthenticated_metrics_access = false
}

audit "file" "file" {
  description = "local audit log"
  options {
    file_path = "/var/lib/custos/audit"
    log_raw   = "false"
  }
}
audit "kafka" "kafka" { options = { brokers = "127.0.0.1:9092", topic = "custos-audit" } }
audit "elasticsearch" "es" { options = { url = "http://127.0.0.1:9200", index = "custos-audit" } }
"#;

    /// A minimal valid config with `extra` appended at the top level.
    fn minimal(extra: &str) -> String {
        format!(
            "storage \"raft\" {{\n  path = \"/tmp/r\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\n{extra}"
        )
    }

    fn err(src: &str) -> String {
        match parse(src, "server.hcl") {
            Ok(c) => panic!("expected an error, parsed {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_example_parses_to_expected_structs() {
        let cfg = parse(FULL, "server.hcl").unwrap();
        let expected = ServerConfig {
            ui: false,
            log_level: "info".into(),
            disable_mlock: true,
            api_addr: Some("http://127.0.0.1:8200".into()),
            cluster_addr: Some("http://127.0.0.1:8201".into()),
            cluster_name: Some("custos-prod".into()),
            default_lease_ttl: Some(768 * 3600),
            max_lease_ttl: Some(768 * 3600),
            storage: StorageConfig {
                path: "/var/lib/custos/raft".into(),
                node_id: "node1".into(),
                retry_join: Vec::new(),
                snapshot: Default::default(),
            },
            listeners: vec![ListenerConfig {
                address: "127.0.0.1:8200".into(),
                tls_disable: true,
                tls_cert_file: Some("/etc/custos/tls.crt".into()),
                tls_key_file: Some("/etc/custos/tls.key".into()),
                max_request_size: Some(33_554_432),
                telemetry: ListenerTelemetry {
                    unauthenticated_metrics_access: true,
                },
                unauthed_generate_root: false,
                unauthed_rekey: false,
                cluster_address: None,
            }],
            telemetry: TelemetryConfig {
                metrics_prefix: "custos".into(),
                prometheus_retention_time: 24 * 3600,
                disable_hostname: true,
                unauthenticated_metrics_access: false,
                otlp_endpoint: None,
            },
            audit: vec![
                AuditDeviceConfig {
                    kind: AuditDeviceKind::File,
                    path: "file/".into(),
                    description: "local audit log".into(),
                    local: false,
                    options: opts(&[("file_path", "/var/lib/custos/audit"), ("log_raw", "false")]),
                },
                AuditDeviceConfig {
                    kind: AuditDeviceKind::Kafka,
                    path: "kafka/".into(),
                    description: String::new(),
                    local: false,
                    options: opts(&[("brokers", "127.0.0.1:9092"), ("topic", "custos-audit")]),
                },
                AuditDeviceConfig {
                    kind: AuditDeviceKind::Elasticsearch,
                    path: "es/".into(),
                    description: String::new(),
                    local: false,
                    options: opts(&[("url", "http://127.0.0.1:9200"), ("index", "custos-audit")]),
                },
            ],
            seals: Vec::new(),
            dev: false,
        };
        assert_eq!(cfg, expected);
        assert_eq!(cfg.audit[0].kind, "file");
    }

    #[test]
    fn example_file_in_docs_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/server.hcl");
        let cfg = load(&path).unwrap();
        assert_eq!(cfg.storage.node_id, "node1");
        assert_eq!(cfg.listeners.len(), 1);
        let paths: Vec<&str> = cfg.audit.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["file/", "kafka/", "es/"]);
        assert_eq!(
            cfg.audit[1].options.get("topic").map(String::as_str),
            Some("custos-audit")
        );
    }

    #[test]
    fn load_names_a_missing_file() {
        let e = load(Path::new("/nonexistent/custos.hcl"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/custos.hcl: cannot read"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(&minimal(""), "server.hcl").unwrap();
        assert_eq!(cfg.log_level, "info");
        assert_eq!(cfg.telemetry, TelemetryConfig::default());
        assert_eq!(cfg.default_lease_ttl, None);
        assert!(cfg.audit.is_empty());
        let l = &cfg.listeners[0];
        assert_eq!(l.max_request_size, None);
        assert!(!l.telemetry.unauthenticated_metrics_access);
    }

    #[test]
    fn unknown_key_at_top_level() {
        let e = err(&minimal("storge = 1\n"));
        assert!(
            e.starts_with(
                "server.hcl: unknown key \"storge\" at the top level (expected one of: ui,"
            ),
            "{e}"
        );
        assert!(e.contains("storage"), "{e}");
        let e = err(&minimal("backend \"file\" {}\n"));
        assert!(
            e.contains("unknown key \"backend\"") && e.contains("old name for `storage`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_in_listener() {
        let src = "storage \"raft\" {\n path = \"/r\"\n node_id = \"n\"\n}\nlistener \"tcp\" {\n  adress = \"127.0.0.1:8200\"\n}\n";
        assert_eq!(
            err(src),
            "server.hcl: unknown key \"adress\" in listener \"tcp\" (expected one of: address, tls_disable, \
             tls_cert_file, tls_key_file, max_request_size, telemetry, \
             disable_unauthed_generate_root_endpoints, disable_unauthed_rekey_endpoints, \
             cluster_address)"
        );
    }

    #[test]
    fn unknown_key_in_telemetry_blocks() {
        let e = err(&minimal("telemetry {\n  statsd_address = \"x\"\n}\n"));
        assert!(e.starts_with("server.hcl: unknown key \"statsd_address\" in telemetry (expected one of: metrics_prefix"), "{e}");
        let src = minimal("").replace(
            "tls_disable = true",
            "tls_disable = true\n  telemetry {\n    unauthenticated = true\n  }",
        );
        let e = err(&src);
        assert!(
            e.contains("unknown key \"unauthenticated\" in listener \"tcp\".telemetry"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_in_storage_and_audit_blocks() {
        let e =
            err(&minimal("").replace("node_id = \"n1\"", "node_id = \"n1\"\n  retry_joins = 1"));
        assert!(
            e.contains("unknown key \"retry_joins\" in storage \"raft\""),
            "{e}"
        );
        let e = err(&minimal(
            "audit \"file\" \"file\" {\n  descripton = \"x\"\n}\n",
        ));
        assert!(
            e.contains("unknown key \"descripton\" in audit \"file\" \"file\""),
            "{e}"
        );
    }

    #[test]
    fn audit_options_are_free_form_and_normalised_to_strings() {
        let cfg = parse(
            &minimal("audit \"kafka\" \"k/\" {\n  local = true\n  options {\n    anything = \"x\"\n    batch = 500\n    ratio = 1.5\n    tls = true\n  }\n}\n"),
            "server.hcl",
        )
        .unwrap();
        let d = &cfg.audit[0];
        assert_eq!(d.path, "k/");
        assert!(d.local);
        assert_eq!(
            d.options,
            opts(&[
                ("anything", "x"),
                ("batch", "500"),
                ("ratio", "1.5"),
                ("tls", "true")
            ])
        );
    }

    #[test]
    fn audit_option_of_wrong_kind_names_key_not_value() {
        let e = err(&minimal(
            "audit \"kafka\" \"k\" {\n  options {\n    sasl_password = [\"hunter2\"]\n  }\n}\n",
        ));
        assert!(
            e.starts_with(
                "server.hcl: audit \"kafka\" \"k\".options.sasl_password: expected a string"
            ),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn audit_debug_redacts_credentials() {
        let d = AuditDeviceConfig {
            kind: AuditDeviceKind::Kafka,
            path: "k/".into(),
            description: String::new(),
            local: false,
            options: opts(&[
                ("sasl_password", "hunter2"),
                ("api_key", "k3y"),
                ("topic", "t"),
            ]),
        };
        let s = format!("{d:?}");
        assert!(!s.contains("hunter2") && !s.contains("k3y"), "{s}");
        assert!(s.contains("\"topic\": \"t\""), "{s}");
    }

    #[test]
    fn storage_is_required_unique_and_raft() {
        let no_storage = "listener \"tcp\" {\n  tls_disable = true\n}\n";
        let e = err(no_storage);
        assert!(
            e.starts_with("server.hcl: storage: a storage \"raft\" block is required"),
            "{e}"
        );

        let e = err(&minimal(
            "storage \"raft\" {\n  path = \"/x\"\n  node_id = \"n\"\n}\n",
        ));
        assert!(
            e.starts_with("server.hcl: storage: exactly one storage block is allowed, found 2"),
            "{e}"
        );

        let e = err(&minimal("").replace("storage \"raft\"", "storage \"consul\""));
        assert_eq!(
            e,
            "server.hcl: storage \"consul\": storage type \"consul\" is not supported; Custos supports only \"raft\""
        );

        let e = err(&minimal("").replace("storage \"raft\"", "storage"));
        assert!(e.contains("storage: expected one label"), "{e}");

        let e = err("storage = \"raft\"\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        assert!(
            e.starts_with("server.hcl: storage: expected a block"),
            "{e}"
        );
    }

    #[test]
    fn raft_path_and_node_id_are_required() {
        let e = err(&minimal("").replace("path = \"/tmp/r\"", ""));
        assert!(
            e.starts_with("server.hcl: storage \"raft\".path: is required"),
            "{e}"
        );
        let e = err(&minimal("").replace("node_id = \"n1\"", ""));
        assert!(
            e.starts_with("server.hcl: storage \"raft\".node_id: is required"),
            "{e}"
        );
        let cfg = parse(&minimal("").replace("\"n1\"", "3"), "server.hcl").unwrap();
        assert_eq!(cfg.storage.node_id, "3");
        assert_eq!(cfg.raft_node_id_u64(), 3);
    }

    #[test]
    fn bad_bool_names_key_and_value() {
        let e = err(&minimal("").replace("tls_disable = true", "tls_disable = \"maybe\""));
        assert_eq!(
            e,
            "server.hcl: listener \"tcp\".tls_disable: expected a bool, got \"maybe\""
        );
        let e = err(&minimal("ui = 2\n"));
        assert_eq!(e, "server.hcl: ui: expected a bool, got 2");
    }

    #[test]
    fn bools_accept_vault_spellings() {
        for v in ["true", "\"true\"", "\"1\"", "1", "\"T\""] {
            let cfg = parse(
                &minimal("").replace("tls_disable = true", &format!("tls_disable = {v}")),
                "server.hcl",
            )
            .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert!(cfg.listeners[0].tls_disable, "{v}");
        }
    }

    #[test]
    fn bad_listener_addresses() {
        for bad in [
            "127.0.0.1",
            "300.1.1.1:80",
            "localhost:99999",
            ":8200",
            "bad host:80",
        ] {
            let e = err(&minimal("").replace("127.0.0.1:8200", bad));
            assert!(
                e.starts_with("server.hcl: listener \"tcp\".address: expected host:port"),
                "{bad}: {e}"
            );
        }
        for good in [
            "localhost:8200",
            "0.0.0.0:8200",
            "[::1]:8200",
            "custos.example.com:443",
        ] {
            parse(&minimal("").replace("127.0.0.1:8200", good), "server.hcl")
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let e = err(&minimal("").replace("address = \"127.0.0.1:8200\"", "address = 8200"));
        assert_eq!(
            e,
            "server.hcl: listener \"tcp\".address: expected a string, got 8200"
        );
    }

    #[test]
    fn second_listener_is_named_and_addresses_are_unique() {
        let e = err(&minimal(
            "listener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = 1\n}\n",
        ));
        assert!(e.starts_with("server.hcl: listener \"tcp\" #2.address: \"127.0.0.1:8200\" is used by another listener"), "{e}");
        let e = err(&minimal("listener \"unix\" {\n}\n"));
        assert!(
            e.contains("listener \"unix\": listener type \"unix\" is not supported"),
            "{e}"
        );
    }

    #[test]
    fn at_least_one_listener_unless_dev() {
        let e = err("storage \"raft\" {\n path = \"/r\"\n node_id = \"n\"\n}\n");
        assert!(
            e.starts_with("server.hcl: listener: at least one listener"),
            "{e}"
        );
        let mut dev = ServerConfig::dev("127.0.0.1:0".parse().unwrap(), Path::new("/tmp/d"));
        dev.listeners.clear();
        dev.validate("dev").unwrap();
    }

    #[test]
    fn tls_needs_existing_cert_and_key() {
        let src = minimal("").replace("tls_disable = true", "tls_disable = false");
        let e = err(&src);
        assert_eq!(
            e,
            "server.hcl: listener \"tcp\".tls_cert_file: is required unless tls_disable = true"
        );

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&key, "k").unwrap();
        let with_files = src.replace(
            "tls_disable = false",
            &format!(
                "tls_disable = false\n  tls_cert_file = {:?}\n  tls_key_file = {:?}",
                cert, key
            ),
        );
        let e = err(&with_files);
        assert!(
            e.starts_with("server.hcl: listener \"tcp\".tls_cert_file: cannot read"),
            "{e}"
        );
        assert!(e.contains("tls.crt"), "{e}");
        std::fs::write(&cert, "c").unwrap();
        let cfg = parse(&with_files, "server.hcl").unwrap();
        assert_eq!(
            cfg.listeners[0].tls_cert_file.as_deref(),
            Some(cert.as_path())
        );
    }

    #[test]
    fn durations_and_integers() {
        let cfg = parse(
            &minimal("default_lease_ttl = \"1h30m\"\nmax_lease_ttl = 86400\n"),
            "server.hcl",
        )
        .unwrap();
        assert_eq!(cfg.default_lease_ttl, Some(5400));
        assert_eq!(cfg.max_lease_ttl, Some(86400));
        let e = err(&minimal("max_lease_ttl = \"forever\"\n"));
        assert!(
            e.starts_with("server.hcl: max_lease_ttl: expected a duration"),
            "{e}"
        );
        assert!(e.ends_with("got \"forever\""), "{e}");
        let e = err(&minimal(
            "default_lease_ttl = \"48h\"\nmax_lease_ttl = \"24h\"\n",
        ));
        assert!(
            e.starts_with("server.hcl: default_lease_ttl: 172800s is greater than max_lease_ttl"),
            "{e}"
        );
        let e = err(&minimal(
            "telemetry {\n  prometheus_retention_time = \"1 day\"\n}\n",
        ));
        assert!(
            e.starts_with("server.hcl: telemetry.prometheus_retention_time: expected a duration"),
            "{e}"
        );

        let cfg = parse(
            &minimal("").replace(
                "tls_disable = true",
                "tls_disable = true\n  max_request_size = \"-1\"",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(cfg.listeners[0].max_request_size, Some(-1));
        let e = err(&minimal("").replace(
            "tls_disable = true",
            "tls_disable = true\n  max_request_size = \"big\"",
        ));
        assert_eq!(
            e,
            "server.hcl: listener \"tcp\".max_request_size: expected an integer, got \"big\""
        );
    }

    #[test]
    fn top_level_values_are_checked() {
        let cfg = parse(&minimal("log_level = \"ERR\"\n"), "server.hcl").unwrap();
        assert_eq!(cfg.log_level, "error");
        let e = err(&minimal("log_level = \"loud\"\n"));
        assert!(
            e.starts_with("server.hcl: log_level: unknown log level \"loud\""),
            "{e}"
        );
        let e = err(&minimal("api_addr = \"127.0.0.1:8200\"\n"));
        assert!(
            e.starts_with("server.hcl: api_addr: expected an http:// or https:// URL"),
            "{e}"
        );
        parse(
            &minimal("api_addr = \"https://custos.example.com\"\n"),
            "server.hcl",
        )
        .unwrap();
        let e = err(&minimal("telemetry {\n  metrics_prefix = \"9lives\"\n}\n"));
        assert!(
            e.starts_with("server.hcl: telemetry.metrics_prefix:"),
            "{e}"
        );
        let e = err(&minimal("cluster_name = \"${var.x}\"\n"));
        assert!(
            e.contains("cluster_name: expected a string, got a template"),
            "{e}"
        );
        let e = err(&minimal("ui {\n}\n"));
        assert_eq!(
            e,
            "server.hcl: ui: expected a value (`ui = ...`), got a block"
        );
    }

    #[test]
    fn audit_block_shape_errors() {
        let e = err(&minimal("audit \"file\" {\n}\n"));
        assert!(e.starts_with("server.hcl: audit \"file\": expected two labels, the device type and its path, found 1"), "{e}");
        let e = err(&minimal(
            "audit \"file\" \"file\" {\n}\naudit \"file\" \"file/\" {\n}\n",
        ));
        assert_eq!(
            e,
            "server.hcl: audit \"file\" \"file/\": audit path \"file/\" is declared more than once"
        );
        let e = err(&minimal("audit \"syslog\" \"syslog\" {\n}\n"));
        assert!(e.contains("audit \"syslog\" \"syslog\": audit device type \"syslog\" is not supported by Custos"), "{e}");
        let e = err(&minimal("audit \"splunk\" \"s\" {\n}\n"));
        assert!(
            e.contains(
                "unknown audit device type \"splunk\" (supported: file, kafka, elasticsearch)"
            ),
            "{e}"
        );
        let e = err(&minimal("audit \"file\" \"/abs\" {\n}\n"));
        assert!(
            e.starts_with("server.hcl: audit \"file\" \"/abs\": the path must be"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_carry_file_line_and_column() {
        let e = err("ui = false\nlistener \"tcp\" {\n  address = = 1\n}\n");
        assert!(
            e.starts_with("server.hcl:3:13: HCL syntax error: invalid expression"),
            "{e}"
        );
        // HCL 2 has no one-line block inside a one-line block; the object
        // form (`options = { ... }`) is the one-line spelling.
        let e = err("audit \"kafka\" \"kafka\" { options { brokers = \"b\", topic = \"t\" } }\n");
        assert!(e.starts_with("server.hcl:1:33: HCL syntax error"), "{e}");
        // The offending line is not echoed: it may hold a secret.
        let e =
            err("audit \"kafka\" \"k\" {\n  options {\n    sasl_password = \"hunter2\n  }\n}\n");
        assert!(
            e.starts_with("server.hcl:") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn top_level_metrics_access_is_the_listener_default() {
        let src = minimal(
            "telemetry {\n  unauthenticated_metrics_access = true\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8300\"\n  tls_disable = true\n  telemetry = { unauthenticated_metrics_access = false }\n}\n",
        );
        let cfg = parse(&src, "server.hcl").unwrap();
        assert!(cfg.listeners[0].telemetry.unauthenticated_metrics_access);
        assert!(!cfg.listeners[1].telemetry.unauthenticated_metrics_access);
    }

    #[test]
    fn dev_config() {
        let listen: SocketAddr = "127.0.0.1:8200".parse().unwrap();
        let cfg = ServerConfig::dev(listen, Path::new("/data"));
        cfg.validate("dev").unwrap();
        assert!(cfg.dev);
        assert_eq!(cfg.storage.path, Path::new("/data/raft"));
        assert_eq!(cfg.storage.node_id, DEV_NODE_ID);
        let l = &cfg.listeners[0];
        assert_eq!(l.address, "127.0.0.1:8200");
        assert!(l.tls_disable && l.telemetry.unauthenticated_metrics_access);
        assert_eq!(cfg.audit.len(), 1);
        assert_eq!(cfg.audit[0].kind, AuditDeviceKind::File);
        assert_eq!(cfg.audit[0].path, "file/");
        assert_eq!(
            cfg.audit[0].options.get("file_path").map(String::as_str),
            Some("/data/audit")
        );
    }

    #[test]
    fn raft_node_ids_are_stable() {
        assert_eq!(raft_node_id_from_name("7"), 7);
        // FNV-1a 64 reference vectors.
        assert_eq!(raft_node_id_from_name(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raft_node_id_from_name("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raft_node_id_from_name("foobar"), 0x85944171f73967e8);
        // Non-canonical numbers are names, so "07" and "7" differ.
        assert_ne!(raft_node_id_from_name("07"), 7);
        assert_ne!(
            raft_node_id_from_name("node1"),
            raft_node_id_from_name("node2")
        );
    }
}

#[cfg(test)]
mod otlp_tests {
    use super::*;

    fn telemetry(block: &str) -> Result<ServerConfig, ConfigError> {
        let src = format!(
            "storage \"raft\" {{\n  path = \"/tmp/x\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}}\ntelemetry {{\n{block}\n}}\n"
        );
        parse(&src, "server.hcl")
    }

    #[test]
    fn otlp_endpoint_is_parsed_and_validated() {
        let cfg = telemetry("  otlp_endpoint = \"http://127.0.0.1:4318\"").unwrap();
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        let cfg = telemetry("  metrics_prefix = \"vault\"").unwrap();
        assert_eq!(cfg.telemetry.otlp_endpoint, None);
        let e = telemetry("  otlp_endpoint = \"grpc://collector:4317\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    }
}

#[cfg(test)]
mod retry_join_tls_tests {
    use super::*;

    fn err(src: &str) -> String {
        match parse(src, "server.hcl") {
            Ok(c) => panic!("expected an error, parsed {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn minimal() -> String {
        "storage \"raft\" {\n  path = \"/tmp/r\"\n  node_id = \"n1\"\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n}\n".to_string()
    }

    fn with_join(keys: &str) -> String {
        format!(
            "storage \"raft\" {{\n  path = \"/tmp/r\"\n  node_id = \"n2\"\n  retry_join {{\n    leader_api_addr = \"https://127.0.0.1:8200\"\n{keys}\n  }}\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8210\"\n  tls_disable = true\n}}\n"
        )
    }

    #[test]
    fn retry_join_tls_keys_parse_and_read_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::storage::raft::tls::ClusterTlsMaterial::generate().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
        );
        std::fs::write(&ca, &m.ca_cert).unwrap();
        std::fs::write(&cert, &m.cert).unwrap();
        std::fs::write(&key, m.key.expose()).unwrap();
        let cfg = parse(
            &with_join(&format!(
                "leader_ca_cert_file = \"{}\"\nleader_client_cert_file = \"{}\"\nleader_client_key_file = \"{}\"\nleader_tls_servername = \"custos.example\"",
                ca.display(),
                cert.display(),
                key.display()
            )),
            "server.hcl",
        )
        .unwrap();
        let rj = &cfg.storage.retry_join[0];
        assert_eq!(rj.leader_ca_cert_file.as_deref(), Some(ca.as_path()));
        let tls = rj.leader_tls().unwrap();
        assert_eq!(tls.ca_cert.as_deref(), Some(m.ca_cert.as_str()));
        assert_eq!(
            tls.client_key.as_ref().map(|k| k.expose()),
            Some(m.key.expose())
        );
        assert_eq!(tls.servername.as_deref(), Some("custos.example"));
        assert!(
            !format!("{rj:?}{tls:?}").contains("PRIVATE KEY"),
            "keys are redacted"
        );

        // Inline PEM, as Vault's leader_ca_cert.
        let inline = m.ca_cert.replace('\n', "\\n");
        let cfg = parse(
            &with_join(&format!("leader_ca_cert = \"{inline}\"")),
            "server.hcl",
        )
        .unwrap();
        let tls = cfg.storage.retry_join[0].leader_tls().unwrap();
        assert_eq!(tls.ca_cert.as_deref(), Some(m.ca_cert.as_str()));
        assert!(tls.client_cert.is_none());

        // A plain join has nothing custom.
        let cfg = parse(&minimal(), "server.hcl").unwrap();
        assert!(cfg.storage.retry_join.is_empty());
    }

    #[test]
    fn retry_join_tls_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = err(&with_join(&format!(
            "leader_ca_cert_file = \"{}\"",
            missing.display()
        )));
        assert!(
            e.starts_with(
                "server.hcl: storage \"raft\".retry_join[0].leader_ca_cert_file: cannot read "
            ) && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = err(&with_join(&format!(
            "leader_ca_cert_file = \"{}\"",
            junk.display()
        )));
        assert!(
            e.contains("retry_join[0].leader_ca_cert_file: ")
                && e.contains("junk.pem: no PEM certificate found"),
            "{e}"
        );
        let e = err(&with_join(&format!(
            "leader_client_cert_file = \"{}\"",
            junk.display()
        )));
        assert!(
            e.contains("retry_join[0].leader_client_key: is required with leader_client_cert"),
            "{e}"
        );
        let e = err(&with_join(&format!(
            "leader_ca_cert_file = \"{}\"\nleader_ca_cert = \"x\"",
            junk.display()
        )));
        assert!(
            e.contains("set leader_ca_cert_file or leader_ca_cert, not both"),
            "{e}"
        );
        let e = err(&with_join("leader_tls_servername = \"not a name!\""));
        assert!(e.contains("retry_join[0].leader_tls_servername: "), "{e}");
        let e = err(&with_join("leader_ca_cert = 5"));
        assert!(e.contains("leader_ca_cert: expected a string"), "{e}");
        let e = err(&with_join("leader_ca_cert_file = \"\""));
        assert!(e.contains("leader_ca_cert_file: must not be empty"), "{e}");
        let e = err(&with_join("leader_cert_file = \"x\""));
        assert!(e.contains("unknown key \"leader_cert_file\""), "{e}");
        // An inline key that is no key never shows in the message.
        let e = err(&with_join(&format!(
            "leader_client_cert_file = \"{}\"\nleader_client_key = \"s3cret-not-a-key\"",
            junk.display()
        )));
        assert!(!e.contains("s3cret"), "{e}");
    }
}
