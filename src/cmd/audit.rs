//! `custos audit list | rotate | verify`.
//!
//! * `list`: the enabled audit devices and sinks, from `GET sys/audit`:
//!   Vault's table (Path, Type, Description; `-detailed` adds Replication,
//!   Options and each one's backlog) or the raw JSON. Devices are declared in
//!   server config, so there is no `enable`/`disable` here.
//! * `rotate`: `PUT sys/audit-rotate` (sudo): every local audit log starts a
//!   new segment, as SIGHUP does on the server's host.
//! * `verify --dir DIR`: local, no server needed. Reads the local audit log
//!   directory (CRCs, sequence, torn tail) and, given sink addresses,
//!   reconciles it with Elasticsearch (exactly the same event ids) and Kafka
//!   (every event id at least once) through `custos_audit::ship::reconcile`.
//!   Prints every gap and exits 1 when there is one (2 when a sink cannot be
//!   read).
//! * `verify --all-nodes` (or `--node ID`): through the server at
//!   `-address`, `GET sys/audit-verify` (sudo): every cluster node runs the
//!   same log checks on its own log directory and the answer holds one
//!   report per node. Prints each node's result; exits 1 when a node's log
//!   has a gap, else 2 when a node did not answer, else 0.

use super::{CmdResult, Ctx, EXIT_LOCAL, EXIT_OK, EXIT_REMOTE, Failure, err, out, str_field};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use custos_audit::LogDir;
use custos_audit::ship::reconcile::{self, EsTarget, KafkaTarget, Reconciliation};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List the enabled audit devices
    List(ListArgs),
    /// Start a new segment in every local audit log (like SIGHUP)
    Rotate,
    /// Check the local audit log and reconcile it with Kafka and Elasticsearch
    Verify(VerifyArgs),
    /// Which clients read a path, at which KV versions, in a time range
    Query(super::audit_query::QueryArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The local audit log directory (the file device's file_path)
    #[arg(long, value_name = "DIR", required_unless_present_any = ["all_nodes", "node"])]
    pub dir: Option<PathBuf>,
    /// Ask the server to check every cluster node's audit log (sys/audit-verify, sudo)
    #[arg(long = "all-nodes", conflicts_with_all = ["dir", "node"])]
    pub all_nodes: bool,
    /// Ask the server to check this cluster node's audit log only
    #[arg(long, value_name = "ID", conflicts_with = "dir")]
    pub node: Option<String>,
    /// Kafka bootstrap servers (host:port,...)
    #[arg(long = "kafka-brokers", value_name = "LIST", requires = "kafka_topic")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic the sink ships to
    #[arg(long = "kafka-topic", value_name = "TOPIC", requires = "kafka_brokers")]
    pub kafka_topic: Option<String>,
    /// Extra librdkafka setting for the consumer (security.protocol, sasl.*, ssl.*), repeatable
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_option: Vec<String>,
    /// The Kafka device's path, naming its checkpoint
    #[arg(long = "kafka-sink", value_name = "PATH", default_value = "kafka")]
    pub kafka_sink: String,
    /// Elasticsearch URL
    #[arg(long = "es-url", value_name = "URL", requires = "es_index")]
    pub es_url: Option<String>,
    /// Elasticsearch base index name (as the device's `index` option)
    #[arg(long = "es-index", value_name = "INDEX", requires = "es_url")]
    pub es_index: Option<String>,
    /// daily (<index>-YYYY.MM.DD) or single (exactly <index>)
    #[arg(long = "es-index-mode", value_name = "MODE", default_value = "daily")]
    pub es_index_mode: String,
    /// Elasticsearch user (basic auth)
    #[arg(long = "es-username", value_name = "USER", env = "CUSTOS_ES_USERNAME")]
    pub es_username: Option<String>,
    /// Elasticsearch password (basic auth)
    #[arg(
        long = "es-password",
        value_name = "PASSWORD",
        env = "CUSTOS_ES_PASSWORD",
        hide_env_values = true
    )]
    pub es_password: Option<String>,
    /// Elasticsearch API key
    #[arg(
        long = "es-api-key",
        value_name = "KEY",
        env = "CUSTOS_ES_API_KEY",
        hide_env_values = true
    )]
    pub es_api_key: Option<String>,
    /// Skip TLS verification of Elasticsearch
    #[arg(long = "es-tls-skip-verify")]
    pub es_tls_skip_verify: bool,
    /// The Elasticsearch device's path, naming its checkpoint
    #[arg(long = "es-sink", value_name = "PATH", default_value = "es")]
    pub es_sink: String,
    /// Give up reading a sink after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show replication and options too
    #[arg(long)]
    pub detailed: bool,
}

/// The device map of a `sys/audit` reply: `data` when present, else the
/// top-level entries that look like devices.
pub fn devices(resp: &Value) -> Map<String, Value> {
    let src = match resp.get("data") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => match resp.as_object() {
            Some(m) => m,
            None => return Map::new(),
        },
    };
    src.iter()
        .filter(|(_, v)| v.get("type").is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A device's backlog for the detailed table: a sink's unshipped records,
/// a file device's durable sequence number.
fn backlog_text(b: Option<&Value>) -> String {
    let Some(b) = b else {
        return "n/a".into();
    };
    let n = |k: &str| b.get(k).and_then(Value::as_u64).unwrap_or(0);
    if b.get("records").is_some() {
        let up = b.get("up").and_then(Value::as_bool).unwrap_or(false);
        let lag = b.get("lag_seconds").and_then(Value::as_f64).unwrap_or(0.0);
        format!(
            "{} records, {} bytes, lag {lag:.0}s, checkpoint {}, {}",
            n("records"),
            n("bytes"),
            n("checkpoint"),
            if up { "up" } else { "DOWN" }
        )
    } else {
        format!(
            "durable seq {}, {} segments",
            n("durable_seq"),
            n("segments")
        )
    }
}

/// Vault's audit list table.
pub fn devices_table(devs: &Map<String, Value>, detailed: bool) -> String {
    let mut paths: Vec<&String> = devs.keys().collect();
    paths.sort();
    let mut rows = if detailed {
        vec![vec![
            "Path".to_string(),
            "Type".into(),
            "Description".into(),
            "Replication".into(),
            "Options".into(),
            "Backlog".into(),
        ]]
    } else {
        vec![vec![
            "Path".to_string(),
            "Type".into(),
            "Description".into(),
        ]]
    };
    for p in paths {
        let d = &devs[p];
        let mut row = vec![
            p.clone(),
            str_field(d, "type").to_string(),
            str_field(d, "description").to_string(),
        ];
        if detailed {
            let local = d.get("local").and_then(Value::as_bool).unwrap_or(false);
            row.push(if local { "local" } else { "replicated" }.into());
            row.push(output::go_value(d.get("options").unwrap_or(&Value::Null)));
            row.push(backlog_text(d.get("backlog")));
        }
        rows.push(row);
    }
    output::table(&rows)
}

pub async fn run(ctx: &Ctx, cmd: AuditCmd) -> CmdResult {
    match cmd {
        AuditCmd::List(a) => list(ctx, a).await,
        AuditCmd::Rotate => {
            ctx.client
                .write("sys/audit-rotate", &json!({}))
                .await
                .map_err(|e| Failure::api("Error rotating audit logs", &e))?;
            out("Success! Rotated the local audit logs (a new segment each).");
            Ok(EXIT_OK)
        }
        AuditCmd::Verify(a) => verify(ctx, a).await,
        AuditCmd::Query(a) => super::audit_query::run(ctx, a).await,
    }
}

fn sink_name(s: &str) -> String {
    s.trim_end_matches('/').to_owned()
}

/// The reconciliation targets from the flags.
fn targets(a: &VerifyArgs) -> Result<(Option<EsTarget>, Option<KafkaTarget>), Failure> {
    let timeout = Duration::from_secs(a.timeout.max(1));
    let es = match (&a.es_url, &a.es_index) {
        (Some(url), Some(index)) => {
            let pattern = match a.es_index_mode.as_str() {
                "daily" => format!("{index}-*"),
                "single" => index.clone(),
                other => {
                    return Err(Failure::local(format!(
                        "--es-index-mode {other:?}: expected daily or single"
                    )));
                }
            };
            Some(EsTarget {
                url: url.trim_end_matches('/').to_owned(),
                index_pattern: pattern,
                username: a.es_username.clone(),
                password: a.es_password.clone(),
                api_key: a.es_api_key.clone(),
                tls_skip_verify: a.es_tls_skip_verify,
                sink: sink_name(&a.es_sink),
                timeout,
            })
        }
        _ => None,
    };
    let kafka = match (&a.kafka_brokers, &a.kafka_topic) {
        (Some(brokers), Some(topic)) => {
            let mut options = BTreeMap::new();
            for o in &a.kafka_option {
                let (k, v) = o.split_once('=').ok_or_else(|| {
                    Failure::local(format!("--kafka-option {o:?}: expected KEY=VALUE"))
                })?;
                if !(k == "security.protocol" || k.starts_with("sasl.") || k.starts_with("ssl.")) {
                    return Err(Failure::local(format!(
                        "--kafka-option {k:?}: only security.protocol, sasl.* and ssl.* are passed to librdkafka"
                    )));
                }
                options.insert(k.to_owned(), v.to_owned());
            }
            Some(KafkaTarget {
                brokers: brokers.clone(),
                topic: topic.clone(),
                options,
                sink: sink_name(&a.kafka_sink),
                timeout,
            })
        }
        _ => None,
    };
    Ok((es, kafka))
}

/// The report as text lines.
pub fn report_text(r: &Reconciliation) -> String {
    let l = &r.local;
    let mut lines = vec![format!(
        "Local log: {} records in {} segments (sequence {}..{}), {} event ids, {} requests without a response",
        l.records,
        l.segments,
        l.first_seq.map_or("-".into(), |s| s.to_string()),
        l.last_seq.map_or("-".into(), |s| s.to_string()),
        r.local_events,
        r.unanswered_requests,
    )];
    for s in [&r.elasticsearch, &r.kafka].into_iter().flatten() {
        lines.push(format!(
            "{}: {} ids found, {} missing, {} pending (after checkpoint {}), {} not in the local log{}{}",
            s.sink,
            s.found,
            s.missing,
            s.pending,
            s.checkpoint.map_or("none".into(), |c| c.to_string()),
            s.extra,
            if s.extra > 0 && s.extra_allowed { " (allowed)" } else { "" },
            if s.duplicates > 0 {
                format!(", {} delivered more than once", s.duplicates)
            } else {
                String::new()
            },
        ));
    }
    let gaps = r.gaps();
    if gaps.is_empty() {
        lines.push("No gaps.".into());
    } else {
        lines.push(format!("{} gap(s):", gaps.len()));
        lines.extend(gaps.iter().map(|g| format!("  {g}")));
    }
    lines.join("\n")
}

/// One node's entry of a `sys/audit-verify` answer as text lines.
pub fn node_report_text(node: &str, v: &Value) -> String {
    let r = &v["report"];
    let seq = |k: &str| r[k].as_u64().map_or("-".into(), |s| s.to_string());
    let mut lines = vec![format!(
        "{node}: {} records in {} segments (sequence {}..{}) in {}",
        r["records"].as_u64().unwrap_or_default(),
        r["segments"].as_u64().unwrap_or_default(),
        seq("first_seq"),
        seq("last_seq"),
        str_field(v, "dir"),
    )];
    let list = |k: &str| r[k].as_array().cloned().unwrap_or_default();
    for g in list("gaps") {
        lines.push(format!("  gap: records {}..{} missing", g[0], g[1]));
    }
    for e in list("crc_errors") {
        lines.push(format!(
            "  damaged record: {} line {}",
            e[0].as_str().unwrap_or_default(),
            e[1]
        ));
    }
    for e in list("out_of_order") {
        lines.push(format!(
            "  record out of order: {} line {}",
            e[0].as_str().unwrap_or_default(),
            e[1]
        ));
    }
    if r["torn_tail"].as_bool() == Some(true) {
        lines.push("  torn tail: the last segment ends in a partial record".into());
    }
    if v["clean"].as_bool() == Some(true) {
        lines.push("  No gaps.".into());
    }
    lines.join("\n")
}

/// `verify --all-nodes` / `--node`: the server checks the nodes' logs.
async fn verify_nodes(ctx: &Ctx, a: &VerifyArgs) -> CmdResult {
    let query: Vec<(&str, String)> = a.node.iter().map(|n| ("node", n.clone())).collect();
    let resp = ctx
        .client
        .read_with("sys/audit-verify", &query)
        .await
        .map_err(|e| Failure::api("Error verifying the nodes' audit logs", &e))?
        .unwrap_or(Value::Null);
    let data = &resp["data"];
    let nodes = data["nodes"].as_object().cloned().unwrap_or_default();
    let missing = data["nodes_missing"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dirty = nodes.values().any(|v| v["clean"].as_bool() != Some(true));
    if ctx.format == Format::Json {
        out(&output::json_pretty(&resp));
    } else {
        let mut lines: Vec<String> = nodes.iter().map(|(n, v)| node_report_text(n, v)).collect();
        for w in resp["warnings"].as_array().into_iter().flatten() {
            lines.push(format!("WARNING: {}", w.as_str().unwrap_or_default()));
        }
        out(&lines.join("\n"));
    }
    Ok(if dirty {
        EXIT_LOCAL
    } else if !missing.is_empty() || nodes.is_empty() {
        EXIT_REMOTE
    } else {
        EXIT_OK
    })
}

async fn verify(ctx: &Ctx, a: VerifyArgs) -> CmdResult {
    let Some(path) = a.dir.clone().filter(|_| !a.all_nodes && a.node.is_none()) else {
        return verify_nodes(ctx, &a).await;
    };
    let dir = LogDir::from_file_path(&path);
    if !dir.dir().is_dir() {
        return Err(Failure::local(format!(
            "{}: no such directory (give the file device's file_path with --dir)",
            path.display()
        )));
    }
    let (es, kafka) = targets(&a)?;
    let r = reconcile::reconcile(&dir, es.as_ref(), kafka.as_ref())
        .await
        .map_err(Failure::remote)?;
    if ctx.format == Format::Json {
        let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("gaps".into(), json!(r.gaps()));
        }
        out(&output::json_pretty(&v));
    } else {
        out(&report_text(&r));
    }
    Ok(if r.gaps().is_empty() {
        EXIT_OK
    } else {
        EXIT_LOCAL
    })
}

async fn list(ctx: &Ctx, a: ListArgs) -> CmdResult {
    let query = if a.detailed {
        vec![("backlog", "true".to_owned())]
    } else {
        Vec::new()
    };
    let resp = ctx
        .client
        .read_with("sys/audit", &query)
        .await
        .map_err(|e| Failure::api("Error listing audits", &e))?
        .unwrap_or(Value::Null);
    let devs = devices(&resp);
    if ctx.format == Format::Json {
        out(&output::json_pretty(&Value::Object(devs)));
        return Ok(EXIT_OK);
    }
    if devs.is_empty() {
        err("No audit devices are enabled.");
        return Ok(EXIT_REMOTE);
    }
    out(&devices_table(&devs, a.detailed));
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_of_devices() {
        let resp = json!({"data": {"file/": {"type": "file", "description": "", "options": {"file_path": "/a"}}},
                          "file/": {"type": "file"}, "request_id": "x"});
        let d = devices(&resp);
        assert_eq!(d.len(), 1);
        assert_eq!(
            devices_table(&d, false),
            "Path     Type    Description\n----     ----    -----------\nfile/    file    n/a"
        );
        let t = devices_table(&d, true);
        assert!(t.contains("replicated     map[file_path:/a]"), "{t}");
    }
}
