//! The `custos` CLI against a real dev server, with Vault's environment
//! variables and flag style.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{BIN, dev_server};

fn custos(addr: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("VAULT_ADDR", format!("http://{addr}"))
        .env("VAULT_TOKEN", token)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .output()
        .expect("run custos")
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn operator_commands_work_with_vault_env_and_flags() {
    let s = dev_server();
    let a = s.addr.as_str();

    let o = custos(a, "root", &["kv", "put", "secret/app", "user=u", "pass=p"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(a, "root", &["kv", "get", "-format=json", "secret/app"]);
    assert!(o.status.success());
    assert_eq!(json_of(&o)["data"]["data"]["pass"], "p");
    let o = custos(a, "root", &["kv", "get", "-field=user", "secret/app"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "u");
    let o = custos(a, "root", &["kv", "patch", "secret/app", "pass=q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(
        a,
        "root",
        &["kv", "metadata", "get", "--format", "json", "secret/app"],
    );
    assert_eq!(json_of(&o)["data"]["current_version"], 2);
    let o = custos(a, "root", &["kv", "list", "-format=json", "secret/"]);
    assert_eq!(json_of(&o), serde_json::json!(["app"]));

    let policy = s.dir.join("p.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/app\" { capabilities = [\"read\"] }\n",
    )
    .expect("write");
    let o = custos(
        a,
        "root",
        &[
            "policy",
            "write",
            "app-read",
            policy.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(
        a,
        "root",
        &[
            "token",
            "create",
            "-policy=app-read",
            "-ttl=1h",
            "-format=json",
        ],
    );
    let tok = json_of(&o)["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let o = custos(a, &tok, &["kv", "get", "-format=json", "secret/app"]);
    assert!(
        o.status.success(),
        "restricted token can read: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = custos(a, &tok, &["kv", "put", "secret/app", "x=y"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "API errors exit 2, as Vault's CLI"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"));

    let o = custos(a, "root", &["secrets", "list", "-format=json"]);
    assert!(json_of(&o).get("secret/").is_some());
    let o = custos(a, "root", &["audit", "list", "-format=json"]);
    assert!(json_of(&o).get("file/").is_some());

    let o = custos(a, "root", &["status"]);
    assert_eq!(o.status.code(), Some(0));
    let o = custos(a, "root", &["operator", "seal"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(a, "root", &["status"]);
    assert_eq!(o.status.code(), Some(2), "sealed status exits 2");
    let o = custos(a, "root", &["operator", "unseal", &s.unseal_key]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(a, "root", &["kv", "get", "-field=pass", "secret/app"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "q",
        "data survives seal/unseal"
    );
}
