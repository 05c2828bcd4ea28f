//! An in-memory [`PhysicalStore`] for unit tests of layers above storage
//! (barrier, engines). Not durable; never used by the server itself.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::RwLock;

use super::{BatchOp, PhysicalStore, one_level};
use crate::error::Result;

#[derive(Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PhysicalStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().await.get(key).cloned())
    }

    async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        let mut map = self.map.write().await;
        for op in ops {
            match op {
                BatchOp::Put { key, value } => {
                    map.insert(key, value);
                }
                BatchOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let map = self.map.read().await;
        Ok(one_level(
            prefix,
            map.range(prefix.to_string()..)
                .map(|(k, _)| k.as_str())
                .take_while(|k| k.starts_with(prefix)),
        ))
    }
}
