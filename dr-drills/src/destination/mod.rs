//! Where snapshots are stored: the [`Destination`] trait and its two
//! implementations, a local directory ([`local`]) and an S3 bucket ([`s3`]).
//!
//! Data comes in as a stream of `Bytes` (the Raft snapshot export, or another
//! destination's download when copying) and goes out as one; neither side
//! ever holds a whole snapshot in memory or stages it on disk. Small objects
//! (manifests, drill reports) go through `put_small` / `get_small`. The
//! snapshot agent, retention, the cross-region copy and the restore drill all
//! talk to storage only through this trait.

pub mod local;
pub mod s3;

use crate::error::DestinationError;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use std::{
    fmt, io,
    time::{Duration, SystemTime},
};

/// A stream of object data, in either direction.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Which kind of destination, for metric labels and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    Local,
    S3,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Local => "local",
            DestinationKind::S3 => "aws-s3",
        }
    }
}

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// What a finished upload wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadResult {
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the bytes, lowercase hex, computed on the way.
    pub sha256: String,
    /// Parts uploaded (1 for a single PutObject or a local file).
    pub parts: u32,
    /// Wall time from the first byte read to the object being complete.
    pub duration: Duration,
}

/// An object store holding snapshots, manifests and reports.
///
/// Keys are `/`-separated relative paths (S3 keys; subdirectories locally).
/// Every method is safe to retry; none leaves a partial object visible under
/// its final key.
#[async_trait]
pub trait Destination: Send + Sync + fmt::Debug {
    fn kind(&self) -> DestinationKind;

    /// Where this is, for logs and messages (`s3://bucket at endpoint`,
    /// `file:///dir`); never holds a credential.
    fn describe(&self) -> String;

    /// Streams `body` into `key`. The object appears under `key` only once
    /// complete; on error nothing is left under `key` (a cancelled upload may
    /// leave an incomplete multipart upload or `.partial` file, which
    /// [`Destination::abort_stale_uploads`] removes).
    async fn upload(&self, key: &str, body: ByteStream) -> Result<UploadResult, DestinationError>;

    /// Writes a small object (a manifest, a report) in one request.
    async fn put_small(&self, key: &str, bytes: Bytes) -> Result<(), DestinationError>;

    /// Reads a small object, refusing one larger than `max_bytes`.
    async fn get_small(&self, key: &str, max_bytes: u64) -> Result<Bytes, DestinationError>;

    /// Streams an object. A missing key is `NotFound` here, before the stream.
    async fn download(&self, key: &str) -> Result<ByteStream, DestinationError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError>;

    /// Deletes `key`; deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<(), DestinationError>;

    /// The object's size and time, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, DestinationError>;

    /// Removes uploads under `prefix` that were started more than
    /// `older_than` ago and never completed (S3 multipart uploads, local
    /// `.partial` files). Returns how many were removed.
    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        older_than: Duration,
    ) -> Result<usize, DestinationError>;
}

/// Running SHA-256 and byte count over an upload or download.
#[derive(Default)]
pub(crate) struct Tally {
    hasher: Sha256,
    bytes: u64,
}

impl Tally {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    pub(crate) fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

/// Checks a key before it is used: non-empty, relative, no empty, `.` or
/// `..` segments, no NUL.
pub(crate) fn validate_key(key: &str) -> Result<(), DestinationError> {
    let bad = |reason| {
        Err(DestinationError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("must be relative (no leading '/')");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("has an empty, '.' or '..' segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("a/b.snap").is_ok());
        for k in ["", "/a", "a//b", "a/../b", "./a", "a/", "a\0b"] {
            assert!(validate_key(k).is_err(), "{k:?}");
        }
    }

    #[test]
    fn tally() {
        let mut t = Tally::default();
        t.update(b"ab");
        t.update(b"c");
        assert_eq!(
            t.finish(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()
            )
        );
    }
}
