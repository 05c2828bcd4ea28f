//! `custos secrets ...`: enable, disable and list secrets engines.
//!
//! Flags become the `sys/mounts/<path>` body ([`enable_request`] is pure and
//! tested: `kv -version=2` and the `kv-v2` alias both mean type `kv` with
//! option `version=2`); `list` prints `GET sys/mounts` as Vault's table.

use super::{
    CmdResult, Ctx, EXIT_OK, Failure, ensure_trailing_slash, out, parse_kv_pairs, sanitize_path,
    str_field,
};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Enable a secrets engine
    Enable(EnableArgs),
    /// Disable a secrets engine (destroys its data)
    Disable(DisableArgs),
    /// List enabled secrets engines
    List(ListArgs),
}

#[derive(Debug, Args, Default)]
pub struct EnableArgs {
    /// Engine type: kv, kv-v2, transit, ...
    #[arg(value_name = "TYPE")]
    pub engine_type: String,
    /// Mount path (defaults to the type)
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Human-friendly description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// KV version (1 or 2)
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
    /// Default lease TTL
    #[arg(long = "default-lease-ttl", value_name = "DURATION")]
    pub default_lease_ttl: Option<String>,
    /// Maximum lease TTL
    #[arg(long = "max-lease-ttl", value_name = "DURATION")]
    pub max_lease_ttl: Option<String>,
    /// Engine option key=value (repeatable)
    #[arg(long = "options", value_name = "K=V")]
    pub options: Vec<String>,
    /// Do not replicate this mount (local only)
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// Mount path to disable
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show TTLs, options, UUIDs and more
    #[arg(long)]
    pub detailed: bool,
}

/// The mount path and `sys/mounts/<path>` body for `secrets enable`.
pub fn enable_request(a: &EnableArgs) -> Result<(String, Value), Failure> {
    let given_type = a.engine_type.trim();
    if given_type.is_empty() {
        return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
    }
    let mut options = parse_kv_pairs(&a.options, "options")?;
    let engine = match given_type {
        "kv-v2" => {
            options.insert("version".into(), json!("2"));
            "kv"
        }
        t => t,
    };
    if let Some(v) = a.version.filter(|v| *v > 0) {
        options.insert("version".into(), json!(v.to_string()));
    }
    let path = a
        .path
        .as_deref()
        .map(sanitize_path)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| given_type.to_string());
    let path = ensure_trailing_slash(&path);
    let mut config = Map::new();
    if let Some(t) = &a.default_lease_ttl {
        config.insert("default_lease_ttl".into(), json!(t));
    }
    if let Some(t) = &a.max_lease_ttl {
        config.insert("max_lease_ttl".into(), json!(t));
    }
    let mut body = Map::new();
    body.insert("type".into(), json!(engine));
    body.insert(
        "description".into(),
        json!(a.description.clone().unwrap_or_default()),
    );
    body.insert("config".into(), Value::Object(config));
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    if a.local {
        body.insert("local".into(), json!(true));
    }
    Ok((path, Value::Object(body)))
}

/// The mounts of a `sys/mounts` reply (`data`, else top-level entries that
/// look like mounts).
pub fn mounts(resp: &Value) -> Map<String, Value> {
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

fn ttl_text(v: Option<&Value>) -> String {
    match v.and_then(Value::as_i64) {
        Some(0) | None => "system".into(),
        Some(s) => output::human_duration(s),
    }
}

/// Vault's `secrets list` table.
pub fn mounts_table(m: &Map<String, Value>, detailed: bool) -> String {
    let mut paths: Vec<&String> = m.keys().collect();
    paths.sort();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if detailed {
        rows.push(
            [
                "Path",
                "Plugin",
                "Accessor",
                "Default TTL",
                "Max TTL",
                "Force No Cache",
                "Replication",
                "Seal Wrap",
                "External Entropy Access",
                "Options",
                "Description",
                "UUID",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
    } else {
        rows.push(vec![
            "Path".into(),
            "Type".into(),
            "Accessor".into(),
            "Description".into(),
        ]);
    }
    for p in paths {
        let d = &m[p];
        if detailed {
            let cfg = d.get("config").unwrap_or(&Value::Null);
            let b = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
            let plugin = match str_field(d, "plugin_name") {
                "" => str_field(d, "type"),
                n => n,
            };
            rows.push(vec![
                p.clone(),
                plugin.into(),
                str_field(d, "accessor").into(),
                ttl_text(cfg.get("default_lease_ttl")),
                ttl_text(cfg.get("max_lease_ttl")),
                b(cfg, "force_no_cache").to_string(),
                if b(d, "local") { "local" } else { "replicated" }.into(),
                b(d, "seal_wrap").to_string(),
                b(d, "external_entropy_access").to_string(),
                output::go_value(d.get("options").unwrap_or(&Value::Null)),
                str_field(d, "description").into(),
                str_field(d, "uuid").into(),
            ]);
        } else {
            rows.push(vec![
                p.clone(),
                str_field(d, "type").into(),
                str_field(d, "accessor").into(),
                str_field(d, "description").into(),
            ]);
        }
    }
    output::table(&rows)
}

pub async fn run(ctx: &Ctx, cmd: SecretsCmd) -> CmdResult {
    match cmd {
        SecretsCmd::Enable(a) => {
            let (path, body) = enable_request(&a)?;
            ctx.client
                .write(&format!("sys/mounts/{}", path.trim_end_matches('/')), &body)
                .await
                .map_err(|e| Failure::api("Error enabling", &e))?;
            out(&format!(
                "Success! Enabled the {} secrets engine at: {path}",
                a.engine_type.trim()
            ));
            Ok(EXIT_OK)
        }
        SecretsCmd::Disable(a) => {
            let path = ensure_trailing_slash(&sanitize_path(&a.path));
            if path.is_empty() {
                return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
            }
            ctx.client
                .delete(&format!("sys/mounts/{}", path.trim_end_matches('/')))
                .await
                .map_err(|e| {
                    Failure::api(format!("Error disabling secrets engine at {path}"), &e)
                })?;
            out(&format!(
                "Success! Disabled the secrets engine (if it existed) at: {path}"
            ));
            Ok(EXIT_OK)
        }
        SecretsCmd::List(a) => {
            let resp = ctx
                .client
                .read("sys/mounts")
                .await
                .map_err(|e| Failure::api("Error listing secrets engines", &e))?
                .unwrap_or(Value::Null);
            let m = mounts(&resp);
            match ctx.format {
                Format::Json => out(&output::json_pretty(&Value::Object(m))),
                Format::Table => out(&mounts_table(&m, a.detailed)),
            }
            Ok(EXIT_OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(a: EnableArgs) -> (String, Value) {
        enable_request(&a).map_err(|f| f.message).unwrap()
    }

    #[test]
    fn kv_v2_forms() {
        let (p, b) = req(EnableArgs {
            engine_type: "kv".into(),
            version: Some(2),
            path: Some("/app/".into()),
            ..Default::default()
        });
        assert_eq!(p, "app/");
        assert_eq!(b["type"], "kv");
        assert_eq!(b["options"]["version"], "2");

        let (p, b) = req(EnableArgs {
            engine_type: "kv-v2".into(),
            description: Some("d".into()),
            ..Default::default()
        });
        assert_eq!(p, "kv-v2/");
        assert_eq!(b["type"], "kv");
        assert_eq!(b["options"]["version"], "2");
        assert_eq!(b["description"], "d");

        let (p, b) = req(EnableArgs {
            engine_type: "transit".into(),
            max_lease_ttl: Some("1h".into()),
            ..Default::default()
        });
        assert_eq!(p, "transit/");
        assert!(b.get("options").is_none());
        assert_eq!(b["config"]["max_lease_ttl"], "1h");
    }

    #[test]
    fn list_table() {
        let resp = json!({"data": {
            "secret/": {"type": "kv", "accessor": "kv_1", "description": "key/value secret storage",
                        "options": {"version": "2"}, "config": {"default_lease_ttl": 0, "max_lease_ttl": 3600}},
            "sys/": {"type": "system", "accessor": "system_2", "description": ""}}});
        let m = mounts(&resp);
        let t = mounts_table(&m, false);
        assert_eq!(
            t,
            "Path       Type      Accessor    Description\n\
             ----       ----      --------    -----------\n\
             secret/    kv        kv_1        key/value secret storage\n\
             sys/       system    system_2    n/a"
        );
        let d = mounts_table(&m, true);
        assert!(d.contains("system         1h"), "{d}");
        assert!(d.contains("map[version:2]"), "{d}");
    }
}
