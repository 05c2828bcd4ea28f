//! Storage layers, bottom to top.
//!
//! [`PhysicalStore`] is the replicated key/value store (Raft on redb in
//! production, [`memory::MemoryStore`] in unit tests): bytes in, bytes out.
//! The [`crate::barrier::Barrier`] sits on top and encrypts every value with
//! the keyring, the key as AAD. [`StorageView`] is a prefix-scoped window on the
//! barrier handed to one mount (keyed by the mount's UUID), so engines only
//! ever see their own, already-encrypted, storage.

pub mod carry;
pub mod memory;
pub mod raft;

use std::sync::Arc;

use async_trait::async_trait;

use crate::barrier::Barrier;
use crate::error::Result;

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BatchOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl BatchOp {
    pub fn key(&self) -> &str {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// The physical key/value store. Keys are `/`-separated paths. A write
/// returns only once it is durable (fsynced and, in a cluster, committed by a
/// quorum) and applied, so a read that follows sees it.
#[async_trait]
pub trait PhysicalStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Apply all operations atomically.
    async fn batch(&self, ops: Vec<BatchOp>) -> Result<()>;
    /// Keys directly under `prefix`, as Vault lists: the rest of the key after
    /// the prefix up to and including the next `/` (a "folder"), deduplicated
    /// and sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// [`list`](Self::list) from the first item that sorts after `after`
    /// (which need not exist), at most `limit` items (0: all): OpenBao's
    /// paginated LIST (`after`, `limit`). A store that can seek overrides
    /// this so a page costs what it returns.
    async fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        Ok(page_of(self.list(prefix).await?, after, limit))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.batch(vec![BatchOp::Put {
            key: key.to_string(),
            value,
        }])
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.batch(vec![BatchOp::Delete {
            key: key.to_string(),
        }])
        .await
    }
}

/// Turn a sorted iterator of full keys under `prefix` into Vault's one-level
/// listing. Shared by every [`PhysicalStore`] implementation.
pub fn one_level<'a>(prefix: &str, keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let item = level_item(rest);
        if out.last().map(String::as_str) != Some(item) {
            out.push(item.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What a key lists as one level down, given the rest of it after the
/// listed prefix: up to and including its first `/` (a folder), or all of
/// it.
pub fn level_item(rest: &str) -> &str {
    match rest.find('/') {
        Some(i) => &rest[..=i],
        None => rest,
    }
}

/// The items of a sorted listing that sort after `after`, at most `limit`
/// of them (0: all).
pub fn page_of(items: Vec<String>, after: &str, limit: usize) -> Vec<String> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    items
        .into_iter()
        .filter(|i| i.as_str() > after)
        .take(limit)
        .collect()
}

/// A prefix-scoped, barrier-encrypted view of storage for one mount or one
/// subsystem. Keys passed in are relative to the prefix.
#[derive(Clone)]
pub struct StorageView {
    barrier: Arc<Barrier>,
    prefix: String,
}

impl StorageView {
    pub fn new(barrier: Arc<Barrier>, prefix: impl Into<String>) -> Self {
        StorageView {
            barrier,
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A narrower view under `sub` (which should end in `/`).
    pub fn sub(&self, sub: &str) -> StorageView {
        StorageView {
            barrier: self.barrier.clone(),
            prefix: format!("{}{}", self.prefix, sub),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.barrier.get(&self.full(key)).await
    }

    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.barrier
            .batch(vec![BatchOp::Put {
                key: self.full(key),
                value,
            }])
            .await
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.barrier
            .batch(vec![BatchOp::Delete {
                key: self.full(key),
            }])
            .await
    }

    /// Atomically apply writes; keys are relative to this view.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                BatchOp::Put { key, value } => BatchOp::Put {
                    key: self.full(&key),
                    value,
                },
                BatchOp::Delete { key } => BatchOp::Delete {
                    key: self.full(&key),
                },
            })
            .collect();
        self.barrier.batch(ops).await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.barrier.list(&self.full(prefix)).await
    }

    /// [`PhysicalStore::list_page`] under this view.
    pub async fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        self.barrier
            .list_page(&self.full(prefix), after, limit)
            .await
    }

    /// Read and decode a JSON value.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| crate::error::CoreError::Storage(format!("decoding {key}: {e}"))),
        }
    }

    /// Encode and write a JSON value.
    pub async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(crate::error::CoreError::internal)?;
        self.put(key, bytes).await
    }

    /// Every key (recursively) under `prefix`, relative to this view.
    pub async fn list_recursive(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![prefix.to_string()];
        while let Some(p) = stack.pop() {
            for item in self.list(&p).await? {
                let full = format!("{p}{item}");
                if item.ends_with('/') {
                    stack.push(full);
                } else {
                    out.push(full);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::one_level;

    #[test]
    fn one_level_lists_like_vault() {
        let keys = ["a/b", "a/c/d", "a/c/e", "a/f", "b/x"];
        assert_eq!(one_level("a/", keys), vec!["b", "c/", "f"]);
        assert_eq!(one_level("", keys), vec!["a/", "b/"]);
        assert!(one_level("zz/", keys).is_empty());
    }
}
