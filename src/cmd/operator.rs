//! `custos operator ...`: init, unseal, seal, rotate and key-status (and
//! `raft snapshot`, in [`super::raft`]).
//!
//! Each subcommand is one call to the `sys/` API (`sys/init`, `sys/unseal`,
//! `sys/seal`, `sys/rotate`, `sys/key-status`) and prints what `vault
//! operator` prints. Unseal keys and the root token are printed only by
//! `init` (that is the point of it) and read by `unseal` from the argument or
//! from stdin (echo off on a terminal, a plain line otherwise).

use super::{CmdResult, Ctx, EXIT_OK, EXIT_REMOTE, Failure, out, print_secret};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Write};

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Initialize a server: create the root key, unseal key shares and root token
    Init(InitArgs),
    /// Provide an unseal key share to unseal the server
    Unseal(UnsealArgs),
    /// Seal the server
    Seal,
    /// Make the active node hand leadership to a standby
    StepDown,
    /// Rotate the barrier encryption key
    Rotate,
    /// Show information about the active barrier encryption key
    KeyStatus,
    /// Generate a new root token, authorised by a quorum of key shares
    GenerateRoot(super::ceremony::GenerateRootArgs),
    /// Replace the unseal key shares (new shares and threshold); old shares stop working
    Rekey(super::ceremony::RekeyArgs),
    /// Raft storage: snapshots
    #[command(subcommand)]
    Raft(super::raft::RaftCmd),
    /// The cluster's audit device table: `show`, or `reset` before changing
    /// the audit devices on every node
    AuditTable {
        #[command(subcommand)]
        cmd: AuditTableCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditTableCmd {
    /// Print the cluster's audit devices (paths, types, option names)
    Show,
    /// Forget the cluster's table; the active node records its own next
    Reset,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Number of unseal key shares to create
    #[arg(long = "key-shares", default_value_t = 5, value_name = "N")]
    pub key_shares: u32,
    /// Number of key shares required to unseal
    #[arg(long = "key-threshold", default_value_t = 3, value_name = "T")]
    pub key_threshold: u32,
    /// Only report whether the server is initialized (exit 0 yes, 2 no)
    #[arg(long)]
    pub status: bool,
    /// Number of recovery key shares (auto seal only)
    #[arg(long = "recovery-shares", default_value_t = 5, value_name = "N")]
    pub recovery_shares: u32,
    /// Number of recovery key shares required (auto seal only)
    #[arg(long = "recovery-threshold", default_value_t = 3, value_name = "T")]
    pub recovery_threshold: u32,
}

#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// The unseal key share; prompted for (or read from stdin) when absent
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Discard the key shares provided so far
    #[arg(long)]
    pub reset: bool,
    /// Drive a seal migration (the old seal's unseal or recovery keys)
    #[arg(long)]
    pub migrate: bool,
}

pub async fn run(ctx: &Ctx, cmd: OperatorCmd) -> CmdResult {
    match cmd {
        OperatorCmd::Init(a) => init(ctx, a).await,
        OperatorCmd::Unseal(a) => unseal(ctx, a).await,
        OperatorCmd::Raft(c) => super::raft::run(ctx, c).await,
        OperatorCmd::GenerateRoot(a) => super::ceremony::generate_root(ctx, a).await,
        OperatorCmd::Rekey(a) => super::ceremony::rekey(ctx, a).await,
        OperatorCmd::Seal => {
            ctx.client
                .write("sys/seal", &json!({}))
                .await
                .map_err(|e| Failure::api("Error sealing", &e))?;
            out("Success! Custos is sealed.");
            Ok(EXIT_OK)
        }
        OperatorCmd::AuditTable { cmd } => audit_table(ctx, cmd).await,
        OperatorCmd::StepDown => {
            ctx.client
                .write("sys/step-down", &json!({}))
                .await
                .map_err(|e| Failure::api("Error stepping down", &e))?;
            out("Success! Stepped down: leadership moved to another node.");
            Ok(EXIT_OK)
        }
        OperatorCmd::Rotate => {
            ctx.client
                .write("sys/rotate", &json!({}))
                .await
                .map_err(|e| Failure::api("Error rotating key", &e))?;
            let status = ctx
                .client
                .read("sys/key-status")
                .await
                .map_err(|e| Failure::api("Error reading key status", &e))?
                .unwrap_or(Value::Null);
            match ctx.format {
                Format::Json => out(&output::json_pretty(&status)),
                Format::Table => {
                    out("Success! Rotated key\n");
                    out(&key_status_text(&status));
                }
            }
            Ok(EXIT_OK)
        }
        OperatorCmd::KeyStatus => {
            let status = ctx
                .client
                .read("sys/key-status")
                .await
                .map_err(|e| Failure::api("Error reading key status", &e))?
                .unwrap_or(Value::Null);
            match ctx.format {
                Format::Json => out(&output::json_pretty(&status)),
                Format::Table => out(&key_status_text(&status)),
            }
            Ok(EXIT_OK)
        }
    }
}

/// `term`, `install_time`, `encryptions` from either the envelope's `data`
/// or the top level.
fn key_field<'a>(status: &'a Value, k: &str) -> Option<&'a Value> {
    status
        .get("data")
        .and_then(|d| d.get(k))
        .or_else(|| status.get(k))
}

/// Vault's `printKeyStatus`: term, install time (RFC 822) and encryption count.
pub fn key_status_text(status: &Value) -> String {
    let term = key_field(status, "term")
        .map(output::go_value)
        .unwrap_or_default();
    let install = key_field(status, "install_time")
        .and_then(Value::as_str)
        .map(rfc822)
        .unwrap_or_default();
    let enc = key_field(status, "encryptions")
        .map(output::go_value)
        .unwrap_or_else(|| "0".into());
    output::columns(&[
        vec!["Key Term".into(), term],
        vec!["Install Time".into(), install],
        vec!["Encryption Count".into(), enc],
    ])
}

/// An RFC 3339 UTC timestamp as Go's RFC 822 layout (`02 Jan 06 15:04 UTC`);
/// anything it does not understand is returned unchanged.
pub fn rfc822(ts: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let utc = ts.ends_with('Z') || ts.ends_with("+00:00");
    let b = ts.as_bytes();
    if !utc || b.len() < 16 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return ts.to_string();
    }
    let month: usize = match ts[5..7].parse() {
        Ok(m) if (1..=12).contains(&m) => m,
        _ => return ts.to_string(),
    };
    format!(
        "{} {} {} {} UTC",
        &ts[8..10],
        MONTHS[month - 1],
        &ts[2..4],
        &ts[11..16]
    )
}

/// The text `vault operator init` prints after a successful init.
pub fn init_text(resp: &Value, shares: u32, threshold: u32) -> String {
    let strings = |k: &str| -> Vec<String> {
        resp.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = strings("keys");
    let b64 = strings("keys_base64");
    let mut text = String::new();
    let shown = if b64.len() == keys.len() { &b64 } else { &keys };
    for (i, k) in shown.iter().enumerate() {
        text.push_str(&format!("Unseal Key {}: {k}\n", i + 1));
    }
    let root = resp.get("root_token").and_then(Value::as_str).unwrap_or("");
    text.push_str(&format!("\nInitial Root Token: {root}\n\n"));
    text.push_str(&output::wrap_at_length(
        &format!(
            "Custos initialized with {shares} key shares and a key threshold of {threshold}. \
             Please securely distribute the key shares printed above. When Custos is \
             re-sealed, restarted, or stopped, you must supply at least {threshold} of these \
             keys to unseal it before it can start servicing requests."
        ),
        0,
    ));
    text.push_str("\n\n");
    text.push_str(&output::wrap_at_length(
        &format!(
            "Custos does not store the generated root key. Without at least {threshold} keys \
             to reconstruct the root key, Custos will remain permanently sealed!"
        ),
        0,
    ));
    text
}

/// The JSON `vault operator init -format=json` prints.
pub fn init_json(resp: &Value, shares: u32, threshold: u32) -> Value {
    let get = |k: &str| resp.get(k).cloned().unwrap_or_else(|| json!([]));
    json!({
        "unseal_keys_b64": get("keys_base64"),
        "unseal_keys_hex": get("keys"),
        "unseal_shares": shares,
        "unseal_threshold": threshold,
        "recovery_keys_b64": get("recovery_keys_base64"),
        "recovery_keys_hex": get("recovery_keys"),
        "recovery_keys_shares": 0,
        "recovery_keys_threshold": 0,
        "root_token": resp.get("root_token").cloned().unwrap_or(Value::Null),
    })
}

async fn init(ctx: &Ctx, a: InitArgs) -> CmdResult {
    if a.status {
        let st = ctx
            .client
            .read("sys/init")
            .await
            .map_err(|e| Failure::api("Error checking init status", &e))?;
        let initialized = st
            .as_ref()
            .and_then(|s| s.get("initialized"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return if initialized {
            out("Custos is initialized");
            Ok(EXIT_OK)
        } else {
            out("Custos is not initialized");
            Ok(EXIT_REMOTE)
        };
    }
    // As `vault operator init`: an auto seal (`recovery_seal`) takes
    // recovery shares instead of unseal key shares.
    let recovery_seal = ctx
        .client
        .read("sys/seal-status")
        .await
        .ok()
        .flatten()
        .and_then(|s| s.get("recovery_seal").and_then(Value::as_bool))
        .unwrap_or(false);
    if recovery_seal {
        return init_recovery(ctx, &a).await;
    }
    if a.key_threshold == 0 || a.key_shares == 0 || a.key_threshold > a.key_shares {
        return Err(Failure::local(format!(
            "Invalid key shares/threshold: threshold ({}) must be between 1 and the number of shares ({})",
            a.key_threshold, a.key_shares
        )));
    }
    let body = json!({ "secret_shares": a.key_shares, "secret_threshold": a.key_threshold });
    let resp = ctx
        .client
        .write("sys/init", &body)
        .await
        .map_err(|e| Failure::api("Error initializing", &e))?
        .unwrap_or(Value::Null);
    match ctx.format {
        Format::Json => out(&output::json_pretty(&init_json(
            &resp,
            a.key_shares,
            a.key_threshold,
        ))),
        Format::Table => out(&init_text(&resp, a.key_shares, a.key_threshold)),
    }
    Ok(EXIT_OK)
}

/// `operator init` against an auto seal: recovery shares, and the node
/// unseals itself.
async fn init_recovery(ctx: &Ctx, a: &InitArgs) -> CmdResult {
    let body = json!({
        "recovery_shares": a.recovery_shares,
        "recovery_threshold": a.recovery_threshold,
    });
    let resp = ctx
        .client
        .write("sys/init", &body)
        .await
        .map_err(|e| Failure::api("Error initializing", &e))?
        .unwrap_or(Value::Null);
    match ctx.format {
        Format::Json => {
            let mut j = init_json(&resp, 0, 0);
            j["unseal_shares"] = json!(1);
            j["unseal_threshold"] = json!(1);
            j["recovery_keys_shares"] = json!(a.recovery_shares);
            j["recovery_keys_threshold"] = json!(a.recovery_threshold);
            out(&output::json_pretty(&j));
        }
        Format::Table => out(&init_recovery_text(
            &resp,
            a.recovery_shares,
            a.recovery_threshold,
        )),
    }
    Ok(EXIT_OK)
}

/// The text `vault operator init` prints for an auto seal.
pub fn init_recovery_text(resp: &Value, shares: u32, threshold: u32) -> String {
    let strings = |k: &str| -> Vec<String> {
        resp.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut text = String::new();
    for (i, k) in strings("recovery_keys_base64").iter().enumerate() {
        text.push_str(&format!("Recovery Key {}: {k}\n", i + 1));
    }
    let root = resp.get("root_token").and_then(Value::as_str).unwrap_or("");
    text.push_str(&format!(
        "\nInitial Root Token: {root}\n\nSuccess! Custos is initialized\n"
    ));
    if shares > 0 {
        text.push('\n');
        text.push_str(&output::wrap_at_length(
            &format!(
                "Recovery key initialized with {shares} key shares and a key threshold of \
                 {threshold}. Please securely distribute the key shares printed above."
            ),
            0,
        ));
    }
    text
}

/// Read an unseal key: prompt with echo off on a terminal, else one line.
fn read_key() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut line = String::new();
    if tty {
        eprint!("Unseal Key (will be hidden): ");
        let _ = std::io::stderr().flush();
        // Best effort: `stty` is on every Unix; if it fails the key echoes.
        let _ = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        let r = stdin.lock().read_line(&mut line);
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        eprintln!();
        r.map_err(|e| Failure::local(format!("Error reading unseal key: {e}")))?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::local(format!("Error reading unseal key: {e}")))?;
    }
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(Failure::local("Error reading unseal key: empty key"));
    }
    Ok(key)
}

async fn unseal(ctx: &Ctx, a: UnsealArgs) -> CmdResult {
    let body = if a.reset {
        json!({ "reset": true })
    } else {
        let key = match a.key {
            Some(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => read_key()?,
        };
        if a.migrate {
            json!({ "key": key, "migrate": true })
        } else {
            json!({ "key": key })
        }
    };
    let status = ctx
        .client
        .write("sys/unseal", &body)
        .await
        .map_err(|e| Failure::api("Error unsealing", &e))?;
    match status {
        Some(s) => super::status::print_seal_status(ctx, &ctx.client, &s).await,
        None => {
            print_secret(ctx, &Value::Null)?;
        }
    }
    Ok(EXIT_OK)
}

async fn audit_table(ctx: &Ctx, cmd: AuditTableCmd) -> CmdResult {
    match cmd {
        AuditTableCmd::Show => {
            let v = ctx
                .client
                .read("sys/audit-table")
                .await
                .map_err(|e| Failure::api("Error reading the audit device table", &e))?
                .unwrap_or(Value::Null);
            out(&serde_json::to_string_pretty(&v["data"]).unwrap_or_default());
        }
        AuditTableCmd::Reset => {
            ctx.client
                .delete("sys/audit-table")
                .await
                .map_err(|e| Failure::api("Error resetting the audit device table", &e))?;
            out(
                "Success! The cluster's audit device table is reset: restart the nodes one at a time with their new audit devices.",
            );
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_output() {
        let resp = json!({"keys": ["aa", "bb"], "keys_base64": ["qg==", "uw=="], "root_token": "hvs.root"});
        let t = init_text(&resp, 2, 2);
        assert!(
            t.starts_with(
                "Unseal Key 1: qg==\nUnseal Key 2: uw==\n\nInitial Root Token: hvs.root\n"
            ),
            "{t}"
        );
        assert!(t.lines().all(|l| l.len() <= 78), "{t}");
        let j = init_json(&resp, 2, 2);
        assert_eq!(j["unseal_keys_b64"], json!(["qg==", "uw=="]));
        assert_eq!(j["root_token"], "hvs.root");
        assert_eq!(j["unseal_threshold"], 2);
    }

    #[test]
    fn key_status() {
        assert_eq!(rfc822("2024-03-05T14:07:09.123456Z"), "05 Mar 24 14:07 UTC");
        assert_eq!(rfc822("garbage"), "garbage");
        let t = key_status_text(
            &json!({"data": {"term": 2, "install_time": "2024-03-05T14:07:09Z", "encryptions": 7}}),
        );
        assert_eq!(
            t,
            "Key Term            2\nInstall Time        05 Mar 24 14:07 UTC\nEncryption Count    7"
        );
    }
}
