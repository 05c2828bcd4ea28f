//! Shared helpers: deterministic data streams with known SHA-256, the S3 test
//! environment (from scripts/lib/services.sh's `start_garage`), unique key
//! prefixes.

use bytes::Bytes;
use custos_dr::{ByteStream, S3Config, SecretString};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MIB: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;

/// xorshift64*: cheap, reproducible bytes.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

/// `len` pseudo-random bytes from `seed`, produced lazily in 64 KiB chunks.
pub fn data_stream(seed: u64, len: u64) -> ByteStream {
    futures::stream::unfold((seed | 1, len), |(mut state, left)| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        fill(&mut state, &mut buf);
        Some((Ok(Bytes::from(buf)), (state, left - n as u64)))
    })
    .boxed()
}

/// The SHA-256 (hex) of `data_stream(seed, len)`.
pub fn data_sha256(seed: u64, len: u64) -> String {
    let mut state = seed | 1;
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fill(&mut state, &mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

/// Drains a download, returning (bytes, sha256 hex).
pub async fn drain(mut s: ByteStream) -> (u64, String) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("download chunk");
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (n, hex::encode(h.finalize()))
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("it/{test}-{nanos}/")
}

/// A manifest as the snapshot agent writes it (the fields copy checks, and a
/// few more).
pub fn manifest_json(sha256: &str, bytes: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "sha256": sha256,
            "bytes": bytes,
            "raft_index": 42,
            "raft_term": 3,
            "created": "2026-01-01T00:00:00Z",
        })
        .to_string(),
    )
}

fn is_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("1" | "true" | "TRUE" | "True" | "yes")
    )
}

/// The Garage instances started by scripts/lib/services.sh.
pub struct S3Env {
    pub primary: S3Config,
    pub copy: S3Config,
}

fn var(name: &str, missing: &mut Vec<String>) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => {
            missing.push(name.to_string());
            String::new()
        }
    }
}

/// The S3 test environment, or `None` (after printing why) when it is not
/// set outside CI. In CI a missing variable fails the test.
pub fn s3_env(test: &str) -> Option<S3Env> {
    let mut missing = Vec::new();
    let endpoint = var("CUSTOS_TEST_S3", &mut missing);
    if !missing.is_empty() && !is_ci() {
        eprintln!(
            "skipping {test}: CUSTOS_TEST_S3 is not set (scripts/test.sh starts Garage and sets it)"
        );
        return None;
    }
    let primary = S3Config {
        aws_s3_endpoint: Some(endpoint),
        aws_s3_region: var("CUSTOS_TEST_S3_REGION", &mut missing),
        aws_s3_bucket: var("CUSTOS_TEST_S3_BUCKET", &mut missing),
        aws_access_key_id: Some(var("CUSTOS_TEST_S3_ACCESS_KEY", &mut missing)),
        aws_secret_access_key: Some(SecretString::new(var(
            "CUSTOS_TEST_S3_SECRET_KEY",
            &mut missing,
        ))),
        aws_s3_force_path_style: true,
        ..Default::default()
    };
    let copy = S3Config {
        aws_s3_endpoint: Some(var("CUSTOS_TEST_S3_COPY_ENDPOINT", &mut missing)),
        aws_s3_region: var("CUSTOS_TEST_S3_COPY_REGION", &mut missing),
        aws_s3_bucket: var("CUSTOS_TEST_S3_COPY_BUCKET", &mut missing),
        aws_access_key_id: Some(var("CUSTOS_TEST_S3_COPY_ACCESS_KEY", &mut missing)),
        aws_secret_access_key: Some(SecretString::new(var(
            "CUSTOS_TEST_S3_COPY_SECRET_KEY",
            &mut missing,
        ))),
        aws_s3_force_path_style: true,
        ..Default::default()
    };
    assert!(
        missing.is_empty(),
        "{test}: S3 test environment incomplete, missing {} (CI={})",
        missing.join(", "),
        std::env::var("CI").unwrap_or_default()
    );
    Some(S3Env { primary, copy })
}
