//! `custos policy ...`: write, read, list and delete ACL policies.
//!
//! Policies are HCL text stored under `sys/policies/acl/<name>`; `write`
//! reads the text from a file or stdin (`-`) and uploads it, `read` prints it
//! back verbatim, `list` prints one name per line, as `vault policy` does.

use super::{CmdResult, Ctx, EXIT_OK, Failure, out, print_secret, str_field};
use crate::output::{self, Format};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::Read;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Upload a policy from a file (or `-` for stdin)
    Write(WriteArgs),
    /// Print a policy's rules
    Read(NameArg),
    /// List the names of all policies
    List,
    /// Delete a policy
    Delete(NameArg),
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Policy name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// HCL file with the rules, or `-` to read stdin
    #[arg(value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Policy name
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Vault lowercases policy names and trims spaces.
pub fn normalize_name(name: &str) -> String {
    name.trim().to_lowercase()
}

pub async fn run(ctx: &Ctx, cmd: PolicyCmd) -> CmdResult {
    match cmd {
        PolicyCmd::Write(a) => {
            let name = normalize_name(&a.name);
            let rules = if a.file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Failure::local(format!("Error reading policy from stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&a.file).map_err(|e| {
                    Failure::local(format!("Error opening policy file: {}: {e}", a.file))
                })?
            };
            ctx.client
                .write(
                    &format!("sys/policies/acl/{name}"),
                    &json!({ "policy": rules }),
                )
                .await
                .map_err(|e| Failure::api("Error uploading policy", &e))?;
            out(&format!("Success! Uploaded policy: {name}"));
            Ok(EXIT_OK)
        }
        PolicyCmd::Read(a) => {
            let name = normalize_name(&a.name);
            let secret = ctx
                .client
                .read(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(|e| Failure::api(format!("Error reading policy named {name}"), &e))?;
            let Some(secret) = secret else {
                return Err(Failure::remote(format!("No policy named: {name}")));
            };
            if ctx.field.is_some() || ctx.format != Format::Table {
                return print_secret(ctx, &secret);
            }
            let data = secret.get("data").unwrap_or(&secret);
            out(str_field(data, "policy").trim());
            Ok(EXIT_OK)
        }
        PolicyCmd::List => {
            let secret = ctx
                .client
                .list("sys/policies/acl")
                .await
                .map_err(|e| Failure::api("Error listing policies", &e))?;
            let keys: Vec<Value> = secret
                .as_ref()
                .and_then(|s| s.pointer("/data/keys"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match ctx.format {
                Format::Json => out(&output::json_pretty(&Value::Array(keys))),
                Format::Table => {
                    for k in &keys {
                        out(&output::go_value(k));
                    }
                }
            }
            Ok(EXIT_OK)
        }
        PolicyCmd::Delete(a) => {
            let name = normalize_name(&a.name);
            ctx.client
                .delete(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(|e| Failure::api("Error deleting policy", &e))?;
            out(&format!("Success! Deleted policy: {name}"));
            Ok(EXIT_OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name(" Dev-Team "), "dev-team");
    }
}
