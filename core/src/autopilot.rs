//! Autopilot, as Vault's and OpenBao's Raft storage serve it: the cluster's
//! health as the leader sees it, and the removal of dead voters.
//!
//! **Configuration** (`sys/storage/raft/autopilot/configuration`): what an
//! operator set is stored through the barrier at
//! [`CONFIG_PATH`] (OpenBao's `core/raft/autopilot/configuration`), so it is
//! replicated by Raft, survives restarts and is the same on every node; the
//! effective configuration is OpenBao's defaults ([`Effective::default`])
//! with the stored values that are set laid over them, re-read by every node
//! each tick. A write is checked as OpenBao checks it (`cleanup_dead_servers`
//! needs `min_quorum` ≥ 3 and `dead_server_last_contact_threshold` ≥ 1m).
//!
//! **State** (`sys/storage/raft/autopilot/state`): computed on the leader
//! from openraft's metrics (membership, each follower's matched log id, the
//! term and last index) and from when each peer last answered this node
//! (`storage::raft::network::last_contacts`). A server is healthy, as in
//! hashicorp/raft-autopilot, when it is alive, was heard from within
//! `last_contact_threshold`, is at the leader's term and trails the leader
//! by at most `max_trailing_logs` entries; the cluster is healthy when every
//! server is, and `failure_tolerance` is the healthy voters beyond the
//! quorum. `stable_since` is when a server's health last changed, kept by
//! [`Autopilot`] (one per node, in `crate::cluster`).
//!
//! **Loop** ([`run`], one task per clustered node): each second the leader
//! recomputes the state, publishes `custos_raft_autopilot_healthy` and
//! `custos_raft_autopilot_failure_tolerance` (a node that stops leading sets
//! them to NaN, so only the leader's count), and, with
//! `cleanup_dead_servers`, removes a voter not heard from for longer than
//! `dead_server_last_contact_threshold` — only while the voters left are at
//! least `min_quorum`, and never more than a minority of the voters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::logical::FieldData;
use crate::metrics;
use crate::storage::StorageView;
use crate::storage::raft::RaftStorage;

/// Where the operator's autopilot configuration is stored (barrier path).
pub const CONFIG_PATH: &str = "core/raft/autopilot/configuration";
/// How often [`run`] looks at the cluster.
const TICK: Duration = Duration::from_secs(1);
/// The smallest `dead_server_last_contact_threshold` with cleanup on.
const MIN_DEAD_THRESHOLD: Duration = Duration::from_secs(60);

/// What an operator set; 0 (or `cleanup_dead_servers_value` 0) is unset,
/// the default applies. Stored as JSON at [`CONFIG_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// 0 unset, 1 true, 2 false (OpenBao's `CleanupDeadServersValue`).
    #[serde(default)]
    pub cleanup_dead_servers_value: u8,
    /// Seconds.
    #[serde(default)]
    pub last_contact_threshold: u64,
    /// Seconds.
    #[serde(default)]
    pub dead_server_last_contact_threshold: u64,
    #[serde(default)]
    pub max_trailing_logs: u64,
    #[serde(default)]
    pub min_quorum: u64,
    /// Seconds.
    #[serde(default)]
    pub server_stabilization_time: u64,
}

/// The configuration in force: defaults with the stored values over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub cleanup_dead_servers: bool,
    pub last_contact_threshold: Duration,
    pub dead_server_last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    pub server_stabilization_time: Duration,
}

impl Default for Effective {
    /// OpenBao 2.7.2's `defaultAutopilotConfig`.
    fn default() -> Self {
        Effective {
            cleanup_dead_servers: false,
            last_contact_threshold: Duration::from_secs(10),
            dead_server_last_contact_threshold: Duration::from_secs(24 * 3600),
            max_trailing_logs: 1000,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
        }
    }
}

impl Effective {
    /// Defaults merged with `stored` (OpenBao's `AutopilotConfig.Merge`).
    pub fn from_stored(stored: &StoredConfig) -> Effective {
        let mut e = Effective::default();
        match stored.cleanup_dead_servers_value {
            1 => e.cleanup_dead_servers = true,
            2 => e.cleanup_dead_servers = false,
            _ => {}
        }
        let secs = |v: u64, d: &mut Duration| {
            if v != 0 {
                *d = Duration::from_secs(v);
            }
        };
        secs(stored.last_contact_threshold, &mut e.last_contact_threshold);
        secs(
            stored.dead_server_last_contact_threshold,
            &mut e.dead_server_last_contact_threshold,
        );
        secs(
            stored.server_stabilization_time,
            &mut e.server_stabilization_time,
        );
        if stored.max_trailing_logs != 0 {
            e.max_trailing_logs = stored.max_trailing_logs;
        }
        if stored.min_quorum != 0 {
            e.min_quorum = stored.min_quorum;
        }
        e
    }

    /// The body of `GET sys/storage/raft/autopilot/configuration`.
    pub fn to_json(&self) -> Map<String, Value> {
        crate::sys::obj(json!({
            "cleanup_dead_servers": self.cleanup_dead_servers,
            "last_contact_threshold": go_duration(self.last_contact_threshold),
            "dead_server_last_contact_threshold": go_duration(self.dead_server_last_contact_threshold),
            "max_trailing_logs": self.max_trailing_logs,
            "min_quorum": self.min_quorum,
            "server_stabilization_time": go_duration(self.server_stabilization_time),
        }))
    }
}

fn config_view(core: &Core) -> StorageView {
    StorageView::new(core.barrier.clone(), "")
}

/// The stored configuration (unset when nothing was stored). Needs the
/// barrier unsealed.
pub async fn load(core: &Core) -> Result<StoredConfig> {
    core.unsealed()?;
    Ok(config_view(core)
        .get_json::<StoredConfig>(CONFIG_PATH)
        .await?
        .unwrap_or_default())
}

/// The effective configuration (defaults when sealed or unreadable).
pub async fn effective(core: &Core) -> Effective {
    match load(core).await {
        Ok(s) => Effective::from_stored(&s),
        Err(_) => Effective::default(),
    }
}

/// `GET sys/storage/raft/autopilot/configuration`.
pub async fn read_config(core: &Core) -> Result<Map<String, Value>> {
    Ok(Effective::from_stored(&load(core).await?).to_json())
}

/// A non-negative integer field (seconds for durations); negative values
/// are refused (OpenBao wraps them into huge unsigned numbers).
fn non_negative(f: &FieldData, name: &str) -> Result<Option<u64>> {
    match f.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| CoreError::bad_request(format!("{name} must not be negative"))),
    }
}

/// Apply a `POST sys/storage/raft/autopilot/configuration` to `stored`
/// and check the result as OpenBao does. Returns whether a field was given
/// (then the caller persists `stored`).
pub fn apply_update(stored: &mut StoredConfig, f: &FieldData) -> Result<bool> {
    let mut persist = false;
    if let Some(b) = f.bool("cleanup_dead_servers") {
        stored.cleanup_dead_servers_value = if b { 1 } else { 2 };
        persist = true;
    }
    let dead_given = non_negative(f, "dead_server_last_contact_threshold")?;
    for (name, slot) in [
        (
            "last_contact_threshold",
            &mut stored.last_contact_threshold as &mut u64,
        ),
        (
            "dead_server_last_contact_threshold",
            &mut stored.dead_server_last_contact_threshold,
        ),
        ("max_trailing_logs", &mut stored.max_trailing_logs),
        ("min_quorum", &mut stored.min_quorum),
        (
            "server_stabilization_time",
            &mut stored.server_stabilization_time,
        ),
    ] {
        if let Some(v) = non_negative(f, name)? {
            *slot = v;
            persist = true;
        }
    }
    let e = Effective::from_stored(stored);
    if e.cleanup_dead_servers && e.min_quorum < 3 {
        return Err(CoreError::bad_request(format!(
            "min_quorum must be set when cleanup_dead_servers is set and it should at least be 3; cleanup_dead_servers: {}, min_quorum: {:#x}",
            e.cleanup_dead_servers, e.min_quorum
        )));
    }
    if e.cleanup_dead_servers && e.dead_server_last_contact_threshold < MIN_DEAD_THRESHOLD {
        let received = dead_given.map_or_else(|| "<nil>".to_string(), |v| v.to_string());
        return Err(CoreError::bad_request(format!(
            "dead_server_last_contact_threshold should not be set to less than 1m; received: {received}"
        )));
    }
    Ok(persist)
}

/// `POST sys/storage/raft/autopilot/configuration`: store what was given
/// (through Raft: every node reads it on its next tick).
pub async fn write_config(core: &Core, f: &FieldData) -> Result<()> {
    let mut stored = load(core).await?;
    if apply_update(&mut stored, f)? {
        config_view(core).put_json(CONFIG_PATH, &stored).await?;
        tracing::info!(config = ?Effective::from_stored(&stored), "autopilot configuration updated");
    }
    Ok(())
}

/// One server as the leader sees it, before health is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerView {
    pub id: u64,
    pub name: String,
    /// `host:port` of its cluster address.
    pub address: String,
    pub voter: bool,
    pub is_leader: bool,
    /// Since it last answered the leader (`None`: not since this node leads).
    pub last_contact: Option<Duration>,
    pub last_term: u64,
    pub last_index: u64,
}

/// A judged server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHealth {
    pub view: ServerView,
    /// Reported `last_contact` (never-heard-from: since this node leads).
    pub contact: Duration,
    /// Not heard from for longer than the dead-server threshold, with
    /// cleanup on (`node_status` "left").
    pub dead: bool,
    pub healthy: bool,
}

/// Judge each server (hashicorp/raft-autopilot's `isHealthy`), given the
/// leader's term and last index and how long this node has led.
pub fn judge(
    cfg: &Effective,
    servers: &[ServerView],
    term: u64,
    leader_last_index: u64,
    leading_for: Duration,
) -> Vec<ServerHealth> {
    servers
        .iter()
        .map(|s| {
            let contact = if s.is_leader {
                Duration::ZERO
            } else {
                s.last_contact.unwrap_or(leading_for)
            };
            let dead = !s.is_leader
                && cfg.cleanup_dead_servers
                && contact > cfg.dead_server_last_contact_threshold;
            let trailing = leader_last_index > cfg.max_trailing_logs
                && s.last_index < leader_last_index - cfg.max_trailing_logs;
            let heard = s.is_leader || s.last_contact.is_some();
            let healthy = !dead
                && heard
                && contact <= cfg.last_contact_threshold
                && s.last_term == term
                && !trailing;
            ServerHealth {
                view: s.clone(),
                contact,
                dead,
                healthy,
            }
        })
        .collect()
}

/// Healthy voters beyond the quorum (`floor(voters / 2) + 1`).
pub fn failure_tolerance(judged: &[ServerHealth]) -> usize {
    let voters = judged.iter().filter(|s| s.view.voter).count();
    let healthy = judged.iter().filter(|s| s.view.voter && s.healthy).count();
    healthy.saturating_sub(voters / 2 + 1)
}

/// The voters the leader removes now: dead ones, while the voters left stay
/// at least `min_quorum` and at most a minority of the voters goes.
pub fn to_remove(cfg: &Effective, judged: &[ServerHealth]) -> Vec<ServerView> {
    if !cfg.cleanup_dead_servers {
        return Vec::new();
    }
    let voters = judged.iter().filter(|s| s.view.voter).count();
    let max_removals = voters.saturating_sub(1) / 2;
    let mut left = voters;
    let mut out = Vec::new();
    for s in judged.iter().filter(|s| s.view.voter && s.dead) {
        if out.len() >= max_removals || (left as u64).saturating_sub(1) < cfg.min_quorum {
            break;
        }
        left -= 1;
        out.push(s.view.clone());
    }
    out
}

/// Per-node autopilot memory: when each server's health last changed and
/// since when this node leads. Owned by `crate::cluster::Cluster`.
#[derive(Default)]
pub struct Autopilot {
    inner: Mutex<Tracker>,
}

#[derive(Default)]
struct Tracker {
    /// Node id → (healthy, since).
    stable: HashMap<u64, (bool, OffsetDateTime)>,
    leading_since: Option<Instant>,
}

/// The current state: the judged servers and the cluster-level figures.
pub struct State {
    pub servers: Vec<(ServerHealth, OffsetDateTime)>,
    pub healthy: bool,
    pub failure_tolerance: usize,
    pub leader: String,
}

fn name_of(id: u64, name: &str) -> String {
    if name.is_empty() {
        id.to_string()
    } else {
        name.to_string()
    }
}

impl Autopilot {
    /// The state as this node sees it; `None` unless it leads.
    pub fn state(&self, raft: &RaftStorage, cfg: &Effective) -> Option<State> {
        let m = raft.raft().metrics().borrow().clone();
        let me = m.id;
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !raft.is_leader() {
            t.leading_since = None;
            return None;
        }
        let leading_for = t.leading_since.get_or_insert_with(Instant::now).elapsed();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let contacts = crate::storage::raft::network::last_contacts();
        let matched = m.replication.clone().unwrap_or_default();
        let last_index = m.last_log_index.unwrap_or_default();
        let views: Vec<ServerView> = membership
            .nodes()
            .map(|(id, n)| {
                let is_leader = *id == me;
                let (last_term, last_index) = if is_leader {
                    (m.current_term, last_index)
                } else {
                    matched
                        .get(id)
                        .copied()
                        .flatten()
                        .map(|l| (l.leader_id.term, l.index))
                        .unwrap_or_default()
                };
                ServerView {
                    id: *id,
                    name: name_of(*id, &n.name),
                    address: crate::cluster::host_port(if n.cluster_addr.is_empty() {
                        &n.addr
                    } else {
                        &n.cluster_addr
                    }),
                    voter: voters.contains(id),
                    is_leader,
                    last_contact: if is_leader {
                        Some(Duration::ZERO)
                    } else {
                        contacts.get(id).copied()
                    },
                    last_term,
                    last_index,
                }
            })
            .collect();
        let judged = judge(cfg, &views, m.current_term, last_index, leading_for);
        let now = OffsetDateTime::now_utc();
        t.stable.retain(|id, _| views.iter().any(|v| v.id == *id));
        let servers: Vec<(ServerHealth, OffsetDateTime)> = judged
            .iter()
            .map(|s| {
                let entry = t.stable.entry(s.view.id).or_insert((s.healthy, now));
                if entry.0 != s.healthy {
                    *entry = (s.healthy, now);
                }
                (s.clone(), entry.1)
            })
            .collect();
        let leader = judged
            .iter()
            .find(|s| s.view.is_leader)
            .map(|s| s.view.name.clone())
            .unwrap_or_default();
        Some(State {
            healthy: judged.iter().all(|s| s.healthy),
            failure_tolerance: failure_tolerance(&judged),
            leader,
            servers,
        })
    }
}

impl State {
    /// The body of `GET sys/storage/raft/autopilot/state`, shaped as
    /// OpenBao 2.7.2's (`non_voters` only when there are any).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut servers = Map::new();
        let (mut voters, mut non_voters) = (Vec::new(), Vec::new());
        for (s, since) in &self.servers {
            let v = &s.view;
            let node_type = if v.voter { "voter" } else { "non-voter" };
            let status = if v.is_leader {
                "leader"
            } else if v.voter {
                "voter"
            } else {
                "non-voter"
            };
            if v.voter {
                voters.push(v.name.clone());
            } else {
                non_voters.push(v.name.clone());
            }
            servers.insert(
                v.name.clone(),
                json!({
                    "id": v.name,
                    "name": v.name,
                    "address": v.address,
                    "node_status": if s.dead { "left" } else { "alive" },
                    "last_contact": go_duration(s.contact),
                    "last_term": v.last_term,
                    "last_index": v.last_index,
                    "healthy": s.healthy,
                    "stable_since": since
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    "status": status,
                    "version": crate::sys::VERSION,
                    "node_type": node_type,
                }),
            );
        }
        voters.sort();
        non_voters.sort();
        let mut out = crate::sys::obj(json!({
            "healthy": self.healthy,
            "failure_tolerance": self.failure_tolerance,
            "leader": self.leader,
            "voters": voters,
            "servers": servers,
        }));
        if !non_voters.is_empty() {
            out.insert("non_voters".into(), json!(non_voters));
        }
        out
    }
}

/// `GET sys/storage/raft/autopilot/state` (on the leader; `None` elsewhere,
/// as OpenBao answers without a running autopilot).
pub async fn read_state(core: &Core) -> Result<Option<Map<String, Value>>> {
    let raft = core
        .raft()
        .ok_or_else(|| CoreError::bad_request("raft storage is not in use"))?;
    let cfg = Effective::from_stored(&load(core).await?);
    let pilot = match core.cluster() {
        Some(c) => c.autopilot(),
        None => standalone(),
    };
    Ok(pilot.state(raft, &cfg).map(|s| s.to_json()))
}

/// The tracker of a node without cluster networking (a lone server).
fn standalone() -> &'static Autopilot {
    static LONE: std::sync::OnceLock<Autopilot> = std::sync::OnceLock::new();
    LONE.get_or_init(Autopilot::default)
}

/// The autopilot loop of one node (see the module docs). Ends at `stop` or
/// when the core is gone.
pub async fn run(core: Weak<Core>, pilot: Arc<Autopilot>, mut stop: watch::Receiver<bool>) {
    let mut published = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let Some(core) = core.upgrade() else { return };
        let Some(raft) = core.raft().cloned() else {
            return;
        };
        let cfg = effective(&core).await;
        let Some(state) = pilot.state(&raft, &cfg) else {
            if published {
                metrics::gauge_set(metrics::RAFT_AUTOPILOT_HEALTHY, &[], f64::NAN);
                metrics::gauge_set(metrics::RAFT_AUTOPILOT_FAILURE_TOLERANCE, &[], f64::NAN);
                published = false;
            }
            continue;
        };
        metrics::gauge_set(
            metrics::RAFT_AUTOPILOT_HEALTHY,
            &[],
            f64::from(u8::from(state.healthy)),
        );
        metrics::gauge_set(
            metrics::RAFT_AUTOPILOT_FAILURE_TOLERANCE,
            &[],
            state.failure_tolerance as f64,
        );
        published = true;
        let judged: Vec<ServerHealth> = state.servers.into_iter().map(|(s, _)| s).collect();
        for dead in to_remove(&cfg, &judged) {
            tracing::warn!(
                server = %dead.name,
                threshold = %go_duration(cfg.dead_server_last_contact_threshold),
                "autopilot: removing a dead voter"
            );
            match crate::cluster::remove_peer(&raft, &dead.name).await {
                Ok(()) => metrics::counter_inc(metrics::RAFT_AUTOPILOT_REMOVED, &[]),
                Err(e) => {
                    tracing::warn!(server = %dead.name, error = %e, "autopilot: removing a dead voter failed");
                    break;
                }
            }
        }
    }
}

/// Go's `time.Duration.String()`: `0s`, `516.49595ms`, `10s`, `1m30s`,
/// `24h0m0s`.
pub fn go_duration(d: Duration) -> String {
    fn frac(v: u128, unit: u128, digits: usize) -> String {
        let (int, rem) = (v / unit, v % unit);
        if rem == 0 {
            return int.to_string();
        }
        let f = format!("{rem:0digits$}");
        format!("{int}.{}", f.trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n, 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n, 1_000_000, 6)),
        n => {
            let (h, m) = (n / 3_600_000_000_000, n / 60_000_000_000 % 60);
            let s = frac(n % 60_000_000_000, 1_000_000_000, 9);
            match (h, m) {
                (0, 0) => format!("{s}s"),
                (0, m) => format!("{m}m{s}s"),
                (h, m) => format!("{h}h{m}m{s}s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> FieldData {
        FieldData::from_json(&v)
    }

    fn view(id: u64, voter: bool, leader: bool, contact: Option<u64>, index: u64) -> ServerView {
        ServerView {
            id,
            name: format!("n{id}"),
            address: format!("127.0.0.1:{id}"),
            voter,
            is_leader: leader,
            last_contact: contact.map(Duration::from_secs),
            last_term: 3,
            last_index: index,
        }
    }

    #[test]
    fn go_durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(24 * 3600)), "24h0m0s");
        assert_eq!(
            go_duration(Duration::from_nanos(516_495_950)),
            "516.49595ms"
        );
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(800)), "800µs");
    }

    #[test]
    fn config_defaults_and_updates_follow_openbao() {
        let e = Effective::default().to_json();
        assert_eq!(
            Value::Object(e),
            json!({"cleanup_dead_servers": false, "dead_server_last_contact_threshold": "24h0m0s",
                   "last_contact_threshold": "10s", "max_trailing_logs": 1000, "min_quorum": 0,
                   "server_stabilization_time": "10s"})
        );
        let mut s = StoredConfig::default();
        let err = apply_update(&mut s, &fields(json!({"cleanup_dead_servers": true})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("min_quorum must be set when cleanup_dead_servers is set and it should at least be 3; cleanup_dead_servers: true, min_quorum: 0x0"),
            "{err}"
        );
        let mut s = StoredConfig::default();
        let err = apply_update(
            &mut s,
            &fields(json!({"cleanup_dead_servers": true, "min_quorum": 3, "dead_server_last_contact_threshold": 30})),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("should not be set to less than 1m; received: 30"),
            "{err}"
        );
        let mut s = StoredConfig::default();
        assert!(
            apply_update(
                &mut s,
                &fields(json!({"cleanup_dead_servers": true, "min_quorum": 3, "last_contact_threshold": 5}))
            )
            .unwrap()
        );
        let e = Effective::from_stored(&s);
        assert!(e.cleanup_dead_servers);
        assert_eq!(e.last_contact_threshold, Duration::from_secs(5));
        assert_eq!(
            e.dead_server_last_contact_threshold,
            Duration::from_secs(86400)
        );
        // Nothing given: nothing to persist; negative: refused.
        assert!(!apply_update(&mut s, &fields(json!({"bogus": 1}))).unwrap());
        assert!(apply_update(&mut s, &fields(json!({"max_trailing_logs": -5}))).is_err());
    }

    #[test]
    fn health_failure_tolerance_and_dead_voters() {
        let cfg = Effective {
            cleanup_dead_servers: true,
            min_quorum: 3,
            dead_server_last_contact_threshold: Duration::from_secs(60),
            ..Effective::default()
        };
        let servers = vec![
            view(1, true, true, Some(0), 5000),
            view(2, true, false, Some(1), 4990),
            view(3, true, false, Some(2), 3000), // 2000 behind: unhealthy
            view(4, true, false, Some(120), 5000), // dead
            view(5, true, false, None, 0),       // never heard: unhealthy
        ];
        let j = judge(&cfg, &servers, 3, 5000, Duration::from_secs(5));
        let healthy: Vec<bool> = j.iter().map(|s| s.healthy).collect();
        assert_eq!(healthy, [true, true, false, false, false]);
        assert!(j[3].dead && !j[4].dead);
        // 2 healthy of 5 voters: below the quorum of 3.
        assert_eq!(failure_tolerance(&j), 0);
        let gone = to_remove(&cfg, &j);
        assert_eq!(gone.iter().map(|s| s.id).collect::<Vec<_>>(), [4]);
        // min_quorum 5 holds the dead voter in.
        let strict = Effective {
            min_quorum: 5,
            ..cfg
        };
        assert!(to_remove(&strict, &judge(&strict, &servers, 3, 5000, Duration::ZERO)).is_empty());
        // Cleanup off: nobody is dead, nobody removed.
        let off = Effective::default();
        let j = judge(&off, &servers, 3, 5000, Duration::ZERO);
        assert!(j.iter().all(|s| !s.dead));
        assert!(to_remove(&off, &j).is_empty());
        // Three healthy voters of three tolerate one failure.
        let three = vec![
            view(1, true, true, Some(0), 10),
            view(2, true, false, Some(0), 10),
            view(3, true, false, Some(0), 10),
            view(4, false, false, Some(0), 10),
        ];
        let j = judge(&off, &three, 3, 10, Duration::ZERO);
        assert_eq!(failure_tolerance(&j), 1);
        // A stale term is unhealthy.
        let mut old = three.clone();
        old[1].last_term = 2;
        let j = judge(&off, &old, 3, 10, Duration::ZERO);
        assert!(!j[1].healthy);
        assert_eq!(failure_tolerance(&j), 0);
    }
}
