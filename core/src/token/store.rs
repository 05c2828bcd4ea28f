//! The token store: token entries kept under the barrier, keyed by a salted
//! hash of the token, with the accessor and parent indexes Vault keeps.
//!
//! Layout inside the store's [`StorageView`] (the core hands it `sys/token/`):
//!
//! | key | value |
//! |---|---|
//! | `salt` | 32 random bytes, created once by [`TokenStore::init`] |
//! | `id/<hash>` | the [`TokenEntry`] as JSON; `hash` = hex HMAC-SHA256(salt, token) |
//! | `accessor/<accessor>` | the token's `hash` |
//! | `parent/<parent_hash>/<child_hash>` | empty: the child index for tree revocation |
//!
//! Reads go through an in-memory cache of entries keyed by hash (a mirror of
//! `id/`, never of misses). Every write on this node updates or drops the
//! cache entry after the storage write, and an epoch counter stops a lookup
//! that raced a revocation from putting a stale entry back, so a revocation
//! takes effect on the next lookup. Writes to one token are serialised by a
//! striped lock; a token being revoked is first marked pending (`num_uses =
//! -1`), so no child can be attached to it while its tree is torn down.
//!
//! Time comes from an injectable clock ([`TokenStore::with_clock`]) so tests
//! can move it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock as StdRwLock};

use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use sha2::Sha256;
use tokio::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

use super::TokenEntry;
use crate::error::{CoreError, Result};
use crate::metrics as m;
use crate::storage::{BatchOp, StorageView};

/// Vault's system default lease TTL (768h): the TTL of a token created
/// without one.
pub const DEFAULT_LEASE_TTL: i64 = 768 * 3600;
/// Vault's system maximum lease TTL (768h): no token outlives its creation by
/// more than this.
pub const MAX_LEASE_TTL: i64 = 768 * 3600;

const SALT_KEY: &str = "salt";
const ID_PREFIX: &str = "id/";
const ACCESSOR_PREFIX: &str = "accessor/";
const PARENT_PREFIX: &str = "parent/";
/// Random characters in a token (after `hvs.`) and in an accessor.
const TOKEN_LENGTH: usize = 24;
const LOCK_STRIPES: usize = 64;
/// Above this many cached entries the cache is dropped and refilled.
const CACHE_CAP: usize = 250_000;
/// Ancestor chains longer than this are treated as corrupt (cycle guard).
const MAX_DEPTH: usize = 256;

type HmacSha256 = Hmac<Sha256>;
type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A fully decided token to create. The backend applies Vault's rules
/// (policy subsets, sudo-only fields, TTL calculation) and fills this in.
#[derive(Clone, Default)]
pub struct CreateTokenRequest {
    /// A caller-chosen token (root/sudo only, dev-mode root); `None` generates
    /// `hvs.` + 24 base62 characters.
    pub id: Option<String>,
    /// Final, sanitised policy list.
    pub policies: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub display_name: String,
    /// Creation path, e.g. `auth/token/create`.
    pub path: String,
    pub num_uses: i64,
    /// Final TTL in seconds; 0 = never expires.
    pub ttl: i64,
    pub explicit_max_ttl: i64,
    pub period: i64,
    pub renewable: bool,
    /// Create without a parent link even when a parent is given.
    pub orphan: bool,
    pub entity_id: String,
    /// Creation time (unix seconds); 0 = the store's clock now.
    pub creation_time: i64,
    /// Client addresses the token may be used from (CIDRs); empty = any.
    pub bound_cidrs: Vec<String>,
    /// A login's max TTL (its mount's and role's, the narrower); renewals
    /// stay under it. 0 = the system max.
    pub max_ttl: i64,
}

impl std::fmt::Debug for CreateTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenRequest")
            .field("id", &self.id.as_ref().map(|_| "<redacted>"))
            .field("policies", &self.policies)
            .field("display_name", &self.display_name)
            .field("path", &self.path)
            .field("num_uses", &self.num_uses)
            .field("ttl", &self.ttl)
            .field("explicit_max_ttl", &self.explicit_max_ttl)
            .field("period", &self.period)
            .field("renewable", &self.renewable)
            .field("orphan", &self.orphan)
            .finish_non_exhaustive()
    }
}

/// The token store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct TokenStore {
    view: StorageView,
    mac: StdRwLock<Option<HmacSha256>>,
    cache: StdRwLock<HashMap<String, TokenEntry>>,
    /// Bumped (under the cache lock) on every cache write or removal.
    epoch: AtomicU64,
    locks: Vec<RwLock<()>>,
    /// Serialises creation of caller-chosen ids (duplicate check + write).
    custom_id: Mutex<()>,
    clock: Clock,
    /// The `cubbyhole/` mount's storage, set by the core when it builds that
    /// mount: a revoked token's cubbyhole is emptied with it.
    cubbyhole: StdRwLock<Option<StorageView>>,
}

fn system_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `n` random base62 characters from the OS generator.
fn random_base62(n: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn revoked_metric(reason: &'static str) {
    m::counter_inc(m::TOKEN_REVOKED, &[("reason", reason.to_string())]);
    ::metrics::gauge!(m::TOKEN_COUNT).decrement(1.0);
}

impl TokenStore {
    pub fn new(view: StorageView) -> Self {
        TokenStore {
            view,
            mac: StdRwLock::new(None),
            cache: StdRwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            custom_id: Mutex::new(()),
            clock: Arc::new(system_now),
            cubbyhole: StdRwLock::new(None),
        }
    }

    /// Replace the clock (unix seconds). For tests.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store's current time, unix seconds.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Load the salt, creating it on first use. Call after unseal, before
    /// any other method.
    pub async fn init(&self) -> Result<()> {
        let salt: Zeroizing<Vec<u8>> = match self.view.get(SALT_KEY).await? {
            Some(s) if !s.is_empty() => Zeroizing::new(s),
            _ => {
                let mut s = Zeroizing::new(vec![0u8; 32]);
                rand::rngs::OsRng.fill_bytes(&mut s);
                self.view.put(SALT_KEY, s.to_vec()).await?;
                s
            }
        };
        let mac = HmacSha256::new_from_slice(&salt).map_err(CoreError::internal)?;
        *self.mac.write().map_err(|_| poisoned())? = Some(mac);
        self.clear_cache();
        let n = self.count().await?;
        tracing::debug!(tokens = n, "token store ready");
        Ok(())
    }

    /// Tell the store where the `cubbyhole/` mount keeps its data, so that
    /// revoking a token (by hand, by expiry, by its last use, with its
    /// parent) empties its cubbyhole (`crate::engines::cubbyhole`).
    pub fn set_cubbyhole_view(&self, view: StorageView) {
        if let Ok(mut slot) = self.cubbyhole.write() {
            *slot = Some(view);
        }
    }

    /// The `cubbyhole/` mount's storage, once the core has built that mount.
    pub fn cubbyhole_view(&self) -> Option<StorageView> {
        self.cubbyhole.read().ok().and_then(|v| v.clone())
    }

    /// Delete everything in a token's cubbyhole, in bounded batches.
    async fn clear_cubbyhole(&self, entry: &TokenEntry) -> Result<()> {
        let Some(view) = self.cubbyhole_view() else {
            return Ok(());
        };
        let keys = view
            .list_recursive(&format!("{}/", entry.cubbyhole_key()))
            .await?;
        for chunk in keys.chunks(256) {
            let ops = chunk
                .iter()
                .map(|k| BatchOp::Delete { key: k.clone() })
                .collect();
            view.batch(ops).await?;
        }
        Ok(())
    }

    /// Drop every cached entry. Call when this node may have missed writes
    /// made elsewhere (e.g. on becoming the active node).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The storage key hash of a token (or of anything else salted the same
    /// way): hex HMAC-SHA256(salt, token).
    pub fn hash_token(&self, token: &str) -> Result<String> {
        let guard = self.mac.read().map_err(|_| poisoned())?;
        let Some(mac) = guard.as_ref() else {
            return Err(CoreError::internal("token store used before init"));
        };
        let mut mac = mac.clone();
        mac.update(token.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    fn stripe(&self, hash: &str) -> &RwLock<()> {
        let i = hash.bytes().fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(b as usize)
        });
        &self.locks[i % LOCK_STRIPES]
    }

    /// Another node wrote `key` (relative to this store's view, e.g.
    /// `id/<hash>`) and the write was applied here through the Raft log:
    /// forget the cached token it names.
    pub fn invalidate(&self, key: &str) {
        if let Some(hash) = key.strip_prefix(ID_PREFIX) {
            self.cache_remove(hash);
        }
    }

    // ---- cache -------------------------------------------------------------

    fn cache_put(&self, hash: &str, entry: &TokenEntry) {
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= CACHE_CAP {
                c.clear();
            }
            c.insert(hash.to_string(), entry.clone());
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cache_remove(&self, hash: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(hash);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Read `id/<hash>` from storage, bypassing the cache.
    async fn read_entry(&self, hash: &str) -> Result<Option<TokenEntry>> {
        self.view.get_json(&format!("{ID_PREFIX}{hash}")).await
    }

    /// Read an entry through the cache (no validity checks).
    async fn load(&self, hash: &str) -> Result<Option<TokenEntry>> {
        if let Some(e) = self.cache.read().map_err(|_| poisoned())?.get(hash) {
            return Ok(Some(e.clone()));
        }
        let before = self.epoch.load(Ordering::SeqCst);
        let entry = self.read_entry(hash).await?;
        if let Some(e) = &entry {
            let mut c = self.cache.write().map_err(|_| poisoned())?;
            // A write or revocation since our read may have made it stale.
            if self.epoch.load(Ordering::SeqCst) == before {
                if c.len() >= CACHE_CAP {
                    c.clear();
                }
                c.insert(hash.to_string(), e.clone());
            }
        }
        Ok(entry)
    }

    async fn write_entry(&self, entry: &TokenEntry) -> Result<()> {
        self.view
            .put_json(&format!("{ID_PREFIX}{}", entry.id_hash), entry)
            .await?;
        self.cache_put(&entry.id_hash, entry);
        Ok(())
    }

    // ---- lookup ------------------------------------------------------------

    /// Resolve a client token: `None` when unknown, revoked, used up,
    /// expired (an expired token is revoked on the spot, with its children),
    /// or when an ancestor is no longer valid.
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenEntry>> {
        if token.is_empty() {
            return Ok(None);
        }
        let hash = self.hash_token(token)?;
        self.lookup_hash(&hash).await
    }

    /// [`TokenStore::lookup`] by storage hash.
    pub async fn lookup_hash(&self, hash: &str) -> Result<Option<TokenEntry>> {
        let now = self.now();
        let mut found: Option<TokenEntry> = None;
        let mut cur = hash.to_string();
        for _ in 0..MAX_DEPTH {
            let Some(e) = self.load(&cur).await? else {
                // Unknown token, or a child whose parent is gone: never valid.
                return Ok(None);
            };
            if e.num_uses < 0 {
                return Ok(None);
            }
            if e.is_expired_at(now) {
                if let Err(err) = self.revoke_tree_reason(&cur, "expired").await {
                    tracing::warn!(error = %err, "revoking an expired token failed; the expiry sweep will retry");
                }
                return Ok(None);
            }
            let parent = e.parent_hash.clone();
            if found.is_none() {
                found = Some(e);
            }
            if parent.is_empty() {
                return Ok(found);
            }
            cur = parent;
        }
        Ok(None)
    }

    /// The token behind an accessor, if it is valid.
    pub async fn lookup_accessor(&self, accessor: &str) -> Result<Option<TokenEntry>> {
        match self.accessor_hash(accessor).await? {
            Some(hash) => self.lookup_hash(&hash).await,
            None => Ok(None),
        }
    }

    /// The hash an accessor points at, whether or not that token is still
    /// valid.
    pub async fn accessor_hash(&self, accessor: &str) -> Result<Option<String>> {
        if accessor.is_empty() || accessor.contains('/') {
            return Ok(None);
        }
        Ok(self
            .view
            .get(&format!("{ACCESSOR_PREFIX}{accessor}"))
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|h| !h.is_empty()))
    }

    /// Every accessor in the store, sorted.
    pub async fn list_accessors(&self) -> Result<Vec<String>> {
        Ok(self
            .view
            .list(ACCESSOR_PREFIX)
            .await?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect())
    }

    /// Number of token entries in storage (also sets the token-count gauge).
    pub async fn count(&self) -> Result<u64> {
        let n = self
            .view
            .list(ID_PREFIX)
            .await?
            .iter()
            .filter(|k| !k.ends_with('/'))
            .count() as u64;
        m::gauge_set(m::TOKEN_COUNT, &[], n as f64);
        Ok(n)
    }

    // ---- create ------------------------------------------------------------

    /// Create the root token: policies `["root"]`, no TTL, orphan. `id` lets
    /// dev mode choose it (e.g. `"root"`).
    pub async fn create_root_token(&self, id: Option<&str>) -> Result<(String, TokenEntry)> {
        self.create(
            None,
            CreateTokenRequest {
                id: id.map(str::to_string),
                policies: vec!["root".to_string()],
                display_name: "root".to_string(),
                path: "auth/token/root".to_string(),
                orphan: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Create a token. With a parent (and `req.orphan` false) the token is
    /// linked under it and dies with it; the parent must still be valid.
    /// Returns the raw token (the only time it exists outside the client)
    /// and the stored entry.
    pub async fn create(
        &self,
        parent: Option<&TokenEntry>,
        req: CreateTokenRequest,
    ) -> Result<(String, TokenEntry)> {
        let now = self.now();
        let creation_time = if req.creation_time != 0 {
            req.creation_time
        } else {
            now
        };
        let parent_hash = match parent {
            Some(p) if !req.orphan => p.id_hash.clone(),
            _ => String::new(),
        };
        let custom = req.id.is_some();
        let token = match &req.id {
            Some(id) if id.is_empty() => {
                return Err(CoreError::bad_request("token id cannot be empty"));
            }
            Some(id) => id.clone(),
            None => format!("hvs.{}", random_base62(TOKEN_LENGTH)),
        };
        let hash = self.hash_token(&token)?;
        let mut entry = TokenEntry {
            id_hash: hash.clone(),
            accessor: String::new(),
            cubbyhole_id: random_base62(TOKEN_LENGTH),
            parent_hash: parent_hash.clone(),
            policies: req.policies,
            path: req.path,
            meta: req.meta,
            display_name: req.display_name,
            num_uses: req.num_uses,
            creation_time,
            ttl: req.ttl,
            explicit_max_ttl: req.explicit_max_ttl,
            period: req.period,
            expire_time: if req.ttl > 0 {
                creation_time + req.ttl
            } else {
                0
            },
            orphan: parent_hash.is_empty(),
            renewable: req.renewable && req.ttl > 0,
            entity_id: req.entity_id,
            token_type: "service".to_string(),
            last_renewal_time: 0,
            bound_cidrs: req.bound_cidrs,
            max_ttl: req.max_ttl,
        };

        // Hold the parent's stripe shared: revocation marks the parent
        // pending under the exclusive lock before it lists children.
        let _parent_guard = if parent_hash.is_empty() {
            None
        } else {
            let g = self.stripe(&parent_hash).read().await;
            match self.read_entry(&parent_hash).await? {
                Some(p) if p.num_uses >= 0 && !p.is_expired_at(now) => {}
                _ => {
                    return Err(CoreError::bad_request(
                        "parent token lookup failed: no parent found",
                    ));
                }
            }
            Some(g)
        };
        let _custom_guard = if custom {
            Some(self.custom_id.lock().await)
        } else {
            None
        };
        if custom && self.read_entry(&hash).await?.is_some() {
            return Err(CoreError::bad_request(
                "cannot create a token with a duplicate ID",
            ));
        }

        // 24 base62 characters: collisions are not a practical concern.
        let accessor = random_base62(TOKEN_LENGTH);
        entry.accessor = accessor.clone();

        let value = serde_json::to_vec(&entry).map_err(CoreError::internal)?;
        let mut ops = vec![
            BatchOp::Put {
                key: format!("{ACCESSOR_PREFIX}{accessor}"),
                value: hash.clone().into_bytes(),
            },
            BatchOp::Put {
                key: format!("{ID_PREFIX}{hash}"),
                value,
            },
        ];
        if !parent_hash.is_empty() {
            ops.push(BatchOp::Put {
                key: format!("{PARENT_PREFIX}{parent_hash}/{hash}"),
                value: Vec::new(),
            });
        }
        self.view.batch(ops).await?;
        self.cache_put(&hash, &entry);
        m::counter_inc(m::TOKEN_CREATED, &[]);
        ::metrics::gauge!(m::TOKEN_COUNT).increment(1.0);
        Ok((token, entry))
    }

    // ---- use and renew -----------------------------------------------------

    /// Consume one use of a limited-use token. Unlimited tokens pass through
    /// untouched. On the last use the returned entry lets this request
    /// proceed, and the token is revoked so the next lookup fails. `None` if
    /// the token was already used up or revoked.
    pub async fn use_token(&self, entry: &TokenEntry) -> Result<Option<TokenEntry>> {
        if entry.num_uses == 0 {
            return Ok(Some(entry.clone()));
        }
        let hash = entry.id_hash.as_str();
        let (updated, last) = {
            let _g = self.stripe(hash).write().await;
            let Some(mut e) = self.read_entry(hash).await? else {
                return Ok(None);
            };
            if e.num_uses < 0 || e.is_expired_at(self.now()) {
                return Ok(None);
            }
            if e.num_uses == 0 {
                return Ok(Some(e));
            }
            let last = e.num_uses == 1;
            e.num_uses = if last { -1 } else { e.num_uses - 1 };
            self.write_entry(&e).await?;
            (e, last)
        };
        if last {
            self.revoke_tree_reason(hash, "uses").await?;
        }
        Ok(Some(updated))
    }

    /// Renew a token as Vault's expiration manager does: the new TTL is the
    /// increment (or the token's creation TTL), or the period for periodic
    /// tokens, capped by `explicit_max_ttl` and the system max counted from
    /// the creation time. Returns the updated entry and any warnings.
    pub async fn renew(&self, hash: &str, increment: i64) -> Result<(TokenEntry, Vec<String>)> {
        let _g = self.stripe(hash).write().await;
        let now = self.now();
        let mut e = match self.read_entry(hash).await? {
            Some(e) if e.num_uses >= 0 && !e.is_expired_at(now) => e,
            _ => return Err(CoreError::bad_request("token not found")),
        };
        if e.expire_time == 0 || !e.renewable {
            return Err(CoreError::bad_request("lease is not renewable"));
        }
        // A login's token keeps the max its mount and role allowed.
        let (ttl, warnings) = calculate_ttl_in(
            TtlLimits::SYSTEM.narrowed(e.max_ttl),
            now,
            increment.max(0),
            e.ttl,
            e.period,
            e.explicit_max_ttl,
            e.creation_time,
        )?;
        e.expire_time = now + ttl;
        e.last_renewal_time = now;
        self.write_entry(&e).await?;
        Ok((e, warnings))
    }

    // ---- revoke ------------------------------------------------------------

    /// Mark a token pending revocation so lookups fail and no child can be
    /// attached. Returns whether the entry exists.
    async fn mark_pending(&self, hash: &str) -> Result<bool> {
        let _g = self.stripe(hash).write().await;
        match self.read_entry(hash).await? {
            None => {
                self.cache_remove(hash);
                Ok(false)
            }
            Some(mut e) => {
                if e.num_uses >= 0 {
                    e.num_uses = -1;
                    self.write_entry(&e).await?;
                }
                Ok(true)
            }
        }
    }

    /// Delete a token and its indexes (its accessor, its link under its
    /// parent, and any child links left under it). Returns whether it existed.
    async fn delete_token(&self, hash: &str, reason: &'static str) -> Result<bool> {
        let _g = self.stripe(hash).write().await;
        let Some(e) = self.read_entry(hash).await? else {
            self.cache_remove(hash);
            return Ok(false);
        };
        // The cubbyhole first: if this stops half way, the token is still
        // there (pending revocation) and the expiry sweep finishes both.
        self.clear_cubbyhole(&e).await?;
        let mut ops = vec![BatchOp::Delete {
            key: format!("{ID_PREFIX}{hash}"),
        }];
        if !e.accessor.is_empty() {
            ops.push(BatchOp::Delete {
                key: format!("{ACCESSOR_PREFIX}{}", e.accessor),
            });
        }
        if !e.parent_hash.is_empty() {
            ops.push(BatchOp::Delete {
                key: format!("{PARENT_PREFIX}{}/{hash}", e.parent_hash),
            });
        }
        for child in self.view.list(&format!("{PARENT_PREFIX}{hash}/")).await? {
            ops.push(BatchOp::Delete {
                key: format!("{PARENT_PREFIX}{hash}/{child}"),
            });
        }
        self.view.batch(ops).await?;
        self.cache_remove(hash);
        revoked_metric(reason);
        Ok(true)
    }

    async fn children(&self, hash: &str) -> Result<Vec<String>> {
        Ok(self
            .view
            .list(&format!("{PARENT_PREFIX}{hash}/"))
            .await?
            .into_iter()
            .filter(|c| !c.ends_with('/'))
            .collect())
    }

    /// Revoke a token and, first, all its descendants. Unknown tokens are a
    /// no-op.
    pub async fn revoke_tree(&self, hash: &str) -> Result<()> {
        self.revoke_tree_reason(hash, "revoke").await.map(|_| ())
    }

    /// Depth first: mark a node pending, then its children, delete leaves on
    /// the way back up. Returns how many tokens were deleted.
    async fn revoke_tree_reason(&self, hash: &str, reason: &'static str) -> Result<usize> {
        let mut stack = vec![hash.to_string()];
        let mut seen: HashSet<String> = HashSet::new();
        let mut deleted = 0;
        while let Some(top) = stack.last().cloned() {
            if seen.insert(top.clone()) {
                self.mark_pending(&top).await?;
                let fresh: Vec<String> = self
                    .children(&top)
                    .await?
                    .into_iter()
                    .filter(|c| !seen.contains(c))
                    .collect();
                // Children go first, even under a token that is already
                // gone: their parent is invalid either way.
                if !fresh.is_empty() {
                    stack.extend(fresh);
                    continue;
                }
            }
            let r = if top == hash { reason } else { "parent" };
            if self.delete_token(&top, r).await? {
                deleted += 1;
            } else {
                // Still drop child links left under a missing token.
                let links: Vec<BatchOp> = self
                    .children(&top)
                    .await?
                    .into_iter()
                    .map(|c| BatchOp::Delete {
                        key: format!("{PARENT_PREFIX}{top}/{c}"),
                    })
                    .collect();
                if !links.is_empty() {
                    self.view.batch(links).await?;
                }
            }
            stack.pop();
        }
        Ok(deleted)
    }

    /// Revoke a token but keep its children: they become orphans. Unknown
    /// tokens are a no-op.
    pub async fn revoke_orphan(&self, hash: &str) -> Result<()> {
        if !self.mark_pending(hash).await? {
            return Ok(());
        }
        for child in self.children(hash).await? {
            let _g = self.stripe(&child).write().await;
            let link = BatchOp::Delete {
                key: format!("{PARENT_PREFIX}{hash}/{child}"),
            };
            match self.read_entry(&child).await? {
                Some(mut e) if e.parent_hash == hash => {
                    e.parent_hash.clear();
                    e.orphan = true;
                    let value = serde_json::to_vec(&e).map_err(CoreError::internal)?;
                    self.view
                        .batch(vec![
                            BatchOp::Put {
                                key: format!("{ID_PREFIX}{child}"),
                                value,
                            },
                            link,
                        ])
                        .await?;
                    self.cache_put(&child, &e);
                }
                _ => self.view.batch(vec![link]).await?,
            }
        }
        self.delete_token(hash, "revoke").await?;
        Ok(())
    }

    /// Revoke every expired token (with its children), finish revocations
    /// left pending, and drop tokens whose parent is gone. Returns how many
    /// tokens were deleted. Run periodically by a background worker.
    pub async fn tidy_expired(&self) -> Result<usize> {
        let now = self.now();
        let mut revoked = 0;
        let keys = self.view.list(ID_PREFIX).await?;
        for hash in keys.iter().filter(|k| !k.ends_with('/')) {
            let Some(e) = self.load(hash).await? else {
                continue;
            };
            let reason = if e.is_expired_at(now) {
                Some("expired")
            } else if e.num_uses < 0 {
                Some("revoke")
            } else if !e.parent_hash.is_empty() && self.load(&e.parent_hash).await?.is_none() {
                Some("parent")
            } else {
                None
            };
            if let Some(reason) = reason {
                revoked += self.revoke_tree_reason(hash, reason).await?;
            }
        }
        if revoked > 0 {
            tracing::debug!(revoked, "token expiry sweep");
        }
        self.count().await?;
        Ok(revoked)
    }
}

fn poisoned() -> CoreError {
    CoreError::internal("token store lock poisoned")
}

/// Go's `time.Duration.String()` for whole seconds ("768h0m0s", "5m0s", "30s").
pub(crate) fn go_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Vault's `framework.CalculateTTL` with the system default and max TTLs
/// (768h) and no backend max: the TTL to grant at `now` for a lease that
/// started at `start`.
pub(crate) fn calculate_ttl(
    now: i64,
    increment: i64,
    backend_ttl: i64,
    period: i64,
    explicit_max_ttl: i64,
    start: i64,
) -> Result<(i64, Vec<String>)> {
    calculate_ttl_in(
        TtlLimits::SYSTEM,
        now,
        increment,
        backend_ttl,
        period,
        explicit_max_ttl,
        start,
    )
}

/// The default and maximum TTL a lease is granted under: a mount's (its
/// tune, else the server's), narrowed by a role's `token_max_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TtlLimits {
    pub default_ttl: i64,
    pub max_ttl: i64,
}

impl TtlLimits {
    pub const SYSTEM: TtlLimits = TtlLimits {
        default_ttl: DEFAULT_LEASE_TTL,
        max_ttl: MAX_LEASE_TTL,
    };

    /// These limits with a backend's (a role's) max applied when it is
    /// narrower.
    pub fn narrowed(self, backend_max_ttl: i64) -> TtlLimits {
        TtlLimits {
            max_ttl: match backend_max_ttl {
                m if m > 0 && m < self.max_ttl => m,
                _ => self.max_ttl,
            },
            ..self
        }
    }
}

/// [`calculate_ttl`] under given limits (Vault's `CalculateTTL` with a
/// mount's system view and a backend max already folded into `limits`).
pub(crate) fn calculate_ttl_in(
    limits: TtlLimits,
    now: i64,
    increment: i64,
    backend_ttl: i64,
    period: i64,
    explicit_max_ttl: i64,
    start: i64,
) -> Result<(i64, Vec<String>)> {
    let start = if start == 0 { now } else { start };
    let mut warnings = Vec::new();
    let mut max_ttl = limits.max_ttl;
    if max_ttl <= 0 {
        return Err(CoreError::internal("max TTL must be greater than zero"));
    }
    if explicit_max_ttl > 0 && explicit_max_ttl < max_ttl {
        max_ttl = explicit_max_ttl;
    }
    let mut ttl;
    let max_valid_time;
    if period > 0 {
        let mut period = period;
        if period > max_ttl {
            warnings.push(format!(
                "period of \"{}\" exceeded the effective max_ttl of \"{}\"; period value is capped accordingly",
                go_duration(period),
                go_duration(max_ttl)
            ));
            period = max_ttl;
        }
        ttl = period;
        max_valid_time = (explicit_max_ttl > 0).then(|| start + explicit_max_ttl);
    } else {
        ttl = if increment > 0 {
            increment
        } else if backend_ttl > 0 {
            backend_ttl
        } else {
            limits.default_ttl
        };
        max_valid_time = Some(start + max_ttl);
    }
    if let Some(max_valid) = max_valid_time {
        let max_valid_ttl = max_valid - now;
        if max_valid_ttl <= 0 {
            return Err(CoreError::bad_request("past the max TTL, cannot renew"));
        }
        if max_valid < now + ttl {
            warnings.push(format!(
                "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
                go_duration(ttl),
                go_duration(max_valid_ttl)
            ));
            ttl = max_valid_ttl;
        }
    }
    Ok((ttl, warnings))
}
