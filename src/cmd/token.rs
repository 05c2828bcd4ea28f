//! `custos token ...`: create, look up, renew and revoke tokens.
//!
//! Flags become the JSON bodies of the token store API under `auth/token/`
//! ([`create_body`] is pure and tested); replies are printed with Vault's
//! secret table (`token`, `token_accessor`, `token_duration`, ...) or as JSON.

use super::{CmdResult, Ctx, EXIT_OK, Failure, out, parse_kv_pairs, print_secret};
use crate::output::Format;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a new token
    Create(CreateArgs),
    /// Display information about a token
    Lookup(LookupArgs),
    /// Revoke a token and its children
    Revoke(RevokeArgs),
    /// Renew a token's lease
    Renew(RenewArgs),
}

#[derive(Debug, Args, Default)]
pub struct CreateArgs {
    /// Policy to attach (repeatable, or comma-separated)
    #[arg(long = "policy", value_delimiter = ',', value_name = "NAME")]
    pub policies: Vec<String>,
    /// Initial TTL (e.g. 30m, 1h)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Hard maximum lifetime, even across renewals
    #[arg(long = "explicit-max-ttl", value_name = "DURATION")]
    pub explicit_max_ttl: Option<String>,
    /// Create a periodic token renewable by this period
    #[arg(long, value_name = "DURATION")]
    pub period: Option<String>,
    /// Number of uses before the token is revoked (0 = unlimited)
    #[arg(long = "use-limit", value_name = "N")]
    pub use_limit: Option<u64>,
    /// Create a token with no parent
    #[arg(long)]
    pub orphan: bool,
    /// Display name (prefixed with "token-")
    #[arg(long = "display-name", value_name = "NAME")]
    pub display_name: Option<String>,
    /// Metadata key=value (repeatable)
    #[arg(long, value_name = "K=V")]
    pub metadata: Vec<String>,
    /// Do not attach the "default" policy
    #[arg(long = "no-default-policy")]
    pub no_default_policy: bool,
    /// Whether the token may be renewed
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub renewable: Option<bool>,
    /// Token type: service or batch
    #[arg(long = "type", value_name = "TYPE")]
    pub token_type: Option<String>,
    /// Explicit token ID (root tokens only)
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Create against a token role
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Token (or accessor with -accessor); the caller's own token when absent
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
    /// Treat the argument as an accessor
    #[arg(long)]
    pub accessor: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Token (or accessor with -accessor)
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
    /// Revoke the caller's own token
    #[arg(long = "self")]
    pub self_: bool,
    /// Treat the argument as an accessor
    #[arg(long)]
    pub accessor: bool,
    /// `orphan` revokes the token but leaves its children
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Token to renew; the caller's own token when absent
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
    /// Requested extension (e.g. 1h)
    #[arg(long, short = 'i', value_name = "DURATION")]
    pub increment: Option<String>,
    /// Treat the argument as an accessor
    #[arg(long)]
    pub accessor: bool,
}

/// The `auth/token/create` path and body for `token create` flags.
pub fn create_body(a: &CreateArgs) -> Result<(String, Value), Failure> {
    let mut b = Map::new();
    if !a.policies.is_empty() {
        let p: Vec<&str> = a
            .policies
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        b.insert("policies".into(), json!(p));
    }
    let mut put_str = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            b.insert(k.into(), json!(v));
        }
    };
    put_str("ttl", &a.ttl);
    put_str("explicit_max_ttl", &a.explicit_max_ttl);
    put_str("period", &a.period);
    put_str("display_name", &a.display_name);
    put_str("type", &a.token_type);
    put_str("id", &a.id);
    if let Some(n) = a.use_limit {
        b.insert("num_uses".into(), json!(n));
    }
    if a.orphan {
        b.insert("no_parent".into(), json!(true));
    }
    if a.no_default_policy {
        b.insert("no_default_policy".into(), json!(true));
    }
    if let Some(r) = a.renewable {
        b.insert("renewable".into(), json!(r));
    }
    if !a.metadata.is_empty() {
        b.insert(
            "meta".into(),
            Value::Object(parse_kv_pairs(&a.metadata, "metadata")?),
        );
    }
    let path = match &a.role {
        Some(r) => format!("auth/token/create/{}", r.trim_matches('/')),
        None => "auth/token/create".to_string(),
    };
    Ok((path, Value::Object(b)))
}

pub async fn run(ctx: &Ctx, cmd: TokenCmd) -> CmdResult {
    match cmd {
        TokenCmd::Create(a) => {
            let (path, body) = create_body(&a)?;
            let secret = ctx
                .client
                .write(&path, &body)
                .await
                .map_err(|e| Failure::api("Error creating token", &e))?
                .unwrap_or(Value::Null);
            print_secret(ctx, &secret)
        }
        TokenCmd::Lookup(a) => {
            let result = match (&a.token, a.accessor) {
                (None, false) => ctx.client.read("auth/token/lookup-self").await,
                (Some(t), false) => {
                    ctx.client
                        .write("auth/token/lookup", &json!({ "token": t }))
                        .await
                }
                (Some(acc), true) => {
                    ctx.client
                        .write("auth/token/lookup-accessor", &json!({ "accessor": acc }))
                        .await
                }
                (None, true) => {
                    return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
                }
            };
            let secret = result
                .map_err(|e| Failure::api("Error looking up token", &e))?
                .unwrap_or(Value::Null);
            print_secret(ctx, &secret)
        }
        TokenCmd::Revoke(a) => revoke(ctx, a).await,
        TokenCmd::Renew(a) => {
            let mut body = Map::new();
            if let Some(i) = &a.increment {
                body.insert("increment".into(), json!(i));
            }
            let path = match (&a.token, a.accessor) {
                (None, false) => "auth/token/renew-self",
                (Some(t), false) => {
                    body.insert("token".into(), json!(t));
                    "auth/token/renew"
                }
                (Some(acc), true) => {
                    body.insert("accessor".into(), json!(acc));
                    "auth/token/renew-accessor"
                }
                (None, true) => {
                    return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
                }
            };
            let secret = ctx
                .client
                .write(path, &Value::Object(body))
                .await
                .map_err(|e| Failure::api("Error renewing token", &e))?
                .unwrap_or(Value::Null);
            print_secret(ctx, &secret)
        }
    }
}

async fn revoke(ctx: &Ctx, a: RevokeArgs) -> CmdResult {
    let orphan = match a.mode.as_deref() {
        None | Some("") => false,
        Some("orphan") => true,
        Some(m) => {
            return Err(Failure::local(format!(
                "Unsupported -mode {m:?}: expected \"orphan\""
            )));
        }
    };
    if a.self_ {
        if a.token.is_some() {
            return Err(Failure::local(
                "Too many arguments (expected 0, got 1) with -self",
            ));
        }
        if a.accessor || orphan {
            return Err(Failure::local(
                "-self cannot be used with -accessor or -mode",
            ));
        }
        ctx.client
            .write("auth/token/revoke-self", &json!({}))
            .await
            .map_err(|e| Failure::api("Error revoking token", &e))?;
    } else {
        let Some(t) = &a.token else {
            return Err(Failure::local("Not enough arguments (expected 1, got 0)"));
        };
        let (path, body) = match (a.accessor, orphan) {
            (true, true) => {
                return Err(Failure::local("-accessor cannot be used with -mode=orphan"));
            }
            (true, false) => ("auth/token/revoke-accessor", json!({ "accessor": t })),
            (false, true) => ("auth/token/revoke-orphan", json!({ "token": t })),
            (false, false) => ("auth/token/revoke", json!({ "token": t })),
        };
        ctx.client
            .write(path, &body)
            .await
            .map_err(|e| Failure::api("Error revoking token", &e))?;
    }
    if ctx.format == Format::Table {
        out("Success! Revoked token (if it existed)");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_from_flags() {
        let a = CreateArgs {
            policies: vec!["a".into(), "b".into()],
            ttl: Some("1h".into()),
            use_limit: Some(3),
            orphan: true,
            metadata: vec!["team=x".into(), "k=a=b".into()],
            ..Default::default()
        };
        let (path, body) = create_body(&a).map_err(|f| f.message).unwrap();
        assert_eq!(path, "auth/token/create");
        assert_eq!(
            body,
            json!({"policies": ["a", "b"], "ttl": "1h", "num_uses": 3, "no_parent": true,
                   "meta": {"team": "x", "k": "a=b"}})
        );
        let a = CreateArgs {
            role: Some("ci".into()),
            ..Default::default()
        };
        let (path, body) = create_body(&a).map_err(|f| f.message).unwrap();
        assert_eq!(path, "auth/token/create/ci");
        assert_eq!(body, json!({}));
        let bad = CreateArgs {
            metadata: vec!["oops".into()],
            ..Default::default()
        };
        assert!(create_body(&bad).is_err());
    }
}
