//! Tokens: the [`TokenEntry`] model, the [`TokenStore`] that keeps entries
//! under the barrier, and the [`TokenBackend`] mounted at `auth/token/`.
//!
//! Every authenticated request starts here: the pipeline (`crate::core`) hands
//! the client's token to [`TokenStore::lookup`], which salts and hashes it
//! (HMAC-SHA256 with a per-store random salt), reads `id/<hash>` through an
//! in-memory cache and checks expiry, pending revocation and the ancestor
//! chain. The raw token is never stored: only its hash, so a storage dump (or a
//! Raft snapshot) yields no usable token. [`TokenBackend`] serves Vault's
//! `auth/token/*` API (create, lookup, renew, revoke, accessors) on top of the
//! store.

mod backend;
mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use backend::TokenBackend;
pub use store::{CreateTokenRequest, DEFAULT_LEASE_TTL, MAX_LEASE_TTL, TokenStore};
pub(crate) use store::{TtlLimits, calculate_ttl_in};

/// A token as stored. The token itself is never stored: only its hash
/// (`id_hash`), so a storage dump yields no usable token.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TokenEntry {
    /// Hex SHA-256 HMAC of the token (salted); the storage key.
    pub id_hash: String,
    pub accessor: String,
    /// The key of the token's cubbyhole (`crate::engines::cubbyhole`): random,
    /// so the cubbyhole's storage names neither the token nor its hash. Empty
    /// on entries written before cubbyholes were served; see
    /// [`TokenEntry::cubbyhole_key`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cubbyhole_id: String,
    /// `id_hash` of the parent, empty for orphans and root tokens.
    pub parent_hash: String,
    pub policies: Vec<String>,
    pub path: String,
    pub meta: BTreeMap<String, String>,
    pub display_name: String,
    /// 0 = unlimited; otherwise uses left. -1 = last use consumed, revocation
    /// pending (Vault's `tokenRevocationPending`): lookups no longer see it.
    pub num_uses: i64,
    /// Unix seconds.
    pub creation_time: i64,
    /// Seconds; 0 = no expiry (root tokens). The TTL the token was created
    /// with (Vault's `creation_ttl`); renewals move `expire_time`, not this.
    pub ttl: i64,
    pub explicit_max_ttl: i64,
    pub period: i64,
    /// Unix seconds; 0 = never.
    pub expire_time: i64,
    pub orphan: bool,
    pub renewable: bool,
    #[serde(default)]
    pub entity_id: String,
    #[serde(default = "service")]
    pub token_type: String,
    /// Unix seconds of the last renewal; 0 = never renewed.
    #[serde(default)]
    pub last_renewal_time: i64,
    /// CIDRs the token may be used from (a role's `token_bound_cidrs`);
    /// empty = anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<String>,
    /// The max TTL a login granted under (mount and role, the narrower);
    /// renewals stay under it. 0 = the system max.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ttl: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn service() -> String {
    "service".to_string()
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    /// Where this token's cubbyhole lives in the cubbyhole mount's storage:
    /// its `cubbyhole_id`, or for older entries without one, its salted hash
    /// (also not the token).
    pub fn cubbyhole_key(&self) -> &str {
        if self.cubbyhole_id.is_empty() {
            &self.id_hash
        } else {
            &self.cubbyhole_id
        }
    }

    /// Whether this is a response-wrapping token (`crate::wrapping`): its
    /// only policy is `response-wrapping`, as Vault's `IsWrappingToken`.
    pub fn is_wrapping(&self) -> bool {
        self.policies.len() == 1 && self.policies[0] == crate::policy::RESPONSE_WRAPPING_POLICY
    }

    /// Whether the token has passed its expiry at unix time `now`.
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.expire_time != 0 && now >= self.expire_time
    }
}
