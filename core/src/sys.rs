//! The `sys/` backend: seal control, mounts, policies, capabilities, audit
//! devices, metrics — and the unauthenticated endpoints (`sys/init`,
//! `sys/seal-status`, `sys/unseal`, `sys/health`, `sys/leader`) that Vault
//! serves before any token or seal check.
//!
//! Authenticated endpoints come through the normal pipeline (`Core::handle`)
//! as a [`Backend`] mounted at `sys/`, so ACLs and audit apply. The
//! unauthenticated ones are called by the HTTP layer through
//! [`unauthenticated`], and answer raw JSON (no envelope), as Vault's do.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::core::{Core, Unsealed};
use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, Operation as Op, PathSpec, Request, Response,
};
use crate::router::{MountConfig, MountEntry};

/// Reported as `version` in health and seal status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct SystemBackend {
    core: Weak<Core>,
    /// `sys/remount` moves done since unseal, by migration id: (from, to).
    /// A move is one mount-table write, so each is done when recorded.
    migrations: std::sync::Mutex<BTreeMap<String, (String, String)>>,
}

impl SystemBackend {
    pub fn new(core: Weak<Core>) -> Self {
        SystemBackend {
            core,
            migrations: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn core(&self) -> Result<Arc<Core>> {
        self.core
            .upgrade()
            .ok_or_else(|| CoreError::Unavailable("server is shutting down".into()))
    }
}

const MOUNT_FIELDS: &[F] = &[
    F::new("type", K::String),
    F::new("description", K::String),
    F::new("config", K::Map),
    F::new("options", K::StringMap),
    F::new("local", K::Bool),
    F::new("seal_wrap", K::Bool),
    F::new("external_entropy_access", K::Bool),
    F::new("plugin_name", K::String),
    F::new("plugin_version", K::String),
];

const TUNE_FIELDS: &[F] = &[
    F::new("default_lease_ttl", K::Duration),
    F::new("max_lease_ttl", K::Duration),
    F::new("description", K::String),
    F::new("options", K::StringMap),
    F::new("listing_visibility", K::String),
    F::new("force_no_cache", K::Bool),
    F::new("audit_non_hmac_request_keys", K::CommaStringSlice),
    F::new("audit_non_hmac_response_keys", K::CommaStringSlice),
    F::new("passthrough_request_headers", K::CommaStringSlice),
    F::new("user_lockout_config", K::Map),
];

const CAP_FIELDS: &[F] = &[
    F::new("token", K::String),
    F::new("accessor", K::String),
    F::new("path", K::CommaStringSlice),
    F::new("paths", K::CommaStringSlice),
];

// Route indices, in table order.
const R_SEAL: usize = 0;
const R_STEP_DOWN: usize = 1;
const R_ROTATE: usize = 2;
const R_KEY_STATUS: usize = 3;
const R_MOUNTS: usize = 4;
const R_MOUNT_TUNE: usize = 5;
const R_MOUNT: usize = 6;
const R_AUTHS: usize = 7;
const R_AUTH_TUNE: usize = 8;
const R_AUTH: usize = 9;
const R_UI_MOUNTS: usize = 10;
const R_UI_MOUNT: usize = 11;
const R_POLICY_LIST: usize = 12;
const R_POLICY: usize = 13;
const R_ACL_LIST: usize = 14;
const R_ACL: usize = 15;
const R_CAPS: usize = 16;
const R_CAPS_SELF: usize = 17;
const R_CAPS_ACCESSOR: usize = 18;
const R_AUDIT_LIST: usize = 19;
const R_AUDIT: usize = 20;
const R_AUDIT_HASH: usize = 21;
const R_LEADER: usize = 22;
const R_METRICS: usize = 23;
const R_AUDIT_QUERY: usize = 24;
const R_AUDIT_ROTATE: usize = 25;
const R_REMOUNT: usize = 26;
const R_REMOUNT_STATUS: usize = 27;
const R_SNAPSHOT_AUTO_LIST: usize = 28;
const R_SNAPSHOT_AUTO_CONFIG: usize = 29;
const R_SNAPSHOT_AUTO_STATUS: usize = 30;
const R_RAFT_CONFIGURATION: usize = 31;
const R_RAFT_REMOVE_PEER: usize = 32;
const R_HA_STATUS: usize = 33;
const R_AUDIT_TABLE: usize = 34;
const R_LOCKED_USERS: usize = 35;
const R_UNLOCK_USER: usize = 36;
const R_AUTOPILOT_STATE: usize = 37;
const R_AUTOPILOT_CONFIG: usize = 38;
const R_AUDIT_VERIFY: usize = 39;

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "seal",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Seal the server.",
    },
    PathSpec {
        pattern: "step-down",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Give up active status.",
    },
    PathSpec {
        pattern: "rotate",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Rotate the barrier encryption key.",
    },
    PathSpec {
        pattern: "key-status",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "Barrier key status.",
    },
    PathSpec {
        pattern: "mounts",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "List secrets engines.",
    },
    PathSpec {
        pattern: "mounts/(?P<path>.+?)/tune/?",
        operations: &[Op::Read, Op::Update],
        fields: TUNE_FIELDS,
        existence_check: false,
        help: "Tune a secrets engine.",
    },
    PathSpec {
        pattern: "mounts/(?P<path>.+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: MOUNT_FIELDS,
        existence_check: false,
        help: "Enable, read or disable a secrets engine.",
    },
    PathSpec {
        pattern: "auth",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "List auth methods.",
    },
    PathSpec {
        pattern: "auth/(?P<path>.+?)/tune/?",
        operations: &[Op::Read, Op::Update],
        fields: TUNE_FIELDS,
        existence_check: false,
        help: "Tune an auth method.",
    },
    PathSpec {
        pattern: "auth/(?P<path>.+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: MOUNT_FIELDS,
        existence_check: false,
        help: "Enable, read or disable an auth method.",
    },
    PathSpec {
        pattern: "internal/ui/mounts",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "Mounts visible to the token.",
    },
    PathSpec {
        pattern: "internal/ui/mounts/(?P<path>.+)",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "The mount owning a path.",
    },
    PathSpec {
        pattern: "policy/?",
        operations: &[Op::Read, Op::List],
        fields: &[],
        existence_check: false,
        help: "List policies (legacy).",
    },
    PathSpec {
        pattern: "policy/(?P<name>[^/]+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[F::new("rules", K::String), F::new("policy", K::String)],
        existence_check: false,
        help: "Read, write or delete a policy (legacy).",
    },
    PathSpec {
        pattern: "policies/acl/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List ACL policies.",
    },
    PathSpec {
        pattern: "policies/acl/(?P<name>[^/]+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[F::new("policy", K::String)],
        existence_check: false,
        help: "Read, write or delete an ACL policy.",
    },
    PathSpec {
        pattern: "capabilities",
        operations: &[Op::Update],
        fields: CAP_FIELDS,
        existence_check: false,
        help: "A token's capabilities on paths.",
    },
    PathSpec {
        pattern: "capabilities-self",
        operations: &[Op::Update],
        fields: CAP_FIELDS,
        existence_check: false,
        help: "The caller's capabilities on paths.",
    },
    PathSpec {
        pattern: "capabilities-accessor",
        operations: &[Op::Update],
        fields: CAP_FIELDS,
        existence_check: false,
        help: "An accessor's token's capabilities on paths.",
    },
    PathSpec {
        pattern: "audit",
        operations: &[Op::Read],
        fields: &[F::new("backlog", K::Bool)],
        existence_check: false,
        help: "List audit devices and sinks; backlog=true adds each one's backlog.",
    },
    PathSpec {
        pattern: "audit/(?P<path>.+)",
        operations: &[Op::Update, Op::Delete],
        fields: &[
            F::new("type", K::String),
            F::new("description", K::String),
            F::new("options", K::StringMap),
            F::new("local", K::Bool),
        ],
        existence_check: false,
        help: "Audit devices are declared in server config.",
    },
    PathSpec {
        pattern: "audit-hash/(?P<path>.+)",
        operations: &[Op::Update],
        fields: &[F::required("input", K::String)],
        existence_check: false,
        help: "Hash a string with an audit device's salt.",
    },
    PathSpec {
        pattern: "leader",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "HA leader information.",
    },
    PathSpec {
        pattern: "metrics",
        operations: &[Op::Read],
        fields: &[F::new("format", K::String)],
        existence_check: false,
        help: "Prometheus metrics; the HTTP layer renders the text after this authorizes and audits the call.",
    },
    PathSpec {
        pattern: "audit-query",
        operations: &[Op::Read],
        fields: &[
            F::required("path", K::String),
            F::new("since", K::String),
            F::new("until", K::String),
            F::new("operation", K::String),
            F::new("min_version", K::Int),
            F::new("max_key_version", K::Int),
            F::new("accessor", K::String),
            F::new("limit", K::Int),
            F::new("source", K::String),
            F::new("node", K::String),
        ],
        existence_check: false,
        help: "Which clients read a path, at which KV versions (or, for transit, under which key versions: max_key_version=N keeps the events that used a version <= N), in a time range: from the local audit log's index (on a cluster, every node's, merged; node=<node_id> asks one node), or from Elasticsearch (source=elasticsearch; node=<node_id> keeps that node's events).",
    },
    PathSpec {
        pattern: "audit-rotate",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Rotate the audit devices' outputs (seal the active segment of each local audit log and start a new one), as SIGHUP does. Needs sudo.",
    },
    PathSpec {
        pattern: "remount",
        operations: &[Op::Update],
        fields: &[F::new("from", K::String), F::new("to", K::String)],
        existence_check: false,
        help: "Move a mount to another path.",
    },
    PathSpec {
        pattern: "remount/status/(?P<migration_id>.+)",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "The outcome of a mount move.",
    },
    PathSpec {
        pattern: "storage/raft/snapshot-auto/config/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List the automated snapshot configurations.",
    },
    PathSpec {
        pattern: "storage/raft/snapshot-auto/config/(?P<name>.+)",
        operations: &[Op::Read, Op::Create, Op::Update, Op::Delete],
        fields: SNAPSHOT_AUTO_FIELDS,
        existence_check: false,
        help: "An automated snapshot configuration: when (interval or cron schedule), where (local directory or S3, plus an optional copy_to_* second S3 destination), how many to keep. Needs sudo.",
    },
    PathSpec {
        pattern: "storage/raft/snapshot-auto/status/(?P<name>.+)",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "The state of an automated snapshot configuration: its last snapshot, error and next start.",
    },
    PathSpec {
        pattern: "storage/raft/configuration",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "The Raft cluster's servers: node_id, address, leader, voter.",
    },
    PathSpec {
        pattern: "storage/raft/remove-peer",
        operations: &[Op::Update],
        fields: &[F::required("server_id", K::String)],
        existence_check: false,
        help: "Remove a server from the Raft cluster (on the active node).",
    },
    PathSpec {
        pattern: "ha-status",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "The cluster's nodes: addresses, which is active, when each last answered it.",
    },
    PathSpec {
        pattern: "audit-table",
        operations: &[Op::Read, Op::Delete],
        fields: &[],
        existence_check: false,
        help: "The cluster's audit device table (paths, types, option names); delete it before changing audit devices on every node.",
    },
    PathSpec {
        pattern: "locked-users",
        operations: &[Op::Read],
        fields: &[F::new("mount_accessor", K::String)],
        existence_check: false,
        help: "Aliases locked out after failed logins, by auth mount accessor.",
    },
    PathSpec {
        pattern: "locked-users/(?P<mount_accessor>[^/]+)/unlock/(?P<alias_identifier>.+)",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Lift a login lockout.",
    },
    // Autopilot (crate::autopilot).
    PathSpec {
        pattern: "storage/raft/autopilot/state",
        operations: &[Op::Read],
        fields: &[],
        existence_check: false,
        help: "Returns the state of the raft cluster under integrated storage as seen by autopilot.",
    },
    PathSpec {
        pattern: "storage/raft/autopilot/configuration",
        operations: &[Op::Read, Op::Update],
        fields: &[
            F::new("cleanup_dead_servers", K::Bool),
            F::new("last_contact_threshold", K::Duration),
            F::new("dead_server_last_contact_threshold", K::Duration),
            F::new("max_trailing_logs", K::Int),
            F::new("min_quorum", K::Int),
            F::new("server_stabilization_time", K::Duration),
            F::new("disable_upgrade_migration", K::Bool),
        ],
        existence_check: false,
        help: "Returns autopilot configuration.",
    },
    PathSpec {
        pattern: "audit-verify",
        operations: &[Op::Read],
        fields: &[F::new("node", K::String)],
        existence_check: false,
        help: "Check the local audit log of every node (or of `node`): CRCs, sequence gaps, records out of order, a torn tail, as `custos audit verify --dir` does on one directory. Needs sudo.",
    },
    // Key ceremonies (crate::ceremony), matched there by pattern.
    PathSpec {
        pattern: "generate-root-token/attempt",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[F::new("otp", K::String), F::new("pgp_key", K::String)],
        existence_check: false,
        help: "Read, start or cancel a root token generation.",
    },
    PathSpec {
        pattern: "generate-root-token/update",
        operations: &[Op::Update],
        fields: &[F::new("key", K::String), F::new("nonce", K::String)],
        existence_check: false,
        help: "Enter one key share towards a new root token.",
    },
    PathSpec {
        pattern: "decode-token",
        operations: &[Op::Update],
        fields: &[F::new("encoded_token", K::String), F::new("otp", K::String)],
        existence_check: false,
        help: "Decode a generated root token with its one-time password.",
    },
    PathSpec {
        pattern: "rotate/(?P<target>root|recovery)/init",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[
            F::new("secret_shares", K::Int),
            F::new("secret_threshold", K::Int),
            F::new("pgp_keys", K::CommaStringSlice),
            F::new("backup", K::Bool),
            F::new("require_verification", K::Bool),
        ],
        existence_check: false,
        help: "Read, start or cancel a rekey (new key shares).",
    },
    PathSpec {
        pattern: "rotate/(?P<target>root|recovery)/update",
        operations: &[Op::Update],
        fields: &[F::new("key", K::String), F::new("nonce", K::String)],
        existence_check: false,
        help: "Enter one current key share towards the rekey.",
    },
    PathSpec {
        pattern: "rotate/(?P<target>root|recovery)/verify",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: &[F::new("key", K::String), F::new("nonce", K::String)],
        existence_check: false,
        help: "Verify the new key shares of a rekey before they take effect.",
    },
    PathSpec {
        pattern: "wrapping/wrap",
        operations: &[Op::Update],
        fields: &[],
        existence_check: false,
        help: "Wrap the request body in a response-wrapping token (needs X-Vault-Wrap-TTL).",
    },
    PathSpec {
        pattern: "wrapping/unwrap",
        operations: &[Op::Update],
        fields: &[F::new("token", K::String)],
        existence_check: false,
        help: "Unwrap a response-wrapping token (the client token, or `token`): once.",
    },
    PathSpec {
        pattern: "wrapping/rewrap",
        operations: &[Op::Update],
        fields: &[F::new("token", K::String)],
        existence_check: false,
        help: "Move a wrapped response to a new wrapping token with the same TTL.",
    },
];

/// `snapshot-auto/config/:name`'s fields (see [`crate::snapshot_auto`]);
/// their meaning belongs to the snapshot agent.
const SNAPSHOT_AUTO_FIELDS: &[F] = &[
    F::new("interval", K::Duration),
    F::new("schedule", K::String),
    F::new("timezone", K::String),
    F::new("retain", K::Int),
    F::new("path_prefix", K::String),
    F::new("file_prefix", K::String),
    F::new("storage_type", K::String),
    F::new("local_max_space", K::Int),
    F::new("aws_s3_bucket", K::String),
    F::new("aws_s3_region", K::String),
    F::new("aws_s3_endpoint", K::String),
    F::new("aws_s3_disable_tls", K::Bool),
    F::new("aws_s3_force_path_style", K::Bool),
    F::new("aws_s3_enable_kms", K::Bool),
    F::new("aws_s3_kms_key", K::String),
    F::new("aws_s3_server_side_encryption", K::Bool),
    F::new("aws_access_key_id", K::String),
    F::new("aws_secret_access_key", K::String),
    F::new("aws_session_token", K::String),
    F::new("copy_to_path_prefix", K::String),
    F::new("copy_to_aws_s3_bucket", K::String),
    F::new("copy_to_aws_s3_region", K::String),
    F::new("copy_to_aws_s3_endpoint", K::String),
    F::new("copy_to_aws_s3_disable_tls", K::Bool),
    F::new("copy_to_aws_s3_force_path_style", K::Bool),
    F::new("copy_to_aws_s3_server_side_encryption", K::Bool),
    F::new("copy_to_aws_access_key_id", K::String),
    F::new("copy_to_aws_secret_access_key", K::String),
];

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn normalize_mount_path(p: &str) -> String {
    let p = p.trim_matches('/');
    format!("{p}/")
}

/// The JSON Vault shows for a mount entry in `sys/mounts` and `sys/auth`.
pub fn mount_json(e: &MountEntry) -> Value {
    let options = if e.options.is_empty() && !e.options_set {
        Value::Null
    } else {
        json!(e.options)
    };
    let mut config = json!({
        "default_lease_ttl": e.config.default_lease_ttl,
        "max_lease_ttl": e.config.max_lease_ttl,
        "force_no_cache": e.config.force_no_cache,
    });
    if !e.config.passthrough_request_headers.is_empty() {
        config["passthrough_request_headers"] = json!(e.config.passthrough_request_headers);
    }
    if e.is_auth() {
        // Auth methods issue service tokens unless tuned otherwise (no
        // batch tokens yet), and OpenBao says so.
        config["token_type"] = json!("default-service");
    }
    let mut v = json!({
        "accessor": e.accessor,
        "config": config,
        "description": e.description,
        "external_entropy_access": false,
        "local": e.local,
        "options": options,
        "plugin_version": "",
        "running_plugin_version": format!("v{VERSION}+builtin.custos"),
        "running_sha256": "",
        "seal_wrap": e.seal_wrap,
        "type": e.mount_type,
        "uuid": e.uuid,
    });
    // Engines OpenBao ships as built-in plugins carry a deprecation status;
    // the core mounts (sys, identity, cubbyhole, token) do not.
    if matches!(e.mount_type.as_str(), "kv" | "transit") {
        v["deprecation_status"] = json!("supported");
    }
    v
}

fn tune_json(e: &MountEntry, core: &Core) -> Value {
    let dl = if e.config.default_lease_ttl > 0 {
        e.config.default_lease_ttl
    } else {
        core.opts.default_lease_ttl
    };
    let ml = if e.config.max_lease_ttl > 0 {
        e.config.max_lease_ttl
    } else {
        core.opts.max_lease_ttl
    };
    let mut v = json!({
        "default_lease_ttl": dl,
        "max_lease_ttl": ml,
        "force_no_cache": e.config.force_no_cache,
        "description": e.description,
    });
    if !e.options.is_empty() {
        v["options"] = json!(e.options);
    }
    if !e.config.listing_visibility.is_empty() {
        v["listing_visibility"] = json!(e.config.listing_visibility);
    }
    if !e.config.passthrough_request_headers.is_empty() {
        v["passthrough_request_headers"] = json!(e.config.passthrough_request_headers);
    }
    if e.is_auth() {
        v["token_type"] = json!("default-service");
    }
    v
}

/// The `options.version` change a tune asks for, checked as OpenBao checks
/// it: an integer, 1 or 2, never lower than the mount's. Returns the upgrade
/// warning when the version goes up, `None` when it stays.
fn tune_version(entry: &MountEntry, new: &str) -> Result<Option<String>> {
    let parse = |v: &str| -> Result<i64> {
        if v.is_empty() {
            return Ok(0);
        }
        v.parse::<i64>().map_err(|_| {
            CoreError::bad_request(format!(
                "unable to parse options: strconv.ParseInt: parsing {v:?}: invalid syntax"
            ))
        })
    };
    let new_version = parse(new)?;
    if !matches!(new_version, 1 | 2) {
        return Err(CoreError::bad_request(format!(
            "invalid version provided: {new_version}"
        )));
    }
    let old_version = parse(entry.options.get("version").map_or("", String::as_str))?;
    if new_version < old_version {
        return Err(CoreError::bad_request(format!(
            "cannot downgrade mount from version {old_version}"
        )));
    }
    if new_version == old_version {
        return Ok(None);
    }
    // A mount without a version is KV version 1.
    Ok(Some(format!(
        "Upgrading mount from version {} to version {new_version}. This mount will be unavailable for a brief period and will resume service shortly.",
        old_version.max(1)
    )))
}

#[async_trait]
impl Backend for SystemBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    /// Capability checks and audit hashes are `POST`s that change nothing.
    fn is_pure(&self, route: usize, _req: &crate::logical::Request) -> bool {
        matches!(route, R_CAPS | R_CAPS_SELF | R_CAPS_ACCESSOR | R_AUDIT_HASH)
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let core = self.core()?;
        // `sys/wrapping/*` (the rows at the end of PATHS): crate::wrapping.
        if PATHS
            .get(ctx.route)
            .is_some_and(|p| p.pattern.starts_with("wrapping/"))
        {
            return crate::wrapping::handle_sys(&*core.unsealed()?, &ctx).await;
        }
        let f = ctx.fields;
        let op = ctx.req.operation;
        match ctx.route {
            R_SEAL => {
                core.seal_now().await?;
                Ok(None)
            }
            // Hands leadership over (crate::cluster); a node alone is
            // active anyway, as in Vault.
            R_STEP_DOWN => {
                if let Some(cluster) = core.cluster() {
                    cluster.step_down().await?;
                }
                Ok(None)
            }
            // The cluster's audit device table (crate::audit): read shows
            // paths, types and option names (never values); delete lets the
            // nodes' changed configs take over (the active node records its
            // own when it next unseals or becomes active).
            R_AUDIT_TABLE => {
                let u = core.unsealed()?;
                if op == Op::Delete {
                    u.system.delete(crate::audit::AUDIT_TABLE_KEY).await?;
                    return Ok(None);
                }
                let stored: Vec<crate::config::AuditDeviceConfig> = u
                    .system
                    .get_json(crate::audit::AUDIT_TABLE_KEY)
                    .await?
                    .unwrap_or_default();
                let devices: Vec<Value> = stored
                    .iter()
                    .map(|d| {
                        json!({
                            "path": d.path,
                            "type": d.kind.as_str(),
                            "local": d.local,
                            "options": d.options.keys().collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(Some(Response::data(obj(json!({"devices": devices})))))
            }
            R_HA_STATUS => {
                let raft = core
                    .raft()
                    .ok_or_else(|| CoreError::bad_request("this server has no Raft storage"))?;
                Ok(Some(Response::data(crate::cluster::ha_status(raft))))
            }
            R_ROTATE => {
                core.rotate_barrier().await?;
                Ok(None)
            }
            R_LOCKED_USERS => {
                let u = core.unsealed()?;
                Ok(Some(Response::data(
                    u.lockout.list(f.str("mount_accessor")).await?,
                )))
            }
            R_UNLOCK_USER => {
                let u = core.unsealed()?;
                let accessor = f.capture("mount_accessor").unwrap_or_default();
                let alias = f.capture("alias_identifier").unwrap_or_default();
                u.lockout.unlock(accessor, alias).await?;
                Ok(None)
            }
            R_KEY_STATUS => Ok(Some(Response::from_serialize(&core.barrier.key_status()?)?)),
            R_MOUNTS | R_AUTHS => {
                let auth = ctx.route == R_AUTHS;
                let u = core.unsealed()?;
                let mut data = Map::new();
                for e in u.router.entries().iter().filter(|e| e.is_auth() == auth) {
                    let key = if auth {
                        e.path.trim_start_matches("auth/").to_string()
                    } else {
                        e.path.clone()
                    };
                    data.insert(key, mount_json(e));
                }
                Ok(Some(Response::data(data)))
            }
            R_MOUNT | R_AUTH => {
                let auth = ctx.route == R_AUTH;
                let rel = normalize_mount_path(f.capture("path").unwrap_or_default());
                let path = if auth { format!("auth/{rel}") } else { rel };
                let u = core.unsealed()?;
                match op {
                    Op::Read => match u.router.get(&path) {
                        Some(m) => Ok(Some(Response::data(obj(mount_json(&m.entry))))),
                        None => Err(CoreError::bad_request(format!(
                            "No secret engine mount at {path}"
                        ))),
                    },
                    Op::Delete => {
                        core.unmount(&path).await?;
                        Ok(None)
                    }
                    _ => {
                        let mut mount_type = f.str("type").unwrap_or_default().to_string();
                        if mount_type.is_empty() {
                            return Err(CoreError::bad_request(
                                "backend type must be specified as a string",
                            ));
                        }
                        let mut options: BTreeMap<String, String> =
                            f.string_map("options").unwrap_or_default();
                        // OpenBao shows `options: {}` for a mount enabled
                        // without `options`, and `null` when sent as null.
                        let options_set = !matches!(ctx.req.data.get("options"), Some(Value::Null));
                        // `kv` without a version is KV v1, as in Vault;
                        // `kv-v2` is `kv` with version 2 whatever was asked.
                        if mount_type == "kv-v2" {
                            mount_type = "kv".into();
                            options.insert("version".into(), "2".into());
                        }
                        if !auth && path.starts_with("auth/") {
                            return Err(CoreError::bad_request(format!("cannot mount {path:?}")));
                        }
                        if auth && !crate::auth::METHOD_TYPES.contains(&mount_type.as_str()) {
                            return Err(CoreError::bad_request(format!(
                                "plugin not found in the catalog: {mount_type}"
                            )));
                        }
                        let mut entry = MountEntry::new(
                            &path,
                            &mount_type,
                            f.str("description").unwrap_or_default(),
                        );
                        entry.options = options;
                        entry.options_set = options_set;
                        entry.local = f.bool("local").unwrap_or(false);
                        entry.seal_wrap = f.bool("seal_wrap").unwrap_or(false);
                        if let Some(cfg) = f.map("config") {
                            entry.config = parse_mount_config(cfg)?;
                        }
                        core.mount(entry).await?;
                        Ok(None)
                    }
                }
            }
            R_MOUNT_TUNE | R_AUTH_TUNE => {
                let auth = ctx.route == R_AUTH_TUNE;
                let rel = normalize_mount_path(f.capture("path").unwrap_or_default());
                let path = if auth { format!("auth/{rel}") } else { rel };
                let u = core.unsealed()?;
                let Some(m) = u.router.get(&path) else {
                    // OpenBao's words, which differ for a read and a write.
                    return Err(CoreError::bad_request(if op == Op::Read {
                        format!("cannot fetch sysview for path {path:?}")
                    } else {
                        format!("tune of path {path:?} failed: no mount entry found")
                    }));
                };
                if op == Op::Read {
                    return Ok(Some(Response::data(obj(tune_json(&m.entry, &core)))));
                }
                let mut entry = m.entry.clone();
                if let Some(v) = f.duration_secs("default_lease_ttl") {
                    entry.config.default_lease_ttl = v;
                }
                if let Some(v) = f.duration_secs("max_lease_ttl") {
                    entry.config.max_lease_ttl = v;
                }
                if entry.config.max_lease_ttl > 0
                    && entry.config.default_lease_ttl > entry.config.max_lease_ttl
                {
                    return Err(CoreError::bad_request(
                        "backend max lease TTL cannot be less than default lease TTL",
                    ));
                }
                if let Some(d) = f.str("description") {
                    entry.description = d.to_string();
                }
                if let Some(b) = f.bool("force_no_cache") {
                    entry.config.force_no_cache = b;
                }
                if let Some(v) = f.str("listing_visibility") {
                    if !matches!(v, "" | "hidden" | "unauth") {
                        return Err(CoreError::bad_request("invalid listing_visibility"));
                    }
                    entry.config.listing_visibility = v.to_string();
                }
                let mut warning = None;
                if let Some(opts) = f.string_map("options") {
                    // A version going up is Vault's in-place upgrade (KV
                    // v1 → v2: the core rebuilds the backend, which moves
                    // the data); going down is refused.
                    if let Some(new) = opts.get("version") {
                        warning = tune_version(&entry, new)?;
                    }
                    entry.options.extend(opts);
                }
                if let Some(v) = f.strings("audit_non_hmac_request_keys") {
                    entry.config.audit_non_hmac_request_keys = v;
                }
                if let Some(v) = f.strings("audit_non_hmac_response_keys") {
                    entry.config.audit_non_hmac_response_keys = v;
                }
                if let Some(v) = f.strings("passthrough_request_headers") {
                    entry.config.passthrough_request_headers = v;
                }
                if let Some(v) = f.map("user_lockout_config") {
                    if !entry.is_auth() {
                        return Err(CoreError::bad_request(
                            "user lockout config is only supported for auth methods",
                        ));
                    }
                    entry.config.user_lockout_config = Some(parse_lockout_tune(v)?);
                }
                core.update_mount(entry).await?;
                Ok(warning.map(|w| Response::default().with_warning(w)))
            }
            R_REMOUNT => {
                let (from, to) = match (f.str("from"), f.str("to")) {
                    (Some(from), Some(to)) if !from.is_empty() && !to.is_empty() => {
                        (normalize_mount_path(from), normalize_mount_path(to))
                    }
                    _ => {
                        return Err(CoreError::bad_request(
                            "both 'from' and 'to' path must be specified as a string",
                        ));
                    }
                };
                core.remount(&from, &to).await?;
                let id = uuid::Uuid::new_v4().to_string();
                tracing::info!(migration_id = %id, from = %from, to = %to, "mount moved");
                if let Ok(mut m) = self.migrations.lock() {
                    m.insert(id.clone(), (from, to));
                }
                let mut r = Response::data(obj(json!({ "migration_id": id })));
                r.warnings.push(
                    "Mount move has been queued. Progress will be reported in the server log, tagged with the returned migration_id".into(),
                );
                Ok(Some(r))
            }
            R_REMOUNT_STATUS => {
                let id = f.capture("migration_id").unwrap_or_default();
                let found = self.migrations.lock().ok().and_then(|m| m.get(id).cloned());
                Ok(found.map(|(from, to)| {
                    Response::data(obj(json!({
                        "migration_id": id,
                        "migration_info": {
                            "source_mount": from,
                            "target_mount": to,
                            "status": "success",
                        },
                    })))
                }))
            }
            R_SNAPSHOT_AUTO_LIST => {
                let names = crate::snapshot_auto::list(&core).await?;
                if names.is_empty() {
                    return Ok(None);
                }
                Response::list(names)
            }
            R_SNAPSHOT_AUTO_CONFIG => {
                let name = f.capture("name").unwrap_or_default();
                match op {
                    Op::Read => Ok(crate::snapshot_auto::read(&core, name)
                        .await?
                        .map(Response::data)),
                    Op::Delete => {
                        crate::snapshot_auto::delete(&core, name).await?;
                        Ok(None)
                    }
                    _ => {
                        crate::snapshot_auto::write(&core, name, f.raw()).await?;
                        Ok(None)
                    }
                }
            }
            R_RAFT_CONFIGURATION => {
                let raft = core
                    .raft()
                    .ok_or_else(|| CoreError::bad_request("this server has no Raft storage"))?;
                Ok(Some(Response::data(crate::cluster::configuration(raft))))
            }
            R_AUTOPILOT_STATE => Ok(crate::autopilot::read_state(&core)
                .await?
                .map(Response::data)),
            R_AUTOPILOT_CONFIG => {
                core.raft()
                    .ok_or_else(|| CoreError::bad_request("raft storage is not in use"))?;
                if op == Op::Read {
                    return Ok(Some(Response::data(
                        crate::autopilot::read_config(&core).await?,
                    )));
                }
                crate::autopilot::write_config(&core, f).await?;
                Ok(None)
            }
            R_RAFT_REMOVE_PEER => {
                let raft = core
                    .raft()
                    .ok_or_else(|| CoreError::bad_request("this server has no Raft storage"))?;
                let server_id = f.str("server_id").unwrap_or_default();
                crate::cluster::remove_peer(raft, server_id).await?;
                Ok(None)
            }
            R_SNAPSHOT_AUTO_STATUS => {
                let name = f.capture("name").unwrap_or_default();
                Ok(crate::snapshot_auto::status(&core, name)
                    .await?
                    .map(Response::data))
            }
            R_UI_MOUNTS => {
                let u = core.unsealed()?;
                let mut secret = Map::new();
                let mut auth = Map::new();
                for e in u.router.entries() {
                    if e.is_auth() {
                        auth.insert(
                            e.path.trim_start_matches("auth/").to_string(),
                            mount_json(&e),
                        );
                    } else {
                        secret.insert(e.path.clone(), mount_json(&e));
                    }
                }
                Ok(Some(Response::data(obj(
                    json!({"secret": secret, "auth": auth}),
                ))))
            }
            R_UI_MOUNT => {
                let u = core.unsealed()?;
                let path = f.capture("path").unwrap_or_default();
                let Some((m, _)) = u.router.route(path) else {
                    let asked = format!("{}/", path.trim_end_matches('/'));
                    return Err(CoreError::Forbidden(format!(
                        "preflight capability check returned 403, please ensure client's policies grant access to path {asked:?}"
                    )));
                };
                let mut v = mount_json(&m.entry);
                v["path"] = json!(m.entry.path);
                Ok(Some(Response::data(obj(v))))
            }
            R_POLICY_LIST | R_ACL_LIST => {
                let u = core.unsealed()?;
                let names = u.policies.list().await?;
                let mut data = Map::new();
                if ctx.route == R_POLICY_LIST {
                    data.insert("policies".into(), json!(names));
                }
                data.insert("keys".into(), json!(names));
                Ok(Some(Response::data(data)))
            }
            R_POLICY | R_ACL => {
                let u = core.unsealed()?;
                let name = f.capture("name").unwrap_or_default().to_lowercase();
                match op {
                    Op::Read => match u.policies.get_text(&name).await? {
                        None => Ok(None),
                        Some(text) => {
                            let key = if ctx.route == R_POLICY {
                                "rules"
                            } else {
                                "policy"
                            };
                            Ok(Some(Response::data(obj(json!({"name": name, key: text})))))
                        }
                    },
                    Op::Delete => {
                        u.policies.delete(&name).await?;
                        Ok(None)
                    }
                    _ => {
                        let text = f
                            .str("policy")
                            .or_else(|| f.str("rules"))
                            .unwrap_or_default();
                        if text.trim().is_empty() {
                            return Err(CoreError::bad_request(
                                "'policy' parameter not supplied or empty",
                            ));
                        }
                        u.policies.set(&name, text).await?;
                        Ok(None)
                    }
                }
            }
            R_CAPS | R_CAPS_SELF | R_CAPS_ACCESSOR => {
                let u = core.unsealed()?;
                let mut paths = f.strings("paths").unwrap_or_default();
                paths.extend(f.strings("path").unwrap_or_default());
                if paths.is_empty() {
                    return Err(CoreError::bad_request("paths must be supplied"));
                }
                let entry = match ctx.route {
                    R_CAPS_SELF => ctx.req.auth.as_deref().cloned(),
                    R_CAPS => {
                        let t = f.str("token").unwrap_or_default();
                        if t.is_empty() {
                            return Err(CoreError::bad_request("missing token"));
                        }
                        u.tokens.lookup(t).await?
                    }
                    _ => {
                        let a = f.str("accessor").unwrap_or_default();
                        if a.is_empty() {
                            return Err(CoreError::bad_request("missing accessor"));
                        }
                        Some(
                            u.tokens
                                .lookup_accessor(a)
                                .await?
                                .ok_or_else(|| CoreError::bad_request("invalid accessor"))?,
                        )
                    }
                };
                let acl = match &entry {
                    Some(e) => crate::identity::token_acl(&u, e).await?,
                    None => return Err(CoreError::bad_request("invalid token")),
                };
                let mut data = Map::new();
                let mut last = Value::Null;
                for p in &paths {
                    let caps = json!(acl.capabilities(p.trim_start_matches('/')));
                    data.insert(p.clone(), caps.clone());
                    last = caps;
                }
                if paths.len() == 1 {
                    data.insert("capabilities".into(), last);
                }
                Ok(Some(Response::data(data)))
            }
            R_AUDIT_LIST => {
                // Devices and sinks (kafka, elasticsearch). With
                // `?backlog=true` each gets its `backlog`: the local log's
                // state for a file device; records, bytes, lag_seconds,
                // checkpoint and health for a sink. Opt-in, so the default
                // entry keeps exactly Vault's keys.
                let u = core.unsealed()?;
                let with_backlog = f.bool("backlog").unwrap_or(false);
                let mut data = Map::new();
                for d in u.audit.list() {
                    let mut v = serde_json::to_value(&d).map_err(CoreError::internal)?;
                    let backlog = if with_backlog {
                        u.audit.backlog(&d.path)
                    } else {
                        None
                    };
                    if let (Some(b), Value::Object(m)) = (backlog, &mut v) {
                        m.insert(
                            "backlog".into(),
                            serde_json::to_value(&b).map_err(CoreError::internal)?,
                        );
                    }
                    data.insert(d.path.clone(), v);
                }
                Ok(Some(Response::data(data)))
            }
            R_AUDIT_ROTATE => {
                // Root-protected like sys/audit: the caller needs sudo here.
                let u = require_sudo(&core, ctx.req, "sys/audit-rotate").await?;
                let failures = u.audit.reopen_all().await;
                if let Some((path, e)) = failures.first() {
                    return Err(CoreError::Internal(format!(
                        "audit device {path:?} could not be rotated: {e}"
                    )));
                }
                Ok(None)
            }
            R_AUDIT => {
                let path = normalize_mount_path(f.capture("path").unwrap_or_default());
                if op == Op::Delete {
                    // Configured devices cannot be removed; removing nothing is a no-op.
                    let u = core.unsealed()?;
                    return if u.audit.contains(&path) {
                        Err(CoreError::bad_request(
                            "cannot disable configuration-managed audit device",
                        ))
                    } else {
                        Ok(None)
                    };
                }
                Err(CoreError::bad_request(
                    "cannot enable audit device via API; use declarative, config-based audit device management instead",
                ))
            }
            R_AUDIT_HASH => {
                let u = core.unsealed()?;
                let path = normalize_mount_path(f.capture("path").unwrap_or_default());
                let input = f.str("input").unwrap_or_default();
                let hash = u.audit.hash(&path, input).ok_or_else(|| {
                    CoreError::bad_request(format!("unknown audit backend {path}"))
                })?;
                Ok(Some(Response::data(obj(json!({ "hash": hash })))))
            }
            R_LEADER => Ok(Some(Response::data(leader_json(&core)))),
            R_METRICS => Ok(Some(Response::default())),
            R_AUDIT_QUERY => {
                use custos_audit::query::{QueryParams, Source, kv2_data_path, parse_time_param};
                let u = core.unsealed()?;
                let service = u.audit_query.get().cloned().ok_or_else(|| {
                    CoreError::bad_request(
                        "audit query needs a file audit device (the local audit log)",
                    )
                })?;
                let path = f.str("path").unwrap_or_default().trim_start_matches('/');
                // A KV v2 logical path (`secret/app/db`) means its data path.
                let path = match u.router.route(path) {
                    Some((m, _))
                        if m.entry.mount_type == "kv"
                            && m.entry.options.get("version").map(String::as_str) == Some("2") =>
                    {
                        kv2_data_path(&m.entry.path, path)
                    }
                    _ => path.to_owned(),
                };
                let mut q = QueryParams::new(path);
                let time = |name: &str| -> Result<Option<i64>> {
                    match f.str(name).filter(|s| !s.is_empty()) {
                        None => Ok(None),
                        Some(s) => parse_time_param(s).map(Some).ok_or_else(|| {
                            CoreError::bad_request(format!(
                                "invalid {name:?}: expected RFC 3339 or unix seconds"
                            ))
                        }),
                    }
                };
                if let Some(t) = time("since")? {
                    q.since = t;
                }
                if let Some(t) = time("until")? {
                    q.until = t;
                }
                if let Some(op) = f.str("operation").filter(|s| !s.is_empty()) {
                    q.operation = op.to_owned();
                }
                if let Some(v) = f.int("min_version") {
                    q.min_version = Some(u64::try_from(v).map_err(|_| {
                        CoreError::bad_request("\"min_version\" must not be negative")
                    })?);
                }
                if let Some(v) = f.int("max_key_version") {
                    q.max_key_version = Some(u64::try_from(v).map_err(|_| {
                        CoreError::bad_request("\"max_key_version\" must not be negative")
                    })?);
                }
                if let Some(l) = f.int("limit") {
                    q.limit = usize::try_from(l).unwrap_or(0);
                }
                if let Some(acc) = f.str("accessor").filter(|s| !s.is_empty()) {
                    // The log holds accessors HMAC'd with the device's salt
                    // (or raw with hmac_accessor=false): match either.
                    q.accessors.push(acc.to_owned());
                    if !acc.starts_with("hmac-sha256:")
                        && let Some(h) = u.audit.hash(service.device(), acc)
                    {
                        q.accessors.push(h);
                    }
                }
                let source = Source::parse(f.str("source").unwrap_or_default())
                    .map_err(|e| CoreError::bad_request(e.to_string()))?;
                let node = f.str("node").filter(|s| !s.is_empty()).map(str::to_owned);
                if source == Source::Elasticsearch {
                    q.node = node;
                    let answer = service
                        .query(q, source)
                        .await
                        .map_err(crate::audit_nodes::query_error)?;
                    return Ok(Some(Response::data(obj(
                        serde_json::to_value(&answer).map_err(CoreError::internal)?
                    ))));
                }
                // The local logs: this node's, or every node's on a cluster.
                let forwarded = |name: &'static str| f.str(name).map(|v| (name, v.to_owned()));
                let mut params: Vec<(&str, String)> =
                    ["path", "since", "until", "operation", "accessor"]
                        .into_iter()
                        .filter_map(forwarded)
                        .collect();
                for name in ["min_version", "max_key_version"] {
                    if let Some(v) = f.int(name) {
                        params.push((name, v.to_string()));
                    }
                }
                crate::audit_nodes::query(&core, ctx.req, &service, q, node, params).await
            }
            R_AUDIT_VERIFY => {
                // Root-protected like sys/audit-rotate: the caller needs sudo.
                require_sudo(&core, ctx.req, "sys/audit-verify").await?;
                let node = f.str("node").filter(|s| !s.is_empty()).map(str::to_owned);
                crate::audit_nodes::verify(&core, ctx.req, node).await
            }
            r if crate::ceremony::SYS_PATTERNS.contains(&PATHS[r].pattern) => {
                crate::ceremony::handle_sys(&core, PATHS[r].pattern, &ctx).await
            }
            _ => Err(CoreError::UnsupportedOperation),
        }
    }
}

/// A tune's `user_lockout_config`: durations as seconds or Go strings,
/// the threshold as a number or numeric string, as Vault reads them.
fn parse_lockout_tune(cfg: &Map<String, Value>) -> Result<crate::auth::lockout::LockoutTune> {
    let mut t = crate::auth::lockout::LockoutTune::default();
    for (k, v) in cfg {
        let num = || -> Option<i64> {
            match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => crate::logical::parse_duration(s),
                _ => None,
            }
        };
        let bad = || CoreError::bad_request(format!("user_lockout_config: invalid {k}"));
        match k.as_str() {
            "lockout_threshold" => {
                t.lockout_threshold =
                    Some(num().and_then(|n| u64::try_from(n).ok()).ok_or_else(bad)?)
            }
            "lockout_duration" => t.lockout_duration = Some(num().ok_or_else(bad)?),
            "lockout_counter_reset" => t.lockout_counter_reset = Some(num().ok_or_else(bad)?),
            "lockout_disable" => {
                t.lockout_disable = Some(match v {
                    Value::Bool(b) => *b,
                    Value::String(s) => s.parse().map_err(|_| bad())?,
                    _ => return Err(bad()),
                })
            }
            _ => {
                return Err(CoreError::bad_request(format!(
                    "user_lockout_config: unknown field {k:?}"
                )));
            }
        }
    }
    Ok(t)
}

fn parse_mount_config(cfg: &Map<String, Value>) -> Result<MountConfig> {
    let mut c = MountConfig::default();
    for (k, v) in cfg {
        let dur = || -> Result<i64> {
            match v {
                Value::Number(n) => n
                    .as_i64()
                    .ok_or_else(|| CoreError::bad_request(format!("invalid {k}"))),
                Value::String(s) => crate::logical::parse_duration(s).ok_or_else(|| {
                    CoreError::bad_request(format!("invalid duration for {k}: {s:?}"))
                }),
                _ => Err(CoreError::bad_request(format!("invalid {k}"))),
            }
        };
        match k.as_str() {
            "default_lease_ttl" => c.default_lease_ttl = dur()?,
            "max_lease_ttl" => c.max_lease_ttl = dur()?,
            "force_no_cache" => c.force_no_cache = v.as_bool().unwrap_or(false),
            "listing_visibility" => {
                c.listing_visibility = v.as_str().unwrap_or_default().to_string()
            }
            _ => {}
        }
    }
    Ok(c)
}

fn leader_json(core: &Core) -> Map<String, Value> {
    let (committed, applied) = core
        .raft()
        .map(|r| {
            let s = r.status();
            (
                s.last_log_index.unwrap_or(0),
                s.last_applied_index.unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    // The active node's addresses from the Raft membership; this node's own
    // when the membership does not say (one-node clusters from before).
    let leader_address = core
        .raft()
        .and_then(|r| crate::cluster::leader_api_addr(r))
        .unwrap_or_else(|| core.opts.api_addr.clone());
    let leader_cluster_address = core
        .raft()
        .and_then(|r| crate::cluster::leader_cluster_addr(r))
        .unwrap_or_else(|| core.opts.cluster_addr.clone());
    obj(json!({
        "ha_enabled": core.raft().is_some(),
        "is_self": core.is_active(),
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": leader_address,
        "leader_cluster_address": leader_cluster_address,
        "performance_standby": false,
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": committed,
        "raft_applied_index": applied,
    }))
}

fn cluster_id(core: &Core) -> String {
    // Stable per cluster name; Vault uses a random id stored at init.
    let h = sha2_hex(core.opts.cluster_name.as_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn sha2_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

async fn seal_status(core: &Core) -> Result<Map<String, Value>> {
    let mut cfg = core.seal_config().await?;
    if cfg.is_none() {
        // A node waiting to join reports the cluster's seal (crate::cluster).
        cfg = core.cluster().and_then(|c| c.joining_seal());
    }
    let (progress, nonce) = core.seal.progress();
    let sealed = core.is_sealed();
    let mut v = json!({
        "type": "shamir",
        "initialized": cfg.is_some(),
        "sealed": sealed,
        "t": cfg.as_ref().map(|c| c.secret_threshold).unwrap_or(0),
        "n": cfg.as_ref().map(|c| c.secret_shares).unwrap_or(0),
        "progress": progress,
        "nonce": nonce,
        "version": VERSION,
        "commit_date": "",
        "migration": false,
        "recovery_seal": false,
        "storage_type": "raft",
    });
    // An auto seal reports its type and the recovery key's t/n; a pending
    // seal migration, the keys it takes (crate::autoseal).
    if let Some(a) = crate::autoseal::status_fields(core).await? {
        v["type"] = json!(a.seal_type);
        v["recovery_seal"] = json!(a.recovery_seal);
        if a.recovery_seal {
            v["recovery_seal_type"] = json!("shamir");
        }
        v["migration"] = json!(a.migration);
        if cfg.is_some() {
            v["t"] = json!(a.t);
            v["n"] = json!(a.n);
        }
    }
    if cfg.is_some() && !sealed {
        v["cluster_name"] = json!(core.opts.cluster_name);
        v["cluster_id"] = json!(cluster_id(core));
    }
    Ok(obj(v))
}

fn q_int(q: &Map<String, Value>, k: &str) -> Result<Option<u16>> {
    match q.get(k) {
        None => Ok(None),
        Some(v) => {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.parse::<u16>()
                .map(Some)
                .map_err(|_| CoreError::bad_request(format!("unable to parse {k} parameter: {s}")))
        }
    }
}

fn q_bool(q: &Map<String, Value>, k: &str) -> bool {
    match q.get(k) {
        Some(Value::String(s)) => matches!(s.as_str(), "" | "true" | "1" | "t" | "True" | "TRUE"),
        Some(Value::Bool(b)) => *b,
        Some(_) => false,
        None => false,
    }
}

async fn health(core: &Core, q: &Map<String, Value>) -> Result<Response> {
    let initialized = core.is_initialized().await?;
    let sealed = core.is_sealed();
    let standby = !sealed && !core.is_active();
    // An unsealed node whose audit log cannot record refuses every request
    // (fail closed): say so, so a load balancer stops sending them.
    let audit_failure = match core.unsealed() {
        Ok(u) if initialized => u.audit.health().err(),
        _ => None,
    };
    let code = if !initialized {
        q_int(q, "uninitcode")?.unwrap_or(501)
    } else if sealed {
        q_int(q, "sealedcode")?.unwrap_or(503)
    } else if audit_failure.is_some() {
        q_int(q, "auditfailcode")?.unwrap_or(503)
    } else if standby {
        // No performance standbys: `perfstandbyok` (a performance standby
        // may answer 200) changes nothing for a plain standby.
        if q_bool(q, "standbyok") {
            q_int(q, "activecode")?.unwrap_or(200)
        } else {
            q_int(q, "standbycode")?.unwrap_or(429)
        }
    } else {
        q_int(q, "activecode")?.unwrap_or(200)
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Vault reports a sealed node as standby with unknown replication modes.
    let replication = if sealed { "unknown" } else { "disabled" };
    let mut body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby || sealed,
        "replication_performance_mode": replication,
        "replication_dr_mode": replication,
        "server_time_utc": now,
        "version": VERSION,
    });
    // OpenBao 2.7.2 has no performance standbys and leaves the field out
    // (the compat suite checks its exact keys); a standby is a plain one.
    if initialized && !sealed {
        body["cluster_name"] = json!(core.opts.cluster_name);
        body["cluster_id"] = json!(cluster_id(core));
    }
    if let Some(e) = &audit_failure {
        // The kind only (`disk_full`, `io`, `closed`): the endpoint needs no token.
        body["audit_failure"] = json!(e.kind_label());
    }
    let mut r = Response::raw(obj(body));
    r.status = Some(code);
    Ok(r)
}

fn decode_key(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    if let Ok(b) = hex::decode(s) {
        return Ok(b);
    }
    B64.decode(s)
        .map_err(|_| CoreError::bad_request("'key' must be a valid hex or base64 string"))
}

/// Joining a cluster, unauthenticated as in Vault (see `crate::cluster`).
const RAFT_JOIN: &str = "sys/storage/raft/join";
const RAFT_CHALLENGE: &str = "sys/storage/raft/bootstrap/challenge";
const RAFT_ANSWER: &str = "sys/storage/raft/bootstrap/answer";

/// For root-protected endpoints outside `requires_sudo`'s list: the
/// caller's policies must grant `sudo` on `path`. Answers the unsealed core.
async fn require_sudo(core: &Core, req: &Request, path: &str) -> Result<Arc<Unsealed>> {
    let u = core.unsealed()?;
    let policies = req
        .auth
        .as_deref()
        .map(|e| e.policies.clone())
        .unwrap_or_default();
    let caps = u.policies.acl_for(&policies).await?.capabilities(path);
    if !caps.iter().any(|c| c == "sudo" || c == "root") {
        return Err(CoreError::PermissionDenied);
    }
    Ok(u)
}

fn cluster_of(core: &Core) -> Result<&Arc<crate::cluster::Cluster>> {
    core.cluster().ok_or_else(|| {
        CoreError::bad_request(
            "this server is not configured for a cluster: set cluster_addr or storage \"raft\" { retry_join { ... } }",
        )
    })
}

/// The endpoints Vault serves without a token (and while sealed). Returns
/// `None` when `path` is not one of them.
pub async fn unauthenticated(
    core: &Arc<Core>,
    op: Op,
    path: &str,
    data: &Map<String, Value>,
) -> Option<Result<Response>> {
    let fut = async {
        match (path, op) {
            ("sys/health", Op::Read) => health(core, data).await,
            ("sys/seal-status", Op::Read) => Ok(Response::raw(seal_status(core).await?)),
            ("sys/init", Op::Read) => Ok(Response::raw(obj(
                json!({"initialized": core.is_initialized().await?}),
            ))),
            ("sys/init", Op::Update) => init(core, data).await,
            ("sys/unseal", Op::Update) => unseal(core, data).await,
            ("sys/leader", Op::Read) => Ok(Response::raw(leader_json(core))),
            (RAFT_JOIN, Op::Update) => {
                let addr = data
                    .get("leader_api_addr")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| CoreError::bad_request("leader_api_addr is required"))?;
                Ok(Response::raw(cluster_of(core)?.join(addr, data).await?))
            }
            (RAFT_CHALLENGE, Op::Update) => {
                let id = data.get("server_id").and_then(Value::as_str).unwrap_or("");
                Ok(Response::raw(cluster_of(core)?.challenge(id).await?))
            }
            (RAFT_ANSWER, Op::Update) => Ok(Response::raw(cluster_of(core)?.answer(data).await?)),
            (RAFT_JOIN | RAFT_CHALLENGE | RAFT_ANSWER, _) => Err(CoreError::UnsupportedOperation),
            // Sealing a sealed server is a no-op, as in Vault.
            ("sys/seal", Op::Update) => Ok(Response {
                status: Some(204),
                ..Default::default()
            }),
            ("sys/health" | "sys/seal-status" | "sys/leader", _)
            | ("sys/init", _)
            | ("sys/unseal", _) => Err(CoreError::UnsupportedOperation),
            _ => Err(CoreError::NotFound(String::new())),
        }
    };
    let sealed_seal = path == "sys/seal" && op == Op::Update && core.is_sealed();
    if !sealed_seal
        && !matches!(
            path,
            "sys/health"
                | "sys/seal-status"
                | "sys/init"
                | "sys/unseal"
                | "sys/leader"
                | RAFT_JOIN
                | RAFT_CHALLENGE
                | RAFT_ANSWER
        )
    {
        return None;
    }
    Some(fut.await)
}

async fn init(core: &Core, data: &Map<String, Value>) -> Result<Response> {
    for k in ["pgp_keys", "root_token_pgp_key", "recovery_pgp_keys"] {
        let present = match data.get(k) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if present {
            return Err(CoreError::bad_request(format!(
                "{k} is not supported: Custos returns unseal keys and the root token in plaintext; \
                 encrypt them yourself or use auto-unseal"
            )));
        }
    }
    let num = |k: &str| -> Result<Option<u64>> {
        match data.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| CoreError::bad_request(format!("{k} must be a positive integer"))),
            Some(Value::String(s)) => s
                .parse::<u64>()
                .map(Some)
                .map_err(|_| CoreError::bad_request(format!("{k} must be a positive integer"))),
            Some(_) => Err(CoreError::bad_request(format!(
                "{k} must be a positive integer"
            ))),
        }
    };
    let shares = num("secret_shares")?.unwrap_or(0);
    let threshold = num("secret_threshold")?.unwrap_or(0);
    let recovery_shares = num("recovery_shares")?.unwrap_or(0);
    let recovery_threshold = num("recovery_threshold")?.unwrap_or(0);
    // OpenBao's validateInitParameters: barrier key parameters do not apply
    // to an auto seal, recovery ones not to Shamir.
    let (flags, seal_type) = match crate::autoseal::active(core) {
        Some(w) => (
            [("secret_shares", shares), ("secret_threshold", threshold)],
            w.seal_type(),
        ),
        None => (
            [
                ("recovery_shares", recovery_shares),
                ("recovery_threshold", recovery_threshold),
            ],
            "shamir",
        ),
    };
    let given: Vec<&str> = flags
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, _)| *k)
        .collect();
    if !given.is_empty() {
        return Err(CoreError::bad_request(format!(
            "parameters {} not applicable to seal type {seal_type}",
            given.join(",")
        )));
    }
    if let Some(wrapper) = crate::autoseal::active(core) {
        crate::autoseal::validate_recovery(recovery_shares, recovery_threshold)?;
        let (recovery, root_token) = crate::autoseal::initialize(
            core,
            &wrapper,
            recovery_shares as u8,
            recovery_threshold as u8,
        )
        .await?;
        let mut body = json!({
            "keys": [],
            "keys_base64": [],
            "root_token": root_token,
        });
        if !recovery.is_empty() {
            body["recovery_keys"] = json!(recovery.iter().map(hex::encode).collect::<Vec<_>>());
            body["recovery_keys_base64"] = json!(
                recovery
                    .iter()
                    .map(|k| B64.encode(k.as_slice()))
                    .collect::<Vec<_>>()
            );
        }
        return Ok(Response::raw(obj(body)));
    }
    crate::seal::validate_shares(shares, threshold)?;
    if core.is_initialized().await? {
        return Err(CoreError::bad_request("Vault is already initialized"));
    }
    let (keys, root_token) = core.initialize(shares as u8, threshold as u8).await?;
    let hexes: Vec<String> = keys.iter().map(hex::encode).collect();
    let b64s: Vec<String> = keys.iter().map(|k| B64.encode(k.as_slice())).collect();
    Ok(Response::raw(obj(json!({
        "keys": hexes,
        "keys_base64": b64s,
        "root_token": root_token,
    }))))
}

async fn unseal(core: &Core, data: &Map<String, Value>) -> Result<Response> {
    let joining = match core.cluster() {
        Some(c) if c.joining_seal().is_some() && !core.is_initialized().await? => Some(c),
        _ => None,
    };
    if joining.is_none() && !core.is_initialized().await? {
        return Err(CoreError::bad_request("Vault is not initialized"));
    }
    if matches!(data.get("reset"), Some(Value::Bool(true)))
        || data.get("reset").and_then(Value::as_str) == Some("true")
    {
        core.seal.reset();
        return Ok(Response::raw(seal_status(core).await?));
    }
    let key = match data.get("key") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(CoreError::bad_request(
                "'key' must be specified in request body as JSON, or 'reset' set to true",
            ));
        }
        Some(_) => return Err(CoreError::bad_request("'key' must be a string")),
    };
    let bytes = decode_key(&key)?;
    let migrate = matches!(data.get("migrate"), Some(Value::Bool(true)))
        || data.get("migrate").and_then(Value::as_str) == Some("true");
    let migrating = crate::autoseal::migration(core).is_some();
    if migrate && !migrating {
        return Err(CoreError::bad_request(
            "can't perform a seal migration, no migration seal found",
        ));
    }
    if !migrate && migrating {
        return Err(CoreError::bad_request(
            "migrate option not provided and seal migration is pending",
        ));
    }
    match joining {
        Some(_) if migrate => {
            return Err(CoreError::bad_request(
                "can't perform a seal migration while joining a raft cluster",
            ));
        }
        Some(cluster) => cluster.submit_join_share(&bytes)?,
        None if migrate => {
            crate::autoseal::submit_migration_share(core, &bytes).await?;
        }
        None if crate::autoseal::active(core).is_some() && core.is_sealed() => {
            crate::autoseal::submit_recovery_unseal_share(core, &bytes).await?;
        }
        None => {
            core.submit_unseal_share(&bytes).await?;
        }
    }
    Ok(Response::raw(seal_status(core).await?))
}

/// Paths that require a valid token but no ACL grant, because Vault treats
/// them so: the UI mount lookup clients use to detect KV versions.
pub fn acl_exempt(path: &str) -> bool {
    path == "sys/internal/ui/mounts" || path.starts_with("sys/internal/ui/mounts/")
}
