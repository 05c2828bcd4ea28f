//! `custos`: the command line of the Custos secret server.
//!
//! One binary, two roles. `custos server` starts the server (it only loads
//! the config and calls into `custos-core`); every other subcommand is a
//! client of the Vault HTTP API, mirroring the Vault/OpenBao CLI's names,
//! flags, output and exit codes (0 ok, 1 local/usage error, 2 remote error or
//! sealed). Arguments flow: `std::env::args` → [`rewrite_args`] (Vault's
//! single-dash long flags such as `-format=json` become `--format=json`) →
//! clap → [`cmd`] → [`client`] (HTTP) → [`output`] (table or JSON on stdout;
//! errors on stderr).

mod client;
mod cmd;
mod output;

use clap::{Args, Parser, Subcommand};
use client::{ClientSettings, ConnectionFlags, VaultClient};
use cmd::{CmdResult, Ctx, EXIT_LOCAL, EXIT_OK, EXIT_REMOTE, Failure};
use output::Format;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the request path allocates many small,
/// short-lived buffers (JSON, audit events), and glibc's malloc/free (with
/// `malloc_consolidate`) took ~20% of the server's on-CPU time in the kv-read
/// profile (docs/bench/profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "custos",
    version,
    about = "Custos: a Vault-compatible secret server whose every access is accounted for",
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Server address (env CUSTOS_ADDR, VAULT_ADDR; default http://127.0.0.1:8200)
    #[arg(long, global = true, value_name = "ADDR")]
    address: Option<String>,
    /// CA bundle to verify the server's certificate (env CUSTOS_CACERT, VAULT_CACERT)
    #[arg(long = "ca-cert", global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (env VAULT_SKIP_VERIFY)
    #[arg(long = "tls-skip-verify", global = true)]
    tls_skip_verify: bool,
    /// Output format: table or json (env CUSTOS_FORMAT, VAULT_FORMAT)
    #[arg(long, global = true, value_name = "FORMAT")]
    format: Option<String>,
    /// Print only this field of the response
    #[arg(long, global = true, value_name = "NAME")]
    field: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a Custos server
    Server(cmd::server::ServerArgs),
    /// Print seal and HA status (exit 2 when sealed)
    Status,
    /// Operator tasks: init, unseal, seal, rotate, key-status
    Operator {
        #[command(subcommand)]
        cmd: cmd::operator::OperatorCmd,
    },
    /// Read and write secrets in the KV secrets engine
    Kv {
        #[command(subcommand)]
        cmd: cmd::kv::KvCmd,
    },
    /// Create, look up, renew and revoke tokens
    Token {
        #[command(subcommand)]
        cmd: cmd::token::TokenCmd,
    },
    /// Write, read, list and delete ACL policies
    Policy {
        #[command(subcommand)]
        cmd: cmd::policy::PolicyCmd,
    },
    /// Enable, disable and list secrets engines
    Secrets {
        #[command(subcommand)]
        cmd: cmd::secrets::SecretsCmd,
    },
    /// List audit devices
    Audit {
        #[command(subcommand)]
        cmd: cmd::audit::AuditCmd,
    },
    /// Rotate API keys and KEKs on a schedule, retiring the old one only
    /// after the audit log shows every consumer moved
    Rotator {
        #[command(subcommand)]
        cmd: cmd::rotator::RotatorCmd,
    },
    /// Restore drills: restore the newest snapshot into a fresh node, verify
    /// every secret against its manifest and measure the RTO
    Drill {
        #[command(subcommand)]
        cmd: cmd::drill::DrillCmd,
    },
}

/// Rewrite Vault-style single-dash long flags (`-format=json`, `-cas=0`,
/// `-help`) to clap's `--` form. A single `-` followed by two or more
/// characters is rewritten unless it is a negative number; a lone `-`, short
/// flags (`-h`), `--long` flags and everything after a bare `--` are kept.
/// The first element (the program name) is never touched.
pub fn rewrite_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut passthrough = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let rewrite = match s.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') && rest.chars().count() >= 2 => !is_number(rest),
            _ => false,
        };
        if rewrite {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(arg);
        }
    }
    out
}

/// `1`, `1.5`, `2e3`: what follows the `-` of a negative number.
fn is_number(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit() || c == '.') && s.parse::<f64>().is_ok()
}

/// `-format`, then `CUSTOS_FORMAT`, then `VAULT_FORMAT`, then table.
fn resolve_format(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Format, Failure> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| env("CUSTOS_FORMAT").filter(|v| !v.trim().is_empty()))
        .or_else(|| env("VAULT_FORMAT").filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "table".into());
    Format::parse(&raw).ok_or_else(|| Failure::local(format!("Invalid output format: {raw}")))
}

fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, Failure> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .map_err(|e| Failure::local(format!("Error starting async runtime: {e}")))
}

fn dispatch(cli: Cli) -> CmdResult {
    let Cli { global, command } = cli;
    if let Command::Server(args) = command {
        return runtime(true)?.block_on(cmd::server::run(args));
    }
    let format = resolve_format(global.format.as_deref(), &|k| std::env::var(k).ok())?;
    if let Command::Rotator { cmd } = command {
        // Its own client and config (rotator.hcl); a multi-thread runtime
        // for the scheduler.
        return runtime(true)?.block_on(cmd::rotator::run(cmd, format));
    }
    if let Command::Drill { cmd } = command {
        // Its own config (drill.hcl) and an in-process node: no client.
        return runtime(true)?.block_on(cmd::drill::run(cmd));
    }
    let flags = ConnectionFlags {
        address: global.address,
        ca_cert: global.ca_cert,
        tls_skip_verify: global.tls_skip_verify,
    };
    let settings = ClientSettings::from_process(&flags);
    let client = VaultClient::new(&settings).map_err(|e| Failure {
        code: EXIT_REMOTE,
        message: e.to_string(),
    })?;
    let ctx = Ctx {
        client,
        format,
        field: global.field.filter(|f| !f.is_empty()),
    };
    runtime(false)?.block_on(async {
        match command {
            Command::Server(_) => Ok(EXIT_OK),
            Command::Status => cmd::status::run(&ctx).await,
            Command::Operator { cmd } => cmd::operator::run(&ctx, cmd).await,
            Command::Kv { cmd } => cmd::kv::run(&ctx, cmd).await,
            Command::Token { cmd } => cmd::token::run(&ctx, cmd).await,
            Command::Policy { cmd } => cmd::policy::run(&ctx, cmd).await,
            Command::Secrets { cmd } => cmd::secrets::run(&ctx, cmd).await,
            Command::Audit { cmd } => cmd::audit::run(&ctx, cmd).await,
            Command::Rotator { .. } | Command::Drill { .. } => Ok(EXIT_OK),
        }
    })
}

fn main() -> ExitCode {
    let args = rewrite_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => EXIT_OK,
                _ => EXIT_LOCAL,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            cmd::err(&f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn rw(args: &[&str]) -> Vec<String> {
        let v: Vec<OsString> = std::iter::once("custos")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        rewrite_args(v)
            .into_iter()
            .skip(1)
            .map(|o| o.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn rewrites_single_dash_long_flags() {
        assert_eq!(
            rw(&["kv", "put", "-cas=0", "-mount=secret", "foo", "a=1"]),
            ["kv", "put", "--cas=0", "--mount=secret", "foo", "a=1"]
        );
        assert_eq!(rw(&["status", "-format=json"]), ["status", "--format=json"]);
        assert_eq!(rw(&["-help"]), ["--help"]);
        assert_eq!(
            rw(&["kv", "get", "-version", "2", "x"]),
            ["kv", "get", "--version", "2", "x"]
        );
    }

    #[test]
    fn keeps_what_is_not_a_long_flag() {
        // Lone dash (stdin), short flags, double-dash flags, negative numbers.
        assert_eq!(
            rw(&["kv", "put", "secret/x", "-"]),
            ["kv", "put", "secret/x", "-"]
        );
        assert_eq!(rw(&["-h"]), ["-h"]);
        assert_eq!(rw(&["--format", "json"]), ["--format", "json"]);
        assert_eq!(rw(&["--cas", "-1"]), ["--cas", "-1"]);
        assert_eq!(rw(&["-12", "-0.5", "-1e3"]), ["-12", "-0.5", "-1e3"]);
        // Values that merely contain dashes are not flags.
        assert_eq!(rw(&["a=-x", "b-c"]), ["a=-x", "b-c"]);
        // After `--` everything passes through.
        assert_eq!(rw(&["--", "-format=json"]), ["--", "-format=json"]);
        // The program name is never rewritten.
        let v = rewrite_args(vec![OsString::from("-weird")]);
        assert_eq!(v, [OsString::from("-weird")]);
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vault_style_invocations_parse() {
        let ok = |args: &[&str]| {
            let mut v = vec!["custos"];
            v.extend_from_slice(args);
            let r = Cli::try_parse_from(rewrite_args(v.iter().map(OsString::from).collect()));
            assert!(r.is_ok(), "{args:?}: {:?}", r.err().map(|e| e.to_string()));
        };
        ok(&[
            "kv",
            "put",
            "-mount=secret",
            "-cas=0",
            "foo",
            "a=1",
            "b=@f",
            "c=",
        ]);
        ok(&[
            "kv",
            "get",
            "-version=2",
            "-field=a",
            "-format=json",
            "secret/foo",
        ]);
        ok(&["kv", "delete", "-versions=1,2", "secret/foo"]);
        ok(&[
            "kv",
            "metadata",
            "put",
            "-max-versions=3",
            "-cas-required",
            "secret/foo",
        ]);
        ok(&["kv", "list", "-mount=secret"]);
        ok(&["-format=json", "status"]);
        ok(&["operator", "init", "-key-shares=1", "-key-threshold=1"]);
        ok(&["operator", "unseal"]);
        ok(&["operator", "key-status"]);
        ok(&[
            "token",
            "create",
            "-policy=a",
            "-policy=b,c",
            "-ttl=1h",
            "-orphan",
            "-metadata",
            "k=v",
        ]);
        ok(&["token", "create", "-renewable=false", "-period=1h"]);
        ok(&["token", "revoke", "-self"]);
        ok(&["token", "revoke", "-mode=orphan", "tok"]);
        ok(&["policy", "write", "dev", "-"]);
        ok(&["secrets", "enable", "-path=app", "-version=2", "kv"]);
        ok(&["audit", "list", "-detailed"]);
        ok(&[
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-listen-address=127.0.0.1:0",
        ]);
        ok(&["server", "-config=server.hcl", "-log-format=json"]);
        ok(&["rotator", "run", "payments-api-key", "-config=rotator.hcl"]);
        ok(&["rotator", "status", "-config=rotator.hcl", "-format=json"]);
        ok(&["rotator", "serve", "--config", "rotator.hcl"]);
        ok(&["rotator", "policy", "-config", "rotator.hcl"]);
        ok(&["drill", "run", "--config", "drill.hcl"]);
        ok(&["drill", "serve", "-config=drill.hcl"]);
    }

    #[test]
    fn drill_commands_parse() {
        match parse(&["drill", "run", "-config=/etc/custos/drill.hcl"]).command {
            Command::Drill {
                cmd: cmd::drill::DrillCmd::Run(c),
            } => assert_eq!(c.config, PathBuf::from("/etc/custos/drill.hcl")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["drill", "serve", "--config", "d.hcl"]).command,
            Command::Drill {
                cmd: cmd::drill::DrillCmd::Serve(_)
            }
        ));
        assert!(Cli::try_parse_from(["custos", "drill", "run"]).is_err());
    }

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["custos"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(rewrite_args(v.iter().map(OsString::from).collect())) {
            Ok(c) => c,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn parsed_values() {
        let c = parse(&[
            "kv",
            "put",
            "-cas=0",
            "-format=json",
            "secret/x",
            "a=1",
            "-",
        ]);
        assert_eq!(c.global.format.as_deref(), Some("json"));
        let Command::Kv {
            cmd: cmd::kv::KvCmd::Put(p),
        } = c.command
        else {
            panic!("not kv put");
        };
        assert_eq!(p.cas, 0);
        assert_eq!(p.target.path, "secret/x");
        assert_eq!(p.data, ["a=1", "-"]);

        let c = parse(&["kv", "metadata", "put", "-cas-required", "secret/x"]);
        let Command::Kv {
            cmd:
                cmd::kv::KvCmd::Metadata {
                    cmd: cmd::kv::MetadataCmd::Put(m),
                },
        } = c.command
        else {
            panic!("not kv metadata put");
        };
        assert_eq!(m.cas_required, Some(true));
        assert_eq!(m.target.path, "secret/x");

        let c = parse(&[
            "token",
            "create",
            "-policy=a,b",
            "-policy=c",
            "-renewable=false",
        ]);
        let Command::Token {
            cmd: cmd::token::TokenCmd::Create(t),
        } = c.command
        else {
            panic!("not token create");
        };
        assert_eq!(t.policies, ["a", "b", "c"]);
        assert_eq!(t.renewable, Some(false));
    }

    #[test]
    fn format_resolution() {
        let none = |_: &str| None;
        assert_eq!(
            resolve_format(None, &none).map_err(|f| f.message),
            Ok(Format::Table)
        );
        let env = |k: &str| (k == "VAULT_FORMAT").then(|| "json".to_string());
        assert_eq!(
            resolve_format(None, &env).map_err(|f| f.message),
            Ok(Format::Json)
        );
        assert_eq!(
            resolve_format(Some("table"), &env).map_err(|f| f.message),
            Ok(Format::Table)
        );
        assert!(resolve_format(Some("yaml"), &none).is_err());
    }
}
