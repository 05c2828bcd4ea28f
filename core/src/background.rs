//! Background work that must never slow the request path: the audit-log
//! followers (the `sys/audit-query` index and the access-pattern metrics).
//!
//! They read the durable audit log after the fact, so a delay costs them
//! nothing but lag. [`spawn_background`] runs such a future on its own OS
//! thread with its own single-threaded tokio runtime, so it never occupies
//! the request path's workers; at [`Priority::Low`] it first lowers that
//! thread's scheduling priority (`nice` [`NICE`]), and the runtime's blocking
//! pool threads, created from it, inherit the priority. When the machine has
//! idle cores (the usual case: requests wait on the audit fsync) low-priority
//! work runs at once; when it is busy, requests go first and the work
//! catches up afterwards (the followers' lag is a metric).

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The `nice` value of background threads (0 is normal, 19 the lowest).
pub const NICE: i32 = 10;

/// How a background thread competes with the request path for a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// As requests: work whose lag matters on a busy node (the access-anomaly
    /// detector, whose alerts would otherwise come late exactly when a
    /// client floods the server).
    Normal,
    /// `nice` [`NICE`]: work that may fall behind under load and catch up
    /// afterwards (the `sys/audit-query` index).
    Low,
}

/// Run `work` on a dedicated thread named `name`, with its own
/// single-threaded runtime, at `priority`; the returned handle completes when
/// `work` does. If the thread or its runtime cannot be made, `work` runs on
/// the caller's runtime at normal priority instead (logged). Must be called
/// from within a tokio runtime.
pub fn spawn_background<F>(name: &str, priority: Priority, work: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (done_tx, done_rx) = oneshot::channel::<()>();
    // `work` goes to the thread through a channel rather than its closure,
    // so it is still ours to run here if the thread cannot be spawned.
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<F>(1);
    let server_runtime = tokio::runtime::Handle::current();
    let thread_name = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let Ok(work) = work_rx.recv() else { return };
            if priority == Priority::Low {
                lower_priority(&thread_name);
            }
            match tokio::runtime::Builder::new_current_thread()
                .thread_name(format!("{thread_name}-blocking"))
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(work),
                Err(e) => {
                    tracing::error!(thread = %thread_name, error = %e, "no background runtime; running on the server runtime");
                    let _ = server_runtime.block_on(server_runtime.spawn(work));
                }
            }
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            // The thread holds the receiver until it has taken `work`.
            if let Err(std::sync::mpsc::SendError(work)) = work_tx.send(work) {
                return tokio::spawn(work);
            }
            tokio::spawn(async move {
                let _ = done_rx.await;
            })
        }
        Err(e) => {
            tracing::warn!(thread = %name, error = %e, "no background thread; running on the server runtime");
            tokio::spawn(work)
        }
    }
}

/// Lower the calling thread's priority to [`NICE`] (a per-thread attribute
/// on Linux). Failure only means the work runs at normal priority.
fn lower_priority(name: &str) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        tracing::warn!(thread = %name, error = %e, "could not lower background thread priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_at_lower_priority_and_completes() {
        let before = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (tx, rx) = oneshot::channel();
        let h = spawn_background("custos-test-bg", Priority::Low, async move {
            let tid = rustix::thread::gettid();
            let own = rustix::process::getpriority_process(Some(tid)).unwrap();
            // Blocking-pool threads are spawned from the background thread.
            let pool = tokio::task::spawn_blocking(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            })
            .await
            .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let _ = tx.send((own, pool));
        });
        h.await.unwrap();
        let (own, pool) = rx.await.unwrap();
        // A test run already below that priority stays there.
        assert!(own >= NICE, "background thread nice {own}");
        assert!(pool >= NICE, "blocking pool thread nice {pool}");
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(before, after, "the caller's priority must be untouched");
    }

    #[tokio::test]
    async fn normal_priority_work_keeps_the_callers_priority() {
        let caller = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (tx, rx) = oneshot::channel();
        spawn_background("custos-test-fg", Priority::Normal, async move {
            let tid = rustix::thread::gettid();
            let _ = tx.send(rustix::process::getpriority_process(Some(tid)).unwrap());
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap(), caller);
    }
}
