//! The Kubernetes auth method (`auth/kubernetes`), OpenBao's API: a pod logs
//! in with its service account token, and Kubernetes itself says whether
//! that token is genuine.
//!
//! Requests come from the router: `config` and `role/:name` under the ACL,
//! `login` unauthenticated. The config (`config`) and roles (`role/<lower-cased
//! name>`) are JSON in the mount's storage, behind the barrier.
//!
//! A login (`role`, `jwt`) goes as in OpenBao: the JWT's claims are read
//! without verifying the signature (unless `pem_keys` are configured, then
//! the signature must verify under one of them), the algorithm, issuer,
//! audience and time claims are checked, the service account's name and
//! namespace must match the role's bindings (globs, `*`), and then the token
//! is sent to the cluster's TokenReview API
//! (`POST {kubernetes_host}/apis/authentication.k8s.io/v1/tokenreviews`,
//! authorised by `token_reviewer_jwt` or, without one, by the login's own
//! token), whose answer must say `authenticated` for the same service
//! account (name, namespace, uid) and audience. Only then does the login
//! answer with a [`LoginAuth`]; core issues the token.
//!
//! The TokenReview call is bounded (connect and total timeouts, response
//! size) and anything that goes wrong there — refused, slow, a non-JSON or
//! otherwise unexpected answer — refuses the login with OpenBao's 403
//! `permission denied`, logs the cause (never the token) and counts it in
//! `custos_auth_kubernetes_token_reviews_total{outcome}`, so an operator
//! sees an unreachable API server while clients see only a refusal. The JWT
//! itself is never logged and appears in the audit log only HMAC'd.
//!
//! When Custos runs in a pod and `disable_local_ca_jwt` is false, an unset
//! `token_reviewer_jwt` or `kubernetes_ca_cert` is read from the pod's own
//! service account files (re-read every minute and every hour, as OpenBao);
//! where those files do not exist the login's token is the reviewer and only
//! the configured CA is trusted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::auth::TokenParams;
use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, LoginAlias, LoginAuth, Operation as Op, PathSpec,
    Response, Secret,
};
use crate::metrics as m;
use crate::with_token_fields;

const CONFIG_KEY: &str = "config";
const ROLE_PREFIX: &str = "role/";

const ALIAS_SA_UID: &str = "serviceaccount_uid";
const ALIAS_SA_NAME: &str = "serviceaccount_name";

/// The service account files of the pod Custos runs in, if it runs in one.
const LOCAL_JWT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const LOCAL_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// How long a read of those files is reused (OpenBao's reload periods).
const LOCAL_JWT_RELOAD: Duration = Duration::from_secs(60);
const LOCAL_CA_RELOAD: Duration = Duration::from_secs(3600);

/// TokenReview bounds: an API server answers in milliseconds; one that does
/// not answer within these is treated as down, and the login refused.
const REVIEW_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// A TokenReview answer is a few hundred bytes; more is not one.
const REVIEW_MAX_BODY: usize = 1 << 20;

/// Signing algorithms a service account token may use (OpenBao's
/// `supportedJwtAlgs`), and the wider set the JWT parser admits at all
/// (`AllowedJWTSignatureAlgorithmsK8s`): a token in the wider set but not
/// the narrower gets OpenBao's "unexpected algorithm" error, anything else
/// (`none`, `HS256`) does not parse.
const SUPPORTED_ALGS: &[&str] = &["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"];
/// Longer tokens are refused before decoding (a service account token is
/// 1-2 KiB); OpenBao has no bound and forwards any size to the API server.
const MAX_JWT_BYTES: usize = 64 * 1024;
const PARSEABLE_ALGS: &[&str] = &[
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// go-jose's `jwt.DefaultLeeway` (clock skew on every time claim) and cap's
/// `DefaultLeewaySeconds` (the implied `exp`/`nbf` when only one is set).
const CLOCK_SKEW_LEEWAY: i64 = 60;
const IMPLIED_LEEWAY: i64 = 150;

const R_CONFIG: usize = 0;
const R_ROLE_LIST: usize = 1;
const R_ROLE: usize = 2;
const R_LOGIN: usize = 3;

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "config",
        operations: &[Op::Read, Op::Update],
        fields: &[
            F::new("kubernetes_host", K::String),
            F::new("kubernetes_ca_cert", K::String),
            F::new("token_reviewer_jwt", K::String),
            F::new("pem_keys", K::CommaStringSlice),
            F::new("issuer", K::String),
            F::new("disable_iss_validation", K::Bool),
            F::new("disable_local_ca_jwt", K::Bool),
        ],
        existence_check: false,
        help: "Configures the JWT Public Key and Kubernetes API information.",
    },
    PathSpec {
        pattern: "role/?",
        operations: &[Op::List],
        fields: &[F::new("after", K::String), F::new("limit", K::Int)],
        existence_check: false,
        help: "Lists all the roles registered with the backend.",
    },
    PathSpec {
        pattern: r"role/(?P<name>\w(?:[\w.-]*\w)?)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: with_token_fields![
            F::new("name", K::String),
            F::new("bound_service_account_names", K::CommaStringSlice),
            F::new("bound_service_account_namespaces", K::CommaStringSlice),
            F::new("bound_service_account_namespace_selector", K::String),
            F::new("audience", K::String),
            F::new("alias_name_source", K::String),
            F::new("num_uses", K::Int),
            F::new("ttl", K::Duration),
            F::new("max_ttl", K::Duration),
            F::new("period", K::Duration),
            F::new("bound_cidrs", K::CommaStringSlice),
        ],
        existence_check: true,
        help: "Register an role with the backend.",
    },
    PathSpec {
        pattern: "login",
        operations: &[Op::Update],
        fields: &[F::new("role", K::String), F::new("jwt", K::String)],
        existence_check: false,
        help: "Authenticates Kubernetes service accounts with OpenBao.",
    },
];

/// The stored config (OpenBao's `kubeConfig`, same JSON names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    pem_keys: Vec<String>,
    host: String,
    ca_cert: String,
    #[serde(with = "secret_string")]
    token_reviewer_jwt: Secret,
    issuer: String,
    disable_iss_validation: bool,
    disable_local_ca_jwt: bool,
}

/// Serde for a [`Secret`] stored as a plain JSON string (behind the barrier).
mod secret_string {
    use crate::logical::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(de)?);
        Ok(Secret::new(s.as_str()))
    }
}

/// A stored role (OpenBao's `roleStorageEntry`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Role {
    #[serde(flatten)]
    token: TokenParams,
    bound_service_account_names: Vec<String>,
    bound_service_account_namespaces: Vec<String>,
    bound_service_account_namespace_selector: String,
    audience: String,
    alias_name_source: String,
    /// Deprecated spellings of the `token_*` fields, kept so a read shows
    /// them as OpenBao does.
    policies: Vec<String>,
    num_uses: i64,
    ttl: i64,
    max_ttl: i64,
    period: i64,
    bound_cidrs: Vec<String>,
}

/// A file of the pod's service account, re-read after `period`.
#[derive(Debug)]
struct LocalFile {
    path: &'static str,
    period: Duration,
    cached: Mutex<Option<(Instant, Secret)>>,
}

impl LocalFile {
    const fn new(path: &'static str, period: Duration) -> Self {
        LocalFile {
            path,
            period,
            cached: Mutex::new(None),
        }
    }

    /// The file's content, or `None` when it cannot be read (not in a pod).
    fn read(&self) -> Option<Secret> {
        self.read_or_error().ok()
    }

    /// The file's content, or Go's `open <path>: <reason>` (OpenBao's words).
    fn read_or_error(&self) -> std::result::Result<Secret, String> {
        let now = Instant::now();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = cached.as_ref()
            && now.duration_since(*at) < self.period
        {
            return Ok(v.clone());
        }
        match std::fs::read_to_string(self.path) {
            Ok(s) => {
                let v = Secret::new(s.trim());
                *cached = Some((now, v.clone()));
                Ok(v)
            }
            Err(e) => {
                *cached = None;
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => e.to_string(),
                };
                Err(format!("open {}: {why}", self.path))
            }
        }
    }
}

/// The backend: its storage holds everything; in memory only the HTTP
/// client for the configured CA (rebuilt when the CA changes) and the pod's
/// service account files.
#[derive(Debug)]
pub struct KubernetesBackend {
    client: Mutex<Option<(String, reqwest::Client)>>,
    local_jwt: LocalFile,
    local_ca: LocalFile,
}

impl Default for KubernetesBackend {
    fn default() -> Self {
        KubernetesBackend {
            client: Mutex::new(None),
            local_jwt: LocalFile::new(LOCAL_JWT_PATH, LOCAL_JWT_RELOAD),
            local_ca: LocalFile::new(LOCAL_CA_PATH, LOCAL_CA_RELOAD),
        }
    }
}

fn role_name(ctx: &Ctx<'_>) -> String {
    ctx.fields
        .capture("name")
        .unwrap_or_default()
        .to_lowercase()
}

async fn load_role(ctx: &Ctx<'_>, name: &str) -> Result<Option<Role>> {
    let mut role = match ctx
        .storage
        .get_json::<Role>(&format!("{ROLE_PREFIX}{}", name.to_lowercase()))
        .await?
    {
        Some(r) => r,
        None => return Ok(None),
    };
    // OpenBao's read-time upgrade of the deprecated fields.
    let t = &mut role.token;
    if t.token_ttl == 0 && role.ttl > 0 {
        t.token_ttl = role.ttl;
    }
    if t.token_max_ttl == 0 && role.max_ttl > 0 {
        t.token_max_ttl = role.max_ttl;
    }
    if t.token_period == 0 && role.period > 0 {
        t.token_period = role.period;
    }
    if t.token_num_uses == 0 && role.num_uses > 0 {
        t.token_num_uses = role.num_uses;
    }
    if t.token_policies.is_empty() && !role.policies.is_empty() {
        t.token_policies = role.policies.clone();
    }
    if t.token_bound_cidrs.is_empty() && !role.bound_cidrs.is_empty() {
        t.token_bound_cidrs = role.bound_cidrs.clone();
    }
    Ok(Some(role))
}

async fn load_config(ctx: &Ctx<'_>) -> Result<Option<Config>> {
    ctx.storage.get_json::<Config>(CONFIG_KEY).await
}

/// Vault's `tokenutil.UpgradeValue`: a deprecated field given alone sets
/// both spellings; given with its `token_*` twin it mirrors the twin; the
/// twin alone clears the deprecated one.
fn upgrade<T: Clone + Default>(
    f: &crate::logical::FieldData,
    old_key: &str,
    new_key: &str,
    given: Option<T>,
    old: &mut T,
    new: &mut T,
) {
    if !f.has(new_key) {
        if let Some(v) = given {
            *old = v.clone();
            *new = v;
        }
    } else if f.has(old_key) {
        *old = new.clone();
    } else {
        *old = T::default();
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login"]
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        Ok(load_role(&ctx, &role_name(&ctx)).await?.is_some())
    }

    fn invalidate(&self, key: &str) {
        // The client is keyed by the CA it trusts, so a config another node
        // wrote is picked up at the next login; drop it anyway to free it.
        if key == CONFIG_KEY {
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        match (ctx.route, ctx.req.operation) {
            (R_CONFIG, Op::Read) => Ok(load_config(&ctx)
                .await?
                .map(|c| Response::data(config_json(&c)))),
            (R_CONFIG, _) => self.write_config(&ctx).await,
            (R_ROLE_LIST, _) => {
                let mut roles = ctx.storage.list(ROLE_PREFIX).await?;
                roles.sort();
                if let Some(after) = ctx.fields.str("after").filter(|a| !a.is_empty()) {
                    roles.retain(|r| r.as_str() > after);
                }
                if let Some(limit) = ctx.fields.int("limit").filter(|l| *l > 0) {
                    roles.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                }
                Response::list(roles)
            }
            (R_ROLE, Op::Read) => Ok(load_role(&ctx, &role_name(&ctx))
                .await?
                .map(|r| Response::data(role_json(&r)))),
            (R_ROLE, Op::Delete) => {
                ctx.storage
                    .delete(&format!("{ROLE_PREFIX}{}", role_name(&ctx)))
                    .await?;
                Ok(None)
            }
            (R_ROLE, _) => write_role(&ctx).await,
            (R_LOGIN, _) => self.login(&ctx).await,
            _ => Err(CoreError::UnsupportedOperation),
        }
    }
}

/// `config` as a read shows it: never the reviewer JWT, only whether one is set.
fn config_json(c: &Config) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("kubernetes_host".into(), c.host.clone().into());
    d.insert("kubernetes_ca_cert".into(), c.ca_cert.clone().into());
    d.insert("pem_keys".into(), c.pem_keys.clone().into());
    d.insert("issuer".into(), c.issuer.clone().into());
    d.insert(
        "disable_iss_validation".into(),
        c.disable_iss_validation.into(),
    );
    d.insert("disable_local_ca_jwt".into(), c.disable_local_ca_jwt.into());
    d.insert(
        "token_reviewer_jwt_set".into(),
        (!c.token_reviewer_jwt.is_empty()).into(),
    );
    d
}

/// A role as `role/:name` reads it.
fn role_json(r: &Role) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert(
        "bound_service_account_names".into(),
        r.bound_service_account_names.clone().into(),
    );
    d.insert(
        "bound_service_account_namespaces".into(),
        r.bound_service_account_namespaces.clone().into(),
    );
    d.insert(
        "bound_service_account_namespace_selector".into(),
        r.bound_service_account_namespace_selector.clone().into(),
    );
    if !r.audience.is_empty() {
        d.insert("audience".into(), r.audience.clone().into());
    }
    r.token.populate(&mut d);
    if !r.policies.is_empty() {
        d.insert("policies".into(), r.token.token_policies.clone().into());
    }
    if !r.bound_cidrs.is_empty() {
        d.insert(
            "bound_cidrs".into(),
            r.token.token_bound_cidrs.clone().into(),
        );
    }
    if r.ttl > 0 {
        d.insert("ttl".into(), r.ttl.into());
    }
    if r.max_ttl > 0 {
        d.insert("max_ttl".into(), r.max_ttl.into());
    }
    if r.period > 0 {
        d.insert("period".into(), r.period.into());
    }
    if r.num_uses > 0 {
        d.insert("num_uses".into(), r.num_uses.into());
    }
    d.insert(
        "alias_name_source".into(),
        r.alias_name_source.clone().into(),
    );
    d
}

/// Create or update a role, with OpenBao's checks and wording.
async fn write_role(ctx: &Ctx<'_>) -> Result<Option<Response>> {
    let f = ctx.fields;
    let name = role_name(ctx);
    let mut role = load_role(ctx, &name).await?.unwrap_or_default();
    role.token.apply(f)?;

    let t = &mut role.token;
    upgrade(
        f,
        "policies",
        "token_policies",
        f.strings("policies").map(crate::auth::sanitize_policies),
        &mut role.policies,
        &mut t.token_policies,
    );
    let cidrs = match f.strings("bound_cidrs") {
        Some(v) => Some(crate::auth::parse_cidrs("bound_cidrs", &v)?),
        None => None,
    };
    upgrade(
        f,
        "bound_cidrs",
        "token_bound_cidrs",
        cidrs,
        &mut role.bound_cidrs,
        &mut t.token_bound_cidrs,
    );
    if f.int("num_uses").is_some_and(|n| n < 0) {
        return Err(CoreError::bad_request("token_num_uses cannot be negative"));
    }
    upgrade(
        f,
        "num_uses",
        "token_num_uses",
        f.int("num_uses"),
        &mut role.num_uses,
        &mut t.token_num_uses,
    );
    upgrade(
        f,
        "ttl",
        "token_ttl",
        f.duration_secs("ttl"),
        &mut role.ttl,
        &mut t.token_ttl,
    );
    upgrade(
        f,
        "max_ttl",
        "token_max_ttl",
        f.duration_secs("max_ttl"),
        &mut role.max_ttl,
        &mut t.token_max_ttl,
    );
    upgrade(
        f,
        "period",
        "token_period",
        f.duration_secs("period"),
        &mut role.period,
        &mut t.token_period,
    );
    if t.token_max_ttl > 0 && t.token_ttl > t.token_max_ttl {
        return Err(CoreError::bad_request(
            "token ttl should not be greater than token max ttl",
        ));
    }

    if let Some(names) = f.strings("bound_service_account_names") {
        role.bound_service_account_names = names;
    }
    if role.bound_service_account_names.is_empty() {
        return Err(CoreError::bad_request(
            "\"bound_service_account_names\" can not be empty",
        ));
    }
    if role.bound_service_account_names.len() > 1
        && role.bound_service_account_names.iter().any(|n| n == "*")
    {
        return Err(CoreError::bad_request("can not mix \"*\" with values"));
    }
    if let Some(ns) = f.strings("bound_service_account_namespaces") {
        role.bound_service_account_namespaces = ns;
    }
    // As OpenBao, the selector is what this write says (absent: none).
    role.bound_service_account_namespace_selector = f
        .str("bound_service_account_namespace_selector")
        .unwrap_or("")
        .to_string();
    if role.bound_service_account_namespaces.is_empty()
        && role.bound_service_account_namespace_selector.is_empty()
    {
        return Err(CoreError::bad_request(
            "\"bound_service_account_namespaces\" can not be empty if \"bound_service_account_namespace_selector\" is not set",
        ));
    }
    if !role.bound_service_account_namespace_selector.is_empty() {
        // Matching a selector means reading the namespace's labels from the
        // Kubernetes API at every login; not built here. Refused rather than
        // stored and ignored.
        return Err(CoreError::bad_request(
            "\"bound_service_account_namespace_selector\" is not supported by this server; use \"bound_service_account_namespaces\"",
        ));
    }
    if role.bound_service_account_namespaces.len() > 1
        && role
            .bound_service_account_namespaces
            .iter()
            .any(|n| n == "*")
    {
        return Err(CoreError::bad_request("can not mix \"*\" with values"));
    }
    if let Some(a) = f.str("audience") {
        role.audience = a.to_string();
    }
    match f.str("alias_name_source") {
        Some("") if role.alias_name_source.is_empty() => {
            role.alias_name_source = ALIAS_SA_UID.into()
        }
        Some(s) => role.alias_name_source = s.to_string(),
        None if role.alias_name_source.is_empty() => role.alias_name_source = ALIAS_SA_UID.into(),
        None => {}
    }
    if ![ALIAS_SA_UID, ALIAS_SA_NAME].contains(&role.alias_name_source.as_str()) {
        return Err(CoreError::bad_request(format!(
            "invalid alias_name_source, must be one of: {ALIAS_SA_UID}, {ALIAS_SA_NAME}"
        )));
    }
    ctx.storage
        .put_json(&format!("{ROLE_PREFIX}{name}"), &role)
        .await?;
    Ok(None)
}

impl KubernetesBackend {
    /// `config` write: a whole new config (fields not given take their
    /// defaults), as OpenBao.
    async fn write_config(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        let host = f.str("kubernetes_host").unwrap_or("");
        if host.is_empty() {
            return Err(CoreError::bad_request("no host provided"));
        }
        let ca_cert = f.str("kubernetes_ca_cert").unwrap_or("").to_string();
        let disable_local_ca_jwt = f.bool("disable_local_ca_jwt").unwrap_or(false);
        if disable_local_ca_jwt && ca_cert.is_empty() {
            return Err(CoreError::bad_request(
                "kubernetes_ca_cert must be given when disable_local_ca_jwt is true",
            ));
        }
        let pem_keys = f.strings("pem_keys").unwrap_or_default();
        for pem in &pem_keys {
            PublicKey::parse(pem).map_err(CoreError::BadRequest)?;
        }
        if ca_cert.is_empty() && !disable_local_ca_jwt {
            // OpenBao reads the pod's CA right away and refuses the config
            // without one: outside a pod, kubernetes_ca_cert is required.
            self.local_ca
                .read_or_error()
                .map_err(CoreError::BadRequest)?;
        }
        if !ca_cert.is_empty() && ca_certs(&ca_cert).is_empty() {
            // OpenBao accepts it too and fails at TLS time; say so in the log.
            tracing::warn!(
                "kubernetes auth: kubernetes_ca_cert contains no valid certificates, TLS verification will fail"
            );
        }
        let config = Config {
            pem_keys,
            host: host.to_string(),
            ca_cert,
            token_reviewer_jwt: Secret::new(f.str("token_reviewer_jwt").unwrap_or("")),
            issuer: f.str("issuer").unwrap_or("").to_string(),
            disable_iss_validation: f.bool("disable_iss_validation").unwrap_or(true),
            disable_local_ca_jwt,
        };
        ctx.storage.put_json(CONFIG_KEY, &config).await?;
        Ok(None)
    }

    async fn login(&self, ctx: &Ctx<'_>) -> Result<Option<Response>> {
        let f = ctx.fields;
        let role_name = f.str("role").unwrap_or("");
        if role_name.is_empty() {
            return Err(CoreError::bad_request("missing role"));
        }
        let jwt = f.str("jwt").unwrap_or("");
        if jwt.is_empty() {
            return Err(CoreError::bad_request("missing jwt"));
        }
        let Some(role) = load_role(ctx, role_name).await? else {
            return Err(CoreError::bad_request(format!(
                "invalid role name {}",
                go_quote(role_name)
            )));
        };
        let remote = ctx.req.remote_addr.map(|a| a.ip());
        if !crate::auth::cidrs_admit(&role.token.token_bound_cidrs, remote) {
            return Err(CoreError::PermissionDenied);
        }
        let Some(mut config) = load_config(ctx).await? else {
            return Err(CoreError::bad_request(
                "could not load backend configuration",
            ));
        };
        if !config.disable_local_ca_jwt {
            if config.token_reviewer_jwt.is_empty()
                && let Some(t) = self.local_jwt.read()
            {
                config.token_reviewer_jwt = t;
            }
            if config.ca_cert.is_empty() {
                let ca = self
                    .local_ca
                    .read_or_error()
                    .map_err(CoreError::BadRequest)?;
                config.ca_cert = ca.expose().to_string();
            }
        }

        let sa = validate_jwt(jwt, &role, &config, unix_now())?;
        let want_aud = if role.audience.is_empty() {
            sa.audience.clone()
        } else {
            vec![role.audience.clone()]
        };
        let client = self.client_for(&config.ca_cert)?;
        let reviewer = if config.token_reviewer_jwt.is_empty() {
            jwt
        } else {
            config.token_reviewer_jwt.expose()
        };
        let outcome = review(&client, &config.host, reviewer, jwt, &want_aud).await;
        let reviewed = match outcome {
            Ok(r) => r,
            Err(e) => {
                m::counter_inc(
                    m::AUTH_K8S_TOKEN_REVIEWS,
                    &[("outcome", e.outcome().to_string())],
                );
                match e {
                    ReviewError::Rejected(why) => {
                        tracing::debug!(reason = %why, "kubernetes auth: login unauthorized");
                    }
                    other => {
                        tracing::warn!(host = %config.host, error = %other, "kubernetes auth: TokenReview failed, login refused");
                    }
                }
                return Err(CoreError::PermissionDenied);
            }
        };
        let uid = sa.uid.clone();
        if reviewed.name != sa.name
            || uid.is_empty()
            || reviewed.uid != uid
            || reviewed.namespace != sa.namespace
        {
            m::counter_inc(
                m::AUTH_K8S_TOKEN_REVIEWS,
                &[("outcome", "rejected".to_string())],
            );
            tracing::debug!(
                "kubernetes auth: login unauthorized: TokenReview named another service account"
            );
            return Err(CoreError::PermissionDenied);
        }
        m::counter_inc(
            m::AUTH_K8S_TOKEN_REVIEWS,
            &[("outcome", "authenticated".to_string())],
        );
        // After the review, as OpenBao 2.7.2 (whose errors here are 500s;
        // they are the caller's token's fault, so 400s here).
        let alias_name = alias_name(&role, &sa)?;

        let metadata = BTreeMap::from([
            ("service_account_uid".to_string(), uid),
            ("service_account_name".to_string(), sa.name.clone()),
            (
                "service_account_namespace".to_string(),
                sa.namespace.clone(),
            ),
            (
                "service_account_secret_name".to_string(),
                sa.secret_name.clone(),
            ),
        ]);
        let mut token_meta = metadata.clone();
        token_meta.insert("role".into(), role_name.to_string());
        Ok(Some(Response {
            login: Some(Box::new(LoginAuth {
                alias: LoginAlias {
                    name: alias_name,
                    metadata,
                },
                display_name: format!("{}-{}", sa.namespace, sa.name),
                metadata: token_meta,
                token: role.token,
                group_aliases: Vec::new(),
            })),
            ..Default::default()
        }))
    }

    /// The HTTP client trusting `ca_pem` (and nothing else), reused while the
    /// CA stays the same.
    fn client_for(&self, ca_pem: &str) -> Result<reqwest::Client> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ca, client)) = slot.as_ref()
            && ca == ca_pem
        {
            return Ok(client.clone());
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(REVIEW_CONNECT_TIMEOUT)
            .timeout(REVIEW_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        for cert in ca_certs(ca_pem) {
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| CoreError::internal(format!("kubernetes auth: HTTP client: {e}")))?;
        *slot = Some((ca_pem.to_string(), client.clone()));
        Ok(client)
    }
}

/// The certificates of a PEM bundle; none when it holds none.
fn ca_certs(pem: &str) -> Vec<reqwest::Certificate> {
    if pem.trim().is_empty() {
        return Vec::new();
    }
    reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Go's `%q` for a plain string (what OpenBao's messages show).
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// The service account a token names (claims of a legacy secret token, or
/// the `kubernetes.io` object of a projected one, preferred when present).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceAccount {
    name: String,
    namespace: String,
    uid: String,
    secret_name: String,
    audience: Vec<String>,
}

fn claim_str(claims: &Map<String, Value>, key: &str) -> String {
    claims
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A service account claim: a string, or absent. Another type is a 400
/// (OpenBao fails decoding these with a 500).
fn sa_claim(claims: &Map<String, Value>, key: &str) -> Result<String> {
    match claims.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(CoreError::bad_request(format!(
            "decoding failed: '{key}' expected type 'string'"
        ))),
    }
}

/// A claim holding an object: the object, or absent.
fn sa_object<'a>(
    claims: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match claims.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(CoreError::bad_request(format!(
            "decoding failed: '{key}' expected a map"
        ))),
    }
}

impl ServiceAccount {
    fn from_claims(claims: &Map<String, Value>) -> Result<Self> {
        let mut sa = ServiceAccount {
            name: sa_claim(claims, "kubernetes.io/serviceaccount/service-account.name")?,
            namespace: sa_claim(claims, "kubernetes.io/serviceaccount/namespace")?,
            uid: sa_claim(claims, "kubernetes.io/serviceaccount/service-account.uid")?,
            secret_name: sa_claim(claims, "kubernetes.io/serviceaccount/secret.name")?,
            audience: audiences(claims.get("aud")),
        };
        if let Some(k) = sa_object(claims, "kubernetes.io")? {
            sa.namespace = sa_claim(k, "namespace")?;
            if let Some(acct) = sa_object(k, "serviceaccount")? {
                sa.name = sa_claim(acct, "name")?;
                sa.uid = sa_claim(acct, "uid")?;
            }
        }
        Ok(sa)
    }
}

/// An `aud` claim: one string or a list of them.
fn audiences(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A compact JWS, split and decoded.
struct Jws<'a> {
    alg: String,
    signing_input: &'a str,
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

/// Parse a compact JWS as go-jose's `ParseSigned` does with the allowed
/// algorithms; any failure is OpenBao's "error verifying token signature",
/// answered with a plain `permission denied`.
fn parse_jws(token: &str) -> Result<Jws<'_>> {
    fn denied<E>(_: E) -> CoreError {
        CoreError::PermissionDenied
    }
    if token.len() > MAX_JWT_BYTES {
        return Err(CoreError::PermissionDenied);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CoreError::PermissionDenied);
    };
    let header: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(denied)?).map_err(denied)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !PARSEABLE_ALGS.contains(&alg) {
        return Err(CoreError::PermissionDenied);
    }
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(denied)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(denied)?).map_err(denied)?;
    Ok(Jws {
        alg: alg.to_string(),
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        claims,
    })
}

/// cap's `ValidateAllowMissingIatNbfExp` with OpenBao's expectations, then
/// the role's service account name and namespace bindings.
fn validate_jwt(token: &str, role: &Role, config: &Config, now: i64) -> Result<ServiceAccount> {
    let jws = parse_jws(token)?;
    if !config.pem_keys.is_empty() {
        let verified = config
            .pem_keys
            .iter()
            .filter_map(|pem| PublicKey::parse(pem).ok())
            .any(|k| k.verify(&jws.alg, jws.signing_input.as_bytes(), &jws.signature));
        if !verified {
            return Err(CoreError::PermissionDenied);
        }
    }
    if jws.signature.is_empty() {
        return Err(CoreError::Forbidden(
            "invalid algorithm (alg) header parameter: token must be signed".into(),
        ));
    }
    if !SUPPORTED_ALGS.contains(&jws.alg.as_str()) {
        return Err(CoreError::Forbidden(
            "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
                .into(),
        ));
    }
    let claims = &jws.claims;
    if !config.disable_iss_validation
        && !config.issuer.is_empty()
        && claim_str(claims, "iss") != config.issuer
    {
        return Err(CoreError::Forbidden("invalid issuer (iss) claim".into()));
    }
    if !role.audience.is_empty() && !audiences(claims.get("aud")).contains(&role.audience) {
        return Err(CoreError::Forbidden(
            "invalid audience (aud) claim: audience claim does not match any expected audience"
                .into(),
        ));
    }
    check_times(claims, now)?;

    let sa = ServiceAccount::from_claims(claims)?;
    let names = &role.bound_service_account_names;
    let any_name = names.len() == 1 && names[0] == "*";
    if !any_name && !list_contains_glob(names, &sa.name) {
        return Err(CoreError::Forbidden(
            "service account name not authorized".into(),
        ));
    }
    let namespaces = &role.bound_service_account_namespaces;
    let ns_ok = namespaces
        .first()
        .is_some_and(|first| first == "*" || list_contains_glob(namespaces, &sa.namespace));
    if !ns_ok {
        return Err(CoreError::Forbidden("namespace not authorized".into()));
    }
    Ok(sa)
}

/// The time claims, as cap checks them when any of them is present.
fn check_times(claims: &Map<String, Value>, now: i64) -> Result<()> {
    let num = |k: &str| match claims.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .ok_or(CoreError::PermissionDenied),
    };
    let (iat, mut exp, mut nbf) = (num("iat")?, num("exp")?, num("nbf")?);
    if iat == 0 && exp == 0 && nbf == 0 {
        return Ok(());
    }
    if exp == 0 {
        exp = iat.max(nbf).saturating_add(IMPLIED_LEEWAY);
    }
    if nbf == 0 {
        nbf = if iat != 0 {
            iat
        } else {
            exp.saturating_sub(IMPLIED_LEEWAY)
        };
    }
    if now.saturating_add(CLOCK_SKEW_LEEWAY) < nbf {
        return Err(CoreError::Forbidden(
            "invalid not before (nbf) claim: token not yet valid".into(),
        ));
    }
    if now.saturating_sub(CLOCK_SKEW_LEEWAY) > exp {
        return Err(CoreError::Forbidden(
            "invalid expiration time (exp) claim: token is expired".into(),
        ));
    }
    if iat != 0 && now.saturating_add(CLOCK_SKEW_LEEWAY) < iat {
        return Err(CoreError::Forbidden(
            "invalid issued at (iat) claim: token issued in the future".into(),
        ));
    }
    Ok(())
}

/// Vault's `strutil.StrListContainsGlob`: an entry is a literal, or has a
/// `*` at its start (suffix match), its end (prefix match) or both
/// (substring match).
fn list_contains_glob(list: &[String], item: &str) -> bool {
    list.iter().any(|pattern| glob_match(pattern, item))
}

fn glob_match(pattern: &str, val: &str) -> bool {
    if pattern.len() < 2 {
        return pattern == val;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(_), Some(_)) => val.contains(&pattern[1..pattern.len() - 1]),
        (Some(suffix), None) => val.ends_with(suffix),
        (None, Some(prefix)) => val.starts_with(prefix),
        (None, None) => pattern == val,
    }
}

/// The alias name the role's `alias_name_source` picks.
fn alias_name(role: &Role, sa: &ServiceAccount) -> Result<String> {
    match role.alias_name_source.as_str() {
        ALIAS_SA_NAME => {
            if sa.namespace.is_empty() || sa.name.is_empty() {
                return Err(CoreError::bad_request(
                    "service account namespace and name must be set",
                ));
            }
            Ok(format!("{}/{}", sa.namespace, sa.name))
        }
        _ => {
            if sa.uid.is_empty() {
                return Err(CoreError::bad_request("could not parse UID from claims"));
            }
            Ok(sa.uid.clone())
        }
    }
}

/// A `pem_keys` entry: an SPKI public key or a certificate's, DER.
enum PublicKey {
    Spki(Vec<u8>),
    Certificate(Vec<u8>),
}

impl PublicKey {
    /// One PEM block, as OpenBao's `certutil.ParsePublicKeyPEM`.
    fn parse(pem: &str) -> std::result::Result<Self, String> {
        let mut rd = std::io::BufReader::new(pem.as_bytes());
        let item = rustls_pemfile::read_one(&mut rd)
            .ok()
            .flatten()
            .ok_or("data does not contain any valid public keys")?;
        let mut rest = String::new();
        if std::io::Read::read_to_string(&mut rd, &mut rest).is_ok() && !rest.trim().is_empty() {
            return Err("unexpected trailing data after parsed PEM block".into());
        }
        let key = match item {
            rustls_pemfile::Item::SubjectPublicKeyInfo(spki) => {
                let der = spki.as_ref().to_vec();
                let d = rustls::pki_types::SubjectPublicKeyInfoDer::from(der.as_slice());
                webpki::RawPublicKeyEntity::try_from(&d)
                    .map_err(|_| "data does not contain any valid public keys")?;
                PublicKey::Spki(der)
            }
            rustls_pemfile::Item::X509Certificate(cert) => {
                webpki::EndEntityCert::try_from(&cert)
                    .map_err(|_| "data does not contain any valid public keys")?;
                PublicKey::Certificate(cert.as_ref().to_vec())
            }
            _ => return Err("data does not contain any valid public keys".into()),
        };
        Ok(key)
    }

    /// Whether `sig` over `msg` verifies under this key with JWS `alg`.
    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        use webpki::ring as a;
        let (algorithm, sig): (
            &dyn rustls::pki_types::SignatureVerificationAlgorithm,
            Vec<u8>,
        ) = match alg {
            "RS256" => (a::RSA_PKCS1_2048_8192_SHA256, sig.to_vec()),
            "RS384" => (a::RSA_PKCS1_2048_8192_SHA384, sig.to_vec()),
            "RS512" => (a::RSA_PKCS1_2048_8192_SHA512, sig.to_vec()),
            "ES256" if sig.len() == 64 => (a::ECDSA_P256_SHA256, ecdsa_der(sig)),
            "ES384" if sig.len() == 96 => (a::ECDSA_P384_SHA384, ecdsa_der(sig)),
            // ES512 (P-521) has no verifier in ring.
            _ => return false,
        };
        match self {
            PublicKey::Spki(der) => {
                let d = rustls::pki_types::SubjectPublicKeyInfoDer::from(der.as_slice());
                webpki::RawPublicKeyEntity::try_from(&d)
                    .is_ok_and(|k| k.verify_signature(algorithm, msg, &sig).is_ok())
            }
            PublicKey::Certificate(der) => {
                let d = rustls::pki_types::CertificateDer::from(der.as_slice());
                webpki::EndEntityCert::try_from(&d)
                    .is_ok_and(|c| c.verify_signature(algorithm, msg, &sig).is_ok())
            }
        }
    }
}

/// A JWS ECDSA signature (`r || s`, fixed width) as the ASN.1 DER
/// `SEQUENCE { INTEGER r, INTEGER s }` ring verifies.
fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let start = v
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(v.len().saturating_sub(1));
        let v = &v[start..];
        let mut out = vec![0x02];
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(u8::try_from(v.len() + usize::from(pad)).unwrap_or(0));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = sig.split_at(sig.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(u8::try_from(body.len()).unwrap_or(0));
    out.extend(body);
    out
}

/// What a TokenReview said about a token.
#[derive(Debug, PartialEq, Eq)]
struct Reviewed {
    name: String,
    namespace: String,
    uid: String,
}

/// Why a TokenReview did not authenticate a token. Messages never hold the
/// token or the reviewer JWT.
#[derive(Debug, thiserror::Error)]
enum ReviewError {
    /// Kubernetes answered, and said no (or named someone else).
    #[error("{0}")]
    Rejected(String),
    #[error("TokenReview API unreachable: {0}")]
    Unreachable(String),
    #[error("TokenReview API did not answer within {}s", REVIEW_TIMEOUT.as_secs())]
    Timeout,
    #[error("unexpected TokenReview answer: {0}")]
    InvalidResponse(String),
}

impl ReviewError {
    /// The `outcome` label of `custos_auth_kubernetes_token_reviews_total`.
    fn outcome(&self) -> &'static str {
        match self {
            ReviewError::Rejected(_) => "rejected",
            ReviewError::Unreachable(_) => "unreachable",
            ReviewError::Timeout => "timeout",
            ReviewError::InvalidResponse(_) => "invalid_response",
        }
    }

    fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            return ReviewError::Timeout;
        }
        // The chain names the cause (connection refused, TLS); the URL is
        // the configured host, nothing secret.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        if e.is_connect() || e.is_request() {
            ReviewError::Unreachable(msg)
        } else {
            ReviewError::InvalidResponse(msg)
        }
    }
}

/// Ask the TokenReview API about `jwt` (OpenBao's `tokenReviewAPI.Review`).
async fn review(
    client: &reqwest::Client,
    host: &str,
    reviewer: &str,
    jwt: &str,
    audiences: &[String],
) -> std::result::Result<Reviewed, ReviewError> {
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/tokenreviews",
        host.trim_end_matches('/')
    );
    let mut spec = json!({"token": jwt});
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(&json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {},
            "spec": spec,
            "status": {"user": {}},
        }))
        .map_err(|e| ReviewError::InvalidResponse(e.to_string()))?,
    );
    let bearer = zeroize::Zeroizing::new(format!("Bearer {}", reviewer.trim()));
    let mut auth = reqwest::header::HeaderValue::from_str(&bearer).map_err(|_| {
        ReviewError::Rejected("the reviewer token is not a valid header value".into())
    })?;
    auth.set_sensitive(true);
    let resp = client
        .post(&url)
        .header(reqwest::header::AUTHORIZATION, auth)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| ReviewError::from_reqwest(&e))?;
    let status = resp.status().as_u16();
    let body = read_bounded(resp).await?;
    parse_review(status, &body, audiences)
}

/// The response body, at most [`REVIEW_MAX_BODY`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> std::result::Result<Vec<u8>, ReviewError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ReviewError::from_reqwest(&e))?
    {
        if body.len() + chunk.len() > REVIEW_MAX_BODY {
            return Err(ReviewError::InvalidResponse(format!(
                "answer larger than {REVIEW_MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Judge a TokenReview answer (OpenBao's `parseResponse` and the checks
/// after it).
fn parse_review(
    status: u16,
    body: &[u8],
    want_aud: &[String],
) -> std::result::Result<Reviewed, ReviewError> {
    match status {
        401 => {
            return Err(ReviewError::Rejected(
                "lookup failed: service account unauthorized; this could mean it has been deleted or recreated with a new token".into(),
            ));
        }
        403 => {
            return Err(ReviewError::Rejected(
                "lookup failed: the reviewer is not allowed to create TokenReviews".into(),
            ));
        }
        200..=206 => {}
        other => {
            return Err(ReviewError::InvalidResponse(format!("HTTP status {other}")));
        }
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ReviewError::InvalidResponse("not JSON".into()))?;
    let Some(obj) = v.as_object() else {
        return Err(ReviewError::InvalidResponse("not a JSON object".into()));
    };
    // A `Status` object that is not a success is Kubernetes' error shape.
    if obj.get("kind").and_then(Value::as_str) == Some("Status")
        && obj.get("status").and_then(Value::as_str) != Some("Success")
    {
        let msg = obj.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(ReviewError::Rejected(format!("lookup failed: {msg}")));
    }
    let Some(st) = obj.get("status").and_then(Value::as_object) else {
        return Err(ReviewError::InvalidResponse("no status".into()));
    };
    if let Some(err) = st
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        return Err(ReviewError::Rejected(format!("lookup failed: {err}")));
    }
    if st.get("authenticated").and_then(Value::as_bool) != Some(true) {
        return Err(ReviewError::Rejected(
            "lookup failed: service account jwt not valid".into(),
        ));
    }
    if !want_aud.is_empty() {
        let got = audiences(st.get("audiences"));
        if !want_aud.iter().any(|a| got.contains(a)) {
            return Err(ReviewError::Rejected(format!(
                "lookup failed: service account jwt valid for audience(s) {got:?}, but wanted {want_aud:?}"
            )));
        }
    }
    let user = st.get("user").and_then(Value::as_object);
    let username = user
        .and_then(|u| u.get("username"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let parts: Vec<&str> = username.split(':').collect();
    if parts.len() != 4 {
        return Err(ReviewError::Rejected(
            "lookup failed: unexpected username format".into(),
        ));
    }
    if parts[0] != "system" || parts[1] != "serviceaccount" {
        return Err(ReviewError::Rejected(
            "lookup failed: username returned is not a service account".into(),
        ));
    }
    Ok(Reviewed {
        name: parts[3].to_string(),
        namespace: parts[2].to_string(),
        uid: user
            .and_then(|u| u.get("uid"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
    }

    fn token(alg: &str, claims: Value) -> String {
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": alg, "kid": "k"})),
            b64(&claims),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    fn role(names: &[&str], namespaces: &[&str]) -> Role {
        Role {
            bound_service_account_names: names.iter().map(|s| s.to_string()).collect(),
            bound_service_account_namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            alias_name_source: ALIAS_SA_UID.into(),
            ..Default::default()
        }
    }

    fn config() -> Config {
        Config {
            host: "http://127.0.0.1:1".into(),
            disable_iss_validation: true,
            ..Default::default()
        }
    }

    fn legacy(ns: &str, name: &str) -> Value {
        json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": ns,
            "kubernetes.io/serviceaccount/secret.name": format!("{name}-token-x"),
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        })
    }

    #[test]
    fn globs_match_as_vault() {
        assert!(glob_match("app-*", "app-web"));
        assert!(!glob_match("app-*", "web-app"));
        assert!(glob_match("*-prod", "team-prod"));
        assert!(glob_match("*team*", "a-team-b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        // A lone "*" is only special where the role check says so.
        assert!(!glob_match("*", "x"));
        assert!(glob_match("*", "*"));
    }

    #[test]
    fn claims_of_legacy_and_projected_tokens() {
        let sa =
            ServiceAccount::from_claims(legacy("ns1", "web").as_object().unwrap_or(&Map::new()))
                .expect("claims");
        assert_eq!(
            (sa.name.as_str(), sa.namespace.as_str(), sa.uid.as_str()),
            ("web", "ns1", "uid-1")
        );
        assert_eq!(sa.secret_name, "web-token-x");
        let projected = json!({
            "aud": ["https://kubernetes.default.svc"],
            "kubernetes.io": {
                "namespace": "ns2",
                "pod": {"name": "p", "uid": "pod-uid"},
                "serviceaccount": {"name": "api", "uid": "uid-2"},
            },
            "sub": "system:serviceaccount:ns2:api",
        });
        let sa = ServiceAccount::from_claims(projected.as_object().unwrap_or(&Map::new()))
            .expect("claims");
        let typed = json!({"kubernetes.io/serviceaccount/namespace": 5});
        assert!(ServiceAccount::from_claims(typed.as_object().unwrap_or(&Map::new())).is_err());
        assert_eq!(
            (sa.name.as_str(), sa.namespace.as_str(), sa.uid.as_str()),
            ("api", "ns2", "uid-2")
        );
        assert_eq!(sa.audience, vec!["https://kubernetes.default.svc"]);
        assert_eq!(sa.secret_name, "");
    }

    #[test]
    fn bindings_and_claim_checks_answer_with_openbaos_words() {
        let c = config();
        let now = 1_700_000_000;
        let ok = validate_jwt(
            &token("RS256", legacy("team-a", "web")),
            &role(&["web"], &["team-*"]),
            &c,
            now,
        );
        assert_eq!(ok.map(|s| s.namespace).ok().as_deref(), Some("team-a"));

        let err = |t: &str, r: &Role| {
            validate_jwt(t, r, &c, now)
                .err()
                .map(|e| (e.status(), e.to_string()))
        };
        let t = token("RS256", legacy("team-a", "web"));
        assert_eq!(
            err(&t, &role(&["db"], &["*"])),
            Some((403, "service account name not authorized".into()))
        );
        assert_eq!(
            err(&t, &role(&["*"], &["prod"])),
            Some((403, "namespace not authorized".into()))
        );
        let mut aud = role(&["*"], &["*"]);
        aud.audience = "custos".into();
        assert_eq!(
            err(&t, &aud).map(|e| e.1),
            Some(
                "invalid audience (aud) claim: audience claim does not match any expected audience"
                    .into()
            )
        );
        // Not parseable at all: a bare permission denied.
        for bad in [
            "",
            "a.b",
            "not.a.jwt",
            &token("none", legacy("a", "b")),
            &token("HS256", legacy("a", "b")),
        ] {
            assert_eq!(
                err(bad, &role(&["*"], &["*"])),
                Some((403, "permission denied".into())),
                "{bad}"
            );
        }
        assert_eq!(
            err(&token("PS256", legacy("a", "b")), &role(&["*"], &["*"])).map(|e| e.1),
            Some(
                "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
                    .into()
            )
        );
        // Time claims, with go-jose's minute of leeway.
        let mut expired = legacy("a", "b");
        expired["exp"] = json!(now - 61);
        assert_eq!(
            err(&token("RS256", expired), &role(&["*"], &["*"])).map(|e| e.1),
            Some("invalid expiration time (exp) claim: token is expired".into())
        );
        let mut early = legacy("a", "b");
        early["nbf"] = json!(now + 600);
        early["exp"] = json!(now + 1200);
        assert!(
            err(&token("RS256", early), &role(&["*"], &["*"])).is_some_and(|e| e.1.contains("nbf"))
        );
        let mut fresh = legacy("a", "b");
        fresh["iat"] = json!(now - 30);
        fresh["exp"] = json!(now + 600);
        assert!(validate_jwt(&token("RS256", fresh), &role(&["*"], &["*"]), &c, now).is_ok());
        // Issuer checked only when validation is on and an issuer is set.
        let strict = Config {
            issuer: "https://kubernetes.default.svc".into(),
            disable_iss_validation: false,
            ..config()
        };
        assert_eq!(
            validate_jwt(&t, &role(&["*"], &["*"]), &strict, now)
                .err()
                .map(|e| e.to_string()),
            Some("invalid issuer (iss) claim".into())
        );
    }

    #[test]
    fn alias_names_follow_the_source() {
        let sa = ServiceAccount {
            name: "web".into(),
            namespace: "ns".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        let mut r = role(&["*"], &["*"]);
        assert_eq!(alias_name(&r, &sa).ok().as_deref(), Some("u-1"));
        r.alias_name_source = ALIAS_SA_NAME.into();
        assert_eq!(alias_name(&r, &sa).ok().as_deref(), Some("ns/web"));
        r.alias_name_source = ALIAS_SA_UID.into();
        assert!(alias_name(&r, &ServiceAccount::default()).is_err());
    }

    #[test]
    fn token_review_answers_are_judged() {
        let ok = json!({"status": {"authenticated": true, "audiences": ["a"],
            "user": {"username": "system:serviceaccount:ns:web", "uid": "u-1"}}});
        let body = serde_json::to_vec(&ok).unwrap_or_default();
        assert_eq!(
            parse_review(201, &body, &["a".to_string()]).ok(),
            Some(Reviewed {
                name: "web".into(),
                namespace: "ns".into(),
                uid: "u-1".into()
            })
        );
        let outcome = |status: u16, body: &[u8], aud: &[String]| {
            parse_review(status, body, aud).err().map(|e| e.outcome())
        };
        assert_eq!(outcome(201, &body, &["b".to_string()]), Some("rejected"));
        assert_eq!(outcome(401, b"Unauthorized", &[]), Some("rejected"));
        assert_eq!(outcome(500, b"oops", &[]), Some("invalid_response"));
        assert_eq!(outcome(201, b"<html>", &[]), Some("invalid_response"));
        assert_eq!(outcome(201, b"[1,2]", &[]), Some("invalid_response"));
        let no =
            serde_json::to_vec(&json!({"status": {"authenticated": false}})).unwrap_or_default();
        assert_eq!(outcome(201, &no, &[]), Some("rejected"));
        let user = serde_json::to_vec(
            &json!({"status": {"authenticated": true, "user": {"username": "alice"}}}),
        )
        .unwrap_or_default();
        assert_eq!(outcome(201, &user, &[]), Some("rejected"));
        let st =
            serde_json::to_vec(&json!({"kind": "Status", "status": "Failure", "message": "m"}))
                .unwrap_or_default();
        assert_eq!(outcome(200, &st, &[]), Some("rejected"));
    }

    #[test]
    fn pem_keys_verify_es256_signatures() {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("key");
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem");
        let key = PublicKey::parse(&pem).expect("parse");
        let header = b64(&json!({"alg": "ES256"}));
        let payload = b64(&legacy("ns", "web"));
        let input = format!("{header}.{payload}");
        let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
        assert!(key.verify("ES256", input.as_bytes(), &sig.to_bytes()));
        assert!(!key.verify("ES256", b"other", &sig.to_bytes()));
        assert!(!key.verify("RS256", input.as_bytes(), &sig.to_bytes()));

        let signed = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        let c = Config {
            pem_keys: vec![pem.clone()],
            ..config()
        };
        assert!(validate_jwt(&signed, &role(&["web"], &["ns"]), &c, 0).is_ok());
        let forged = format!(
            "{header}.{}.{}",
            b64(&legacy("ns", "admin")),
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        );
        assert_eq!(
            validate_jwt(&forged, &role(&["*"], &["*"]), &c, 0)
                .err()
                .map(|e| e.to_string()),
            Some("permission denied".into())
        );

        assert!(PublicKey::parse("nonsense").is_err());
        assert_eq!(
            PublicKey::parse(&format!("{pem}\ntrailing"))
                .err()
                .as_deref(),
            Some("unexpected trailing data after parsed PEM block")
        );
    }

    #[test]
    fn ecdsa_signatures_become_der() {
        let mut sig = [0u8; 64];
        sig[0] = 0x80; // r needs a sign byte
        sig[63] = 1; // s is 1 after its leading zeros
        let der = ecdsa_der(&sig);
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert_eq!(usize::from(der[1]), der.len() - 2);
    }
}
