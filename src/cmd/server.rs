//! `custos server`: start the server from a config file, or in dev mode.
//!
//! This is only the edge: it reads flags, loads the HCL config through
//! `custos_core::config::load` (whose errors already name file and key),
//! sets up `tracing-subscriber` (level from `-log-level`, then `CUSTOS_LOG`,
//! then the config's `log_level`, default `info`; JSON lines with
//! `-log-format=json`; logs go to stderr so stdout stays for what dev mode
//! prints), checks the audit devices' options (errors name the file, the
//! device and the option), builds a shutdown future that resolves on SIGINT
//! or SIGTERM and meanwhile answers SIGHUP by rotating the local audit logs
//! (a new segment; nothing renamed or lost — `custos audit rotate` does the
//! same remotely), and hands everything to `custos_core::server::run` /
//! `run_dev`.

use super::{CmdResult, EXIT_LOCAL, EXIT_OK, Failure};
use clap::{Args, ValueEnum};
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Dev mode's default listen address.
pub const DEFAULT_DEV_LISTEN: &str = "127.0.0.1:8200";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Standard,
    /// One JSON object per line
    Json,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Server configuration file (HCL)
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Start an in-memory-style dev server: initialized, unsealed, kv-v2 at secret/
    #[arg(long)]
    pub dev: bool,
    /// Dev mode: use this root token ID (env VAULT_DEV_ROOT_TOKEN_ID)
    #[arg(long = "dev-root-token-id", value_name = "ID")]
    pub dev_root_token_id: Option<String>,
    /// Dev mode: listen address (env VAULT_DEV_LISTEN_ADDRESS)
    #[arg(long = "dev-listen-address", value_name = "ADDR")]
    pub dev_listen_address: Option<String>,
    /// Dev mode: keep Raft and audit files here instead of a temp dir
    #[arg(long = "dev-data-dir", value_name = "DIR")]
    pub dev_data_dir: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error, or an env-filter directive
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Standard)]
    pub log_format: LogFormat,
}

/// Map Vault's level names onto tracing's (`err` → `error`, `warning` → `warn`).
pub fn normalize_level(s: &str) -> String {
    match s.trim().to_ascii_lowercase().as_str() {
        "err" => "error".into(),
        "warning" => "warn".into(),
        "notice" => "info".into(),
        other => other.to_string(),
    }
}

/// The filter directive to use: flag, then `CUSTOS_LOG`, then the config
/// file's level, then `info`.
pub fn pick_log_filter(flag: Option<&str>, env: Option<&str>, config: Option<&str>) -> String {
    [flag, env, config]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(normalize_level)
        .unwrap_or_else(|| "info".into())
}

fn init_tracing(filter: &str, format: LogFormat) -> Result<(), Failure> {
    // openraft narrates every election at info; keep it to warnings unless
    // the operator asked for debug output or wrote a full directive.
    let directive = if matches!(filter, "info" | "warn" | "error") {
        format!("{filter},openraft=warn")
    } else {
        filter.to_string()
    };
    let env_filter = tracing_subscriber::EnvFilter::try_new(&directive)
        .map_err(|e| Failure::local(format!("Invalid log level {filter:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Standard => builder.try_init(),
    };
    result.map_err(|e| Failure::local(format!("Error setting up logging: {e}")))
}

/// A future that resolves on the first SIGINT or SIGTERM; until then each
/// SIGHUP rotates the open local audit logs.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::local(format!("Error installing SIGINT handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::local(format!("Error installing SIGTERM handler: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| Failure::local(format!("Error installing SIGHUP handler: {e}")))?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!(signal = "SIGINT", "shutdown requested");
                    break;
                }
                _ = term.recv() => {
                    tracing::info!(signal = "SIGTERM", "shutdown requested");
                    break;
                }
                _ = hup.recv() => {
                    let (rolled, errors) = custos_core::audit::rotate_open_logs().await;
                    tracing::info!(signal = "SIGHUP", logs = rolled, "audit logs rotated");
                    for e in errors {
                        tracing::error!(signal = "SIGHUP", error = %e, "audit log rotation failed");
                    }
                }
            }
        }
    })
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// Build the dev options from flags and the Vault dev env vars.
pub fn dev_options(
    a: &ServerArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<custos_core::server::DevOptions, Failure> {
    let listen_raw = a
        .dev_listen_address
        .clone()
        .or_else(|| env("VAULT_DEV_LISTEN_ADDRESS"))
        .unwrap_or_else(|| DEFAULT_DEV_LISTEN.to_string());
    let listen: SocketAddr = listen_raw
        .trim()
        .parse()
        .map_err(|e| Failure::local(format!("Invalid -dev-listen-address {listen_raw:?}: {e}")))?;
    Ok(custos_core::server::DevOptions {
        root_token_id: a
            .dev_root_token_id
            .clone()
            .or_else(|| env("VAULT_DEV_ROOT_TOKEN_ID")),
        listen,
        data_dir: a.dev_data_dir.clone(),
    })
}

/// What the binary adds to the server core: the automated snapshot agent
/// (`custos-dr`), which runs Vault Enterprise's `snapshot-auto`
/// configurations on the active node.
pub fn core_hooks() -> custos_core::server::CoreHooks {
    custos_core::server::CoreHooks {
        on_open: Some(std::sync::Arc::new(|core| {
            if custos_dr::agent::attach(core).is_none() {
                tracing::warn!("a snapshot agent was already attached to this core");
            }
        })),
    }
}

/// Run `custos server`; blocks until shutdown.
pub async fn run(a: ServerArgs) -> CmdResult {
    let env_log = env_nonempty("CUSTOS_LOG");
    if a.dev {
        let opts = dev_options(&a, &env_nonempty)?;
        init_tracing(
            &pick_log_filter(a.log_level.as_deref(), env_log.as_deref(), None),
            a.log_format,
        )?;
        let shutdown = shutdown_signal()?;
        return match custos_core::server::run_dev(opts, shutdown, &core_hooks()).await {
            Ok(()) => Ok(EXIT_OK),
            Err(e) => Err(Failure::local(format!("Error running dev server: {e}"))),
        };
    }
    let dev_only =
        a.dev_root_token_id.is_some() || a.dev_listen_address.is_some() || a.dev_data_dir.is_some();
    if dev_only {
        return Err(Failure::local(
            "The -dev-* flags can only be used with -dev",
        ));
    }
    let Some(path) = a.config else {
        return Err(Failure::local(
            "A configuration file must be specified with -config, or use -dev",
        ));
    };
    let config = custos_core::config::load(&path).map_err(|e| Failure {
        code: EXIT_LOCAL,
        message: e.to_string(),
    })?;
    custos_core::audit::validate_devices(&config.audit).map_err(|e| Failure {
        code: EXIT_LOCAL,
        message: format!("{}: {e}", path.display()),
    })?;
    init_tracing(
        &pick_log_filter(
            a.log_level.as_deref(),
            env_log.as_deref(),
            Some(config.log_level.as_str()),
        ),
        a.log_format,
    )?;
    let shutdown = shutdown_signal()?;
    let name = path.display().to_string();
    match custos_core::server::run(config, &name, shutdown, &core_hooks()).await {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => Err(Failure::local(format!("Error running server: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_precedence() {
        assert_eq!(pick_log_filter(None, None, None), "info");
        assert_eq!(pick_log_filter(None, None, Some("warn")), "warn");
        assert_eq!(pick_log_filter(None, Some("debug"), Some("warn")), "debug");
        assert_eq!(pick_log_filter(Some("ERR"), Some("debug"), None), "error");
        assert_eq!(pick_log_filter(Some(" "), None, None), "info");
    }

    #[test]
    fn dev_options_from_flags_and_env() {
        let a = ServerArgs {
            config: None,
            dev: true,
            dev_root_token_id: None,
            dev_listen_address: None,
            dev_data_dir: None,
            log_level: None,
            log_format: LogFormat::Standard,
        };
        let env = |k: &str| match k {
            "VAULT_DEV_ROOT_TOKEN_ID" => Some("root".to_string()),
            _ => None,
        };
        let o = dev_options(&a, &env).map_err(|f| f.message).unwrap();
        assert_eq!(o.listen.to_string(), DEFAULT_DEV_LISTEN);
        assert_eq!(o.root_token_id.as_deref(), Some("root"));
        let bad = ServerArgs {
            dev_listen_address: Some("nope".into()),
            ..a
        };
        assert!(dev_options(&bad, &|_| None).is_err());
    }
}
