//! ACL policies: Vault-compatible parsing, storage and evaluation.
//!
//! Policy text arrives through `sys/policies/acl/:name` and `sys/policy/:name`
//! (written by `crate::sys`), is parsed here into a [`Policy`] (HCL via
//! `hcl-rs`, or Vault's JSON form), and stored as raw text by the
//! [`PolicyStore`] in the system view under `sys/policy/<name>`, behind the
//! barrier. On every request the pipeline (`crate::core`) asks
//! [`PolicyStore::acl_for`] for the token's policies, compiled into one
//! [`Acl`] (cached per policy set), and calls [`Acl::check`] /
//! [`Acl::check_request`]; `sys/capabilities*` calls [`Acl::capabilities`].
//!
//! Evaluation follows Vault's `vault/acl.go` (`NewACL`, `AllowOperation`,
//! `CheckAllowedFromNonExactPaths`) exactly:
//!
//! * rules for the same path string, from any number of policies, merge: the
//!   union of capabilities, except that `deny` wins and clears everything else;
//! * an exact rule wins over everything; for `LIST` the path is also tried
//!   without its trailing slash (exact first, then the wildcard rules);
//! * otherwise the longest `*` prefix rule and every matching `+` segment rule
//!   compete by Vault's priority: the later the first `+`/`*` the better; not
//!   ending in `*` beats ending in `*`; fewer `+` segments is better; longer is
//!   better; lexicographically larger is better;
//! * nothing matches: denied. The `root` policy allows everything, with sudo.
//!
//! Parsing follows Vault's `vault/policy.go` (`parsePaths`): the legacy
//! `policy = "read" | "write" | "sudo" | "deny"` shorthand expands as there
//! (`write` has no `patch`), unknown keys and capabilities are refused naming
//! the path and the key, `+*` is refused, and `allowed_parameters`,
//! `denied_parameters`, `required_parameters`, `min_wrapping_ttl` and
//! `max_wrapping_ttl` are stored, merged and enforced by
//! [`Acl::check_request_wrapped`] as Vault does (a rule with a wrapping TTL
//! bound admits only requests that ask for response wrapping, with
//! `X-Vault-Wrap-TTL` inside the bounds). `mfa_methods`, `control_group` and
//! `comment` are accepted and ignored (Vault Enterprise features).
//!
//! Identity templating (`{{identity.entity.name}}`, see
//! [`crate::identity::template`]): a templated path is kept aside at parse
//! time ([`Policy::templated_rules`]) and never enters the ACL as written. A
//! token without an entity gets the policy's other paths only. For a token
//! with an entity, [`PolicyStore::acl_for_identity`] fills the templates
//! from the entity and its groups, drops the paths that cannot be filled
//! (Vault's behaviour) and caches the ACL per entity and policy list until a
//! policy or the identity store changes; policy sets without templates keep
//! the shared per-name-list cache, so their tokens pay nothing extra.
//!
//! HCL dialect: Vault uses HCL 1; `hcl-rs` parses HCL 2. The common policy
//! syntax is the same; one HCL 1 habit seen in real policies, the opening
//! brace on the line after `path "..."`, is normalised before parsing.
//!
//! [`requires_sudo`] lists Vault's root-protected paths (`PathsSpecial.Root`)
//! of the system backend (`vault/logical_system.go`: `auth/*`, `remount`,
//! `audit`, `audit/*`, `raw`, `raw/*`, `rotate`, `config/cors`,
//! `config/auditing/*`, `config/ui/headers/*`, `plugins/catalog/*`,
//! `plugins/runtimes/catalog/*`, `revoke-prefix/*`, `revoke-force/*`,
//! `leases/revoke-prefix/*`, `leases/revoke-force/*`, `leases/lookup/*`,
//! `leases`, `internal/inspect/*`, `storage/raft/snapshot-auto/config/*`,
//! `seal`, `step-down`) and of the token store (`vault/token_store.go`:
//! `revoke-orphan/*`, `accessors*`), plus `auth/token/revoke-orphan`, which
//! Vault's handler checks for sudo itself. Replication paths (Enterprise)
//! are left out.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use crate::logical::{Operation, parse_duration};
use crate::storage::StorageView;

/// The built-in policy that grants everything. Never stored.
pub const ROOT_POLICY: &str = "root";
/// The policy every token gets unless created with `no_default_policy`.
pub const DEFAULT_POLICY: &str = "default";
/// Vault's response-wrapping policy, the only policy of a wrapping token
/// (`crate::wrapping`): built in, never stored, immutable, not listed.
pub const RESPONSE_WRAPPING_POLICY: &str = "response-wrapping";
/// Policies no token may be given, by a token creation or a login
/// (Vault's `NonAssignablePolicies`).
pub const NON_ASSIGNABLE_POLICIES: &[&str] = &[RESPONSE_WRAPPING_POLICY, "control-group"];

/// Vault's `ResponseWrappingPolicy` (`vault/policy/policy_store.go`): a
/// wrapping token may read its `cubbyhole/response` and unwrap itself.
pub const RESPONSE_WRAPPING_POLICY_TEXT: &str = r#"
path "cubbyhole/response" {
    capabilities = ["create", "read"]
}

path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"#;

/// The parsed built-in response-wrapping policy.
fn response_wrapping_policy() -> Result<Arc<Policy>> {
    static PARSED: std::sync::OnceLock<Option<Arc<Policy>>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            Policy::parse(RESPONSE_WRAPPING_POLICY, RESPONSE_WRAPPING_POLICY_TEXT)
                .ok()
                .map(Arc::new)
        })
        .clone()
        .ok_or_else(|| CoreError::internal("the built-in response-wrapping policy does not parse"))
}

/// Vault's built-in `default` policy (`vault/policy_store.go`), with the
/// identity-templated entity paths and without the OIDC provider path. Written by [`PolicyStore::ensure_default`] when absent; an
/// operator may edit it afterwards, as in Vault.
pub const DEFAULT_POLICY_TEXT: &str = r#"
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}


# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token. This is a convenience to
# avoid client token swapping since this is also part of the response wrapping
# policy.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow checking the status of a Control Group request if the user has the
# accessor
path "sys/control-group/request" {
    capabilities = ["update"]
}
"#;

// ---------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------

/// A set of capabilities, as Vault's capability bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);
    pub const DENY: Capabilities = Capabilities(1);
    pub const CREATE: Capabilities = Capabilities(1 << 1);
    pub const READ: Capabilities = Capabilities(1 << 2);
    pub const UPDATE: Capabilities = Capabilities(1 << 3);
    pub const DELETE: Capabilities = Capabilities(1 << 4);
    pub const LIST: Capabilities = Capabilities(1 << 5);
    pub const SUDO: Capabilities = Capabilities(1 << 6);
    pub const PATCH: Capabilities = Capabilities(1 << 7);
    /// Everything but deny: what the root policy holds.
    pub const ALL: Capabilities = Capabilities((1 << 8) - 2);

    /// Names in the order Vault's `Capabilities` emits them (before the
    /// `sys/capabilities` handler sorts them).
    const NAMES: [(Capabilities, &'static str); 8] = [
        (Capabilities::SUDO, "sudo"),
        (Capabilities::READ, "read"),
        (Capabilities::LIST, "list"),
        (Capabilities::UPDATE, "update"),
        (Capabilities::DELETE, "delete"),
        (Capabilities::CREATE, "create"),
        (Capabilities::PATCH, "patch"),
        (Capabilities::DENY, "deny"),
    ];

    /// The capability for one name, as written in a policy.
    pub fn from_name(name: &str) -> Option<Capabilities> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }

    /// The capability an operation needs.
    pub fn for_operation(op: Operation) -> Capabilities {
        match op {
            Operation::Read => Capabilities::READ,
            Operation::Create => Capabilities::CREATE,
            Operation::Update => Capabilities::UPDATE,
            Operation::Patch => Capabilities::PATCH,
            Operation::Delete => Capabilities::DELETE,
            Operation::List => Capabilities::LIST,
        }
    }

    pub fn contains(self, other: Capabilities) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// The names of the capabilities held, sorted (as `sys/capabilities`
    /// returns them).
    pub fn names(self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect();
        out.sort_unstable();
        out
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

// ---------------------------------------------------------------------------
// Policy model and parsing
// ---------------------------------------------------------------------------

/// What one rule (or several merged rules) grant on a path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    pub capabilities: Capabilities,
    /// Seconds; 0 when unset.
    pub min_wrapping_ttl: i64,
    /// Seconds; 0 when unset.
    pub max_wrapping_ttl: i64,
    /// Lowercased parameter name → allowed values (empty: any value).
    pub allowed_parameters: HashMap<String, Vec<Value>>,
    /// Lowercased parameter name → denied values (empty: any value).
    pub denied_parameters: HashMap<String, Vec<Value>>,
    pub required_parameters: Vec<String>,
}

/// One `path "..." { ... }` stanza, normalised as Vault stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRule {
    /// The path without a leading `/`; for a plain glob (`secret/*`) without
    /// the trailing `*`; for a `+` rule, as written.
    pub path: String,
    /// A plain glob: matches every path starting with `path`.
    pub is_prefix: bool,
    /// Contains `+` segments (and may end in `*`).
    pub has_segment_wildcards: bool,
    pub permissions: Permissions,
}

/// A parsed ACL policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    name: String,
    raw: String,
    rules: Vec<PathRule>,
    /// Paths with identity templates, filled per token entity.
    templated: Vec<TemplatedRule>,
}

/// A path stanza whose path holds `{{...}}` identity templates: the path as
/// written (validated, unfilled) and its permissions.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplatedRule {
    pub key: String,
    pub permissions: Permissions,
}

/// Vault's normalisation of policy names: trimmed and lowercased.
pub fn sanitize_name(name: &str) -> String {
    name.trim().to_lowercase()
}

impl Policy {
    /// Parse policy text (HCL or JSON). Errors are `400`s worded like Vault's
    /// (`failed to parse policy: path "x": invalid capability "y"`).
    pub fn parse(name: &str, text: &str) -> Result<Policy> {
        let name = sanitize_name(name);
        let fail = |msg: String| CoreError::BadRequest(format!("failed to parse policy: {msg}"));
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(fail("policy text is empty".into()));
        }
        let stanzas = if trimmed.starts_with('{') {
            json_stanzas(trimmed).map_err(fail)?
        } else {
            hcl_stanzas(text).map_err(fail)?
        };
        let mut rules = Vec::with_capacity(stanzas.len());
        let mut templated = Vec::new();
        for (path, body) in stanzas {
            let rule = build_rule(&path, &body).map_err(fail)?;
            match crate::identity::template::check(&path) {
                Ok(false) => rules.push(rule),
                Ok(true) => templated.push(TemplatedRule {
                    key: path,
                    permissions: rule.permissions,
                }),
                Err(e) => {
                    return Err(fail(format!(
                        "path {path:?}: failed to validate policy templating: {e}"
                    )));
                }
            }
        }
        Ok(Policy {
            name,
            raw: text.to_string(),
            rules,
            templated,
        })
    }

    /// The built-in `root` policy.
    pub fn root() -> Policy {
        Policy {
            name: ROOT_POLICY.to_string(),
            raw: String::new(),
            rules: Vec::new(),
            templated: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text as written (what `sys/policies/acl/:name` returns).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn rules(&self) -> &[PathRule] {
        &self.rules
    }

    /// The paths with identity templates (not in [`Policy::rules`]).
    pub fn templated_rules(&self) -> &[TemplatedRule] {
        &self.templated
    }
}

/// One `path "..." { ... }` stanza before validation: the path as written and
/// its body as JSON values (from HCL or JSON text alike).
type Stanza = (String, Map<String, Value>);

/// Parse HCL into stanzas.
fn hcl_stanzas(text: &str) -> std::result::Result<Vec<Stanza>, String> {
    let normalised = join_detached_braces(text);
    let body = hcl::parse(&normalised).map_err(|e| match e {
        hcl::Error::Parse(p) => format!(
            "At {}:{}: {}",
            p.location().line(),
            p.location().column(),
            p.message()
        ),
        other => other.to_string(),
    })?;
    let mut out = Vec::new();
    for structure in body.0 {
        match structure {
            hcl::Structure::Attribute(attr) => {
                if attr.key.as_str() != "name" {
                    return Err(format!("invalid key {:?}", attr.key.as_str()));
                }
            }
            hcl::Structure::Block(block) => {
                if block.identifier.as_str() != "path" {
                    return Err(format!("invalid key {:?}", block.identifier.as_str()));
                }
                let [label] = block.labels.as_slice() else {
                    return Err(format!(
                        "a path block needs exactly one label (the path), found {}",
                        block.labels.len()
                    ));
                };
                let path = label.as_str().to_string();
                let body =
                    hcl_body_to_map(block.body).map_err(|e| format!("path {path:?}: {e}"))?;
                out.push((path, body));
            }
        }
    }
    Ok(out)
}

/// HCL 1 accepts the opening brace of a block on the next line
/// (`path "x"\n{`); HCL 2 does not. Join such braces onto the previous line.
/// Strings, comments and heredocs are left untouched.
fn join_detached_braces(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    // Fast path: nothing to do unless some line starts with `{`.
    let needs = text.lines().any(|l| l.trim_start().starts_with('{'));
    if !needs {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last_significant: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&text[start..i]);
                last_significant = Some(b'"');
            }
            b'#' => {
                let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'<' if bytes.get(i + 1) == Some(&b'<') => {
                // Heredoc: copy through the terminator line.
                let line_end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                let marker = text[i + 2..line_end]
                    .trim_start_matches('-')
                    .trim()
                    .to_string();
                let mut end = line_end;
                if !marker.is_empty() {
                    let mut pos = line_end;
                    while pos < bytes.len() {
                        let next = text[pos + 1..]
                            .find('\n')
                            .map_or(bytes.len(), |n| pos + 1 + n);
                        let line = &text[(pos + 1).min(bytes.len())..next];
                        pos = next;
                        if line.trim() == marker {
                            break;
                        }
                    }
                    end = pos;
                }
                out.push_str(&text[i..end]);
                i = end;
                last_significant = Some(b'<');
            }
            b'\n' | b'\r' | b' ' | b'\t' => {
                // A whitespace run: if it holds a newline and the next thing is
                // `{` after a label or identifier, replace it with one space.
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'\n' | b'\r' | b' ' | b'\t') {
                    i += 1;
                }
                let run = &text[start..i];
                let after_label = matches!(
                    last_significant,
                    Some(ch) if ch == b'"' || ch == b'=' || ch == b'_' || ch.is_ascii_alphanumeric()
                );
                if run.contains('\n') && bytes.get(i) == Some(&b'{') && after_label {
                    out.push(' ');
                } else {
                    out.push_str(run);
                }
            }
            _ => {
                let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + ch_len]);
                last_significant = Some(c);
                i += ch_len;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn hcl_body_to_map(body: hcl::Body) -> std::result::Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for structure in body.0 {
        match structure {
            hcl::Structure::Attribute(attr) => {
                let key = attr.key.as_str().to_string();
                let value = hcl_expr_to_json(attr.expr).map_err(|e| format!("{key:?}: {e}"))?;
                map.insert(key, value);
            }
            hcl::Structure::Block(block) => {
                // `allowed_parameters { ... }` or `control_group { factor "x" { ... } }`:
                // a block is an object; labels nest it further.
                let key = block.identifier.as_str().to_string();
                let mut value = Value::Object(hcl_body_to_map(block.body)?);
                for label in block.labels.iter().rev() {
                    let mut m = Map::new();
                    m.insert(label.as_str().to_string(), value);
                    value = Value::Object(m);
                }
                match (map.get_mut(&key), value) {
                    (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
                    (_, value) => {
                        map.insert(key, value);
                    }
                }
            }
        }
    }
    Ok(map)
}

fn hcl_expr_to_json(expr: hcl::Expression) -> std::result::Result<Value, String> {
    use hcl::Expression as E;
    Ok(match expr {
        E::Null => Value::Null,
        E::Bool(b) => Value::Bool(b),
        E::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| "invalid number".to_string())?
            }
        }
        E::String(s) => Value::String(s),
        E::Array(items) => Value::Array(
            items
                .into_iter()
                .map(hcl_expr_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        E::Object(obj) => {
            let mut m = Map::new();
            for (k, v) in obj {
                let key = match k {
                    hcl::ObjectKey::Identifier(id) => id.as_str().to_string(),
                    hcl::ObjectKey::Expression(E::String(s)) => s,
                    _ => return Err("object keys must be names or quoted strings".into()),
                };
                m.insert(key, hcl_expr_to_json(v)?);
            }
            Value::Object(m)
        }
        E::Parenthesis(inner) => hcl_expr_to_json(*inner)?,
        _ => return Err("only literal values are allowed in policies".into()),
    })
}

/// Parse Vault's JSON policy form: `{"path": {"secret/*": {"capabilities": [...]}}}`
/// (HCL 1's JSON flavour also allows arrays of such objects at each level).
fn json_stanzas(text: &str) -> std::result::Result<Vec<Stanza>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(top) = root else {
        return Err("does not contain a root object".into());
    };
    let mut out = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "name" => {}
            "path" => {
                for paths in objects_of(value, "path")? {
                    for (path, rules) in paths {
                        for body in objects_of(rules, &format!("path {path:?}"))? {
                            out.push((path.clone(), body));
                        }
                    }
                }
            }
            other => return Err(format!("invalid key {other:?}")),
        }
    }
    Ok(out)
}

/// An object, or every object of an array of objects.
fn objects_of(v: Value, what: &str) -> std::result::Result<Vec<Map<String, Value>>, String> {
    match v {
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(m) => Ok(m),
                _ => Err(format!("{what}: expected an object")),
            })
            .collect(),
        _ => Err(format!("{what}: expected an object")),
    }
}

const VALID_PATH_KEYS: [&str; 10] = [
    "comment",
    "policy",
    "capabilities",
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "mfa_methods",
    "control_group",
];

/// A stanza's path as the ACL keeps it: without a leading `/`, a plain glob
/// without its `*` (`is_prefix`), and whether it has `+` segments.
fn rule_path(key: &str) -> std::result::Result<(String, bool, bool), String> {
    let mut path = key.strip_prefix('/').unwrap_or(key).to_string();
    if path.contains("+*") {
        return Err(format!(
            "path {path:?}: invalid use of wildcards ('+*' is forbidden)"
        ));
    }
    let has_segment_wildcards = path == "+" || path.contains("/+") || path.starts_with("+/");
    let mut is_prefix = false;
    if path.ends_with('*') && !has_segment_wildcards {
        path.pop();
        is_prefix = true;
    }
    Ok((path, is_prefix, has_segment_wildcards))
}

/// Build one rule from a path stanza, as Vault's `parsePaths`.
fn build_rule(key: &str, body: &Map<String, Value>) -> std::result::Result<PathRule, String> {
    if let Some(bad) = body.keys().find(|k| !VALID_PATH_KEYS.contains(&k.as_str())) {
        return Err(format!("path {key:?}: invalid key {bad:?}"));
    }
    let (path, is_prefix, has_segment_wildcards) = rule_path(key)?;

    let mut names: Vec<String> = match body.get("capabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => string_list(v)
            .ok_or_else(|| format!("path {key:?}: capabilities must be a list of strings"))?,
    };
    match body.get("policy") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => match p.as_str() {
            "" => {}
            "deny" => names = vec!["deny".into()],
            "read" => names.extend(["read", "list"].map(String::from)),
            "write" => {
                names.extend(["create", "read", "update", "delete", "list"].map(String::from))
            }
            "sudo" => names
                .extend(["create", "read", "update", "delete", "list", "sudo"].map(String::from)),
            other => return Err(format!("path {key:?}: invalid policy {other:?}")),
        },
        Some(_) => return Err(format!("path {key:?}: policy must be a string")),
    }

    let mut perms = Permissions::default();
    for name in &names {
        match Capabilities::from_name(name) {
            Some(Capabilities::DENY) => {
                // Deny replaces everything else and carries no parameters.
                return Ok(PathRule {
                    path,
                    is_prefix,
                    has_segment_wildcards,
                    permissions: Permissions {
                        capabilities: Capabilities::DENY,
                        ..Default::default()
                    },
                });
            }
            Some(c) => perms.capabilities = perms.capabilities.union(c),
            None => return Err(format!("path {key:?}: invalid capability {name:?}")),
        }
    }

    for (field, target) in [
        ("allowed_parameters", &mut perms.allowed_parameters),
        ("denied_parameters", &mut perms.denied_parameters),
    ] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (param, values) in m {
                    validate_parameter(param)
                        .map_err(|e| format!("path {path:?}: {field}: {e}"))?;
                    let values = match values {
                        Value::Array(a) => a.clone(),
                        Value::Null => Vec::new(),
                        other => vec![other.clone()],
                    };
                    target.insert(param.to_lowercase(), values);
                }
            }
            Some(_) => return Err(format!("path {key:?}: {field} must be an object")),
        }
    }
    for (field, target) in [
        ("min_wrapping_ttl", &mut perms.min_wrapping_ttl),
        ("max_wrapping_ttl", &mut perms.max_wrapping_ttl),
    ] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let secs = match v {
                    Value::Number(n) => n.as_i64().filter(|n| *n >= 0),
                    Value::String(s) => parse_duration(s),
                    _ => None,
                };
                *target = secs.ok_or_else(|| format!("error parsing {field}: invalid duration"))?;
            }
        }
    }
    if perms.min_wrapping_ttl != 0
        && perms.max_wrapping_ttl != 0
        && perms.max_wrapping_ttl < perms.min_wrapping_ttl
    {
        return Err("max_wrapping_ttl cannot be less than min_wrapping_ttl".into());
    }
    match body.get("required_parameters") {
        None | Some(Value::Null) => {}
        Some(v) => {
            perms.required_parameters = string_list(v).ok_or_else(|| {
                format!("path {key:?}: required_parameters must be a list of strings")
            })?;
        }
    }
    if let Some(v) = body.get("mfa_methods")
        && !v.is_null()
        && string_list(v).is_none()
    {
        return Err(format!(
            "path {key:?}: mfa_methods must be a list of strings"
        ));
    }

    Ok(PathRule {
        path,
        is_prefix,
        has_segment_wildcards,
        permissions: perms,
    })
}

/// A list of strings; a single string counts as a list of one (HCL 1 decodes
/// it so).
fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// Vault's `validateParameter` for allowed/denied parameter keys.
fn validate_parameter(key: &str) -> std::result::Result<(), String> {
    if key.starts_with('/') {
        // A JSON pointer (RFC 6901): `~` must be followed by `0` or `1`.
        let mut chars = key.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!("parameter key {key:?}: invalid path syntax"));
            }
        }
    }
    if key.contains('*') {
        let ok = key == "*"
            || (key.starts_with('/') && key.ends_with("/*") && !key[..key.len() - 2].contains('*'));
        if !ok {
            return Err(format!(
                "parameter key {key:?} cannot contain non-tail wildcards"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// ACL evaluation
// ---------------------------------------------------------------------------

/// The outcome of an ACL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclDecision {
    /// The operation is permitted.
    pub allowed: bool,
    /// The matching rule grants `sudo` (or the token is root): the caller may
    /// use root-protected paths ([`requires_sudo`]).
    pub sudo: bool,
    /// The token holds the `root` policy.
    pub is_root: bool,
    /// Everything the matching rule grants (empty when nothing matched).
    pub capabilities: Capabilities,
}

impl AclDecision {
    const DENIED: AclDecision = AclDecision {
        allowed: false,
        sudo: false,
        is_root: false,
        capabilities: Capabilities::NONE,
    };
}

#[derive(Debug)]
struct SegmentRule {
    /// The path without a trailing `*`.
    wc_path: String,
    /// Byte index of the first `+`.
    first_wildcard: usize,
    is_prefix: bool,
    parts: Vec<String>,
    perms: Permissions,
}

/// A candidate among the non-exact rules, ordered by Vault's priority.
struct Candidate<'a> {
    first_wildcard: usize,
    is_prefix: bool,
    wildcards: usize,
    wc_path: &'a str,
    perms: &'a Permissions,
}

impl Candidate<'_> {
    /// Greater is higher priority (Vault's `less` in
    /// `CheckAllowedFromNonExactPaths`, reversed).
    fn key(&self) -> (usize, bool, Reverse<usize>, usize, &str) {
        (
            self.first_wildcard,
            !self.is_prefix,
            Reverse(self.wildcards),
            self.wc_path.len(),
            self.wc_path,
        )
    }
}

/// A set of policies compiled for evaluation. Built once per policy set (see
/// [`PolicyStore::acl_for`]); [`Acl::check`] allocates only when `+` rules
/// exist (to split the path).
#[derive(Debug, Default)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, Permissions>,
    prefix: HashMap<String, Permissions>,
    /// Distinct lengths of the prefix rules, longest first.
    prefix_lens: Vec<usize>,
    segment: Vec<SegmentRule>,
    /// Some policy in the set has identity-templated paths (left out here;
    /// see [`Acl::with_identity`]).
    templated: bool,
}

/// A templated policy path whose filled value OpenBao refuses (it would
/// widen the path): the whole ACL is refused, as OpenBao does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRefused {
    pub policy: String,
    pub path: String,
    pub reason: String,
}

impl Acl {
    /// Compile policies into one ACL, merging rules for the same path as Vault
    /// does. A `root` policy among them makes the ACL root (Vault never mixes
    /// `root` with other policies on a token). Identity-templated paths are
    /// left out (a token without an entity cannot fill them).
    pub fn new(policies: &[Arc<Policy>]) -> Acl {
        Self::compile(policies, &[])
    }

    /// [`Acl::new`] with the templated paths filled from a token's entity
    /// and groups; paths that cannot be filled are dropped, as Vault drops
    /// them. A filled value containing `/`, `*` or `+` refuses the ACL.
    pub fn with_identity(
        policies: &[Arc<Policy>],
        input: &crate::identity::template::TemplateInput,
    ) -> std::result::Result<Acl, TemplateRefused> {
        use crate::identity::template::{TemplateError, populate};
        let mut filled = Vec::new();
        for policy in policies {
            for t in &policy.templated {
                let path = match populate(&t.key, Some(input)) {
                    Ok(p) => p,
                    Err(TemplateError::NotFound(_)) => continue,
                    Err(e) => {
                        return Err(TemplateRefused {
                            policy: policy.name.clone(),
                            path: t.key.clone(),
                            reason: e.to_string(),
                        });
                    }
                };
                // A filled path that is no longer valid is dropped too.
                if let Ok((path, is_prefix, has_segment_wildcards)) = rule_path(&path) {
                    filled.push(PathRule {
                        path,
                        is_prefix,
                        has_segment_wildcards,
                        permissions: t.permissions.clone(),
                    });
                }
            }
        }
        Ok(Self::compile(policies, &filled))
    }

    /// Whether some policy of this ACL has identity-templated paths, so a
    /// token with an entity needs [`Acl::with_identity`].
    pub fn is_templated(&self) -> bool {
        self.templated
    }

    fn compile(policies: &[Arc<Policy>], filled: &[PathRule]) -> Acl {
        let mut acl = Acl::default();
        let mut segment: HashMap<String, Permissions> = HashMap::new();
        let rules = policies
            .iter()
            .flat_map(|p| p.rules.iter())
            .chain(filled.iter());
        for policy in policies {
            if policy.name == ROOT_POLICY {
                acl.root = true;
            }
            if !policy.templated.is_empty() {
                acl.templated = true;
            }
        }
        for rule in rules {
            let map = if rule.has_segment_wildcards {
                &mut segment
            } else if rule.is_prefix {
                &mut acl.prefix
            } else {
                &mut acl.exact
            };
            match map.get_mut(&rule.path) {
                None => {
                    map.insert(rule.path.clone(), rule.permissions.clone());
                }
                Some(existing) => merge(existing, &rule.permissions),
            }
        }
        let mut lens: Vec<usize> = acl.prefix.keys().map(String::len).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        acl.prefix_lens = lens;
        acl.segment = segment
            .into_iter()
            .map(|(full, perms)| {
                let (wc_path, is_prefix) = match full.strip_suffix('*') {
                    Some(p) => (p.to_string(), true),
                    None => (full.clone(), false),
                };
                SegmentRule {
                    first_wildcard: full.find('+').unwrap_or(0),
                    is_prefix,
                    parts: wc_path.split('/').map(str::to_string).collect(),
                    wc_path,
                    perms,
                }
            })
            .collect();
        acl
    }

    /// Whether this ACL holds the `root` policy.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Capability check for `op` on `path` (a full logical path such as
    /// `secret/data/app`), without parameter or wrapping constraints. Use
    /// [`Acl::check_request`] to enforce those too.
    pub fn check(&self, path: &str, op: Operation) -> AclDecision {
        if self.root {
            return Self::root_decision();
        }
        match self.lookup(path, op == Operation::List) {
            None => AclDecision::DENIED,
            Some(perms) => {
                let caps = perms.capabilities;
                AclDecision {
                    allowed: caps.contains(Capabilities::for_operation(op)),
                    sudo: caps.contains(Capabilities::SUDO),
                    is_root: false,
                    capabilities: caps,
                }
            }
        }
    }

    /// [`Acl::check_request_wrapped`] for a request that does not ask for
    /// response wrapping.
    pub fn check_request(
        &self,
        path: &str,
        op: Operation,
        data: &Map<String, Value>,
    ) -> AclDecision {
        self.check_request_wrapped(path, op, data, 0)
    }

    /// The full check Vault's `AllowOperation` makes: capabilities, then the
    /// wrapping-TTL bounds against the requested `wrap_ttl` (seconds, 0 = not
    /// wrapped: any bound denies) and, for read/create/update/patch, the
    /// required, denied and allowed parameters against the request `data`.
    pub fn check_request_wrapped(
        &self,
        path: &str,
        op: Operation,
        data: &Map<String, Value>,
        wrap_ttl: i64,
    ) -> AclDecision {
        if self.root {
            return Self::root_decision();
        }
        let Some(perms) = self.lookup(path, op == Operation::List) else {
            return AclDecision::DENIED;
        };
        let caps = perms.capabilities;
        let mut decision = AclDecision {
            allowed: false,
            sudo: caps.contains(Capabilities::SUDO),
            is_root: false,
            capabilities: caps,
        };
        if !caps.contains(Capabilities::for_operation(op)) {
            return decision;
        }
        if perms.max_wrapping_ttl > 0 && (wrap_ttl <= 0 || wrap_ttl > perms.max_wrapping_ttl) {
            return decision;
        }
        if perms.min_wrapping_ttl > 0 && (wrap_ttl <= 0 || wrap_ttl < perms.min_wrapping_ttl) {
            return decision;
        }
        // Possible after merging, though each rule is checked on its own.
        if perms.min_wrapping_ttl != 0
            && perms.max_wrapping_ttl != 0
            && perms.max_wrapping_ttl < perms.min_wrapping_ttl
        {
            return decision;
        }
        if matches!(
            op,
            Operation::Read | Operation::Create | Operation::Update | Operation::Patch
        ) && !parameters_allowed(perms, data)
        {
            return decision;
        }
        decision.allowed = true;
        decision
    }

    /// What `sys/capabilities` reports for `path`: `["root"]` for root,
    /// `["deny"]` when nothing matches or the rule denies, else the sorted
    /// capability names. Looks the path up as a LIST, as Vault does.
    pub fn capabilities(&self, path: &str) -> Vec<String> {
        if self.root {
            return vec![ROOT_POLICY.to_string()];
        }
        let caps = self
            .lookup(path, true)
            .map_or(Capabilities::NONE, |p| p.capabilities);
        if caps.contains(Capabilities::DENY) || caps.is_empty() {
            return vec!["deny".to_string()];
        }
        caps.names().into_iter().map(str::to_string).collect()
    }

    fn root_decision() -> AclDecision {
        AclDecision {
            allowed: true,
            sudo: true,
            is_root: true,
            capabilities: Capabilities::ALL,
        }
    }

    /// Vault's rule lookup in `AllowOperation`.
    fn lookup(&self, path: &str, list: bool) -> Option<&Permissions> {
        let path = path.trim_start_matches('/');
        if let Some(p) = self.exact.get(path) {
            return Some(p);
        }
        let trimmed = path.strip_suffix('/');
        if list && let Some(p) = self.exact.get(trimmed.unwrap_or(path)) {
            return Some(p);
        }
        if list
            && let Some(t) = trimmed
            && let Some(p) = self.non_exact(t)
        {
            return Some(p);
        }
        self.non_exact(path)
    }

    /// Vault's `CheckAllowedFromNonExactPaths` (without the bare-mount mode).
    fn non_exact(&self, path: &str) -> Option<&Permissions> {
        let prefix_hit = self.prefix_lens.iter().find_map(|&len| {
            if len > path.len() || !path.is_char_boundary(len) {
                return None;
            }
            self.prefix.get_key_value(&path[..len])
        });
        if self.segment.is_empty() {
            return prefix_hit.map(|(_, p)| p);
        }
        let mut best: Option<Candidate<'_>> = prefix_hit.map(|(k, p)| Candidate {
            first_wildcard: k.len(),
            is_prefix: true,
            wildcards: 0,
            wc_path: k.as_str(),
            perms: p,
        });
        let parts: Vec<&str> = path.split('/').collect();
        for rule in &self.segment {
            let Some(wildcards) = segment_match(rule, &parts) else {
                continue;
            };
            let cand = Candidate {
                first_wildcard: rule.first_wildcard,
                is_prefix: rule.is_prefix,
                wildcards,
                wc_path: &rule.wc_path,
                perms: &rule.perms,
            };
            if best.as_ref().is_none_or(|b| cand.key() > b.key()) {
                best = Some(cand);
            }
        }
        best.map(|c| c.perms)
    }
}

/// Match a `+` rule against the split request path; the number of `+`
/// segments on a match.
fn segment_match(rule: &SegmentRule, parts: &[&str]) -> Option<usize> {
    if parts.len() < rule.parts.len() || (!rule.is_prefix && parts.len() != rule.parts.len()) {
        return None;
    }
    let last = rule.parts.len() - 1;
    let mut wildcards = 0;
    for (i, acl_part) in rule.parts.iter().enumerate() {
        if acl_part == "+" {
            wildcards += 1;
            continue;
        }
        let glob_tail = rule.is_prefix && i == last && parts[i].starts_with(acl_part.as_str());
        if acl_part.as_str() != parts[i] && !glob_tail {
            return None;
        }
    }
    Some(wildcards)
}

/// Merge `new` into `existing` for the same path, as Vault's `NewACL`.
fn merge(existing: &mut Permissions, new: &Permissions) {
    if existing.capabilities.contains(Capabilities::DENY) {
        return;
    }
    if new.capabilities.contains(Capabilities::DENY) {
        existing.capabilities = Capabilities::DENY;
        existing.allowed_parameters.clear();
        existing.denied_parameters.clear();
        return;
    }
    existing.capabilities = existing.capabilities.union(new.capabilities);
    if new.max_wrapping_ttl > 0
        && (existing.max_wrapping_ttl == 0 || new.max_wrapping_ttl < existing.max_wrapping_ttl)
    {
        existing.max_wrapping_ttl = new.max_wrapping_ttl;
    }
    if new.min_wrapping_ttl > 0
        && (existing.min_wrapping_ttl == 0 || new.min_wrapping_ttl < existing.min_wrapping_ttl)
    {
        existing.min_wrapping_ttl = new.min_wrapping_ttl;
    }
    merge_parameters(&mut existing.allowed_parameters, &new.allowed_parameters);
    merge_parameters(&mut existing.denied_parameters, &new.denied_parameters);
    for p in &new.required_parameters {
        if !existing.required_parameters.contains(p) {
            existing.required_parameters.push(p.clone());
        }
    }
}

fn merge_parameters(existing: &mut HashMap<String, Vec<Value>>, new: &HashMap<String, Vec<Value>>) {
    for (key, values) in new {
        match existing.get_mut(key) {
            Some(current) if values.is_empty() || current.is_empty() => current.clear(),
            Some(current) => current.extend(values.iter().cloned()),
            None => {
                existing.insert(key.clone(), values.clone());
            }
        }
    }
}

/// Vault's parameter checks in `AllowOperation`.
fn parameters_allowed(perms: &Permissions, data: &Map<String, Value>) -> bool {
    if perms
        .required_parameters
        .iter()
        .any(|p| !data.contains_key(&p.to_lowercase()))
    {
        return false;
    }
    if data.is_empty() {
        return true;
    }
    if !perms.denied_parameters.is_empty() {
        if perms.denied_parameters.contains_key("*") {
            return false;
        }
        for (param, value) in data {
            if let Some(denied) = perms.denied_parameters.get(&param.to_lowercase())
                && value_in_denied_list(value, denied)
            {
                return false;
            }
        }
    }
    if perms.allowed_parameters.is_empty() {
        return true;
    }
    let allowed_all = perms.allowed_parameters.contains_key("*");
    if allowed_all && perms.allowed_parameters.len() == 1 {
        return true;
    }
    for (param, value) in data {
        match perms.allowed_parameters.get(&param.to_lowercase()) {
            None if !allowed_all => return false,
            Some(allowed) if !value_in_allowed_list(value, allowed) => return false,
            _ => {}
        }
    }
    true
}

fn value_in_allowed_list(v: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(v, list) {
        return true;
    }
    match v {
        Value::Array(items) => items.iter().all(|i| value_in_list(i, list)),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .all(|i| value_in_list(&Value::from(i), list)),
        _ => false,
    }
}

fn value_in_denied_list(v: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(v, list) {
        return true;
    }
    match v {
        Value::Array(items) => items.iter().any(|i| value_in_list(i, list)),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .any(|i| value_in_list(&Value::from(i), list)),
        _ => false,
    }
}

fn value_in_list(v: &Value, list: &[Value]) -> bool {
    list.iter().any(|el| match (el, v) {
        (Value::String(pattern), Value::String(s)) => globbed_match(pattern, s),
        _ => el == v,
    })
}

/// Vault's `strutil.GlobbedStringsMatch`: a leading and/or trailing `*`.
fn globbed_match(item: &str, val: &str) -> bool {
    if item.len() < 2 {
        return val == item;
    }
    match (item.strip_prefix('*'), item.strip_suffix('*')) {
        (Some(_), Some(_)) => val.contains(&item[1..item.len() - 1]),
        (Some(suffix), None) => val.ends_with(suffix),
        (None, Some(prefix)) => val.starts_with(prefix),
        (None, None) => val == item,
    }
}

// ---------------------------------------------------------------------------
// Root-protected paths
// ---------------------------------------------------------------------------

/// Root-protected paths matched exactly (full logical paths).
const SUDO_EXACT: &[&str] = &[
    "sys/remount",
    "sys/audit",
    "sys/raw",
    "sys/rotate",
    "sys/config/cors",
    "sys/leases",
    "sys/seal",
    "sys/step-down",
    "sys/storage/raft/snapshot",
    "sys/storage/raft/snapshot-force",
    "auth/token/revoke-orphan",
    // Custos: the cluster's audit device table (crate::audit).
    "sys/audit-table",
];

/// Root-protected path prefixes (Vault's entries ending in `*`).
const SUDO_PREFIX: &[&str] = &[
    "sys/auth/",
    "sys/audit/",
    "sys/raw/",
    "sys/config/auditing/",
    "sys/config/ui/headers/",
    "sys/plugins/catalog/",
    "sys/plugins/runtimes/catalog/",
    "sys/revoke-prefix/",
    "sys/revoke-force/",
    "sys/leases/revoke-prefix/",
    "sys/leases/revoke-force/",
    "sys/leases/lookup/",
    "sys/internal/inspect/",
    "sys/storage/raft/snapshot-auto/config/",
    "auth/token/revoke-orphan/",
    "auth/token/accessors",
];

/// Whether `path` is root-protected: the caller needs `sudo` on it (or the
/// root policy) in addition to the operation's capability. Vault's list does
/// not depend on the operation; `op` is kept for paths that may.
pub fn requires_sudo(path: &str, _op: Operation) -> bool {
    let path = path.trim_start_matches('/');
    SUDO_EXACT.contains(&path) || SUDO_PREFIX.iter().any(|p| path.starts_with(p))
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// Largest number of compiled ACLs kept; the cache is emptied when it fills.
const ACL_CACHE_MAX: usize = 1024;

/// One entity's compiled ACLs: token policy names → (the identity store
/// generation it was built at, the ACL).
type EntityAcls = HashMap<Vec<String>, (u64, Arc<Acl>)>;

#[derive(Default)]
struct Cache {
    /// Bumped by every write; a reader that loaded from storage only caches
    /// its result when no write happened meanwhile.
    generation: u64,
    policies: HashMap<String, Arc<Policy>>,
    acls: HashMap<Vec<String>, Arc<Acl>>,
    /// ACLs with identity filled in: entity id → token policy names →
    /// (the identity store generation it was built at, the ACL).
    entity_acls: HashMap<String, EntityAcls>,
    /// Entries in `entity_acls`, bounded like `acls`.
    entity_acl_count: usize,
}

impl Cache {
    /// Forget every compiled ACL (a policy changed).
    fn clear_acls(&mut self) {
        self.acls.clear();
        self.entity_acls.clear();
        self.entity_acl_count = 0;
    }
}

/// Named ACL policies in storage (raw text under the view, keyed by name),
/// with parsed policies and compiled ACLs cached in memory. Writes through
/// this store invalidate the caches; a write applied by another node (Raft
/// follower) does not pass here, so whoever applies replicated writes must
/// call [`PolicyStore::invalidate`] (or [`PolicyStore::clear_cache`]).
pub struct PolicyStore {
    view: StorageView,
    root: Arc<Policy>,
    cache: RwLock<Cache>,
}

impl PolicyStore {
    /// A store over `view` (the system view's `policy/` sub-view).
    pub fn new(view: StorageView) -> Self {
        PolicyStore {
            view,
            root: Arc::new(Policy::root()),
            cache: RwLock::new(Cache::default()),
        }
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A policy by name (`root` is built in). `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Policy>>> {
        let name = sanitize_name(name);
        if name == ROOT_POLICY {
            return Ok(Some(self.root.clone()));
        }
        if name == RESPONSE_WRAPPING_POLICY {
            return response_wrapping_policy().map(Some);
        }
        let generation = {
            let cache = self.read_cache();
            if let Some(p) = cache.policies.get(&name) {
                return Ok(Some(p.clone()));
            }
            cache.generation
        };
        let Some(text) = self.get_stored_text(&name).await? else {
            return Ok(None);
        };
        let policy = Arc::new(Policy::parse(&name, &text).map_err(|e| {
            CoreError::Internal(format!("stored policy {name:?} does not parse: {e}"))
        })?);
        let mut cache = self.write_cache();
        if cache.generation == generation {
            cache.policies.insert(name, policy.clone());
        }
        Ok(Some(policy))
    }

    async fn get_stored_text(&self, name: &str) -> Result<Option<String>> {
        match self.view.get(name).await? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| CoreError::Storage(format!("policy {name:?} is not UTF-8"))),
        }
    }

    /// The policy text as written; `Some("")` for `root`.
    pub async fn get_text(&self, name: &str) -> Result<Option<String>> {
        let name = sanitize_name(name);
        if name == ROOT_POLICY {
            return Ok(Some(String::new()));
        }
        if name == RESPONSE_WRAPPING_POLICY {
            return Ok(Some(RESPONSE_WRAPPING_POLICY_TEXT.to_string()));
        }
        self.get_stored_text(&name).await
    }

    /// Create or replace a policy. The text is parsed first (a bad policy is a
    /// 400 and changes nothing); base64-encoded text is decoded first, as
    /// Vault's handler does.
    pub async fn set(&self, name: &str, text: &str) -> Result<()> {
        let name = sanitize_name(name);
        if name.is_empty() {
            return Err(CoreError::bad_request("policy name must be provided"));
        }
        if name == ROOT_POLICY || name == RESPONSE_WRAPPING_POLICY {
            return Err(CoreError::BadRequest(format!(
                "cannot update {name:?} policy"
            )));
        }
        let decoded = decode_base64_text(text);
        let text = decoded.as_deref().unwrap_or(text);
        let policy = Arc::new(Policy::parse(&name, text)?);
        self.view.put(&name, text.as_bytes().to_vec()).await?;
        let mut cache = self.write_cache();
        cache.generation += 1;
        cache.clear_acls();
        cache.policies.insert(name, policy);
        Ok(())
    }

    /// Delete a policy. `root` and `default` cannot be deleted; deleting a
    /// policy that does not exist succeeds.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let name = sanitize_name(name);
        if name == ROOT_POLICY || name == RESPONSE_WRAPPING_POLICY {
            return Err(CoreError::BadRequest(format!(
                "cannot delete {name:?} policy"
            )));
        }
        if name == DEFAULT_POLICY {
            return Err(CoreError::bad_request("cannot delete default policy"));
        }
        self.view.delete(&name).await?;
        self.invalidate(&name);
        Ok(())
    }

    /// Policy names as Vault's `sys/policies/acl` LIST returns them: the
    /// stored names, sorted, then `root`.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .view
            .list_recursive("")
            .await?
            .into_iter()
            .filter(|n| n != RESPONSE_WRAPPING_POLICY)
            .collect();
        names.sort();
        names.push(ROOT_POLICY.to_string());
        Ok(names)
    }

    /// Write Vault's built-in `default` policy unless one is stored.
    pub async fn ensure_default(&self) -> Result<()> {
        if self.view.get(DEFAULT_POLICY).await?.is_some() {
            return Ok(());
        }
        self.set(DEFAULT_POLICY, DEFAULT_POLICY_TEXT).await
    }

    /// The compiled ACL for a token's policies. Unknown names are ignored, as
    /// in Vault. Cached per name list until the next policy write.
    pub async fn acl_for(&self, names: &[String]) -> Result<Arc<Acl>> {
        let generation = {
            let cache = self.read_cache();
            if let Some(acl) = cache.acls.get(names) {
                return Ok(acl.clone());
            }
            cache.generation
        };
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            if let Some(p) = self.get(name).await? {
                policies.push(p);
            }
        }
        let acl = Arc::new(Acl::new(&policies));
        let mut cache = self.write_cache();
        if cache.generation == generation {
            if cache.acls.len() >= ACL_CACHE_MAX {
                cache.acls.clear();
            }
            cache.acls.insert(names.to_vec(), acl.clone());
        }
        Ok(acl)
    }

    /// The compiled ACL for a token with an identity entity: its own
    /// `names` plus the entity's and groups' policies, with templated paths
    /// filled from the entity. When identity adds no policy and no policy is
    /// templated, this is [`PolicyStore::acl_for`]'s cached ACL and costs
    /// nothing more; otherwise the ACL is cached per entity and name list
    /// until a policy changes or `identity.generation` moves on.
    pub async fn acl_for_identity(
        &self,
        names: &[String],
        identity: &crate::identity::IdentityView,
    ) -> Result<Arc<Acl>> {
        if identity.policies.iter().all(|p| names.contains(p)) {
            let acl = self.acl_for(names).await?;
            if !acl.is_templated() {
                return Ok(acl);
            }
        }
        let generation = {
            let cache = self.read_cache();
            if let Some((built_at, acl)) = cache
                .entity_acls
                .get(identity.entity_id.as_str())
                .and_then(|m| m.get(names))
                && *built_at == identity.generation
            {
                return Ok(acl.clone());
            }
            cache.generation
        };
        let mut all: Vec<String> = names.to_vec();
        all.extend(identity.policies.iter().cloned());
        all.sort();
        all.dedup();
        let mut policies = Vec::with_capacity(all.len());
        for name in &all {
            if let Some(p) = self.get(name).await? {
                policies.push(p);
            }
        }
        let acl = match Acl::with_identity(&policies, &identity.template) {
            Ok(acl) => Arc::new(acl),
            Err(refused) => {
                // OpenBao answers every request of such a token with a 400
                // "Forbidden" and logs why; the value is the operator's
                // metadata, not a secret.
                tracing::error!(
                    policy = %refused.policy,
                    path = %refused.path,
                    reason = %refused.reason,
                    "failed to construct ACL: error parsing templated policy"
                );
                return Err(CoreError::bad_request("Forbidden"));
            }
        };
        let mut cache = self.write_cache();
        if cache.generation == generation {
            if cache.entity_acl_count >= ACL_CACHE_MAX {
                cache.entity_acls.clear();
                cache.entity_acl_count = 0;
            }
            let slot = cache
                .entity_acls
                .entry(identity.entity_id.clone())
                .or_default()
                .insert(names.to_vec(), (identity.generation, acl.clone()));
            if slot.is_none() {
                cache.entity_acl_count += 1;
            }
        }
        Ok(acl)
    }

    /// Forget the cached copy of one policy (and every compiled ACL), e.g.
    /// after a replicated write to `sys/policy/<name>`.
    pub fn invalidate(&self, name: &str) {
        let name = sanitize_name(name);
        let mut cache = self.write_cache();
        cache.generation += 1;
        cache.clear_acls();
        cache.policies.remove(&name);
    }

    /// Forget every cached policy and ACL (e.g. after a snapshot restore).
    pub fn clear_cache(&self) {
        let mut cache = self.write_cache();
        cache.generation += 1;
        cache.clear_acls();
        cache.policies.clear();
    }
}

/// Vault's `sys/policy` handlers accept base64-encoded policy text.
fn decode_base64_text(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::Barrier;
    use crate::storage::memory::MemoryStore;

    fn policy(name: &str, text: &str) -> Arc<Policy> {
        Arc::new(Policy::parse(name, text).unwrap())
    }

    fn acl(texts: &[&str]) -> Acl {
        let policies: Vec<Arc<Policy>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| policy(&format!("p{i}"), t))
            .collect();
        Acl::new(&policies)
    }

    fn bad(text: &str) -> String {
        match Policy::parse("x", text) {
            Err(CoreError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    /// A policy whose rule at `path` grants only `caps`, used to tell which
    /// rule won.
    fn rule(path: &str, caps: &str) -> String {
        format!("path \"{path}\" {{\n  capabilities = [{caps}]\n}}\n")
    }

    #[test]
    fn parses_capabilities_and_strips_globs() {
        let p = Policy::parse(
            "Dev ",
            r#"
            # comment
            name = "ignored"
            path "/secret/data/*" {
              capabilities = ["create", "read", "update", "patch", "delete", "list", "sudo"]
            }
            path "secret/+/foo*" { capabilities = ["read"] }
            "#,
        )
        .unwrap();
        assert_eq!(p.name(), "dev");
        assert_eq!(p.rules().len(), 2);
        assert_eq!(p.rules()[0].path, "secret/data/");
        assert!(p.rules()[0].is_prefix);
        assert_eq!(
            p.rules()[0].permissions.capabilities.names(),
            vec![
                "create", "delete", "list", "patch", "read", "sudo", "update"
            ]
        );
        assert_eq!(p.rules()[1].path, "secret/+/foo*");
        assert!(p.rules()[1].has_segment_wildcards && !p.rules()[1].is_prefix);
    }

    #[test]
    fn legacy_policy_shorthand_expands_like_vault() {
        let p = Policy::parse(
            "x",
            r#"
path "a" { policy = "read" }
path "b" { policy = "write" }
path "c" { policy = "sudo" }
path "d" {
  policy = "deny"
  capabilities = ["read"]
}
"#,
        )
        .unwrap();
        let names: Vec<Vec<&str>> = p
            .rules()
            .iter()
            .map(|r| r.permissions.capabilities.names())
            .collect();
        assert_eq!(names[0], vec!["list", "read"]);
        assert_eq!(names[1], vec!["create", "delete", "list", "read", "update"]);
        assert_eq!(
            names[2],
            vec!["create", "delete", "list", "read", "sudo", "update"]
        );
        assert_eq!(names[3], vec!["deny"]);
        assert!(bad(r#"path "a" { policy = "admin" }"#).contains(r#"invalid policy "admin""#));
    }

    #[test]
    fn bad_policies_are_400s_naming_the_culprit() {
        let m = bad(r#"path "secret/*" { capabilities = ["read", "fly"] }"#);
        assert!(m.starts_with("failed to parse policy: "), "{m}");
        assert!(
            m.contains(r#"path "secret/*""#) && m.contains(r#"invalid capability "fly""#),
            "{m}"
        );

        let m = bad("path \"secret/*\" {\n capabilities = [\"read\"]\n colour = \"red\"\n}");
        assert!(
            m.contains(r#"path "secret/*""#) && m.contains(r#"invalid key "colour""#),
            "{m}"
        );

        let m = bad("paths \"secret/*\" {\n capabilities = [\"read\"]\n}");
        assert!(m.contains(r#"invalid key "paths""#), "{m}");

        let m = bad("path \"secret/*\" {\n capabilities = [\"read\"\n}");
        assert!(m.starts_with("failed to parse policy: At 3:1"), "{m}");

        assert!(bad("   \n").contains("empty"));
        assert!(
            bad(r#"path "secret/+*" { capabilities = ["read"] }"#).contains("'+*' is forbidden")
        );
        assert!(
            bad(r#"{"path": {"a": {"capabilities": ["nope"]}}}"#)
                .contains(r#"invalid capability "nope""#)
        );
        assert!(bad(r#"{"paths": {}}"#).contains(r#"invalid key "paths""#));
        assert!(bad("{not json").contains("invalid JSON"));
        let m = bad(
            "path \"a\" {\n capabilities = [\"read\"]\n max_wrapping_ttl = \"1s\"\n min_wrapping_ttl = \"1m\"\n}",
        );
        assert!(
            m.contains("max_wrapping_ttl cannot be less than min_wrapping_ttl"),
            "{m}"
        );
        let m = bad("path \"a\" {\n allowed_parameters = {\n \"a*b\" = []\n }\n}");
        assert!(m.contains("non-tail wildcards"), "{m}");
    }

    #[test]
    fn single_string_capability_is_a_list_of_one() {
        let p = Policy::parse("x", r#"path "a" { capabilities = "read" }"#).unwrap();
        assert_eq!(p.rules()[0].permissions.capabilities, Capabilities::READ);
    }

    #[test]
    fn json_policy_parses_like_hcl() {
        let json = Policy::parse(
            "j",
            r#"{"path": {"secret/*": {"capabilities": ["read", "list"]},
                         "secret/super-secret": [{"capabilities": ["deny"]}]}}"#,
        )
        .unwrap();
        let hcl = Policy::parse(
            "j",
            &(rule("secret/*", r#""read", "list""#) + &rule("secret/super-secret", r#""deny""#)),
        )
        .unwrap();
        let mut a = json.rules().to_vec();
        let mut b = hcl.rules().to_vec();
        a.sort_by(|x, y| x.path.cmp(&y.path));
        b.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(a, b);
    }

    #[test]
    fn brace_on_next_line_is_accepted_as_in_hcl1() {
        let p = Policy::parse(
            "x",
            "path \"sys/policy/*\"\n{\n  capabilities = [\"read\"] # a { in a comment\n}\n\npath \"sys/mounts\"\r\n{\r\n  capabilities = [\"list\"]\r\n}\r\n",
        )
        .unwrap();
        assert_eq!(p.rules().len(), 2);
        assert_eq!(p.rules()[1].permissions.capabilities, Capabilities::LIST);
    }

    #[test]
    fn default_policy_parses_and_grants_self_service() {
        let a = Acl::new(&[policy(DEFAULT_POLICY, DEFAULT_POLICY_TEXT)]);
        assert!(a.check("auth/token/lookup-self", Operation::Read).allowed);
        assert!(a.check("auth/token/renew-self", Operation::Update).allowed);
        assert!(a.check("cubbyhole/x", Operation::Create).allowed);
        assert!(!a.check("cubbyhole/x", Operation::Patch).allowed);
        assert!(!a.check("secret/data/x", Operation::Read).allowed);
        assert!(!a.check("auth/token/lookup-self", Operation::Read).sudo);
    }

    #[test]
    fn deny_by_default_and_root_allows_all() {
        let a = acl(&[]);
        let d = a.check("secret/data/x", Operation::Read);
        assert!(!d.allowed && !d.sudo && d.capabilities.is_empty());
        assert_eq!(a.capabilities("secret/data/x"), vec!["deny"]);

        let root = Acl::new(&[Arc::new(Policy::root())]);
        assert!(root.is_root());
        let d = root.check("sys/audit/file", Operation::Delete);
        assert!(d.allowed && d.sudo && d.is_root);
        assert_eq!(root.capabilities("anything"), vec!["root"]);
    }

    #[test]
    fn priority_exact_beats_plus_beats_glob() {
        // Vault docs: secret/* vs secret/+/foo vs secret/a/b.
        let a = acl(&[&(rule("secret/*", r#""read""#)
            + &rule("secret/+/foo", r#""update""#)
            + &rule("secret/a/b", r#""delete""#))]);
        assert_eq!(a.capabilities("secret/a/b"), vec!["delete"]);
        assert_eq!(a.capabilities("secret/a/foo"), vec!["update"]);
        assert_eq!(a.capabilities("secret/a/bar"), vec!["read"]);
        assert_eq!(a.capabilities("secret/a/foo/x"), vec!["read"]);
        assert_eq!(a.capabilities("other"), vec!["deny"]);
    }

    #[test]
    fn priority_first_wildcard_position() {
        // foo/a* (glob at 5) beats foo/+ (wildcard at 4) ...
        let a = acl(&[&(rule("foo/a*", r#""read""#) + &rule("foo/+", r#""update""#))]);
        assert_eq!(a.capabilities("foo/abc"), vec!["read"]);
        assert_eq!(a.capabilities("foo/xyz"), vec!["update"]);
        // ... and foo/bar/+/baz beats foo/+/bar/baz.
        let a =
            acl(&[&(rule("foo/+/bar/baz", r#""read""#) + &rule("foo/bar/+/baz", r#""update""#))]);
        assert_eq!(a.capabilities("foo/bar/bar/baz"), vec!["update"]);
        // secret/+/x has its wildcard at 7, secret/ab* its glob at 9: the glob wins.
        let a = acl(&[&(rule("secret/+/x", r#""read""#) + &rule("secret/ab*", r#""update""#))]);
        assert_eq!(a.capabilities("secret/abc/x"), vec!["update"]);
    }

    #[test]
    fn priority_not_prefix_then_fewer_plus_then_longer() {
        let a = acl(&[&(rule("foo/+/bar", r#""read""#) + &rule("foo/+/ba*", r#""update""#))]);
        assert_eq!(a.capabilities("foo/x/bar"), vec!["read"]);
        assert_eq!(a.capabilities("foo/x/bat"), vec!["update"]);

        let a = acl(&[&(rule("foo/*", r#""read""#) + &rule("foo/+", r#""update""#))]);
        assert_eq!(a.capabilities("foo/x"), vec!["update"]);
        assert_eq!(a.capabilities("foo/x/y"), vec!["read"]);

        let a = acl(&[&(rule("foo/+/+/baz", r#""read""#) + &rule("foo/+/bar/baz", r#""update""#))]);
        assert_eq!(a.capabilities("foo/x/bar/baz"), vec!["update"]);
        assert_eq!(a.capabilities("foo/x/qux/baz"), vec!["read"]);

        let a =
            acl(&[&(rule("foo/+/bar/b*", r#""read""#) + &rule("foo/+/bar/ba*", r#""update""#))]);
        assert_eq!(a.capabilities("foo/x/bar/baz"), vec!["update"]);
        assert_eq!(a.capabilities("foo/x/bar/bz"), vec!["read"]);
    }

    #[test]
    fn plus_matches_exactly_one_segment() {
        let a = acl(&[&rule("secret/+/config", r#""read""#)]);
        assert!(a.check("secret/app/config", Operation::Read).allowed);
        assert!(!a.check("secret/app/x/config", Operation::Read).allowed);
        assert!(!a.check("secret/config", Operation::Read).allowed);
        assert!(!a.check("secret/app/config/x", Operation::Read).allowed);

        let a = acl(&[&rule("+/data/*", r#""read""#)]);
        assert!(a.check("kv/data/a/b", Operation::Read).allowed);
        assert!(a.check("kv/data/", Operation::Read).allowed);
        assert!(!a.check("kv/metadata/a", Operation::Read).allowed);

        let a = acl(&[&rule("+", r#""read""#)]);
        assert!(a.check("anything", Operation::Read).allowed);
        assert!(!a.check("any/thing", Operation::Read).allowed);
    }

    #[test]
    fn longest_glob_wins() {
        let a = acl(&[&(rule("secret/*", r#""read""#) + &rule("secret/app/*", r#""deny""#))]);
        assert!(a.check("secret/other", Operation::Read).allowed);
        assert!(!a.check("secret/app/x", Operation::Read).allowed);
        assert_eq!(a.capabilities("secret/app/x"), vec!["deny"]);
        // A glob also matches the bare prefix.
        assert!(a.check("secret/", Operation::Read).allowed);
        assert!(!a.check("secret", Operation::Read).allowed);
    }

    #[test]
    fn rules_for_the_same_path_merge_and_deny_wins() {
        let a = acl(&[
            &rule("secret/x", r#""read""#),
            &rule("secret/x", r#""create", "sudo""#),
        ]);
        assert_eq!(a.capabilities("secret/x"), vec!["create", "read", "sudo"]);
        let d = a.check("secret/x", Operation::Create);
        assert!(d.allowed && d.sudo);

        for order in [[0, 1], [1, 0]] {
            let texts = [
                rule("secret/*", r#""read", "list""#),
                rule("secret/*", r#""deny""#),
            ];
            let a = acl(&[&texts[order[0]], &texts[order[1]]]);
            assert!(!a.check("secret/y", Operation::Read).allowed);
            assert_eq!(a.capabilities("secret/y"), vec!["deny"]);
        }

        // Exact and glob rules for the same string are different rules.
        let a = acl(&[
            &rule("secret/x", r#""read""#),
            &rule("secret/x*", r#""deny""#),
        ]);
        assert!(a.check("secret/x", Operation::Read).allowed);
        assert!(!a.check("secret/xy", Operation::Read).allowed);

        // Same + path across policies merges too.
        let a = acl(&[&rule("kv/+/a", r#""read""#), &rule("kv/+/a", r#""update""#)]);
        assert_eq!(a.capabilities("kv/q/a"), vec!["read", "update"]);
    }

    #[test]
    fn operations_need_their_own_capability() {
        let a = acl(&[&rule("kv/data/app", r#""update""#)]);
        assert!(a.check("kv/data/app", Operation::Update).allowed);
        assert!(!a.check("kv/data/app", Operation::Create).allowed);
        assert!(!a.check("kv/data/app", Operation::Patch).allowed);
        assert!(!a.check("kv/data/app", Operation::Read).allowed);
        assert!(!a.check("kv/data/app", Operation::Delete).allowed);
        assert!(!a.check("kv/data/app", Operation::List).allowed);
        let a = acl(&[&rule("kv/data/app", r#""patch", "list""#)]);
        assert!(a.check("kv/data/app", Operation::Patch).allowed);
        assert!(!a.check("kv/data/app", Operation::Update).allowed);
        assert!(a.check("/kv/data/app", Operation::List).allowed);
    }

    #[test]
    fn list_tries_the_path_without_its_trailing_slash() {
        let a = acl(&[&rule("secret/metadata", r#""list""#)]);
        assert!(a.check("secret/metadata/", Operation::List).allowed);
        assert!(!a.check("secret/metadata/", Operation::Read).allowed);
        assert_eq!(a.capabilities("secret/metadata/"), vec!["list"]);

        let a = acl(&[&rule("secret/+", r#""list""#)]);
        assert!(a.check("secret/app/", Operation::List).allowed);
        assert!(!a.check("secret/app/", Operation::Read).allowed);

        // The trimmed path's wildcard match comes before the full path's.
        let a = acl(&[&(rule("secret/+", r#""list""#) + &rule("secret/app/*", r#""deny""#))]);
        assert!(a.check("secret/app/", Operation::List).allowed);

        let a = acl(&[&rule("secret/metadata/*", r#""list""#)]);
        assert!(a.check("secret/metadata/", Operation::List).allowed);
        assert!(!a.check("secret/metadata", Operation::List).allowed);
    }

    #[test]
    fn sudo_is_reported_even_when_the_operation_is_denied() {
        let a = acl(&[&rule("sys/audit*", r#""read", "sudo""#)]);
        let d = a.check("sys/audit/file", Operation::Update);
        assert!(!d.allowed && d.sudo);
        let d = a.check("sys/audit", Operation::Read);
        assert!(d.allowed && d.sudo);
    }

    #[test]
    fn parameters_are_enforced_like_vault() {
        let text = r#"
path "secret/app" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "name" = ["web-*", "api"]
    "tags" = []
  }
  denied_parameters = {
    "tags" = ["root"]
  }
}
path "secret/req" {
  capabilities = ["update", "delete"]
  required_parameters = ["owner"]
}
path "secret/nothing" {
  capabilities = ["update"]
  denied_parameters = {
    "*" = []
  }
}
path "secret/wrapped" {
  capabilities = ["update"]
  min_wrapping_ttl = "1s"
}
"#;
        let a = acl(&[text]);
        let data = |j: &str| -> Map<String, Value> { serde_json::from_str(j).unwrap() };
        let ok = |p: &str, op, j: &str| a.check_request(p, op, &data(j)).allowed;
        assert!(ok("secret/app", Operation::Update, r#"{"name": "web-1"}"#));
        assert!(ok(
            "secret/app",
            Operation::Update,
            r#"{"NAME": "api", "tags": "a,b"}"#
        ));
        assert!(!ok("secret/app", Operation::Update, r#"{"name": "db"}"#));
        assert!(!ok("secret/app", Operation::Update, r#"{"other": 1}"#));
        assert!(!ok(
            "secret/app",
            Operation::Update,
            r#"{"tags": "a, root"}"#
        ));
        assert!(!ok(
            "secret/app",
            Operation::Update,
            r#"{"tags": ["root"]}"#
        ));
        assert!(ok("secret/app", Operation::Update, r#"{}"#));
        assert!(ok("secret/req", Operation::Update, r#"{"owner": "me"}"#));
        assert!(!ok("secret/req", Operation::Update, r#"{"x": "me"}"#));
        // Parameters are not checked for delete.
        assert!(ok("secret/req", Operation::Delete, r#"{}"#));
        assert!(ok("secret/nothing", Operation::Update, r#"{}"#));
        assert!(!ok("secret/nothing", Operation::Update, r#"{"a": 1}"#));
        // A wrapping bound admits only requests wrapped within it.
        assert!(!ok("secret/wrapped", Operation::Update, r#"{}"#));
        let wrapped = |ttl| {
            a.check_request_wrapped("secret/wrapped", Operation::Update, &data("{}"), ttl)
                .allowed
        };
        assert!(wrapped(1) && wrapped(300));
        assert!(a.check("secret/wrapped", Operation::Update).allowed);
        let max =
            acl(&["path \"s/x\" {\n capabilities = [\"read\"]\n max_wrapping_ttl = \"60s\"\n}"]);
        let read = |ttl| {
            max.check_request_wrapped("s/x", Operation::Read, &Map::new(), ttl)
                .allowed
        };
        assert!(!read(0) && read(60) && !read(61));
    }

    #[test]
    fn response_wrapping_policy_is_built_in() {
        let p = Policy::parse(RESPONSE_WRAPPING_POLICY, RESPONSE_WRAPPING_POLICY_TEXT).unwrap();
        let a = Acl::new(&[Arc::new(p)]);
        assert!(a.check("cubbyhole/response", Operation::Read).allowed);
        assert!(a.check("sys/wrapping/unwrap", Operation::Update).allowed);
        assert!(!a.check("sys/wrapping/rewrap", Operation::Update).allowed);
        assert!(!a.check("cubbyhole/other", Operation::Read).allowed);
    }

    #[test]
    fn parameter_globs_match_like_vault() {
        assert!(globbed_match("web-*", "web-1"));
        assert!(globbed_match("*-prod", "db-prod"));
        assert!(globbed_match("*mid*", "a-mid-b"));
        assert!(!globbed_match("web-*", "api"));
        // A lone "*" is literal in Vault's matcher.
        assert!(globbed_match("*", "*"));
        assert!(!globbed_match("*", "x"));
    }

    #[test]
    fn sudo_protected_paths() {
        for p in [
            "sys/audit",
            "sys/audit/file",
            "sys/auth/userpass",
            "sys/raw/core/keyring",
            "sys/rotate",
            "sys/seal",
            "sys/step-down",
            "sys/leases/lookup/auth/token/",
            "sys/leases/revoke-prefix/auth",
            "auth/token/accessors/",
            "auth/token/revoke-orphan",
            "auth/token/revoke-orphan/x",
        ] {
            assert!(requires_sudo(p, Operation::Update), "{p}");
        }
        for p in [
            "sys/auth",
            "sys/mounts",
            "sys/mounts/secret",
            "sys/policies/acl/x",
            "sys/key-status",
            "sys/rotate/config",
            "sys/leases/lookup",
            "sys/leases/renew",
            "auth/token/create",
            "secret/data/audit",
        ] {
            assert!(!requires_sudo(p, Operation::Update), "{p}");
        }
    }

    async fn store() -> PolicyStore {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[7u8; 32]).await.unwrap();
        PolicyStore::new(StorageView::new(barrier, "sys/policy/"))
    }

    #[tokio::test]
    async fn store_round_trip_list_and_builtins() {
        let s = store().await;
        s.ensure_default().await.unwrap();
        assert_eq!(s.list().await.unwrap(), vec!["default", "root"]);
        s.set("Zeta", &rule("secret/*", r#""read""#)).await.unwrap();
        s.set("alpha", &rule("kv/*", r#""list""#)).await.unwrap();
        assert_eq!(
            s.list().await.unwrap(),
            vec!["alpha", "default", "zeta", "root"]
        );
        assert_eq!(
            s.get_text("ZETA").await.unwrap().as_deref(),
            Some(rule("secret/*", r#""read""#).as_str())
        );
        assert_eq!(s.get("zeta").await.unwrap().unwrap().name(), "zeta");
        assert!(s.get("nope").await.unwrap().is_none());
        assert!(s.get_text("nope").await.unwrap().is_none());
        assert!(s.get("root").await.unwrap().is_some());

        // An edited default survives ensure_default.
        s.set("default", &rule("x", r#""read""#)).await.unwrap();
        s.ensure_default().await.unwrap();
        assert_eq!(
            s.get_text("default").await.unwrap().unwrap(),
            rule("x", r#""read""#)
        );

        let err = |r: Result<()>| match r {
            Err(CoreError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        };
        assert_eq!(
            err(s.delete("root").await),
            r#"cannot delete "root" policy"#
        );
        assert_eq!(
            err(s.delete("Default").await),
            "cannot delete default policy"
        );
        assert_eq!(
            err(s.set("root", &rule("x", r#""read""#)).await),
            r#"cannot update "root" policy"#
        );
        assert!(err(s.set("bad", r#"path "x" { capabilities = ["fly"] }"#).await).contains("fly"));
        assert!(
            s.get_text("bad").await.unwrap().is_none(),
            "a bad policy changes nothing"
        );

        s.delete("zeta").await.unwrap();
        s.delete("zeta").await.unwrap();
        assert_eq!(s.list().await.unwrap(), vec!["alpha", "default", "root"]);
    }

    #[tokio::test]
    async fn base64_policy_text_is_decoded() {
        use base64::Engine as _;
        let s = store().await;
        let text = rule("secret/*", r#""read""#);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
        s.set("b64", &encoded).await.unwrap();
        assert_eq!(s.get_text("b64").await.unwrap().unwrap(), text);
    }

    #[tokio::test]
    async fn acl_for_ignores_unknown_names_and_sees_writes() {
        let s = store().await;
        s.ensure_default().await.unwrap();
        let names = vec!["default".to_string(), "app".to_string()];
        let a = s.acl_for(&names).await.unwrap();
        assert!(a.check("auth/token/lookup-self", Operation::Read).allowed);
        assert!(!a.check("secret/data/x", Operation::Read).allowed);

        s.set("app", &rule("secret/data/*", r#""read""#))
            .await
            .unwrap();
        let a = s.acl_for(&names).await.unwrap();
        assert!(a.check("secret/data/x", Operation::Read).allowed);

        s.set("app", &rule("secret/data/*", r#""deny""#))
            .await
            .unwrap();
        let a = s.acl_for(&names).await.unwrap();
        assert!(!a.check("secret/data/x", Operation::Read).allowed);
        assert_eq!(
            s.get("app").await.unwrap().unwrap().rules()[0]
                .permissions
                .capabilities,
            Capabilities::DENY
        );

        s.delete("app").await.unwrap();
        s.set("app2", &rule("secret/data/*", r#""read""#))
            .await
            .unwrap();
        let a = s.acl_for(&names).await.unwrap();
        assert!(!a.check("secret/data/x", Operation::Read).allowed);

        let root = s.acl_for(&["root".to_string()]).await.unwrap();
        assert!(root.is_root());
    }

    #[tokio::test]
    async fn invalidate_forgets_writes_made_elsewhere() {
        let s = store().await;
        s.set("app", &rule("secret/*", r#""read""#)).await.unwrap();
        let names = vec!["app".to_string()];
        assert!(
            s.acl_for(&names)
                .await
                .unwrap()
                .check("secret/x", Operation::Read)
                .allowed
        );
        // Simulate a replicated write that bypasses this store.
        s.view
            .put("app", rule("secret/*", r#""deny""#).into_bytes())
            .await
            .unwrap();
        assert!(
            s.acl_for(&names)
                .await
                .unwrap()
                .check("secret/x", Operation::Read)
                .allowed
        );
        s.invalidate("app");
        assert!(
            !s.acl_for(&names)
                .await
                .unwrap()
                .check("secret/x", Operation::Read)
                .allowed
        );
    }

    fn view(
        entity: &str,
        name: &str,
        generation: u64,
        policies: &[&str],
    ) -> crate::identity::IdentityView {
        crate::identity::IdentityView {
            entity_id: entity.into(),
            generation,
            disabled: false,
            policies: policies.iter().map(|p| p.to_string()).collect(),
            template: crate::identity::template::TemplateInput {
                entity_id: entity.into(),
                entity_name: name.into(),
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn templated_paths_are_filled_per_entity_and_cached() {
        let s = store().await;
        s.set("plain", &rule("secret/data/static", r#""read""#))
            .await
            .unwrap();
        s.set(
            "tpl",
            "path \"secret/data/users/{{identity.entity.name}}/*\" { capabilities = [\"read\"] }\n\
             path \"secret/data/x/{{identity.entity.metadata.nope}}\" { capabilities = [\"read\"] }\n\
             path \"secret/data/static2\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
        let p = s.get("tpl").await.unwrap().unwrap();
        assert_eq!(p.rules().len(), 1);
        assert_eq!(p.templated_rules().len(), 2);

        // No entity: the templated paths are absent.
        let names = vec!["tpl".to_string()];
        let a = s.acl_for(&names).await.unwrap();
        assert!(a.is_templated());
        assert!(a.check("secret/data/static2", Operation::Read).allowed);
        assert!(
            !a.check("secret/data/users/alice/x", Operation::Read)
                .allowed
        );

        // With an entity: filled; the unresolvable path is dropped.
        let alice = view("e1", "alice", 1, &[]);
        let a = s.acl_for_identity(&names, &alice).await.unwrap();
        assert!(
            a.check("secret/data/users/alice/x", Operation::Read)
                .allowed
        );
        assert!(!a.check("secret/data/users/bob/x", Operation::Read).allowed);
        assert!(a.check("secret/data/static2", Operation::Read).allowed);
        // Cached until the identity generation moves on.
        let again = s.acl_for_identity(&names, &alice).await.unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let renamed = view("e1", "alice2", 2, &[]);
        let b = s.acl_for_identity(&names, &renamed).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(
            b.check("secret/data/users/alice2/x", Operation::Read)
                .allowed
        );
        assert!(
            !b.check("secret/data/users/alice/x", Operation::Read)
                .allowed
        );

        // Identity policies join the token's.
        let plain_names = vec!["default".to_string()];
        let with_plain = view("e2", "bob", 2, &["plain"]);
        let c = s.acl_for_identity(&plain_names, &with_plain).await.unwrap();
        assert!(c.check("secret/data/static", Operation::Read).allowed);

        // Fast path: nothing templated, nothing added by identity: the very
        // ACL the token's names compile to, shared.
        let nothing = view("e3", "carol", 2, &[]);
        let shared = s.acl_for(&["plain".to_string()]).await.unwrap();
        let d = s
            .acl_for_identity(&["plain".to_string()], &nothing)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&shared, &d));
        assert!(!d.is_templated());

        // A value that would widen the path refuses the ACL.
        let mut bad = view("e4", "a/b", 2, &[]);
        assert!(s.acl_for_identity(&names, &bad).await.is_err());
        bad.template.entity_name = "x*".into();
        assert!(s.acl_for_identity(&names, &bad).await.is_err());

        // A policy write forgets the per-entity ACLs.
        s.set("tpl", &rule("secret/data/other", r#""read""#))
            .await
            .unwrap();
        let e = s.acl_for_identity(&names, &alice).await.unwrap();
        assert!(
            !e.check("secret/data/users/alice/x", Operation::Read)
                .allowed
        );
        assert!(e.check("secret/data/other", Operation::Read).allowed);
    }

    #[test]
    fn unbalanced_templates_are_refused_at_parse_time() {
        let err = bad("path \"secret/{{identity.entity.id\" { capabilities = [\"read\"] }");
        assert_eq!(
            err,
            "failed to parse policy: path \"secret/{{identity.entity.id\": failed to validate policy templating: unbalanced templating characters"
        );
    }

    #[test]
    fn default_policy_lets_a_token_read_its_own_entity() {
        let p = Arc::new(Policy::parse(DEFAULT_POLICY, DEFAULT_POLICY_TEXT).unwrap());
        let input = crate::identity::template::TemplateInput {
            entity_id: "e-1".into(),
            entity_name: "alice".into(),
            ..Default::default()
        };
        let a = Acl::with_identity(std::slice::from_ref(&p), &input).unwrap();
        assert!(a.check("identity/entity/id/e-1", Operation::Read).allowed);
        assert!(
            a.check("identity/entity/name/alice", Operation::Read)
                .allowed
        );
        assert!(!a.check("identity/entity/id/e-2", Operation::Read).allowed);
        assert!(
            !Acl::new(&[p])
                .check("identity/entity/id/e-1", Operation::Read)
                .allowed
        );
    }
}
