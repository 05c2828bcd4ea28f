//! A small typed client for the Vault HTTP API, used by the CLI commands.
//!
//! Settings come from flags and the environment the way the Vault CLI reads
//! them ([`ClientSettings::resolve`]): address from `-address`, then
//! `CUSTOS_ADDR`, then `VAULT_ADDR`, default `http://127.0.0.1:8200`; token
//! from `CUSTOS_TOKEN`, then `VAULT_TOKEN`, then `~/.custos-token` or
//! `~/.vault-token`; CA bundle from `-ca-cert`, `CUSTOS_CACERT` or
//! `VAULT_CACERT`; `-tls-skip-verify` / `VAULT_SKIP_VERIFY`. Requests go out
//! over reqwest (rustls) to `<address>/v1/<path>` with `X-Vault-Token`;
//! replies come back as `serde_json::Value`, and any status >= 400 becomes an
//! [`ApiError`] whose `Display` is Vault's `Error making API request.` text.
//! The token is held in [`Token`], whose `Debug` never shows it.

use reqwest::Method;
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default server address, as in Vault.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8200";

/// A client token. `Debug` prints `<redacted>`; use [`Token::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }
    /// The token text, for the `X-Vault-Token` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where and how to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub address: String,
    pub token: Option<Token>,
    pub ca_cert: Option<PathBuf>,
    pub skip_verify: bool,
}

/// Global connection flags (`-address`, `-ca-cert`, `-tls-skip-verify`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionFlags {
    pub address: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_skip_verify: bool,
}

fn parse_go_bool(s: &str) -> bool {
    matches!(s.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

impl ClientSettings {
    /// Resolve settings from flags, an environment lookup and the home
    /// directory (for the token helper files). Pure: tests pass their own env.
    pub fn resolve(
        flags: &ConnectionFlags,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> ClientSettings {
        let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let address = flags
            .address
            .clone()
            .filter(|a| !a.trim().is_empty())
            .or_else(|| nonempty("CUSTOS_ADDR"))
            .or_else(|| nonempty("VAULT_ADDR"))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let address = address.trim().trim_end_matches('/').to_string();

        let token = nonempty("CUSTOS_TOKEN")
            .or_else(|| nonempty("VAULT_TOKEN"))
            .or_else(|| {
                let home = home?;
                [".custos-token", ".vault-token"].iter().find_map(|f| {
                    std::fs::read_to_string(home.join(f))
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                })
            })
            .map(|t| Token::new(t.trim()));

        let ca_cert = flags
            .ca_cert
            .clone()
            .or_else(|| nonempty("CUSTOS_CACERT").map(PathBuf::from))
            .or_else(|| nonempty("VAULT_CACERT").map(PathBuf::from));
        let skip_verify = flags.tls_skip_verify
            || nonempty("CUSTOS_SKIP_VERIFY").is_some_and(|v| parse_go_bool(&v))
            || nonempty("VAULT_SKIP_VERIFY").is_some_and(|v| parse_go_bool(&v));
        ClientSettings {
            address,
            token,
            ca_cert,
            skip_verify,
        }
    }

    /// [`ClientSettings::resolve`] over the process environment and `$HOME`.
    pub fn from_process(flags: &ConnectionFlags) -> ClientSettings {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        ClientSettings::resolve(flags, &|k| std::env::var(k).ok(), home.as_deref())
    }
}

/// An error reply from the server, displayed like the Vault API client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub method: String,
    pub url: String,
    pub status: u16,
    /// The `errors` array, or the raw body when it was not Vault's JSON.
    pub errors: Vec<String>,
    /// True when `errors` holds the raw body.
    pub raw: bool,
    /// The decoded body, when it was JSON (a 404 on a KV v2 read carries data).
    pub body: Option<Value>,
}

impl ApiError {
    /// Build the error from a status and a response body.
    pub fn from_body(method: &str, url: &str, status: u16, body: &[u8]) -> ApiError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let errors = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| match e {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
            });
        let (errors, raw) = match (&parsed, errors) {
            (_, Some(errs)) => (errs, false),
            // JSON without an `errors` key decodes to an empty list in Go.
            (Some(Value::Object(_)), None) => (Vec::new(), false),
            _ => (vec![String::from_utf8_lossy(body).into_owned()], true),
        };
        ApiError {
            method: method.to_string(),
            url: url.to_string(),
            status,
            errors,
            raw,
            body: parsed,
        }
    }

    /// Whether any error message contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.errors.iter().any(|e| e.contains(needle))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.raw { "Raw Message" } else { "Errors" };
        write!(
            f,
            "Error making API request.\n\nURL: {} {}\nCode: {}. {}:\n\n",
            self.method, self.url, self.status, kind
        )?;
        if self.raw && self.errors.len() == 1 {
            f.write_str(&self.errors[0])
        } else {
            let lines: Vec<String> = self.errors.iter().map(|e| format!("* {e}")).collect();
            f.write_str(&lines.join("\n"))
        }
    }
}

impl std::error::Error for ApiError {}

/// Anything that can go wrong talking to the server.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status.
    Api(ApiError),
    /// The request did not complete (connection refused, TLS, timeout).
    Transport {
        method: String,
        url: String,
        message: String,
    },
    /// The server answered 2xx with a body that is not JSON.
    Decode { url: String, message: String },
    /// The client could not be built (bad CA file, bad address).
    Setup(String),
}

impl ClientError {
    /// The API error, if the server answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api(e) => e.fmt(f),
            ClientError::Transport {
                method,
                url,
                message,
            } => {
                // Go's url.Error style: `Get "http://...": dial tcp: ...`.
                let mut m = method.to_ascii_lowercase();
                if let Some(first) = m.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                write!(f, "{m} \"{url}\": {message}")
            }
            ClientError::Decode { url, message } => {
                write!(f, "error decoding response from {url}: {message}")
            }
            ClientError::Setup(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ClientError {}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    None,
    Json(&'a Value),
    /// `application/merge-patch+json` (KV v2 patch).
    MergePatch(&'a Value),
}

/// The text of an error and all its sources, `: `-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Vault's rule for a 404 on read/list: keep the body if it carries data or
/// warnings (KV v2 returns a deleted version's metadata with a 404), else
/// treat it as "nothing there".
pub fn keep_404_body(body: &Value) -> bool {
    let data_nonempty = match body.get("data") {
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    let warnings_nonempty = body
        .get("warnings")
        .and_then(Value::as_array)
        .is_some_and(|w| !w.is_empty());
    data_nonempty || warnings_nonempty
}

/// A Vault API client bound to one address and (optionally) one token.
#[derive(Debug, Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    address: String,
    token: Option<Token>,
}

impl VaultClient {
    /// Build the HTTP client (TLS roots, timeouts) for `settings`.
    pub fn new(settings: &ClientSettings) -> Result<VaultClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("custos-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(60));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Setup(format!(
                    "Error loading CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ClientError::Setup(format!(
                    "Error loading CA certificate {}: {}",
                    path.display(),
                    error_chain(&e)
                ))
            })?;
            if certs.is_empty() {
                return Err(ClientError::Setup(format!(
                    "Error loading CA certificate {}: no PEM certificates found",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if settings.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| {
            ClientError::Setup(format!("Error creating HTTP client: {}", error_chain(&e)))
        })?;
        Ok(VaultClient {
            http,
            address: settings.address.clone(),
            token: settings.token.clone(),
        })
    }

    /// `<address>/v1/<path>`.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}/v1/{}", self.address, path.trim_start_matches('/'))
    }

    /// Send one request; returns (status, decoded body or `None` when empty).
    /// Error statuses (>= 400) come back as [`ClientError::Api`].
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
    ) -> Result<(u16, Option<Value>), ClientError> {
        let (http_method, mut query): (Method, Vec<(&str, String)>) = match method {
            "LIST" => (Method::GET, {
                let mut q = query.to_vec();
                q.push(("list", "true".to_string()));
                q
            }),
            m => (
                Method::from_bytes(m.as_bytes()).map_err(|e| ClientError::Setup(e.to_string()))?,
                query.to_vec(),
            ),
        };
        query.sort_by(|a, b| a.0.cmp(b.0));
        let raw_url = self.url_for(path);
        let mut rb = self.http.request(http_method.clone(), &raw_url);
        if !query.is_empty() {
            rb = rb.query(&query);
        }
        if let Some(t) = &self.token {
            rb = rb.header("X-Vault-Token", t.expose());
        }
        rb = rb.header("X-Vault-Request", "true");
        rb = match body {
            Body::None => rb,
            Body::Json(v) => rb.json(v),
            Body::MergePatch(v) => rb
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/merge-patch+json",
                )
                .body(v.to_string()),
        };
        let req = rb.build().map_err(|e| ClientError::Transport {
            method: http_method.to_string(),
            url: raw_url.clone(),
            message: error_chain(&e),
        })?;
        let url = req.url().to_string();
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| ClientError::Transport {
                method: http_method.to_string(),
                url: url.clone(),
                message: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            method: http_method.to_string(),
            url: url.clone(),
            message: error_chain(&e),
        })?;
        if status >= 400 {
            return Err(ClientError::Api(ApiError::from_body(
                http_method.as_str(),
                &url,
                status,
                &bytes,
            )));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, None));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })?;
        Ok((status, Some(v)))
    }

    /// Send one request whose body (`body`) or answer is a stream, not
    /// JSON (Raft snapshots): no overall timeout, since the transfer takes
    /// as long as the data. Error statuses come back as [`ClientError::Api`];
    /// otherwise the response, its body unread.
    pub async fn send_stream(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url_for(path);
        let transport = |e: reqwest::Error| ClientError::Transport {
            method: method.to_string(),
            url: url.clone(),
            message: error_chain(&e),
        };
        let mut rb = self
            .http
            .request(method.clone(), &url)
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .header("X-Vault-Request", "true");
        if let Some(t) = &self.token {
            rb = rb.header("X-Vault-Token", t.expose());
        }
        if let Some(body) = body {
            rb = rb.body(body);
        }
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let bytes = resp.bytes().await.map_err(transport)?;
            return Err(ClientError::Api(ApiError::from_body(
                method.as_str(),
                &url,
                status,
                &bytes,
            )));
        }
        Ok(resp)
    }

    /// `Logical().Read`: GET; a bare 404 is `Ok(None)`.
    pub async fn read(&self, path: &str) -> Result<Option<Value>, ClientError> {
        self.read_with(path, &[]).await
    }

    /// [`VaultClient::read`] with query parameters.
    pub async fn read_with(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>, ClientError> {
        self.swallow_404(self.send("GET", path, query, Body::None).await)
    }

    /// `Logical().List`: GET `?list=true`; a bare 404 is `Ok(None)`.
    pub async fn list(&self, path: &str) -> Result<Option<Value>, ClientError> {
        self.swallow_404(self.send("LIST", path, &[], Body::None).await)
    }

    /// `Logical().Write`: PUT a JSON body.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Option<Value>, ClientError> {
        Ok(self.send("PUT", path, &[], Body::Json(body)).await?.1)
    }

    /// `Logical().Delete`.
    pub async fn delete(&self, path: &str) -> Result<Option<Value>, ClientError> {
        Ok(self.send("DELETE", path, &[], Body::None).await?.1)
    }

    /// PATCH with `application/merge-patch+json`.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Option<Value>, ClientError> {
        Ok(self
            .send("PATCH", path, &[], Body::MergePatch(body))
            .await?
            .1)
    }

    fn swallow_404(
        &self,
        r: Result<(u16, Option<Value>), ClientError>,
    ) -> Result<Option<Value>, ClientError> {
        match r {
            Ok((_, v)) => Ok(v),
            Err(ClientError::Api(e)) if e.status == 404 => match &e.body {
                Some(b) if keep_404_body(b) => Ok(Some(b.clone())),
                _ => Ok(None),
            },
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn api_error_formats_like_vault() {
        let e = ApiError::from_body(
            "PUT",
            "http://127.0.0.1:8200/v1/secret/data/x",
            400,
            br#"{"errors":["check-and-set parameter did not match the current version"]}"#,
        );
        assert_eq!(
            e.to_string(),
            "Error making API request.\n\nURL: PUT http://127.0.0.1:8200/v1/secret/data/x\n\
             Code: 400. Errors:\n\n* check-and-set parameter did not match the current version"
        );
        let two = ApiError::from_body("GET", "u", 503, br#"{"errors":["a","b"]}"#);
        assert!(two.to_string().ends_with("* a\n* b"));
        assert!(two.mentions("b"));
    }

    #[test]
    fn api_error_raw_body() {
        let e = ApiError::from_body("GET", "http://h/v1/x", 502, b"bad gateway");
        assert!(e.raw);
        assert!(
            e.to_string()
                .ends_with("Code: 502. Raw Message:\n\nbad gateway"),
            "{e}"
        );
    }

    #[test]
    fn settings_precedence() {
        let flags = ConnectionFlags::default();
        let s = ClientSettings::resolve(&flags, &env_of(&[]), None);
        assert_eq!(s.address, DEFAULT_ADDRESS);
        assert_eq!(s.token, None);

        let env = env_of(&[
            ("VAULT_ADDR", "http://vault:8200/"),
            ("CUSTOS_ADDR", "https://custos:8200"),
            ("VAULT_TOKEN", "v"),
            ("CUSTOS_TOKEN", "c"),
            ("VAULT_SKIP_VERIFY", "true"),
        ]);
        let s = ClientSettings::resolve(&flags, &env, None);
        assert_eq!(s.address, "https://custos:8200");
        assert_eq!(s.token, Some(Token::new("c")));
        assert!(s.skip_verify);

        let s = ClientSettings::resolve(&flags, &env_of(&[("VAULT_ADDR", "http://v/")]), None);
        assert_eq!(s.address, "http://v");

        let flags = ConnectionFlags {
            address: Some("http://flag:1".into()),
            ..Default::default()
        };
        assert_eq!(
            ClientSettings::resolve(&flags, &env, None).address,
            "http://flag:1"
        );
    }

    #[test]
    fn token_from_helper_files() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".vault-token"), "vt\n")?;
        let flags = ConnectionFlags::default();
        let s = ClientSettings::resolve(&flags, &env_of(&[]), Some(dir.path()));
        assert_eq!(s.token, Some(Token::new("vt")));
        std::fs::write(dir.path().join(".custos-token"), "ct")?;
        let s = ClientSettings::resolve(&flags, &env_of(&[]), Some(dir.path()));
        assert_eq!(s.token, Some(Token::new("ct")));
        Ok(())
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("hvs.secret");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn not_found_body_rule() {
        assert!(!keep_404_body(&json!({"errors": []})));
        assert!(keep_404_body(
            &json!({"data": {"data": null, "metadata": {"version": 2}}})
        ));
        assert!(keep_404_body(&json!({"data": null, "warnings": ["w"]})));
    }

    #[test]
    fn transport_error_reads_like_go() {
        let e = ClientError::Transport {
            method: "GET".into(),
            url: "http://127.0.0.1:1/v1/sys/seal-status".into(),
            message: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "Get \"http://127.0.0.1:1/v1/sys/seal-status\": connection refused"
        );
    }
}
