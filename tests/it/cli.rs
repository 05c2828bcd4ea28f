//! The `custos` CLI against a real dev server, with Vault's environment
//! variables and flag style.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{BIN, Server, dev_server};

/// Run the CLI against `s`. A command that fails because the server is gone
/// fails the test with the server's exit status and output, not the CLI's
/// "connection refused".
fn custos(s: &mut Server, token: &str, args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .args(args)
        .env("VAULT_ADDR", format!("http://{}", s.addr))
        .env("VAULT_TOKEN", token)
        .env_remove("CUSTOS_ADDR")
        .env_remove("CUSTOS_TOKEN")
        .output()
        .expect("run custos");
    if !o.status.success()
        && let Ok(Some(status)) = s.child.try_wait()
    {
        panic!(
            "the dev server exited ({status}) by the time `custos {}` ended:\n{}",
            args.join(" "),
            s.output()
        );
    }
    o
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
    let mut s = dev_server();
    let unseal_key = s.unseal_key.clone();

    let o = custos(
        &mut s,
        "root",
        &["kv", "put", "secret/app", "user=u", "pass=p"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(&mut s, "root", &["kv", "get", "-format=json", "secret/app"]);
    assert!(o.status.success());
    assert_eq!(json_of(&o)["data"]["data"]["pass"], "p");
    let o = custos(&mut s, "root", &["kv", "get", "-field=user", "secret/app"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "u");
    let o = custos(&mut s, "root", &["kv", "patch", "secret/app", "pass=q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(
        &mut s,
        "root",
        &["kv", "metadata", "get", "--format", "json", "secret/app"],
    );
    assert_eq!(json_of(&o)["data"]["current_version"], 2);
    let o = custos(&mut s, "root", &["kv", "list", "-format=json", "secret/"]);
    assert_eq!(json_of(&o), serde_json::json!(["app"]));

    let policy = s.dir.join("p.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/app\" { capabilities = [\"read\"] }\n",
    )
    .expect("write");
    let o = custos(
        &mut s,
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
        &mut s,
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
    let o = custos(&mut s, &tok, &["kv", "get", "-format=json", "secret/app"]);
    assert!(
        o.status.success(),
        "restricted token can read: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = custos(&mut s, &tok, &["kv", "put", "secret/app", "x=y"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "API errors exit 2, as Vault's CLI"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"));

    let o = custos(&mut s, "root", &["secrets", "list", "-format=json"]);
    assert!(json_of(&o).get("secret/").is_some());
    let o = custos(&mut s, "root", &["audit", "list", "-format=json"]);
    assert!(json_of(&o).get("file/").is_some());

    let o = custos(&mut s, "root", &["status"]);
    assert_eq!(o.status.code(), Some(0));
    let o = custos(&mut s, "root", &["operator", "seal"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(&mut s, "root", &["status"]);
    assert_eq!(o.status.code(), Some(2), "sealed status exits 2");
    let o = custos(&mut s, "root", &["operator", "unseal", &unseal_key]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = custos(&mut s, "root", &["kv", "get", "-field=pass", "secret/app"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "q",
        "data survives seal/unseal"
    );
}
