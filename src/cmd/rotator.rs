//! `custos rotator serve|run|status|policy --config rotator.hcl`: the
//! command line of custos-rotator (see that crate for the design).
//!
//! `serve` is the cron daemon; `run JOB` one run now (resumed if one is
//! unfinished) with exit codes 0 done, 3 held by consumers (nothing
//! retired), 2 failed, 1 bad config or usage — and one line on stderr or
//! stdout saying why; `status [JOB]` prints each job's state (`-format=json`
//! for the API-shaped object); `policy` prints the least-privilege ACL the
//! rotator's token needs. Logs go to stderr (`CUSTOS_LOG`, default info).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use custos_rotator::{config, daemon, policy, status};

use super::{CmdResult, EXIT_OK, Failure, out};
use crate::output::Format;

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The rotator's HCL configuration file
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RotatorCmd {
    /// Run every job on its schedule until interrupted
    Serve(ConfigArg),
    /// Run (or resume) one job now; exit 0 done, 3 held by consumers, 2 failed
    Run {
        /// The job's name in the configuration
        job: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Show each job's state, versions and consumers
    Status {
        /// Only this job
        job: Option<String>,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Print the least-privilege ACL policy the rotator's token needs
    Policy(ConfigArg),
}

fn load(c: &ConfigArg) -> Result<custos_rotator::RotatorConfig, Failure> {
    config::load(&c.config).map_err(|e| Failure::local(e.to_string()))
}

fn engine(cfg: &custos_rotator::RotatorConfig) -> Result<custos_rotator::Engine, Failure> {
    custos_rotator::engine_for(cfg).map_err(|e| Failure::local(e.to_string()))
}

fn init_logging() {
    let filter = std::env::var("CUSTOS_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Entry point; `format` is the global `-format`.
pub async fn run(cmd: RotatorCmd, format: Format) -> CmdResult {
    match cmd {
        RotatorCmd::Policy(c) => {
            let cfg = load(&c)?;
            out(policy::render(&cfg).trim_end());
            Ok(EXIT_OK)
        }
        RotatorCmd::Status { job, cfg: c } => {
            let cfg = load(&c)?;
            let engine = engine(&cfg)?;
            let jobs: Vec<&custos_rotator::JobConfig> = match &job {
                Some(name) => vec![cfg.job(name).ok_or_else(|| {
                    Failure::local(format!(
                        "{}: no job {name:?} (jobs: {})",
                        cfg.file.display(),
                        job_names(&cfg)
                    ))
                })?],
                None => cfg.jobs.iter().collect(),
            };
            let mut docs = Vec::new();
            for j in jobs {
                let st = engine
                    .store
                    .load(&j.name)
                    .await
                    .map_err(|e| Failure::remote(format!("job {:?}: {e}", j.name)))?;
                docs.push(status::job_status(j, &st.state));
            }
            match format {
                Format::Json => out(&serde_json::to_string_pretty(
                    &serde_json::json!({ "jobs": docs }),
                )
                .unwrap_or_default()),
                _ => out(status::table(&docs).trim_end()),
            }
            Ok(EXIT_OK)
        }
        RotatorCmd::Run { job, cfg: c } => {
            init_logging();
            let cfg = load(&c)?;
            let j = cfg.job(&job).ok_or_else(|| {
                Failure::local(format!(
                    "{}: no job {job:?} (jobs: {})",
                    cfg.file.display(),
                    job_names(&cfg)
                ))
            })?;
            let engine = engine(&cfg)?;
            let (code, line) = daemon::run_once(&engine, j).await;
            if code == daemon::EXIT_DONE {
                out(&line);
                Ok(code)
            } else {
                Err(Failure {
                    code,
                    message: line,
                })
            }
        }
        RotatorCmd::Serve(c) => {
            init_logging();
            let cfg = load(&c)?;
            if cfg.jobs.is_empty() {
                return Err(Failure::local(format!(
                    "{}: no job blocks: nothing to schedule",
                    cfg.file.display()
                )));
            }
            let engine = std::sync::Arc::new(engine(&cfg)?);
            // SIGINT or SIGTERM stops it, as it stops the server.
            let shutdown = super::server::shutdown_signal()?;
            daemon::serve(cfg, engine, shutdown)
                .await
                .map_err(Failure::local)?;
            Ok(EXIT_OK)
        }
    }
}

fn job_names(cfg: &custos_rotator::RotatorConfig) -> String {
    cfg.jobs
        .iter()
        .map(|j| j.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
