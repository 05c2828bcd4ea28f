//! The periodic worker: Vault's rollback manager, the part that calls each
//! mount's periodic function. Today that is transit's automatic key
//! rotation (`auto_rotate_period`); any backend may implement
//! [`Backend::periodic`](crate::logical::Backend::periodic).
//!
//! The worker starts at unseal with the other workers
//! ([`crate::core::Core`]'s `start_workers`), wakes every [`PERIODIC_EVERY`]
//! and, on the active node only (a standby's storage is the leader's, and
//! rotating there would race it), calls every mounted backend's periodic
//! function with the current time. A failing mount is logged and retried at
//! the next tick; it never stops the others. It stops when the core seals or
//! shuts down (the unsealed state's stop signal), finishing the tick it is in.
//!
//! [`run_periodic_funcs`] is one tick with an explicit `now`, so tests can
//! prove what happens when a period has elapsed without waiting an hour.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::Core;
use crate::router::Router;

/// How often the periodic worker runs the mounts' periodic functions (as
/// Vault's rollback manager: every minute).
pub const PERIODIC_EVERY: Duration = Duration::from_secs(60);

/// The current time in unix nanoseconds.
pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// One tick: call every mount's periodic function with `now_ns`. Returns how
/// many mounts failed (each is logged).
pub async fn run_periodic_funcs(router: &Router, now_ns: i64) -> usize {
    let mut failed = 0;
    for entry in router.entries() {
        // Unmounted meanwhile: nothing to do.
        let Some(mounted) = router.get(&entry.path) else {
            continue;
        };
        if let Err(e) = mounted
            .backend
            .periodic(&mounted.entry.path, &mounted.storage, now_ns)
            .await
        {
            failed += 1;
            tracing::warn!(mount = %mounted.entry.path, error = %e, "periodic function failed; retrying at the next tick");
        }
    }
    failed
}

/// Start the periodic worker of `core`, ticking every `every` until `stop`
/// turns true or the core is gone. The first tick comes one period after
/// the start (unseal is busy enough).
pub fn start(core: Weak<Core>, every: Duration, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + every;
        let mut tick = tokio::time::interval_at(start, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(core) = core.upgrade() else { return };
            if !core.is_active() {
                continue;
            }
            // Sealed meanwhile: the stop signal follows.
            if let Ok(u) = core.unsealed() {
                run_periodic_funcs(&u.router, now_ns()).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::barrier::Barrier;
    use crate::engines::transit::TransitBackend;
    use crate::logical::{Operation, Request};
    use crate::router::{MountEntry, Mounted};
    use crate::storage::StorageView;
    use crate::storage::memory::MemoryStore;
    use serde_json::{Value, json};

    const HOUR_NS: i64 = 3_600_000_000_000;

    async fn transit_router() -> (Arc<Router>, Arc<TransitBackend>, StorageView) {
        let barrier = Arc::new(Barrier::new(Arc::new(MemoryStore::new())));
        barrier.initialize(&[3u8; 32]).await.unwrap();
        let storage = StorageView::new(barrier, "logical/periodic-test/");
        let backend = Arc::new(TransitBackend::new());
        let entry = MountEntry::new("transit/", "transit", "");
        let router = Arc::new(Router::new());
        router.insert(Mounted::new(entry, backend.clone(), storage.clone()).unwrap());
        (router, backend, storage)
    }

    async fn write(router: &Router, path: &str, body: Value) -> Value {
        let (m, rel) = router.route(path).unwrap();
        let mut req = Request::new(Operation::Update, path.to_string());
        req.mount_point = m.entry.path.clone();
        req.mount_type = m.entry.mount_type.clone();
        req.relative_path = rel.clone();
        if let Value::Object(o) = body {
            req.data = o;
        }
        let r = m.resolve(&rel, Operation::Update).unwrap();
        let resp = r.call(&req).await.unwrap().unwrap();
        Value::Object(resp.data.unwrap_or_default())
    }

    async fn latest(router: &Router, key: &str) -> i64 {
        let (m, rel) = router.route(&format!("transit/keys/{key}")).unwrap();
        let req = Request::new(Operation::Read, format!("transit/keys/{key}"));
        let r = m.resolve(&rel, Operation::Read).unwrap();
        let resp = r.call(&req).await.unwrap().unwrap();
        resp.data.unwrap()["latest_version"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn a_key_whose_period_elapsed_is_rotated_and_others_are_not() {
        let (router, backend, storage) = transit_router().await;
        let t0 = now_ns();
        write(
            &router,
            "transit/keys/hourly",
            json!({"auto_rotate_period": "1h"}),
        )
        .await;
        write(
            &router,
            "transit/keys/daily",
            json!({"auto_rotate_period": "24h"}),
        )
        .await;
        write(&router, "transit/keys/manual", json!({})).await;
        // Set later through config, as an operator would.
        write(&router, "transit/keys/manual2", json!({})).await;
        write(
            &router,
            "transit/keys/manual2/config",
            json!({"auto_rotate_period": 7200}),
        )
        .await;

        // Nothing is due yet.
        assert_eq!(run_periodic_funcs(&router, t0).await, 0);
        for k in ["hourly", "daily", "manual", "manual2"] {
            assert_eq!(latest(&router, k).await, 1, "{k}");
        }
        // Exactly at the period: not yet (Vault rotates once now is after it).
        let r = backend
            .rotate_due_keys("transit/", &storage, t0 - 1_000_000_000 + HOUR_NS)
            .await
            .unwrap();
        assert!(r.rotated.is_empty(), "{r:?}");

        // Ninety minutes later: only the hourly key.
        let t1 = t0 + 90 * 60 * 1_000_000_000;
        assert_eq!(run_periodic_funcs(&router, t1).await, 0);
        assert_eq!(latest(&router, "hourly").await, 2);
        assert_eq!(latest(&router, "daily").await, 1);
        assert_eq!(latest(&router, "manual").await, 1);
        assert_eq!(latest(&router, "manual2").await, 1);
        // The same tick again rotates nothing: v2 was created at t1.
        let r = backend
            .rotate_due_keys("transit/", &storage, t1)
            .await
            .unwrap();
        assert!(r.rotated.is_empty(), "{r:?}");

        // Three hours on: hourly again (v2 is from t1) and manual2 (2h); a
        // day on: daily too. Never the key without a period.
        let r = backend
            .rotate_due_keys("transit/", &storage, t0 + 3 * HOUR_NS)
            .await
            .unwrap();
        assert_eq!(r.rotated, vec!["hourly".to_string(), "manual2".to_string()]);
        assert!(r.failed.is_empty());
        let r = backend
            .rotate_due_keys("transit/", &storage, t0 + 25 * HOUR_NS)
            .await
            .unwrap();
        assert_eq!(
            r.rotated,
            vec![
                "daily".to_string(),
                "hourly".to_string(),
                "manual2".to_string()
            ]
        );
        assert_eq!(latest(&router, "manual").await, 1);
        assert_eq!(latest(&router, "daily").await, 2);

        // Data encrypted before a rotation still decrypts after it.
        let ct = write(
            &router,
            "transit/encrypt/daily",
            json!({"plaintext": "aGk="}),
        )
        .await;
        backend
            .rotate_due_keys("transit/", &storage, t0 + 100 * HOUR_NS)
            .await
            .unwrap();
        let pt = write(
            &router,
            "transit/decrypt/daily",
            json!({"ciphertext": ct["ciphertext"]}),
        )
        .await;
        assert_eq!(pt["plaintext"], json!("aGk="));
        // Disabling the period stops it.
        write(
            &router,
            "transit/keys/daily/config",
            json!({"auto_rotate_period": 0}),
        )
        .await;
        let r = backend
            .rotate_due_keys("transit/", &storage, t0 + 1000 * HOUR_NS)
            .await
            .unwrap();
        assert!(!r.rotated.contains(&"daily".to_string()), "{r:?}");
    }

    #[tokio::test]
    async fn the_worker_stops_on_the_signal() {
        let (tx, rx) = watch::channel(false);
        let h = start(Weak::new(), Duration::from_secs(3600), rx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!h.is_finished(), "waits for its first tick");
        let _ = tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("worker ended")
            .expect("no panic");
    }
}
