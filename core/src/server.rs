//! Server start-up and shutdown: from a [`ServerConfig`] (or `--dev`) to
//! open storage, a [`Core`], and listening sockets; then, when the shutdown
//! future resolves (SIGINT/SIGTERM in the binary), stop accepting, let
//! in-flight requests finish, flush audit and close Raft.
//!
//! Listeners are plain TCP or TLS (rustls with the ring provider). TLS
//! handshakes run in their own tasks so a slow client never blocks accepts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ListenerConfig, ServerConfig};
use crate::core::{Core, CoreOptions};
use crate::http::{ClientAddr, DEFAULT_MAX_REQUEST_SIZE, HttpState};
use crate::router::MountEntry;
use crate::storage::raft::RaftStorage;

/// Options of `custos server --dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// `--dev-root-token-id`; random when `None`.
    pub root_token_id: Option<String>,
    /// `--dev-listen-address`, default 127.0.0.1:8200.
    pub listen: SocketAddr,
    /// Where to keep Raft and audit files; a fresh temp dir when `None`.
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Startup(String),
}

fn startup(e: impl std::fmt::Display) -> ServerError {
    ServerError::Startup(e.to_string())
}

/// A started server: its core and the addresses it listens on.
pub struct RunningServer {
    pub core: Arc<Core>,
    pub addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// This server installed the trace exporter (and stops it).
    traces: bool,
}

impl RunningServer {
    /// Stop accepting, wait (bounded) for in-flight requests, then close the
    /// core: audit flushed, Raft shut down.
    pub async fn shutdown(self) {
        // A cluster's leader hands leadership over while it still serves
        // (requests arriving meanwhile are forwarded to the new leader).
        if let Some(cluster) = self.core.cluster() {
            cluster.hand_over().await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.core.shutdown().await;
        if self.traces {
            crate::traces::shutdown().await;
        }
    }
}

fn core_options(cfg: &ServerConfig) -> CoreOptions {
    let first = cfg.listeners.first();
    let api_addr = cfg.api_addr.clone().unwrap_or_else(|| match first {
        Some(l) => format!(
            "{}://{}",
            if l.tls_disable { "http" } else { "https" },
            l.address
        ),
        None => String::new(),
    });
    let defaults = CoreOptions::default();
    CoreOptions {
        node_name: cfg.storage.node_id.clone(),
        api_addr,
        cluster_addr: cfg.cluster_addr.clone().unwrap_or_default(),
        cluster_name: cfg.cluster_name.clone().unwrap_or(defaults.cluster_name),
        audit_devices: cfg.audit.clone(),
        default_lease_ttl: cfg.default_lease_ttl.unwrap_or(defaults.default_lease_ttl),
        max_lease_ttl: cfg.max_lease_ttl.unwrap_or(defaults.max_lease_ttl),
    }
}

/// Open storage and build the core (sealed or uninitialized), without
/// listening yet.
pub async fn open_core(cfg: &ServerConfig) -> Result<Arc<Core>, ServerError> {
    crate::metrics::install();
    crate::metrics::set_prefix(&cfg.telemetry.metrics_prefix);
    crate::storage::raft::set_snapshot_tuning(cfg.storage.snapshot);
    let opts = core_options(cfg);
    std::fs::create_dir_all(&cfg.storage.path).map_err(|e| {
        startup(format!(
            "storage \"raft\": cannot create {}: {e}",
            cfg.storage.path.display()
        ))
    })?;
    let mut opts = opts;
    let cluster = match cfg.cluster_addresses().filter(|_| cfg.is_clustered()) {
        Some((_, advertised)) => {
            opts.cluster_addr = advertised.clone();
            Some(crate::cluster::ClusterOptions {
                node_name: cfg.storage.node_id.clone(),
                api_addr: opts.api_addr.clone(),
                cluster_addr: advertised,
                retry_join: cfg
                    .storage
                    .retry_join
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let tls = r.leader_tls().map_err(|(key, m)| {
                            ServerError::Config(format!(
                                "storage \"raft\".retry_join[{i}].{key}: {m}"
                            ))
                        })?;
                        Ok(crate::cluster::JoinTarget {
                            addr: r.leader_api_addr.clone(),
                            tls,
                        })
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?,
            })
        }
        None => None,
    };
    let opened = match &cluster {
        // A node with retry_join waits to be added; any other starts its own.
        Some(c) => {
            let node = crate::storage::raft::CustosNode {
                addr: c.api_addr.clone(),
                cluster_addr: c.cluster_addr.clone(),
                name: c.node_name.clone(),
            };
            let bootstrap = c.retry_join.is_empty();
            RaftStorage::open_with(&cfg.storage.path, cfg.raft_node_id_u64(), node, bootstrap).await
        }
        None => {
            RaftStorage::open(
                &cfg.storage.path,
                cfg.raft_node_id_u64(),
                opts.api_addr.clone(),
            )
            .await
        }
    };
    let raft = opened.map_err(|e| {
        startup(format!(
            "storage \"raft\" at {}: {e}",
            cfg.storage.path.display()
        ))
    })?;
    let physical: Arc<dyn crate::storage::PhysicalStore> = raft.clone();
    let core = Core::new(opts, physical, Some(raft));
    if let Some(c) = cluster {
        crate::cluster::Cluster::register(&core, c).map_err(startup)?;
    }
    // Seal stanzas: the auto seal, and a seal migration the stored seal
    // implies (crate::autoseal); unseals itself once serving (see `serve`).
    crate::autoseal::configure(&core, &cfg.seals)
        .await
        .map_err(|e| startup(format!("seal: {e}")))?;
    let initialized = core.is_initialized().await.map_err(startup)?;
    crate::metrics::gauge_set(
        crate::metrics::CORE_INITIALIZED,
        &[],
        if initialized { 1.0 } else { 0.0 },
    );
    core.publish_seal_metrics();
    Ok(core)
}

/// Bind every listener of `cfg` in front of `core`. Returns once the server
/// is accepting connections.
pub async fn serve(cfg: &ServerConfig, core: Arc<Core>) -> Result<RunningServer, ServerError> {
    let metrics = crate::metrics::install();
    crate::metrics::set_prefix(&cfg.telemetry.metrics_prefix);
    // Request traces: `telemetry { otlp_endpoint }` or the OTEL_* variables.
    let traces = crate::traces::install(cfg.telemetry.otlp_endpoint.as_deref())
        .map_err(|e| startup(format!("telemetry: {e}")))?;
    let (stop, _) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    // Auto-unseal in the background: the listeners answer seal-status,
    // health and metrics while the seal is being reached (or retried).
    tasks.push(tokio::spawn(crate::autoseal::run(
        core.clone(),
        stop.subscribe(),
    )));
    for l in &cfg.listeners {
        let (addr, task) =
            bind_listener(l, core.clone(), metrics.clone(), stop.subscribe()).await?;
        addrs.push(addr);
        tasks.push(task);
    }
    if let (Some(cluster), Some(raft), Some((bind, _))) =
        (core.cluster(), core.raft(), cfg.cluster_addresses())
    {
        tasks.push(bind_cluster_listener(&bind, raft, stop.subscribe()).await?);
        cluster.start().await.map_err(startup)?;
    }
    Ok(RunningServer {
        core,
        addrs,
        stop,
        tasks,
        traces,
    })
}

/// Open storage, build the core and bind every listener.
pub async fn start(cfg: &ServerConfig) -> Result<RunningServer, ServerError> {
    start_with(cfg, &CoreHooks::default()).await
}

/// What the `custos` binary adds to a core it starts, before it listens:
/// parts that live in crates core does not depend on (the automated
/// snapshot agent of `custos-dr`).
#[derive(Clone, Default)]
pub struct CoreHooks {
    /// Called once with the opened core, before the listeners bind.
    pub on_open: Option<CoreOpened>,
}

/// A [`CoreHooks::on_open`] callback.
pub type CoreOpened = Arc<dyn Fn(&Arc<Core>) + Send + Sync>;

impl CoreHooks {
    fn opened(&self, core: &Arc<Core>) {
        if let Some(f) = &self.on_open {
            f(core);
        }
    }
}

/// [`start`], with the binary's hooks.
pub async fn start_with(
    cfg: &ServerConfig,
    hooks: &CoreHooks,
) -> Result<RunningServer, ServerError> {
    let core = open_core(cfg).await?;
    hooks.opened(&core);
    serve(cfg, core).await
}

/// The cluster listener: Raft RPCs from the other nodes
/// (`storage::raft::network`), mutual TLS with the cluster's certificates
/// (`storage::raft::tls`; connections are refused while the node is sealed).
async fn bind_cluster_listener(
    bind: &str,
    raft: &RaftStorage,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let tcp = TcpListener::bind(bind)
        .await
        .map_err(|e| startup(format!("cluster_addr: cannot bind {bind}: {e}")))?;
    let addr = tcp.local_addr().map_err(startup)?;
    let app = crate::storage::raft::network::cluster_router(raft.raft().clone());
    let listener = crate::storage::raft::tls::cluster_listener(tcp, raft.cluster_tls().clone());
    tracing::info!(%addr, "cluster listener (Raft RPCs, mutual TLS)");
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "cluster listener failed");
        }
    }))
}

async fn bind_listener(
    l: &ListenerConfig,
    core: Arc<Core>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let max_request_size = match l.max_request_size {
        None => DEFAULT_MAX_REQUEST_SIZE,
        Some(n) if n < 0 => 0,
        Some(0) => DEFAULT_MAX_REQUEST_SIZE,
        Some(n) => n as usize,
    };
    let state = HttpState {
        core,
        max_request_size,
        unauthenticated_metrics: l.telemetry.unauthenticated_metrics_access,
        metrics,
        unauthed_ceremonies: crate::ceremony::Unauthed {
            generate_root: l.unauthed_generate_root,
            rekey: l.unauthed_rekey,
        },
    };
    let app = crate::http::router(state);
    let tcp = TcpListener::bind(&l.address)
        .await
        .map_err(|e| startup(format!("listener \"tcp\": cannot bind {}: {e}", l.address)))?;
    let addr = tcp.local_addr().map_err(startup)?;
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let task = if l.tls_disable {
        let app = app.into_make_service_with_connect_info::<ClientAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "listener failed");
            }
        })
    } else {
        let acceptor = tls_acceptor(l)?;
        let listener = TlsListener::new(tcp, acceptor);
        let app = app.into_make_service_with_connect_info::<ClientAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "TLS listener failed");
            }
        })
    };
    tracing::info!(%addr, tls = !l.tls_disable, "listening");
    Ok((addr, task))
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

fn tls_acceptor(l: &ListenerConfig) -> Result<TlsAcceptor, ServerError> {
    let (Some(cert_path), Some(key_path)) = (&l.tls_cert_file, &l.tls_key_file) else {
        return Err(ServerError::Config(
            "listener \"tcp\": tls_cert_file and tls_key_file are required unless tls_disable = true".into(),
        ));
    };
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(startup)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| startup(format!("listener \"tcp\": tls_cert_file/tls_key_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ServerError> {
    let pem = std::fs::read(path)
        .map_err(|e| startup(format!("tls_cert_file {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| startup(format!("tls_cert_file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(startup(format!(
            "tls_cert_file {}: no certificates found",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ServerError> {
    let pem = std::fs::read(path)
        .map_err(|e| startup(format!("tls_key_file {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| startup(format!("tls_key_file {}: {e}", path.display())))?
        .ok_or_else(|| {
            startup(format!(
                "tls_key_file {}: no private key found",
                path.display()
            ))
        })
}

/// A TLS listener for `axum::serve`: a background task accepts TCP and
/// spawns one handshake task per connection; finished streams arrive here.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        TlsListener::from_parts(rx, local, task)
    }

    /// A listener over the streams `task` sends to `rx` (the cluster port's
    /// handshakes too, `crate::storage::raft::tls`); `task` ends with it.
    pub(crate) fn from_parts(
        rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        TlsListener {
            rx,
            local,
            _acceptor_task: task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(x) = self.rx.recv().await {
                return x;
            }
            // The acceptor task ended; nothing more will come.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Run the server described by `config` (read from `config_file`, named in
/// errors) until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    config_file: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    hooks: &CoreHooks,
) -> Result<(), ServerError> {
    config
        .validate(config_file)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let server = start_with(&config, hooks).await?;
    let sealed_note = if crate::autoseal::active(&server.core).is_some()
        && crate::autoseal::migration(&server.core).is_none()
        && server.core.is_initialized().await.unwrap_or(false)
    {
        "unsealing itself through its auto seal"
    } else if crate::autoseal::migration(&server.core).is_some() {
        "seal migration pending; unseal with `custos operator unseal -migrate`"
    } else if server.core.is_initialized().await.unwrap_or(false) {
        "sealed; unseal with `custos operator unseal`"
    } else {
        "not initialized; run `custos operator init`"
    };
    println!("==> Custos server started ({sealed_note})");
    for a in &server.addrs {
        println!("    Listener: {a}");
    }
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Run a dev server: initialized, unsealed, kv-v2 at `secret/`, file audit.
/// Prints the unseal key and root token to stdout.
pub async fn run_dev(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    hooks: &CoreHooks,
) -> Result<(), ServerError> {
    let (server, dev) = start_dev_with(&opts, hooks).await?;
    let addr = server.addrs.first().copied().unwrap_or(opts.listen);
    println!(
        "==> Custos server configuration:\n\n\
         \x20            Api Address: http://{addr}\n\
         \x20                Storage: raft (redb) at {}\n\
         \x20                  Audit: file at {}\n\
         \x20                Version: Custos v{}\n\n\
         WARNING! dev mode is enabled! In this mode, Custos runs initialized and unsealed,\n\
         with a single unseal key printed below. Do not run dev mode in production.\n\n\
         You may need to set the following environment variables:\n\n\
         \x20   $ export VAULT_ADDR='http://{addr}'\n\n\
         The unseal key and root token are displayed below in case you want to\n\
         seal/unseal the server or re-authenticate.\n\n\
         Unseal Key: {}\n\
         Root Token: {}\n\n\
         ==> Custos server started! Log data will stream in below:\n",
        dev.data_dir.join("raft").display(),
        // The live log (the active segment), for `tail -F`.
        dev.data_dir.join("audit").join("audit.log").display(),
        crate::sys::VERSION,
        dev.unseal_key,
        dev.root_token,
    );
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    drop(dev);
    Ok(())
}

/// What dev mode hands back: keys for the banner and the temp dir guard.
pub struct DevHandle {
    pub unseal_key: String,
    pub root_token: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Start a dev server and return it with its keys (used by `run_dev` and by
/// tests that want a ready server on port 0).
pub async fn start_dev(opts: &DevOptions) -> Result<(RunningServer, DevHandle), ServerError> {
    start_dev_with(opts, &CoreHooks::default()).await
}

/// Automated snapshots a dev server takes when the binary runs an agent:
/// its name, and where they go (inside the dev data directory).
pub const DEV_SNAPSHOT_CONFIG: &str = "dev-local";
const DEV_SNAPSHOT_DIR: &str = "snapshots";

/// [`start_dev`], with the binary's hooks. With a snapshot agent, the dev
/// server gets an automated snapshot configuration [`DEV_SNAPSHOT_CONFIG`]:
/// every 6 hours to `<data dir>/snapshots`, keeping 4.
pub async fn start_dev_with(
    opts: &DevOptions,
    hooks: &CoreHooks,
) -> Result<(RunningServer, DevHandle), ServerError> {
    let (tmp, data_dir) = match &opts.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("custos-dev-")
                .tempdir()
                .map_err(startup)?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let cfg = ServerConfig::dev(opts.listen, &data_dir);
    // Initialize, unseal and mount before listening, so the first request a
    // client makes already sees the dev server complete.
    let core = open_core(&cfg).await?;
    hooks.opened(&core);
    if core.is_initialized().await.map_err(startup)? {
        return Err(startup(format!(
            "dev data dir {} is already initialized: dev mode needs a fresh directory (use `server --config` to reuse data)",
            data_dir.display()
        )));
    }
    let (keys, init_root) = core.initialize(1, 1).await.map_err(startup)?;
    let key = keys
        .into_iter()
        .next()
        .ok_or_else(|| startup("init returned no key"))?;
    core.submit_unseal_share(&key).await.map_err(startup)?;
    let u = core.unsealed().map_err(startup)?;
    let root_token = match &opts.root_token_id {
        Some(id) => {
            let (t, _) = u
                .tokens
                .create_root_token(Some(id))
                .await
                .map_err(startup)?;
            if let Some(e) = u.tokens.lookup(&init_root).await.map_err(startup)? {
                u.tokens.revoke_tree(&e.id_hash).await.map_err(startup)?;
            }
            t
        }
        None => init_root,
    };
    let mut secret = MountEntry::new("secret/", "kv", "key/value secret storage");
    secret.options.insert("version".into(), "2".into());
    core.mount(secret).await.map_err(startup)?;
    if core.snapshot_agent().is_some() {
        let dir = data_dir.join(DEV_SNAPSHOT_DIR);
        let config = serde_json::json!({
            "storage_type": "local",
            "path_prefix": dir.display().to_string(),
            "interval": 6 * 3600,
            "retain": 4,
            "local_max_space": 0,
        });
        if let serde_json::Value::Object(m) = config {
            crate::snapshot_auto::write(&core, DEV_SNAPSHOT_CONFIG, &m)
                .await
                .map_err(startup)?;
        }
    }
    let server = serve(&cfg, core).await?;
    use base64::Engine;
    let unseal_key = base64::engine::general_purpose::STANDARD.encode(key.as_slice());
    Ok((
        server,
        DevHandle {
            unseal_key,
            root_token,
            data_dir,
            _tmp: tmp,
        },
    ))
}
