//! How KV v2 stores a key's metadata and a version's data: a compact binary
//! encoding, read back alongside the JSON that earlier versions wrote.
//!
//! Values come from [`super::kv`] as [`KeyMetadata`] / [`VersionData`] and go
//! to the mount's storage view (then the barrier encrypts them, Raft logs and
//! applies them, and `state.redb` keeps them). At a million secrets these two
//! values are most of the state, so their size is the footprint: the JSON
//! metadata of a one-version key was ~313 bytes before encryption; this
//! encoding is ~20. Every value starts with a format byte. JSON, written by
//! versions before this encoding, starts with `{` and is still read; every
//! write uses the binary form, so a key moves over at its next change.
//!
//! ```text
//! metadata (FORMAT_META_V1):
//!   u8 1 | uv current_version | uv oldest_version | iv created_time
//!   | iv updated_time - created_time | uv max_versions | iv delete_version_after
//!   | u8 flags (1 cas_required, 2 custom_metadata present)
//!   | uv versions, each: uv version | iv created_time - key's created_time
//!       | u8 flags (1 destroyed, 2 deletion_time present) [| iv deletion_time - created_time]
//!   [| uv pairs, each: uv len | key bytes | uv len | value bytes]
//! version data (FORMAT_VERSION_V1):
//!   u8 1 | iv created_time | JSON of the data map
//! ```
//!
//! `uv` is an unsigned LEB128 varint, `iv` a zigzag-encoded signed one; times
//! are Unix nanoseconds. A value that does not parse is an error naming the
//! storage key and what was wrong, never the bytes (they may be secret).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::kv::{KeyMetadata, VersionData, VersionMeta};
use crate::error::{CoreError, Result};

/// First byte of binary metadata.
const FORMAT_META_V1: u8 = 1;
/// First byte of binary version data.
const FORMAT_VERSION_V1: u8 = 1;
/// First byte of the JSON earlier versions wrote.
const JSON_OBJECT: u8 = b'{';

const META_CAS_REQUIRED: u8 = 1;
const META_CUSTOM: u8 = 2;
const VERSION_DESTROYED: u8 = 1;
const VERSION_DELETION: u8 = 2;

/// Encode a key's metadata.
pub fn encode_meta(meta: &KeyMetadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + 24 * meta.versions.len());
    out.push(FORMAT_META_V1);
    put_uv(&mut out, meta.current_version);
    put_uv(&mut out, meta.oldest_version);
    put_iv(&mut out, meta.created_time);
    put_iv(&mut out, meta.updated_time.wrapping_sub(meta.created_time));
    put_uv(&mut out, u64::from(meta.max_versions));
    put_iv(&mut out, meta.delete_version_after);
    out.push(flags(&[
        (meta.cas_required, META_CAS_REQUIRED),
        (meta.custom_metadata.is_some(), META_CUSTOM),
    ]));
    put_uv(&mut out, meta.versions.len() as u64);
    for (version, vm) in &meta.versions {
        put_uv(&mut out, *version);
        put_iv(&mut out, vm.created_time.wrapping_sub(meta.created_time));
        out.push(flags(&[
            (vm.destroyed, VERSION_DESTROYED),
            (vm.deletion_time.is_some(), VERSION_DELETION),
        ]));
        if let Some(t) = vm.deletion_time {
            put_iv(&mut out, t.wrapping_sub(vm.created_time));
        }
    }
    if let Some(custom) = &meta.custom_metadata {
        put_uv(&mut out, custom.len() as u64);
        for (k, v) in custom {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
    }
    out
}

/// Decode a key's metadata stored at `storage_key` (named in errors).
pub fn decode_meta(storage_key: &str, bytes: &[u8]) -> Result<KeyMetadata> {
    match bytes.first() {
        Some(&FORMAT_META_V1) => {
            let mut r = Reader::new(storage_key, &bytes[1..]);
            let meta = r.meta()?;
            r.finish()?;
            Ok(meta)
        }
        Some(&JSON_OBJECT) => serde_json::from_slice(bytes).map_err(|e| bad(storage_key, e)),
        _ => Err(bad(storage_key, "unknown metadata format")),
    }
}

/// Encode one version's data.
pub fn encode_version(version: &VersionData) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(16 + 64 * version.data.len());
    out.push(FORMAT_VERSION_V1);
    put_iv(&mut out, version.created_time);
    serde_json::to_writer(&mut out, &version.data).map_err(CoreError::internal)?;
    Ok(out)
}

/// Decode one version's data stored at `storage_key` (named in errors).
pub fn decode_version(storage_key: &str, bytes: &[u8]) -> Result<VersionData> {
    match bytes.first() {
        Some(&FORMAT_VERSION_V1) => {
            let mut r = Reader::new(storage_key, &bytes[1..]);
            let created_time = r.iv()?;
            let data: Map<String, Value> =
                serde_json::from_slice(r.rest()).map_err(|e| bad(storage_key, e))?;
            Ok(VersionData { data, created_time })
        }
        Some(&JSON_OBJECT) => serde_json::from_slice(bytes).map_err(|e| bad(storage_key, e)),
        _ => Err(bad(storage_key, "unknown version data format")),
    }
}

fn bad(storage_key: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Storage(format!("decoding {storage_key}: {e}"))
}

/// A flags byte: the bits whose condition holds.
fn flags(bits: &[(bool, u8)]) -> u8 {
    bits.iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit)
}

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        // The low seven bits, with the continuation bit set.
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_iv(out: &mut Vec<u8>, v: i64) {
    // Zigzag: small magnitudes of either sign take few bytes.
    put_uv(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uv(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over an encoded value; every read checks what is left.
struct Reader<'a> {
    storage_key: &'a str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(storage_key: &'a str, buf: &'a [u8]) -> Self {
        Reader { storage_key, buf }
    }

    fn err(&self, what: &str) -> CoreError {
        bad(self.storage_key, what)
    }

    fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("value ends early"))?;
        self.buf = rest;
        Ok(b)
    }

    fn uv(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint overflows 64 bits"))
    }

    fn iv(&mut self) -> Result<i64> {
        let z = self.uv()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.uv()?).map_err(|_| self.err("number out of range"))
    }

    /// A count of items that each take at least `min_bytes`: bounded by what
    /// is left, so a corrupt count cannot make a huge allocation.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.uv()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= self.buf.len() => Ok(n),
            _ => Err(self.err("count exceeds the value")),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count(1)?;
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(s.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }

    fn meta(&mut self) -> Result<KeyMetadata> {
        let current_version = self.uv()?;
        let oldest_version = self.uv()?;
        let created_time = self.iv()?;
        let updated_time = created_time.wrapping_add(self.iv()?);
        let max_versions = self.u32()?;
        let delete_version_after = self.iv()?;
        let flags = self.u8()?;
        let mut versions = BTreeMap::new();
        for _ in 0..self.count(3)? {
            let version = self.uv()?;
            let created = created_time.wrapping_add(self.iv()?);
            let vflags = self.u8()?;
            let deletion_time = if vflags & VERSION_DELETION != 0 {
                Some(created.wrapping_add(self.iv()?))
            } else {
                None
            };
            versions.insert(
                version,
                VersionMeta {
                    created_time: created,
                    deletion_time,
                    destroyed: vflags & VERSION_DESTROYED != 0,
                },
            );
        }
        let custom_metadata = if flags & META_CUSTOM != 0 {
            let mut custom = BTreeMap::new();
            for _ in 0..self.count(2)? {
                let k = self.string()?;
                custom.insert(k, self.string()?);
            }
            Some(custom)
        } else {
            None
        };
        Ok(KeyMetadata {
            versions,
            current_version,
            oldest_version,
            created_time,
            updated_time,
            max_versions,
            cas_required: flags & META_CAS_REQUIRED != 0,
            delete_version_after,
            custom_metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_765_000_000_123_456_789;

    fn rich_meta() -> KeyMetadata {
        let mut versions = BTreeMap::new();
        versions.insert(
            4,
            VersionMeta {
                created_time: NOW,
                deletion_time: Some(NOW + 5),
                destroyed: false,
            },
        );
        versions.insert(
            5,
            VersionMeta {
                created_time: NOW + 3_600_000_000_000,
                deletion_time: Some(NOW - 1),
                destroyed: true,
            },
        );
        versions.insert(
            6,
            VersionMeta {
                created_time: NOW - 42,
                deletion_time: None,
                destroyed: false,
            },
        );
        KeyMetadata {
            versions,
            current_version: 6,
            oldest_version: 4,
            created_time: NOW - 1_000,
            updated_time: NOW + 7_200_000_000_000,
            max_versions: u32::MAX,
            cas_required: true,
            delete_version_after: -1,
            custom_metadata: Some(BTreeMap::from([
                ("owner".to_string(), "team-ü".to_string()),
                (String::new(), String::new()),
            ])),
        }
    }

    #[test]
    fn metadata_round_trips() {
        for meta in [
            KeyMetadata::default(),
            rich_meta(),
            KeyMetadata {
                custom_metadata: Some(BTreeMap::new()),
                created_time: i64::MIN,
                updated_time: i64::MAX,
                current_version: u64::MAX,
                ..KeyMetadata::default()
            },
        ] {
            let bytes = encode_meta(&meta);
            assert_eq!(decode_meta("k", &bytes).unwrap(), meta);
        }
    }

    #[test]
    fn one_version_metadata_is_a_few_bytes() {
        let mut meta = KeyMetadata::default();
        meta.add_version(NOW, None, 0);
        let binary = encode_meta(&meta).len();
        let json = serde_json::to_vec(&meta).unwrap().len();
        assert!(binary <= 24, "{binary} bytes");
        assert!(json > 10 * binary, "json {json} vs binary {binary}");
    }

    #[test]
    fn json_written_by_earlier_versions_is_read() {
        // The shape 3b49317 and earlier stored, `key` field included.
        let old = json!({
            "key": "app/db",
            "versions": {"1": {"created_time": NOW, "deletion_time": null, "destroyed": false}},
            "current_version": 1, "oldest_version": 0,
            "created_time": NOW, "updated_time": NOW,
            "max_versions": 0, "cas_required": false, "delete_version_after": 0,
            "custom_metadata": {"a": "b"}
        });
        let meta = decode_meta("k", old.to_string().as_bytes()).unwrap();
        assert_eq!(meta.current_version, 1);
        assert_eq!(meta.versions[&1].created_time, NOW);
        assert_eq!(meta.custom_metadata.unwrap()["a"], "b");

        let old = json!({"data": {"value": "s3cret"}, "created_time": NOW});
        let v = decode_version("k", old.to_string().as_bytes()).unwrap();
        assert_eq!(v.data["value"], "s3cret");
        assert_eq!(v.created_time, NOW);
    }

    #[test]
    fn version_data_round_trips() {
        let data = json!({"value": "s3cret", "n": [1, {"x": null}]});
        let v = VersionData {
            data: data.as_object().unwrap().clone(),
            created_time: NOW,
        };
        let bytes = encode_version(&v).unwrap();
        let back = decode_version("k", &bytes).unwrap();
        assert_eq!(Value::Object(back.data), data);
        assert_eq!(back.created_time, NOW);
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_naming_the_key_not_the_value() {
        let bytes = encode_meta(&rich_meta());
        for len in 0..bytes.len() {
            let e = decode_meta("metadata/app", &bytes[..len]).unwrap_err();
            assert!(e.to_string().contains("metadata/app"), "{e}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_meta("k", &trailing).is_err());
        // A count far beyond the value, and a varint that never ends.
        assert!(decode_meta("k", &[FORMAT_META_V1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0x7f]).is_err());
        assert!(
            decode_meta(
                "k",
                &[
                    FORMAT_META_V1,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff
                ]
            )
            .is_err()
        );
        assert!(decode_meta("k", &[9, 1, 2]).is_err());

        let v = encode_version(&VersionData {
            data: json!({"value": "s3cret"}).as_object().unwrap().clone(),
            created_time: NOW,
        })
        .unwrap();
        for len in 0..v.len() {
            let e = decode_version("versions/x/1", &v[..len])
                .err()
                .expect("a truncated value is an error");
            let msg = e.to_string();
            assert!(
                msg.contains("versions/x/1") && !msg.contains("s3cret"),
                "{msg}"
            );
        }
    }

    #[test]
    fn every_varint_width_round_trips() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uv(&mut out, v);
            assert_eq!(Reader::new("k", &out).uv().unwrap(), v);
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX, NOW] {
            let mut out = Vec::new();
            put_iv(&mut out, v);
            assert_eq!(Reader::new("k", &out).iv().unwrap(), v);
        }
    }
}
