//! The S3 destination against real Garage (two instances, two regions, from
//! scripts/lib/services.sh `start_garage`): multipart round trip, aborted and
//! killed uploads, retention, the cross-region copy, and the errors an
//! operator meets (wrong credentials, missing bucket, endpoint down).

use crate::support::{
    MIB, PrivateGarage, S3Env, data_sha256, data_stream, drain, manifest_json, s3_env,
    unique_prefix,
};
use custos_dr::{
    Destination, DestinationError, ErrorKind, S3Config, S3Destination, SecretString,
    copy::{copy_missing, copy_snapshot},
    destination::s3::S3Tuning,
    layout::{Catalog, manifest_key},
    retention::{RetentionPolicy, apply},
};
use futures::StreamExt;
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

async fn primary(env: &S3Env) -> S3Destination {
    S3Destination::new(&env.primary)
        .await
        .expect("S3 destination")
}

/// Few retries, so the error tests do not wait out the full backoff.
fn quick() -> S3Tuning {
    S3Tuning {
        max_attempts: 2,
        connect_timeout: Duration::from_secs(2),
        ..S3Tuning::default()
    }
}

#[tokio::test]
async fn multipart_upload_streams_and_reads_back() {
    let Some(env) = s3_env("multipart_upload_streams_and_reads_back") else {
        return;
    };
    let d = primary(&env).await;
    let prefix = unique_prefix("multipart");
    let key = format!("{prefix}vault-snapshot-1.snap");
    // 3 full 8 MiB parts and a short last one.
    let len = 3 * 8 * MIB + 12_345;
    let started = Instant::now();
    let up = d.upload(&key, data_stream(11, len)).await.expect("upload");
    let took = started.elapsed();
    assert_eq!(up.parts, 4);
    assert_eq!(up.bytes, len);
    assert_eq!(up.sha256, data_sha256(11, len));
    eprintln!(
        "uploaded {} MiB in {} parts in {took:?} ({:.0} MiB/s)",
        len / MIB,
        up.parts,
        len as f64 / MIB as f64 / took.as_secs_f64()
    );

    let head = d.head(&key).await.unwrap().expect("object exists");
    assert_eq!(head.size, len);
    let started = Instant::now();
    assert_eq!(
        drain(d.download(&key).await.unwrap()).await,
        (len, up.sha256.clone())
    );
    eprintln!("downloaded in {:?}", started.elapsed());
    assert!(d.pending_uploads(&prefix).await.unwrap().is_empty());

    // A small object is one PutObject.
    let small = format!("{prefix}small.snap");
    let up = d.upload(&small, data_stream(3, 1000)).await.unwrap();
    assert_eq!((up.parts, up.bytes), (1, 1000));
    let err = d.get_small(&key, MIB).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(d.get_small(&small, MIB).await.unwrap().len(), 1000);

    let keys: Vec<String> = d
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, [small.clone(), key.clone()]);
    d.delete(&key).await.unwrap();
    d.delete(&key).await.unwrap();
    assert!(d.head(&key).await.unwrap().is_none());
    let err = d.download(&key).await.err().expect("gone");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    d.delete(&small).await.unwrap();
}

#[tokio::test]
async fn list_pages_through_many_objects() {
    let Some(env) = s3_env("list_pages_through_many_objects") else {
        return;
    };
    let d = primary(&env).await;
    let prefix = unique_prefix("paging");
    // More than one ListObjectsV2 page (1000 keys).
    let keys: Vec<String> = (0..1005).map(|i| format!("{prefix}k-{i:05}")).collect();
    futures::stream::iter(keys.iter())
        .for_each_concurrent(16, |k| {
            let d = &d;
            async move {
                d.put_small(k, bytes::Bytes::from_static(b"x"))
                    .await
                    .unwrap();
            }
        })
        .await;
    let listed: Vec<String> = d
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, keys);
    futures::stream::iter(keys.iter())
        .for_each_concurrent(16, |k| {
            let d = &d;
            async move { d.delete(k).await.unwrap() }
        })
        .await;
}

#[tokio::test]
async fn failed_upload_is_aborted_and_leaves_nothing() {
    let Some(env) = s3_env("failed_upload_is_aborted_and_leaves_nothing") else {
        return;
    };
    let d = primary(&env).await;
    let prefix = unique_prefix("failed");
    let key = format!("{prefix}s.snap");
    // Two full parts go up, then the snapshot export fails.
    let body = data_stream(5, 17 * MIB)
        .chain(futures::stream::once(async {
            Err(io::Error::other("raft snapshot export failed"))
        }))
        .boxed();
    let err = d.upload(&key, body).await.unwrap_err();
    assert!(matches!(err, DestinationError::Source { .. }), "{err}");
    assert!(err.to_string().contains("raft snapshot export failed"));
    assert!(d.head(&key).await.unwrap().is_none());
    assert!(
        d.pending_uploads(&prefix).await.unwrap().is_empty(),
        "the failed upload was aborted"
    );
}

#[tokio::test]
async fn killed_upload_leaves_no_object_and_is_aborted_when_stale() {
    let Some(env) = s3_env("killed_upload_leaves_no_object_and_is_aborted_when_stale") else {
        return;
    };
    let d = Arc::new(primary(&env).await);
    let prefix = unique_prefix("killed");
    let key = format!("{prefix}s.snap");
    // The stream hands out 20 MiB (two parts go up), then hangs: the process
    // "dies" there (the task is aborted, so no AbortMultipartUpload is sent).
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let body = data_stream(6, 20 * MIB)
        .inspect(move |c| {
            if let Ok(c) = c {
                counter.fetch_add(c.len() as u64, Ordering::SeqCst);
            }
        })
        .chain(futures::stream::pending())
        .boxed();
    let task = tokio::spawn({
        let d = d.clone();
        let key = key.clone();
        async move { d.upload(&key, body).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.load(Ordering::SeqCst) < 20 * MIB
        || d.pending_uploads(&prefix).await.unwrap().is_empty()
    {
        assert!(Instant::now() < deadline, "upload did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the second part finish too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    assert!(
        d.head(&key).await.unwrap().is_none(),
        "no object from a killed upload"
    );
    assert!(d.list(&prefix).await.unwrap().is_empty());
    let pending = d.pending_uploads(&prefix).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].key, key);

    // Not stale yet: kept (it could be a live upload of another agent).
    assert_eq!(
        d.abort_stale_uploads(&prefix, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(d.pending_uploads(&prefix).await.unwrap().len(), 1);
    // Stale: aborted.
    assert_eq!(
        d.abort_stale_uploads(&prefix, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert!(d.pending_uploads(&prefix).await.unwrap().is_empty());
}

fn snap(prefix: &str, i: u64) -> String {
    format!(
        "{prefix}vault-snapshot-{}.snap",
        1_700_000_000_000_000_000u64 + i * 1_000_000_000
    )
}

async fn put_snapshot(
    d: &dyn Destination,
    key: &str,
    seed: u64,
    len: u64,
    manifest: bool,
) -> String {
    let up = d.upload(key, data_stream(seed, len)).await.expect("upload");
    if manifest {
        d.put_small(&manifest_key(key), manifest_json(&up.sha256, up.bytes))
            .await
            .expect("manifest");
    }
    up.sha256
}

#[tokio::test]
async fn retention_keeps_the_newest_good_snapshots() {
    let Some(env) = s3_env("retention_keeps_the_newest_good_snapshots") else {
        return;
    };
    let d = primary(&env).await;
    let prefix = unique_prefix("retention");
    for i in 1..=4 {
        put_snapshot(&d, &snap(&prefix, i), i, 1000 * i, true).await;
    }
    // Uploads that died before their manifest: one newer than every good one.
    put_snapshot(&d, &snap(&prefix, 5), 5, 1000, false).await;

    let hour = RetentionPolicy {
        retain: 2,
        grace: Duration::from_secs(3600),
    };
    let report = apply(&d, &prefix, &hour).await.unwrap();
    assert_eq!(report.plan.keep, [snap(&prefix, 4), snap(&prefix, 3)]);
    assert_eq!(report.plan.expire, [snap(&prefix, 2), snap(&prefix, 1)]);
    assert_eq!(report.plan.pending, [snap(&prefix, 5)]);
    let c = Catalog::load(&d, &prefix).await.unwrap();
    let left: Vec<&str> = c.snapshots.iter().map(|s| s.key()).collect();
    assert_eq!(left, [snap(&prefix, 5), snap(&prefix, 4), snap(&prefix, 3)]);
    assert!(
        d.head(&manifest_key(&snap(&prefix, 2)))
            .await
            .unwrap()
            .is_none()
    );

    // Past the grace period, the manifest-less snapshot goes; retain 0 still
    // keeps the newest good one.
    let now = RetentionPolicy {
        retain: 0,
        grace: Duration::ZERO,
    };
    let report = apply(&d, &prefix, &now).await.unwrap();
    assert_eq!(report.plan.keep, [snap(&prefix, 4)]);
    assert_eq!(report.plan.stale, [snap(&prefix, 5)]);
    let keys: Vec<String> = d
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, [manifest_key(&snap(&prefix, 4)), snap(&prefix, 4)]);
    for k in keys {
        d.delete(&k).await.unwrap();
    }
}

#[tokio::test]
async fn copy_to_the_second_region_is_verified() {
    let Some(env) = s3_env("copy_to_the_second_region_is_verified") else {
        return;
    };
    let a = primary(&env).await;
    let b = S3Destination::new(&env.copy)
        .await
        .expect("copy destination");
    let prefix = unique_prefix("copy");
    let key = snap(&prefix, 1);
    let len = 2 * 8 * MIB + 99;
    let sha = put_snapshot(&a, &key, 21, len, true).await;

    let started = Instant::now();
    let r = copy_snapshot(&a, &key, &b, &key).await.expect("copy");
    eprintln!(
        "copied {} MiB across regions in {:?}",
        len / MIB,
        started.elapsed()
    );
    assert_eq!(
        (r.bytes, r.sha256.as_str(), r.parts),
        (len, sha.as_str(), 3)
    );
    assert_eq!(
        drain(b.download(&key).await.unwrap()).await,
        (len, sha.clone())
    );
    assert_eq!(
        b.get_small(&manifest_key(&key), MIB).await.unwrap(),
        a.get_small(&manifest_key(&key), MIB).await.unwrap()
    );

    // The copy region was behind: the next run catches up.
    put_snapshot(&a, &snap(&prefix, 2), 22, 5000, true).await;
    put_snapshot(&a, &snap(&prefix, 3), 23, 6000, true).await;
    let done = copy_missing(&a, &prefix, &b, &prefix, 3).await.unwrap();
    let copied: Vec<&str> = done.iter().map(|r| r.target_key.as_str()).collect();
    assert_eq!(copied, [snap(&prefix, 2), snap(&prefix, 3)]);
    let good: Vec<String> = Catalog::load(&b, &prefix)
        .await
        .unwrap()
        .good()
        .map(|s| s.key().to_string())
        .collect();
    assert_eq!(good, [snap(&prefix, 3), snap(&prefix, 2), snap(&prefix, 1)]);

    // A snapshot that does not match its manifest is not copied.
    let bad = snap(&prefix, 4);
    put_snapshot(&a, &bad, 24, 3000, false).await;
    a.put_small(
        &manifest_key(&bad),
        manifest_json(&data_sha256(99, 3000), 3000),
    )
    .await
    .unwrap();
    let err = copy_snapshot(&a, &bad, &b, &bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(b.head(&bad).await.unwrap().is_none());
    assert!(b.head(&manifest_key(&bad)).await.unwrap().is_none());

    for d in [&a, &b] {
        for o in d.list(&prefix).await.unwrap() {
            d.delete(&o.key).await.unwrap();
        }
    }
}

#[tokio::test]
async fn wrong_credentials_are_access_denied() {
    let Some(env) = s3_env("wrong_credentials_are_access_denied") else {
        return;
    };
    let secret = "0000000000000000000000000000000000000000000000000000000000000000";
    let configs = [
        // An access key the endpoint does not know.
        S3Config {
            aws_access_key_id: Some("GK000000000000000000000000".into()),
            aws_secret_access_key: Some(SecretString::new(secret)),
            ..env.primary.clone()
        },
        // A known key with the wrong secret.
        S3Config {
            aws_secret_access_key: Some(SecretString::new(secret)),
            ..env.primary.clone()
        },
        // The copy region's key on the primary's bucket: no permission.
        S3Config {
            aws_access_key_id: env.copy.aws_access_key_id.clone(),
            aws_secret_access_key: env.copy.aws_secret_access_key.clone(),
            ..env.primary.clone()
        },
    ];
    for (i, config) in configs.iter().enumerate() {
        let d = S3Destination::with_tuning(config, quick()).await.unwrap();
        for err in [
            d.list("it/").await.unwrap_err(),
            d.upload("it/denied.snap", data_stream(1, 10))
                .await
                .unwrap_err(),
        ] {
            let msg = err.to_string();
            eprintln!("case {i}: {msg}");
            assert_eq!(err.kind(), ErrorKind::AccessDenied, "case {i}: {msg}");
            assert!(msg.contains("access denied by S3 endpoint"), "{msg}");
            assert!(
                msg.contains("check aws_access_key_id/aws_secret_access_key"),
                "{msg}"
            );
            assert!(msg.contains(&env.primary.aws_s3_bucket), "{msg}");
            for s in [
                secret,
                env.primary.aws_secret_access_key.as_ref().unwrap().expose(),
            ] {
                assert!(!msg.contains(s), "secret in message: {msg}");
                assert!(!format!("{err:?}").contains(s), "secret in Debug: {err:?}");
            }
        }
    }
}

#[tokio::test]
async fn missing_bucket_is_named() {
    let Some(env) = s3_env("missing_bucket_is_named") else {
        return;
    };
    let config = S3Config {
        aws_s3_bucket: "custos-no-such-bucket".into(),
        ..env.primary.clone()
    };
    let d = S3Destination::with_tuning(&config, quick()).await.unwrap();
    let errors = [
        d.list("it/").await.unwrap_err(),
        d.upload("it/x.snap", data_stream(1, 10)).await.unwrap_err(),
        d.head("it/x.snap").await.unwrap_err(),
        d.check_bucket().await.unwrap_err(),
    ];
    for err in errors {
        let msg = err.to_string();
        eprintln!("{msg}");
        assert_eq!(err.kind(), ErrorKind::NoSuchBucket, "{msg}");
        assert!(msg.contains("\"custos-no-such-bucket\""), "{msg}");
        assert!(msg.contains("aws_s3_bucket"), "{msg}");
    }
}

#[tokio::test]
async fn unreachable_endpoint_is_named() {
    let Some(env) = s3_env("unreachable_endpoint_is_named") else {
        return;
    };
    // A port nothing listens on: Garage stopped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = S3Config {
        aws_s3_endpoint: Some(endpoint.clone()),
        ..env.primary.clone()
    };
    let d = S3Destination::with_tuning(&config, quick()).await.unwrap();
    let started = Instant::now();
    let errors = [
        d.list("it/").await.unwrap_err(),
        d.upload("it/x.snap", data_stream(1, 10)).await.unwrap_err(),
        d.download("it/x.snap").await.err().unwrap(),
    ];
    eprintln!(
        "3 requests failed (2 attempts each) in {:?}",
        started.elapsed()
    );
    for err in errors {
        let msg = err.to_string();
        eprintln!("{msg}");
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{msg}");
        assert!(msg.contains(&endpoint), "{msg}");
        assert!(msg.contains("check aws_s3_endpoint"), "{msg}");
        let secret = env.primary.aws_secret_access_key.as_ref().unwrap().expose();
        assert!(!msg.contains(secret), "secret in message: {msg}");
    }
}

#[tokio::test]
async fn stopped_garage_is_unreachable() {
    let Some(mut garage) = PrivateGarage::start("stopped_garage_is_unreachable").await else {
        return;
    };
    let d = S3Destination::with_tuning(&garage.config, quick())
        .await
        .unwrap();
    let up = d
        .upload("s/before.snap", data_stream(1, 9 * MIB))
        .await
        .expect("upload while up");
    assert_eq!(up.parts, 2);
    garage.stop();
    let endpoint = garage.config.aws_s3_endpoint.clone().unwrap();
    for err in [
        d.upload("s/during.snap", data_stream(2, 10))
            .await
            .unwrap_err(),
        d.list("s/").await.unwrap_err(),
        d.head("s/before.snap").await.unwrap_err(),
    ] {
        let msg = err.to_string();
        eprintln!("{msg}");
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{msg}");
        assert!(msg.contains(&endpoint), "{msg}");
    }
}

/// Kilobytes of a `/proc/self/status` field (VmRSS, VmHWM).
fn proc_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Not a test: a measurement (run alone, `--ignored --nocapture`, so no other
/// test shares the process): upload and download of
/// `CUSTOS_DR_MEASURE_MIB` (default 256) MiB, with the process's peak RSS
/// growth, showing memory does not grow with the object.
#[tokio::test]
#[ignore = "measurement; run alone with --ignored --nocapture"]
async fn measure_upload_memory_and_time() {
    let Some(env) = s3_env("measure_upload_memory_and_time") else {
        return;
    };
    let mib: u64 = std::env::var("CUSTOS_DR_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let d = primary(&env).await;
    let prefix = unique_prefix("measure");
    let key = format!("{prefix}big.snap");
    // Reset the peak-RSS counter (Linux: "5" to clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = proc_kib("VmRSS");
    let started = Instant::now();
    let up = d.upload(&key, data_stream(77, mib * MIB)).await.unwrap();
    let up_time = started.elapsed();
    let up_peak = proc_kib("VmHWM");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let (n, sha) = drain(d.download(&key).await.unwrap()).await;
    let down_time = started.elapsed();
    let down_peak = proc_kib("VmHWM");
    assert_eq!((n, sha), (up.bytes, up.sha256));
    eprintln!(
        "{mib} MiB: upload {up_time:?} ({} parts, {:.0} MiB/s), peak RSS +{} MiB; \
         download {down_time:?} ({:.0} MiB/s), peak RSS +{} MiB (base {} MiB)",
        up.parts,
        mib as f64 / up_time.as_secs_f64(),
        up_peak.saturating_sub(base) / 1024,
        mib as f64 / down_time.as_secs_f64(),
        down_peak.saturating_sub(base) / 1024,
        base / 1024,
    );
    d.delete(&key).await.unwrap();
}
