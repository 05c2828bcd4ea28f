//! `rotator.hcl`: the rotator's configuration, read once at start.
//!
//! Data flow: the file's text → hcl-rs (syntax errors carry line and column)
//! → a walk over its blocks that turns each attribute into a typed field of
//! [`RotatorConfig`] and every mistake into a [`ConfigError`] naming the
//! file, the line and the key (`rotator.hcl:7: job "payments-api-key":
//! schedule: ...`). The walk is by hand rather than serde so that unknown
//! keys, wrong types and bad values all get a message in one shape, and so
//! that `provider "random" { ... }` blocks map onto an enum.
//!
//! Values never appear in messages when they may be secret (there are none
//! in this file by design: tokens come from `token_file`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::{Block, Body, Expression, Structure};

use crate::schedule::Schedule;

/// A mistake in the configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {context}{message}")]
pub struct ConfigError {
    pub file: String,
    /// 0 when the mistake has no line (a missing key).
    pub line: usize,
    /// `job "name": key: ` or empty.
    pub context: String,
    pub message: String,
}

/// Where the rotator talks to and where it keeps its runs.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `address`, else `VAULT_ADDR`, else `http://127.0.0.1:8200`.
    pub address: String,
    /// `token_file`; `VAULT_TOKEN` is used when absent.
    pub token_file: Option<PathBuf>,
    /// CA bundle for a TLS server (`ca_cert`, else `VAULT_CACERT`).
    pub ca_cert: Option<PathBuf>,
}

/// The whole file.
#[derive(Debug, Clone)]
pub struct RotatorConfig {
    pub file: PathBuf,
    pub server: ServerSettings,
    /// KV v2 mount and path under which each job's run state lives
    /// (`<state_path>/<job>`), default `secret/custos-rotator`.
    pub state_path: KvPath,
    /// How often `serve` re-checks a run that waits in `verify` (a held run
    /// finishes as soon as the last consumer moves), default 30s.
    pub check_interval: Duration,
    /// How long a step's claim on a run is honoured by other rotators when
    /// its holder stops renewing it (it crashed), default 60s.
    pub claim_ttl: Duration,
    /// How long an invocation retries an error that can heal (server sealed
    /// or unreachable, provider 5xx or timeout) before it gives up, default 5m.
    pub retry_for: Duration,
    /// `telemetry { prometheus_listen = "127.0.0.1:9102" }`: where `serve`
    /// exposes `/metrics`.
    pub prometheus_listen: Option<String>,
    pub jobs: Vec<JobConfig>,
}

impl RotatorConfig {
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// A KV v2 location: the mount (first path segment) and the path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPath {
    pub mount: String,
    pub path: String,
}

impl KvPath {
    /// `secret/payments/api-key` → mount `secret`, path `payments/api-key`.
    /// A prefix keeps its trailing `/`.
    pub fn parse(s: &str, prefix: bool) -> Result<KvPath, String> {
        let s = s.trim_start_matches('/');
        let (mount, path) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no path inside its mount (expected MOUNT/PATH)"))?;
        let path = if prefix {
            path.to_owned()
        } else {
            path.trim_end_matches('/').to_owned()
        };
        if mount.is_empty() || path.trim_matches('/').is_empty() {
            return Err(format!(
                "{s:?} has no path inside its mount (expected MOUNT/PATH)"
            ));
        }
        for reserved in ["data/", "metadata/", "destroy/", "delete/", "undelete/"] {
            if path.starts_with(reserved) {
                return Err(format!(
                    "{s:?}: give the secret's logical path (MOUNT/PATH), not its KV v2 API path ({reserved}...)"
                ));
            }
        }
        Ok(KvPath {
            mount: mount.to_owned(),
            path,
        })
    }

    pub fn data(&self) -> String {
        format!("{}/data/{}", self.mount, self.path)
    }
    pub fn metadata(&self) -> String {
        format!("{}/metadata/{}", self.mount, self.path)
    }
    pub fn destroy(&self) -> String {
        format!("{}/destroy/{}", self.mount, self.path)
    }
    /// The location of `name` under this prefix.
    pub fn child(&self, name: &str) -> KvPath {
        KvPath {
            mount: self.mount.clone(),
            path: format!("{}/{}", self.path.trim_end_matches('/'), name),
        }
    }
}

impl std::fmt::Display for KvPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.mount, self.path)
    }
}

/// What the rotator does to a job when consumers have not moved by its
/// deadline. Only `hold` exists: a rotator never retires early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStuck {
    /// Keep the old credential valid, report it (status, metric, alert) and
    /// re-check on every later tick.
    Hold,
}

/// Where a new API key comes from and how an old one is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    /// Made here from the OS random generator; retiring destroys the old
    /// KV version.
    Random { bytes: usize, format: RandomFormat },
    /// A team's own key issuer behind the webhook contract (docs/rotation.md).
    Http {
        url: String,
        token_file: Option<PathBuf>,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomFormat {
    Base64,
    Base64Url,
    Hex,
    Alphanumeric,
}

/// What a job rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// An API key kept as a KV v2 secret; consumers read its latest version.
    ApiKey {
        secret: KvPath,
        provider: ProviderConfig,
        /// The data field holding the key (default `api_key`); `key_id`
        /// beside it names the credential at its provider.
        field: String,
    },
    /// A transit key that wraps DEKs (envelope encryption).
    Kek {
        transit_mount: String,
        key: String,
        dek_prefix: KvPath,
        /// The data field of a DEK record holding the wrapped DEK.
        dek_field: String,
        batch_size: usize,
        /// Parallel record reads and writes while rewrapping.
        concurrency: usize,
    },
}

#[derive(Debug, Clone)]
pub struct JobConfig {
    pub name: String,
    pub schedule: Schedule,
    pub kind: JobKind,
    pub consumers: Vec<String>,
    pub grace: Duration,
    pub deadline: Duration,
    pub on_stuck: OnStuck,
    /// How often `run` re-checks while it waits in `verify`, default 5s.
    pub poll_interval: Duration,
    /// Declaration line, for messages.
    pub line: usize,
}

impl JobConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            JobKind::ApiKey { .. } => "api_key",
            JobKind::Kek { .. } => "kek",
        }
    }
}

/// Read and check `path`.
pub fn load(path: &Path) -> Result<RotatorConfig, ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        context: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &src, &|k| std::env::var(k).ok())
}

/// Parse the text of a config file named `file`; `env` reads `VAULT_*`.
pub fn parse(
    file: &str,
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RotatorConfig, ConfigError> {
    let body = hcl::parse(src).map_err(|e| {
        let (line, message) = match e {
            hcl::Error::Parse(p) => (p.location().line(), p.message().to_string()),
            other => (0, other.to_string()),
        };
        ConfigError {
            file: file.to_owned(),
            line,
            context: String::new(),
            message: format!("HCL syntax error: {message}"),
        }
    })?;
    let p = Parser { file, src };
    p.config(&body, env)
}

struct Parser<'a> {
    file: &'a str,
    src: &'a str,
}

/// Where in the file an item sits: the enclosing block's header (`job
/// "x"`) and the key.
#[derive(Clone, Copy)]
struct At<'a> {
    block: Option<(&'a str, Option<&'a str>)>,
    key: &'a str,
}

impl<'a> Parser<'a> {
    fn err(&self, at: At<'_>, message: impl Into<String>) -> ConfigError {
        let context = match at.block {
            Some((kind, Some(label))) if at.key.is_empty() => format!("{kind} \"{label}\": "),
            Some((kind, Some(label))) => format!("{kind} \"{label}\": {}: ", at.key),
            Some((kind, None)) if at.key.is_empty() => format!("{kind}: "),
            Some((kind, None)) => format!("{kind}: {}: ", at.key),
            None if at.key.is_empty() => String::new(),
            None => format!("{}: ", at.key),
        };
        ConfigError {
            file: self.file.to_owned(),
            line: self.line_of(at),
            context,
            message: message.into(),
        }
    }

    /// The line of `at`: the first line after the block's header that
    /// assigns or opens `key` (hcl-rs keeps no positions after parsing).
    fn line_of(&self, at: At<'_>) -> usize {
        let lines: Vec<&str> = self.src.lines().collect();
        let mut start = 0;
        if let Some((kind, label)) = at.block {
            let found = lines.iter().position(|l| {
                let t = l.trim_start();
                t.starts_with(kind)
                    && t[kind.len()..].starts_with([' ', '\t', '{', '"'])
                    && label.is_none_or(|lb| t.contains(&format!("\"{lb}\"")))
            });
            match found {
                Some(i) => start = i,
                None => return 0,
            }
            if at.key.is_empty() {
                return start + 1;
            }
        }
        let key = at.key;
        lines
            .iter()
            .enumerate()
            .skip(start)
            .find(|(i, l)| {
                // The header line itself may hold a one-line block.
                let t = if *i == start && at.block.is_some() {
                    l.split_once('{').map(|(_, r)| r).unwrap_or("")
                } else {
                    l
                };
                contains_assignment(t, key)
                    || t.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with('"'))
            })
            .map(|(i, _)| i + 1)
            .unwrap_or(start + 1)
    }

    fn config(
        &self,
        body: &Body,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RotatorConfig, ConfigError> {
        let mut cfg = RotatorConfig {
            file: PathBuf::from(self.file),
            server: ServerSettings {
                address: env("VAULT_ADDR")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "http://127.0.0.1:8200".into()),
                token_file: None,
                ca_cert: env("VAULT_CACERT")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            },
            state_path: KvPath {
                mount: "secret".into(),
                path: "custos-rotator".into(),
            },
            check_interval: Duration::from_secs(30),
            claim_ttl: Duration::from_secs(60),
            retry_for: Duration::from_secs(300),
            prometheus_listen: None,
            jobs: Vec::new(),
        };
        let mut names = BTreeSet::new();
        let mut seen_server = false;
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let at = At {
                        block: None,
                        key: a.key(),
                    };
                    match a.key() {
                        "state_path" => {
                            let v = self.string(at, a.expr())?;
                            cfg.state_path =
                                KvPath::parse(&v, false).map_err(|m| self.err(at, m))?
                        }
                        "check_interval" => cfg.check_interval = self.duration(at, a.expr())?,
                        "claim_ttl" => cfg.claim_ttl = self.duration(at, a.expr())?,
                        "retry_for" => cfg.retry_for = self.duration(at, a.expr())?,
                        other => {
                            return Err(self.err(
                                at,
                                format!(
                                    "unknown key {other:?} (expected server, telemetry, job, state_path, check_interval, claim_ttl or retry_for)"
                                ),
                            ));
                        }
                    }
                }
                Structure::Block(b) => match b.identifier() {
                    "server" => {
                        if seen_server {
                            return Err(self.err(
                                At {
                                    block: Some(("server", None)),
                                    key: "",
                                },
                                "declared more than once",
                            ));
                        }
                        seen_server = true;
                        self.server(b, &mut cfg.server)?
                    }
                    "telemetry" => cfg.prometheus_listen = self.telemetry(b)?,
                    "job" => {
                        if let [label] = b.labels()
                            && !names.insert(label.as_str().to_owned())
                        {
                            return Err(self.err(
                                At {
                                    block: Some(("job", Some(label.as_str()))),
                                    key: "",
                                },
                                "declared more than once",
                            ));
                        }
                        let job = self.job(b)?;
                        cfg.jobs.push(job);
                    }
                    other => {
                        return Err(self.err(
                            At {
                                block: None,
                                key: other,
                            },
                            format!("unknown block {other:?} (expected server, telemetry or job)"),
                        ));
                    }
                },
            }
        }
        // A missing token is not an error here (`policy` talks to no
        // server); `Api::from_settings` refuses it where one is needed.
        Ok(cfg)
    }

    fn server(&self, b: &Block, out: &mut ServerSettings) -> Result<(), ConfigError> {
        for s in b.body().iter() {
            let a = self.attribute(s, ("server", None))?;
            let at = At {
                block: Some(("server", None)),
                key: a.key(),
            };
            match a.key() {
                "address" => {
                    let v = self.string(at, a.expr())?;
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(self.err(at, "must start with http:// or https://"));
                    }
                    out.address = v.trim_end_matches('/').to_owned();
                }
                "token_file" => out.token_file = Some(PathBuf::from(self.string(at, a.expr())?)),
                "ca_cert" => out.ca_cert = Some(PathBuf::from(self.string(at, a.expr())?)),
                other => {
                    return Err(self.err(
                        at,
                        format!("unknown key {other:?} (expected address, token_file or ca_cert)"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn telemetry(&self, b: &Block) -> Result<Option<String>, ConfigError> {
        let mut listen = None;
        for s in b.body().iter() {
            let a = self.attribute(s, ("telemetry", None))?;
            let at = At {
                block: Some(("telemetry", None)),
                key: a.key(),
            };
            match a.key() {
                "prometheus_listen" => {
                    let v = self.string(at, a.expr())?;
                    v.parse::<std::net::SocketAddr>().map_err(|_| {
                        self.err(at, format!("{v:?} is not an address (HOST:PORT)"))
                    })?;
                    listen = Some(v);
                }
                other => {
                    return Err(self.err(
                        at,
                        format!("unknown key {other:?} (expected prometheus_listen)"),
                    ));
                }
            }
        }
        Ok(listen)
    }

    fn job(&self, b: &Block) -> Result<JobConfig, ConfigError> {
        let name = match b.labels() {
            [l] => l.as_str(),
            _ => {
                return Err(self.err(
                    At {
                        block: None,
                        key: "job",
                    },
                    "a job block takes exactly one label, its name: job \"NAME\" { ... }",
                ));
            }
        };
        let hdr = Some(("job", Some(name)));
        let at0 = At {
            block: hdr,
            key: "",
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(self.err(
                at0,
                "a job name may hold only letters, digits, '-', '_' and '.'",
            ));
        }
        let mut kind = None;
        let mut schedule = None;
        let mut timezone = None;
        let mut secret = None;
        let mut field = None;
        let mut provider = None;
        let mut transit_key = None;
        let mut dek_prefix = None;
        let mut dek_field = None;
        let mut batch_size = None;
        let mut concurrency = None;
        let mut consumers = None;
        let mut grace = Duration::from_secs(600);
        let mut deadline = Duration::from_secs(24 * 3600);
        let mut on_stuck = OnStuck::Hold;
        let mut poll_interval = Duration::from_secs(5);
        for s in b.body().iter() {
            if let Structure::Block(pb) = s {
                if pb.identifier() != "provider" {
                    return Err(self.err(
                        At {
                            block: hdr,
                            key: pb.identifier(),
                        },
                        format!("unknown block {:?} (expected provider)", pb.identifier()),
                    ));
                }
                provider = Some(self.provider(name, pb)?);
                continue;
            }
            let a = self.attribute(s, ("job", Some(name)))?;
            let at = At {
                block: hdr,
                key: a.key(),
            };
            let e = a.expr();
            match a.key() {
                "kind" => kind = Some(self.string(at, e)?),
                "schedule" => schedule = Some((self.string(at, e)?, at)),
                "timezone" => timezone = Some((self.string(at, e)?, at)),
                "secret" => {
                    let v = self.string(at, e)?;
                    secret = Some(KvPath::parse(&v, false).map_err(|m| self.err(at, m))?);
                }
                "field" => field = Some(self.string(at, e)?),
                "transit_key" => {
                    let v = self.string(at, e)?;
                    let (m, k) = v
                        .trim_matches('/')
                        .rsplit_once('/')
                        .filter(|(m, k)| !m.is_empty() && !k.is_empty())
                        .ok_or_else(|| {
                            self.err(at, format!("{v:?}: expected TRANSIT_MOUNT/KEY_NAME"))
                        })?;
                    transit_key = Some((m.to_owned(), k.to_owned()));
                }
                "dek_prefix" => {
                    let mut v = self.string(at, e)?;
                    if !v.ends_with('/') {
                        v.push('/');
                    }
                    dek_prefix = Some(KvPath::parse(&v, true).map_err(|m| self.err(at, m))?);
                }
                "dek_field" => dek_field = Some(self.string(at, e)?),
                "batch_size" => {
                    let n = self.integer(at, e)?;
                    if !(1..=10_000).contains(&n) {
                        return Err(self.err(at, "must be between 1 and 10000"));
                    }
                    batch_size = Some(n as usize);
                }
                "concurrency" => {
                    let n = self.integer(at, e)?;
                    if !(1..=256).contains(&n) {
                        return Err(self.err(at, "must be between 1 and 256"));
                    }
                    concurrency = Some(n as usize);
                }
                "consumers" => {
                    let list = self.strings(at, e)?;
                    let mut uniq = BTreeSet::new();
                    for c in &list {
                        if c.trim().is_empty() {
                            return Err(self.err(at, "a consumer name is empty"));
                        }
                        if !uniq.insert(c) {
                            return Err(self.err(at, format!("{c:?} is listed twice")));
                        }
                    }
                    consumers = Some(list);
                }
                "grace" => grace = self.duration(at, e)?,
                "deadline" => deadline = self.duration(at, e)?,
                "poll_interval" => poll_interval = self.duration(at, e)?,
                "on_stuck" => {
                    on_stuck = match self.string(at, e)?.as_str() {
                        "hold" => OnStuck::Hold,
                        other => {
                            return Err(self.err(
                                at,
                                format!(
                                    "unknown value {other:?}: only \"hold\" exists (a rotator never retires a credential a consumer still uses)"
                                ),
                            ));
                        }
                    }
                }
                other => {
                    return Err(self.err(
                        at,
                        format!(
                            "unknown key {other:?} (expected kind, schedule, timezone, secret, field, provider, transit_key, dek_prefix, dek_field, batch_size, concurrency, consumers, grace, deadline, on_stuck or poll_interval)"
                        ),
                    ));
                }
            }
        }
        let missing = |key: &str| {
            self.err(
                At {
                    block: hdr,
                    key: "",
                },
                format!("missing required key {key:?}"),
            )
        };
        let (schedule_src, sched_at) = schedule.ok_or_else(|| missing("schedule"))?;
        let tz = match timezone {
            None => chrono_tz::UTC,
            Some((t, at)) => t.parse::<chrono_tz::Tz>().map_err(|_| {
                self.err(
                    at,
                    format!("unknown time zone {t:?} (an IANA name such as \"Europe/Berlin\")"),
                )
            })?,
        };
        let schedule = Schedule::parse(&schedule_src, tz).map_err(|m| self.err(sched_at, m))?;
        let consumers = consumers.ok_or_else(|| missing("consumers"))?;
        if deadline < grace {
            return Err(self.err(
                At {
                    block: hdr,
                    key: "deadline",
                },
                format!(
                    "deadline ({}) is shorter than grace ({}): consumers could never be waited for",
                    humantime::format_duration(deadline),
                    humantime::format_duration(grace)
                ),
            ));
        }
        let kind_s = kind.ok_or_else(|| missing("kind"))?;
        let only = |key: &str, present: bool, k: &str| -> Result<(), ConfigError> {
            if present {
                Err(self.err(
                    At { block: hdr, key },
                    format!("not a key of a kind = {k:?} job"),
                ))
            } else {
                Ok(())
            }
        };
        let kind = match kind_s.as_str() {
            "api_key" => {
                only("transit_key", transit_key.is_some(), "api_key")?;
                only("dek_prefix", dek_prefix.is_some(), "api_key")?;
                only("dek_field", dek_field.is_some(), "api_key")?;
                only("batch_size", batch_size.is_some(), "api_key")?;
                only("concurrency", concurrency.is_some(), "api_key")?;
                JobKind::ApiKey {
                    secret: secret.ok_or_else(|| missing("secret"))?,
                    provider: provider.ok_or_else(|| missing("provider"))?,
                    field: field.unwrap_or_else(|| "api_key".into()),
                }
            }
            "kek" => {
                only("secret", secret.is_some(), "kek")?;
                only("provider", provider.is_some(), "kek")?;
                only("field", field.is_some(), "kek")?;
                let (transit_mount, key) = transit_key.ok_or_else(|| missing("transit_key"))?;
                JobKind::Kek {
                    transit_mount,
                    key,
                    dek_prefix: dek_prefix.ok_or_else(|| missing("dek_prefix"))?,
                    dek_field: dek_field.unwrap_or_else(|| "wrapped_dek".into()),
                    batch_size: batch_size.unwrap_or(custos_envelope::BATCH_SIZE),
                    concurrency: concurrency.unwrap_or(32),
                }
            }
            other => {
                return Err(self.err(
                    At {
                        block: hdr,
                        key: "kind",
                    },
                    format!("unknown kind {other:?} (expected \"api_key\" or \"kek\")"),
                ));
            }
        };
        Ok(JobConfig {
            name: name.to_owned(),
            schedule,
            kind,
            consumers,
            grace,
            deadline,
            on_stuck,
            poll_interval,
            line: self.line_of(at0),
        })
    }

    fn provider(&self, job: &str, b: &Block) -> Result<ProviderConfig, ConfigError> {
        let at_job = At {
            block: Some(("job", Some(job))),
            key: "provider",
        };
        let kind = match b.labels() {
            [l] => l.as_str(),
            _ => {
                return Err(self.err(
                    at_job,
                    "a provider block takes one label: provider \"random\" or provider \"http\"",
                ));
            }
        };
        let hdr = ("provider", Some(kind));
        let mut bytes = 32usize;
        let mut format = RandomFormat::Base64;
        let mut url = None;
        let mut token_file = None;
        let mut timeout = Duration::from_secs(10);
        for s in b.body().iter() {
            let a = self.attribute(s, hdr)?;
            let at = At {
                block: Some(hdr),
                key: a.key(),
            };
            match (kind, a.key()) {
                ("random", "bytes") => {
                    let n = self.integer(at, a.expr())?;
                    if !(16..=1024).contains(&n) {
                        return Err(self.err(at, "must be between 16 and 1024"));
                    }
                    bytes = n as usize;
                }
                ("random", "format" | "charset") => {
                    format = match self.string(at, a.expr())?.as_str() {
                        "base64" => RandomFormat::Base64,
                        "base64url" => RandomFormat::Base64Url,
                        "hex" => RandomFormat::Hex,
                        "alphanumeric" => RandomFormat::Alphanumeric,
                        other => {
                            return Err(self.err(
                                at,
                                format!(
                                    "unknown format {other:?} (expected base64, base64url, hex or alphanumeric)"
                                ),
                            ));
                        }
                    }
                }
                ("http", "url") => {
                    let v = self.string(at, a.expr())?;
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(self.err(at, "must start with http:// or https://"));
                    }
                    url = Some(v.trim_end_matches('/').to_owned());
                }
                ("http", "token_file") => {
                    token_file = Some(PathBuf::from(self.string(at, a.expr())?))
                }
                ("http", "timeout") => timeout = self.duration(at, a.expr())?,
                ("random" | "http", other) => {
                    let expected = if kind == "random" {
                        "bytes or format"
                    } else {
                        "url, token_file or timeout"
                    };
                    return Err(
                        self.err(at, format!("unknown key {other:?} (expected {expected})"))
                    );
                }
                _ => break,
            }
        }
        match kind {
            "random" => Ok(ProviderConfig::Random { bytes, format }),
            "http" => Ok(ProviderConfig::Http {
                url: url.ok_or_else(|| {
                    self.err(
                        At {
                            block: Some(hdr),
                            key: "",
                        },
                        "missing required key \"url\"",
                    )
                })?,
                token_file,
                timeout,
            }),
            other => Err(self.err(
                at_job,
                format!("unknown provider {other:?} (expected \"random\" or \"http\")"),
            )),
        }
    }

    fn attribute<'b>(
        &self,
        s: &'b Structure,
        block: (&'a str, Option<&'a str>),
    ) -> Result<&'b hcl::Attribute, ConfigError>
    where
        'b: 'a,
    {
        match s {
            Structure::Attribute(a) => Ok(a),
            Structure::Block(b) => Err(self.err(
                At {
                    block: Some(block),
                    key: b.identifier(),
                },
                format!("unexpected block {:?}", b.identifier()),
            )),
        }
    }

    fn string(&self, at: At<'_>, e: &Expression) -> Result<String, ConfigError> {
        match e {
            Expression::String(s) => Ok(s.clone()),
            Expression::Parenthesis(inner) => self.string(at, inner),
            other => Err(self.err(at, format!("expected a string, found {}", describe(other)))),
        }
    }

    fn strings(&self, at: At<'_>, e: &Expression) -> Result<Vec<String>, ConfigError> {
        match e {
            Expression::Array(items) => items.iter().map(|i| self.string(at, i)).collect(),
            other => Err(self.err(
                at,
                format!("expected a list of strings, found {}", describe(other)),
            )),
        }
    }

    fn integer(&self, at: At<'_>, e: &Expression) -> Result<i64, ConfigError> {
        match e {
            Expression::Number(n) if !n.is_f64() => n
                .as_i64()
                .ok_or_else(|| self.err(at, "expected an integer")),
            other => Err(self.err(
                at,
                format!("expected an integer, found {}", describe(other)),
            )),
        }
    }

    /// `"10m"`, `"1h30m"`, `"72h"` (humantime) or a number of seconds.
    fn duration(&self, at: At<'_>, e: &Expression) -> Result<Duration, ConfigError> {
        let d = match e {
            Expression::Number(n) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| self.err(at, "expected a non-negative number of seconds"))?,
            Expression::String(s) => humantime::parse_duration(s.trim()).map_err(|_| {
                self.err(
                    at,
                    format!("{s:?} is not a duration (expected e.g. \"90s\", \"10m\", \"24h\")"),
                )
            })?,
            other => {
                return Err(self.err(
                    at,
                    format!("expected a duration, found {}", describe(other)),
                ));
            }
        };
        Ok(d)
    }
}

/// Whether `line` assigns `key` (`key = ...`) anywhere, e.g. inside a
/// one-line block.
fn contains_assignment(line: &str, key: &str) -> bool {
    let mut rest = line;
    while let Some(i) = rest.find(key) {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
        let after = rest[i + key.len()..].trim_start();
        if before_ok && (after.starts_with('=') || after.starts_with('{')) {
            return true;
        }
        rest = &rest[i + key.len()..];
    }
    false
}

fn describe(e: &Expression) -> String {
    match e {
        Expression::Null => "null".into(),
        Expression::Bool(_) => "a bool".into(),
        Expression::Number(_) => "a number".into(),
        Expression::String(_) => "a string".into(),
        Expression::Array(_) => "a list".into(),
        Expression::Object(_) => "an object".into(),
        Expression::TemplateExpr(_) => "a template (interpolation is not supported)".into(),
        _ => "an expression".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
server {
  address    = "http://127.0.0.1:8200"
  token_file = "/run/secrets/rotator-token"
}

job "payments-api-key" {
  kind      = "api_key"
  schedule  = "0 0 3 * * Mon"
  secret    = "secret/payments/api-key"
  provider "random" { bytes = 32 }
  consumers = ["payments-svc", "billing-worker"]
  grace     = "10m"
  deadline  = "24h"
  on_stuck  = "hold"
}

job "orders-kek" {
  kind        = "kek"
  schedule    = "@monthly"
  transit_key = "transit/orders"
  dek_prefix  = "secret/orders/deks/"
  consumers   = ["orders-svc"]
  grace       = "1h"
  deadline    = "72h"
  on_stuck    = "hold"
}
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err_of(src: &str) -> String {
        match parse("rotator.hcl", src, &no_env) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse("rotator.hcl", EXAMPLE, &no_env).unwrap();
        assert_eq!(c.server.address, "http://127.0.0.1:8200");
        assert_eq!(c.jobs.len(), 2);
        let j = &c.jobs[0];
        assert_eq!(j.name, "payments-api-key");
        assert_eq!(j.grace, Duration::from_secs(600));
        assert_eq!(j.consumers, ["payments-svc", "billing-worker"]);
        let JobKind::ApiKey {
            secret, provider, ..
        } = &j.kind
        else {
            panic!("kind")
        };
        assert_eq!(secret.data(), "secret/data/payments/api-key");
        assert_eq!(
            provider,
            &ProviderConfig::Random {
                bytes: 32,
                format: RandomFormat::Base64
            }
        );
        let JobKind::Kek {
            transit_mount,
            key,
            dek_prefix,
            ..
        } = &c.jobs[1].kind
        else {
            panic!("kind")
        };
        assert_eq!(
            (transit_mount.as_str(), key.as_str()),
            ("transit", "orders")
        );
        assert_eq!(dek_prefix.metadata(), "secret/metadata/orders/deks/");
        assert_eq!(c.jobs[1].line, 18);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let src = EXAMPLE.replace("\"0 0 3 * * Mon\"", "\"every tuesday\"");
        let e = err_of(&src);
        assert!(
            e.starts_with("rotator.hcl:9: job \"payments-api-key\": schedule: "),
            "{e}"
        );
        let e = err_of(&EXAMPLE.replace("kind        = \"kek\"", "kind = \"ssh\""));
        assert!(
            e.contains("rotator.hcl:19: job \"orders-kek\": kind: unknown kind \"ssh\""),
            "{e}"
        );
        let e = err_of(&EXAMPLE.replace("provider \"random\"", "provider \"ldap\""));
        assert!(e.contains("unknown provider \"ldap\""), "{e}");
        let e = err_of(&EXAMPLE.replace("\"secret/payments/api-key\"", "\"secret\""));
        assert!(e.contains(":10: job \"payments-api-key\": secret:"), "{e}");
        let e = err_of(&EXAMPLE.replace("grace     = \"10m\"", "grace = 10.5"));
        assert!(e.contains("grace:"), "{e}");
        let e = err_of(&EXAMPLE.replace("on_stuck  = \"hold\"", "on_stuck = \"retire\""));
        assert!(
            e.contains(":15: job \"payments-api-key\": on_stuck:"),
            "{e}"
        );
        let e = err_of(&EXAMPLE.replace("  grace       = \"1h\"", "  gracee = \"1h\""));
        assert!(
            e.contains(":24: job \"orders-kek\": gracee: unknown key"),
            "{e}"
        );
        let e = err_of("job \"a\" {\n kind = \"api_key\"\n");
        assert!(e.starts_with("rotator.hcl:"), "{e}");
        assert!(e.contains("HCL syntax error"), "{e}");
        let e = err_of(&EXAMPLE.replace("deadline  = \"24h\"", "deadline = \"1m\""));
        assert!(e.contains("shorter than grace"), "{e}");
        let e = err_of(&format!("{EXAMPLE}\njob \"orders-kek\" {{}}\n"));
        assert!(e.contains("declared more than once"), "{e}");
        let e = err_of(&EXAMPLE.replace("secret    = \"secret/payments/api-key\"", ""));
        assert!(e.contains("missing required key \"secret\""), "{e}");
        let e = err_of(&EXAMPLE.replace(
            "transit_key = \"transit/orders\"",
            "transit_key = \"orders\"",
        ));
        assert!(e.contains("transit_key"), "{e}");
    }

    /// The reference configuration in docs/rotation.md parses.
    #[test]
    fn the_documented_example_parses() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rotation.md"))
                .unwrap();
        let block = doc
            .split("```hcl\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap();
        let c = parse("docs/rotation.md", block, &no_env).unwrap();
        assert_eq!(c.jobs.len(), 2);
        assert_eq!(c.prometheus_listen.as_deref(), Some("0.0.0.0:9102"));
        assert_eq!(c.jobs[0].schedule.tz, chrono_tz::Europe::Berlin);
        assert!(matches!(
            &c.jobs[0].kind,
            JobKind::ApiKey {
                provider: ProviderConfig::Http { .. },
                ..
            }
        ));
    }

    #[test]
    fn env_supplies_the_address() {
        let env = |k: &str| (k == "VAULT_ADDR").then(|| "http://10.0.0.1:8200".to_string());
        let c = parse("r.hcl", "job \"x\" {\n kind = \"api_key\"\n schedule = \"@daily\"\n secret = \"kv/a/b\"\n provider \"random\" {}\n consumers = []\n}\n", &env).unwrap();
        assert_eq!(c.server.address, "http://10.0.0.1:8200");
        assert_eq!(c.state_path.to_string(), "secret/custos-rotator");
        let JobKind::ApiKey { secret, .. } = &c.jobs[0].kind else {
            panic!()
        };
        assert_eq!(secret.destroy(), "kv/destroy/a/b");
    }

    #[test]
    fn kv_paths() {
        assert!(KvPath::parse("secret/data/x", false).is_err());
        assert!(KvPath::parse("/secret/", false).is_err());
        let p = KvPath::parse("secret/orders/deks/", true).unwrap();
        assert_eq!(p.child("a").data(), "secret/data/orders/deks/a");
    }
}
