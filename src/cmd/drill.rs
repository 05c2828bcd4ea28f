//! `custos drill run|serve --config drill.hcl`: the command line of the
//! restore drills in custos-dr (see `custos_dr::drill` for the design).
//!
//! `run` performs one drill now: the human summary goes to stdout, the JSON
//! and text reports to `report_dir` (and the JSON next to the snapshot), the
//! metrics to `metrics_textfile` when set; exit 0 passed, 2 failed (stderr
//! names the first failed check), 1 bad config. `serve` runs a drill at
//! every firing of `schedule` (quarterly by default) and serves the drill
//! metrics on `listen_address` at `/metrics` until SIGINT/SIGTERM. Logs go
//! to stderr (`CUSTOS_LOG`; by default the drill node's own core and Raft
//! logs are kept to warnings).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use custos_dr::drill;

use super::{CmdResult, EXIT_OK, Failure, err, out};

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The drill's HCL configuration file
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DrillCmd {
    /// Run one restore drill now; exit 0 passed, 2 failed, 1 bad config
    Run(ConfigArg),
    /// Run restore drills on the configured schedule and serve their metrics
    Serve(ConfigArg),
}

const DEFAULT_LOG: &str = "info,custos_core=warn,custos_audit=warn,openraft=warn";

fn init_logging() {
    let filter = std::env::var("CUSTOS_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_LOG.into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn load(c: &ConfigArg) -> Result<drill::config::DrillConfig, Failure> {
    drill::load_config(&c.config).map_err(|e| Failure {
        code: drill::EXIT_CONFIG,
        message: e.to_string(),
    })
}

fn publish(done: &drill::Finished) {
    out(done.report.summary().trim_end());
    match (&done.json_path, &done.write_error) {
        (Some(p), _) => out(&format!("  report:    {}", p.display())),
        (None, Some(e)) => err(e),
        (None, None) => {}
    }
}

/// Entry point.
pub async fn run(cmd: DrillCmd) -> CmdResult {
    init_logging();
    match cmd {
        DrillCmd::Run(c) => {
            let cfg = load(&c)?;
            let done = drill::run(&cfg).await;
            publish(&done);
            match done.exit_code() {
                drill::EXIT_PASSED => Ok(EXIT_OK),
                code => Err(Failure {
                    code,
                    message: format!(
                        "restore drill failed: {}",
                        done.report.first_failure.as_deref().unwrap_or("unknown")
                    ),
                }),
            }
        }
        DrillCmd::Serve(c) => {
            let cfg = load(&c)?;
            // SIGINT or SIGTERM stops it, as it stops the server.
            let shutdown = super::server::shutdown_signal()?;
            drill::serve(cfg, shutdown, publish)
                .await
                .map_err(Failure::local)?;
            Ok(EXIT_OK)
        }
    }
}
