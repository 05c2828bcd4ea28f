//! How snapshots and their companions are named inside a destination.
//!
//! The snapshot agent writes `<path_prefix>/<file_prefix>-<unix nanos>.snap`
//! (Vault Enterprise's naming) and, only after that object is complete, the
//! manifest `<same stem>.manifest.json`. Anything else written about a
//! snapshot (a drill report, say) is named `<stem>.<something>` so retention
//! removes it with the snapshot. Retention, copy and the drill read these
//! names; nothing else about a destination's layout is assumed.

use crate::destination::{Destination, ObjectInfo};
use crate::error::DestinationError;
use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

/// Suffix of a snapshot object.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of a snapshot's manifest object.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Vault's default `file_prefix`.
pub const DEFAULT_FILE_PREFIX: &str = "vault-snapshot";

/// `a/b` + `c` → `a/b/c`; an empty prefix gives `c` (no leading slash).
pub fn join_key(prefix: &str, name: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// The key a snapshot taken at `at` gets: `<prefix>/<file_prefix>-<unix nanos>.snap`.
pub fn snapshot_key(path_prefix: &str, file_prefix: &str, at: SystemTime) -> String {
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    join_key(
        path_prefix,
        &format!("{file_prefix}-{nanos}{SNAPSHOT_SUFFIX}"),
    )
}

/// `x/y.snap` → `x/y`; `None` when the key is not a snapshot.
pub fn snapshot_stem(snapshot_key: &str) -> Option<&str> {
    snapshot_key
        .strip_suffix(SNAPSHOT_SUFFIX)
        .filter(|stem| !stem.is_empty() && !stem.ends_with('/'))
}

/// The manifest key of a snapshot key: `x/y.snap` → `x/y.manifest.json`
/// (a key without `.snap` gets the suffix appended).
pub fn manifest_key(snapshot_key: &str) -> String {
    let stem = snapshot_key
        .strip_suffix(SNAPSHOT_SUFFIX)
        .unwrap_or(snapshot_key);
    format!("{stem}{MANIFEST_SUFFIX}")
}

/// The key of a companion object of a snapshot: `x/y.snap` + `drill.json` →
/// `x/y.drill.json`.
pub fn companion_key(snapshot_key: &str, suffix: &str) -> String {
    let stem = snapshot_key
        .strip_suffix(SNAPSHOT_SUFFIX)
        .unwrap_or(snapshot_key);
    format!("{stem}.{}", suffix.trim_start_matches('.'))
}

/// The time in a stem named `<file_prefix>-<unix nanos>`.
pub fn time_in_name(stem: &str) -> Option<SystemTime> {
    let (_, digits) = stem.rsplit_once('-')?;
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u64 = digits.parse().ok()?;
    UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(nanos))
}

/// One snapshot object and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The `.snap` object.
    pub object: ObjectInfo,
    /// When the snapshot was taken: the unix nanoseconds in its name
    /// (`<file_prefix>-<nanos>.snap`), else the object's time. A copy keeps
    /// its original's name, so copies made out of order still sort right.
    pub taken_at: SystemTime,
    /// Its manifest object, when written: the snapshot is good.
    pub manifest: Option<ObjectInfo>,
    /// Other `<stem>.*` objects (drill reports, ...), manifest excluded.
    pub companions: Vec<ObjectInfo>,
}

impl SnapshotEntry {
    pub fn is_good(&self) -> bool {
        self.manifest.is_some()
    }

    pub fn key(&self) -> &str {
        &self.object.key
    }

    pub fn manifest_key(&self) -> String {
        manifest_key(&self.object.key)
    }
}

/// The snapshots in a listing, sorted newest first (by
/// [`SnapshotEntry::taken_at`], then key), with their manifests and companions; plus manifests whose
/// snapshot is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub snapshots: Vec<SnapshotEntry>,
    pub orphan_manifests: Vec<ObjectInfo>,
}

impl Catalog {
    /// Sorts a listing (from [`Destination::list`]) into snapshots. Objects
    /// that are neither snapshots nor named after one are ignored.
    pub fn from_objects(objects: &[ObjectInfo]) -> Self {
        let mut by_stem: BTreeMap<&str, SnapshotEntry> = BTreeMap::new();
        for o in objects {
            if let Some(stem) = snapshot_stem(&o.key) {
                by_stem.insert(
                    stem,
                    SnapshotEntry {
                        taken_at: time_in_name(stem).unwrap_or(o.last_modified),
                        object: o.clone(),
                        manifest: None,
                        companions: Vec::new(),
                    },
                );
            }
        }
        let mut orphan_manifests = Vec::new();
        for o in objects {
            if snapshot_stem(&o.key).is_some() {
                continue;
            }
            // The stem is the key up to one of its dots: try each, longest
            // first (so `a.b.manifest.json` belongs to `a.b.snap`, not `a.snap`).
            let owner = o
                .key
                .rmatch_indices('.')
                .map(|(i, _)| &o.key[..i])
                .find(|stem| by_stem.contains_key(stem));
            match owner.and_then(|stem| by_stem.get_mut(stem).map(|e| (stem, e))) {
                Some((stem, entry)) => {
                    if o.key.len() == stem.len() + MANIFEST_SUFFIX.len()
                        && o.key.ends_with(MANIFEST_SUFFIX)
                    {
                        entry.manifest = Some(o.clone());
                    } else {
                        entry.companions.push(o.clone());
                    }
                }
                None if o.key.ends_with(MANIFEST_SUFFIX) => orphan_manifests.push(o.clone()),
                None => {}
            }
        }
        let mut snapshots: Vec<SnapshotEntry> = by_stem.into_values().collect();
        snapshots.sort_by(|a, b| (b.taken_at, &b.object.key).cmp(&(a.taken_at, &a.object.key)));
        Self {
            snapshots,
            orphan_manifests,
        }
    }

    /// Lists `prefix` in `destination` and sorts it.
    pub async fn load(
        destination: &dyn Destination,
        prefix: &str,
    ) -> Result<Self, DestinationError> {
        Ok(Self::from_objects(&destination.list(prefix).await?))
    }

    /// Good snapshots (manifest written), newest first.
    pub fn good(&self) -> impl Iterator<Item = &SnapshotEntry> {
        self.snapshots.iter().filter(|s| s.is_good())
    }

    /// The newest good snapshot: what a drill restores by default.
    pub fn newest_good(&self) -> Option<&SnapshotEntry> {
        self.good().next()
    }

    /// The snapshot stored under `key`, good or not.
    pub fn get(&self, key: &str) -> Option<&SnapshotEntry> {
        self.snapshots.iter().find(|s| s.object.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let k = snapshot_key("/backups/", DEFAULT_FILE_PREFIX, at);
        assert_eq!(k, "backups/vault-snapshot-1700000000123456789.snap");
        assert_eq!(
            snapshot_stem(&k),
            Some("backups/vault-snapshot-1700000000123456789")
        );
        assert_eq!(
            manifest_key(&k),
            "backups/vault-snapshot-1700000000123456789.manifest.json"
        );
        assert_eq!(
            companion_key(&k, "drill.json"),
            "backups/vault-snapshot-1700000000123456789.drill.json"
        );
        assert_eq!(join_key("", "a.snap"), "a.snap");
        assert_eq!(snapshot_stem("x/.snap"), None);
        assert_eq!(snapshot_stem("x.manifest.json"), None);
    }

    fn obj(key: &str, secs: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 1,
            last_modified: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn catalog_pairs_snapshots_with_manifests() {
        let objects = [
            obj("p/s-1.snap", 10),
            obj("p/s-1.manifest.json", 11),
            obj("p/s-1.drill.json", 12),
            obj("p/s-10.snap", 30),
            obj("p/s-2.snap", 20),
            obj("p/s-2.manifest.json", 21),
            obj("p/s-3.manifest.json", 5),
            obj("p/unrelated.txt", 5),
        ];
        let c = Catalog::from_objects(&objects);
        let keys: Vec<&str> = c.snapshots.iter().map(|s| s.key()).collect();
        assert_eq!(keys, ["p/s-10.snap", "p/s-2.snap", "p/s-1.snap"]);
        assert!(!c.snapshots[0].is_good());
        assert_eq!(c.newest_good().map(|s| s.key()), Some("p/s-2.snap"));
        let s1 = c.get("p/s-1.snap").unwrap();
        assert_eq!(s1.companions, [obj("p/s-1.drill.json", 12)]);
        assert_eq!(c.orphan_manifests, [obj("p/s-3.manifest.json", 5)]);
    }

    #[test]
    fn catalog_orders_by_the_time_in_the_name() {
        // A catch-up copy of an older snapshot is written after a newer one.
        let objects = [
            obj("c/vault-snapshot-1700000000000000000.snap", 500),
            obj("c/vault-snapshot-1700000000000000000.manifest.json", 500),
            obj("c/vault-snapshot-1600000000000000000.snap", 900),
            obj("c/vault-snapshot-1600000000000000000.manifest.json", 900),
        ];
        let c = Catalog::from_objects(&objects);
        assert_eq!(
            c.newest_good().map(|s| s.key()),
            Some("c/vault-snapshot-1700000000000000000.snap")
        );
        assert_eq!(
            time_in_name("x/vault-snapshot-1700000000000000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(time_in_name("x/s-12"), None);
    }
}
