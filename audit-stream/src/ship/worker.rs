//! The shipper worker: one task per sink that moves records from the local
//! audit log to the sink, in order, and persists how far the sink
//! acknowledged.
//!
//! Input: a following [`LogReader`] over the [`AuditLog`] (durable records
//! only), started after the sink's [`Checkpoint`]. Output: [`Sink::send`]
//! calls, checkpoint files, `custos_audit_sink_*` metrics and the shared
//! status [`super::Shipper::status`] reads.
//!
//! The loop: read what is available (up to `batch_size` records /
//! `batch_bytes`), or sleep on the log's durable-end `watch` until something
//! is (probing the sink every `health_interval` meanwhile); send; mark the
//! acknowledged records; store the checkpoint at the end of the
//! acknowledged prefix (never past a record the sink has not taken); send
//! only the rest again after a capped exponential backoff, forever; then the
//! next batch. When a checkpoint crosses into a new segment, ask the log to
//! prune with the lowest checkpoint of all sinks and the log's retention.
//! Stopping (the `watch` shutdown signal) abandons the in-flight attempt:
//! unacknowledged records are sent again after the next start (Kafka may see
//! them twice, Elasticsearch ignores them by `_id`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::{Outgoing, SharedState, ShipOptions, Sink, SinkError, backlog_bytes, lock};
use crate::error::AuditError;
use crate::log::{AuditLog, Checkpoint, LogReader};
use crate::metrics as m;

/// What a worker needs besides its sink and shutdown signal.
pub(crate) struct WorkerCtx {
    /// The device's mount path: checkpoint name and `sink` label.
    pub(crate) sink_name: String,
    pub(crate) log: Arc<AuditLog>,
    pub(crate) opts: ShipOptions,
    pub(crate) shared: SharedState,
}

/// Everything the loop carries from one batch to the next.
struct State {
    reader: LogReader,
    /// A record read while idle, to start the next batch.
    carry: Option<Outgoing>,
    checkpoint: u64,
    /// End of the acknowledged bytes: (segment first seq, offset).
    acked_pos: (u64, u64),
    backoff: Backoff,
    probed: bool,
}

/// Open a reader at the start of the segment holding `checkpoint + 1` and
/// read past the acknowledged records, to learn their byte offset (for the
/// backlog in bytes). Returns the reader, the first unacknowledged record if
/// one is durable already, and the acknowledged position.
fn position(
    log: &AuditLog,
    checkpoint: u64,
    sink: &str,
) -> (LogReader, Option<Outgoing>, (u64, u64)) {
    let dir = log.log_dir().clone();
    let segments = dir.segments().unwrap_or_default();
    let seg = segments
        .iter()
        .rev()
        .find(|s| s.first_seq <= checkpoint + 1)
        .or_else(|| segments.first())
        .map(|s| s.first_seq)
        .unwrap_or(1);
    let mut reader = LogReader::follow(dir, seg, log.subscribe());
    let mut pos = (seg, 0u64);
    loop {
        match reader.try_next() {
            Ok(Some(rec)) if rec.seq <= checkpoint => {
                if rec.segment != pos.0 {
                    pos = (rec.segment, 0);
                }
                pos.1 += rec.line_len;
            }
            Ok(Some(rec)) => return (reader, Some(Outgoing::from_record(rec)), pos),
            Ok(None) => return (reader, None, pos),
            Err(AuditError::CorruptRecord { segment, line }) => {
                tracing::error!(
                    sink,
                    segment,
                    line,
                    "audit shipper skipped a corrupt local log record"
                );
                m::sink_failure(sink, "corrupt");
            }
            Err(e) => {
                tracing::error!(sink, error = %e, "audit shipper could not read the local log");
                return (reader, None, pos);
            }
        }
    }
}

fn parse_time(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &Rfc3339).ok()
}

/// The event time of the first record after `checkpoint`, read from the
/// log (used for the lag before the worker has read that record itself).
pub(crate) fn oldest_unacked_time(log: &AuditLog, checkpoint: u64) -> Option<time::OffsetDateTime> {
    let mut r = LogReader::follow(log.log_dir().clone(), checkpoint + 1, log.subscribe());
    match r.try_next() {
        Ok(Some(rec)) => parse_time(&Outgoing::from_record(rec).time),
        _ => None,
    }
}

/// Run `fut`, publishing the sink's gauges every second meanwhile (a send
/// or probe can wait for a dead sink for many seconds).
async fn publishing<F: std::future::Future>(ctx: &WorkerCtx, fut: F) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => publish(ctx),
        }
    }
}

/// Publish the sink's gauges from the shared status.
fn publish(ctx: &WorkerCtx) {
    let name = &ctx.sink_name;
    let durable = *ctx.log.subscribe().borrow();
    // The oldest unshipped record's time is known while a batch is in flight
    // (set by `ship`); between an acknowledgement and the next read it is
    // briefly unknown and the lag reads 0. Never scan the log here: this runs
    // after every batch, and a scan from the checkpoint costs a whole segment.
    let s = lock(&ctx.shared);
    let records = durable.seq.saturating_sub(s.checkpoint);
    let bytes = if records == 0 {
        0
    } else {
        backlog_bytes(
            ctx.log.log_dir(),
            s.acked_pos,
            (durable.segment, durable.offset),
        )
    };
    let lag = match (records, s.oldest_pending) {
        (0, _) | (_, None) => 0.0,
        (_, Some(t)) => (time::OffsetDateTime::now_utc() - t)
            .as_seconds_f64()
            .max(0.0),
    };
    m::sink_gauge(m::SINK_UP, name, if s.up { 1.0 } else { 0.0 });
    m::sink_gauge(m::SINK_BACKLOG_RECORDS, name, records as f64);
    m::sink_gauge(m::SINK_BACKLOG_BYTES, name, bytes as f64);
    m::sink_gauge(m::SINK_LAG_SECONDS, name, lag);
    m::sink_gauge(m::SINK_CHECKPOINT, name, s.checkpoint as f64);
}

fn set_health(ctx: &WorkerCtx, up: bool, error: Option<&SinkError>) {
    let mut s = lock(&ctx.shared);
    s.up = up;
    s.last_error = error.map(ToString::to_string);
}

/// Read what is available now into `batch`, up to the limits.
fn fill(ctx: &WorkerCtx, st: &mut State, batch: &mut Vec<Outgoing>) {
    let mut bytes: u64 = batch.iter().map(|o| o.payload.len() as u64).sum();
    if let Some(c) = st.carry.take() {
        bytes += c.payload.len() as u64;
        batch.push(c);
    }
    while batch.len() < ctx.opts.batch_size && bytes < ctx.opts.batch_bytes {
        match st.reader.try_next() {
            Ok(Some(rec)) => {
                let o = Outgoing::from_record(rec);
                bytes += o.payload.len() as u64;
                batch.push(o);
            }
            Ok(None) => break,
            Err(AuditError::CorruptRecord { segment, line }) => {
                tracing::error!(
                    sink = %ctx.sink_name,
                    segment,
                    line,
                    "audit shipper skipped a corrupt local log record (custos audit verify reports it)"
                );
                m::sink_failure(&ctx.sink_name, "corrupt");
            }
            Err(e) => {
                tracing::error!(sink = %ctx.sink_name, error = %e, "audit shipper could not read the local log");
                break;
            }
        }
    }
}

/// Store the checkpoint at the end of the acknowledged prefix of `batch`
/// (from `*done`), and prune when a segment was completed.
fn advance(ctx: &WorkerCtx, st: &mut State, batch: &[Outgoing], acked: &[bool], done: &mut usize) {
    let start = *done;
    while *done < batch.len() && acked[*done] {
        *done += 1;
    }
    if *done == start {
        return;
    }
    let mut pos = st.acked_pos;
    for o in &batch[start..*done] {
        if o.segment != pos.0 {
            pos = (o.segment, 0);
        }
        pos.1 += o.line_len;
    }
    let seq = batch[*done - 1].seq;
    let ckpt_dir = ctx.log.checkpoint_dir();
    if let Err(e) = Checkpoint::store(&ckpt_dir, &ctx.sink_name, seq) {
        // The records are in the sink; without the file they are sent again
        // after a restart (deduplicated by id), so go on.
        tracing::error!(sink = %ctx.sink_name, error = %e, "audit shipper could not store its checkpoint");
        return;
    }
    let crossed = pos.0 != st.acked_pos.0;
    st.checkpoint = seq;
    st.acked_pos = pos;
    {
        let mut s = lock(&ctx.shared);
        s.checkpoint = seq;
        s.acked_pos = pos;
        s.oldest_pending = batch.get(*done).and_then(|o| parse_time(&o.time));
    }
    let retention = ctx.log.options().retention;
    if crossed && retention.is_limited() {
        match Checkpoint::min(&ckpt_dir).and_then(|min| ctx.log.prune(min, &retention)) {
            Ok(r) if !r.deleted.is_empty() => tracing::info!(
                sink = %ctx.sink_name,
                segments = r.deleted.len(),
                bytes = r.bytes_freed,
                "audit log segments pruned after every sink acknowledged them"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(sink = %ctx.sink_name, error = %e, "audit log prune failed"),
        }
    }
}

/// Sleep `d` unless told to stop; returns false when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Probe until the sink answers; false when stopping.
async fn ensure_probed(
    ctx: &WorkerCtx,
    st: &mut State,
    sink: &mut dyn Sink,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    while !st.probed {
        let r = tokio::select! {
            r = publishing(ctx, sink.probe()) => r,
            _ = stop.changed() => return false,
        };
        match r {
            Ok(()) => {
                st.probed = true;
                st.backoff.reset();
                set_health(ctx, true, None);
                tracing::info!(sink = %ctx.sink_name, kind = sink.kind(), "audit sink reachable");
            }
            Err(e) => {
                set_health(ctx, false, Some(&e));
                m::sink_failure(&ctx.sink_name, e.reason());
                publish(ctx);
                let delay = st.backoff.next_delay();
                tracing::warn!(
                    sink = %ctx.sink_name,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "audit sink not reachable; the backlog stays on disk"
                );
                if !pause(delay, stop).await {
                    return false;
                }
            }
        }
    }
    true
}

/// Ship `batch` until every record is acknowledged. False when stopping.
async fn ship(
    ctx: &WorkerCtx,
    st: &mut State,
    sink: &mut dyn Sink,
    batch: &[Outgoing],
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = ctx.sink_name.as_str();
    lock(&ctx.shared).oldest_pending = batch.first().and_then(|o| parse_time(&o.time));
    let mut acked = vec![false; batch.len()];
    let mut done = 0usize;
    let mut todo: Vec<usize> = (0..batch.len()).collect();
    loop {
        if !ensure_probed(ctx, st, sink, stop).await {
            return false;
        }
        let refs: Vec<&Outgoing> = todo.iter().map(|&i| &batch[i]).collect();
        let t0 = Instant::now();
        let result = tokio::select! {
            r = publishing(ctx, sink.send(&refs)) => r,
            _ = stop.changed() => return false,
        };
        m::sink_histogram(m::SINK_SEND_SECONDS, name, t0.elapsed().as_secs_f64());
        let failed: Vec<(usize, SinkError)> = match result {
            Ok(f) => f
                .into_iter()
                .filter_map(|(j, e)| todo.get(j).map(|&i| (i, e)))
                .collect(),
            Err(e) => todo.iter().map(|&i| (i, e.clone())).collect(),
        };
        let failed_idx: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
        let mut shipped = 0u64;
        for &i in &todo {
            if !failed_idx.contains(&i) {
                acked[i] = true;
                shipped += 1;
            }
        }
        if shipped > 0 {
            m::sink_counter(m::SINK_SHIPPED, name, shipped);
        }
        advance(ctx, st, batch, &acked, &mut done);
        let Some((_, first_err)) = failed.first() else {
            st.backoff.reset();
            set_health(ctx, true, None);
            lock(&ctx.shared).oldest_pending = None;
            publish(ctx);
            return true;
        };
        set_health(ctx, false, Some(first_err));
        m::sink_failure(name, first_err.reason());
        m::sink_counter(m::SINK_RETRIED, name, failed.len() as u64);
        publish(ctx);
        let delay = st.backoff.next_delay();
        match first_err {
            SinkError::Rejected(_) => tracing::error!(
                sink = name,
                error = %first_err,
                records = failed.len(),
                first_seq = batch[failed[0].0].seq,
                retry_in_ms = delay.as_millis() as u64,
                "audit sink REJECTED records; shipping is stopped at this record until an operator fixes the sink (the backlog stays on disk)"
            ),
            SinkError::Unavailable(_) => tracing::warn!(
                sink = name,
                error = %first_err,
                records = failed.len(),
                attempt = st.backoff.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                "audit sink unavailable; retrying (the backlog stays on disk)"
            ),
        }
        if !publishing(ctx, pause(delay, stop)).await {
            return false;
        }
        let mut next: Vec<usize> = failed.into_iter().map(|(i, _)| i).collect();
        next.sort_unstable();
        todo = next;
    }
}

/// The worker loop. See the module documentation.
pub(crate) async fn run(ctx: WorkerCtx, mut sink: Box<dyn Sink>, mut stop: watch::Receiver<bool>) {
    let name = ctx.sink_name.clone();
    let mut checkpoint = lock(&ctx.shared).checkpoint;
    let durable = ctx.log.durable_seq();
    if checkpoint > durable {
        tracing::warn!(
            sink = %name,
            checkpoint,
            durable,
            "audit sink checkpoint is ahead of the local log (the log was replaced); shipping from its start"
        );
        checkpoint = 0;
    }
    let (reader, carry, acked_pos) = position(&ctx.log, checkpoint, &name);
    {
        let mut s = lock(&ctx.shared);
        s.checkpoint = checkpoint;
        s.acked_pos = acked_pos;
    }
    let mut st = State {
        reader,
        carry,
        checkpoint,
        acked_pos,
        backoff: Backoff::new(ctx.opts.retry_initial, ctx.opts.retry_max),
        probed: false,
    };
    tracing::info!(sink = %name, kind = sink.kind(), checkpoint, "audit shipper started");
    publish(&ctx);
    let mut probe_due = tokio::time::Instant::now();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(ctx.opts.batch_size);
    loop {
        if *stop.borrow() {
            break;
        }
        fill(&ctx, &mut st, &mut batch);
        if batch.is_empty() {
            tokio::select! {
                _ = stop.changed() => break,
                r = st.reader.next() => match r {
                    Ok(rec) => st.carry = Some(Outgoing::from_record(rec)),
                    Err(AuditError::Closed) => {
                        // The log shut down: nothing more will come.
                        let _ = stop.changed().await;
                        break;
                    }
                    Err(AuditError::CorruptRecord { segment, line }) => {
                        tracing::error!(sink = %name, segment, line, "audit shipper skipped a corrupt local log record");
                        m::sink_failure(&name, "corrupt");
                    }
                    Err(e) => {
                        tracing::error!(sink = %name, error = %e, "audit shipper could not read the local log");
                        if !pause(ctx.opts.retry_max, &mut stop).await {
                            break;
                        }
                    }
                },
                _ = tokio::time::sleep_until(probe_due) => {
                    let r = tokio::select! {
                        r = publishing(&ctx, sink.probe()) => r,
                        _ = stop.changed() => break,
                    };
                    match r {
                        Ok(()) => {
                            st.probed = true;
                            set_health(&ctx, true, None);
                        }
                        Err(e) => {
                            st.probed = false;
                            set_health(&ctx, false, Some(&e));
                            m::sink_failure(&name, e.reason());
                            tracing::warn!(sink = %name, error = %e, "audit sink health probe failed");
                        }
                    }
                    publish(&ctx);
                    probe_due = tokio::time::Instant::now() + ctx.opts.health_interval;
                }
            }
            continue;
        }
        if !ship(&ctx, &mut st, sink.as_mut(), &batch, &mut stop).await {
            break;
        }
        batch.clear();
        probe_due = tokio::time::Instant::now() + ctx.opts.health_interval;
    }
    sink.close().await;
    tracing::info!(sink = %name, checkpoint = st.checkpoint, "audit shipper stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogOptions, Retention};
    use crate::ship::{SendOutcome, Shipper};
    use async_trait::async_trait;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that records ids, can be down, and rejects ids it is told to.
    #[derive(Clone, Default)]
    struct Fake {
        got: Arc<Mutex<Vec<String>>>,
        down: Arc<AtomicBool>,
        reject_once: Arc<Mutex<HashSet<String>>>,
    }

    #[async_trait]
    impl Sink for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        async fn probe(&mut self) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                Err(SinkError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }
        async fn send(&mut self, batch: &[&Outgoing]) -> Result<SendOutcome, SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError::Unavailable("down".into()));
            }
            let mut failed = Vec::new();
            let mut reject = self.reject_once.lock().unwrap();
            let mut got = self.got.lock().unwrap();
            for (i, o) in batch.iter().enumerate() {
                if reject.remove(&o.id) {
                    failed.push((i, SinkError::Unavailable("429".into())));
                } else {
                    got.push(o.id.clone());
                }
            }
            Ok(failed)
        }
        async fn close(&mut self) {}
    }

    fn opts() -> ShipOptions {
        ShipOptions {
            batch_size: 7,
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            health_interval: Duration::from_millis(50),
            ..ShipOptions::default()
        }
    }

    fn event(i: u64) -> Vec<u8> {
        format!(r#"{{"time":"2025-01-02T03:04:05Z","type":"request","request":{{"id":"r{i}"}}}}"#)
            .into_bytes()
    }

    async fn wait_for(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn ships_in_order_survives_outage_and_partial_failures() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            AuditLog::open(
                dir.path(),
                LogOptions {
                    min_free_bytes: 0,
                    segment_size: 2048,
                    retention: Retention {
                        max_bytes: Some(1),
                        max_age: None,
                    },
                    ..LogOptions::default()
                },
            )
            .unwrap(),
        );
        // Registered before anything is written, as the core does at unseal,
        // so retention cannot prune what the sink has not seen.
        Checkpoint::register(&log.checkpoint_dir(), "fake/", 0).unwrap();
        for i in 1..=20 {
            log.append(event(i)).await.unwrap();
        }
        let fake = Fake::default();
        fake.reject_once.lock().unwrap().insert("r3-request".into());
        let sh = Shipper::start(
            "fake/",
            "",
            BTreeMap::new(),
            "file/",
            log.clone(),
            Box::new(fake.clone()),
            opts(),
        )
        .unwrap();
        wait_for(|| sh.status().records == 0 && sh.status().checkpoint == 20).await;
        assert!(sh.status().up);
        // r3 failed once and was retried alone: every id exactly once.
        let got = fake.got.lock().unwrap().clone();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20, "{got:?}");

        // Sink down: the backlog grows, health says so, nothing is lost.
        fake.down.store(true, Ordering::SeqCst);
        for i in 21..=60 {
            log.append(event(i)).await.unwrap();
        }
        wait_for(|| !sh.status().up).await;
        let st = sh.status();
        assert_eq!(st.records, 40, "{st:?}");
        assert!(st.bytes > 0 && st.lag_seconds > 0.0, "{st:?}");
        assert!(st.last_error.is_some());
        // Segments are kept while the sink lags, whatever retention says.
        log.roll().await.unwrap();
        assert!(
            log.log_dir()
                .segments()
                .unwrap()
                .iter()
                .any(|s| s.first_seq <= 21)
        );

        fake.down.store(false, Ordering::SeqCst);
        wait_for(|| sh.status().records == 0).await;
        let st = sh.status();
        assert!(st.up && st.bytes == 0 && st.checkpoint == 60, "{st:?}");
        let got = fake.got.lock().unwrap().clone();
        let ids: Vec<String> = (1..=60).map(|i| format!("r{i}-request")).collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(sorted, want);
        // In order, apart from the one retried item.
        let in_order: Vec<&String> = got.iter().filter(|i| *i != "r3-request").collect();
        let want_order: Vec<&String> = ids.iter().filter(|i| *i != "r3-request").collect();
        assert_eq!(in_order, want_order);
        // Acknowledged segments were pruned (retention max_bytes = 1).
        log.roll().await.unwrap();
        log.append(event(61)).await.unwrap();
        wait_for(|| sh.status().checkpoint == 61).await;
        log.roll().await.unwrap();
        let first = log.log_dir().segments().unwrap()[0].first_seq;
        assert!(first > 1, "acknowledged segments should be pruned");
        sh.shutdown().await;
        assert_eq!(
            Checkpoint::load(&log.checkpoint_dir(), "fake/").unwrap(),
            61
        );

        // A restart resumes after the checkpoint: nothing is sent again.
        let before = fake.got.lock().unwrap().len();
        log.append(event(62)).await.unwrap();
        let sh = Shipper::start(
            "fake/",
            "",
            BTreeMap::new(),
            "file/",
            log.clone(),
            Box::new(fake.clone()),
            opts(),
        )
        .unwrap();
        wait_for(|| sh.status().checkpoint == 62).await;
        assert_eq!(fake.got.lock().unwrap().len(), before + 1);
        sh.shutdown().await;
        log.shutdown().await;
    }
}
