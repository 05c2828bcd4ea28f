//! The manifest of a shipped snapshot: what a restore drill checks a
//! snapshot against.
//!
//! The snapshot agent builds one from what it measured while streaming the
//! snapshot out (SHA-256 and bytes of the uploaded object, the Raft index and
//! term, the per-mount [`StateDigest`] core computed over the same state, the
//! transit canaries) and writes it as `<stem>.manifest.json` only after the
//! snapshot object is complete ([`crate::layout`]). A drill reads it back,
//! refuses a newer [`MANIFEST_VERSION`], checks the downloaded object's
//! SHA-256 and size against it, and compares the restored node's digest with
//! [`Manifest::state`]. A manifest holds no secret: digests, counts, and
//! canary ciphertexts whose plaintext is a fixed public string.

use custos_core::engines::transit::canary::TransitCanary;
use custos_core::state_digest::StateDigest;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and the newest it reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Largest manifest read back (a manifest is a few KiB per mount).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A shipped snapshot's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// The snapshot object's key, relative to its destination.
    pub snapshot_key: String,
    /// SHA-256 (lowercase hex) and size of the snapshot object's bytes.
    pub sha256: String,
    pub bytes: u64,
    /// The Raft snapshot's id, and the last log index and term it holds.
    pub snapshot_id: String,
    pub raft_index: u64,
    pub raft_term: u64,
    /// RFC 3339 UTC: when the snapshot was taken and when its upload ended.
    pub created: String,
    pub completed: String,
    /// The cluster it came from (`cluster_name` and the node that took it).
    pub cluster_name: String,
    pub node: String,
    /// The automated snapshot configuration that took it.
    pub config: String,
    /// Custos version that wrote it.
    pub custos_version: String,
    /// What the state holds, per mount ([`StateDigest`]).
    pub state: StateDigest,
    /// One ciphertext per transit key, made when the snapshot was taken; a
    /// drill decrypts each on the restored node.
    #[serde(default)]
    pub transit_canaries: Vec<TransitCanary>,
}

impl Manifest {
    /// Parse a manifest read from a destination, refusing formats newer
    /// than this build's.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest does not parse: {e}"))?;
        if m.manifest_version > MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} is newer than this build reads ({MANIFEST_VERSION})",
                m.manifest_version
            ));
        }
        Ok(m)
    }

    /// The manifest as stored (pretty JSON, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}
