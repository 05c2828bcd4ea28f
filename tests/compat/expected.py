"""Behaviour recorded from OpenBao 2.7.2 in dev mode (`bao server -dev`), the
reference Custos is held to. Every constant here was observed, not guessed;
change one only after re-observing OpenBao.
"""

# sys/health (GET, dev, unsealed active node): 200 with exactly these keys.
# HEAD sys/health: 200, empty body. Sealed: 503, body without cluster_* and
# with standby=true, replication modes "unknown".
HEALTH_KEYS = {
    "initialized",
    "sealed",
    "standby",
    "replication_performance_mode",
    "replication_dr_mode",
    "server_time_utc",
    "version",
    "cluster_name",
    "cluster_id",
}
HEALTH_SEALED_KEYS = HEALTH_KEYS - {"cluster_name", "cluster_id"}

# sys/seal-status: 200 (no token needed), not wrapped in the envelope.
SEAL_STATUS_KEYS = {
    "type",
    "initialized",
    "sealed",
    "t",
    "n",
    "progress",
    "nonce",
    "recovery_seal",
    "version",
    "commit_date",
    "migration",
    "cluster_name",
    "cluster_id",
    "storage_type",
}
# Sealed: cluster_name / cluster_id are absent.
SEAL_STATUS_SEALED_KEYS = SEAL_STATUS_KEYS - {"cluster_name", "cluster_id"}

# KV v2 write response `data`, and `data.metadata` of a read.
KV_VERSION_KEYS = {"created_time", "custom_metadata", "deletion_time", "destroyed", "version"}
# KV v2 read `data`.
KV_READ_KEYS = {"data", "metadata"}
# KV v2 metadata read `data` (OpenBao 2.x adds current_metadata_version and
# metadata_cas_required to Vault's set).
KV_METADATA_KEYS = {
    "cas_required",
    "created_time",
    "current_metadata_version",
    "current_version",
    "custom_metadata",
    "delete_version_after",
    "max_versions",
    "metadata_cas_required",
    "oldest_version",
    "updated_time",
    "versions",
}
KV_METADATA_VERSION_KEYS = {"created_time", "deletion_time", "destroyed"}

# auth/token/create response `auth` (HTTP API / hvac).
TOKEN_AUTH_KEYS = {
    "client_token",
    "accessor",
    "policies",
    "token_policies",
    "metadata",
    "lease_duration",
    "renewable",
    "entity_id",
    "token_type",
    "orphan",
    "mfa_requirement",
    "num_uses",
}
# auth/token/lookup-self and auth/token/lookup `data`.
TOKEN_LOOKUP_KEYS = {
    "accessor",
    "creation_time",
    "creation_ttl",
    "display_name",
    "entity_id",
    "expire_time",
    "explicit_max_ttl",
    "id",
    "issue_time",
    "meta",
    "num_uses",
    "orphan",
    "path",
    "policies",
    "renewable",
    "ttl",
    "type",
}

# sys/policies/acl/<name> `data`.
POLICY_READ_KEYS = {
    "allow_slashes_in_identity_templates",
    "allow_wildcards_in_identity_templates",
    "cas_required",
    "modified",
    "name",
    "policy",
    "version",
}

# One entry of sys/mounts (and sys/mounts/<path>). OpenBao also sends
# running_plugin_version, running_sha256 and (for kv) deprecation_status;
# those are OpenBao plugin-catalog details and are not required of Custos.
MOUNT_ENTRY_KEYS_REQUIRED = {
    "accessor",
    "config",
    "description",
    "external_entropy_access",
    "local",
    "options",
    "plugin_version",
    "seal_wrap",
    "type",
    "uuid",
}
MOUNT_ENTRY_KEYS_OPENBAO_ONLY = {"running_plugin_version", "running_sha256", "deprecation_status"}
MOUNT_CONFIG_KEYS_REQUIRED = {"default_lease_ttl", "force_no_cache", "max_lease_ttl"}

# One entry of sys/audit (seen with a config-declared file device).
AUDIT_ENTRY_KEYS = {"type", "description", "options", "local", "path"}

# Status codes (raw HTTP).
STATUS_MALFORMED_JSON = 400  # "failed to decode JSON input: unexpected EOF"
STATUS_WRONG_TYPE = 400  # "error converting input for field \"data\": ..."
STATUS_BAD_CAS = 400  # "error parsing check-and-set parameter"
STATUS_CAS_MISMATCH = 400  # "check-and-set parameter did not match the current version"
STATUS_NO_DATA = 400  # "no data provided" (empty body or {})
STATUS_UNKNOWN_SYS_PATH = 404  # "1 error occurred:\n\t* unsupported path\n\n"
STATUS_UNKNOWN_MOUNT = 404  # "no handler for route \"x/y\". route entry not found."
STATUS_NO_TOKEN = 403  # ["permission denied"]
STATUS_BAD_TOKEN = 403  # ["permission denied"]
STATUS_UNSUPPORTED_OP = 405  # PATCH merge-patch / PUT / DELETE on sys/mounts
STATUS_PATCH_WRONG_CTYPE = 415  # PATCH with application/json
STATUS_PATCH_NO_CTYPE = 400  # PATCH without Content-Type: "mime: no media type"
STATUS_TOO_LARGE = 413  # body > 32 MiB: "http: request body too large" (also without a token)
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # exactly 33554432 bytes is accepted
STATUS_AUDIT_ENABLE_API = 400  # PUT sys/audit/<x>: config-only audit devices
STATUS_SEALED = 503  # ["Vault is sealed"]


# Fields OpenBao 2.x added to Vault's API (metadata CAS, policy CAS and
# versioning). Custos answers as HashiCorp Vault does, without them; a test
# accepts them present or absent.
KV_METADATA_KEYS_OPENBAO_ONLY = frozenset({"current_metadata_version", "metadata_cas_required"})
POLICY_READ_KEYS_OPENBAO_ONLY = frozenset(
    {
        "allow_slashes_in_identity_templates",
        "allow_wildcards_in_identity_templates",
        "cas_required",
        "modified",
        "version",
    }
)
# `bao status` shows HA fields when the storage is HA-capable. Custos always
# runs on Raft; OpenBao's dev server runs on in-memory storage and has none.
STATUS_HA_KEYS = frozenset({"is_self", "leader_address", "raft_applied_index", "raft_committed_index"})
