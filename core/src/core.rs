//! The server core: seal state, the unsealed subsystems, and the request
//! pipeline.
//!
//! [`Core::handle`] is the whole life of an authenticated request, in order:
//! sealed? → token lookup → route → existence check (create vs update) → ACL
//! (deny by default, sudo for root-protected paths) → audit the request (fail
//! closed: no audit, no action) → consume a token use → backend → wrap the
//! response when asked (`crate::wrapping`) → audit the response →
//! [`Response`]. The HTTP layer (`crate::http`) only translates
//! to and from HTTP; unauthenticated `sys/` endpoints (init, unseal, health)
//! are served by `crate::sys` without this pipeline, as in Vault.
//!
//! A standby serving a read for a client's `X-Vault-Index`
//! ([`Request::standby_read`], `crate::forward`) runs the same pipeline, but
//! first checks that the route may be served there
//! (`Backend::serves_on_standby`) and that the token has no use limit;
//! otherwise it answers [`CoreError::ForwardToActive`] before anything is
//! audited or changed, and the HTTP layer forwards the request.
//!
//! Everything that needs the barrier's keyring (router, token store, policy
//! store, audit devices with their salts) lives in [`Unsealed`], built at
//! unseal and dropped at seal.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use custos_audit::AuditBroker;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::audit;
use crate::background::{Priority, spawn_background};
use crate::barrier::Barrier;
use crate::config::AuditDeviceConfig;
use crate::error::{CoreError, Result};
use crate::logical::{Operation, Request, Response};
use crate::metrics as m;
use crate::policy::{PolicyStore, requires_sudo};
use crate::router::{
    MountEntry, Mounted, Router, builtin_secret_mounts, ensure_builtin_mounts, is_protected,
    is_reserved_secret_path,
};
use crate::seal::{SealConfig, ShamirSeal};
use crate::storage::carry::{self, CarriedAudit, CarriedEvent};
use crate::storage::raft::RaftStorage;
use crate::storage::{PhysicalStore, StorageView};
use crate::token::{TokenBackend, TokenEntry, TokenStore};
use crate::traces::in_span;

/// Where the mount tables live (through the barrier).
const MOUNTS_PATH: &str = "core/mounts";
const AUTH_PATH: &str = "core/auth";

/// Static settings of a core, from server config or dev mode.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub node_name: String,
    pub api_addr: String,
    pub cluster_addr: String,
    pub cluster_name: String,
    pub audit_devices: Vec<AuditDeviceConfig>,
    /// Seconds; Vault's system default is 768h.
    pub default_lease_ttl: i64,
    pub max_lease_ttl: i64,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            node_name: "custos".into(),
            api_addr: String::new(),
            cluster_addr: String::new(),
            cluster_name: "custos-cluster".into(),
            audit_devices: Vec::new(),
            default_lease_ttl: 768 * 3600,
            max_lease_ttl: 768 * 3600,
        }
    }
}

/// The subsystems that exist only while unsealed.
pub struct Unsealed {
    pub router: Router,
    pub tokens: Arc<TokenStore>,
    pub policies: Arc<PolicyStore>,
    /// Entities, aliases and groups (`sys/identity/`).
    pub identity: Arc<crate::identity::IdentityStore>,
    /// Login lockout (`sys/locked-users/`).
    pub lockout: crate::auth::lockout::Lockout,
    pub audit: Arc<AuditBroker>,
    /// System storage view (`sys/`), for core-owned data such as audit salts.
    pub system: StorageView,
    /// `sys/audit-query`: set by `start_workers` when a device writes a
    /// local audit log.
    pub audit_query: std::sync::OnceLock<Arc<custos_audit::query::AuditQueryService>>,
    /// Replaced in place when a rekey rotates the root key
    /// (`crate::rootkey`), here or on another node.
    root_key: RwLock<Zeroizing<Vec<u8>>>,
    /// The `X-Vault-Index` key derived from the root key and the last index
    /// header issued (`crate::forward`); emptied when the root key rotates.
    pub(crate) index_cache: std::sync::Mutex<crate::forward::IndexCache>,
    stop: watch::Sender<bool>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Unsealed {
    /// The root key, for the cluster join challenge (`crate::cluster`).
    pub(crate) fn root_key(&self) -> Zeroizing<Vec<u8>> {
        self.root_key
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Install a rotated root key (`crate::rootkey`; the caller stored it).
    pub(crate) fn set_root_key(&self, key: Zeroizing<Vec<u8>>) {
        // The index cache's lock is held across the swap, so no index key
        // derived from the old root key is cached after it (the cache takes
        // its lock before it reads the root key).
        let mut cache = self.index_cache.lock().unwrap_or_else(|p| p.into_inner());
        match self.root_key.write() {
            Ok(mut k) => *k = key,
            Err(p) => *p.into_inner() = key,
        }
        *cache = crate::forward::IndexCache::default();
    }
}

pub struct Core {
    pub opts: CoreOptions,
    physical: Arc<dyn PhysicalStore>,
    raft: Option<Arc<RaftStorage>>,
    pub barrier: Arc<Barrier>,
    pub seal: ShamirSeal,
    /// Root token generation and rekey in progress ([`crate::ceremony`]).
    pub ceremonies: crate::ceremony::Ceremonies,
    unsealed: RwLock<Option<Arc<Unsealed>>>,
    /// Serialises init, unseal, seal and mount-table changes.
    state_lock: Mutex<()>,
    me: Weak<Core>,
    started: Instant,
    /// The automated snapshot agent the binary registered, if any
    /// ([`crate::snapshot_auto`]).
    snapshot_agent: std::sync::OnceLock<Arc<dyn crate::snapshot_auto::SnapshotAgent>>,
    /// Joining and membership of a multi-node cluster ([`crate::cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The configured seals and any pending migration ([`crate::autoseal`]);
    /// unset means the Shamir seal.
    seal_setup: std::sync::OnceLock<Arc<crate::autoseal::SealSetup>>,
}

/// The error a client sees when audit could not record its request: 503 when
/// the audit disk is full (the server refuses work rather than lose audit),
/// 500 otherwise. Never the event's content.
fn audit_failure(e: &custos_audit::AuditError, what: &str) -> CoreError {
    if e.is_disk_full() {
        tracing::error!(error = %e, "audit: disk full; refusing the {what}");
        CoreError::Unavailable(
            "audit log storage is full: requests are refused until space is freed".into(),
        )
    } else {
        tracing::error!(error = %e, "audit: no device recorded the {what}; refusing it");
        CoreError::Audit(format!("no audit device recorded the {what}"))
    }
}

/// Vault's answer for a missing or unknown token.
fn permission_denied() -> CoreError {
    CoreError::PermissionDenied
}

impl Core {
    pub fn new(
        opts: CoreOptions,
        physical: Arc<dyn PhysicalStore>,
        raft: Option<Arc<RaftStorage>>,
    ) -> Arc<Core> {
        Arc::new_cyclic(|me| Core {
            opts,
            barrier: Arc::new(Barrier::new(physical.clone())),
            physical,
            raft,
            seal: ShamirSeal::new(),
            ceremonies: crate::ceremony::Ceremonies::new(),
            unsealed: RwLock::new(None),
            state_lock: Mutex::new(()),
            me: me.clone(),
            started: Instant::now(),
            snapshot_agent: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            seal_setup: std::sync::OnceLock::new(),
        })
    }

    /// Register the configured seals (once, at start; [`crate::autoseal::configure`]).
    pub fn set_seal_setup(
        &self,
        setup: Arc<crate::autoseal::SealSetup>,
    ) -> std::result::Result<(), Arc<crate::autoseal::SealSetup>> {
        self.seal_setup.set(setup)
    }

    /// The configured seals; `None` for a plain Shamir node.
    pub fn seal_setup(&self) -> Option<&Arc<crate::autoseal::SealSetup>> {
        self.seal_setup.get()
    }

    /// Hold the lock that serialises init, unseal and seal
    /// ([`crate::autoseal`] unseals and migrates under it).
    pub(crate) async fn lock_state(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.state_lock.lock().await
    }

    /// Register the automated snapshot agent (once; a second call is
    /// refused with the agent it tried to register).
    pub fn set_snapshot_agent(
        &self,
        agent: Arc<dyn crate::snapshot_auto::SnapshotAgent>,
    ) -> std::result::Result<(), Arc<dyn crate::snapshot_auto::SnapshotAgent>> {
        self.snapshot_agent.set(agent)
    }

    /// The registered automated snapshot agent.
    pub fn snapshot_agent(&self) -> Option<&dyn crate::snapshot_auto::SnapshotAgent> {
        self.snapshot_agent.get().map(|a| a.as_ref())
    }

    /// Register the cluster membership service (once).
    pub fn set_cluster(
        &self,
        cluster: Arc<crate::cluster::Cluster>,
    ) -> std::result::Result<(), Arc<crate::cluster::Cluster>> {
        self.cluster.set(cluster)
    }

    /// The cluster membership service, when this node is configured for one.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    pub fn raft(&self) -> Option<&Arc<RaftStorage>> {
        self.raft.as_ref()
    }

    pub fn physical(&self) -> &Arc<dyn PhysicalStore> {
        &self.physical
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The node's configured name (`storage "raft" { node_id }`), used as
    /// the `node_id` metric label.
    pub fn node_label(&self) -> String {
        self.opts.node_name.clone()
    }

    pub fn is_sealed(&self) -> bool {
        self.unsealed.read().map(|u| u.is_none()).unwrap_or(true)
    }

    /// Is this node the active node (Raft leader)? A core without Raft (unit
    /// tests) is always active.
    pub fn is_active(&self) -> bool {
        self.raft.as_ref().map(|r| r.is_leader()).unwrap_or(true)
    }

    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.seal.config(self.physical.as_ref()).await?.is_some())
    }

    pub async fn seal_config(&self) -> Result<Option<SealConfig>> {
        self.seal.config(self.physical.as_ref()).await
    }

    /// The unsealed subsystems, or 503 sealed.
    pub fn unsealed(&self) -> Result<Arc<Unsealed>> {
        self.unsealed
            .read()
            .map_err(|_| CoreError::internal("state lock poisoned"))?
            .clone()
            .ok_or(CoreError::Sealed)
    }

    /// `sys/init`: generate keys, initialize the barrier, write the default
    /// policy and mount tables, create the root token. Leaves the core sealed,
    /// as Vault does. Returns (shares, root token).
    pub async fn initialize(
        &self,
        shares: u8,
        threshold: u8,
    ) -> Result<(Vec<Zeroizing<Vec<u8>>>, String)> {
        let _g = self.state_lock.lock().await;
        let init = self
            .seal
            .init(self.physical.as_ref(), shares, threshold)
            .await?;
        let root_token = self.initialize_barrier(&init.root_key).await?;
        m::gauge_set(m::CORE_INITIALIZED, &[], 1.0);
        Ok((init.shares, root_token))
    }

    /// The seal-independent half of `sys/init`, with the state lock held and
    /// the seal's keys stored: initialize the barrier under `root_key`, write
    /// the default policy and mount tables, create the root token. Leaves
    /// the barrier sealed.
    pub(crate) async fn initialize_barrier(&self, root_key: &Zeroizing<Vec<u8>>) -> Result<String> {
        self.barrier.initialize(root_key).await?;
        let result = async {
            self.write_default_mounts().await?;
            let u = self
                .build_unsealed(root_key.clone(), audit::AuditTableRole::Record)
                .await?;
            u.policies.ensure_default().await?;
            let (root_token, _) = u.tokens.create_root_token(None).await?;
            // The cluster port's certificates (crate::cluster_tls).
            crate::cluster_tls::generate(&StorageView::new(self.barrier.clone(), "")).await?;
            self.teardown(u).await;
            Ok::<_, CoreError>(root_token)
        }
        .await;
        self.barrier.seal();
        result
    }

    /// Dev-mode shortcut: unseal with the root key directly.
    pub async fn unseal_with_root_key(&self, root_key: Zeroizing<Vec<u8>>) -> Result<()> {
        let _g = self.state_lock.lock().await;
        self.unseal_locked(root_key).await
    }

    /// `sys/unseal` with one share. Returns whether the core is now unsealed.
    pub async fn submit_unseal_share(&self, share: &[u8]) -> Result<bool> {
        let _g = self.state_lock.lock().await;
        if !self.is_sealed() {
            return Ok(true);
        }
        match self
            .seal
            .submit_share(self.physical.as_ref(), share)
            .await?
        {
            None => Ok(false),
            Some(root_key) => {
                self.unseal_locked(root_key).await?;
                Ok(true)
            }
        }
    }

    /// Unseal with the root key in hand; the caller holds the state lock.
    pub(crate) async fn unseal_locked(&self, root_key: Zeroizing<Vec<u8>>) -> Result<()> {
        let role = self.audit_table_role();
        self.open_locked(root_key, role).await
    }

    /// How this node treats the cluster's audit device table when unsealed
    /// by an operator (`crate::audit`): the only voter's table is the
    /// cluster's; a member of a larger cluster must match it.
    fn audit_table_role(&self) -> audit::AuditTableRole {
        let voters = self.raft.as_ref().map_or(1, |r| r.voter_count());
        if voters <= 1 {
            audit::AuditTableRole::Record
        } else {
            audit::AuditTableRole::Match {
                active: self.is_active(),
            }
        }
    }

    async fn open_locked(
        &self,
        root_key: Zeroizing<Vec<u8>>,
        role: audit::AuditTableRole,
    ) -> Result<()> {
        if !self.is_sealed() {
            return Ok(());
        }
        self.barrier.unseal(&root_key).await?;
        match self.build_unsealed(root_key, role).await {
            Ok(u) => {
                // Before any request: request events that travelled in Raft
                // entries and may have missed the audit log (a crash between
                // a write's append and its audit pair).
                if let Some(raft) = &self.raft {
                    match audit::reconcile_carried(&u.audit, raft.carried(), &self.node_label())
                        .await
                    {
                        Ok(_) => {
                            if let Err(e) = raft.carried().store_scanned() {
                                tracing::warn!(error = %e, "audit reconciliation checkpoint");
                            }
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "audit reconciliation failed; retried in the background"
                        ),
                    }
                }
                self.start_workers(&u);
                if let Ok(mut slot) = self.unsealed.write() {
                    *slot = Some(u);
                }
                crate::cluster_tls::load_at_unseal(self).await;
                self.publish_seal_metrics();
                tracing::info!("core unsealed");
                Ok(())
            }
            Err(e) => {
                self.barrier.seal();
                Err(e)
            }
        }
    }

    /// `sys/seal`: drop the keyring and all unsealed state.
    pub async fn seal_now(&self) -> Result<()> {
        let _g = self.state_lock.lock().await;
        let taken = self.unsealed.write().ok().and_then(|mut s| s.take());
        self.barrier.seal();
        self.seal.reset();
        self.ceremonies.reset();
        crate::cluster_tls::forget(self);
        if let Some(u) = taken {
            self.teardown(u).await;
        }
        self.publish_seal_metrics();
        tracing::info!("core sealed");
        Ok(())
    }

    /// Replace the stored state (a Raft snapshot restore, see
    /// `crate::raft_snapshot`): with the state lock held, the unsealed
    /// subsystems are torn down, `apply` runs, and the barrier is reopened
    /// with the root key in hand. Returns whether the node is unsealed
    /// afterwards: a snapshot of another cluster holds a keyring this root key
    /// cannot open, so the node stays sealed until that cluster's unseal keys
    /// are given, as Vault seals after such a restore. If `apply` fails, the
    /// state is unchanged and the node reopens on it.
    pub async fn replace_state<F>(&self, apply: F) -> Result<bool>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let root_key = self.unsealed()?.root_key();
        let _g = self.state_lock.lock().await;
        // The keyring as it was, to follow a root key rotation the new
        // state may hold (crate::rootkey).
        let held = self.barrier.held_keyring();
        let taken = self.unsealed.write().ok().and_then(|mut s| s.take());
        self.barrier.seal();
        if let Some(u) = taken {
            self.teardown(u).await;
        }
        let applied = apply.await;
        let root_key = crate::rootkey::current_root_key(self, held.as_ref(), root_key).await;
        self.seal.reset();
        // A rebuild, not an operator's unseal: the audit table is not
        // checked again (crate::audit).
        let reopened = self
            .open_locked(root_key, audit::AuditTableRole::Reopen)
            .await;
        self.publish_seal_metrics();
        match (applied, reopened) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(())) => Ok(true),
            (Ok(()), Err(e)) => {
                tracing::info!(error = %e, "restored state does not open with this root key; sealed");
                Ok(false)
            }
        }
    }

    /// `sys/rotate`: a new barrier key term.
    pub async fn rotate_barrier(&self) -> Result<crate::barrier::KeyStatus> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        let st = self.barrier.rotate(&u.root_key()).await?;
        self.publish_seal_metrics();
        Ok(st)
    }

    pub fn publish_seal_metrics(&self) {
        let node = self.node_label();
        let labels = [("node_id", node)];
        m::gauge_set(
            m::CORE_UNSEALED,
            &labels,
            if self.is_sealed() { 0.0 } else { 1.0 },
        );
        m::gauge_set(
            m::CORE_ACTIVE,
            &labels,
            if self.is_active() { 1.0 } else { 0.0 },
        );
        m::gauge_set(
            m::SEAL_TYPE,
            &[("type", crate::autoseal::seal_type_name(self).to_string())],
            1.0,
        );
        if let Some((term, installed)) = self.barrier.active_term_install_time() {
            m::gauge_set(m::BARRIER_TERM, &[], term as f64);
            m::gauge_set(m::BARRIER_KEY_AGE, &[], installed as f64);
        }
    }

    async fn write_default_mounts(&self) -> Result<()> {
        let view = StorageView::new(self.barrier.clone(), "");
        // `secret/` is mounted only in dev mode (as Vault); `init` writes the
        // built-in mounts only.
        let mounts = Vec::from(builtin_secret_mounts());
        let auth = vec![MountEntry::new(
            "auth/token/",
            "token",
            "token based credentials",
        )];
        view.put_json(MOUNTS_PATH, &mounts).await?;
        view.put_json(AUTH_PATH, &auth).await
    }

    async fn build_unsealed(
        &self,
        root_key: Zeroizing<Vec<u8>>,
        role: audit::AuditTableRole,
    ) -> Result<Arc<Unsealed>> {
        let root_view = StorageView::new(self.barrier.clone(), "");
        let system = StorageView::new(self.barrier.clone(), "sys/");
        let tokens = Arc::new(TokenStore::new(system.sub("token/")));
        tokens.init().await?;
        let policies = Arc::new(PolicyStore::new(system.sub("policy/")));
        policies.ensure_default().await?;
        let identity = Arc::new(crate::identity::IdentityStore::new(system.sub("identity/")));
        let lockout = crate::auth::lockout::Lockout::new(system.sub("locked-users/"));
        let audit = Arc::new(
            audit::build_broker(&self.opts.audit_devices, &system, role, &root_key).await?,
        );
        // On a cluster every event says which node wrote it (audit_nodes).
        if self.cluster().is_some() {
            audit.set_node_id(self.node_label());
        }
        let router = Router::new();
        let mut entries: Vec<MountEntry> =
            root_view.get_json(MOUNTS_PATH).await?.unwrap_or_default();
        // A table written before the built-in mounts were listed gets them
        // now, once (their UUIDs must stay put: storage is keyed by them).
        // Only the active node writes; a standby serves them from memory
        // until the active node's table reaches it.
        if ensure_builtin_mounts(&mut entries) && self.is_active() {
            root_view.put_json(MOUNTS_PATH, &entries).await?;
        }
        entries.extend(
            root_view
                .get_json::<Vec<MountEntry>>(AUTH_PATH)
                .await?
                .unwrap_or_default(),
        );
        for entry in entries {
            let mounted = self.instantiate(entry, &tokens).await?;
            router.insert(mounted);
        }
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Unsealed {
            router,
            tokens,
            policies,
            identity,
            lockout,
            audit,
            system,
            audit_query: std::sync::OnceLock::new(),
            root_key: RwLock::new(root_key),
            index_cache: std::sync::Mutex::default(),
            stop,
            workers: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Bring the router in line with the stored mount tables after another
    /// node changed them (`crate::cluster` follows the Raft log): mounts no
    /// longer listed go, new ones are instantiated, tuned ones take their
    /// new settings. The built-in mounts a standby keeps in memory stay.
    pub(crate) async fn reload_mount_tables(&self) -> Result<()> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        let root_view = StorageView::new(self.barrier.clone(), "");
        let mut entries: Vec<MountEntry> =
            root_view.get_json(MOUNTS_PATH).await?.unwrap_or_default();
        ensure_builtin_mounts(&mut entries);
        entries.extend(
            root_view
                .get_json::<Vec<MountEntry>>(AUTH_PATH)
                .await?
                .unwrap_or_default(),
        );
        let current = u.router.entries();
        let same = |a: &MountEntry, b: &MountEntry| a.path == b.path && a.uuid == b.uuid;
        for old in &current {
            if !entries.iter().any(|e| same(e, old)) {
                u.router.remove(&old.path);
            }
        }
        for entry in entries {
            match current.iter().find(|c| same(c, &entry)) {
                Some(c) if *c == entry => {}
                Some(_) => u.router.replace_entry(entry),
                None => {
                    let mounted = self.instantiate(entry, &u.tokens).await?;
                    u.router.insert(mounted);
                }
            }
        }
        Ok(())
    }

    /// Build the live backend for a mount entry.
    async fn instantiate(&self, entry: MountEntry, tokens: &Arc<TokenStore>) -> Result<Mounted> {
        let prefix = if entry.is_auth() {
            format!("auth/{}/", entry.uuid)
        } else {
            format!("logical/{}/", entry.uuid)
        };
        let storage = StorageView::new(self.barrier.clone(), prefix);
        let backend: Arc<dyn crate::logical::Backend> = match entry.mount_type.as_str() {
            "system" => Arc::new(crate::sys::SystemBackend::new(self.me.clone())),
            "token" => Arc::new(TokenBackend::new(tokens.clone()).with_core(self.me.clone())),
            "kv" => {
                let ttl = match entry.config.default_lease_ttl {
                    0 => self.opts.default_lease_ttl,
                    own => own,
                };
                crate::engines::kv_backend(&entry, ttl)?
            }
            t if crate::auth::METHOD_TYPES.contains(&t) && !entry.is_auth() => {
                return Err(CoreError::bad_request(format!(
                    "plugin not found in the catalog: {t}"
                )));
            }
            "userpass" => Arc::new(crate::auth::userpass::UserpassBackend),
            "jwt" | "oidc" => Arc::new(crate::auth::jwt::JwtBackend::new()),
            "approle" => Arc::new(crate::auth::approle::AppRoleBackend::new(
                match entry.config.max_lease_ttl {
                    0 => self.opts.max_lease_ttl,
                    own => own,
                },
            )),
            "kubernetes" => Arc::new(crate::auth::kubernetes::KubernetesBackend::default()),
            // The token store empties a revoked token's cubbyhole here.
            "cubbyhole" => {
                tokens.set_cubbyhole_view(storage.clone());
                Arc::new(crate::engines::cubbyhole::CubbyholeBackend)
            }
            "identity" => Arc::new(crate::identity::api::IdentityBackend::new(self.me.clone())),
            "transit" => Arc::new(crate::engines::transit::TransitBackend::new()),
            other => {
                return Err(CoreError::bad_request(format!(
                    "plugin not found in the catalog: {other}"
                )));
            }
        };
        backend.initialize(&storage).await?;
        Mounted::new(entry, backend, storage)
    }

    /// Mount a secrets engine (`sys/mounts/:path`) or auth method.
    pub async fn mount(&self, mut entry: MountEntry) -> Result<()> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        if !entry.path.ends_with('/') {
            entry.path.push('/');
        }
        let reserved = if entry.is_auth() {
            entry.path == "auth/" || entry.path.starts_with("auth/token/")
        } else {
            is_reserved_secret_path(&entry.path)
        };
        if reserved {
            return Err(CoreError::bad_request(format!(
                "cannot mount {:?}",
                entry.path
            )));
        }
        if let Some(existing) = u.router.conflicts(&entry.path) {
            return Err(CoreError::bad_request(format!(
                "path is already in use at {existing}"
            )));
        }
        let mounted = self.instantiate(entry.clone(), &u.tokens).await?;
        let table_path = if entry.is_auth() {
            AUTH_PATH
        } else {
            MOUNTS_PATH
        };
        let mut table: Vec<MountEntry> = u
            .router
            .entries()
            .into_iter()
            .filter(|e| e.is_auth() == entry.is_auth())
            .collect();
        table.push(entry);
        StorageView::new(self.barrier.clone(), "")
            .put_json(table_path, &table)
            .await?;
        u.router.insert(mounted);
        Ok(())
    }

    /// Unmount and delete the mount's data.
    pub async fn unmount(&self, path: &str) -> Result<()> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        let path = if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        let Some(m) = u.router.get(&path) else {
            // Vault answers 204 for unmounting a path that is not mounted.
            return Ok(());
        };
        if is_protected(&path) {
            return Err(CoreError::bad_request(format!("cannot unmount {path:?}")));
        }
        let is_auth = m.entry.is_auth();
        let table: Vec<MountEntry> = u
            .router
            .entries()
            .into_iter()
            .filter(|e| e.is_auth() == is_auth && e.path != path)
            .collect();
        let root = StorageView::new(self.barrier.clone(), "");
        root.put_json(if is_auth { AUTH_PATH } else { MOUNTS_PATH }, &table)
            .await?;
        u.router.remove(&path);
        // Delete the data in bounded batches.
        let keys = m.storage.list_recursive("").await?;
        for chunk in keys.chunks(256) {
            let ops = chunk
                .iter()
                .map(|k| crate::storage::BatchOp::Delete { key: k.clone() })
                .collect();
            m.storage.batch(ops).await?;
        }
        Ok(())
    }

    /// Persist a changed mount entry (tune). A KV mount whose version
    /// changes (the v1 → v2 upgrade) or that is KV v1 (whose reads report
    /// the mount's default TTL) gets its backend rebuilt from the new entry;
    /// the v2 backend moves the v1 entries into its layout as it starts,
    /// before the mount serves again.
    pub async fn update_mount(&self, entry: MountEntry) -> Result<()> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        let rebuilt = match u.router.get(&entry.path) {
            Some(old)
                if entry.mount_type == "kv"
                    && (crate::engines::kv_version(&old.entry)? == 1
                        || old.entry.options.get("version") != entry.options.get("version")) =>
            {
                Some(self.instantiate(entry.clone(), &u.tokens).await?)
            }
            _ => None,
        };
        let is_auth = entry.is_auth();
        let mut table: Vec<MountEntry> = u
            .router
            .entries()
            .into_iter()
            .filter(|e| e.is_auth() == is_auth)
            .collect();
        for e in table.iter_mut() {
            if e.path == entry.path {
                *e = entry.clone();
            }
        }
        StorageView::new(self.barrier.clone(), "")
            .put_json(if is_auth { AUTH_PATH } else { MOUNTS_PATH }, &table)
            .await?;
        match rebuilt {
            Some(mounted) => {
                let (backend, storage) = (mounted.backend.clone(), mounted.storage.clone());
                u.router.insert(mounted);
                // Sweep what the old backend wrote while the new one started
                // (for an upgrade: v1 entries written during the move).
                backend.initialize(&storage).await?;
            }
            None => u.router.replace_entry(entry),
        }
        Ok(())
    }

    /// `sys/remount`: move a mount to another path. Its data stays where it
    /// is (storage is keyed by the mount's UUID), so the move is one mount
    /// table write. Built-in mounts cannot move, nothing moves into a
    /// reserved path, and auth methods stay under `auth/`.
    pub async fn remount(&self, from: &str, to: &str) -> Result<()> {
        let u = self.unsealed()?;
        let _g = self.state_lock.lock().await;
        if is_protected(from) {
            return Err(CoreError::bad_request(format!("cannot remount {from:?}")));
        }
        let bad_destination = if from.starts_with("auth/") {
            !to.starts_with("auth/") || to == "auth/" || to.starts_with("auth/token/")
        } else {
            is_reserved_secret_path(to)
        };
        if bad_destination {
            return Err(CoreError::bad_request(format!(
                "cannot remount to destination {to}"
            )));
        }
        let Some(m) = u.router.get(from) else {
            return Err(CoreError::bad_request(format!(
                "no matching mount at {from:?}"
            )));
        };
        if let Some(existing) = u.router.conflicts(to) {
            return Err(CoreError::bad_request(format!(
                "path already in use at {existing:?}"
            )));
        }
        let mut entry = m.entry.clone();
        entry.path = to.to_string();
        let is_auth = entry.is_auth();
        let mut table: Vec<MountEntry> = u
            .router
            .entries()
            .into_iter()
            .filter(|e| e.is_auth() == is_auth && e.path != from)
            .collect();
        table.push(entry.clone());
        StorageView::new(self.barrier.clone(), "")
            .put_json(if is_auth { AUTH_PATH } else { MOUNTS_PATH }, &table)
            .await?;
        let moved = Mounted::new(entry, m.backend.clone(), m.storage.clone())?;
        u.router.remove(from);
        u.router.insert(moved);
        Ok(())
    }

    fn start_workers(&self, u: &Arc<Unsealed>) {
        let tokens = u.tokens.clone();
        let mut stop = u.stop.subscribe();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = tokens.tidy_expired().await {
                            tracing::warn!(error = %e, "token expiry sweep failed");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        });
        let mut handles = vec![handle];
        // Carried request events whose audit pair was not written
        // (crate::storage::carry), put back once due.
        if let Some(raft) = &self.raft {
            let (ledger, audit) = (raft.carried().clone(), u.audit.clone());
            let node = self.node_label();
            let mut stop = u.stop.subscribe();
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = audit::reconcile_carried(&audit, &ledger, &node).await {
                                tracing::error!(error = %e, "audit reconciliation failed");
                            }
                            m::gauge_set(m::AUDIT_CARRIED_PENDING, &[], ledger.pending_entries() as f64);
                        }
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        // Mounts' periodic functions (transit auto-rotation), active node only.
        handles.push(crate::periodic::start(
            self.me.clone(),
            crate::periodic::PERIODIC_EVERY,
            u.stop.subscribe(),
        ));
        handles.extend(self.start_audit_followers(u));
        if let Ok(mut w) = u.workers.lock() {
            w.extend(handles);
        }
    }

    /// The workers that follow the local audit log off the request path:
    /// the `sys/audit-query` index (low priority) and the access-pattern
    /// metrics (normal priority: anomaly alerts must keep up with a flood),
    /// each on its own thread (see [`crate::background`]).
    fn start_audit_followers(&self, u: &Arc<Unsealed>) -> Vec<JoinHandle<()>> {
        use custos_audit::query::{AuditIndex, AuditQueryService, EsOptions, EsQuery};
        let Some((device, log)) = u.audit.local_log() else {
            return Vec::new();
        };
        let mut handles = Vec::new();
        handles.push(spawn_background(
            "custos-access",
            Priority::Normal,
            custos_audit::access::run_access_worker(
                log.clone(),
                custos_audit::access::AccessOptions::from_env(),
                u.stop.subscribe(),
            ),
        ));
        let index = match AuditIndex::open_for(log.log_dir()) {
            Ok(i) => Arc::new(i),
            Err(e) => {
                tracing::error!(error = %e, "audit query index unavailable");
                return handles;
            }
        };
        let es = self
            .opts
            .audit_devices
            .iter()
            .find(|d| d.kind.as_str() == "elasticsearch")
            .and_then(|d| match EsOptions::from_device_options(&d.options).and_then(EsQuery::new) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(device = %d.path, error = %e, "audit query: elasticsearch source unavailable");
                    None
                }
            });
        handles.push(spawn_background(
            "custos-audit-index",
            Priority::Low,
            custos_audit::query::run_indexer(index.clone(), log.clone(), u.stop.subscribe()),
        ));
        let _ = u
            .audit_query
            .set(Arc::new(AuditQueryService::new(device, log, index, es)));
        handles
    }

    async fn teardown(&self, u: Arc<Unsealed>) {
        let _ = u.stop.send(true);
        let handles: Vec<JoinHandle<()>> = u
            .workers
            .lock()
            .map(|mut w| w.drain(..).collect())
            .unwrap_or_default();
        for h in handles {
            let _ = h.await;
        }
        u.audit.shutdown().await;
    }

    /// Stop background work and flush audit; called at server shutdown.
    pub async fn shutdown(&self) {
        if let Some(cluster) = self.cluster.get() {
            cluster.shutdown().await;
        }
        // The snapshot agent first: it finishes or abandons its upload
        // while storage is still open.
        if let Some(agent) = self.snapshot_agent.get() {
            agent.shutdown().await;
        }
        let taken = self.unsealed.write().ok().and_then(|mut s| s.take());
        if let Some(u) = taken {
            self.teardown(u).await;
        }
        self.barrier.seal();
        if let Some(r) = &self.raft {
            r.shutdown().await;
        }
    }

    /// A request to an auth method's unauthenticated path (Vault's
    /// `handleLoginRequest`): no token and no ACL; audited before the
    /// method runs (a login spends secret-id uses and counts failures), the
    /// alias checked against lockout, and a [`crate::logical::LoginAuth`]
    /// answer turned into a token by [`crate::auth::login::issue`]. A
    /// token sent along is ignored, as Vault does.
    async fn handle_login(
        &self,
        u: &Arc<Unsealed>,
        mut req: Request,
        mounted: &Arc<crate::router::Mounted>,
        rel: &str,
    ) -> Result<Response> {
        req.mount_point = mounted.entry.path.clone();
        req.mount_type = mounted.entry.mount_type.clone();
        req.relative_path = rel.to_string();
        let logged = in_span(
            "audit.write",
            &[("custos.audit.events", "request")],
            u.audit.log_request(audit::request_event(&req, None, None)),
        )
        .await;
        if let Err(e) = logged {
            m::counter_inc(m::AUDIT_LOG_REQUEST_FAILURE, &[]);
            return Err(audit_failure(&e, "request"));
        }
        m::counter_inc(m::AUDIT_LOG_REQUEST, &[]);

        let policy = crate::auth::lockout::LockoutPolicy::of(&mounted.entry);
        let alias = mounted.backend.lockout_key(rel, &req.data);
        let mut outcome = "error";
        let result: Result<Response> = async {
            let routed = mounted.resolve(rel, req.operation)?;
            if let Some(a) = &alias
                && u.lockout.is_locked(&mounted.entry, a, policy).await?
            {
                outcome = "locked";
                return Err(CoreError::PermissionDenied);
            }
            let mut resp = match routed.call(&req).await {
                Err(CoreError::InvalidCredentials(msg)) => {
                    outcome = "invalid_credentials";
                    if let Some(a) = &alias {
                        u.lockout.failed(&mounted.entry, a, policy).await?;
                    }
                    return Err(CoreError::InvalidCredentials(msg));
                }
                Err(e) => return Err(e),
                Ok(None) => {
                    return Ok(Response {
                        status: Some(204),
                        ..Default::default()
                    });
                }
                Ok(Some(r)) => r,
            };
            if let Some(login) = resp.login.take() {
                let mut warnings = std::mem::take(&mut resp.warnings);
                let auth =
                    crate::auth::login::issue(self, u, &mounted.entry, &req, *login, &mut warnings)
                        .await?;
                resp.warnings = warnings;
                resp.auth = Some(auth);
                if let Some(a) = &alias {
                    u.lockout.succeeded(&mounted.entry, a);
                }
                outcome = "success";
            }
            Ok(resp)
        }
        .await;
        if result.is_ok() && outcome == "error" {
            outcome = "success";
        }
        m::counter_inc(
            m::AUTH_LOGINS,
            &[
                ("mount_type", mounted.entry.mount_type.clone()),
                ("outcome", outcome.to_string()),
            ],
        );
        // The issued token, known before wrapping hides it, so a login whose
        // response cannot be audited leaves no usable token behind.
        let issued = result
            .as_ref()
            .ok()
            .and_then(|r| r.auth.as_ref())
            .and_then(|a| u.tokens.hash_token(&a.client_token).ok());
        // A login that asked for wrapping (X-Vault-Wrap-TTL) hands out only
        // a wrapping token; the issued token waits in its cubbyhole.
        let result = crate::wrapping::wrap_response(u, &req, result).await;

        let logged = in_span(
            "audit.write",
            &[("custos.audit.events", "response")],
            u.audit
                .log_response(audit::response_event(&req, None, &result)),
        )
        .await;
        if let Err(e) = logged {
            // The token exists but nobody learns it: revoke it (and the
            // wrapping token holding it), so an unaudited login leaves
            // nothing usable behind.
            if let Some(hash) = &issued {
                let _ = u.tokens.revoke_tree(hash).await;
            }
            if let Ok(r) = &result
                && let Some(w) = &r.wrap_info
                && let Ok(hash) = u.tokens.hash_token(w.token.expose())
            {
                let _ = u.tokens.revoke_tree(&hash).await;
            }
            m::counter_inc(m::AUDIT_LOG_RESPONSE_FAILURE, &[]);
            return Err(audit_failure(&e, "response"));
        }
        m::counter_inc(m::AUDIT_LOG_RESPONSE, &[]);
        result
    }

    /// Resolve a token for endpoints that take one as an argument.
    pub async fn lookup_token(&self, token: &str) -> Result<Option<TokenEntry>> {
        self.unsealed()?.tokens.lookup(token).await
    }

    /// Run one authenticated request through the pipeline.
    pub async fn handle(&self, mut req: Request) -> Result<Response> {
        // One OpenTelemetry span per sampled request (crate::traces), with
        // the stages below as its children: mount, operation and status
        // only. The trace id of a sampled request, or the caller's, reaches
        // its audit events (`req.trace_id`).
        let Some(span) = crate::traces::RequestSpan::start(&mut req) else {
            return self.handle_request(req).await;
        };
        let mount = self
            .unsealed()
            .ok()
            .and_then(|u| u.router.route(&req.path).map(|(m, _)| m.entry.path.clone()))
            .unwrap_or_default();
        let (operation, request_id) = (req.operation.as_str(), req.id.clone());
        // Boxed: the pipeline's future is large, and moving it by value
        // through the span's wrappers copied it several times per request.
        let result = span.run(Box::pin(self.handle_request(req))).await;
        let status = match &result {
            Ok(r) => r.status.unwrap_or(200),
            Err(e) => e.status(),
        };
        span.finish(&mount, operation, &request_id, status);
        result
    }

    async fn handle_request(&self, mut req: Request) -> Result<Response> {
        let u = self.unsealed()?;
        // A standby serving a read for an X-Vault-Index (crate::forward):
        // only a route that declares it writes nothing, decided before
        // anything is recorded or changed; the rest goes to the active node.
        if req.standby_read {
            let servable = u.router.route(&req.path).is_some_and(|(mounted, rel)| {
                let login = mounted.entry.is_auth()
                    && crate::auth::is_unauthenticated(
                        mounted.backend.unauthenticated_paths(),
                        &rel,
                    );
                !login
                    && req.wrap_ttl == 0
                    && mounted
                        .resolve(&rel, req.operation)
                        .is_ok_and(|r| r.serves_on_standby(&req))
            });
            if !servable {
                return Err(CoreError::ForwardToActive);
            }
        }
        // `sys/wrapping/lookup|unwrap|rewrap` check the wrapping token first
        // (and lookup is answered there, without a client token).
        if let Some(answered) = crate::wrapping::intercept(&u, &mut req).await {
            return answered;
        }
        // Route first (without failing yet): a login needs no token, and the
        // existence check decides create vs update before the ACL looks at
        // the operation.
        let routed = u.router.route(&req.path);
        if let Some((mounted, rel)) = &routed
            && mounted.entry.is_auth()
            && crate::auth::is_unauthenticated(mounted.backend.unauthenticated_paths(), rel)
        {
            return self.handle_login(&u, req, mounted, rel).await;
        }
        if let Some((mounted, rel)) = &routed {
            req.mount_point = mounted.entry.path.clone();
            req.mount_type = mounted.entry.mount_type.clone();
            req.relative_path = rel.clone();
        }
        let token = match &req.client_token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => return refuse_before_audit(&u, &req, None, permission_denied()).await,
        };
        let looked_up = in_span("token.lookup", &[], u.tokens.lookup(token.expose())).await;
        #[cfg(debug_assertions)]
        let looked_up =
            looked_up.and_then(|e| match failpoint_hit("token-lookup-error", &req.path) {
                true => Err(CoreError::internal("failpoint: token lookup")),
                false => Ok(e),
            });
        let entry = match looked_up {
            Ok(entry) => entry,
            Err(e) => return refuse_before_audit(&u, &req, None, e).await,
        };
        // On a standby serving a read: a token unknown here (or expired) is
        // the active node's to refuse (and revoke), and a use-limited one's
        // uses are counted there.
        if req.standby_read && entry.as_ref().is_none_or(|e| e.num_uses != 0) {
            return Err(CoreError::ForwardToActive);
        }
        let Some(entry) = entry else {
            return refuse_before_audit(&u, &req, None, permission_denied()).await;
        };
        if !crate::auth::cidrs_admit(&entry.bound_cidrs, req.remote_addr.map(|a| a.ip())) {
            return refuse_before_audit(&u, &req, None, permission_denied()).await;
        }
        let entry = Arc::new(entry);
        req.auth = Some(entry.clone());
        let resolved = routed
            .as_ref()
            .map(|(mounted, rel)| mounted.resolve(rel, req.operation));
        if req.operation == Operation::Update
            && let Some(Ok(r)) = &resolved
            && r.spec.existence_check
        {
            match in_span("engine.exists", &[], r.exists(&req)).await {
                Ok(true) => {}
                Ok(false) => req.operation = Operation::Create,
                Err(e) => return refuse_before_audit(&u, &req, Some(&entry), e).await,
            }
        }

        let decision = in_span("acl", &[], async {
            let acl = crate::identity::token_acl(&u, &entry).await?;
            Ok::<_, CoreError>(acl.check_request_wrapped(
                &req.path,
                req.operation,
                &req.data,
                req.wrap_ttl,
            ))
        })
        .await;
        let decision = match decision {
            Ok(d) => d,
            Err(e) => return refuse_before_audit(&u, &req, Some(&entry), e).await,
        };
        let sudo_needed = requires_sudo(&req.path, req.operation);
        req.has_sudo = decision.sudo;
        let denied = if crate::sys::acl_exempt(&req.path) {
            false
        } else {
            !decision.allowed || (sudo_needed && !decision.sudo)
        };

        let mut request_event =
            audit::request_event(&req, Some(&entry), denied.then_some("permission denied"));
        // A read (or a denied request, or a POST the backend declares pure,
        // such as a token lookup or a decryption) changes nothing, so its
        // request event may share one sync with its response event: the
        // response is held back until both are durable, and replaced by an
        // error if they are not. Anything that changes state (including
        // spending a token use) is audited before it happens.
        let changes_nothing = denied
            || matches!(req.operation, Operation::Read | Operation::List)
            || matches!(&resolved, Some(Ok(r)) if r.is_pure(&req));
        // Wrapping a response creates a token: not a request that changes
        // nothing.
        let pipelined = changes_nothing && entry.num_uses == 0 && req.wrap_ttl == 0;
        // A write that only writes its mount's storage, on a one-voter Raft
        // node: its request event travels in its Raft entry (synced before
        // the write applies) and reaches the audit log with the response
        // event, one sync for both (crate::storage::carry). Only while the
        // audit devices can record: a write refused for audit must change
        // nothing, so it takes the usual path and is refused before it runs.
        let may_carry = !pipelined
            && entry.num_uses == 0
            && req.wrap_ttl == 0
            && !req.fan_out
            && matches!(&resolved, Some(Ok(r)) if r.writes_only_storage(&req))
            && self.raft.as_ref().is_some_and(|r| r.carried().enabled())
            && u.audit.health().is_ok();
        let carried = if may_carry {
            u.audit.encode_for_devices(&mut request_event)
        } else {
            None
        };
        // Logged with the response below, in one sync.
        let mut pending_request = None;
        if pipelined || carried.is_some() {
            pending_request = Some(request_event);
        } else {
            let logged = in_span(
                "audit.write",
                &[("custos.audit.events", "request")],
                u.audit.log_request(request_event),
            )
            .await;
            if let Err(e) = logged {
                m::counter_inc(m::AUDIT_LOG_REQUEST_FAILURE, &[]);
                return Err(audit_failure(&e, "request"));
            }
            m::counter_inc(m::AUDIT_LOG_REQUEST, &[]);
        }

        // The Raft entry that carried the request event, once committed.
        let mut carried_index = None;
        let result: Result<Option<Response>> = if denied {
            Err(permission_denied())
        } else {
            match resolved {
                None => Err(CoreError::NotFound(format!(
                    "no handler for route {:?}. route entry not found.",
                    req.path
                ))),
                Some(Err(e)) => Err(e),
                Some(Ok(r)) => {
                    // A peer's fan-out question (crate::audit_nodes): the
                    // caller's request spent its use on the node answering it.
                    let used = if req.fan_out {
                        Some(TokenEntry::clone(&entry))
                    } else {
                        u.tokens.use_token(&entry).await?
                    };
                    match used {
                        None => Err(permission_denied()),
                        Some(updated) => {
                            req.auth = Some(Arc::new(updated));
                            let mount_type = [("custos.mount_type", req.mount_type.as_str())];
                            let call = in_span("engine", &mount_type, r.call(&req));
                            match &carried {
                                Some(events) => {
                                    let offered = CarriedAudit {
                                        request_id: req.id.clone(),
                                        events: events.iter().map(CarriedEvent::deflate).collect(),
                                    };
                                    let (result, index) = carry::carrying(offered, call).await;
                                    carried_index = index;
                                    result
                                }
                                None => call.await,
                            }
                        }
                    }
                }
            }
        };

        let result = match result {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => match req.operation {
                Operation::Read | Operation::List => Err(CoreError::NotFound(String::new())),
                _ => Ok(Response {
                    status: Some(204),
                    ..Default::default()
                }),
            },
            Err(e) => Err(e),
        };
        // Wrapped before it is audited: the log shows wrap_info, not the secret.
        let result = crate::wrapping::wrap_response(&u, &req, result).await;

        let response_event = audit::response_event(&req, Some(&entry), &result);
        let logged = match (pending_request, &carried) {
            (Some(request_event), None) => {
                let events = [("custos.audit.events", "request+response")];
                let pair = u.audit.log_pair(request_event, response_event);
                in_span("audit.write", &events, pair).await
            }
            (Some(request_event), Some(encoded)) => {
                #[cfg(debug_assertions)]
                if carried_index.is_some() {
                    failpoint("after-raft-append", &req.path);
                }
                let events = [("custos.audit.events", "request+response")];
                let pair = u
                    .audit
                    .log_encoded_pair(&request_event, encoded, response_event);
                let logged = in_span("audit.write", &events, pair).await;
                // Written: its Raft entry need not be kept for it. Not
                // written: the entry stays pending and its event is put
                // back by the reconciliation worker.
                if logged.is_ok()
                    && let (Some(index), Some(raft)) = (carried_index, &self.raft)
                {
                    raft.carried().audited(index, &req.id);
                }
                logged
            }
            (None, _) => {
                let events = [("custos.audit.events", "response")];
                let response = u.audit.log_response(response_event);
                in_span("audit.write", &events, response).await
            }
        };
        if let Err(e) = logged {
            m::counter_inc(m::AUDIT_LOG_RESPONSE_FAILURE, &[]);
            return Err(audit_failure(&e, "response"));
        }
        if pipelined || carried.is_some() {
            m::counter_inc(m::AUDIT_LOG_REQUEST, &[]);
        }
        if carried_index.is_some() {
            m::counter_inc(m::AUDIT_CARRIED, &[]);
        }
        m::counter_inc(m::AUDIT_LOG_RESPONSE, &[]);
        result
    }
}

/// A request that ends before its request event is written: refused for
/// its token (none given, unknown or expired, or used outside its bound
/// CIDRs; `entry` is `None`), or failed by the token lookup, the existence
/// check or the ACL. It is audited as OpenBao audits it — a request and a
/// response event, both with the error, in one sync (nothing changed); a
/// token that did not resolve leaves no `auth` block and is HMAC'd as
/// presented — so probing with bad tokens shows in the audit log and its
/// access patterns. Fail closed as every request: if no device records it,
/// the caller gets the audit error instead.
async fn refuse_before_audit(
    u: &Unsealed,
    req: &Request,
    entry: Option<&TokenEntry>,
    error: CoreError,
) -> Result<Response> {
    let result = Err(error);
    let (request_event, response_event) = audit::refused_events(req, entry, &result);
    let events = [("custos.audit.events", "request+response")];
    let pair = u.audit.log_pair(request_event, response_event);
    if let Err(e) = in_span("audit.write", &events, pair).await {
        m::counter_inc(m::AUDIT_LOG_RESPONSE_FAILURE, &[]);
        return Err(audit_failure(&e, "response"));
    }
    m::counter_inc(m::AUDIT_LOG_REQUEST, &[]);
    m::counter_inc(m::AUDIT_LOG_RESPONSE, &[]);
    result
}

/// Test builds only: abort the process at the named point when
/// `CUSTOS_FAILPOINT` is `name` or `name@path` for this request's path
/// (the crash tests' way to stop exactly between two steps).
#[cfg(debug_assertions)]
fn failpoint(name: &str, path: &str) {
    if failpoint_hit(name, path) {
        tracing::error!(failpoint = name, "failpoint: aborting");
        std::process::abort();
    }
}

/// Test builds only: is `CUSTOS_FAILPOINT` `name` or `name@path` for this
/// request's path? (A step that fails instead of aborting, such as
/// `token-lookup-error`.)
#[cfg(debug_assertions)]
fn failpoint_hit(name: &str, path: &str) -> bool {
    std::env::var("CUSTOS_FAILPOINT").is_ok_and(|v| {
        let (point, at) = v.split_once('@').unwrap_or((v.as_str(), ""));
        point == name && (at.is_empty() || at == path)
    })
}
