//! The broker over real file devices: fail closed only when no device recorded.

use std::sync::Arc;

use custos_audit::{AuditBroker, AuditDevice, AuditError, FileDevice, FileOptions, hmac_sha256};

use crate::support::{SECRET, read_log, request_event, response_event, salt};

fn device(path: std::path::PathBuf, mount: &str) -> Arc<FileDevice> {
    let opts = FileOptions {
        min_free_bytes: 0,
        ..FileOptions::default()
    };
    Arc::new(
        FileDevice::open(path, salt(), opts)
            .unwrap()
            .named(mount, ""),
    )
}

#[tokio::test]
async fn one_bad_device_alone_fails_closed_but_one_good_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let bad_dir = dir.path().join("bad");
    let bad = device(bad_dir.join("audit.log"), "bad/");
    let good = device(dir.path().join("good.log"), "good/");
    std::fs::remove_dir_all(&bad_dir).unwrap();
    assert!(bad.reopen().await.is_err());

    let only_bad = AuditBroker::with_devices(vec![bad.clone() as Arc<dyn AuditDevice>]);
    // `sys/health` hears it before a request tries: the directory is gone.
    assert!(
        matches!(only_bad.health(), Err(AuditError::Io { .. })),
        "{:?}",
        only_bad.health()
    );
    assert_eq!(
        only_bad.log_request(request_event("r1")).await,
        Err(AuditError::NoDeviceRecorded {
            failed: 1,
            total: 1
        })
    );

    let both = AuditBroker::with_devices(vec![bad.clone() as Arc<dyn AuditDevice>, good.clone()]);
    assert_eq!(both.health(), Ok(()));
    both.log_request(request_event("r2")).await.unwrap();
    both.log_response(response_event("r2")).await.unwrap();
    let infos = both.list();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[1].path, "good/");
    assert_eq!(infos[1].kind, "file");
    assert!(!infos[1].local);
    assert_eq!(
        both.hash("good", SECRET),
        Some(hmac_sha256(&salt(), SECRET))
    );
    both.shutdown().await;
    assert!(both.is_empty());

    let (text, lines) = read_log(good.audit_log().log_dir());
    assert!(!text.contains(SECRET));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "request");
    assert_eq!(lines[1]["type"], "response");
}

#[tokio::test]
async fn no_devices_audits_nothing_and_succeeds() {
    let broker = AuditBroker::new();
    assert!(broker.is_empty());
    assert_eq!(broker.health(), Ok(()));
    broker.log_request(request_event("x")).await.unwrap();
    broker.log_response(response_event("x")).await.unwrap();
}
