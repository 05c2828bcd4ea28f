//! `custos audit query PATH`: which clients read a path, at which KV
//! versions (or, on transit paths, under which key versions), in a time
//! range — `GET sys/audit-query` (needs an explicit grant on
//! `sys/audit-query`).
//!
//! Prints a table (accessor prefix, display name, role, address, reads,
//! versions, first and last read, plus the transit key versions when any
//! client has some) or, with `-format=json`, the API's `data` object
//! (`clients`, `events_scanned`, `source`). `--max-key-version N` keeps the
//! transit operations that used a key version ≤ N (the KEK rotator's "who
//! still decrypts under the old version?": `custos audit query
//! transit/decrypt/orders --operation update --max-key-version 1`). Accessors are as
//! the audit log holds them (HMAC'd); `-accessor` takes a raw accessor and
//! the server hashes it with the audit device's salt. On a cluster the
//! answer holds every node's log (the nodes are printed under the table, a
//! node that did not answer as a warning on stderr); `--node ID` asks one.

use super::{CmdResult, Ctx, EXIT_OK, Failure, err, out};
use crate::output::{self, Format};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The request path as clients used it (secret/data/app/db), or a KV v2 path (secret/app/db)
    pub path: String,
    /// Only reads at or after this time (RFC 3339 or unix seconds)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only reads at or before this time (RFC 3339 or unix seconds)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The operation to look for
    #[arg(long, value_name = "OP", default_value = "read")]
    pub operation: String,
    /// Only reads that returned at least this KV version
    #[arg(long = "min-version", value_name = "N")]
    pub min_version: Option<u64>,
    /// Only transit operations that used a key version at or below N (decrypt, rewrap, verify: the inputs' versions)
    #[arg(long = "max-key-version", value_name = "N")]
    pub max_key_version: Option<u64>,
    /// Only this client (a raw token accessor; hashed by the server)
    #[arg(long, value_name = "ACCESSOR")]
    pub accessor: Option<String>,
    /// At most this many clients
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Where to answer from: local (the audit log's index) or elasticsearch
    #[arg(long, value_name = "SOURCE", default_value = "local")]
    pub source: String,
    /// On a cluster, only the events this node (its node_id) wrote
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
}

fn query_params(a: &QueryArgs) -> Vec<(&'static str, String)> {
    let mut q = vec![("path", a.path.clone()), ("operation", a.operation.clone())];
    let opt = [
        ("since", a.since.clone()),
        ("until", a.until.clone()),
        ("min_version", a.min_version.map(|v| v.to_string())),
        ("max_key_version", a.max_key_version.map(|v| v.to_string())),
        ("accessor", a.accessor.clone()),
        ("limit", a.limit.map(|v| v.to_string())),
        ("node", a.node.clone()),
    ];
    q.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    q.push(("source", a.source.clone()));
    q
}

/// A list of numbers as `1,2,3`; empty when absent.
fn number_list(v: &Value) -> String {
    v.as_array()
        .map(|v| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The answer as a table, one row per client. The "Key Versions" column
/// (transit) appears only when some client has key versions.
pub fn clients_table(data: &Value) -> String {
    let clients: Vec<&Value> = data["clients"].as_array().into_iter().flatten().collect();
    let transit = clients
        .iter()
        .any(|c| c["key_versions"].as_array().is_some_and(|k| !k.is_empty()));
    let mut header: Vec<String> = [
        "Accessor",
        "Display Name",
        "Role",
        "Remote Address",
        "Reads",
        "Versions",
    ]
    .map(String::from)
    .to_vec();
    if transit {
        header.push("Key Versions".into());
    }
    header.extend(["First Read", "Last Read"].map(String::from));
    let mut rows = vec![header];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    for c in clients {
        let acc = s(&c["accessor"]);
        let short: String = acc.chars().take(28).collect();
        let mut row = vec![
            short,
            s(&c["display_name"]),
            s(&c["role"]),
            s(&c["remote_address"]),
            c["reads"].to_string(),
            number_list(&c["versions"]),
        ];
        if transit {
            row.push(number_list(&c["key_versions"]));
        }
        row.extend([s(&c["first_read"]), s(&c["last_read"])]);
        rows.push(row);
    }
    output::table(&rows)
}

pub async fn run(ctx: &Ctx, a: QueryArgs) -> CmdResult {
    let resp = ctx
        .client
        .read_with("sys/audit-query", &query_params(&a))
        .await
        .map_err(|e| Failure::api("Error querying the audit log", &e))?
        .unwrap_or(Value::Null);
    let data = resp.get("data").cloned().unwrap_or(Value::Null);
    if ctx.format == Format::Json {
        out(&output::json_pretty(&data));
        return Ok(EXIT_OK);
    }
    // Set once retention deleted the local log's oldest segments.
    let complete = data["complete_from"].as_str().map(|t| {
        format!("Complete from {t}: older events were deleted by the audit log's retention.")
    });
    if data["clients"].as_array().is_none_or(|c| c.is_empty()) {
        out(&format!(
            "No client read {} in that range ({} events scanned, source {}).",
            a.path,
            data["events_scanned"],
            data["source"].as_str().unwrap_or("local")
        ));
    } else {
        out(&clients_table(&data));
    }
    if let Some(note) = complete {
        out(&note);
    }
    // On a cluster: whose logs the answer holds, and who did not answer.
    if let Some(nodes) = data["nodes"].as_array().filter(|n| n.len() > 1) {
        let names: Vec<&str> = nodes.iter().filter_map(Value::as_str).collect();
        out(&format!("Nodes: {}", names.join(", ")));
    }
    for w in resp["warnings"].as_array().into_iter().flatten() {
        err(&format!("WARNING: {}", w.as_str().unwrap_or_default()));
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_lists_clients() {
        let t = clients_table(&json!({"clients": [{
            "accessor": "hmac-sha256:0123456789abcdef0123456789abcdef",
            "display_name": "token-svc", "role": "", "remote_address": "10.0.0.1",
            "reads": 3, "versions": [1, 2], "first_read": "a", "last_read": "b"
        }]}));
        assert!(t.contains("token-svc"), "{t}");
        assert!(t.contains("1,2"), "{t}");
        assert!(
            !t.contains("0123456789abcdef0123456789abcdef"),
            "accessor shortened"
        );
        assert!(!t.contains("Key Versions"), "no transit column for KV: {t}");
    }

    #[test]
    fn table_shows_transit_key_versions_and_the_filter_is_sent() {
        let t = clients_table(&json!({"clients": [{
            "accessor": "hmac-sha256:ab", "display_name": "token-orders", "role": "",
            "remote_address": "10.0.0.2", "reads": 2, "versions": [],
            "key_versions": [1, 3], "min_key_version": 1,
            "first_read": "a", "last_read": "b"
        }]}));
        assert!(t.contains("Key Versions"), "{t}");
        assert!(t.contains("1,3"), "{t}");
        let a = QueryArgs {
            path: "transit/decrypt/orders".into(),
            since: None,
            until: None,
            operation: "update".into(),
            min_version: None,
            max_key_version: Some(1),
            accessor: None,
            limit: None,
            source: "local".into(),
            node: Some("node2".into()),
        };
        let q = query_params(&a);
        assert!(q.contains(&("max_key_version", "1".into())), "{q:?}");
        assert!(q.contains(&("operation", "update".into())), "{q:?}");
        assert!(q.contains(&("node", "node2".into())), "{q:?}");
    }
}
