//! Mutual TLS of the cluster port: the certificates every node of a cluster
//! shares, the rustls configurations made from them, and the listener that
//! serves Raft RPCs with them.
//!
//! **Where the certificates come from.** [`ClusterTlsMaterial::generate`]
//! makes a cluster CA (ECDSA P-256) and one node certificate it signs (for
//! both server and client authentication, DNS name [`CLUSTER_SERVER_NAME`]);
//! the CA's key is thrown away at once. `crate::cluster_tls` stores the CA
//! certificate and the node key pair in the barrier at `sys/init`, so it
//! replicates through Raft, loads it into this node's [`ClusterTls`] when
//! the node unseals and forgets it when the node seals; a joining node gets
//! it encrypted under its root key with the join challenge. This is Vault's
//! shape (one key pair shared by all nodes, kept in the barrier at
//! `core/raft/tls`), with a CA beside the node certificate because webpki
//! refuses a CA certificate as an end entity.
//!
//! **Server side** ([`cluster_listener`]): every accepted connection is
//! handed to rustls with the configuration loaded now. A client must present
//! a certificate chained to the cluster CA. While nothing is loaded (the
//! node is sealed, or has not joined yet) connections are closed at once:
//! a sealed node takes no part in Raft, as in Vault, whose sealed nodes
//! tear their cluster listener down. Refused and failed handshakes count in
//! `custos_cluster_tls_handshake_failures_total` (`sealed`, `handshake`).
//!
//! **Client side** ([`ClusterTls::client_config`]): the peer is verified
//! against the cluster CA only (not the web PKI) and under the fixed name
//! [`CLUSTER_SERVER_NAME`] whatever address it was reached at (a proxy, a
//! NAT, an IP), and this node presents the same node certificate.
//! [`FixedNameVerifier`] also serves `retry_join { leader_tls_servername }`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::error::{CoreError, Result};
use crate::logical::Secret;
use crate::metrics;

/// The name every node's certificate carries and every peer checks.
pub const CLUSTER_SERVER_NAME: &str = "custos-cluster";
/// How long a TLS handshake on the cluster port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster CA certificate and the node key pair, as PEM. `Debug`
/// redacts the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTlsMaterial {
    pub ca_cert: String,
    pub cert: String,
    pub key: Secret,
}

impl std::fmt::Debug for ClusterTlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTlsMaterial")
            .field("ca_cert", &"<pem>")
            .field("cert", &"<pem>")
            .field("key", &self.key)
            .finish()
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::internal(format!("cluster TLS: {what}: {e}"))
}

impl ClusterTlsMaterial {
    /// A new cluster CA and a node certificate signed by it.
    pub fn generate() -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
        };
        let now = time::OffsetDateTime::now_utc();
        let ca_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| tls_err("CA key", e))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA", e))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "Custos cluster CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - time::Duration::minutes(5);
        // As Vault's raft TLS key: 30 years.
        ca.not_after = now + time::Duration::days(30 * 365);
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| tls_err("CA", e))?;
        let issuer = Issuer::new(ca, &ca_key);

        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| tls_err("node key", e))?;
        let mut node = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_string()])
            .map_err(|e| tls_err("node certificate", e))?;
        node.distinguished_name
            .push(DnType::CommonName, CLUSTER_SERVER_NAME);
        node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        node.not_before = now - time::Duration::minutes(5);
        node.not_after = now + time::Duration::days(30 * 365);
        let cert = node
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err("node certificate", e))?;
        Ok(ClusterTlsMaterial {
            ca_cert: ca_cert.pem(),
            cert: cert.pem(),
            key: Secret::new(key.serialize_pem()),
        })
    }

    /// As stored in the barrier (and sent, encrypted, to a joining node).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ca_cert": self.ca_cert,
            "cert": self.cert,
            "key": self.key.expose(),
        })
    }

    /// The inverse of [`Self::to_json`].
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| tls_err("stored material", format!("no {k}")))
        };
        Ok(ClusterTlsMaterial {
            ca_cert: field("ca_cert")?,
            cert: field("cert")?,
            key: Secret::new(field("key")?),
        })
    }

    fn configs(&self) -> Result<Loaded> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = parse_certs(self.ca_cert.as_bytes()).map_err(|e| tls_err("CA certificate", e))?;
        let chain =
            parse_certs(self.cert.as_bytes()).map_err(|e| tls_err("node certificate", e))?;
        let key = parse_key(self.key.expose().as_bytes()).map_err(|e| tls_err("node key", e))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| tls_err("CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_err("client verifier", e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("server", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_err("server", e))?;
        let verifier = FixedNameVerifier::new(roots, CLUSTER_SERVER_NAME, provider.clone())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("client", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err("client", e))?;
        Ok(Loaded {
            cert: self.cert.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// PEM certificates; an error when there are none.
pub fn parse_certs(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// A PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn parse_key(pem: &[u8]) -> std::result::Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("not PEM: {e}"))?
        .ok_or_else(|| "no PEM private key found".to_string())
}

/// A verifier that checks a server's certificate against `roots` under a
/// fixed name, whatever name or address the connection was made to.
#[derive(Debug)]
pub struct FixedNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl FixedNameVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        name: &str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| tls_err("server verifier", e))?;
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            CoreError::bad_request(format!("invalid TLS server name {name:?}: {e}"))
        })?;
        Ok(FixedNameVerifier { inner, name })
    }
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls configurations of the loaded material.
struct Loaded {
    /// The node certificate they were made from (to skip a reload of the same).
    cert: String,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// This node's cluster TLS: loaded while the node is unsealed (or joining),
/// empty otherwise. Shared by the cluster listener and the Raft clients.
#[derive(Default)]
pub struct ClusterTls {
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Bumped at every change, so clients built from older material are
    /// rebuilt.
    generation: AtomicU64,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ClusterTls {
    /// Load `m`. Returns whether anything changed.
    pub fn install(&self, m: &ClusterTlsMaterial) -> Result<bool> {
        if self.current().is_some_and(|l| l.cert == m.cert) {
            return Ok(false);
        }
        let loaded = Arc::new(m.configs()?);
        if let Ok(mut slot) = self.loaded.write() {
            *slot = Some(loaded);
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(true)
    }

    /// Drop the material (the node sealed).
    pub fn forget(&self) {
        if let Ok(mut slot) = self.loaded.write()
            && slot.take().is_some()
        {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded.read().ok().and_then(|l| l.clone())
    }

    /// The generation of what is loaded now (see [`Self::client_config`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The client configuration for Raft RPCs, with its generation; `None`
    /// while nothing is loaded.
    pub fn client_config(&self) -> Option<(u64, Arc<rustls::ClientConfig>)> {
        let gen_before = self.generation();
        self.current().map(|l| (gen_before, l.client.clone()))
    }

    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current().map(|l| l.server.clone())
    }
}

/// A reqwest client for Raft RPCs over `tls`, or why there is none.
pub fn peer_http_client(
    tls: &rustls::ClientConfig,
    connect_timeout: Duration,
) -> std::result::Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

/// `http://host:port` or `https://host:port` → `https://host:port`: the
/// cluster port always speaks TLS, whatever scheme `cluster_addr` was
/// written with.
pub fn https_base(cluster_addr: &str) -> String {
    let rest = cluster_addr
        .strip_prefix("https://")
        .or_else(|| cluster_addr.strip_prefix("http://"))
        .unwrap_or(cluster_addr);
    format!("https://{}", rest.trim_end_matches('/'))
}

fn count_failure(reason: &'static str) {
    metrics::counter_inc(
        metrics::CLUSTER_TLS_HANDSHAKE_FAILURES,
        &[("reason", reason.to_string())],
    );
}

/// The cluster listener for `axum::serve`: TCP accepted here, one task per
/// handshake with the configuration loaded at that moment (see the module
/// docs); finished streams arrive through the listener's channel, as on the
/// API listener ([`crate::server::TlsListener`]).
pub fn cluster_listener(tcp: TcpListener, tls: Arc<ClusterTls>) -> crate::server::TlsListener {
    let local = tcp
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let Some(config) = tls.server_config() else {
                // Sealed (or not joined yet): no TLS to serve.
                count_failure("sealed");
                tracing::debug!(%peer, "cluster connection refused: no cluster TLS loaded (sealed)");
                drop(stream);
                continue;
            };
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = TlsAcceptor::from(config);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        count_failure("handshake");
                        tracing::debug!(%peer, error = %e, "cluster TLS handshake failed");
                    }
                    Err(_) => {
                        count_failure("handshake");
                        tracing::debug!(%peer, "cluster TLS handshake timed out");
                    }
                }
            });
        }
    });
    crate::server::TlsListener::from_parts(rx, local, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_round_trips_and_hides_its_key() {
        let m = ClusterTlsMaterial::generate().expect("generate");
        assert!(m.ca_cert.contains("BEGIN CERTIFICATE"));
        assert!(m.key.expose().contains("PRIVATE KEY"));
        let back = ClusterTlsMaterial::from_json(&m.to_json()).expect("from json");
        assert_eq!(back, m);
        let shown = format!("{m:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let tls = ClusterTls::default();
        assert!(tls.install(&m).expect("install"));
        assert!(
            !tls.install(&m).expect("same again"),
            "same material: no change"
        );
        assert!(tls.client_config().is_some());
        tls.forget();
        assert!(!tls.is_loaded());
        assert!(ClusterTlsMaterial::from_json(&serde_json::json!({"ca_cert": "x"})).is_err());
    }

    #[test]
    fn https_base_ignores_the_written_scheme() {
        assert_eq!(
            https_base("http://127.0.0.1:8201/"),
            "https://127.0.0.1:8201"
        );
        assert_eq!(https_base("https://n1:8201"), "https://n1:8201");
        assert_eq!(https_base("n1:8201"), "https://n1:8201");
    }
}
