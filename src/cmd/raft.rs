//! `custos operator raft list-peers|join|remove-peer`: the cluster's
//! membership through `sys/storage/raft/configuration`, `join` and
//! `remove-peer`, printed as `vault operator raft` prints them.
//!
//! `custos operator raft autopilot state|get-config|set-config`: autopilot
//! through `sys/storage/raft/autopilot/state` and `…/configuration`,
//! printed as `bao operator raft autopilot` prints them (`-format=json`
//! prints the state with the Go field names the bao CLI uses).
//!
//! `custos operator raft snapshot save|restore`: Raft snapshots through
//! `sys/storage/raft/snapshot` (and `snapshot-force`), streamed to and from
//! a file as `vault operator raft snapshot` does.
//!
//! `save` writes the archive to a temporary file beside `FILE` as it
//! arrives, checks that it is complete (a gzip'd tar ending in a non-empty
//! `SHA256SUMS.sealed`, the check the Vault CLI makes) and only then renames
//! it to `FILE`: an interrupted save never leaves a file that looks good.
//! `restore` streams `FILE` as the request body; the server checks it.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use reqwest::Method;
use tokio::io::AsyncWriteExt;

use super::{CmdResult, Ctx, EXIT_OK, Failure};

#[derive(Debug, Subcommand)]
pub enum RaftCmd {
    /// Save and restore snapshots of the Raft storage
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// List the servers of the Raft cluster
    ListPeers,
    /// Join this (uninitialized) server to the cluster at LEADER_API_ADDR
    Join(JoinArgs),
    /// Remove a server from the Raft cluster
    RemovePeer(RemovePeerArgs),
    /// Autopilot: the cluster's health and its configuration
    #[command(subcommand)]
    Autopilot(AutopilotCmd),
}

#[derive(Debug, Subcommand)]
pub enum AutopilotCmd {
    /// Show the state of the Raft cluster as autopilot sees it
    State,
    /// Show autopilot's configuration
    GetConfig,
    /// Change autopilot's configuration
    SetConfig(SetConfigArgs),
}

#[derive(Debug, Args)]
pub struct SetConfigArgs {
    /// Remove dead voters from the Raft configuration (needs -min-quorum >= 3)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_dead_servers: Option<bool>,
    /// How long a server may go without the leader's contact and stay healthy, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub last_contact_threshold: Option<String>,
    /// How long a server may go without the leader's contact before it is dead (at least 1m)
    #[arg(long, value_name = "DURATION")]
    pub dead_server_last_contact_threshold: Option<String>,
    /// How many entries a server may trail the leader by and stay healthy
    #[arg(long, value_name = "N")]
    pub max_trailing_logs: Option<u64>,
    /// Voters below which autopilot removes no dead server
    #[arg(long, value_name = "N")]
    pub min_quorum: Option<u64>,
    /// How long a server must be healthy before it counts as stable, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub server_stabilization_time: Option<String>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The API address of a node of the cluster, e.g. http://127.0.0.1:8200
    #[arg(value_name = "LEADER_API_ADDR")]
    pub leader_api_addr: String,
}

#[derive(Debug, Args)]
pub struct RemovePeerArgs {
    /// The node_id of the server to remove
    #[arg(value_name = "SERVER_ID")]
    pub server_id: String,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save a snapshot of the server's state to FILE
    Save(SaveArgs),
    /// Restore the server's state from the snapshot in FILE
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write the snapshot
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore a snapshot taken from another cluster (its unseal keys unseal
    /// this server afterwards)
    #[arg(long)]
    pub force: bool,
    /// The snapshot to restore
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub async fn run(ctx: &Ctx, cmd: RaftCmd) -> CmdResult {
    match cmd {
        RaftCmd::Snapshot(SnapshotCmd::Save(a)) => save(ctx, &a.file).await,
        RaftCmd::Snapshot(SnapshotCmd::Restore(a)) => restore(ctx, &a.file, a.force).await,
        RaftCmd::ListPeers => list_peers(ctx).await,
        RaftCmd::Autopilot(AutopilotCmd::State) => autopilot_state(ctx).await,
        RaftCmd::Autopilot(AutopilotCmd::GetConfig) => autopilot_get_config(ctx).await,
        RaftCmd::Autopilot(AutopilotCmd::SetConfig(a)) => autopilot_set_config(ctx, a).await,
        RaftCmd::Join(a) => {
            let body = serde_json::json!({"leader_api_addr": a.leader_api_addr});
            let resp = ctx
                .client
                .write("sys/storage/raft/join", &body)
                .await
                .map_err(|e| Failure::api("Error joining the node to the Raft cluster", &e))?
                .unwrap_or(serde_json::Value::Null);
            match ctx.format {
                crate::output::Format::Json => super::out(&crate::output::json_pretty(&resp)),
                crate::output::Format::Table => super::out(&crate::output::columns(&[
                    vec!["Key".into(), "Value".into()],
                    vec!["Joined".into(), resp["joined"].to_string()],
                ])),
            }
            Ok(EXIT_OK)
        }
        RaftCmd::RemovePeer(a) => {
            let body = serde_json::json!({"server_id": a.server_id});
            ctx.client
                .write("sys/storage/raft/remove-peer", &body)
                .await
                .map_err(|e| Failure::api("Error removing the peer from the Raft cluster", &e))?;
            super::out("Peer removed successfully!");
            Ok(EXIT_OK)
        }
    }
}

async fn list_peers(ctx: &Ctx) -> CmdResult {
    let resp = ctx
        .client
        .read("sys/storage/raft/configuration")
        .await
        .map_err(|e| Failure::api("Error reading the raft cluster configuration", &e))?
        .unwrap_or(serde_json::Value::Null);
    if let crate::output::Format::Json = ctx.format {
        super::out(&crate::output::json_pretty(&resp));
        return Ok(EXIT_OK);
    }
    let mut rows = vec![vec![
        "Node".to_string(),
        "Address".to_string(),
        "State".to_string(),
        "Voter".to_string(),
    ]];
    let config = if resp["data"].is_object() {
        &resp["data"]["config"]
    } else {
        &resp["config"]
    };
    let servers = config["servers"].as_array().cloned().unwrap_or_default();
    for s in servers {
        let state = if s["leader"].as_bool() == Some(true) {
            "leader"
        } else {
            "follower"
        };
        rows.push(vec![
            s["node_id"].as_str().unwrap_or_default().to_string(),
            s["address"].as_str().unwrap_or_default().to_string(),
            state.to_string(),
            s["voter"].as_bool().unwrap_or(false).to_string(),
        ]);
    }
    super::out(&crate::output::table(&rows));
    Ok(EXIT_OK)
}

/// The `data` of a response (or the response itself).
fn data_of(resp: &serde_json::Value) -> &serde_json::Value {
    if resp["data"].is_object() {
        &resp["data"]
    } else {
        resp
    }
}

async fn autopilot_state(ctx: &Ctx) -> CmdResult {
    let resp = ctx
        .client
        .read("sys/storage/raft/autopilot/state")
        .await
        .map_err(|e| Failure::api("Error checking autopilot state", &e))?;
    let Some(resp) = resp else { return Ok(EXIT_OK) };
    let d = data_of(&resp);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default()
    };
    let servers = d["servers"].as_object().cloned().unwrap_or_default();
    if let crate::output::Format::Json = ctx.format {
        // The bao CLI prints api.AutopilotState: Go field names.
        let servers: serde_json::Map<String, serde_json::Value> = servers
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    serde_json::json!({
                        "ID": s["id"], "Name": s["name"], "Address": s["address"],
                        "NodeStatus": s["node_status"], "LastContact": s["last_contact"],
                        "LastTerm": s["last_term"], "LastIndex": s["last_index"],
                        "Healthy": s["healthy"], "StableSince": s["stable_since"],
                        "Status": s["status"], "Version": s["version"],
                        "UpgradeVersion": s["upgrade_version"].as_str().unwrap_or_default(),
                        "NodeType": s["node_type"].as_str().unwrap_or_default(),
                    }),
                )
            })
            .collect();
        let non_voters = if d["non_voters"].is_array() {
            d["non_voters"].clone()
        } else {
            serde_json::Value::Null
        };
        let out = serde_json::json!({
            "Healthy": d["healthy"], "FailureTolerance": d["failure_tolerance"],
            "Servers": servers, "Leader": d["leader"], "Voters": d["voters"],
            "NonVoters": non_voters, "Upgrade": null, "OptimisticFailureTolerance": 0,
        });
        super::out(&crate::output::json_pretty(&out));
        return Ok(EXIT_OK);
    }
    let mut b = String::new();
    b.push_str(&format!(
        "Healthy:                         {}\n",
        d["healthy"]
    ));
    b.push_str(&format!(
        "Failure Tolerance:               {}\n",
        d["failure_tolerance"]
    ));
    b.push_str(&format!(
        "Leader:                          {}\n",
        text(&d["leader"])
    ));
    b.push_str("Voters:\n");
    for v in names(&d["voters"]) {
        b.push_str(&format!("   {v}\n"));
    }
    let non_voters = names(&d["non_voters"]);
    if !non_voters.is_empty() {
        b.push_str("Non Voters:\n");
        for v in non_voters {
            b.push_str(&format!("   {v}\n"));
        }
    }
    b.push_str("Servers:\n");
    for (id, s) in &servers {
        b.push_str(&format!("   {id}\n"));
        for (label, key) in [
            ("Name", "name"),
            ("Address", "address"),
            ("Status", "status"),
            ("Node Status", "node_status"),
            ("Healthy", "healthy"),
            ("Last Contact", "last_contact"),
            ("Last Term", "last_term"),
            ("Last Index", "last_index"),
            ("Version", "version"),
            ("Node Type", "node_type"),
        ] {
            let v = match &s[key] {
                serde_json::Value::String(t) => t.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            b.push_str(&format!("      {:<19}{v}\n", format!("{label}:")));
        }
    }
    super::out(&b);
    Ok(EXIT_OK)
}

async fn autopilot_get_config(ctx: &Ctx) -> CmdResult {
    let resp = ctx
        .client
        .read("sys/storage/raft/autopilot/configuration")
        .await
        .map_err(|e| Failure::api("Error reading the autopilot configuration", &e))?;
    let Some(resp) = resp else { return Ok(EXIT_OK) };
    let d = data_of(&resp);
    if let crate::output::Format::Json = ctx.format {
        super::out(&crate::output::json_pretty(d));
        return Ok(EXIT_OK);
    }
    let s = |k: &str| match &d[k] {
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    super::out(&crate::output::table(&[
        vec!["Key".into(), "Value".into()],
        vec!["Cleanup Dead Servers".into(), s("cleanup_dead_servers")],
        vec!["Last Contact Threshold".into(), s("last_contact_threshold")],
        vec![
            "Dead Server Last Contact Threshold".into(),
            s("dead_server_last_contact_threshold"),
        ],
        vec![
            "Server Stabilization Time".into(),
            s("server_stabilization_time"),
        ],
        vec!["Min Quorum".into(), s("min_quorum")],
        vec!["Max Trailing Logs".into(), s("max_trailing_logs")],
    ]));
    Ok(EXIT_OK)
}

async fn autopilot_set_config(ctx: &Ctx, a: SetConfigArgs) -> CmdResult {
    // As the bao CLI: only flags given (and non-zero) are sent.
    let mut body = serde_json::Map::new();
    if let Some(b) = a.cleanup_dead_servers {
        body.insert("cleanup_dead_servers".into(), b.into());
    }
    for (k, v) in [
        ("max_trailing_logs", a.max_trailing_logs),
        ("min_quorum", a.min_quorum),
    ] {
        if let Some(n) = v.filter(|n| *n > 0) {
            body.insert(k.into(), n.into());
        }
    }
    for (k, v) in [
        ("last_contact_threshold", a.last_contact_threshold),
        (
            "dead_server_last_contact_threshold",
            a.dead_server_last_contact_threshold,
        ),
        ("server_stabilization_time", a.server_stabilization_time),
    ] {
        if let Some(d) = v {
            body.insert(k.into(), d.into());
        }
    }
    ctx.client
        .write(
            "sys/storage/raft/autopilot/configuration",
            &serde_json::Value::Object(body),
        )
        .await
        .map_err(|e| Failure::api("Error setting the autopilot configuration", &e))?;
    Ok(EXIT_OK)
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}

async fn save(ctx: &Ctx, file: &Path) -> CmdResult {
    let fail = |m: String| Failure::remote(format!("Error taking the snapshot: {m}"));
    let mut resp = ctx
        .client
        .send_stream(Method::GET, "sys/storage/raft/snapshot", None)
        .await
        .map_err(|e| Failure::api("Error taking the snapshot", &e))?;
    let partial = partial_path(file);
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| Failure::local(format!("Error creating {}: {e}", partial.display())))?;
    let written = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            out.write_all(&chunk)
                .await
                .map_err(|e| Failure::local(format!("Error writing {}: {e}", partial.display())))?;
        }
        out.sync_all()
            .await
            .map_err(|e| Failure::local(format!("Error writing {}: {e}", partial.display())))?;
        let check = partial.clone();
        let complete = tokio::task::spawn_blocking(move || sealed_sums_present(&check))
            .await
            .unwrap_or(false);
        if !complete {
            return Err(fail(
                "incomplete snapshot, unable to read SHA256SUMS.sealed file".into(),
            ));
        }
        tokio::fs::rename(&partial, file)
            .await
            .map_err(|e| Failure::local(format!("Error writing {}: {e}", file.display())))
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written.map(|()| EXIT_OK)
}

/// Whether `path` is a gzip'd tar holding a non-empty `SHA256SUMS.sealed`.
fn sealed_sums_present(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(mut entry) = entry else {
            return false;
        };
        let is_sealed = entry
            .path()
            .map(|p| p.as_os_str() == "SHA256SUMS.sealed")
            .unwrap_or(false);
        if is_sealed {
            let mut buf = Vec::new();
            return entry.read_to_end(&mut buf).is_ok() && !buf.is_empty();
        }
    }
    false
}

async fn restore(ctx: &Ctx, file: &Path, force: bool) -> CmdResult {
    let input = tokio::fs::File::open(file)
        .await
        .map_err(|e| Failure::local(format!("Error opening snapshot file: {e}")))?;
    let path = if force {
        "sys/storage/raft/snapshot-force"
    } else {
        "sys/storage/raft/snapshot"
    };
    ctx.client
        .send_stream(Method::POST, path, Some(reqwest::Body::from(input)))
        .await
        .map_err(|e| Failure::api("Error installing the snapshot", &e))?;
    Ok(EXIT_OK)
}
