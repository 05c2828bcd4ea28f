//! `custos operator raft list-peers|join|remove-peer`: the cluster's
//! membership through `sys/storage/raft/configuration`, `join` and
//! `remove-peer`, printed as `vault operator raft` prints them.
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
