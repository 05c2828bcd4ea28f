//! The local-directory destination, retention and copy over it, in a TempDir.

use crate::support::{MIB, data_sha256, data_stream, drain, manifest_json};
use bytes::Bytes;
use custos_dr::{
    Destination, DestinationError, ErrorKind, LocalDestination,
    copy::{copy_missing, copy_snapshot},
    layout::{Catalog, manifest_key},
    retention::{RetentionPolicy, apply},
};
use futures::StreamExt;
use std::{io, time::Duration};

fn dest() -> (tempfile::TempDir, LocalDestination) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = LocalDestination::open(dir.path().join("snapshots")).expect("open");
    (dir, d)
}

#[tokio::test]
async fn upload_download_round_trip() {
    let (_dir, d) = dest();
    let len = 3 * MIB + 17;
    let up = d
        .upload("a/b/s-1.snap", data_stream(7, len))
        .await
        .expect("upload");
    assert_eq!(up.bytes, len);
    assert_eq!(up.sha256, data_sha256(7, len));
    assert_eq!(
        drain(d.download("a/b/s-1.snap").await.unwrap()).await,
        (len, up.sha256.clone())
    );
    let head = d.head("a/b/s-1.snap").await.unwrap().expect("exists");
    assert_eq!(head.size, len);
    assert!(!d.root().join("a/b/s-1.snap.partial").exists());

    d.put_small("a/b/s-1.manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        d.get_small("a/b/s-1.manifest.json", 10).await.unwrap(),
        Bytes::from_static(b"{}")
    );
    let err = d.get_small("a/b/s-1.snap", 1024).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");

    let keys: Vec<String> = d
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["a/b/s-1.manifest.json", "a/b/s-1.snap"]);
    assert!(d.list("a/b/s-2").await.unwrap().is_empty());
    assert!(d.list("zzz/").await.unwrap().is_empty());

    d.delete("a/b/s-1.snap").await.unwrap();
    d.delete("a/b/s-1.snap").await.unwrap(); // idempotent
    assert!(d.head("a/b/s-1.snap").await.unwrap().is_none());
    let err = d.download("a/b/s-1.snap").await.err().expect("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn failed_upload_leaves_nothing_and_stale_partials_are_removed() {
    let (_dir, d) = dest();
    let failing = data_stream(1, MIB)
        .chain(futures::stream::once(async {
            Err(io::Error::other("snapshot export failed"))
        }))
        .boxed();
    let err = d.upload("s-1.snap", failing).await.unwrap_err();
    assert!(matches!(err, DestinationError::Source { .. }), "{err}");
    assert!(d.head("s-1.snap").await.unwrap().is_none());
    assert!(!d.root().join("s-1.snap.partial").exists());

    // A killed process leaves a .partial: never listed, removed once stale.
    std::fs::write(d.root().join("s-2.snap.partial"), b"half").unwrap();
    assert!(d.list("").await.unwrap().is_empty());
    assert_eq!(
        d.abort_stale_uploads("", Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        d.abort_stale_uploads("other", Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        d.abort_stale_uploads("s-", Duration::ZERO).await.unwrap(),
        1
    );
    assert!(!d.root().join("s-2.snap.partial").exists());
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let (_dir, d) = dest();
    for key in ["../escape.snap", "/abs.snap", "a//b", "x.snap.partial"] {
        let err = d.put_small(key, Bytes::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{key}: {err}");
    }
}

async fn put_snapshot(d: &dyn Destination, key: &str, seed: u64, len: u64, manifest: bool) {
    let up = d.upload(key, data_stream(seed, len)).await.expect("upload");
    if manifest {
        d.put_small(&manifest_key(key), manifest_json(&up.sha256, up.bytes))
            .await
            .expect("manifest");
    }
}

fn snap(i: u64) -> String {
    format!(
        "vault-snapshot-{}.snap",
        1_700_000_000_000_000_000u64 + i * 1_000_000_000
    )
}

#[tokio::test]
async fn retention_over_a_directory() {
    let (_dir, d) = dest();
    for i in 1..=4 {
        put_snapshot(&d, &snap(i), i, 1000, true).await;
    }
    put_snapshot(&d, &snap(5), 5, 1000, false).await; // upload killed before its manifest
    let policy = RetentionPolicy {
        retain: 2,
        grace: Duration::from_secs(3600),
    };
    let report = apply(&d, "vault-snapshot", &policy).await.unwrap();
    assert_eq!(report.plan.keep, [snap(4), snap(3)]);
    assert_eq!(report.plan.pending, [snap(5)]);
    assert_eq!(report.deleted_objects, 4);
    let c = Catalog::load(&d, "").await.unwrap();
    assert_eq!(c.snapshots.len(), 3);

    // Past the grace period the manifest-less one goes; retain 0 keeps one.
    let policy = RetentionPolicy {
        retain: 0,
        grace: Duration::ZERO,
    };
    let report = apply(&d, "vault-snapshot", &policy).await.unwrap();
    assert_eq!(report.plan.keep, [snap(4)]);
    assert_eq!(report.plan.stale, [snap(5)]);
    let keys: Vec<String> = d
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, [manifest_key(&snap(4)), snap(4)]);
}

#[tokio::test]
async fn copy_between_directories_checks_the_manifest() {
    let (_a_dir, a) = dest();
    let (_b_dir, b) = dest();
    put_snapshot(&a, &format!("p/{}", snap(1)), 1, 2 * MIB, true).await;
    put_snapshot(&a, &format!("p/{}", snap(2)), 2, MIB, true).await;
    put_snapshot(&a, &format!("p/{}", snap(3)), 3, MIB, false).await;

    let r = copy_snapshot(&a, &format!("p/{}", snap(1)), &b, &format!("q/{}", snap(1)))
        .await
        .unwrap();
    assert_eq!(r.bytes, 2 * MIB);
    assert_eq!(r.sha256, data_sha256(1, 2 * MIB));
    assert!(
        b.head(&manifest_key(&format!("q/{}", snap(1))))
            .await
            .unwrap()
            .is_some()
    );

    // Catch-up copies the missing good one and skips the manifest-less one.
    let done = copy_missing(&a, "p/", &b, "q/", 10).await.unwrap();
    let copied: Vec<&str> = done.iter().map(|r| r.target_key.as_str()).collect();
    assert_eq!(copied, [format!("q/{}", snap(2))]);
    assert!(
        copy_missing(&a, "p/", &b, "q/", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A manifest that does not match the data: refused, nothing left behind.
    let bad = format!("p/{}", snap(9));
    put_snapshot(&a, &bad, 9, MIB, false).await;
    a.put_small(&manifest_key(&bad), manifest_json(&"0".repeat(64), MIB))
        .await
        .unwrap();
    let err = copy_snapshot(&a, &bad, &b, "q/bad.snap").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
    assert!(b.head("q/bad.snap").await.unwrap().is_none());
    assert!(b.head("q/bad.manifest.json").await.unwrap().is_none());

    // No manifest: not a good snapshot, nothing to copy.
    let err = copy_snapshot(&a, &format!("p/{}", snap(3)), &b, "q/x.snap")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}
