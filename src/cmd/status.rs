//! `custos status`: seal and HA status, like `vault status`.
//!
//! Reads `GET sys/seal-status` (unauthenticated) and, for the HA lines,
//! `GET sys/leader`; prints Vault's Key/Value table (or the merged JSON) and
//! exits 0 when unsealed, 2 when sealed, 1 when the server cannot be asked.
//! The table builder is shared with `operator unseal`, which prints the same.

use super::{CmdResult, Ctx, EXIT_LOCAL, EXIT_OK, EXIT_REMOTE, Failure, out, str_field};
use crate::client::{ClientError, VaultClient};
use crate::output::{self, Format};
use serde_json::{Value, json};

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn flag(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// Merge the `sys/leader` answer into the seal status, as Vault's
/// `SealStatusOutput` does. A leader call failing because the server is
/// sealed means HA is on; any other failure leaves HA off.
pub fn merge_leader(seal: &Value, leader: Result<Option<Value>, &ClientError>) -> Value {
    let mut merged = seal.clone();
    let Some(obj) = merged.as_object_mut() else {
        return merged;
    };
    match leader {
        Ok(Some(l)) => {
            obj.insert("ha_enabled".into(), json!(flag(&l, "ha_enabled")));
            for k in [
                "is_self",
                "active_time",
                "leader_address",
                "leader_cluster_address",
                "raft_committed_index",
                "raft_applied_index",
            ] {
                if let Some(v) = l.get(k).filter(|v| !v.is_null()) {
                    obj.insert(k.into(), v.clone());
                }
            }
        }
        Err(e) if e.api().is_some_and(|a| a.mentions("sealed")) => {
            obj.insert("ha_enabled".into(), json!(true));
        }
        _ => {
            let ha = flag(seal, "ha_enabled");
            obj.insert("ha_enabled".into(), json!(ha));
        }
    }
    merged
}

/// Vault's seal status table from the merged status.
pub fn status_table(s: &Value) -> String {
    let sealed = flag(s, "sealed");
    let recovery = flag(s, "recovery_seal");
    let prefix = if recovery { "Recovery " } else { "" };
    let t = num(s, "t");
    let row = |k: String, v: String| vec![k, v];
    let mut rows = vec![row("Key".into(), "Value".into())];
    rows.push(row("Seal Type".into(), str_field(s, "type").into()));
    if recovery {
        rows.push(row(
            "Recovery Seal Type".into(),
            str_field(s, "recovery_seal_type").into(),
        ));
    }
    rows.push(row(
        "Initialized".into(),
        flag(s, "initialized").to_string(),
    ));
    rows.push(row("Sealed".into(), sealed.to_string()));
    rows.push(row(
        format!("Total {prefix}Shares"),
        num(s, "n").to_string(),
    ));
    rows.push(row("Threshold".into(), t.to_string()));
    if sealed {
        rows.push(row(
            "Unseal Progress".into(),
            format!("{}/{}", num(s, "progress"), t),
        ));
        rows.push(row("Unseal Nonce".into(), str_field(s, "nonce").into()));
    }
    if flag(s, "migration") {
        rows.push(row("Seal Migration in Progress".into(), "true".into()));
    }
    rows.push(row("Version".into(), str_field(s, "version").into()));
    rows.push(row("Build Date".into(), str_field(s, "build_date").into()));
    let storage = match str_field(s, "storage_type") {
        "" => "raft",
        other => other,
    };
    rows.push(row("Storage Type".into(), storage.into()));
    let (cname, cid) = (str_field(s, "cluster_name"), str_field(s, "cluster_id"));
    if !cname.is_empty() && !cid.is_empty() {
        rows.push(row("Cluster Name".into(), cname.into()));
        rows.push(row("Cluster ID".into(), cid.into()));
    }
    let ha = flag(s, "ha_enabled");
    rows.push(row("HA Enabled".into(), ha.to_string()));
    if ha && !sealed {
        rows.push(row(
            "HA Cluster".into(),
            str_field(s, "leader_cluster_address").into(),
        ));
        let is_self = flag(s, "is_self");
        rows.push(row(
            "HA Mode".into(),
            if is_self { "active" } else { "standby" }.into(),
        ));
        let active = str_field(s, "active_time");
        if is_self && !active.is_empty() && !active.starts_with("0001-01-01") {
            rows.push(row("Active Since".into(), active.into()));
        }
        if !is_self {
            let addr = match str_field(s, "leader_address") {
                "" => "<none>",
                a => a,
            };
            rows.push(row("Active Node Address".into(), addr.into()));
        }
    }
    for (k, label) in [
        ("raft_committed_index", "Raft Committed Index"),
        ("raft_applied_index", "Raft Applied Index"),
    ] {
        let n = num(s, k);
        if n > 0 {
            rows.push(row(label.into(), n.to_string()));
        }
    }
    output::table(&rows)
}

/// Print a seal status (plus leader info) the way `vault status` does.
pub async fn print_seal_status(ctx: &Ctx, client: &VaultClient, seal: &Value) {
    let leader = client.read("sys/leader").await;
    let merged = merge_leader(seal, leader.as_ref().map(Option::clone));
    match ctx.format {
        Format::Json => out(&output::json_pretty(&merged)),
        Format::Table => out(&status_table(&merged)),
    }
}

pub async fn run(ctx: &Ctx) -> CmdResult {
    let seal = match ctx.client.read("sys/seal-status").await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(Failure {
                code: EXIT_LOCAL,
                message: "Error checking seal status: empty response".into(),
            });
        }
        Err(e) => {
            return Err(Failure {
                code: EXIT_LOCAL,
                message: format!("Error checking seal status: {e}"),
            });
        }
    };
    print_seal_status(ctx, &ctx.client, &seal).await;
    if flag(&seal, "sealed") {
        Ok(EXIT_REMOTE)
    } else {
        Ok(EXIT_OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ApiError;

    #[test]
    fn sealed_table() {
        let s = json!({"type": "shamir", "initialized": true, "sealed": true, "t": 3, "n": 5,
            "progress": 1, "nonce": "abc", "version": "0.1.0"});
        let m = merge_leader(
            &s,
            Err(&ClientError::Api(ApiError::from_body(
                "GET",
                "u",
                503,
                br#"{"errors":["Vault is sealed"]}"#,
            ))),
        );
        let t = status_table(&m);
        assert!(
            t.starts_with(
                "Key                Value\n---                -----\nSeal Type          shamir"
            ),
            "{t}"
        );
        assert!(t.contains("Unseal Progress    1/3"), "{t}");
        assert!(t.contains("Build Date         n/a"), "{t}");
        assert!(t.contains("Storage Type       raft"), "{t}");
        assert!(t.contains("HA Enabled         true"), "{t}");
    }

    #[test]
    fn unsealed_active_table() {
        let s = json!({"type": "shamir", "initialized": true, "sealed": false, "t": 1, "n": 1,
            "version": "0.1.0", "storage_type": "raft", "cluster_name": "c", "cluster_id": "id"});
        let l = json!({"ha_enabled": true, "is_self": true, "leader_cluster_address": "https://n1:8201",
            "raft_committed_index": 42});
        let t = status_table(&merge_leader(&s, Ok(Some(l))));
        assert!(!t.contains("Unseal Progress"), "{t}");
        assert!(t.contains("HA Mode"), "{t}");
        assert!(t.contains("active"), "{t}");
        assert!(t.contains("Raft Committed Index"), "{t}");
        assert!(t.contains("Cluster Name"), "{t}");
    }
}
