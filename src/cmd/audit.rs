//! `custos audit list`: the enabled audit devices, from `GET sys/audit`.
//!
//! Prints Vault's table (Path, Type, Description; `-detailed` adds
//! Replication and Options) or the raw JSON. Devices are declared in server
//! config, so there is no `enable`/`disable` here.

use super::{CmdResult, Ctx, EXIT_OK, EXIT_REMOTE, Failure, err, out, str_field};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List the enabled audit devices
    List(ListArgs),
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
        }
        rows.push(row);
    }
    output::table(&rows)
}

pub async fn run(ctx: &Ctx, cmd: AuditCmd) -> CmdResult {
    let AuditCmd::List(a) = cmd;
    let resp = ctx
        .client
        .read("sys/audit")
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
