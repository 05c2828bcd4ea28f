//! Secrets engines: the backends mounted under logical paths (`secret/`).
//!
//! Each engine implements [`crate::logical::Backend`]; the router hands it a
//! mount-relative path, validated fields and the mount's own
//! [`crate::storage::StorageView`], and the engine answers with a
//! [`crate::logical::Response`]. [`kv_backend`] is what `core` calls to build
//! the backend for a `kv` mount entry.

pub mod kv;
pub mod transit;

use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::logical::Backend;
use crate::router::MountEntry;

/// Build the backend for a `kv` mount. Only KV version 2 is served: a mount
/// with `options.version` `"2"` (or no version at all) gets [`kv::KvBackend`];
/// any other version is refused, so nobody gets v2 semantics by surprise.
pub fn kv_backend(entry: &MountEntry) -> Result<Arc<dyn Backend>> {
    match entry.options.get("version").map(String::as_str) {
        None | Some("") | Some("2") => Ok(Arc::new(kv::KvBackend::new())),
        Some(other) => Err(CoreError::bad_request(format!(
            "kv version {other:?} is not supported: only version 2 (kv-v2) is available"
        ))),
    }
}
