//! The logical request model: what every backend (secrets engine or auth
//! method) sees, and the path table each backend declares.
//!
//! Data comes from the HTTP layer (`crate::http`), which turns a Vault API call
//! into a [`Request`]; the router (`crate::router`) matches it against the
//! owning backend's [`PathSpec`] table, validates the fields once
//! ([`FieldData`]), and calls [`Backend::handle`]. The [`Response`] goes back
//! to the HTTP layer, which wraps it in Vault's envelope. No backend knows about
//! HTTP, and no backend validates field types by hand.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use crate::storage::StorageView;
use crate::token::TokenEntry;

/// A Vault logical operation. `Create` and `Update` are both HTTP POST/PUT;
/// the router tells them apart with the backend's existence check, as Vault
/// does, so that ACL `create` and `update` capabilities mean what they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Create,
    Update,
    Patch,
    Delete,
    List,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::List => "list",
        }
    }

    /// The operation a path table entry must declare for this request to be
    /// routed there. `Create` is routed like `Update`.
    pub fn table_op(self) -> Operation {
        if self == Operation::Create {
            Operation::Update
        } else {
            self
        }
    }
}

/// A secret string (a token, a key share) that never prints itself.
#[derive(Clone, Default, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One API call, after HTTP decoding and before routing.
#[derive(Debug, Clone)]
pub struct Request {
    /// Unique id, echoed as `request_id` in the response envelope and audit.
    pub id: String,
    pub operation: Operation,
    /// Full logical path without `/v1/` and without a trailing `?query`,
    /// e.g. `secret/data/app/db`.
    pub path: String,
    /// The mount that owns the path, with trailing slash (`secret/`). Filled by
    /// the router.
    pub mount_point: String,
    /// The mount's type (`kv`, `system`, `token`); filled by the router.
    pub mount_type: String,
    /// The path relative to the mount (`data/app/db`). Filled by the router.
    pub relative_path: String,
    /// JSON body (or query parameters for GET/LIST/DELETE).
    pub data: Map<String, Value>,
    /// The client's token as sent, if any.
    pub client_token: Option<Secret>,
    /// The resolved token; `None` for unauthenticated paths.
    pub auth: Option<Arc<TokenEntry>>,
    /// Whether the caller holds `sudo` on this path (or is root). Filled by
    /// the pipeline after the ACL check; backends use it for root-protected
    /// variants (e.g. orphan tokens).
    pub has_sudo: bool,
    pub remote_addr: Option<SocketAddr>,
    /// Request headers that backends may need (kept for audit).
    pub headers: BTreeMap<String, String>,
    /// The W3C trace id of this request: the caller's (a valid
    /// `traceparent`), or its own trace's when tracing is on and it is
    /// sampled; written into its audit events. Set by
    /// `traces::RequestSpan::start`.
    pub trace_id: Option<[u8; 16]>,
    /// Response wrapping asked for with `X-Vault-Wrap-TTL`, in seconds; 0 =
    /// none (see `crate::wrapping`).
    pub wrap_ttl: i64,
    /// `sys/wrapping/unwrap` and `rewrap`: the wrapping token and what its
    /// cubbyhole held, read by `crate::wrapping::intercept` before the
    /// pipeline spends the token's one use (which empties the cubbyhole).
    pub unwrapping: Option<Arc<crate::wrapping::Unwrapping>>,
    /// A standby serves this read from its own state for the client's
    /// `X-Vault-Index` (`crate::forward`): the pipeline answers
    /// [`CoreError::ForwardToActive`] before recording or changing anything
    /// when the route ([`Backend::serves_on_standby`]) or the token (limited
    /// uses) needs the active node.
    pub standby_read: bool,
    /// A peer asks this node for its own part of `sys/audit-query` or
    /// `sys/audit-verify` on behalf of the caller, proved by the
    /// cluster-signed origin header (`crate::forward::Origin::fan_out`):
    /// the pipeline checks the token and its policies but spends no use
    /// (the caller's request spent it on the node that answers it).
    pub fan_out: bool,
}

impl Request {
    pub fn new(operation: Operation, path: impl Into<String>) -> Self {
        Request {
            id: uuid::Uuid::new_v4().to_string(),
            operation,
            path: path.into(),
            mount_point: String::new(),
            mount_type: String::new(),
            relative_path: String::new(),
            data: Map::new(),
            client_token: None,
            auth: None,
            has_sudo: false,
            remote_addr: None,
            headers: BTreeMap::new(),
            trace_id: None,
            wrap_ttl: 0,
            unwrapping: None,
            standby_read: false,
            fan_out: false,
        }
    }
}

/// The `auth` block of a response: a newly issued token.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuthResponse {
    pub client_token: String,
    pub accessor: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    /// Policies from the token's identity entity and its groups; sent only
    /// when there are some, as Vault does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identity_policies: Vec<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub lease_duration: i64,
    pub renewable: bool,
    pub entity_id: String,
    pub token_type: String,
    pub orphan: bool,
    pub mfa_requirement: Option<Value>,
    pub num_uses: i64,
}

/// Who logged in, as an auth method's login path says it: the identity
/// alias core resolves to an entity (Vault's `logical.Alias`).
#[derive(Debug, Clone, Default)]
pub struct LoginAlias {
    /// Unique within the mount: a username, an AppRole role id, a JWT's
    /// `user_claim`, a service account's uid or `namespace/name`.
    pub name: String,
    /// Shown on the alias (`identity/entity-alias`) and usable in policy
    /// templates (`{{identity.entity.aliases.<accessor>.metadata.<key>}}`).
    pub metadata: BTreeMap<String, String>,
}

/// A successful login, returned by an auth method in [`Response::login`]
/// instead of a token: core ([`crate::auth::login`]) resolves the alias to an
/// identity entity, computes the TTL from these parameters and the mount's,
/// creates the token and fills [`Response::auth`] (Vault's `logical.Auth`
/// before `RegisterAuth`).
#[derive(Debug, Clone, Default)]
pub struct LoginAuth {
    pub alias: LoginAlias,
    /// Appended to the mount path for the token's `display_name`
    /// (`userpass-alice`).
    pub display_name: String,
    /// Token metadata (`meta`), e.g. `{"username": "alice"}` or
    /// `{"role_name": "ci"}`.
    pub metadata: BTreeMap<String, String>,
    /// The role's (or user's) token parameters.
    pub token: crate::auth::TokenParams,
    /// External group names (a JWT's `groups_claim`), matched against the
    /// mount's identity group aliases.
    pub group_aliases: Vec<String>,
}

/// What a backend returns. The HTTP layer wraps it in Vault's envelope.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub data: Option<Map<String, Value>>,
    pub auth: Option<AuthResponse>,
    /// A login's outcome, turned into `auth` by core; only auth methods'
    /// unauthenticated paths may set it.
    pub login: Option<Box<LoginAuth>>,
    pub warnings: Vec<String>,
    pub lease_id: String,
    pub lease_duration: i64,
    pub renewable: bool,
    /// A status other than 200 (or 204 when there is no data), with the data
    /// still sent. Used e.g. for KV v2 reads of deleted versions (404 with
    /// metadata) and `sys/health`.
    pub status: Option<u16>,
    /// Send `data` as the whole body, not inside the envelope (`sys/health`,
    /// `sys/seal-status`, `sys/init` and friends answer raw JSON).
    pub raw_body: bool,
    /// For the audit log only, never sent to the client: the transit key
    /// versions the operation used, distinct and ascending (see
    /// `custos_audit::AuditResponse::key_versions`). Empty (no allocation)
    /// for everything else.
    pub key_versions: Vec<u64>,
    /// A wrapped response (`crate::wrapping`): the client gets only this, as
    /// `wrap_info`, and the response itself waits in the wrapping token's
    /// cubbyhole. A backend may also ask for its response to be wrapped by
    /// setting it with an empty token and a TTL (as `sys/wrapping/rewrap`
    /// does).
    pub wrap_info: Option<WrapInfo>,
}

/// The `wrap_info` of a wrapped response (Vault's `ResponseWrapInfo`).
#[derive(Clone, Default)]
pub struct WrapInfo {
    /// The wrapping token; empty while only asked for.
    pub token: Secret,
    pub accessor: String,
    /// Seconds.
    pub ttl: i64,
    /// RFC 3339 with nanoseconds.
    pub creation_time: String,
    pub creation_path: String,
    /// The accessor of the token (or AppRole secret-id) inside, if any.
    pub wrapped_accessor: String,
}

impl std::fmt::Debug for WrapInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapInfo")
            .field("ttl", &self.ttl)
            .field("creation_path", &self.creation_path)
            .finish_non_exhaustive()
    }
}

impl Response {
    pub fn data(data: Map<String, Value>) -> Self {
        Response {
            data: Some(data),
            ..Default::default()
        }
    }

    /// Build a response from anything serializable to a JSON object.
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Self> {
        match serde_json::to_value(value).map_err(|e| CoreError::Internal(e.to_string()))? {
            Value::Object(m) => Ok(Response::data(m)),
            _ => Err(CoreError::Internal("response is not an object".into())),
        }
    }

    /// A raw (non-enveloped) JSON body, as `sys/health` sends.
    pub fn raw(data: Map<String, Value>) -> Self {
        Response {
            data: Some(data),
            raw_body: true,
            ..Default::default()
        }
    }

    /// A LIST response: `{"keys": [...]}`. An empty list is a 404, as in Vault.
    pub fn list(keys: Vec<String>) -> Result<Option<Self>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut m = Map::new();
        m.insert("keys".into(), Value::from(keys));
        Ok(Some(Response::data(m)))
    }

    pub fn with_warning(mut self, w: impl Into<String>) -> Self {
        self.warnings.push(w.into());
        self
    }
}

/// The type of a declared field. Values that do not convert give a 400 with
/// Vault's wording ("error converting input ... for field ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Int,
    Bool,
    /// Seconds as an integer, or a Go-style duration string ("1h30m", "90s").
    Duration,
    /// A JSON object.
    Map,
    /// A JSON object whose values are all strings (`custom_metadata`, `meta`).
    StringMap,
    /// A JSON array of strings, or a comma-separated string.
    CommaStringSlice,
    /// Anything; the backend looks at it itself.
    Any,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    pub required: bool,
}

impl FieldSpec {
    pub const fn new(name: &'static str, kind: FieldKind) -> Self {
        FieldSpec {
            name,
            kind,
            required: false,
        }
    }
    pub const fn required(name: &'static str, kind: FieldKind) -> Self {
        FieldSpec {
            name,
            kind,
            required: true,
        }
    }
}

/// One row of a backend's path table.
#[derive(Debug, Clone, Copy)]
pub struct PathSpec {
    /// A regular expression over the mount-relative path, anchored at both
    /// ends by the router. Named groups become captures (`(?P<name>.+)`).
    pub pattern: &'static str,
    /// Operations served. `Update` also admits `Create`.
    pub operations: &'static [Operation],
    pub fields: &'static [FieldSpec],
    /// Whether a POST/PUT is `create` or `update` depends on whether the
    /// target exists (asked through [`Backend::exists`]). Without it, writes
    /// are `update`.
    pub existence_check: bool,
    /// One line for `?help=1` and errors.
    pub help: &'static str,
}

/// Validated request fields plus the path captures, handed to the backend.
#[derive(Debug, Clone, Default)]
pub struct FieldData {
    values: Map<String, Value>,
    captures: BTreeMap<String, String>,
}

impl FieldData {
    /// Validate `raw` against `spec`: every declared field present in the
    /// request must convert to its kind; required fields must be present.
    /// Undeclared fields are kept (backends like KV read the whole body) and
    /// reported to the caller so it can warn as Vault does.
    pub fn validate(
        spec: &PathSpec,
        raw: &Map<String, Value>,
        captures: BTreeMap<String, String>,
    ) -> Result<(FieldData, Vec<String>)> {
        let mut values = Map::new();
        let mut unknown = Vec::new();
        for (k, v) in raw {
            match spec.fields.iter().find(|f| f.name == k) {
                Some(f) => {
                    let converted = convert(f, v)?;
                    values.insert(k.clone(), converted);
                }
                None => {
                    if !captures.contains_key(k) {
                        unknown.push(k.clone());
                    }
                    values.insert(k.clone(), v.clone());
                }
            }
        }
        for f in spec.fields {
            if f.required && !values.contains_key(f.name) && !captures.contains_key(f.name) {
                return Err(CoreError::BadRequest(format!(
                    "missing required field '{}'",
                    f.name
                )));
            }
        }
        unknown.sort();
        Ok((FieldData { values, captures }, unknown))
    }

    /// For tests and internal callers: field data from a map, unvalidated.
    pub fn from_parts(values: Map<String, Value>, captures: BTreeMap<String, String>) -> Self {
        FieldData { values, captures }
    }

    /// For tests: the fields of a JSON object body (anything else: none).
    #[cfg(test)]
    pub fn from_json(body: &Value) -> Self {
        Self::from_parts(
            body.as_object().cloned().unwrap_or_default(),
            BTreeMap::new(),
        )
    }

    /// A path capture, e.g. the `path` in `data/(?P<path>.+)`.
    pub fn capture(&self, name: &str) -> Option<&str> {
        self.captures.get(name).map(String::as_str)
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.values
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    /// Duration fields are stored converted to whole seconds.
    pub fn duration_secs(&self, name: &str) -> Option<i64> {
        self.int(name)
    }

    pub fn map(&self, name: &str) -> Option<&Map<String, Value>> {
        self.get(name).and_then(Value::as_object)
    }

    pub fn string_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.map(name).map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
    }

    pub fn strings(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    }
}

fn conversion_error(f: &FieldSpec, v: &Value) -> CoreError {
    let shown = match v {
        Value::String(_) => "string".to_string(),
        Value::Number(_) => "number".to_string(),
        Value::Bool(_) => "bool".to_string(),
        Value::Array(_) => "array".to_string(),
        Value::Object(_) => "object".to_string(),
        Value::Null => "null".to_string(),
    };
    let want = match f.kind {
        FieldKind::String => "string",
        FieldKind::Int => "int",
        FieldKind::Bool => "bool",
        FieldKind::Duration => "duration",
        FieldKind::Map | FieldKind::StringMap => "map",
        FieldKind::CommaStringSlice => "comma string slice",
        FieldKind::Any => "any",
    };
    CoreError::BadRequest(format!(
        "error converting input {shown} for field \"{}\": expected {want}",
        f.name
    ))
}

/// Convert a JSON value to a field's kind with Vault's lenient rules (numbers
/// in strings, "true"/"false" strings, durations as "1h").
fn convert(f: &FieldSpec, v: &Value) -> Result<Value> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let err = || conversion_error(f, v);
    Ok(match f.kind {
        FieldKind::Any => v.clone(),
        FieldKind::String => match v {
            Value::String(_) => v.clone(),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(err()),
        },
        FieldKind::Int => match v {
            Value::Number(n) => Value::from(n.as_i64().ok_or_else(err)?),
            Value::String(s) => Value::from(s.trim().parse::<i64>().map_err(|_| err())?),
            _ => return Err(err()),
        },
        FieldKind::Bool => match v {
            Value::Bool(_) => v.clone(),
            Value::String(s) => match s.as_str() {
                "true" | "1" | "t" | "T" | "TRUE" | "True" => Value::Bool(true),
                "false" | "0" | "f" | "F" | "FALSE" | "False" | "" => Value::Bool(false),
                _ => return Err(err()),
            },
            Value::Number(n) => Value::Bool(n.as_i64().ok_or_else(err)? != 0),
            _ => return Err(err()),
        },
        FieldKind::Duration => match v {
            Value::Number(n) => Value::from(n.as_i64().ok_or_else(err)?),
            Value::String(s) => Value::from(parse_duration(s).ok_or_else(err)?),
            _ => return Err(err()),
        },
        FieldKind::Map => match v {
            Value::Object(_) => v.clone(),
            _ => return Err(err()),
        },
        FieldKind::StringMap => match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, val) in m {
                    match val {
                        Value::String(_) => {
                            out.insert(k.clone(), val.clone());
                        }
                        Value::Number(n) => {
                            out.insert(k.clone(), Value::String(n.to_string()));
                        }
                        Value::Bool(b) => {
                            out.insert(k.clone(), Value::String(b.to_string()));
                        }
                        _ => return Err(err()),
                    }
                }
                Value::Object(out)
            }
            _ => return Err(err()),
        },
        FieldKind::CommaStringSlice => match v {
            Value::String(s) => Value::from(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            ),
            Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for item in a {
                    match item {
                        Value::String(s) => out.push(s.trim().to_string()),
                        Value::Number(n) => out.push(n.to_string()),
                        _ => return Err(err()),
                    }
                }
                Value::from(out)
            }
            _ => return Err(err()),
        },
    })
}

/// Parse a duration as Vault does: an integer number of seconds, or a Go
/// duration string (`"1h30m"`, `"90s"`, `"768h"`), or a day suffix (`"7d"`).
/// Returns whole seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    if let Ok(n) = s.parse::<i64>() {
        return (n >= 0).then_some(n);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total += n * mult;
    }
    if !total.is_finite() || total < 0.0 || total > i64::MAX as f64 {
        return None;
    }
    Some(total as i64)
}

/// Everything a backend call gets besides the request itself.
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub fields: &'a FieldData,
    /// Index into the backend's path table of the matched row.
    pub route: usize,
    /// The mount's own storage, already behind the barrier.
    pub storage: &'a StorageView,
}

/// A secrets engine or auth method mounted at some path.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The path table. The router matches rows in order; the first whose
    /// pattern matches wins.
    fn paths(&self) -> &'static [PathSpec];

    /// Serve a routed request. `Ok(None)` is a 404 for reads and lists and a
    /// 204 for writes, as in Vault.
    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>>;

    /// Existence check for rows with `existence_check`: does the target of
    /// this write already exist? Decides `create` versus `update`.
    async fn exists(&self, _ctx: Ctx<'_>) -> Result<bool> {
        Ok(true)
    }

    /// Does this routed request change nothing at all (no storage write, no
    /// state change) even though it is a `POST` — a lookup, a decryption, a
    /// capability check? Then its request audit event may share one sync
    /// with its response event; the response is still held back until both
    /// are durable. When unsure, say `false` (the default).
    fn is_pure(&self, _route: usize, _req: &Request) -> bool {
        false
    }

    /// Does this routed write do nothing but write this mount's storage
    /// (no cache it updates, no token, lease or outside system)? Then, on
    /// a one-voter Raft node, its request audit event may travel in its
    /// Raft entry and be written to the audit log with the response event,
    /// one sync for both (see [`crate::storage::carry`]). When unsure, say
    /// `false` (the default).
    fn writes_only_storage(&self, _route: usize, _req: &Request) -> bool {
        false
    }

    /// May a standby serve this routed read or list from its own state
    /// (for a client's `X-Vault-Index`, `crate::forward`)? Only where the
    /// handler writes nothing to storage and starts nothing (no lease, no
    /// counter, no lazy clean-up) and every cache it reads follows the Raft
    /// log. Everything else is forwarded to the active node. When unsure,
    /// say `false` (the default).
    fn serves_on_standby(&self, _route: usize, _req: &Request) -> bool {
        false
    }

    /// Mount-relative paths served without a token (Vault's
    /// `PathsSpecial.Unauthenticated`): an exact path, or a prefix ending in
    /// `*` (`login/*`). Only auth methods' are honoured. Their requests are
    /// audited like any other, skip the ACL, and may answer with
    /// [`Response::login`].
    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &[]
    }

    /// Who a login request claims to be, before it is checked (Vault's
    /// alias lookahead): the key login lockout counts failures under —
    /// userpass's username, AppRole's role id. `None`: no lockout.
    fn lockout_key(&self, _relative: &str, _data: &Map<String, Value>) -> Option<String> {
        None
    }

    /// Called once when the mount is created or unsealed, with its storage.
    async fn initialize(&self, _storage: &StorageView) -> Result<()> {
        Ok(())
    }

    /// Periodic housekeeping (Vault's `PeriodicFunc`), e.g. transit's
    /// automatic key rotation: called by the core's periodic worker
    /// ([`crate::periodic`]) about once a minute, on the active node only,
    /// while unsealed. `mount` is the mount path (for metrics and logs) and
    /// `now_ns` the current time in unix nanoseconds, passed in so tests can
    /// move the clock. Nothing by default.
    async fn periodic(&self, _mount: &str, _storage: &StorageView, _now_ns: i64) -> Result<()> {
        Ok(())
    }

    /// Another node wrote `key` (relative to the mount's storage) and the
    /// write was applied here through the Raft log: drop whatever this
    /// backend caches for it (Vault's `InvalidateFunc`). Nothing by default.
    fn invalidate(&self, _key: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("768h"), Some(768 * 3600));
        assert_eq!(parse_duration("7d"), Some(7 * 86400));
        assert_eq!(parse_duration("1.5h"), Some(5400));
        assert_eq!(parse_duration("-5"), None);
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn fields_convert_or_fail_with_vault_wording() {
        static SPEC: PathSpec = PathSpec {
            pattern: "x",
            operations: &[Operation::Update],
            fields: &[
                FieldSpec::new("n", FieldKind::Int),
                FieldSpec::new("b", FieldKind::Bool),
                FieldSpec::new("ttl", FieldKind::Duration),
                FieldSpec::new("p", FieldKind::CommaStringSlice),
            ],
            existence_check: false,
            help: "",
        };
        let raw: Map<String, Value> =
            serde_json::from_str(r#"{"n":"5","b":"true","ttl":"1h","p":"a, b","extra":1}"#)
                .unwrap();
        let (fd, unknown) = FieldData::validate(&SPEC, &raw, BTreeMap::new()).unwrap();
        assert_eq!(fd.int("n"), Some(5));
        assert_eq!(fd.bool("b"), Some(true));
        assert_eq!(fd.duration_secs("ttl"), Some(3600));
        assert_eq!(
            fd.strings("p"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(unknown, vec!["extra".to_string()]);

        let bad: Map<String, Value> = serde_json::from_str(r#"{"n":{"x":1}}"#).unwrap();
        let err = FieldData::validate(&SPEC, &bad, BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("field \"n\""), "{err}");
    }
}
