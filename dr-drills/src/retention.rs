//! Retention: which snapshots a destination keeps, and the deletes that
//! follow.
//!
//! Input is a listing of one destination prefix (sorted by
//! [`Catalog`](crate::layout::Catalog)); output is a [`RetentionPlan`] from the
//! pure function [`plan`], carried out by [`apply`]. The rules:
//!
//! - a snapshot is *good* once its manifest exists (the manifest is written
//!   after the snapshot object is complete);
//! - the `retain` newest good snapshots stay, and the newest good one stays
//!   whatever `retain` says (0 counts as 1);
//! - older good snapshots go, manifest first (so a drill never picks a
//!   snapshot being deleted), then the snapshot, then its companions;
//! - a snapshot without a manifest older than `grace` is the leftover of a
//!   killed upload and goes; a younger one may still be getting its manifest
//!   and stays; so do manifests whose snapshot is gone, until `grace` passes;
//! - incomplete multipart uploads (`.partial` files locally) older than
//!   `grace` are aborted.
//!
//! The prefix should be `<path_prefix>/<file_prefix>` so two schedules sharing
//! a path never prune each other.

use crate::{
    destination::{Destination, ObjectInfo},
    error::DestinationError,
    layout::Catalog,
};
use std::time::{Duration, SystemTime};

/// How long a manifest-less snapshot may wait for its manifest by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Good snapshots to keep (Vault's `retain`); 0 is treated as 1.
    pub retain: usize,
    /// Age after which a snapshot without a manifest, an orphan manifest or
    /// an incomplete upload is removed.
    pub grace: Duration,
}

impl RetentionPolicy {
    pub fn new(retain: usize) -> Self {
        Self {
            retain,
            grace: DEFAULT_GRACE,
        }
    }
}

/// The decision for one destination prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Good snapshots kept, newest first.
    pub keep: Vec<String>,
    /// Good snapshots to delete (older than the `retain` newest).
    pub expire: Vec<String>,
    /// Manifest-less snapshots older than the grace period.
    pub stale: Vec<String>,
    /// Manifest-less snapshots still within the grace period (kept).
    pub pending: Vec<String>,
    /// Every object to delete, in the order to delete them.
    pub deletes: Vec<String>,
}

/// Decides what to delete from a listing, as of `now`.
pub fn plan(objects: &[ObjectInfo], policy: &RetentionPolicy, now: SystemTime) -> RetentionPlan {
    let catalog = Catalog::from_objects(objects);
    let retain = policy.retain.max(1);
    let older_than_grace = |o: &ObjectInfo| {
        now.duration_since(o.last_modified)
            .is_ok_and(|age| age >= policy.grace)
    };
    let mut out = RetentionPlan::default();
    for entry in catalog.good() {
        if out.keep.len() < retain {
            out.keep.push(entry.object.key.clone());
            continue;
        }
        out.expire.push(entry.object.key.clone());
        if let Some(m) = &entry.manifest {
            out.deletes.push(m.key.clone());
        }
        out.deletes.push(entry.object.key.clone());
        out.deletes
            .extend(entry.companions.iter().map(|c| c.key.clone()));
    }
    for entry in catalog.snapshots.iter().filter(|s| !s.is_good()) {
        if older_than_grace(&entry.object) {
            out.stale.push(entry.object.key.clone());
            out.deletes.push(entry.object.key.clone());
            out.deletes
                .extend(entry.companions.iter().map(|c| c.key.clone()));
        } else {
            out.pending.push(entry.object.key.clone());
        }
    }
    out.deletes.extend(
        catalog
            .orphan_manifests
            .iter()
            .filter(|m| older_than_grace(m))
            .map(|m| m.key.clone()),
    );
    out
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub plan: RetentionPlan,
    /// Objects deleted (snapshots, manifests, companions).
    pub deleted_objects: usize,
    /// Incomplete uploads aborted.
    pub aborted_uploads: usize,
}

/// Lists `prefix` in `destination`, plans with `policy` and deletes what the
/// plan says, then aborts incomplete uploads older than the grace period.
/// Stops at the first failed delete (the next run picks up the rest); a
/// snapshot's manifest is always deleted before the snapshot.
pub async fn apply(
    destination: &dyn Destination,
    prefix: &str,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, DestinationError> {
    let objects = destination.list(prefix).await?;
    let plan = plan(&objects, policy, SystemTime::now());
    let mut deleted_objects = 0;
    for key in &plan.deletes {
        destination.delete(key).await?;
        deleted_objects += 1;
    }
    if !plan.deletes.is_empty() {
        tracing::info!(
            destination = %destination.describe(),
            prefix,
            kept = plan.keep.len(),
            expired = plan.expire.len(),
            stale = plan.stale.len(),
            deleted_objects,
            "snapshot retention applied"
        );
    }
    let aborted_uploads = destination
        .abort_stale_uploads(prefix, policy.grace)
        .await?;
    Ok(RetentionReport {
        plan,
        deleted_objects,
        aborted_uploads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const HOUR: u64 = 3600;

    fn obj(key: &str, secs: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 100,
            last_modified: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    /// A good snapshot `p/s-<t>.snap` taken at `t` hours, with its manifest.
    fn good(t: u64) -> [ObjectInfo; 2] {
        [
            obj(&format!("p/s-{t}.snap"), t * HOUR),
            obj(&format!("p/s-{t}.manifest.json"), t * HOUR + 1),
        ]
    }

    fn at(hours: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(hours * HOUR)
    }

    fn policy(retain: usize) -> RetentionPolicy {
        RetentionPolicy::new(retain)
    }

    #[test]
    fn keeps_the_n_newest_good_and_deletes_the_rest_manifest_first() {
        let mut objects: Vec<ObjectInfo> = [1, 2, 3, 4].into_iter().flat_map(good).collect();
        objects.push(obj("p/s-1.drill.json", HOUR + 50));
        let p = plan(&objects, &policy(2), at(10));
        assert_eq!(p.keep, ["p/s-4.snap", "p/s-3.snap"]);
        assert_eq!(p.expire, ["p/s-2.snap", "p/s-1.snap"]);
        assert_eq!(
            p.deletes,
            [
                "p/s-2.manifest.json",
                "p/s-2.snap",
                "p/s-1.manifest.json",
                "p/s-1.snap",
                "p/s-1.drill.json",
            ]
        );
    }

    #[test]
    fn never_deletes_the_newest_good_snapshot() {
        let objects: Vec<ObjectInfo> = [1, 2].into_iter().flat_map(good).collect();
        let p = plan(&objects, &policy(0), at(10));
        assert_eq!(p.keep, ["p/s-2.snap"]);
        assert_eq!(p.expire, ["p/s-1.snap"]);

        // Newer snapshots without manifests do not count as good: the one
        // good snapshot stays even though it is the oldest.
        let mut objects: Vec<ObjectInfo> = good(1).to_vec();
        objects.push(obj("p/s-5.snap", 5 * HOUR));
        objects.push(obj("p/s-6.snap", 6 * HOUR));
        let p = plan(&objects, &policy(1), at(10));
        assert_eq!(p.keep, ["p/s-1.snap"]);
        assert!(p.expire.is_empty());
        assert_eq!(p.stale, ["p/s-6.snap", "p/s-5.snap"]);
        assert_eq!(p.deletes, ["p/s-6.snap", "p/s-5.snap"]);
    }

    #[test]
    fn manifest_less_snapshots_wait_for_the_grace_period() {
        let mut objects: Vec<ObjectInfo> = good(1).to_vec();
        objects.push(obj("p/s-9.snap", 9 * HOUR)); // 30 min old at 9.5 h
        objects.push(obj("p/s-8.snap", 8 * HOUR)); // 1.5 h old
        let now = UNIX_EPOCH + Duration::from_secs(9 * HOUR + HOUR / 2);
        let p = plan(&objects, &policy(3), now);
        assert_eq!(p.pending, ["p/s-9.snap"]);
        assert_eq!(p.stale, ["p/s-8.snap"]);
        assert_eq!(p.deletes, ["p/s-8.snap"]);
        assert_eq!(p.keep, ["p/s-1.snap"]);
    }

    #[test]
    fn orphan_manifests_go_after_the_grace_period_and_other_objects_stay() {
        let mut objects: Vec<ObjectInfo> = good(5).to_vec();
        objects.push(obj("p/s-1.manifest.json", HOUR));
        objects.push(obj("p/s-9.manifest.json", 10 * HOUR - 60));
        objects.push(obj("p/README", 0));
        let p = plan(&objects, &policy(1), at(10));
        assert_eq!(p.deletes, ["p/s-1.manifest.json"]);
    }

    #[test]
    fn nothing_to_do() {
        assert_eq!(plan(&[], &policy(3), at(1)), RetentionPlan::default());
        let objects: Vec<ObjectInfo> = [1, 2].into_iter().flat_map(good).collect();
        let p = plan(&objects, &policy(5), at(10));
        assert_eq!(p.keep, ["p/s-2.snap", "p/s-1.snap"]);
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn equal_times_order_by_key() {
        let objects = [
            obj("p/s-a.snap", 100),
            obj("p/s-a.manifest.json", 100),
            obj("p/s-b.snap", 100),
            obj("p/s-b.manifest.json", 100),
        ];
        let p = plan(&objects, &policy(1), at(10));
        assert_eq!(p.keep, ["p/s-b.snap"]);
        assert_eq!(p.expire, ["p/s-a.snap"]);
    }
}
