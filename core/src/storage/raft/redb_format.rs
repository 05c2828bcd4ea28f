//! Opening a redb file written by an earlier Custos.
//!
//! Custos before 2026-12-07 stored `state.redb` (and, before the segment
//! log, `raft-log.redb`) with redb 2, in redb's file format v2. redb 3 and
//! later read only format v3, and answer `UpgradeRequired(2)` for such a file.
//! [`create`] then opens the file once with redb 2.6 and runs its
//! `Database::upgrade()`, which rewrites it in place as format v3 (two
//! durable commits, then the header), before opening it again: an upgraded
//! binary keeps its data directory, with no export and import. The data
//! comes from the file and stays in it; only redb's own page layout changes.

use std::path::Path;

use super::StoreError;

/// `builder.create(path)`, upgrading a format-v2 file first.
pub(super) fn create(builder: &redb::Builder, path: &Path) -> Result<redb::Database, StoreError> {
    match builder.create(path) {
        Err(redb::DatabaseError::UpgradeRequired(2)) => {
            upgrade_v2(path)?;
            Ok(builder.create(path)?)
        }
        other => Ok(other?),
    }
}

/// `redb::Database::open(path)`, upgrading a format-v2 file first.
pub(super) fn open(path: &Path) -> Result<redb::Database, StoreError> {
    match redb::Database::open(path) {
        Err(redb::DatabaseError::UpgradeRequired(2)) => {
            upgrade_v2(path)?;
            Ok(redb::Database::open(path)?)
        }
        other => Ok(other?),
    }
}

fn upgrade_v2(path: &Path) -> Result<(), StoreError> {
    let failed =
        |e: &dyn std::fmt::Display| StoreError::Upgrade(format!("{}: {e}", path.display()));
    let started = std::time::Instant::now();
    let mut db = redb2::Database::open(path).map_err(|e| failed(&e))?;
    db.upgrade().map_err(|e| failed(&e))?;
    drop(db);
    tracing::info!(
        path = %path.display(),
        seconds = started.elapsed().as_secs_f64(),
        "upgraded a redb file from file format 2 to 3"
    );
    Ok(())
}
