//! Options of the `kafka` and `elasticsearch` audit devices.
//!
//! They come from the server config's `audit "<type>" "<path>" { options {
//! ... } }` block as a string map (the core hands it over at unseal) and go
//! to the sinks ([`super::kafka`], [`super::elasticsearch`]) and the worker
//! ([`super::worker`]). Every mistake is an [`AuditError::InvalidOption`]
//! naming the option; the core adds the device path. Values of options that
//! look like credentials are never echoed in errors, and [`redact_options`]
//! hides them from `sys/audit`.
//!
//! Common to both sinks (all optional):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `source` | first `file` device | mount path of the `file` device whose log is shipped |
//! | `log_dir` | — | local log directory when no `file` device is declared |
//! | `batch_size` | 500 | most records per shipment |
//! | `batch_bytes` | 5MiB | most payload bytes per shipment |
//! | `retry_initial` | 200ms | first backoff after a failure |
//! | `retry_max` | 10s | backoff cap (retries go on forever) |
//! | `health_interval` | 30s | probe period while there is nothing to ship |
//!
//! Kafka: `brokers` (required, `host:port[,host:port]`), `topic` (required),
//! `client_id` (`custos`), `message_timeout` (30s: how long librdkafka tries
//! one delivery before the worker retries it), `compression` (`none`, `gzip`,
//! `snappy`, `lz4`, `zstd` — what librdkafka was built with), and
//! `security.protocol`, `sasl.*`, `ssl.*` passed verbatim to librdkafka.
//! `enable.idempotence=true` and `acks=all` are always set and cannot be
//! overridden.
//!
//! Elasticsearch: `url` (required, `http(s)://host:port[/prefix]`), `index`
//! (required: base name), `index_mode` (`daily`: `<index>-YYYY.MM.DD` from
//! the event time; `single`: exactly `<index>`, e.g. an alias or data stream
//! managed by ILM), `template` (true: install `_index_template/<index>` at
//! start), `username` + `password` (basic auth) or `api_key`, `ca_cert` (PEM
//! file), `tls_skip_verify` (false), `pipeline` (ingest pipeline),
//! `request_timeout` (30s), `bulk_content_type` (`application/x-ndjson`, as
//! the `_bulk` documentation asks; `application/json` for stand-ins that want
//! it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::AuditError;
use crate::log::options::{parse_duration, parse_size};

fn invalid(name: &str, reason: impl Into<String>) -> AuditError {
    AuditError::InvalidOption {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// True for option names whose values are credentials (never shown).
pub fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key",
        "credential",
        "api_key",
        "jaas",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The options with credential values replaced by `<redacted>`.
pub fn redact_options(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .map(|(k, v)| {
            let v = if is_sensitive(k) {
                "<redacted>".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn parse_bool(name: &str, v: &str) -> Result<bool, AuditError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(name, format!("{v:?} is not a boolean"))),
    }
}

/// How a shipper batches and retries; common to every sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipOptions {
    /// Mount path of the `file` device whose log is shipped (`None`: the
    /// first one).
    pub source: Option<String>,
    /// Local log directory to use when no `file` device is declared.
    pub log_dir: Option<PathBuf>,
    pub batch_size: usize,
    pub batch_bytes: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub health_interval: Duration,
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            source: None,
            log_dir: None,
            batch_size: 500,
            batch_bytes: 5 << 20,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            health_interval: Duration::from_secs(30),
        }
    }
}

impl ShipOptions {
    /// Take `k`=`v` if it is a common option; `Ok(false)` if it is not one.
    fn take(&mut self, k: &str, v: &str) -> Result<bool, AuditError> {
        match k {
            "source" => {
                let s = v.trim().trim_end_matches('/');
                if s.is_empty() {
                    return Err(invalid(k, "must name a file audit device path"));
                }
                self.source = Some(format!("{s}/"));
            }
            "log_dir" => {
                if v.trim().is_empty() {
                    return Err(invalid(k, "must not be empty"));
                }
                self.log_dir = Some(PathBuf::from(v));
            }
            "batch_size" => {
                let n: usize = v
                    .trim()
                    .parse()
                    .map_err(|_| invalid(k, format!("{v:?} is not a number")))?;
                if n == 0 || n > 100_000 {
                    return Err(invalid(k, "must be between 1 and 100000"));
                }
                self.batch_size = n;
            }
            "batch_bytes" => {
                self.batch_bytes = parse_size(k, v)?;
                if self.batch_bytes == 0 {
                    return Err(invalid(k, "must be greater than 0"));
                }
            }
            "retry_initial" => self.retry_initial = nonzero(k, parse_duration(k, v)?)?,
            "retry_max" => self.retry_max = nonzero(k, parse_duration(k, v)?)?,
            "health_interval" => self.health_interval = nonzero(k, parse_duration(k, v)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), AuditError> {
        if self.retry_max < self.retry_initial {
            return Err(invalid(
                "retry_max",
                "must not be shorter than retry_initial",
            ));
        }
        Ok(())
    }
}

fn nonzero(name: &str, d: Duration) -> Result<Duration, AuditError> {
    if d.is_zero() {
        Err(invalid(name, "must be greater than 0"))
    } else {
        Ok(d)
    }
}

/// Options of a `kafka` audit device.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    pub message_timeout: Duration,
    pub compression: String,
    /// `security.protocol`, `sasl.*`, `ssl.*`: handed to librdkafka as is.
    pub passthrough: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("passthrough", &redact_options(&self.passthrough))
            .finish_non_exhaustive()
    }
}

/// Kafka topic names: letters, digits, `.`, `_`, `-`, at most 249.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaOptions {
    /// Parse a device's option map into its Kafka and common options.
    pub fn from_map(
        options: &BTreeMap<String, String>,
    ) -> Result<(KafkaOptions, ShipOptions), AuditError> {
        let mut ship = ShipOptions::default();
        let mut brokers = None;
        let mut topic = None;
        let mut out = KafkaOptions {
            brokers: String::new(),
            topic: String::new(),
            client_id: "custos".into(),
            message_timeout: Duration::from_secs(30),
            compression: "none".into(),
            passthrough: BTreeMap::new(),
        };
        for (k, v) in options {
            if ship.take(k, v)? {
                continue;
            }
            match k.as_str() {
                "brokers" => {
                    let list: Vec<&str> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect();
                    if list.is_empty() || list.iter().any(|b| !b.contains(':')) {
                        return Err(invalid(
                            k,
                            format!("{v:?} is not a list of host:port brokers"),
                        ));
                    }
                    brokers = Some(list.join(","));
                }
                "topic" => {
                    if !valid_topic(v) {
                        return Err(invalid(
                            k,
                            format!(
                                "{v:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"
                            ),
                        ));
                    }
                    topic = Some(v.clone());
                }
                "client_id" => {
                    if v.trim().is_empty() {
                        return Err(invalid(k, "must not be empty"));
                    }
                    out.client_id = v.clone();
                }
                "message_timeout" => out.message_timeout = nonzero(k, parse_duration(k, v)?)?,
                "compression" => match v.as_str() {
                    "none" | "gzip" | "snappy" | "lz4" | "zstd" => out.compression = v.clone(),
                    _ => {
                        return Err(invalid(
                            k,
                            format!("{v:?} is not one of none, gzip, snappy, lz4, zstd"),
                        ));
                    }
                },
                _ if k == "security.protocol"
                    || k.starts_with("sasl.")
                    || k.starts_with("ssl.") =>
                {
                    if k == "security.protocol" {
                        let p = v.to_ascii_lowercase();
                        if !matches!(
                            p.as_str(),
                            "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
                        ) {
                            return Err(invalid(
                                k,
                                format!(
                                    "{v:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
                                ),
                            ));
                        }
                    }
                    out.passthrough.insert(k.clone(), v.clone());
                }
                _ => {
                    return Err(invalid(
                        k,
                        "unknown option for a kafka audit device (see the README for the list; librdkafka settings other than security.protocol, sasl.* and ssl.* are not passed through)",
                    ));
                }
            }
        }
        out.brokers = brokers.ok_or_else(|| invalid("brokers", "required"))?;
        out.topic = topic.ok_or_else(|| invalid("topic", "required"))?;
        ship.check()?;
        Ok((out, ship))
    }
}

/// How Elasticsearch index names are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMode {
    /// `<index>-YYYY.MM.DD` from the event's UTC time.
    Daily,
    /// Exactly `<index>` (an alias, a data stream or one index).
    Single,
}

/// Options of an `elasticsearch` audit device.
#[derive(Clone, PartialEq, Eq)]
pub struct EsOptions {
    /// Base URL without trailing slash.
    pub url: String,
    pub index: String,
    pub index_mode: IndexMode,
    pub template: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_skip_verify: bool,
    pub pipeline: Option<String>,
    pub request_timeout: Duration,
    pub bulk_content_type: String,
}

impl std::fmt::Debug for EsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsOptions")
            .field("url", &self.url)
            .field("index", &self.index)
            .field("index_mode", &self.index_mode)
            .field(
                "has_credentials",
                &(self.password.is_some() || self.api_key.is_some()),
            )
            .finish_non_exhaustive()
    }
}

/// Elasticsearch index names: lowercase, no `\ / * ? " < > | , #` or space,
/// not starting with `-`, `_`, `+`.
fn valid_index(i: &str) -> bool {
    !i.is_empty()
        && i.len() <= 200
        && !i.starts_with(['-', '_', '+', '.'])
        && i.chars().all(|c| {
            !c.is_ascii_uppercase()
                && !matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ' ' | ':'
                )
        })
}

impl EsOptions {
    /// Parse a device's option map into its Elasticsearch and common options.
    pub fn from_map(
        options: &BTreeMap<String, String>,
    ) -> Result<(EsOptions, ShipOptions), AuditError> {
        let mut ship = ShipOptions::default();
        let mut url = None;
        let mut index = None;
        let mut out = EsOptions {
            url: String::new(),
            index: String::new(),
            index_mode: IndexMode::Daily,
            template: true,
            username: None,
            password: None,
            api_key: None,
            ca_cert: None,
            tls_skip_verify: false,
            pipeline: None,
            request_timeout: Duration::from_secs(30),
            bulk_content_type: "application/x-ndjson".into(),
        };
        for (k, v) in options {
            if ship.take(k, v)? {
                continue;
            }
            match k.as_str() {
                "url" => {
                    let u = v.trim().trim_end_matches('/');
                    let ok = reqwest::Url::parse(u)
                        .ok()
                        .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
                    if ok.is_none() {
                        return Err(invalid(k, "must be an http:// or https:// URL with a host"));
                    }
                    url = Some(u.to_owned());
                }
                "index" => {
                    if !valid_index(v) {
                        return Err(invalid(
                            k,
                            format!(
                                "{v:?} is not an index name (lowercase, no spaces or \\/*?\"<>|,#:, not starting with -_+.)"
                            ),
                        ));
                    }
                    index = Some(v.clone());
                }
                "index_mode" => {
                    out.index_mode = match v.as_str() {
                        "daily" => IndexMode::Daily,
                        "single" | "alias" => IndexMode::Single,
                        _ => return Err(invalid(k, format!("{v:?} is not daily or single"))),
                    }
                }
                "template" => out.template = parse_bool(k, v)?,
                "username" => out.username = Some(v.clone()),
                "password" => out.password = Some(v.clone()),
                "api_key" => out.api_key = Some(v.clone()),
                "ca_cert" => out.ca_cert = Some(PathBuf::from(v)),
                "tls_skip_verify" => out.tls_skip_verify = parse_bool(k, v)?,
                "pipeline" => out.pipeline = Some(v.clone()),
                "request_timeout" => out.request_timeout = nonzero(k, parse_duration(k, v)?)?,
                "bulk_content_type" => match v.as_str() {
                    "application/x-ndjson" | "application/json" => {
                        out.bulk_content_type = v.clone()
                    }
                    _ => {
                        return Err(invalid(
                            k,
                            format!("{v:?} is not application/x-ndjson or application/json"),
                        ));
                    }
                },
                _ => {
                    return Err(invalid(
                        k,
                        "unknown option for an elasticsearch audit device (see the README for the list)",
                    ));
                }
            }
        }
        out.url = url.ok_or_else(|| invalid("url", "required"))?;
        out.index = index.ok_or_else(|| invalid("index", "required"))?;
        if out.password.is_some() && out.username.is_none() {
            return Err(invalid("username", "required when password is set"));
        }
        if out.username.is_some() && out.api_key.is_some() {
            return Err(invalid(
                "api_key",
                "use either api_key or username/password",
            ));
        }
        ship.check()?;
        Ok((out, ship))
    }
}

/// The parsed options of a sink device, by type.
#[derive(Debug, Clone)]
pub enum SinkOptions {
    Kafka(KafkaOptions),
    Elasticsearch(EsOptions),
}

impl SinkOptions {
    /// Parse the options of a device of type `kind` (`kafka` or
    /// `elasticsearch`); `Ok(None)` for other types.
    pub fn parse(
        kind: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Option<(SinkOptions, ShipOptions)>, AuditError> {
        Ok(match kind {
            "kafka" => {
                let (k, s) = KafkaOptions::from_map(options)?;
                Some((SinkOptions::Kafka(k), s))
            }
            "elasticsearch" => {
                let (e, s) = EsOptions::from_map(options)?;
                Some((SinkOptions::Elasticsearch(e), s))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn bad_name(r: Result<impl std::fmt::Debug, AuditError>) -> String {
        match r {
            Err(AuditError::InvalidOption { name, .. }) => name,
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }

    #[test]
    fn kafka_options() {
        let (k, s) = KafkaOptions::from_map(&map(&[
            ("brokers", "a:9092, b:9092"),
            ("topic", "custos-audit"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "hunter2"),
            ("batch_size", "10"),
            ("retry_max", "2s"),
        ]))
        .unwrap();
        assert_eq!(k.brokers, "a:9092,b:9092");
        assert_eq!(k.passthrough.len(), 2);
        assert_eq!(s.batch_size, 10);
        assert_eq!(s.retry_max, Duration::from_secs(2));
        assert!(!format!("{k:?}").contains("hunter2"));
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[("topic", "t")]))),
            "brokers"
        );
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[("brokers", "a:1")]))),
            "topic"
        );
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[
                ("brokers", "a"),
                ("topic", "t")
            ]))),
            "brokers"
        );
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[
                ("brokers", "a:1"),
                ("topic", "t"),
                ("enable.idempotence", "false")
            ]))),
            "enable.idempotence"
        );
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[
                ("brokers", "a:1"),
                ("topic", "bad topic")
            ]))),
            "topic"
        );
        assert_eq!(
            bad_name(KafkaOptions::from_map(&map(&[
                ("brokers", "a:1"),
                ("topic", "t"),
                ("retry_initial", "5s"),
                ("retry_max", "1s")
            ]))),
            "retry_max"
        );
    }

    #[test]
    fn es_options() {
        let (e, _) = EsOptions::from_map(&map(&[
            ("url", "http://127.0.0.1:9200/"),
            ("index", "custos-audit"),
            ("username", "elastic"),
            ("password", "pw"),
        ]))
        .unwrap();
        assert_eq!(e.url, "http://127.0.0.1:9200");
        assert_eq!(e.index_mode, IndexMode::Daily);
        assert_eq!(e.bulk_content_type, "application/x-ndjson");
        assert!(!format!("{e:?}").contains("pw"));
        assert_eq!(
            bad_name(EsOptions::from_map(&map(&[("index", "i")]))),
            "url"
        );
        assert_eq!(
            bad_name(EsOptions::from_map(&map(&[
                ("url", "ftp://x"),
                ("index", "i")
            ]))),
            "url"
        );
        assert_eq!(
            bad_name(EsOptions::from_map(&map(&[
                ("url", "http://x"),
                ("index", "Upper")
            ]))),
            "index"
        );
        assert_eq!(
            bad_name(EsOptions::from_map(&map(&[
                ("url", "http://x"),
                ("index", "i"),
                ("password", "p")
            ]))),
            "username"
        );
        assert_eq!(
            bad_name(EsOptions::from_map(&map(&[
                ("url", "http://x"),
                ("index", "i"),
                ("shards", "3")
            ]))),
            "shards"
        );
    }

    #[test]
    fn redaction() {
        let r = redact_options(&map(&[
            ("sasl.password", "x"),
            ("api_key", "y"),
            ("topic", "t"),
        ]));
        assert_eq!(r["sasl.password"], "<redacted>");
        assert_eq!(r["api_key"], "<redacted>");
        assert_eq!(r["topic"], "t");
    }
}
