//! `custos kv ...`: the KV secrets engine commands, mirroring `vault kv`.
//!
//! The user names a secret either as `secret/foo` or as `-mount=secret foo`.
//! Before each call the command asks the server which mount serves the path
//! and which KV version it is (`GET sys/internal/ui/mounts/<path>`, answer
//! `data.path` and `data.options.version`), then builds the API path with the
//! pure functions here ([`MountInfo`], [`resolve_kv_path`],
//! [`add_prefix_to_kv_path`]): for KV v2 `secret/foo` becomes
//! `secret/data/foo`, `secret/metadata/foo`, `secret/delete/foo`, ... Data
//! arguments (`a=1 b=@file c=- -`) are parsed by [`parse_args_data`], as
//! Vault's `kvbuilder` does. Results are printed like `vault kv` prints them.

use super::{
    CmdResult, Ctx, EXIT_OK, Failure, err, out, path_join, print_data, print_field, print_secret,
    sanitize_path,
};
use crate::client::{Body, ClientError, VaultClient};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::io::Read;

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// Create or update data in the KV store
    Put(PutArgs),
    /// Retrieve data from the KV store
    Get(GetArgs),
    /// Set or update data in the KV store without overwriting
    Patch(PatchArgs),
    /// Delete versions (or the latest version) in the KV store
    Delete(DeleteArgs),
    /// Undelete versions in the KV store
    Undelete(VersionsArgs),
    /// Permanently remove one or more versions in the KV store
    Destroy(VersionsArgs),
    /// List data or secrets
    List(ListArgs),
    /// Interact with the KV store's metadata
    Metadata {
        #[command(subcommand)]
        cmd: MetadataCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum MetadataCmd {
    /// Retrieve a secret's metadata and versions
    Get(MountPath),
    /// Create or update a secret's metadata
    Put(MetadataPutArgs),
    /// Delete a secret's metadata and all its versions
    Delete(MountPath),
}

/// `-mount` and the secret path, shared by most subcommands.
#[derive(Debug, Args)]
pub struct MountPath {
    /// Where the KV engine is mounted; the path is then relative to it
    #[arg(long, value_name = "MOUNT")]
    pub mount: Option<String>,
    /// The secret path (`secret/foo`, or `foo` with -mount)
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Check-and-set: write only if the current version is N (0 = only if absent)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub cas: i64,
    /// key=value pairs; value `@file` reads a file, `-` reads stdin; a lone `-` reads a JSON object
    #[arg(value_name = "K=V")]
    pub data: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Check-and-set version for the write
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub cas: i64,
    /// `patch` (HTTP PATCH, default) or `rw` (read, merge, write with cas)
    #[arg(long, default_value = "patch", value_name = "METHOD")]
    pub method: String,
    /// key=value pairs, as for `kv put`
    #[arg(value_name = "K=V")]
    pub data: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Read this version instead of the latest
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub version: u64,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Comma-separated versions to soft-delete (KV v2)
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub versions: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Comma-separated versions (required)
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub versions: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where the KV engine is mounted; the path is then relative to it
    #[arg(long, value_name = "MOUNT")]
    pub mount: Option<String>,
    /// The folder to list
    #[arg(value_name = "PATH")]
    pub path: Option<String>,
}

#[derive(Debug, Args)]
pub struct MetadataPutArgs {
    #[command(flatten)]
    pub target: MountPath,
    /// Number of versions to keep (0 = engine default)
    #[arg(long = "max-versions", default_value_t = -1, allow_negative_numbers = true)]
    pub max_versions: i64,
    /// Require check-and-set on every write
    #[arg(
        long = "cas-required",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub cas_required: Option<bool>,
    /// Delete versions after this duration (e.g. 30m, 768h)
    #[arg(long = "delete-version-after", value_name = "DURATION")]
    pub delete_version_after: Option<String>,
    /// Custom metadata key=value (repeatable)
    #[arg(long = "custom-metadata", value_name = "K=V")]
    pub custom_metadata: Vec<String>,
}

/// What the mount preflight told us about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount path with trailing slash (`secret/`), or "" when unknown.
    pub path: String,
    /// KV version: 1 or 2.
    pub version: u8,
}

impl MountInfo {
    /// Interpret a `sys/internal/ui/mounts/<path>` response body (the whole
    /// envelope). Missing options or version mean KV v1, as in Vault.
    pub fn from_preflight(body: &Value) -> MountInfo {
        let data = body.get("data").unwrap_or(&Value::Null);
        let path = data
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let version = match data.get("options").and_then(|o| o.get("version")) {
            Some(Value::String(s)) if s == "2" => 2,
            Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
            _ => 1,
        };
        MountInfo { path, version }
    }

    /// Unknown mount (the server has no preflight endpoint): KV v1.
    pub fn unknown() -> MountInfo {
        MountInfo {
            path: String::new(),
            version: 1,
        }
    }

    pub fn is_v2(&self) -> bool {
        self.version == 2
    }
}

/// Vault's `addPrefixToKVPath`: insert `api_prefix` (`data`, `metadata`, ...)
/// after the mount path. With `skip_if_exists`, a path that already has the
/// prefix is left alone.
pub fn add_prefix_to_kv_path(
    path: &str,
    mount_path: &str,
    api_prefix: &str,
    skip_if_exists: bool,
) -> String {
    if path == mount_path || path == mount_path.trim_end_matches('/') {
        return path_join(&[mount_path, api_prefix]);
    }
    let mut mount = mount_path.to_string();
    let mut suffix = path
        .strip_prefix(mount.as_str())
        .unwrap_or(path)
        .to_string();
    // Trim leading parts of the mount path (namespaces) that the path lacks.
    while suffix == path {
        let mut parts = mount.splitn(2, '/');
        let _first = parts.next();
        match parts.next() {
            Some(rest) if !rest.is_empty() => {
                mount = rest.trim_end_matches('/').to_string();
                suffix = suffix
                    .strip_prefix(mount.as_str())
                    .unwrap_or(&suffix)
                    .to_string();
            }
            _ => break,
        }
    }
    if skip_if_exists
        && (suffix.starts_with(api_prefix) || suffix.starts_with(&format!("/{api_prefix}")))
    {
        return path_join(&[&mount, &suffix]);
    }
    path_join(&[&mount, api_prefix, &suffix])
}

/// The path to ask the preflight about: the `-mount` value, or the path.
pub fn preflight_target(mount_flag: Option<&str>, arg: &str) -> String {
    match mount_flag.filter(|m| !m.is_empty()) {
        Some(m) => sanitize_path(m),
        None => sanitize_path(arg),
    }
}

/// The API path for `arg` (`secret/foo`, or `foo` with `-mount`) given the
/// preflight answer: `<mount>/<api_prefix>/<rest>` on KV v2, the path itself
/// on v1.
pub fn resolve_kv_path(
    mount_flag: Option<&str>,
    arg: &str,
    info: &MountInfo,
    api_prefix: &str,
) -> String {
    let mount_flag = mount_flag.filter(|m| !m.is_empty());
    let partial = sanitize_path(arg);
    match (info.is_v2(), mount_flag) {
        (true, Some(_)) => {
            let partial = path_join(&[&info.path, &partial]);
            add_prefix_to_kv_path(&partial, &info.path, api_prefix, false)
        }
        (true, None) => add_prefix_to_kv_path(&partial, &info.path, api_prefix, false),
        (false, Some(m)) => {
            let mount = if info.path.is_empty() {
                sanitize_path(m)
            } else {
                info.path.clone()
            };
            path_join(&[&mount, &partial])
        }
        (false, None) => partial,
    }
}

/// Parse `kv put`/`kv patch` data arguments like Vault's `kvbuilder`:
/// `k=v`; `k=@file` (file contents); `k=\@x` (literal `@x`); `k=-` (all of
/// stdin); a lone `-` or `@file` merges a JSON object; repeated keys collect
/// into a list; empty arguments are ignored. `read_file` and `stdin` are
/// injected so tests need no real files.
pub fn parse_args_data(
    args: &[String],
    stdin: &mut dyn Read,
    read_file: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
) -> Result<Map<String, Value>, String> {
    let mut result = Map::new();
    let mut stdin_used = false;
    let mut take_stdin = |stdin: &mut dyn Read| -> Result<Vec<u8>, String> {
        if stdin_used {
            return Err("stdin already consumed".to_string());
        }
        stdin_used = true;
        let mut buf = Vec::new();
        stdin
            .read_to_end(&mut buf)
            .map_err(|e| format!("error reading stdin: {e}"))?;
        Ok(buf)
    };
    let merge_json = |result: &mut Map<String, Value>, bytes: &[u8]| -> Result<(), String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match v {
            Value::Object(m) => {
                result.extend(m);
                Ok(())
            }
            _ => Err("JSON input must be an object".to_string()),
        }
    };
    for raw in args {
        if raw.is_empty() {
            continue;
        }
        let Some((key, value)) = raw.split_once('=') else {
            if raw == "-" {
                let bytes = take_stdin(stdin)?;
                merge_json(&mut result, &bytes)?;
                continue;
            }
            if let Some(file) = raw.strip_prefix('@') {
                let bytes = read_file(file).map_err(|e| format!("open {file}: {e}"))?;
                merge_json(&mut result, &bytes)?;
                continue;
            }
            return Err("format must be key=value".to_string());
        };
        let value = if let Some(file) = value.strip_prefix('@') {
            let bytes = read_file(file).map_err(|e| format!("error reading file: {e}"))?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else if let Some(lit) = value.strip_prefix("\\@") {
            format!("@{lit}")
        } else if value == "-" {
            let bytes = take_stdin(stdin)?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            value.to_string()
        };
        match result.get_mut(key) {
            Some(Value::Array(list)) => list.push(Value::String(value)),
            Some(existing) => {
                let prev = existing.take();
                *existing = Value::Array(vec![prev, Value::String(value)]);
            }
            None => {
                result.insert(key.to_string(), Value::String(value));
            }
        }
    }
    Ok(result)
}

/// Parse `-versions` values into numbers.
pub fn parse_versions(raw: &[String]) -> Result<Vec<u64>, Failure> {
    raw.iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Failure::local(format!("invalid version {v:?}: must be a number")))
        })
        .collect()
}

async fn preflight(client: &VaultClient, target: &str) -> Result<MountInfo, Failure> {
    let path = format!("sys/internal/ui/mounts/{target}");
    match client.send("GET", &path, &[], Body::None).await {
        Ok((_, Some(body))) => Ok(MountInfo::from_preflight(&body)),
        Ok((_, None)) => Err(Failure::remote("nil response from pre-flight request")),
        Err(ClientError::Api(e)) if e.status == 404 => Ok(MountInfo::unknown()),
        Err(e) => Err(Failure::remote(e.to_string())),
    }
}

/// Preflight and resolve in one step.
async fn locate(
    client: &VaultClient,
    mount: Option<&str>,
    arg: &str,
    api_prefix: &str,
) -> Result<(String, MountInfo), Failure> {
    let info = preflight(client, &preflight_target(mount, arg)).await?;
    Ok((resolve_kv_path(mount, arg, &info, api_prefix), info))
}

fn read_data_args(data: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut stdin = std::io::stdin();
    parse_args_data(data, &mut stdin, &|p| std::fs::read(p))
        .map_err(|e| Failure::local(format!("Failed to parse K=V data: {e}")))
}

/// Vault's answer to a write that returned no data: "Success! Data written
/// to: PATH" in table format, nothing in JSON.
fn print_written(ctx: &Ctx, full: &str) -> CmdResult {
    if ctx.format == Format::Table {
        out(&format!("Success! Data written to: {full}"));
    }
    Ok(EXIT_OK)
}

/// Print the reply of a versions or metadata write as-is, or the written
/// notice when there is none (`kv undelete|destroy`, `kv metadata put`).
fn print_secret_or_written(ctx: &Ctx, full: &str, reply: Option<Value>) -> CmdResult {
    match reply {
        Some(secret) => print_secret(ctx, &secret),
        None => print_written(ctx, full),
    }
}

/// Print the reply of a write (`kv put`, `kv patch`).
fn print_write_reply(ctx: &Ctx, full: &str, reply: Option<Value>) -> CmdResult {
    let Some(secret) = reply else {
        return print_written(ctx, full);
    };
    if ctx.field.is_some() {
        return print_secret(ctx, &secret);
    }
    match (ctx.format, secret.get("data").and_then(Value::as_object)) {
        (Format::Table, Some(meta)) => {
            if let Some(w) = output::warnings(&secret) {
                err(&w);
            }
            out(&output::path_banner("Secret Path", full));
            out(&output::header_for_map("Metadata", meta));
            out(&output::map_table(meta));
            Ok(EXIT_OK)
        }
        _ => print_secret(ctx, &secret),
    }
}

pub async fn run(ctx: &Ctx, cmd: KvCmd) -> CmdResult {
    match cmd {
        KvCmd::Put(a) => put(ctx, a).await,
        KvCmd::Get(a) => get(ctx, a).await,
        KvCmd::Patch(a) => patch(ctx, a).await,
        KvCmd::Delete(a) => delete(ctx, a).await,
        KvCmd::Undelete(a) => versions_op(ctx, a, "undelete").await,
        KvCmd::Destroy(a) => versions_op(ctx, a, "destroy").await,
        KvCmd::List(a) => list(ctx, a).await,
        KvCmd::Metadata { cmd } => match cmd {
            MetadataCmd::Get(a) => metadata_get(ctx, a).await,
            MetadataCmd::Put(a) => metadata_put(ctx, a).await,
            MetadataCmd::Delete(a) => metadata_delete(ctx, a).await,
        },
    }
}

async fn put(ctx: &Ctx, a: PutArgs) -> CmdResult {
    if a.data.is_empty() {
        return Err(Failure::local("Must supply data"));
    }
    let data = read_data_args(&a.data)?;
    let mount = a.target.mount.as_deref();
    let (full, info) = locate(&ctx.client, mount, &a.target.path, "data").await?;
    let body = if info.is_v2() {
        let mut options = Map::new();
        if a.cas > -1 {
            options.insert("cas".into(), json!(a.cas));
        }
        json!({ "data": data, "options": options })
    } else {
        Value::Object(data)
    };
    let reply = ctx
        .client
        .write(&full, &body)
        .await
        .map_err(|e| Failure::api(format!("Error writing data to {full}"), &e))?;
    print_write_reply(ctx, &full, reply)
}

async fn patch(ctx: &Ctx, a: PatchArgs) -> CmdResult {
    if a.data.is_empty() {
        return Err(Failure::local("Must supply data"));
    }
    if a.method != "patch" && a.method != "rw" {
        return Err(Failure::local(format!(
            "Unsupported method provided to -method flag: {}",
            a.method
        )));
    }
    let data = read_data_args(&a.data)?;
    let mount = a.target.mount.as_deref();
    let (full, info) = locate(&ctx.client, mount, &a.target.path, "data").await?;
    if !info.is_v2() {
        return Err(Failure::remote(
            "K/V engine mount must be version 2 for patch support",
        ));
    }
    let reply = if a.method == "patch" {
        let mut options = Map::new();
        if a.cas > -1 {
            options.insert("cas".into(), json!(a.cas));
        }
        let body = json!({ "data": data, "options": options });
        match ctx.client.patch(&full, &body).await {
            Ok(r) => r,
            Err(ClientError::Api(e)) if e.status == 404 => {
                return Err(Failure::remote(format!("No value found at {full}")));
            }
            Err(e) => return Err(Failure::api(format!("Error writing data to {full}"), &e)),
        }
    } else {
        // Read, merge, write back with cas = the version we read.
        let current = ctx
            .client
            .read(&full)
            .await
            .map_err(|e| Failure::api(format!("Error doing pre-read at {full}"), &e))?;
        let Some(current) = current else {
            return Err(Failure::remote(format!("No value found at {full}")));
        };
        let mut merged = current
            .pointer("/data/data")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| Failure::remote(format!("No data found at {full}")))?;
        let version = current
            .pointer("/data/metadata/version")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        merged.extend(data);
        let cas = if a.cas > -1 { a.cas } else { version };
        let body = json!({ "data": merged, "options": { "cas": cas } });
        ctx.client
            .write(&full, &body)
            .await
            .map_err(|e| Failure::api(format!("Error writing data to {full}"), &e))?
    };
    print_write_reply(ctx, &full, reply)
}

async fn get(ctx: &Ctx, a: GetArgs) -> CmdResult {
    let mount = a.target.mount.as_deref();
    let (full, info) = locate(&ctx.client, mount, &a.target.path, "data").await?;
    let query: Vec<(&str, String)> = if info.is_v2() && a.version > 0 {
        vec![("version", a.version.to_string())]
    } else {
        Vec::new()
    };
    let secret = ctx
        .client
        .read_with(&full, &query)
        .await
        .map_err(|e| Failure::api(format!("Error reading {full}"), &e))?;
    let Some(secret) = secret else {
        return Err(Failure::remote(format!("No value found at {full}")));
    };
    let v2 = info.is_v2();

    if let Some(field) = &ctx.field {
        if !v2 {
            return print_field(ctx, &secret, field, true);
        }
        let data = secret.pointer("/data/data").filter(|d| !d.is_null());
        let Some(data) = data else {
            return Err(Failure::remote(format!("No data found at {full}")));
        };
        if field == "data" && data.get("data").is_none() {
            return print_field(ctx, &secret, field, true);
        }
        return print_field(ctx, data, field, false);
    }
    if ctx.format != Format::Table {
        return print_secret(ctx, &secret);
    }
    if let Some(w) = output::warnings(&secret) {
        err(&w);
    }
    if v2 {
        out(&output::path_banner("Secret Path", &full));
        if let Some(meta) = secret.pointer("/data/metadata").and_then(Value::as_object) {
            out(&output::header_for_map("Metadata", meta));
            out(&output::map_table(meta));
            out("");
        }
    }
    let data = if v2 {
        secret.pointer("/data/data").and_then(Value::as_object)
    } else {
        secret.get("data").and_then(Value::as_object)
    };
    if let Some(data) = data {
        out(&output::header_for_map("Data", data));
        let t = output::map_table(data);
        if !t.is_empty() {
            out(&t);
        }
    }
    Ok(EXIT_OK)
}

async fn delete(ctx: &Ctx, a: DeleteArgs) -> CmdResult {
    let versions = parse_versions(&a.versions)?;
    let mount = a.target.mount.as_deref();
    let info = preflight(&ctx.client, &preflight_target(mount, &a.target.path)).await?;
    // v1, or v2 without -versions: DELETE the (data) path.
    let (full, result) = if !info.is_v2() || versions.is_empty() {
        let full = resolve_kv_path(mount, &a.target.path, &info, "data");
        let r = ctx.client.delete(&full).await;
        (full, r)
    } else {
        let full = resolve_kv_path(mount, &a.target.path, &info, "delete");
        let r = ctx
            .client
            .write(&full, &json!({ "versions": versions }))
            .await;
        (full, r)
    };
    let reply = result.map_err(|e| Failure::api(format!("Error deleting {full}"), &e))?;
    match reply {
        Some(secret) if ctx.format != Format::Table => print_secret(ctx, &secret),
        _ => {
            if ctx.format == Format::Table {
                out(&format!("Success! Data deleted (if it existed) at: {full}"));
            }
            Ok(EXIT_OK)
        }
    }
}

async fn versions_op(ctx: &Ctx, a: VersionsArgs, op: &str) -> CmdResult {
    let versions = parse_versions(&a.versions)?;
    if versions.is_empty() {
        return Err(Failure::local(format!(
            "No versions provided, use the \"-versions\" flag to specify the version to {op}."
        )));
    }
    let mount = a.target.mount.as_deref();
    let (full, info) = locate(&ctx.client, mount, &a.target.path, op).await?;
    if !info.is_v2() {
        let title = if op == "undelete" {
            "Undelete"
        } else {
            "Destroy"
        };
        return Err(Failure::local(format!(
            "{title} not supported on KV Version 1"
        )));
    }
    let verb = if op == "undelete" {
        "undeleting"
    } else {
        "destroying"
    };
    let reply = ctx
        .client
        .write(&full, &json!({ "versions": versions }))
        .await
        .map_err(|e| Failure::api(format!("Error {verb} {full}"), &e))?;
    print_secret_or_written(ctx, &full, reply)
}

async fn list(ctx: &Ctx, a: ListArgs) -> CmdResult {
    let path = match (&a.path, &a.mount) {
        (Some(p), _) => p.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
        }
    };
    let mount = a.mount.as_deref();
    let (full, _) = locate(&ctx.client, mount, &path, "metadata").await?;
    let secret = ctx
        .client
        .list(&full)
        .await
        .map_err(|e| Failure::api(format!("Error listing {full}"), &e))?;
    let keys = secret
        .as_ref()
        .and_then(|s| s.pointer("/data/keys"))
        .and_then(Value::as_array)
        .cloned();
    let (Some(secret), Some(keys)) = (secret, keys) else {
        return Err(Failure::remote(format!("No value found at {full}")));
    };
    if let Some(field) = &ctx.field {
        return print_field(ctx, &secret, field, true);
    }
    match ctx.format {
        Format::Json => out(&output::json_pretty(&Value::Array(keys))),
        Format::Table => {
            if let Some(w) = output::warnings(&secret) {
                err(&w);
            }
            let keys: Vec<String> = keys
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| k.to_string())
                })
                .collect();
            out(&output::list_table(&keys));
        }
    }
    Ok(EXIT_OK)
}

async fn metadata_get(ctx: &Ctx, a: MountPath) -> CmdResult {
    let (full, info) = locate(&ctx.client, a.mount.as_deref(), &a.path, "metadata").await?;
    if !info.is_v2() {
        return Err(Failure::local("Metadata not supported on KV Version 1"));
    }
    let secret = ctx
        .client
        .read(&full)
        .await
        .map_err(|e| Failure::api(format!("Error reading {full}"), &e))?;
    let Some(mut secret) = secret else {
        return Err(Failure::remote(format!("No value found at {full}")));
    };
    if ctx.field.is_some() || ctx.format != Format::Table {
        return print_secret(ctx, &secret);
    }
    let versions = secret
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .and_then(|d| d.remove("versions"));
    let Some(Value::Object(versions)) = versions else {
        err(&format!("No value found at {full}"));
        print_secret(ctx, &secret)?;
        return Ok(super::EXIT_REMOTE);
    };
    if let Some(w) = output::warnings(&secret) {
        err(&w);
    }
    out(&output::path_banner("Metadata Path", &full));
    let empty = Map::new();
    let meta = secret
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    out(&output::header_for_map("Metadata", meta));
    out(&output::map_table(meta));
    let mut nums: Vec<(u64, &Value)> = versions
        .iter()
        .filter_map(|(k, v)| k.parse::<u64>().ok().map(|n| (n, v)))
        .collect();
    nums.sort_by_key(|(n, _)| *n);
    for (n, v) in nums {
        let vm = v.as_object().unwrap_or(&empty);
        out(&format!(
            "\n{}",
            output::header_for_map(&format!("Version {n}"), vm)
        ));
        print_data(ctx, v);
    }
    Ok(EXIT_OK)
}

async fn metadata_put(ctx: &Ctx, a: MetadataPutArgs) -> CmdResult {
    let custom = super::parse_kv_pairs(&a.custom_metadata, "custom-metadata")?;
    let (full, info) = locate(
        &ctx.client,
        a.target.mount.as_deref(),
        &a.target.path,
        "metadata",
    )
    .await?;
    if !info.is_v2() {
        return Err(Failure::local("Metadata not supported on KV Version 1"));
    }
    let mut body = Map::new();
    if a.max_versions >= 0 {
        body.insert("max_versions".into(), json!(a.max_versions));
    }
    if let Some(c) = a.cas_required {
        body.insert("cas_required".into(), json!(c));
    }
    if let Some(d) = &a.delete_version_after {
        body.insert("delete_version_after".into(), json!(d));
    }
    if !custom.is_empty() {
        body.insert("custom_metadata".into(), Value::Object(custom));
    }
    let reply = ctx
        .client
        .write(&full, &Value::Object(body))
        .await
        .map_err(|e| Failure::api(format!("Error writing data to {full}"), &e))?;
    print_secret_or_written(ctx, &full, reply)
}

async fn metadata_delete(ctx: &Ctx, a: MountPath) -> CmdResult {
    let (full, info) = locate(&ctx.client, a.mount.as_deref(), &a.path, "metadata").await?;
    if !info.is_v2() {
        return Err(Failure::local("Metadata not supported on KV Version 1"));
    }
    ctx.client
        .delete(&full)
        .await
        .map_err(|e| Failure::api(format!("Error deleting {full}"), &e))?;
    if ctx.format == Format::Table {
        out(&format!("Success! Data deleted (if it existed) at: {full}"));
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(path: &str) -> MountInfo {
        MountInfo {
            path: path.into(),
            version: 2,
        }
    }

    #[test]
    fn preflight_parsing() {
        let body = json!({"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}});
        assert_eq!(MountInfo::from_preflight(&body), v2("secret/"));
        let body = json!({"data": {"path": "kv1/", "type": "kv", "options": null}});
        assert_eq!(
            MountInfo::from_preflight(&body),
            MountInfo {
                path: "kv1/".into(),
                version: 1
            }
        );
        let body = json!({"data": {"path": "n/", "options": {"version": 2}}});
        assert!(MountInfo::from_preflight(&body).is_v2());
        assert_eq!(MountInfo::from_preflight(&json!({})), MountInfo::unknown());
    }

    #[test]
    fn v2_paths_get_api_prefix() {
        let i = v2("secret/");
        assert_eq!(
            resolve_kv_path(None, "secret/foo", &i, "data"),
            "secret/data/foo"
        );
        assert_eq!(
            resolve_kv_path(None, "/secret/a/b/", &i, "data"),
            "secret/data/a/b"
        );
        assert_eq!(
            resolve_kv_path(None, "secret/foo", &i, "metadata"),
            "secret/metadata/foo"
        );
        assert_eq!(
            resolve_kv_path(None, "secret", &i, "metadata"),
            "secret/metadata"
        );
        assert_eq!(
            resolve_kv_path(None, "secret/", &i, "metadata"),
            "secret/metadata"
        );
        assert_eq!(
            resolve_kv_path(Some("secret"), "foo", &i, "data"),
            "secret/data/foo"
        );
        assert_eq!(
            resolve_kv_path(Some("secret/"), "a/b", &i, "delete"),
            "secret/delete/a/b"
        );
        assert_eq!(
            resolve_kv_path(Some("secret"), "", &i, "metadata"),
            "secret/metadata"
        );
        // Nested mount.
        let n = v2("team/kv/");
        assert_eq!(
            resolve_kv_path(None, "team/kv/x", &n, "data"),
            "team/kv/data/x"
        );
    }

    #[test]
    fn v1_paths_unchanged() {
        let i = MountInfo {
            path: "kv/".into(),
            version: 1,
        };
        assert_eq!(resolve_kv_path(None, "kv/foo", &i, "data"), "kv/foo");
        assert_eq!(resolve_kv_path(Some("kv"), "foo", &i, "data"), "kv/foo");
        let u = MountInfo::unknown();
        assert_eq!(resolve_kv_path(Some("old"), "foo", &u, "data"), "old/foo");
        assert_eq!(resolve_kv_path(None, "old/foo", &u, "data"), "old/foo");
    }

    #[test]
    fn add_prefix_matches_vault() {
        assert_eq!(
            add_prefix_to_kv_path("secret/foo", "secret/", "data", false),
            "secret/data/foo"
        );
        assert_eq!(
            add_prefix_to_kv_path("secret/data/foo", "secret/", "data", true),
            "secret/data/foo"
        );
        assert_eq!(
            add_prefix_to_kv_path("secret/data/foo", "secret/", "data", false),
            "secret/data/data/foo"
        );
        // A namespaced mount path whose namespace is not in the path.
        assert_eq!(
            add_prefix_to_kv_path("secret/foo", "ns1/secret/", "data", false),
            "secret/data/foo"
        );
        assert_eq!(preflight_target(Some("/secret/"), "foo"), "secret");
        assert_eq!(preflight_target(None, "secret/foo"), "secret/foo");
    }

    fn files(name: &str) -> std::io::Result<Vec<u8>> {
        match name {
            "pw.txt" => Ok(b"s3cret\n".to_vec()),
            "obj.json" => Ok(br#"{"j": "1", "k": 2}"#.to_vec()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            )),
        }
    }

    fn parse(args: &[&str], stdin: &str) -> Result<Map<String, Value>, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut input = stdin.as_bytes();
        parse_args_data(&args, &mut input, &files)
    }

    #[test]
    fn data_args_like_kvbuilder() -> Result<(), String> {
        let m = parse(&["a=1", "b=@pw.txt", "c=", "d=x=y=z", "e=\\@lit", ""], "")?;
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "s3cret\n");
        assert_eq!(m["c"], "");
        assert_eq!(m["d"], "x=y=z");
        assert_eq!(m["e"], "@lit");
        assert_eq!(m.len(), 5);

        let m = parse(&["t=a", "t=b", "t=c"], "")?;
        assert_eq!(m["t"], json!(["a", "b", "c"]));

        let m = parse(&["-", "z=9"], r#"{"x": 1, "z": "0"}"#)?;
        assert_eq!(m["x"], json!(1));
        // As in Vault's kvbuilder, a repeated key collects into a list.
        assert_eq!(m["z"], json!(["0", "9"]));

        let m = parse(&["@obj.json"], "")?;
        assert_eq!(m["k"], json!(2));

        let m = parse(&["v=-"], "from stdin")?;
        assert_eq!(m["v"], "from stdin");
        Ok(())
    }

    #[test]
    fn data_args_errors() {
        assert_eq!(
            parse(&["novalue"], ""),
            Err("format must be key=value".into())
        );
        assert!(parse(&["a=@missing"], "").is_err());
        assert!(parse(&["-"], "not json").is_err());
        assert!(parse(&["-"], "[1]").is_err());
        assert_eq!(
            parse(&["a=-", "b=-"], "x"),
            Err("stdin already consumed".into())
        );
    }

    #[test]
    fn versions_flag() {
        let v = parse_versions(&["1".into(), " 2".into(), "".into()])
            .map_err(|f| f.message)
            .unwrap();
        assert_eq!(v, vec![1, 2]);
        assert!(parse_versions(&["x".into()]).is_err());
    }
}
