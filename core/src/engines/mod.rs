//! Secrets engines: the backends mounted under logical paths (`secret/`).
//!
//! Each engine implements [`crate::logical::Backend`]; the router hands it a
//! mount-relative path, validated fields and the mount's own
//! [`crate::storage::StorageView`], and the engine answers with a
//! [`crate::logical::Response`]. [`kv_backend`] is what `core` calls to build
//! the backend for a `kv` mount entry: version 1 ([`kv_v1`]) or 2 ([`kv`]),
//! as the entry's `options.version` says.

pub mod builtin;
pub mod cubbyhole;
pub mod kv;
pub mod kv_codec;
pub mod kv_v1;
pub mod transit;

use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::logical::Backend;
use crate::router::MountEntry;

/// The KV version a `kv` mount entry asks for, as Vault's factory reads
/// `options.version`: none or `"1"` is version 1, `"2"` is version 2, and
/// anything else is refused with OpenBao's words.
pub fn kv_version(entry: &MountEntry) -> Result<u8> {
    match entry.options.get("version").map(String::as_str) {
        None | Some("") | Some("1") => Ok(1),
        Some("2") => Ok(2),
        Some(_) => Err(CoreError::bad_request(format!(
            "nil backend of type {:?} returned from factory",
            entry.mount_type
        ))),
    }
}

/// Build the backend for a `kv` mount. `default_ttl` is the mount's default
/// lease TTL (its own, else the server's): KV v1 reads report it as
/// `lease_duration`.
pub fn kv_backend(entry: &MountEntry, default_ttl: i64) -> Result<Arc<dyn Backend>> {
    Ok(match kv_version(entry)? {
        1 => Arc::new(kv_v1::KvV1Backend::new(default_ttl)),
        _ => Arc::new(kv::KvBackend::new()),
    })
}
