//! A multi-node cluster: joining it, its membership, and what a node does
//! when it becomes the leader.
//!
//! Raft RPCs between nodes are `storage::raft::network`; this module is the
//! part Vault users configure and call:
//!
//! **Joining** (`storage "raft" { retry_join { leader_api_addr } }` or
//! `POST sys/storage/raft/join`). A node with no Raft state asks each leader
//! address in turn for a challenge (`POST sys/storage/raft/bootstrap/challenge`,
//! unauthenticated, as in Vault): a random nonce, the cluster's seal
//! configuration and its root key as stored (sealed under the unseal key).
//! The node then reports that seal configuration (`sys/seal-status`: sealed,
//! `t`/`n`) and takes the cluster's unseal key shares through `sys/unseal`;
//! once they open the root key it answers the challenge with
//! `HMAC-SHA256(root key, "custos-raft-join" || nonce)`
//! (`POST sys/storage/raft/bootstrap/answer`). The leader checks the answer
//! against its own root key, adds the node as a learner (blocking until it
//! caught up) and then makes it a voter. Only a node given the unseal keys
//! joins. The joining node's data (seal configuration, keyring, everything)
//! arrives by replication; it unseals itself with the root key it recovered
//! once the keyring is there. This stands in for Vault's challenge, which
//! encrypts the nonce under the barrier keyring: same proof, no keyring
//! shipped before the node joined.
//!
//! Under an **auto seal** the challenge carries the root key as the cluster
//! stores it, encrypted by the seal's external key (`crate::autoseal`); a
//! joining node configured with the same `seal` stanza decrypts it through
//! that seal, answers the challenge and unseals once the data arrived, with
//! nobody giving keys (as Vault's auto-unseal join). Restarted, it unseals
//! itself through the seal like any auto-sealed node. A node whose seal
//! differs from the cluster's does not join.
//!
//! **TLS.** The cluster port is mutual TLS with certificates made at init
//! and kept in the barrier (`crate::cluster_tls`): the challenge carries
//! them encrypted under the root key, and the joining node opens and loads
//! them before it answers, so the leader's first append-entries find it
//! serving TLS. Talking to the leader's API takes Vault's `retry_join` TLS
//! keys (`leader_ca_cert_file`, `leader_client_cert_file`,
//! `leader_client_key_file`, their inline forms, `leader_tls_servername`)
//! or the same fields of `sys/storage/raft/join`: with a CA only that CA is
//! trusted, without one the web PKI. A standby forwarding to the active
//! node's `https://` `api_addr` trusts the web PKI plus every CA given for
//! joining, in `retry_join` or `sys/storage/raft/join`
//! ([`forwarding_client`]): the CA that signed the leader's API certificate
//! is the one operators already gave for joining.
//!
//! **Membership**: `sys/storage/raft/configuration` lists the servers as
//! Vault does; `sys/storage/raft/remove-peer` removes one (on the leader).
//!
//! **Caches follow the log**: every node applies every entry; what entries
//! of other nodes change in cached keys (keyring, mount tables, policies,
//! tokens, transit keys) is announced by the state machine and dropped or
//! reloaded here ([`follow_log`]), so a standby that becomes active serves
//! current state with nothing to rebuild; the index each announcement was
//! acted upon at is recorded (`ApplyProgress::note_followed`), so a standby
//! serves a client's `X-Vault-Index` read only from caches that caught up.
//! Standbys forward requests to the active node (`crate::forward`).
//!
//! **Leadership**: `sys/step-down` and a graceful shutdown of the leader
//! hand leadership to the most up-to-date voter ([`Cluster::step_down`]);
//! `sys/ha-status` lists the nodes as Vault does ([`ha_status`]).
//!
//! **Audit on the active node** ([`watch_active_audit`]): an active node
//! whose audit log cannot record (`sys/health`'s `audit_failure`: disk
//! guard, log directory gone, write errors) refuses every request, so it
//! hands leadership to a standby that can, and keeps serving as a standby
//! (it forwards; it records nothing itself). A node that becomes active
//! while the cluster's audit table is empty (after `sys/audit-table` was
//! reset) records its own (`crate::audit`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use openraft::ChangeMembers;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::config::raft_node_id_from_name;
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::seal::SealConfig;
use crate::storage::raft::{CustosNode, Invalidation, RaftStorage};

/// How long a challenge stays valid on the leader.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// At most this many outstanding challenges (unauthenticated callers).
const MAX_CHALLENGES: usize = 64;
/// Pause between rounds over the `retry_join` addresses.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long the leader waits for a new learner to catch up.
const CATCH_UP: Duration = Duration::from_secs(120);
/// Domain separation of the challenge answer.
const ANSWER_CONTEXT: &[u8] = b"custos-raft-join";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// How this node takes part in a cluster (from the server config).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `storage "raft" { node_id }`.
    pub node_name: String,
    /// This node's `api_addr`.
    pub api_addr: String,
    /// This node's advertised `cluster_addr` (Raft RPCs).
    pub cluster_addr: String,
    /// `retry_join { leader_api_addr ... }`, in file order.
    pub retry_join: Vec<JoinTarget>,
}

/// A leader to join through: its API address and how to talk TLS to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinTarget {
    pub addr: String,
    pub tls: crate::config::LeaderTls,
}

/// The client a standby forwards with (`crate::forward`), and the CAs it
/// trusts beside the web PKI for the active node's `https://` `api_addr`:
/// those of `retry_join` and of `sys/storage/raft/join` (see the module
/// docs). Rebuilt when a CA is added.
static FORWARDING: Mutex<Option<(Vec<String>, reqwest::Client)>> = Mutex::new(None);

fn build_forwarding_client(cas: &[String]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90));
    for pem in cas {
        for ca in reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default() {
            builder = builder.add_root_certificate(ca);
        }
    }
    builder.build().unwrap_or_default()
}

/// The HTTP client for forwarding to the active node.
pub fn forwarding_client() -> reqwest::Client {
    let Ok(mut slot) = FORWARDING.lock() else {
        return build_forwarding_client(&[]);
    };
    slot.get_or_insert_with(|| (Vec::new(), build_forwarding_client(&[])))
        .1
        .clone()
}

/// Trust `ca_pem` (a join CA) when forwarding.
fn trust_for_forwarding(ca_pem: &str) {
    if let Ok(mut slot) = FORWARDING.lock() {
        let mut cas = slot.take().map(|(c, _)| c).unwrap_or_default();
        if !cas.iter().any(|c| c == ca_pem) {
            cas.push(ca_pem.to_string());
        }
        let client = build_forwarding_client(&cas);
        *slot = Some((cas, client));
    }
}

/// An HTTP client for a leader's API with `tls` (Vault's `retry_join` TLS
/// keys): the given CA only, else the web PKI; the client certificate if
/// given; the leader's certificate checked under `servername` if given.
pub fn leader_client(tls: &crate::config::LeaderTls) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(CATCH_UP + Duration::from_secs(10));
    if !tls.is_custom() {
        return builder.build().map_err(CoreError::internal);
    }
    tls.check()
        .map_err(|(key, m)| CoreError::bad_request(format!("{key}: {m}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_cert {
        Some(pem) => {
            let certs = crate::storage::raft::tls::parse_certs(pem.as_bytes())
                .map_err(|m| CoreError::bad_request(format!("leader_ca_cert: {m}")))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| CoreError::bad_request(format!("leader_ca_cert: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let roots = Arc::new(roots);
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &tls.servername {
        Some(name) => Arc::new(crate::storage::raft::tls::FixedNameVerifier::new(
            roots,
            name,
            provider.clone(),
        )?),
        None => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| CoreError::bad_request(format!("leader_ca_cert: {e}")))?
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CoreError::internal)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = crate::storage::raft::tls::parse_certs(cert.as_bytes())
                .map_err(|m| CoreError::bad_request(format!("leader_client_cert: {m}")))?;
            let key = crate::storage::raft::tls::parse_key(key.expose().as_bytes())
                .map_err(|m| CoreError::bad_request(format!("leader_client_key: {m}")))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| CoreError::bad_request(format!("leader_client_cert: {e}")))?
        }
        _ => config.with_no_client_auth(),
    };
    builder
        .use_preconfigured_tls(config)
        .build()
        .map_err(CoreError::internal)
}

/// An outstanding challenge: its nonce and when it was issued.
type Challenge = (Zeroizing<Vec<u8>>, Instant);

/// A leader's answer to `bootstrap/challenge`.
struct ChallengeReply {
    /// The leader address that answered.
    addr: String,
    challenge: String,
    seal: SealConfig,
    wrapped_root: Vec<u8>,
    /// The cluster TLS, encrypted under the root key (`crate::cluster_tls`).
    cluster_tls: Option<String>,
}

/// What a joining node learnt from a leader's challenge.
struct PendingJoin {
    seal: SealConfig,
    wrapped_root: Vec<u8>,
}

/// The cluster service of one node; registered on its [`Core`].
pub struct Cluster {
    opts: ClusterOptions,
    core: Weak<Core>,
    /// Leaders to join through (config, or `sys/storage/raft/join`), each
    /// with its HTTP client.
    leaders: Mutex<Vec<(JoinTarget, reqwest::Client)>>,
    /// Leader side: outstanding challenges by joining node name.
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Joining side: the cluster's seal, once a leader answered.
    pending: Mutex<Option<PendingJoin>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    /// Autopilot's memory of this node (`crate::autopilot`).
    autopilot: Arc<crate::autopilot::Autopilot>,
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| CoreError::internal("cluster lock poisoned"))
}

impl Cluster {
    /// Build the service for `core` and register it there. Starts nothing.
    pub fn register(core: &Arc<Core>, opts: ClusterOptions) -> Result<Arc<Cluster>> {
        let mut leaders = Vec::new();
        for t in &opts.retry_join {
            leaders.push((t.clone(), leader_client(&t.tls)?));
            if let Some(pem) = &t.tls.ca_cert {
                trust_for_forwarding(pem);
            }
        }
        let (stop, _) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            leaders: Mutex::new(leaders),
            opts,
            core: Arc::downgrade(core),
            challenges: Mutex::new(HashMap::new()),
            pending: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            stop,
            autopilot: Arc::default(),
        });
        core.set_cluster(cluster.clone())
            .map_err(|_| CoreError::internal("cluster registered twice"))?;
        Ok(cluster)
    }

    /// Start the background work: the leadership follower, and the join loop
    /// when this node has leader addresses and no Raft state.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let raft = self.raft()?;
        let follower = tokio::spawn(follow_log(
            self.core.clone(),
            raft.subscribe_invalidations(),
            self.stop.subscribe(),
        ));
        self.track(follower);
        let watch = tokio::spawn(watch_active_audit(
            self.core.clone(),
            raft.watch_leader(),
            self.stop.subscribe(),
        ));
        self.track(watch);
        let pilot = tokio::spawn(crate::autopilot::run(
            self.core.clone(),
            self.autopilot.clone(),
            self.stop.subscribe(),
        ));
        self.track(pilot);
        let joined = raft.raft().is_initialized().await.unwrap_or(true);
        if !joined && !lock(&self.leaders)?.is_empty() {
            self.spawn_join_loop();
        }
        Ok(())
    }

    /// Autopilot's view of the cluster from this node (`crate::autopilot`).
    pub fn autopilot(&self) -> &crate::autopilot::Autopilot {
        &self.autopilot
    }

    /// `sys/step-down`: hand leadership to the most up-to-date other voter
    /// (see `RaftStorage::step_down`). Returns the new leader's name.
    pub async fn step_down(&self) -> Result<String> {
        let raft = self.raft()?;
        let id = raft.step_down().await?;
        let name = raft
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string());
        Ok(name)
    }

    /// At a graceful shutdown: a leader with other voters hands leadership
    /// over first, so the cluster does not wait out an election timeout.
    pub async fn hand_over(&self) {
        let Ok(raft) = self.raft() else { return };
        if !raft.is_leader() {
            return;
        }
        let voters = raft.voter_count();
        if voters < 2 {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), self.step_down()).await {
            Ok(Ok(to)) => tracing::info!(to, "shutting down: leadership handed over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "shutting down: leadership not handed over"),
            Err(_) => tracing::warn!("shutting down: leadership hand-over timed out"),
        }
    }

    /// Stop the background work (bounded).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    fn track(&self, task: JoinHandle<()>) {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|h| !h.is_finished());
            t.push(task);
        }
    }

    fn core(&self) -> Result<Arc<Core>> {
        self.core
            .upgrade()
            .ok_or_else(|| CoreError::Unavailable("server is shutting down".into()))
    }

    fn raft(&self) -> Result<Arc<RaftStorage>> {
        self.core()?
            .raft()
            .cloned()
            .ok_or_else(|| CoreError::bad_request("this server has no Raft storage"))
    }

    fn spawn_join_loop(self: &Arc<Self>) {
        let me = self.clone();
        let mut stop = self.stop.subscribe();
        self.track(tokio::spawn(async move {
            loop {
                match me.fetch_challenge().await {
                    Ok(ChallengeReply { seal, wrapped_root, .. }) if me.has_auto_seal() => {
                        match me.open_with_auto_seal(&seal, &wrapped_root).await {
                            Ok(root) => {
                                if let Ok(mut p) = me.pending.lock() {
                                    *p = Some(PendingJoin { seal, wrapped_root });
                                }
                                me.clone().complete_join(root).await;
                                return;
                            }
                            Err(e) => tracing::warn!(
                                error = %e,
                                "raft join: the cluster's root key does not open through this node's seal; retrying"
                            ),
                        }
                    }
                    Ok(ChallengeReply { seal, wrapped_root, .. }) => {
                        if seal.seal_type != "shamir" {
                            tracing::error!(
                                cluster_seal = %seal.seal_type,
                                "raft join: the cluster is sealed by an auto seal; give this node the same seal stanza (it then joins and unseals by itself)"
                            );
                            return;
                        }
                        tracing::info!(
                            shares = seal.secret_shares,
                            threshold = seal.secret_threshold,
                            "cluster found; unseal this node with the cluster's unseal keys to join"
                        );
                        if let Ok(mut p) = me.pending.lock() {
                            *p = Some(PendingJoin { seal, wrapped_root });
                        }
                        return;
                    }
                    Err(e) => tracing::info!(error = %e, "raft join: no leader answered yet"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = stop.changed() => return,
                }
            }
        }));
    }

    fn has_auto_seal(&self) -> bool {
        self.core()
            .map(|c| crate::autoseal::active(&c).is_some())
            .unwrap_or(false)
    }

    /// Auto seal (Vault's auto-unseal join): the cluster's root key, as the
    /// leader stores it encrypted by the external key, decrypted by this
    /// node's seal (the same key), so the node joins and unseals with nobody
    /// present. The same proof as the unseal keys give: only a node that can
    /// use the cluster's seal key learns the root key.
    async fn open_with_auto_seal(
        &self,
        seal: &SealConfig,
        stored: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let core = self.core()?;
        let wrapper = crate::autoseal::active(&core)
            .ok_or_else(|| CoreError::internal("no auto seal configured"))?;
        if seal.seal_type != wrapper.seal_type() {
            return Err(CoreError::bad_request(format!(
                "the cluster's seal is {:?}, this node's is {:?}",
                seal.seal_type,
                wrapper.seal_type()
            )));
        }
        crate::autoseal::open_stored_root_key(&wrapper, stored)
            .await
            .map_err(|e| CoreError::Unavailable(format!("seal ({}): {e}", e.class())))
    }

    /// Ask each leader address for a challenge; the first answer wins.
    async fn fetch_challenge(&self) -> Result<ChallengeReply> {
        let leaders = lock(&self.leaders)?.clone();
        let mut last = CoreError::Unavailable("no leader_api_addr configured".into());
        for (target, http) in leaders {
            let addr = target.addr;
            let url = format!(
                "{}/v1/sys/storage/raft/bootstrap/challenge",
                addr.trim_end_matches('/')
            );
            let body = json!({"server_id": self.opts.node_name});
            match post_json(&http, &url, &body).await {
                Ok(v) => {
                    let seal: SealConfig = serde_json::from_value(v["seal_config"].clone())
                        .map_err(|e| CoreError::Unavailable(format!("{addr}: seal_config: {e}")))?;
                    let wrapped_root = v["root_key"]
                        .as_str()
                        .and_then(|s| b64().decode(s).ok())
                        .ok_or_else(|| CoreError::Unavailable(format!("{addr}: no root_key")))?;
                    let challenge = v["challenge"]
                        .as_str()
                        .ok_or_else(|| CoreError::Unavailable(format!("{addr}: no challenge")))?
                        .to_string();
                    let cluster_tls = v["cluster_tls"].as_str().map(str::to_string);
                    return Ok(ChallengeReply {
                        addr,
                        challenge,
                        seal,
                        wrapped_root,
                        cluster_tls,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The HTTP client of leader address `addr`.
    fn client_for(&self, addr: &str) -> Result<reqwest::Client> {
        lock(&self.leaders)?
            .iter()
            .find(|(t, _)| t.addr == addr)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| CoreError::Unavailable(format!("{addr}: no longer a leader address")))
    }

    /// Is this node waiting for unseal keys to join? Then the seal config
    /// `sys/seal-status` reports (the cluster's).
    pub fn joining_seal(&self) -> Option<SealConfig> {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.seal.clone()))
    }

    /// `sys/unseal` on a node waiting to join: collect the share; once the
    /// shares open the cluster's root key, answer the challenge and unseal
    /// when the data has arrived (in the background, as Vault does).
    pub fn submit_join_share(self: &Arc<Self>, share: &[u8]) -> Result<()> {
        let core = self.core()?;
        if crate::autoseal::active(&core).is_some() {
            return Err(CoreError::bad_request(
                "this node joins through its auto seal and unseals by itself; no unseal keys are taken",
            ));
        }
        let root = {
            let pending = lock(&self.pending)?;
            let Some(p) = pending.as_ref() else {
                return Err(CoreError::bad_request("Vault is not initialized"));
            };
            core.seal
                .submit_share_with(&p.seal, &p.wrapped_root, share)?
        };
        if let Some(root) = root {
            let me = self.clone();
            self.track(tokio::spawn(async move { me.complete_join(root).await }));
        }
        Ok(())
    }

    async fn complete_join(self: Arc<Self>, root: Zeroizing<Vec<u8>>) {
        let mut stop = self.stop.subscribe();
        loop {
            match self.answer_challenge(&root).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "raft join: the leader refused or is unreachable; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
        tracing::info!("joined the cluster; unsealing once the keyring has replicated");
        let mut refused: Option<String> = None;
        loop {
            let Ok(core) = self.core() else { return };
            if core.is_initialized().await.unwrap_or(false) {
                match core.unseal_with_root_key(root.clone()).await {
                    Ok(()) => break,
                    // The cluster's audit table refused this node: say so.
                    Err(e @ CoreError::BadRequest(_)) => {
                        let said = e.to_string();
                        if refused.as_ref() != Some(&said) {
                            tracing::error!(error = %said, "unseal after join refused");
                            refused = Some(said);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "unseal after join: not yet"),
                }
            }
            drop(core);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return,
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            *p = None;
        }
    }

    async fn answer_challenge(&self, root: &[u8]) -> Result<()> {
        let reply = self.fetch_challenge().await?;
        let addr = reply.addr;
        // The cluster TLS first: the leader replicates to this node as soon
        // as it accepts the answer (crate::cluster_tls).
        let sealed_tls = reply.cluster_tls.ok_or_else(|| {
            CoreError::Unavailable(format!("{addr}: the leader sent no cluster TLS"))
        })?;
        let material = crate::cluster_tls::open_from_join(root, &sealed_tls)?;
        self.raft()?.install_cluster_tls(&material)?;
        let nonce = b64()
            .decode(&reply.challenge)
            .map_err(|_| CoreError::Unavailable("leader sent a bad challenge".into()))?;
        let answer = answer_for(root, &nonce)?;
        let url = format!(
            "{}/v1/sys/storage/raft/bootstrap/answer",
            addr.trim_end_matches('/')
        );
        let body = json!({
            "server_id": self.opts.node_name,
            "answer": b64().encode(answer),
            "api_addr": self.opts.api_addr,
            "cluster_addr": self.opts.cluster_addr,
        });
        post_json(&self.client_for(&addr)?, &url, &body)
            .await
            .map(|_| ())
    }

    /// `POST sys/storage/raft/join`: join through `leader_api_addr` now,
    /// talking TLS to it as `data` says (`leader_ca_cert`,
    /// `leader_client_cert`, `leader_client_key`, `leader_tls_servername`).
    pub async fn join(
        self: &Arc<Self>,
        leader_api_addr: &str,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let raft = self.raft()?;
        if raft.raft().is_initialized().await.unwrap_or(true) {
            return Err(CoreError::bad_request(
                "raft join: this node already has Raft state (it is a member of a cluster)",
            ));
        }
        if !(leader_api_addr.starts_with("http://") || leader_api_addr.starts_with("https://")) {
            return Err(CoreError::bad_request(
                "leader_api_addr: expected an http:// or https:// URL",
            ));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match data.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(CoreError::bad_request(format!("{k}: expected a string"))),
            }
        };
        let tls = crate::config::LeaderTls {
            ca_cert: text("leader_ca_cert")?,
            client_cert: text("leader_client_cert")?,
            client_key: text("leader_client_key")?.map(crate::logical::Secret::new),
            servername: text("leader_tls_servername")?,
        };
        let http = leader_client(&tls)?;
        if let Some(pem) = &tls.ca_cert {
            trust_for_forwarding(pem);
        }
        {
            let mut leaders = lock(&self.leaders)?;
            leaders.retain(|(t, _)| t.addr != leader_api_addr);
            let target = JoinTarget {
                addr: leader_api_addr.to_string(),
                tls,
            };
            leaders.insert(0, (target, http));
        }
        // Fetch now so the caller learns whether the leader answers.
        let ChallengeReply {
            seal, wrapped_root, ..
        } = self.fetch_challenge().await?;
        let auto_root = if self.has_auto_seal() {
            Some(self.open_with_auto_seal(&seal, &wrapped_root).await?)
        } else {
            None
        };
        *lock(&self.pending)? = Some(PendingJoin { seal, wrapped_root });
        if let Some(root) = auto_root {
            let me = self.clone();
            self.track(tokio::spawn(async move { me.complete_join(root).await }));
        }
        Ok(crate::sys::obj(json!({"joined": true})))
    }

    /// Leader side of `bootstrap/challenge`.
    pub async fn challenge(&self, server_id: &str) -> Result<Map<String, Value>> {
        if server_id.trim().is_empty() {
            return Err(CoreError::bad_request("server_id is required"));
        }
        let core = self.core()?;
        let raft = self.raft()?;
        if !raft.is_leader() {
            return Err(CoreError::Unavailable(
                "not the active node; retry_join another leader_api_addr".into(),
            ));
        }
        let seal = core.seal_config().await?.ok_or(CoreError::NotInitialized)?;
        // Shamir: the root key sealed under the unseal key; an auto seal:
        // the root key encrypted by the external key, which a joining node
        // configured with the same seal decrypts (crate::autoseal).
        let wrapped = if seal.seal_type == "shamir" {
            crate::seal::wrapped_root_key(core.physical().as_ref()).await?
        } else {
            core.physical()
                .get(crate::autoseal::AUTO_ROOT_KEY_PATH)
                .await?
        }
        .ok_or(CoreError::NotInitialized)?;
        let mut nonce = Zeroizing::new(vec![0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let challenge = b64().encode(nonce.as_slice());
        {
            let mut ch = lock(&self.challenges)?;
            ch.retain(|_, (_, at)| at.elapsed() < CHALLENGE_TTL);
            if ch.len() >= MAX_CHALLENGES && !ch.contains_key(server_id) {
                return Err(CoreError::Unavailable(
                    "too many outstanding join challenges".into(),
                ));
            }
            ch.insert(server_id.to_string(), (nonce, Instant::now()));
        }
        // The cluster TLS, readable only with the root key the joining node
        // must recover anyway (crate::cluster_tls).
        let cluster_tls = match crate::cluster_tls::read(&core).await? {
            Some(m) => crate::cluster_tls::seal_for_join(&core.unsealed()?.root_key(), &m)?,
            None => {
                return Err(CoreError::Unavailable(
                    "this cluster has no cluster TLS yet; unseal its active node again".into(),
                ));
            }
        };
        Ok(crate::sys::obj(json!({
            "challenge": challenge,
            "seal_config": seal,
            "root_key": b64().encode(wrapped),
            "cluster_tls": cluster_tls,
        })))
    }

    /// Leader side of `bootstrap/answer`: check the answer, add the node as
    /// a learner, wait for it to catch up, make it a voter.
    pub async fn answer(&self, data: &Map<String, Value>) -> Result<Map<String, Value>> {
        let field = |k: &str| -> Result<String> {
            data.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
                .ok_or_else(|| CoreError::bad_request(format!("{k} is required")))
        };
        let (server_id, answer) = (field("server_id")?, field("answer")?);
        let (api_addr, cluster_addr) = (field("api_addr")?, field("cluster_addr")?);
        let answer = b64()
            .decode(answer)
            .map_err(|_| CoreError::bad_request("answer: invalid base64"))?;
        let core = self.core()?;
        let raft = self.raft()?;
        if !raft.is_leader() {
            return Err(CoreError::Unavailable("not the active node".into()));
        }
        let unsealed = core.unsealed()?;
        let nonce = lock(&self.challenges)?
            .remove(&server_id)
            .filter(|(_, at)| at.elapsed() < CHALLENGE_TTL)
            .map(|(n, _)| n)
            .ok_or_else(|| CoreError::bad_request("no outstanding challenge for this server_id"))?;
        let expected = answer_for(&unsealed.root_key(), &nonce)?;
        drop(unsealed);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            answer.as_slice(),
        )) {
            return Err(CoreError::PermissionDenied);
        }
        let id = raft_node_id_from_name(&server_id);
        let node = CustosNode {
            addr: api_addr,
            cluster_addr,
            name: server_id.clone(),
        };
        let voters: BTreeSet<u64> = {
            let m = raft.raft().metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        if !voters.contains(&id) {
            // No restore stages outside the log while the node joins, and
            // one that did is covered by a snapshot first.
            let _gate = raft.prepare_for_new_member().await?;
            tracing::info!(node = %node, "raft join: adding a learner");
            let added = tokio::time::timeout(CATCH_UP, raft.raft().add_learner(id, node, true))
                .await
                .map_err(|_| {
                    CoreError::Unavailable("the new node did not catch up in time".into())
                })?;
            added.map_err(crate::storage::raft::write_error_to_core)?;
            raft.raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(crate::storage::raft::write_error_to_core)?;
            tracing::info!(server_id, "raft join: the node is a voter");
        }
        Ok(crate::sys::obj(json!({"joined": true})))
    }
}

/// POST `body` to `url`; the JSON answer, or why there is none.
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| CoreError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(CoreError::Unavailable(format!(
            "{url}: {status}: {}",
            v["errors"]
        )));
    }
    Ok(v)
}

/// An error with its sources ("error sending request: ...: invalid peer
/// certificate: UnknownIssuer"), so a TLS failure says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// HMAC-SHA256 of the join context and nonce under the root key.
fn answer_for(root: &[u8], nonce: &[u8]) -> Result<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(root).map_err(CoreError::internal)?;
    mac.update(ANSWER_CONTEXT);
    mac.update(nonce);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Remove `server_id` (a node name, or its numeric Raft id) from the
/// membership. Only the leader can.
pub async fn remove_peer(raft: &RaftStorage, server_id: &str) -> Result<()> {
    let members = raft.raft().metrics().borrow().membership_config.clone();
    let id = members
        .nodes()
        .find(|(id, n)| n.name == server_id || id.to_string() == server_id)
        .map(|(id, _)| *id)
        .ok_or_else(|| CoreError::bad_request(format!("no peer named {server_id:?}")))?;
    if !raft.is_leader() {
        return Err(CoreError::Unavailable(
            "not the active node: remove peers through the leader".into(),
        ));
    }
    let voters: BTreeSet<u64> = members.membership().voter_ids().collect();
    let change = if voters.contains(&id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.raft()
        .change_membership(change, false)
        .await
        .map_err(crate::storage::raft::write_error_to_core)?;
    tracing::info!(server_id, "raft: peer removed");
    Ok(())
}

/// `GET sys/storage/raft/configuration`, shaped as Vault's.
pub fn configuration(raft: &RaftStorage) -> Map<String, Value> {
    let m = raft.raft().metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let servers: Vec<Value> = membership
        .nodes()
        .map(|(id, n)| {
            json!({
                "node_id": if n.name.is_empty() { id.to_string() } else { n.name.clone() },
                "address": host_port(if n.cluster_addr.is_empty() { &n.addr } else { &n.cluster_addr }),
                "leader": m.current_leader == Some(*id),
                "voter": voters.contains(id),
                "protocol_version": "3",
            })
        })
        .collect();
    let index = m
        .membership_config
        .log_id()
        .map(|l| l.index)
        .unwrap_or_default();
    crate::sys::obj(json!({"config": {"index": index, "servers": servers}}))
}

/// The API address of the current leader, if known (`sys/leader`).
pub fn leader_api_addr(raft: &RaftStorage) -> Option<String> {
    let m = raft.raft().metrics();
    let m = m.borrow();
    let leader = m.current_leader?;
    m.membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
        .filter(|a| !a.is_empty())
}

/// The cluster address of the current leader, if known.
pub fn leader_cluster_addr(raft: &RaftStorage) -> Option<String> {
    let m = raft.raft().metrics();
    let m = m.borrow();
    let leader = m.current_leader?;
    m.membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.cluster_addr.clone())
        .filter(|a| !a.is_empty())
}

/// `http://host:port/...` → `host:port` (Vault lists bare addresses).
pub(crate) fn host_port(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or_default().to_string()
}

/// How often the active node checks that its audit log can record.
const AUDIT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Pause after a failed hand-over (no healthy voter, no quorum).
const AUDIT_STEP_DOWN_RETRY: Duration = Duration::from_secs(2);

/// While this node is the active node of a multi-voter cluster: step down
/// when its audit log cannot record, and record its audit table when the
/// cluster has none (see the module docs).
async fn watch_active_audit(
    core: Weak<Core>,
    mut leader: watch::Receiver<Option<u64>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_active = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(AUDIT_CHECK_EVERY) => {}
            _ = leader.changed() => {}
            _ = stop.changed() => return,
        }
        let Some(core) = core.upgrade() else { return };
        let Some(cluster) = core.cluster().cloned() else {
            return;
        };
        let Ok(u) = core.unsealed() else {
            was_active = false;
            continue;
        };
        let active = core.is_active();
        if active && !was_active {
            match crate::audit::record_table_if_empty(&core.opts.audit_devices, &u.system).await {
                Ok(true) => tracing::info!(
                    "active node: recorded its audit devices as the cluster's audit device table"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "active node: cannot record the audit device table")
                }
            }
        }
        was_active = active;
        let Some(raft) = core.raft() else { continue };
        if !active || raft.is_stepping_down() {
            continue;
        }
        let Err(e) = u.audit.health() else { continue };
        let voters = raft.voter_count();
        if voters < 2 {
            continue;
        }
        tracing::error!(error = %e, "active node: the audit log cannot record; handing leadership to a standby");
        drop(u);
        match cluster.step_down().await {
            Ok(to) => tracing::warn!(to, "stepped down: this node's audit log cannot record"),
            Err(err) => {
                tracing::error!(error = %err, "stepping down for the audit failure failed; retrying");
                drop(core);
                tokio::select! {
                    _ = tokio::time::sleep(AUDIT_STEP_DOWN_RETRY) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Follow the Raft log's changes to cached keys (see
/// `storage::raft::Invalidation`): entries other nodes proposed, applied
/// here, drop or reload what this node holds in memory for them, so a
/// standby that becomes the active node serves current state at once with
/// nothing to rebuild. A whole-key-space change (restore, installed
/// snapshot) or a missed announcement (this task lagged) rebuilds the
/// unsealed state as at unseal.
async fn follow_log(
    core: Weak<Core>,
    mut rx: broadcast::Receiver<Arc<Invalidation>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let inv = tokio::select! {
            got = rx.recv() => match got {
                Ok(inv) => inv,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cache invalidations missed; rebuilding the unsealed state");
                    // The rebuild reads storage that holds every change
                    // announced so far.
                    let index = core
                        .upgrade()
                        .and_then(|c| c.raft().map(|r| r.progress().announced()))
                        .unwrap_or_default();
                    Arc::new(Invalidation { keys: Vec::new(), all: true, index })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        };
        let Some(core) = core.upgrade() else { return };
        // A sealed node holds no caches: it builds them from storage when
        // unsealed, so there is nothing to follow.
        if !core.is_sealed()
            && let Err(e) = apply_invalidation(&core, &inv).await
        {
            tracing::warn!(error = %e, "applying a replicated change to the caches failed; rebuilding");
            if let Err(e) = core.replace_state(async { Ok(()) }).await {
                tracing::error!(error = %e, "rebuilding the unsealed state failed");
            }
        }
        // Reads a standby serves for an X-Vault-Index wait for this.
        if let Some(raft) = core.raft() {
            raft.progress().note_followed(inv.index);
        }
    }
}

/// Drop or reload what `inv` names: the keyring, the mount tables,
/// policies, tokens and engines' caches (the audit device table is only
/// compared at unseal: nothing to drop).
async fn apply_invalidation(core: &Core, inv: &Invalidation) -> Result<()> {
    if inv.all {
        core.replace_state(async { Ok(()) }).await?;
        return Ok(());
    }
    let u = core.unsealed()?;
    // A new keyring, or a rekey's new root key (crate::rootkey: the root
    // key first, as the new keyring is sealed under it).
    if inv
        .keys
        .iter()
        .any(|k| k == crate::barrier::KEYRING_PATH || k == crate::barrier::ROOT_KEY_COPY_PATH)
    {
        crate::rootkey::follow(core).await?;
    }
    if inv
        .keys
        .iter()
        .any(|k| k == "core/mounts" || k == "core/auth")
    {
        core.reload_mount_tables().await?;
    }
    for key in &inv.keys {
        if let Some(name) = key.strip_prefix("sys/policy/") {
            u.policies.invalidate(name);
        } else if let Some(rest) = key.strip_prefix("sys/token/") {
            u.tokens.invalidate(rest);
        } else if key.starts_with("sys/identity/") {
            u.identity.invalidate(key);
        } else if let Some(rest) = key.strip_prefix("logical/")
            && let Some((uuid, rel)) = rest.split_once('/')
            && let Some(m) = u
                .router
                .entries()
                .into_iter()
                .find(|e| e.uuid == uuid && !e.is_auth())
            && let Some(mounted) = u.router.get(&m.path)
        {
            mounted.backend.invalidate(rel);
        }
    }
    Ok(())
}

/// `GET sys/ha-status`, shaped as Vault's: every member with its
/// addresses, which one is active, and (seen from the active node) when
/// each standby last answered it.
pub fn ha_status(raft: &RaftStorage) -> Map<String, Value> {
    let m = raft.raft().metrics();
    let m = m.borrow();
    let contacts = crate::storage::raft::network::last_contacts();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let i_lead = m.current_leader == Some(m.id);
    let nodes: Vec<Value> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| {
            let active = m.current_leader == Some(*id);
            let last_echo = if active || !i_lead {
                Value::Null
            } else {
                contacts
                    .get(id)
                    .map(|d| json!(crate::barrier::rfc3339(now - d.as_secs() as i64)))
                    .unwrap_or(Value::Null)
            };
            json!({
                "hostname": if n.name.is_empty() { id.to_string() } else { n.name.clone() },
                "api_address": n.addr,
                "cluster_address": n.cluster_addr,
                "active_node": active,
                "last_echo": last_echo,
            })
        })
        .collect();
    crate::sys::obj(json!({"nodes": nodes}))
}
