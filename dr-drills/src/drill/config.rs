//! `drill.hcl`: what a restore drill restores, with which keys, and how it
//! is judged and reported.
//!
//! ```hcl
//! source {
//!   storage_type            = "aws-s3"            # or "local"
//!   path_prefix             = "prod/raft"         # local: the directory
//!   file_prefix             = "vault-snapshot"
//!   aws_s3_bucket           = "custos-snapshots"
//!   aws_s3_region           = "eu-west-1"
//!   aws_s3_endpoint         = "https://s3.example:3900"
//!   aws_s3_force_path_style = true
//!   # aws_access_key_id / aws_secret_access_key, else the AWS env chain
//!   # snapshot = "prod/raft/vault-snapshot-1700000000000000000.snap"
//! }
//! unseal { key_shares_file = "/run/secrets/custos-unseal-keys" }
//! rto_target       = "15m"
//! schedule         = "0 0 3 1 1,4,7,10 *"      # serve only
//! timezone         = "UTC"
//! report_dir       = "/var/lib/custos-drill"   # default: the current directory
//! listen_address   = "127.0.0.1:9105"           # serve's /metrics
//! work_dir         = "/var/tmp"                # default: the system temp dir
//! metrics_textfile = "/var/lib/node_exporter/custos_drill.prom"
//! ```
//!
//! Data flow: the file's text → hcl-rs's serde deserializer into
//! [`RawConfig`] (every struct `deny_unknown_fields`, so a typo is an error,
//! not a silent default) → [`RawConfig::validate`] into a [`DrillConfig`].
//! Every mistake becomes a [`ConfigError`] naming the file, the line (found
//! by searching the text for the field; hcl-rs keeps no positions after
//! parsing) and the field. The `source` block uses the field names of Vault
//! Enterprise's `snapshot-auto` config, so the snapshot agent's config can be
//! pasted in. The key shares are read from their own file when a drill
//! runs, never held in this config, and never printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::layout::DEFAULT_FILE_PREFIX;
use crate::secret::SecretString;
use custos_rotator::schedule::Schedule;

/// Default RTO target (the seeds' 15 minutes).
pub const DEFAULT_RTO_TARGET: Duration = Duration::from_secs(15 * 60);
/// Default schedule of `drill serve`: quarterly, 03:00 on the 1st of Jan,
/// Apr, Jul and Oct.
pub const DEFAULT_SCHEDULE: &str = "0 0 3 1 1,4,7,10 *";
/// Default address of `drill serve`'s `/metrics`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9105";

/// A mistake in the drill config file: `drill.hcl:4: source.storage_type: ...`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub file: String,
    /// 0 when the mistake has no line (a missing field, an unreadable file).
    pub line: usize,
    /// `source.aws_s3_bucket`, or empty.
    pub field: String,
    pub message: String,
}

/// Where snapshots are read from: `local` or `aws-s3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    Local,
    AwsS3,
}

/// The `source { ... }` block, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub storage_type: Option<String>,
    #[serde(default)]
    pub path_prefix: String,
    pub file_prefix: Option<String>,
    pub snapshot: Option<String>,
    pub aws_s3_bucket: Option<String>,
    pub aws_s3_region: Option<String>,
    pub aws_s3_endpoint: Option<String>,
    #[serde(default)]
    pub aws_s3_force_path_style: bool,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<SecretString>,
    pub aws_session_token: Option<SecretString>,
}

/// The `unseal { ... }` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnseal {
    pub key_shares_file: Option<PathBuf>,
}

/// A duration written as `"15m"` or as a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// The whole file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub source: Option<RawSource>,
    pub unseal: Option<RawUnseal>,
    pub rto_target: Option<RawDuration>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub report_dir: Option<PathBuf>,
    pub listen_address: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub metrics_textfile: Option<PathBuf>,
}

/// Where the drill takes its snapshot from.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub storage_type: StorageType,
    /// Local: the directory. S3: the key prefix in the bucket.
    pub path_prefix: String,
    pub file_prefix: String,
    /// A snapshot key to restore instead of the newest good one.
    pub snapshot: Option<String>,
    /// Set for `aws-s3`.
    pub s3: Option<crate::S3Config>,
}

/// A checked drill config.
#[derive(Clone, Debug)]
pub struct DrillConfig {
    pub file: PathBuf,
    pub source: SourceConfig,
    /// The source cluster's unseal key shares (read when a drill runs).
    pub key_shares_file: PathBuf,
    pub rto_target: Duration,
    pub schedule: Schedule,
    pub report_dir: PathBuf,
    pub listen_address: SocketAddr,
    /// Parent of the drill node's temporary directory (system temp if unset).
    pub work_dir: Option<PathBuf>,
    /// node_exporter textfile that `run` writes the drill metrics to.
    pub metrics_textfile: Option<PathBuf>,
}

/// Read and check `path`. Relative paths inside the file are used as
/// written (relative to the current directory, as `report_dir`'s default).
pub fn load(path: &Path) -> Result<DrillConfig, ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &src)
}

/// Parse the text `src` of the config file `file`.
pub fn parse(file: &str, src: &str) -> Result<DrillConfig, ConfigError> {
    let ctx = Ctx { file, src };
    let raw: RawConfig = hcl::from_str(src).map_err(|e| ctx.serde_error(e))?;
    raw.validate(&ctx)
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: line_of(self.src, field),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// A syntax error keeps its line; a serde error (unknown field, wrong
    /// type) names a field between backticks, whose line is looked up.
    fn serde_error(&self, e: hcl::Error) -> ConfigError {
        match e {
            hcl::Error::Parse(p) => ConfigError {
                file: self.file.to_owned(),
                line: p.location().line(),
                field: String::new(),
                message: format!("HCL syntax error: {}", p.message()),
            },
            other => {
                let message = other.to_string();
                let field = message
                    .split('`')
                    .nth(1)
                    .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or("")
                    .to_owned();
                ConfigError {
                    file: self.file.to_owned(),
                    line: if field.is_empty() {
                        0
                    } else {
                        line_of(self.src, &field)
                    },
                    field,
                    message,
                }
            }
        }
    }
}

/// The first line assigning or opening the last segment of `field`
/// (`source.aws_s3_bucket` → a line `aws_s3_bucket = ...`), 0 if none.
fn line_of(src: &str, field: &str) -> usize {
    let key = field.rsplit('.').next().unwrap_or(field);
    if key.is_empty() {
        return 0;
    }
    src.lines()
        .position(|l| {
            let mut rest = l;
            while let Some(i) = rest.find(key) {
                let before_ok = rest[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                let after = rest[i + key.len()..].trim_start();
                if before_ok && (after.starts_with('=') || after.starts_with('{')) {
                    return true;
                }
                rest = &rest[i + key.len()..];
            }
            false
        })
        .map_or(0, |i| i + 1)
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl RawConfig {
    fn validate(self, ctx: &Ctx<'_>) -> Result<DrillConfig, ConfigError> {
        let source = self
            .source
            .ok_or_else(|| ctx.err("source", "a source { ... } block is required"))?;
        let source = source.validate(ctx)?;
        let key_shares_file = self
            .unseal
            .and_then(|u| u.key_shares_file)
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                ctx.err(
                    "unseal.key_shares_file",
                    "required: the source cluster's unseal key shares (one per line, or `operator init -format=json` output)",
                )
            })?;
        let rto_target = match self.rto_target {
            None => DEFAULT_RTO_TARGET,
            Some(RawDuration::Seconds(s)) => Duration::from_secs(s),
            Some(RawDuration::Text(t)) => humantime::parse_duration(t.trim()).map_err(|_| {
                ctx.err(
                    "rto_target",
                    format!("{t:?} is not a duration (expected e.g. \"15m\", \"900s\")"),
                )
            })?,
        };
        if rto_target.is_zero() {
            return Err(ctx.err("rto_target", "must be greater than zero"));
        }
        let tz: Tz = match non_empty(&self.timezone) {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                ctx.err(
                    "timezone",
                    format!("unknown time zone {name:?} (expected an IANA name such as \"UTC\" or \"Europe/Berlin\")"),
                )
            })?,
        };
        let schedule = Schedule::parse(non_empty(&self.schedule).unwrap_or(DEFAULT_SCHEDULE), tz)
            .map_err(|m| ctx.err("schedule", m))?;
        let listen = non_empty(&self.listen_address).unwrap_or(DEFAULT_LISTEN);
        let listen_address: SocketAddr = listen.parse().map_err(|_| {
            ctx.err(
                "listen_address",
                format!(
                    "{listen:?} is not an address (expected host:port, e.g. \"127.0.0.1:9105\")"
                ),
            )
        })?;
        Ok(DrillConfig {
            file: PathBuf::from(ctx.file),
            source,
            key_shares_file,
            rto_target,
            schedule,
            report_dir: self
                .report_dir
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(".")),
            listen_address,
            work_dir: self.work_dir.filter(|p| !p.as_os_str().is_empty()),
            metrics_textfile: self.metrics_textfile.filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

impl RawSource {
    fn validate(self, ctx: &Ctx<'_>) -> Result<SourceConfig, ConfigError> {
        let storage_type = match non_empty(&self.storage_type) {
            Some("local") => StorageType::Local,
            Some("aws-s3") => StorageType::AwsS3,
            Some(other) => {
                return Err(ctx.err(
                    "source.storage_type",
                    format!("{other:?} is not a storage type (expected \"local\" or \"aws-s3\")"),
                ));
            }
            None => {
                return Err(ctx.err("source.storage_type", "required: \"local\" or \"aws-s3\""));
            }
        };
        let file_prefix = non_empty(&self.file_prefix)
            .unwrap_or(DEFAULT_FILE_PREFIX)
            .to_owned();
        if file_prefix.contains('/') {
            return Err(ctx.err(
                "source.file_prefix",
                "must be a file name prefix, without '/' (put directories in path_prefix)",
            ));
        }
        let snapshot = non_empty(&self.snapshot).map(str::to_owned);
        let s3_only = [
            ("aws_s3_bucket", self.aws_s3_bucket.is_some()),
            ("aws_s3_region", self.aws_s3_region.is_some()),
            ("aws_s3_endpoint", self.aws_s3_endpoint.is_some()),
            ("aws_s3_force_path_style", self.aws_s3_force_path_style),
            ("aws_access_key_id", self.aws_access_key_id.is_some()),
            (
                "aws_secret_access_key",
                self.aws_secret_access_key.is_some(),
            ),
            ("aws_session_token", self.aws_session_token.is_some()),
        ];
        let s3 = match storage_type {
            StorageType::Local => {
                if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
                    return Err(ctx.err(
                        &format!("source.{name}"),
                        "only applies to storage_type = \"aws-s3\"",
                    ));
                }
                if self.path_prefix.trim().is_empty() {
                    return Err(ctx.err(
                        "source.path_prefix",
                        "required for storage_type = \"local\": the directory holding the snapshots",
                    ));
                }
                None
            }
            StorageType::AwsS3 => {
                let bucket = non_empty(&self.aws_s3_bucket).ok_or_else(|| {
                    ctx.err(
                        "source.aws_s3_bucket",
                        "required for storage_type = \"aws-s3\"",
                    )
                })?;
                let region = non_empty(&self.aws_s3_region)
                    .map(str::to_owned)
                    .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                    .ok_or_else(|| {
                        ctx.err(
                            "source.aws_s3_region",
                            "required for storage_type = \"aws-s3\" (or set AWS_REGION)",
                        )
                    })?;
                if self.aws_access_key_id.is_some() != self.aws_secret_access_key.is_some() {
                    return Err(ctx.err(
                        if self.aws_access_key_id.is_some() {
                            "source.aws_secret_access_key"
                        } else {
                            "source.aws_access_key_id"
                        },
                        "aws_access_key_id and aws_secret_access_key go together (or leave both out for the AWS credential chain)",
                    ));
                }
                let cfg = crate::S3Config {
                    aws_s3_bucket: bucket.to_owned(),
                    aws_s3_region: region,
                    aws_s3_endpoint: non_empty(&self.aws_s3_endpoint).map(str::to_owned),
                    aws_s3_force_path_style: self.aws_s3_force_path_style,
                    aws_access_key_id: self.aws_access_key_id,
                    aws_secret_access_key: self.aws_secret_access_key,
                    aws_session_token: self.aws_session_token,
                    ..Default::default()
                };
                cfg.validate().map_err(|e| match e {
                    crate::DestinationError::Config { field, message } => {
                        ctx.err(&format!("source.{field}"), message)
                    }
                    other => ctx.err("source", other.to_string()),
                })?;
                Some(cfg)
            }
        };
        Ok(SourceConfig {
            storage_type,
            path_prefix: self.path_prefix.trim().to_owned(),
            file_prefix,
            snapshot,
            s3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Result<DrillConfig, ConfigError> {
        parse("drill.hcl", src)
    }

    #[test]
    fn local_with_defaults() {
        let c = p(r#"
source {
  storage_type = "local"
  path_prefix  = "/var/lib/custos/snapshots"
}
unseal { key_shares_file = "keys.json" }
"#)
        .unwrap();
        assert_eq!(c.source.storage_type, StorageType::Local);
        assert_eq!(c.source.file_prefix, "vault-snapshot");
        assert_eq!(c.rto_target, DEFAULT_RTO_TARGET);
        assert_eq!(c.key_shares_file, Path::new("keys.json"));
        assert_eq!(c.report_dir, Path::new("."));
        assert_eq!(c.listen_address.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.schedule.cron, DEFAULT_SCHEDULE);
        assert!(c.work_dir.is_none());
        // Quarterly: 03:00 UTC on the 1st of January, April, July, October.
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
        let n = c.schedule.next_after(t).unwrap();
        assert_eq!(
            n,
            chrono::Utc.with_ymd_and_hms(2027, 1, 1, 3, 0, 0).unwrap()
        );
        assert_eq!(
            c.schedule.next_after(n).unwrap(),
            chrono::Utc.with_ymd_and_hms(2027, 4, 1, 3, 0, 0).unwrap()
        );
    }

    #[test]
    fn the_documented_example_parses() {
        let src = include_str!("config.rs");
        let example: String = src
            .lines()
            .skip_while(|l| *l != "//! ```hcl")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start_matches(' ')))
            .collect();
        let c = p(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(c.source.storage_type, StorageType::AwsS3);
        assert_eq!(
            c.metrics_textfile.as_deref(),
            Some(Path::new("/var/lib/node_exporter/custos_drill.prom"))
        );
    }

    #[test]
    fn s3_source() {
        let c = p(r#"
source {
  storage_type            = "aws-s3"
  path_prefix             = "prod"
  aws_s3_bucket           = "snaps"
  aws_s3_region           = "garage"
  aws_s3_endpoint         = "http://127.0.0.1:3900"
  aws_s3_force_path_style = true
  aws_access_key_id       = "GK1"
  aws_secret_access_key   = "hunter2"
  snapshot                = "prod/vault-snapshot-1.snap"
}
unseal { key_shares_file = "/k" }
rto_target = "5m"
schedule   = "0 30 2 * * Sun"
timezone   = "Europe/Berlin"
"#)
        .unwrap();
        let s3 = c.source.s3.unwrap();
        assert_eq!(s3.aws_s3_bucket, "snaps");
        assert!(!format!("{s3:?}").contains("hunter2"));
        assert_eq!(c.rto_target, Duration::from_secs(300));
        assert_eq!(
            c.source.snapshot.as_deref(),
            Some("prod/vault-snapshot-1.snap")
        );
    }

    #[test]
    fn mistakes_name_file_line_and_field() {
        let cases = [
            (
                "source {\n  storage_type = \"local\"\n  path_prefx = \"/x\"\n}\n",
                3,
                "path_prefx",
            ),
            (
                "source {\n  storage_type = \"ftp\"\n}\nunseal { key_shares_file = \"k\" }\n",
                2,
                "source.storage_type",
            ),
            (
                "source {\n  storage_type = \"local\"\n  path_prefix = \"/x\"\n}\nunseal { key_shares_file = \"k\" }\nrto_target = \"soon\"\n",
                6,
                "rto_target",
            ),
            (
                "source {\n  storage_type = \"local\"\n  path_prefix = \"/x\"\n}\n",
                0,
                "unseal.key_shares_file",
            ),
            (
                "source {\n  storage_type = \"aws-s3\"\n  aws_s3_region = \"r\"\n}\nunseal { key_shares_file = \"k\" }\n",
                0,
                "source.aws_s3_bucket",
            ),
            (
                "source {\n  storage_type = \"local\"\n  path_prefix = \"/x\"\n  aws_s3_bucket = \"b\"\n}\nunseal { key_shares_file = \"k\" }\n",
                4,
                "source.aws_s3_bucket",
            ),
            (
                "source {\n  storage_type = \"local\"\n  path_prefix = \"/x\"\n}\nunseal { key_shares_file = \"k\" }\nschedule = \"0 3 * * *\"\n",
                6,
                "schedule",
            ),
        ];
        for (src, line, field) in cases {
            let e = p(src).expect_err(src);
            assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
            assert!(e.to_string().starts_with("drill.hcl:"), "{e}");
        }
        let e = p("source {\n  storage_type = \n").unwrap_err();
        assert!(e.message.contains("syntax"), "{e}");
    }
}
