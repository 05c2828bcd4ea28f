//! The cubbyhole secrets engine: a private scratch space per token, mounted
//! at the built-in `cubbyhole/`, as Vault's `builtin/logical/cubbyhole`.
//!
//! Requests come from the router with the caller's resolved token
//! (`Request::auth`); every key is stored in the mount's [`StorageView`]
//! under that token's cubbyhole key ([`TokenEntry::cubbyhole_key`]: a random
//! id drawn when the token was created), so one token never sees another's
//! entries, not even root's. The value is the request body as JSON, read back
//! as the response's `data`. The token store empties a token's cubbyhole when
//! the token is revoked, expires or spends its last use
//! (`TokenStore::set_cubbyhole_view`).
//!
//! Response wrapping (`crate::wrapping`) keeps a wrapped response in its
//! wrapping token's cubbyhole (`response` and `wrapinfo`), through
//! [`entry_key`] and this mount's storage.
//!
//! Bad input answers 400 where OpenBao answers 500 (`missing path`,
//! `missing data fields`): the words are Vault's, the status is our rule that
//! bad input is never a server error. Values never appear in errors or logs.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use crate::logical::{Backend, Ctx, Operation as Op, PathSpec, Response};
use crate::token::TokenEntry;

static PATHS: [PathSpec; 1] = [PathSpec {
    pattern: "(?P<path>.*)",
    operations: &[Op::Read, Op::Update, Op::Delete, Op::List],
    fields: &[],
    existence_check: true,
    help: "Pass-through secret storage to a token-specific cubbyhole: read, write, list and delete any path. Emptied when the token is revoked.",
}];

/// The storage key of `path` in `token`'s cubbyhole.
pub fn entry_key(token: &TokenEntry, path: &str) -> String {
    format!("{}/{path}", token.cubbyhole_key())
}

/// The cubbyhole backend. Stateless: the token chooses the keys.
#[derive(Debug, Default)]
pub struct CubbyholeBackend;

/// The caller's token, which must be a service token (Vault refuses batch
/// tokens, which have no storage of their own).
fn token_of<'a>(ctx: &'a Ctx<'_>) -> Result<&'a TokenEntry> {
    let Some(entry) = ctx.req.auth.as_deref() else {
        return Err(CoreError::PermissionDenied);
    };
    if entry.token_type == "batch" {
        return Err(CoreError::bad_request(
            "cubbyhole operations are only supported by \"service\" type tokens",
        ));
    }
    Ok(entry)
}

#[async_trait]
impl Backend for CubbyholeBackend {
    fn paths(&self) -> &'static [PathSpec] {
        &PATHS
    }

    async fn exists(&self, ctx: Ctx<'_>) -> Result<bool> {
        let token = token_of(&ctx)?;
        let path = ctx.fields.capture("path").unwrap_or_default();
        Ok(ctx.storage.get(&entry_key(token, path)).await?.is_some())
    }

    /// Reads and lists only read storage: a standby may serve them (a
    /// wrapping token's single use sends its reads to the active node).
    fn serves_on_standby(&self, _route: usize, req: &crate::logical::Request) -> bool {
        matches!(req.operation, Op::Read | Op::List)
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let token = token_of(&ctx)?;
        let path = ctx.fields.capture("path").unwrap_or_default();
        match ctx.req.operation {
            Op::Read => {
                if path.is_empty() {
                    return Err(CoreError::bad_request("missing path"));
                }
                let Some(bytes) = ctx.storage.get(&entry_key(token, path)).await? else {
                    return Ok(None);
                };
                let data: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| {
                    CoreError::internal("json decoding failed: a cubbyhole entry is not an object")
                })?;
                let resp = Response::data(data);
                Ok(Some(if path == "response" && token.is_wrapping() {
                    resp.with_warning(
                        "Reading from 'cubbyhole/response' is deprecated. Please use sys/wrapping/unwrap to unwrap responses, as it provides additional security checks and other benefits.",
                    )
                } else {
                    resp
                }))
            }
            Op::Create | Op::Update => {
                if ctx.req.data.is_empty() {
                    return Err(CoreError::bad_request("missing data fields"));
                }
                if path.is_empty() {
                    return Err(CoreError::bad_request("missing path"));
                }
                let bytes = serde_json::to_vec(&ctx.req.data).map_err(CoreError::internal)?;
                ctx.storage.put(&entry_key(token, path), bytes).await?;
                Ok(None)
            }
            Op::Delete => {
                ctx.storage.delete(&entry_key(token, path)).await?;
                Ok(None)
            }
            Op::List => {
                let prefix = if path.is_empty() || path.ends_with('/') {
                    path.to_string()
                } else {
                    format!("{path}/")
                };
                let keys = ctx.storage.list(&entry_key(token, &prefix)).await?;
                Response::list(keys)
            }
            Op::Patch => Err(CoreError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use rand::RngCore;

    use super::*;
    use crate::barrier::Barrier;
    use crate::storage::StorageView;
    use crate::storage::memory::MemoryStore;
    use crate::token::{CreateTokenRequest, TokenStore};

    /// A token store over a real barrier, with its cubbyhole view set as
    /// the core sets it, and a clock the test moves.
    async fn store() -> (Arc<TokenStore>, StorageView, Arc<AtomicI64>) {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        barrier.initialize(&key).await.unwrap();
        let clock = Arc::new(AtomicI64::new(1_700_000_000));
        let c = clock.clone();
        let tokens = Arc::new(
            TokenStore::new(StorageView::new(barrier.clone(), "sys/token/"))
                .with_clock(move || c.load(Ordering::SeqCst)),
        );
        tokens.init().await.unwrap();
        let cubby = StorageView::new(barrier, "logical/cubby-uuid/");
        tokens.set_cubbyhole_view(cubby.clone());
        (tokens, cubby, clock)
    }

    async fn token(tokens: &TokenStore, ttl: i64, num_uses: i64) -> TokenEntry {
        let (_, e) = tokens
            .create(
                None,
                CreateTokenRequest {
                    policies: vec!["default".into()],
                    ttl,
                    num_uses,
                    orphan: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        e
    }

    async fn fill(cubby: &StorageView, t: &TokenEntry) {
        for p in ["a", "dir/b", "dir/deeper/c"] {
            cubby.put(&entry_key(t, p), b"{}".to_vec()).await.unwrap();
        }
    }

    async fn held(cubby: &StorageView, t: &TokenEntry) -> usize {
        cubby
            .list_recursive(&format!("{}/", t.cubbyhole_key()))
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn a_cubbyhole_goes_with_its_token_and_only_with_it() {
        let (tokens, cubby, clock) = store().await;
        let (revoked, kept) = (token(&tokens, 3600, 0).await, token(&tokens, 3600, 0).await);
        assert_ne!(revoked.cubbyhole_id, kept.cubbyhole_id);
        assert!(!revoked.cubbyhole_id.is_empty());
        fill(&cubby, &revoked).await;
        fill(&cubby, &kept).await;
        tokens.revoke_tree(&revoked.id_hash).await.unwrap();
        assert_eq!(held(&cubby, &revoked).await, 0);
        assert_eq!(held(&cubby, &kept).await, 3);

        // Expiry (the sweep), and the last use of a limited token.
        let expiring = token(&tokens, 10, 0).await;
        let single = token(&tokens, 3600, 1).await;
        fill(&cubby, &expiring).await;
        fill(&cubby, &single).await;
        tokens.use_token(&single).await.unwrap().unwrap();
        assert_eq!(held(&cubby, &single).await, 0);
        clock.fetch_add(11, Ordering::SeqCst);
        tokens.tidy_expired().await.unwrap();
        assert_eq!(held(&cubby, &expiring).await, 0);
        assert_eq!(held(&cubby, &kept).await, 3);
    }

    #[test]
    fn keys_are_under_the_cubbyhole_id_not_the_token() {
        let mut t = TokenEntry {
            id_hash: "h".into(),
            cubbyhole_id: "cid".into(),
            ..Default::default()
        };
        assert_eq!(entry_key(&t, "a/b"), "cid/a/b");
        // Entries older than cubbyhole ids use their salted hash.
        t.cubbyhole_id.clear();
        assert_eq!(entry_key(&t, "a"), "h/a");
    }
}
