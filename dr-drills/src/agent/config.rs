//! An automated snapshot configuration: Vault Enterprise's
//! `sys/storage/raft/snapshot-auto/config/:name` fields, checked.
//!
//! Input is the request's fields as core's `sys/` backend typed them
//! (`interval` already in seconds), merged over the stored configuration on
//! an update, as Vault does. Output is [`AutoConfig`], stored as JSON by core
//! and read back by the agent, which builds its destinations from it
//! ([`AutoConfig::primary`], [`AutoConfig::copy_to`]). Errors name the field.
//! Credentials are stored (through the barrier, like every value) but never
//! shown by a read ([`AutoConfig::display`]) nor logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use custos_rotator::schedule::Schedule;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::destination::Destination;
use crate::error::DestinationError;
use crate::layout::DEFAULT_FILE_PREFIX;
use crate::secret::SecretString;
use crate::{LocalDestination, S3Config, S3Destination};

/// Shortest `interval` accepted (Vault has none; a snapshot every ten
/// seconds is already far more than any recovery point needs).
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Where snapshots go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageType {
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "aws-s3")]
    AwsS3,
}

/// The S3 side of a destination (primary or `copy_to_*`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Fields {
    pub bucket: String,
    pub region: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub disable_tls: bool,
    #[serde(default)]
    pub force_path_style: bool,
    #[serde(default)]
    pub server_side_encryption: bool,
    #[serde(default)]
    pub kms_key: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
}

/// A checked configuration, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoConfig {
    /// Seconds between snapshots; 0 when `schedule` is set.
    pub interval: u64,
    /// A cron expression with seconds (or `@daily`...), instead of `interval`.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    pub retain: u32,
    pub path_prefix: String,
    pub file_prefix: String,
    pub storage_type: StorageType,
    /// Local only: most bytes the snapshots in `path_prefix` may take (0: no
    /// limit).
    #[serde(default)]
    pub local_max_space: u64,
    #[serde(default)]
    pub s3: Option<S3Fields>,
    /// The second destination, filled after the primary succeeds.
    #[serde(default)]
    pub copy_to_path_prefix: Option<String>,
    #[serde(default)]
    pub copy_to_s3: Option<S3Fields>,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> String {
    format!("{field}: {msg}")
}

fn get_str(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k) {
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn get_u64(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(k, "must be a non-negative integer")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad(k, format!("{s:?} is not a non-negative integer"))),
        Some(_) => Err(bad(k, "must be a non-negative integer")),
    }
}

fn get_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.trim() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" | "" => Ok(Some(false)),
            other => Err(bad(k, format!("{other:?} is not a boolean"))),
        },
        Some(_) => Err(bad(k, "must be a boolean")),
    }
}

/// The `aws_*` fields (or `copy_to_aws_*`) of `m` as [`S3Fields`], over
/// `base`; `None` when no bucket is named.
fn s3_fields(
    m: &Map<String, Value>,
    prefix: &str,
    base: Option<&S3Fields>,
) -> Result<Option<S3Fields>, String> {
    let k = |name: &str| format!("{prefix}{name}");
    let mut f = base.cloned().unwrap_or_default();
    if let Some(v) = get_str(m, &k("aws_s3_bucket")) {
        f.bucket = v;
    }
    if let Some(v) = get_str(m, &k("aws_s3_region")) {
        f.region = v;
    }
    if let Some(v) = get_str(m, &k("aws_s3_endpoint")) {
        f.endpoint = Some(v).filter(|s| !s.is_empty());
    }
    if let Some(v) = get_bool(m, &k("aws_s3_disable_tls"))? {
        f.disable_tls = v;
    }
    if let Some(v) = get_bool(m, &k("aws_s3_force_path_style"))? {
        f.force_path_style = v;
    }
    if let Some(v) = get_bool(m, &k("aws_s3_server_side_encryption"))? {
        f.server_side_encryption = v;
    }
    if let Some(v) = get_str(m, &k("aws_s3_kms_key")) {
        f.kms_key = Some(v).filter(|s| !s.is_empty());
    }
    if let Some(v) = get_str(m, &k("aws_access_key_id")) {
        f.access_key_id = Some(v).filter(|s| !s.is_empty());
    }
    if let Some(v) = get_str(m, &k("aws_secret_access_key")) {
        f.secret_access_key = Some(v).filter(|s| !s.is_empty());
    }
    if let Some(v) = get_str(m, &k("aws_session_token")) {
        f.session_token = Some(v).filter(|s| !s.is_empty());
    }
    if f.bucket.is_empty() {
        return Ok(None);
    }
    if f.region.is_empty() {
        return Err(bad(&k("aws_s3_region"), "is required with an S3 bucket"));
    }
    if f.access_key_id.is_some() != f.secret_access_key.is_some() {
        return Err(bad(
            &k("aws_secret_access_key"),
            "aws_access_key_id and aws_secret_access_key go together (or leave both out for the standard AWS credential chain)",
        ));
    }
    if let Some(e) = &f.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
        && e.contains("://")
    {
        return Err(bad(
            &k("aws_s3_endpoint"),
            "must be an http:// or https:// URL",
        ));
    }
    Ok(Some(f))
}

impl S3Fields {
    fn to_s3_config(&self, field_prefix: &str) -> Result<S3Config, String> {
        let endpoint = self.endpoint.as_ref().map(|e| {
            if e.contains("://") {
                e.clone()
            } else if self.disable_tls {
                format!("http://{e}")
            } else {
                format!("https://{e}")
            }
        });
        let c = S3Config {
            aws_s3_bucket: self.bucket.clone(),
            aws_s3_region: self.region.clone(),
            aws_s3_endpoint: endpoint,
            aws_s3_force_path_style: self.force_path_style,
            aws_s3_server_side_encryption: self.server_side_encryption,
            aws_s3_kms_key: self.kms_key.clone(),
            aws_access_key_id: self.access_key_id.clone(),
            aws_secret_access_key: self.secret_access_key.clone().map(SecretString::new),
            aws_session_token: self.session_token.clone().map(SecretString::new),
        };
        c.validate()
            .map_err(|e| format!("{field_prefix}{}", config_error(&e)))?;
        Ok(c)
    }
}

/// `schedule` in `timezone` (UTC when unset), or `None` without a schedule.
fn parse_schedule(
    schedule: Option<&str>,
    timezone: Option<&str>,
) -> Result<Option<Schedule>, String> {
    let Some(s) = schedule else {
        return Ok(None);
    };
    let tz: chrono_tz::Tz = match timezone {
        None => chrono_tz::UTC,
        Some(t) => t
            .parse()
            .map_err(|_| bad("timezone", format!("{t:?} is not an IANA time zone")))?,
    };
    Schedule::parse(s, tz)
        .map(Some)
        .map_err(|e| bad("schedule", e))
}

fn config_error(e: &DestinationError) -> String {
    match e {
        DestinationError::Config { field, message } => format!("{field}: {message}"),
        other => other.to_string(),
    }
}

impl AutoConfig {
    /// Check a write of `input` over `existing` (an update keeps what it does
    /// not name). Errors name the field.
    pub fn normalize(
        existing: Option<&Map<String, Value>>,
        input: &Map<String, Value>,
    ) -> Result<AutoConfig, String> {
        let old: Option<AutoConfig> = existing
            .map(|m| serde_json::from_value(Value::Object(m.clone())))
            .transpose()
            .map_err(|e| format!("the stored configuration does not parse: {e}"))?;
        let storage_type = match get_str(input, "storage_type") {
            Some(s) => match s.as_str() {
                "local" => StorageType::Local,
                "aws-s3" => StorageType::AwsS3,
                "azure-blob" | "google-gcs" => {
                    return Err(bad(
                        "storage_type",
                        format!("{s:?} is not supported by Custos (use \"local\" or \"aws-s3\")"),
                    ));
                }
                other => {
                    return Err(bad(
                        "storage_type",
                        format!("{other:?} is not one of \"local\", \"aws-s3\""),
                    ));
                }
            },
            None => match &old {
                Some(o) => o.storage_type,
                None => return Err(bad("storage_type", "is required (\"local\" or \"aws-s3\")")),
            },
        };
        let timezone = match get_str(input, "timezone") {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s),
            None => old.as_ref().and_then(|o| o.timezone.clone()),
        };
        // A schedule replaces an interval and an interval a schedule; both
        // in one write is a mistake.
        let new_interval = get_u64(input, "interval")?.filter(|i| *i > 0);
        let new_schedule = get_str(input, "schedule");
        let (old_interval, old_schedule) = old
            .as_ref()
            .map_or((0, None), |o| (o.interval, o.schedule.clone()));
        let (interval, schedule) = match (new_interval, new_schedule) {
            (Some(_), Some(s)) if !s.is_empty() => {
                return Err(bad(
                    "schedule",
                    "give either interval or schedule, not both",
                ));
            }
            (_, Some(s)) if !s.is_empty() => (0, Some(s)),
            (Some(i), _) => (i, None),
            (None, Some(_)) => (old_interval, None),
            (None, None) => (old_interval, old_schedule),
        };
        if schedule.is_none() && interval == 0 {
            return Err(bad(
                "interval",
                "is required (seconds or a duration such as \"6h\"), or give a cron `schedule`",
            ));
        }
        if schedule.is_none() && interval < MIN_INTERVAL.as_secs() {
            return Err(bad(
                "interval",
                format!(
                    "{interval}s is shorter than the minimum of {}s",
                    MIN_INTERVAL.as_secs()
                ),
            ));
        }
        parse_schedule(schedule.as_deref(), timezone.as_deref())?;
        let retain = match get_u64(input, "retain")? {
            Some(0) => return Err(bad("retain", "must be at least 1")),
            Some(v) => u32::try_from(v).map_err(|_| bad("retain", "is too large"))?,
            None => old.as_ref().map_or(1, |o| o.retain),
        };
        let path_prefix = match get_str(input, "path_prefix") {
            Some(v) => v,
            None => old
                .as_ref()
                .map(|o| o.path_prefix.clone())
                .unwrap_or_default(),
        };
        let file_prefix = match get_str(input, "file_prefix") {
            Some(v) if !v.is_empty() => v,
            _ => old
                .as_ref()
                .map(|o| o.file_prefix.clone())
                .unwrap_or_else(|| DEFAULT_FILE_PREFIX.to_string()),
        };
        if file_prefix.contains('/') {
            return Err(bad("file_prefix", "must not contain '/'"));
        }
        let local_max_space = match get_u64(input, "local_max_space")? {
            Some(v) => v,
            None => old.as_ref().map_or(0, |o| o.local_max_space),
        };
        let s3 = s3_fields(input, "", old.as_ref().and_then(|o| o.s3.as_ref()))?;
        match storage_type {
            StorageType::Local => {
                if path_prefix.is_empty() {
                    return Err(bad(
                        "path_prefix",
                        "is required: the directory to write snapshots in",
                    ));
                }
                if !path_prefix.starts_with('/') {
                    return Err(bad(
                        "path_prefix",
                        "must be an absolute directory for storage_type \"local\"",
                    ));
                }
            }
            StorageType::AwsS3 => {
                let Some(s3) = &s3 else {
                    return Err(bad(
                        "aws_s3_bucket",
                        "is required for storage_type \"aws-s3\"",
                    ));
                };
                s3.to_s3_config("")?;
            }
        }
        let copy_to_path_prefix = match get_str(input, "copy_to_path_prefix") {
            Some(v) => Some(v),
            None => old.as_ref().and_then(|o| o.copy_to_path_prefix.clone()),
        };
        let copy_to_s3 = s3_fields(
            input,
            "copy_to_",
            old.as_ref().and_then(|o| o.copy_to_s3.as_ref()),
        )?;
        if let Some(c) = &copy_to_s3 {
            c.to_s3_config("copy_to_")?;
            if let (Some(p), StorageType::AwsS3) = (&s3, storage_type)
                && p.bucket == c.bucket
                && p.endpoint == c.endpoint
                && p.region == c.region
            {
                return Err(bad(
                    "copy_to_aws_s3_bucket",
                    "is the primary destination itself; the copy must go to another bucket or region",
                ));
            }
        }
        Ok(AutoConfig {
            interval,
            schedule,
            timezone,
            retain,
            path_prefix,
            file_prefix,
            storage_type,
            local_max_space,
            s3,
            copy_to_path_prefix,
            copy_to_s3,
        })
    }

    /// The cron schedule, when one is set.
    pub fn cron(&self) -> Result<Option<Schedule>, String> {
        parse_schedule(self.schedule.as_deref(), self.timezone.as_deref())
    }

    /// When the snapshot after one that started at `last` is due (`None`:
    /// never ran, so now).
    pub fn next_after(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.cron() {
            Ok(Some(s)) => s
                .next_after(last.unwrap_or(now))
                .unwrap_or(now + chrono::Duration::days(365)),
            _ => match last {
                None => now,
                Some(l) => l + chrono::Duration::seconds(self.interval as i64),
            },
        }
    }

    /// The longest gap between two snapshots this configuration asks for
    /// (the interval, or the schedule's period): the snapshot-age alert's
    /// threshold is this plus 15 minutes.
    pub fn period(&self) -> Duration {
        match self.cron() {
            Ok(Some(s)) => s.period(Utc::now()),
            _ => Duration::from_secs(self.interval),
        }
    }

    /// What a read shows: Vault's field names, credentials left out.
    pub fn display(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("interval".into(), self.interval.into());
        if let Some(s) = &self.schedule {
            m.insert("schedule".into(), s.clone().into());
        }
        if let Some(t) = &self.timezone {
            m.insert("timezone".into(), t.clone().into());
        }
        m.insert("retain".into(), self.retain.into());
        m.insert("path_prefix".into(), self.path_prefix.clone().into());
        m.insert("file_prefix".into(), self.file_prefix.clone().into());
        m.insert(
            "storage_type".into(),
            match self.storage_type {
                StorageType::Local => "local",
                StorageType::AwsS3 => "aws-s3",
            }
            .into(),
        );
        m.insert("local_max_space".into(), self.local_max_space.into());
        let mut s3 = |prefix: &str, f: &S3Fields| {
            m.insert(format!("{prefix}aws_s3_bucket"), f.bucket.clone().into());
            m.insert(format!("{prefix}aws_s3_region"), f.region.clone().into());
            m.insert(
                format!("{prefix}aws_s3_endpoint"),
                f.endpoint.clone().unwrap_or_default().into(),
            );
            m.insert(format!("{prefix}aws_s3_disable_tls"), f.disable_tls.into());
            m.insert(
                format!("{prefix}aws_s3_force_path_style"),
                f.force_path_style.into(),
            );
            m.insert(
                format!("{prefix}aws_s3_server_side_encryption"),
                f.server_side_encryption.into(),
            );
            if let Some(k) = &f.kms_key {
                m.insert(format!("{prefix}aws_s3_kms_key"), k.clone().into());
            }
            if let Some(k) = &f.access_key_id {
                m.insert(format!("{prefix}aws_access_key_id"), k.clone().into());
            }
        };
        if let Some(f) = &self.s3 {
            s3("", f);
        }
        if let Some(f) = &self.copy_to_s3 {
            s3("copy_to_", f);
        }
        if let Some(p) = &self.copy_to_path_prefix {
            m.insert("copy_to_path_prefix".into(), p.clone().into());
        }
        m
    }

    /// The primary destination and the key prefix inside it.
    pub async fn primary(&self) -> Result<(Box<dyn Destination>, String), DestinationError> {
        match self.storage_type {
            StorageType::Local => Ok((
                Box::new(LocalDestination::open(&self.path_prefix)?),
                String::new(),
            )),
            StorageType::AwsS3 => {
                let f = self.s3.as_ref().ok_or_else(|| DestinationError::Config {
                    field: "aws_s3_bucket",
                    message: "is required for storage_type \"aws-s3\"".into(),
                })?;
                let c = f
                    .to_s3_config("")
                    .map_err(|message| DestinationError::Config {
                        field: "aws_s3",
                        message,
                    })?;
                Ok((
                    Box::new(S3Destination::new(&c).await?),
                    self.path_prefix.trim_matches('/').to_string(),
                ))
            }
        }
    }

    /// The `copy_to_*` destination and its key prefix, when configured.
    pub async fn copy_to(
        &self,
    ) -> Result<Option<(Box<dyn Destination>, String)>, DestinationError> {
        let Some(f) = &self.copy_to_s3 else {
            return Ok(None);
        };
        let c = f
            .to_s3_config("copy_to_")
            .map_err(|message| DestinationError::Config {
                field: "copy_to_aws_s3",
                message,
            })?;
        let prefix = self
            .copy_to_path_prefix
            .clone()
            .unwrap_or_else(|| match self.storage_type {
                StorageType::AwsS3 => self.path_prefix.clone(),
                StorageType::Local => String::new(),
            });
        Ok(Some((
            Box::new(S3Destination::new(&c).await?),
            prefix.trim_matches('/').to_string(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn local_config_with_vault_defaults() {
        let c = AutoConfig::normalize(
            None,
            &obj(json!({"storage_type": "local", "path_prefix": "/var/snap", "interval": 3600, "local_max_space": 1000})),
        )
        .unwrap();
        assert_eq!(c.retain, 1);
        assert_eq!(c.file_prefix, "vault-snapshot");
        assert_eq!(c.interval, 3600);
        assert!(c.schedule.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = |v: Value| AutoConfig::normalize(None, &obj(v)).unwrap_err();
        assert!(e(json!({"path_prefix": "/x", "interval": 3600})).starts_with("storage_type:"));
        assert!(
            e(json!({"storage_type": "ftp", "path_prefix": "/x", "interval": 3600}))
                .starts_with("storage_type:")
        );
        assert!(e(json!({"storage_type": "local", "path_prefix": "/x"})).starts_with("interval:"));
        assert!(
            e(json!({"storage_type": "local", "path_prefix": "/x", "interval": 5}))
                .starts_with("interval:")
        );
        assert!(e(json!({"storage_type": "local", "interval": 3600})).starts_with("path_prefix:"));
        assert!(
            e(json!({"storage_type": "local", "path_prefix": "/x", "interval": 3600, "retain": 0}))
                .starts_with("retain:")
        );
        assert!(
            e(json!({"storage_type": "aws-s3", "interval": 3600})).starts_with("aws_s3_bucket:")
        );
        assert!(
            e(json!({"storage_type": "aws-s3", "interval": 3600, "aws_s3_bucket": "b-1"}))
                .starts_with("aws_s3_region:")
        );
        assert!(
            e(json!({"storage_type": "local", "path_prefix": "/x", "schedule": "not cron"}))
                .starts_with("schedule:")
        );
        assert!(e(json!({"storage_type": "local", "path_prefix": "/x", "schedule": "@daily", "timezone": "Mars/Base"})).starts_with("timezone:"));
        assert!(e(json!({"storage_type": "aws-s3", "interval": 3600, "aws_s3_bucket": "b-1", "aws_s3_region": "r", "aws_access_key_id": "AK"})).starts_with("aws_secret_access_key:"));
        assert!(e(json!({"storage_type": "local", "path_prefix": "/x", "interval": 3600, "copy_to_aws_s3_bucket": "c-1"})).starts_with("copy_to_aws_s3_region:"));
    }

    #[test]
    fn updates_keep_what_they_do_not_name_and_display_hides_secrets() {
        let first = AutoConfig::normalize(
            None,
            &obj(json!({"storage_type": "aws-s3", "interval": "3600", "aws_s3_bucket": "snaps",
                "aws_s3_region": "eu-west-1", "aws_access_key_id": "AKID", "aws_secret_access_key": "s3cr3t",
                "copy_to_aws_s3_bucket": "snaps-copy", "copy_to_aws_s3_region": "eu-central-1"})),
        )
        .unwrap();
        let stored = obj(serde_json::to_value(&first).unwrap());
        let second = AutoConfig::normalize(Some(&stored), &obj(json!({"retain": 5}))).unwrap();
        assert_eq!(second.retain, 5);
        assert_eq!(second.s3, first.s3);
        assert_eq!(second.copy_to_s3, first.copy_to_s3);
        let shown = Value::Object(second.display()).to_string();
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        // A schedule replaces the interval, and an interval the schedule.
        let sched =
            AutoConfig::normalize(Some(&stored), &obj(json!({"schedule": "0 0 */6 * * *"})))
                .unwrap();
        assert_eq!(
            (sched.interval, sched.schedule.as_deref()),
            (0, Some("0 0 */6 * * *"))
        );
        let stored = obj(serde_json::to_value(&sched).unwrap());
        let back = AutoConfig::normalize(Some(&stored), &obj(json!({"interval": 7200}))).unwrap();
        assert_eq!((back.interval, back.schedule), (7200, None));
    }

    #[test]
    fn next_run_follows_interval_or_schedule() {
        let now = Utc::now();
        let c = AutoConfig::normalize(
            None,
            &obj(json!({"storage_type": "local", "path_prefix": "/x", "interval": 600})),
        )
        .unwrap();
        assert_eq!(c.next_after(None, now), now);
        assert_eq!(
            c.next_after(Some(now), now),
            now + chrono::Duration::seconds(600)
        );
        assert_eq!(c.period(), Duration::from_secs(600));
        let c = AutoConfig::normalize(
            None,
            &obj(json!({"storage_type": "local", "path_prefix": "/x", "schedule": "@hourly"})),
        )
        .unwrap();
        assert!(c.next_after(Some(now), now) > now);
        assert_eq!(c.period(), Duration::from_secs(3600));
    }
}
