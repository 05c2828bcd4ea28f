//! The audit query index over a real local log (events written by the
//! `file` device, so accessors are HMAC'd as in production), the same query
//! against the Elasticsearch API stand-in (osmem-server, address in
//! `CUSTOS_TEST_ES`), and the access-pattern detector driven by event time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::access::{AccessDetector, AccessOptions};
use custos_audit::event::format_rfc3339;
use custos_audit::log::Retention;
use custos_audit::query::{
    AuditIndex, ClientReads, EsOptions, EsQuery, QueryAnswer, QueryParams, run_indexer,
};
use custos_audit::{
    AuditAuth, AuditDevice, AuditEvent, AuditRequest, AuditResponse, FileDevice, FileOptions,
    LogDir, LogReader, hmac_sha256,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::support::salt;

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200;
const PATH: &str = "secret/data/app/db";

fn device(dir: &std::path::Path) -> FileDevice {
    let opts = FileOptions {
        min_free_bytes: 0,
        ..FileOptions::default()
    };
    FileDevice::open(dir.to_path_buf(), salt(), opts).expect("open file device")
}

fn at(secs: i64) -> String {
    format_rfc3339(OffsetDateTime::from_unix_timestamp(secs).expect("time"))
}

fn nanos(secs: i64) -> i64 {
    secs * 1_000_000_000
}

/// A successful KV v2 read of `path` at `version` by the token with
/// `accessor`, at unix second `t`: its request and response events.
fn kv_read(
    id: &str,
    accessor: &str,
    name: &str,
    path: &str,
    version: u64,
    t: i64,
) -> [AuditEvent; 2] {
    let auth = AuditAuth {
        client_token: format!("hvs.token-of-{accessor}"),
        accessor: accessor.into(),
        display_name: name.into(),
        policies: vec!["default".into(), name.into()],
        metadata: [("role_name".to_string(), format!("role-{name}"))].into(),
        token_type: "service".into(),
        ..Default::default()
    };
    let mut req = AuditRequest::new(id, "read", path);
    req.mount_point = "secret/".into();
    req.mount_type = "kv".into();
    req.client_token = auth.client_token.clone();
    req.client_token_accessor = accessor.into();
    req.remote_address = format!("10.0.0.{}", name.len());
    let resp = AuditResponse {
        mount_point: "secret/".into(),
        mount_type: "kv".into(),
        data: Some(json!({
            "data": {"password": format!("secret-v{version}")},
            "metadata": {"version": version, "created_time": "2024-01-01T00:00:00Z"},
        })),
        ..Default::default()
    };
    let mut request = AuditEvent::request(Some(auth.clone()), req.clone());
    let mut response = AuditEvent::response(Some(auth), req, resp, None);
    request.time = at(t);
    response.time = at(t);
    [request, response]
}

const TRANSIT: &str = "transit/decrypt/orders";

/// A successful transit decrypt by the token with `accessor` at unix second
/// `t`, whose input ciphertexts were under the key `versions` (the server
/// records them as `response.key_versions`).
fn transit_decrypt(
    id: &str,
    accessor: &str,
    name: &str,
    versions: &[u64],
    t: i64,
) -> [AuditEvent; 2] {
    let auth = AuditAuth {
        client_token: format!("hvs.token-of-{accessor}"),
        accessor: accessor.into(),
        display_name: name.into(),
        policies: vec!["default".into(), name.into()],
        token_type: "service".into(),
        ..Default::default()
    };
    let mut req = AuditRequest::new(id, "update", TRANSIT);
    req.mount_point = "transit/".into();
    req.mount_type = "transit".into();
    req.client_token = auth.client_token.clone();
    req.client_token_accessor = accessor.into();
    req.remote_address = "10.0.1.1".into();
    let items: Vec<Value> = versions
        .iter()
        .map(|v| json!({"ciphertext": format!("vault:v{v}:c2VjcmV0")}))
        .collect();
    req.data = Some(json!({"batch_input": items}));
    let resp = AuditResponse {
        mount_point: "transit/".into(),
        mount_type: "transit".into(),
        data: Some(json!({"batch_results": [{"plaintext": "cGxhaW4="}]})),
        key_versions: versions.to_vec(),
        ..Default::default()
    };
    let mut request = AuditEvent::request(Some(auth.clone()), req.clone());
    let mut response = AuditEvent::response(Some(auth), req, resp, None);
    request.time = at(t);
    response.time = at(t);
    [request, response]
}

/// A denied read: the response carries an error, so it is not a read.
fn denied_read(id: &str, accessor: &str, t: i64) -> AuditEvent {
    let auth = AuditAuth {
        accessor: accessor.into(),
        display_name: "intruder".into(),
        ..Default::default()
    };
    let req = AuditRequest::new(id, "read", PATH);
    let mut ev = AuditEvent::response(
        Some(auth),
        req,
        AuditResponse::default(),
        Some("permission denied".into()),
    );
    ev.time = at(t);
    ev
}

fn by_accessor<'a>(a: &'a QueryAnswer, raw_accessor: &str) -> Option<&'a ClientReads> {
    let h = hmac_sha256(&salt(), raw_accessor);
    a.clients.iter().find(|c| c.accessor == h)
}

fn range(path: &str, since: i64, until: i64) -> QueryParams {
    let mut q = QueryParams::new(path);
    q.since = nanos(since);
    q.until = nanos(until);
    q
}

#[tokio::test]
async fn index_updates_incrementally_filters_and_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    // Day 1: alice reads v1 twice, bob v1; carol reads another path;
    // mallory is denied.
    let mut events = Vec::new();
    events.extend(kv_read("r1", "acc-alice", "alice", PATH, 1, T0 + 10));
    events.extend(kv_read("r2", "acc-alice", "alice", PATH, 1, T0 + 20));
    events.extend(kv_read("r3", "acc-bob", "bob", PATH, 1, T0 + 30));
    events.extend(kv_read(
        "r4",
        "acc-carol",
        "carol",
        "secret/data/other",
        1,
        T0 + 40,
    ));
    events.push(denied_read("r5", "acc-mallory", T0 + 50));
    dev.log_all(&events).await.unwrap();

    let dir = dev.audit_log().log_dir().clone();
    let index = AuditIndex::open_for(&dir).unwrap();
    assert!(AuditIndex::path_for(&dir).ends_with("audit.index.redb"));
    assert_eq!(
        index.catch_up(&dir).unwrap(),
        4,
        "only successful responses are postings"
    );
    assert_eq!(index.indexed_seq(), 9);

    let all = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(all.source, "local");
    assert_eq!(all.events_scanned, 3, "only this path's postings are read");
    assert_eq!(all.clients.len(), 2);
    let alice = by_accessor(&all, "acc-alice").expect("alice listed");
    assert_eq!(alice.reads, 2);
    assert_eq!(alice.versions, vec![1]);
    assert_eq!(alice.display_name, "alice");
    assert_eq!(alice.role, "role-alice");
    assert_eq!(alice.first_read, at(T0 + 10));
    assert_eq!(alice.last_read, at(T0 + 20));
    assert!(
        alice.accessor.starts_with("hmac-sha256:"),
        "accessors stay hashed"
    );
    assert!(
        by_accessor(&all, "acc-mallory").is_none(),
        "a denied read is no read"
    );

    // Incremental: day 2, alice moves to v2, bob stays on v1.
    let mut day2 = Vec::new();
    day2.extend(kv_read(
        "r6",
        "acc-alice",
        "alice",
        PATH,
        2,
        T0 + 86_400 + 10,
    ));
    day2.extend(kv_read("r7", "acc-bob", "bob", PATH, 1, T0 + 86_400 + 20));
    dev.log_all(&day2).await.unwrap();
    assert_eq!(index.catch_up(&dir).unwrap(), 2);
    assert_eq!(index.catch_up(&dir).unwrap(), 0, "nothing indexed twice");

    // Time range: day 2 only.
    let d2 = index
        .query(&range(PATH, T0 + 86_400, T0 + 2 * 86_400))
        .unwrap();
    assert_eq!(d2.clients.len(), 2);
    assert_eq!(d2.events_scanned, 2);
    assert_eq!(by_accessor(&d2, "acc-alice").unwrap().versions, vec![2]);
    // Day 1 only, bounds inclusive.
    let d1 = index.query(&range(PATH, T0 + 10, T0 + 30)).unwrap();
    assert_eq!(d1.events_scanned, 3);
    assert_eq!(by_accessor(&d1, "acc-alice").unwrap().reads, 2);

    // Versions over all time, and the version filter.
    let all = index.query(&QueryParams::new(PATH)).unwrap();
    let alice = by_accessor(&all, "acc-alice").unwrap();
    assert_eq!(alice.versions, vec![1, 2]);
    assert_eq!(alice.max_version, Some(2));
    let mut v2 = QueryParams::new(PATH);
    v2.min_version = Some(2);
    let v2 = index.query(&v2).unwrap();
    assert_eq!(v2.clients.len(), 1);
    assert!(by_accessor(&v2, "acc-alice").is_some());

    // Accessor filter (the server hashes the caller's raw accessor).
    let mut one = QueryParams::new(PATH);
    one.accessors = vec![hmac_sha256(&salt(), "acc-bob")];
    let one = index.query(&one).unwrap();
    assert_eq!(one.clients.len(), 1);
    assert_eq!(one.clients[0].reads, 2);

    // Rebuild: delete the index file; a new one answers the same.
    let before = index.query(&QueryParams::new(PATH)).unwrap();
    drop(index);
    std::fs::remove_file(AuditIndex::path_for(&dir)).unwrap();
    let rebuilt = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(rebuilt.indexed_seq(), 0);
    assert_eq!(rebuilt.catch_up(&dir).unwrap(), 6);
    assert_eq!(rebuilt.query(&QueryParams::new(PATH)).unwrap(), before);

    // An index that does not match its log (a fresh log in the same
    // directory) is cleared at reconcile.
    let last = rebuilt.indexed_seq();
    assert!(
        !rebuilt.reconcile(&dir, last).unwrap(),
        "matching index is kept"
    );
    assert!(
        rebuilt.reconcile(&dir, last - 1).unwrap(),
        "log behind the index"
    );
    assert_eq!(rebuilt.postings().unwrap(), 0);
    dev.shutdown().await;
}

#[tokio::test]
async fn answers_the_rotators_question() {
    // v2 is staged at T0 + 1000. Consumers: alice and bob. Alice moved,
    // bob still reads v1, so retirement must wait; once bob reads v2 it may go.
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let staged = T0 + 1000;
    let mut ev = Vec::new();
    ev.extend(kv_read("a1", "acc-alice", "alice", PATH, 1, T0 + 100));
    ev.extend(kv_read("b1", "acc-bob", "bob", PATH, 1, T0 + 200));
    ev.extend(kv_read("a2", "acc-alice", "alice", PATH, 2, staged + 60));
    ev.extend(kv_read("b2", "acc-bob", "bob", PATH, 1, staged + 120));
    dev.log_all(&ev).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let index = AuditIndex::open_for(&dir).unwrap();
    index.catch_up(&dir).unwrap();

    let expected: BTreeSet<String> = ["acc-alice", "acc-bob"]
        .iter()
        .map(|a| hmac_sha256(&salt(), a))
        .collect();
    let moved = |index: &AuditIndex| -> BTreeSet<String> {
        let mut q = QueryParams::new(PATH);
        q.since = nanos(staged);
        q.min_version = Some(2);
        index
            .query(&q)
            .unwrap()
            .clients
            .into_iter()
            .map(|c| c.accessor)
            .collect()
    };
    let m = moved(&index);
    assert!(!expected.is_subset(&m), "bob has not moved: {m:?}");
    let mut since = QueryParams::new(PATH);
    since.since = nanos(staged);
    let since = index.query(&since).unwrap();
    assert_eq!(by_accessor(&since, "acc-bob").unwrap().max_version, Some(1));

    dev.log_all(&kv_read("b3", "acc-bob", "bob", PATH, 2, staged + 300))
        .await
        .unwrap();
    index.catch_up(&dir).unwrap();
    assert!(expected.is_subset(&moved(&index)), "every consumer moved");
    dev.shutdown().await;
}

#[tokio::test]
async fn worker_follows_the_live_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let log = dev.audit_log().clone();
    let index = Arc::new(AuditIndex::open_for(log.log_dir()).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_indexer(index.clone(), log.clone(), stop_rx));
    for i in 0..50 {
        dev.log_all(&kv_read(&format!("w{i}"), "acc-w", "w", PATH, 1, T0 + i))
            .await
            .unwrap();
    }
    assert!(
        index
            .wait_for(log.durable_seq(), Duration::from_secs(10))
            .await
    );
    let a = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(a.clients[0].reads, 50);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops")
        .unwrap();
    dev.shutdown().await;
}

/// A worker that is behind reads batch after batch: it waits GATHER for
/// more records only when it has caught up. (Waiting after every full batch
/// capped it at BATCH records per GATHER, ~41k records/s, which a busy
/// server outgrows.) Counted in tokio's paused clock, which moves only
/// through the worker's own sleeps: five full batches must not cost five
/// waits.
#[tokio::test(start_paused = true)]
async fn worker_behind_does_not_wait_between_full_batches() {
    use custos_audit::log::reader::{FOLLOW_BATCH as BATCH, FOLLOW_GATHER as GATHER};
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let log = dev.audit_log().clone();
    let pairs = 5 * BATCH / 2;
    for chunk in 0..pairs / 512 {
        let mut events = Vec::new();
        for i in 0..512 {
            let n = chunk * 512 + i;
            events.extend(kv_read(
                &format!("b{n}"),
                "acc-b",
                "b",
                PATH,
                1,
                T0 + n as i64,
            ));
        }
        dev.log_all(&events).await.unwrap();
    }
    assert_eq!(log.durable_seq(), 5 * BATCH as u64);
    let index = Arc::new(AuditIndex::open_for(log.log_dir()).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = tokio::time::Instant::now();
    let worker = tokio::spawn(run_indexer(index.clone(), log.clone(), stop_rx));
    assert!(
        index
            .wait_for(log.durable_seq(), Duration::from_secs(3600))
            .await
    );
    let waited = started.elapsed();
    assert!(
        waited < 2 * GATHER,
        "the worker waited {waited:?} (paused clock) to index 5 full batches"
    );
    let a = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(a.clients[0].reads, pairs as u64);
    stop_tx.send(true).unwrap();
    worker.await.unwrap();
    dev.shutdown().await;
}

/// Postings are held in memory between flushes: queries see them at once,
/// a crash (the index dropped without a flush) loses them and the position
/// together, and they are indexed again from the log — never twice.
#[tokio::test]
async fn unflushed_postings_are_queryable_and_reindexed_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut first = Vec::new();
    for i in 0..3 {
        first.extend(kv_read(&format!("a{i}"), "acc-a", "a", PATH, 1, T0 + i));
    }
    dev.log_all(&first).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let index = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(index.catch_up(&dir).unwrap(), 3, "catch_up flushes");

    // Three more reads, applied but not flushed.
    let mut second = Vec::new();
    for i in 0..3 {
        second.extend(kv_read(
            &format!("b{i}"),
            "acc-b",
            "b",
            PATH,
            2,
            T0 + 10 + i,
        ));
    }
    dev.log_all(&second).await.unwrap();
    let mut reader = LogReader::open(dir.clone(), index.next_seq()).unwrap();
    let mut records = Vec::new();
    while let Some(r) = reader.try_next().unwrap() {
        records.push(r);
    }
    assert_eq!(records.len(), 6);
    assert_eq!(index.apply(&records).unwrap(), 3);
    let seen = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(seen.clients.len(), 2, "in-memory postings are answered");
    assert_eq!(index.postings().unwrap(), 6);
    assert_eq!(index.apply(&records).unwrap(), 0, "nothing indexed twice");

    // Crash: no flush. The file holds the first three and their position.
    drop(index);
    let reopened = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(reopened.postings().unwrap(), 3);
    assert_eq!(
        reopened.catch_up(&dir).unwrap(),
        3,
        "re-indexed from the log"
    );
    assert_eq!(reopened.query(&QueryParams::new(PATH)).unwrap(), seen);
    drop(reopened);
    let again = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(again.postings().unwrap(), 6, "a flush made them durable");
    dev.shutdown().await;
}

/// Not a timing assertion: prints how long a query takes with 100k events
/// in the log (50k postings spread over 200 paths and 100 clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_time_with_100k_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut batch = Vec::with_capacity(2000);
    for i in 0..50_000i64 {
        let path = format!("secret/data/svc{}/db", i % 200);
        let acc = format!("acc-{}", i % 97);
        batch.extend(kv_read(
            &format!("p{i}"),
            &acc,
            &format!("c{}", i % 100),
            &path,
            (i / 10_000) as u64 + 1,
            T0 + i * 10,
        ));
        if batch.len() >= 2000 {
            dev.log_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    dev.log_all(&batch).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let index = AuditIndex::open_for(&dir).unwrap();
    let t = Instant::now();
    let n = index.catch_up(&dir).unwrap();
    let build = t.elapsed();
    assert_eq!(n, 50_000);
    let q = QueryParams::new("secret/data/svc7/db");
    let t = Instant::now();
    let mut answer = None;
    for _ in 0..20 {
        answer = Some(index.query(&q).unwrap());
    }
    let per_query = t.elapsed() / 20;
    let answer = answer.unwrap();
    assert_eq!(answer.events_scanned, 250);
    let mut narrow = range("secret/data/svc7/db", T0, T0 + 86_400);
    narrow.min_version = Some(1);
    let t = Instant::now();
    let a2 = index.query(&narrow).unwrap();
    let narrow_time = t.elapsed();
    println!(
        "audit query bench: 100000 events in the log, index build {build:?}, query over one path (250 postings, {} clients) {per_query:?}, one-day range ({} postings) {narrow_time:?}",
        answer.clients.len(),
        a2.events_scanned
    );
    dev.shutdown().await;
}

/// Every posting the log in `dir` still holds, as a fresh index would
/// answer: the reference the pruned index must equal.
fn answers_from_scratch(dir: &LogDir, queries: &[QueryParams]) -> Vec<QueryAnswer> {
    let scratch = tempfile::tempdir().unwrap();
    let fresh = AuditIndex::open_with_bucket_bits(&scratch.path().join("fresh.redb"), 4).unwrap();
    fresh.catch_up(dir).unwrap();
    queries.iter().map(|q| fresh.query(q).unwrap()).collect()
}

/// Retention deletes the oldest segments; the index answers only what the
/// log still holds (at once, before any pruning), then drops the buckets
/// below the log's first record and the ids nothing uses any more; a crash
/// between the segment deletion and the pruning is caught up at reopen.
/// Buckets of 16 records and segments of ~10 records make it visible.
#[tokio::test]
async fn index_follows_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = FileOptions {
        min_free_bytes: 0,
        segment_size: 10 * 1024,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(tmp.path().to_path_buf(), salt(), opts).expect("open file device");
    let paths = ["secret/data/a", "secret/data/b", "secret/data/c"];
    // 120 reads: 240 records, seq 2i+2 the response of read i. A new client
    // every 10 reads, so old clients' ids become unused.
    for i in 0..120i64 {
        let who = format!("c{}", i / 10);
        dev.log_all(&kv_read(
            &format!("k{i}"),
            &format!("acc-{who}"),
            &who,
            paths[(i % 3) as usize],
            1 + (i / 40) as u64,
            T0 + i,
        ))
        .await
        .unwrap();
    }
    let log = dev.audit_log().clone();
    let dir = log.log_dir().clone();
    assert!(dir.segments().unwrap().len() > 10, "small segments");
    let index_path = AuditIndex::path_for(&dir);
    let index = AuditIndex::open_with_bucket_bits(&index_path, 4).unwrap();
    assert_eq!(index.catch_up(&dir).unwrap(), 120);
    assert_eq!(index.postings().unwrap(), 120);
    assert_eq!(index.profiles().unwrap(), 12);
    let queries: Vec<QueryParams> = paths.iter().map(|p| QueryParams::new(*p)).collect();
    let reads = |index: &AuditIndex| -> u64 {
        queries
            .iter()
            .map(|q| {
                index
                    .query(q)
                    .unwrap()
                    .clients
                    .iter()
                    .map(|c| c.reads)
                    .sum::<u64>()
            })
            .sum()
    };
    assert_eq!(reads(&index), 120);

    // Retention keeps about half the log.
    let half = log.size_bytes() / 2;
    let report = log
        .prune(
            None,
            &Retention {
                max_age: None,
                max_bytes: Some(half),
            },
        )
        .unwrap();
    assert!(!report.deleted.is_empty());
    let first = dir.segments().unwrap()[0].first_seq;
    assert!(first > 100, "first record left: {first}");
    // Responses still in the log: even seq ≥ first.
    let held = (first..=240).filter(|s| s % 2 == 0).count() as u64;

    // The floor moves first: nothing below it is answered, before any
    // pruning (the query service does this before every query).
    assert_eq!(index.follow_retention(&dir).unwrap(), first);
    assert_eq!(reads(&index), held);
    assert_eq!(
        queries
            .iter()
            .map(|q| index.query(q).unwrap())
            .collect::<Vec<_>>(),
        answers_from_scratch(&dir, &queries),
        "the same answers as an index of what the log holds"
    );
    assert_eq!(index.postings().unwrap(), 120, "not pruned yet");

    // Pruning: whole buckets below the first record go, in bounded steps.
    let mut steps = 0;
    while index.prune_step().unwrap().more {
        steps += 1;
        assert!(steps < 100, "prune terminates");
    }
    let bucket_start = first & !15;
    let kept = (bucket_start..=240).filter(|s| s % 2 == 0).count() as u64;
    assert_eq!(
        index.postings().unwrap(),
        kept,
        "buckets below {bucket_start} dropped"
    );
    let profiles_held = index.profiles().unwrap();
    // Client c(i/10) read at seq 2i+2; the ones whose last read is below
    // the bucket start are gone.
    let clients_kept = (0..12)
        .filter(|c| 2 * (10 * c + 9) + 2 >= bucket_start)
        .count() as u64;
    assert_eq!(profiles_held, clients_kept);
    assert_eq!(reads(&index), held);
    assert_eq!(
        queries
            .iter()
            .map(|q| index.query(q).unwrap())
            .collect::<Vec<_>>(),
        answers_from_scratch(&dir, &queries)
    );

    // More reads after the pruning index as before (ids of gone clients
    // come back new).
    for i in 0..20i64 {
        dev.log_all(&kv_read(
            &format!("n{i}"),
            "acc-c0",
            "c0",
            paths[0],
            9,
            T0 + 1000 + i,
        ))
        .await
        .unwrap();
    }
    assert_eq!(index.catch_up(&dir).unwrap(), 20);
    let c0 = index.query(&QueryParams::new(paths[0])).unwrap();
    assert_eq!(by_accessor(&c0, "acc-c0").unwrap().versions, vec![9]);

    // Crash between the deletion of segments and the pruning: the index is
    // dropped, retention deletes more, the reopened index reconciles.
    drop(index);
    let quarter = log.size_bytes() / 4;
    let report = log
        .prune(
            None,
            &Retention {
                max_age: None,
                max_bytes: Some(quarter),
            },
        )
        .unwrap();
    assert!(!report.deleted.is_empty());
    let first = dir.segments().unwrap()[0].first_seq;
    let reopened = AuditIndex::open_with_bucket_bits(&index_path, 4).unwrap();
    assert!(
        !reopened.reconcile(&dir, log.durable_seq()).unwrap(),
        "kept, not rebuilt"
    );
    assert_eq!(reopened.floor(), first);
    let bucket_start = first & !15;
    let kept = (bucket_start..=280).filter(|s| s % 2 == 0).count() as u64;
    assert_eq!(reopened.postings().unwrap(), kept);
    let all: Vec<QueryParams> = queries.clone();
    assert_eq!(
        all.iter()
            .map(|q| reopened.query(q).unwrap())
            .collect::<Vec<_>>(),
        answers_from_scratch(&dir, &all)
    );
    // A cleared index (the log may be a fresh one) starts from floor 1 and
    // takes the log's first record again as it indexes.
    reopened.clear().unwrap();
    assert_eq!(reopened.floor(), 1);
    reopened.catch_up(&dir).unwrap();
    assert_eq!(reopened.floor(), first);
    assert_eq!(
        all.iter()
            .map(|q| reopened.query(q).unwrap())
            .collect::<Vec<_>>(),
        answers_from_scratch(&dir, &all)
    );
    dev.shutdown().await;
}

/// Through the query service (what `sys/audit-query` calls): once
/// retention deleted segments, a local answer says from when it is complete
/// (the oldest record the log holds) and leaves out everything before.
#[tokio::test]
async fn local_answers_say_from_when_they_are_complete() {
    use custos_audit::query::{AuditQueryService, Source};
    let tmp = tempfile::tempdir().unwrap();
    let opts = FileOptions {
        min_free_bytes: 0,
        segment_size: 10 * 1024,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(tmp.path().to_path_buf(), salt(), opts).expect("open file device");
    for i in 0..40i64 {
        dev.log_all(&kv_read(&format!("s{i}"), "acc-s", "s", PATH, 1, T0 + i))
            .await
            .unwrap();
    }
    let log = dev.audit_log().clone();
    let dir = log.log_dir().clone();
    let index = Arc::new(AuditIndex::open_for(&dir).unwrap());
    index.catch_up(&dir).unwrap();
    let service = AuditQueryService::new("file/".into(), log.clone(), index.clone(), None);
    let whole = service
        .query(QueryParams::new(PATH), Source::Local)
        .await
        .unwrap();
    assert_eq!(whole.clients[0].reads, 40);
    assert_eq!(whole.complete_from, None, "nothing deleted yet");

    let half = log.size_bytes() / 2;
    log.prune(
        None,
        &Retention {
            max_age: None,
            max_bytes: Some(half),
        },
    )
    .unwrap();
    let first = dir.segments().unwrap()[0].first_seq;
    assert!(first > 1);
    // Read i is records 2i+1 (request) and 2i+2 (response), at T0 + i.
    let oldest = ((first - 1) / 2) as i64;
    let held = (first..=80).filter(|s| s % 2 == 0).count() as u64;
    let answer = service
        .query(QueryParams::new(PATH), Source::Local)
        .await
        .unwrap();
    assert_eq!(answer.clients[0].reads, held);
    assert_eq!(answer.complete_from, Some(at(T0 + oldest)));
    let json = serde_json::to_value(&answer).unwrap();
    assert_eq!(json["complete_from"], json!(at(T0 + oldest)));
    assert!(
        serde_json::to_value(&whole)
            .unwrap()
            .get("complete_from")
            .is_none()
    );
    dev.shutdown().await;
}

/// The worker follows retention by itself: after segments are deleted, its
/// next prune round (every 5 s, on tokio's paused clock here) moves the
/// floor to the log's first record and drops the buckets below it.
#[tokio::test(start_paused = true)]
async fn worker_prunes_after_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = FileOptions {
        min_free_bytes: 0,
        segment_size: 10 * 1024,
        ..FileOptions::default()
    };
    let dev = FileDevice::open(tmp.path().to_path_buf(), salt(), opts).expect("open file device");
    for i in 0..60i64 {
        dev.log_all(&kv_read(&format!("w{i}"), "acc-w", "w", PATH, 1, T0 + i))
            .await
            .unwrap();
    }
    let log = dev.audit_log().clone();
    let dir = log.log_dir().clone();
    let index =
        Arc::new(AuditIndex::open_with_bucket_bits(&AuditIndex::path_for(&dir), 4).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_indexer(index.clone(), log.clone(), stop_rx));
    assert!(
        index
            .wait_for(log.durable_seq(), Duration::from_secs(60))
            .await
    );
    assert_eq!(index.postings().unwrap(), 60);

    let half = log.size_bytes() / 2;
    log.prune(
        None,
        &Retention {
            max_age: None,
            max_bytes: Some(half),
        },
    )
    .unwrap();
    let first = dir.segments().unwrap()[0].first_seq;
    let kept = ((first & !15)..=120).filter(|s| s % 2 == 0).count() as u64;
    assert!(kept < 60);
    let mut rounds = 0;
    while index.floor() != first || index.postings().unwrap() != kept {
        rounds += 1;
        assert!(
            rounds < 120,
            "the worker did not prune: floor {}",
            index.floor()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let held = (first..=120).filter(|s| s % 2 == 0).count() as u64;
    let a = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(a.clients[0].reads, held);
    stop_tx.send(true).unwrap();
    worker.await.unwrap();
    dev.shutdown().await;
}

/// An index file of format 1 (JSON postings keyed by path) is replaced by an
/// empty one at open and rebuilt from the log — once: reopening keeps it.
#[tokio::test]
async fn an_old_format_index_is_rebuilt_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut ev = Vec::new();
    for i in 0..5 {
        ev.extend(kv_read(&format!("o{i}"), "acc-o", "o", PATH, 1, T0 + i));
    }
    dev.log_all(&ev).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let path = AuditIndex::path_for(&dir);
    {
        // What a server before format 2 left: a stale posting and its position.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<(&str, i64, u64), &[u8]> =
                redb::TableDefinition::new("postings");
            let mut t = txn.open_table(def).unwrap();
            t.insert(
                (PATH, 1i64, 2u64),
                br#"{"s":2,"t":1,"o":"read","a":"x"}"#.as_slice(),
            )
            .unwrap();
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut m = txn.open_table(meta).unwrap();
            m.insert("format", 1).unwrap();
            m.insert("next_seq", 11).unwrap();
            m.insert("last_seq", 10).unwrap();
        }
        txn.commit().unwrap();
    }
    let index = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(index.next_seq(), 1, "replaced: indexes from the start");
    assert_eq!(index.postings().unwrap(), 0);
    assert_eq!(index.catch_up(&dir).unwrap(), 5);
    let before = index.query(&QueryParams::new(PATH)).unwrap();
    assert_eq!(before.clients[0].reads, 5);
    drop(index);
    let again = AuditIndex::open_for(&dir).unwrap();
    assert_eq!(again.postings().unwrap(), 5, "kept at the second open");
    assert_eq!(again.catch_up(&dir).unwrap(), 0);
    assert_eq!(again.query(&QueryParams::new(PATH)).unwrap(), before);
    dev.shutdown().await;
}

/// The bench's kv-read as the audit log records it: the root token reads
/// `secret/data/bench/r/<random of keys>` (64-byte value, version 1) from
/// 127.0.0.1; a request event and a response event per read.
fn bench_kv_read(i: u64, key: u64, t: i64) -> [AuditEvent; 2] {
    let auth = AuditAuth {
        client_token: "hvs.bench-root-token".into(),
        accessor: "bench-root-accessor".into(),
        display_name: "root".into(),
        policies: vec!["root".into()],
        token_type: "service".into(),
        ..Default::default()
    };
    let path = format!("secret/data/bench/r/{key}");
    let mut req = AuditRequest::new(format!("{i:08x}-0000-4000-8000-{i:012x}"), "read", &path);
    req.mount_point = "secret/".into();
    req.mount_type = "kv".into();
    req.mount_accessor = "kv_6a1e7f0b".into();
    req.client_token = auth.client_token.clone();
    req.client_token_accessor = auth.accessor.clone();
    req.remote_address = "127.0.0.1".into();
    let resp = AuditResponse {
        mount_point: "secret/".into(),
        mount_type: "kv".into(),
        data: Some(json!({
            "data": {"value": "x".repeat(64)},
            "metadata": {"created_time": "2026-11-24T00:10:00.123456789Z",
                "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": 1},
        })),
        ..Default::default()
    };
    let mut request = AuditEvent::request(Some(auth.clone()), req.clone());
    let mut response = AuditEvent::response(Some(auth), req, resp, None);
    let when =
        format_rfc3339(OffsetDateTime::from_unix_timestamp_nanos(i128::from(t)).expect("time"));
    request.time = when.clone();
    response.time = when;
    [request, response]
}

/// Not a test: the index's size and indexing rate for the bench's kv-read
/// mix. `CUSTOS_INDEX_BENCH_EVENTS` reads (default 100,000) over
/// `CUSTOS_INDEX_BENCH_KEYS` paths (default 10,000, the bench's `--keys`),
/// 10,000 reads a second of event time; prints file bytes per posting and
/// records indexed per second (catch-up from the log, one thread).
/// `cargo test -p custos-audit --release --test it query::index_size_bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run by hand"]
async fn index_size_bench() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let events = env("CUSTOS_INDEX_BENCH_EVENTS", 100_000);
    let keys = env("CUSTOS_INDEX_BENCH_KEYS", 10_000).max(1);
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut batch = Vec::with_capacity(2048);
    // A fixed LCG: the same "random" keys every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t0 = nanos(T0 + 1_000_000);
    for i in 0..events {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let key = (x >> 33) % keys;
        batch.extend(bench_kv_read(i, key, t0 + (i as i64) * 100_000));
        if batch.len() >= 2048 {
            dev.log_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    dev.log_all(&batch).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let log_bytes = dev.audit_log().size_bytes();
    let records = dev.audit_log().durable_seq();
    let index = AuditIndex::open_for(&dir).unwrap();
    let started = Instant::now();
    let n = index.catch_up(&dir).unwrap();
    let took = started.elapsed();
    assert_eq!(n as u64, events);
    let bytes = std::fs::metadata(AuditIndex::path_for(&dir)).unwrap().len();
    println!(
        "audit index bench: {events} kv reads over {keys} paths ({records} records, log {log_bytes} bytes): \
         index file {bytes} bytes = {:.1} bytes per posting; indexed in {took:?} = {:.0} records/s",
        bytes as f64 / n as f64,
        records as f64 / took.as_secs_f64()
    );
    // Retention takes the older half: time the prune steps.
    index.set_floor(records / 2);
    let started = Instant::now();
    let (mut steps, mut slowest, mut dropped) = (0, Duration::ZERO, 0);
    loop {
        let t = Instant::now();
        let step = index.prune_step().unwrap();
        slowest = slowest.max(t.elapsed());
        steps += 1;
        dropped += step.postings;
        if !step.more {
            break;
        }
    }
    println!(
        "prune to seq {}: {dropped} postings dropped in {steps} steps, {:?} in all, slowest step {slowest:?}; \
         {} postings left, file {} bytes",
        records / 2,
        started.elapsed(),
        index.postings().unwrap(),
        std::fs::metadata(AuditIndex::path_for(&dir)).unwrap().len()
    );
    let [
        allocated,
        leaves,
        branches,
        stored,
        metadata,
        fragmented,
        page,
    ] = index.storage_stats().unwrap();
    println!(
        "redb: {allocated} pages allocated ({} bytes), {leaves} leaf + {branches} branch pages, \
         stored {stored} bytes, metadata {metadata}, fragmented {fragmented}",
        allocated * page
    );
    dev.shutdown().await;
}

// ---------------------------------------------------------------------------
// Elasticsearch parity (osmem-server stand-in)
// ---------------------------------------------------------------------------

fn es_addr() -> Option<String> {
    match std::env::var("CUSTOS_TEST_ES") {
        Ok(a) if !a.is_empty() => Some(if a.starts_with("http") {
            a
        } else {
            format!("http://{a}")
        }),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CUSTOS_TEST_ES must be set in CI"
            );
            eprintln!(
                "skipping: CUSTOS_TEST_ES is not set (address of the Elasticsearch API stand-in, osmem-server)"
            );
            None
        }
    }
}

/// Ship every record of the log to `<index>-YYYY.MM.DD` with `_bulk`, as the
/// sink does: the event JSON, `_id` = event id.
async fn bulk_index(url: &str, index: &str, dir: &LogDir) {
    let mut reader = LogReader::open(dir.clone(), 1).unwrap();
    let mut body = String::new();
    while let Some(rec) = reader.try_next().unwrap() {
        let doc: Value = rec.json().unwrap();
        let id = format!(
            "{}-{}",
            doc["request"]["id"].as_str().unwrap(),
            doc["type"].as_str().unwrap()
        );
        let day = &doc["time"].as_str().unwrap()[..10].replace('-', ".");
        body.push_str(
            &json!({"index": {"_index": format!("{index}-{day}"), "_id": id}}).to_string(),
        );
        body.push('\n');
        body.push_str(&doc.to_string());
        body.push('\n');
    }
    let http = reqwest::Client::new();
    let resp: Value = http
        .post(format!("{url}/_bulk"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["errors"], json!(false), "{resp}");
    http.post(format!("{url}/{index}-*/_refresh"))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn transit_key_versions_go_through_the_device_and_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut events = Vec::new();
    events.extend(transit_decrypt("t1", "acc-lag", "lag", &[1], T0 + 10));
    events.extend(transit_decrypt("t2", "acc-lag", "lag", &[2], T0 + 20));
    events.extend(transit_decrypt("t3", "acc-new", "new", &[2], T0 + 30));
    events.extend(transit_decrypt("t4", "acc-mix", "mix", &[1, 2], T0 + 40));
    events.extend(kv_read("r1", "acc-kv", "kv", PATH, 1, T0 + 50));
    dev.log_all(&events).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    // The device wrote the numbers as they are (never HMAC'd).
    let mut reader = LogReader::open(dir.clone(), 1).unwrap();
    let mut seen = 0;
    while let Some(rec) = reader.try_next().unwrap() {
        let doc: Value = rec.json().unwrap();
        if doc["type"] == json!("response") && doc["request"]["id"] == json!("t4") {
            assert_eq!(doc["response"]["key_versions"], json!([1, 2]));
            seen += 1;
        }
    }
    assert_eq!(seen, 1);
    let index = AuditIndex::open_for(&dir).unwrap();
    index.catch_up(&dir).unwrap();

    let mut q = QueryParams::new(TRANSIT);
    q.operation = "update".into();
    let all = index.query(&q).unwrap();
    assert_eq!(all.clients.len(), 3);
    let lag = by_accessor(&all, "acc-lag").unwrap();
    assert_eq!(
        (lag.key_versions.clone(), lag.min_key_version),
        (vec![1, 2], Some(1))
    );
    assert_eq!(by_accessor(&all, "acc-new").unwrap().key_versions, vec![2]);
    assert_eq!(
        by_accessor(&all, "acc-mix").unwrap().key_versions,
        vec![1, 2]
    );

    // Who still decrypts under v1 since T0+15: only the mixed batch.
    q.since = nanos(T0 + 15);
    q.max_key_version = Some(1);
    let old = index.query(&q).unwrap();
    assert_eq!(old.clients.len(), 1, "{old:?}");
    assert!(by_accessor(&old, "acc-mix").is_some());
    // From the start: the lagging client too.
    q.since = i64::MIN;
    let old = index.query(&q).unwrap();
    let lag = by_accessor(&old, "acc-lag").unwrap();
    assert_eq!((lag.reads, lag.key_versions.clone()), (1, vec![1]));
    assert_eq!(old.clients.len(), 2);
    // KV reads carry no key versions, and the filter drops them.
    let mut kv = QueryParams::new(PATH);
    let ans = index.query(&kv).unwrap();
    assert!(ans.clients[0].key_versions.is_empty());
    assert_eq!(ans.clients[0].min_key_version, None);
    kv.max_key_version = Some(9);
    assert!(index.query(&kv).unwrap().clients.is_empty());
    // The postings survive a flush and a reopen.
    index.flush().unwrap();
    drop(index);
    let index = AuditIndex::open_for(&dir).unwrap();
    let old = index.query(&q).unwrap();
    assert_eq!(old.clients.len(), 2);
    dev.shutdown().await;
}

#[tokio::test]
async fn elasticsearch_gives_the_same_answer() {
    let Some(url) = es_addr() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dev = device(tmp.path());
    let mut ev = Vec::new();
    // Over two days; three reads in each second (ties across pages).
    for i in 0..1500i64 {
        let who = ["alice", "bob", "carol"][(i % 3) as usize];
        ev.extend(kv_read(
            &format!("e{i}"),
            &format!("acc-{who}"),
            who,
            PATH,
            (i / 500) as u64 + 1,
            T0 + (i / 3) * 400,
        ));
    }
    ev.extend(kv_read(
        "x1",
        "acc-dave",
        "dave",
        "secret/data/elsewhere",
        1,
        T0 + 5,
    ));
    ev.push(denied_read("x2", "acc-mallory", T0 + 6));
    for i in 0..30i64 {
        let who = ["lag", "new", "mix"][(i % 3) as usize];
        let versions: &[u64] = match (who, i < 15) {
            ("lag", true) => &[1],
            ("mix", _) => &[2, 1],
            _ => &[2],
        };
        ev.extend(transit_decrypt(
            &format!("t{i}"),
            &format!("acc-{who}"),
            who,
            versions,
            T0 + 7 + i * 100,
        ));
    }
    dev.log_all(&ev).await.unwrap();
    let dir = dev.audit_log().log_dir().clone();
    let local = AuditIndex::open_for(&dir).unwrap();
    local.catch_up(&dir).unwrap();

    let index = format!("custos-audit-q{}", std::process::id());
    bulk_index(&url, &index, &dir).await;
    let mut opts = std::collections::BTreeMap::new();
    opts.insert("url".to_string(), url.clone());
    opts.insert("index".to_string(), index.clone());
    let es = EsQuery::new(EsOptions::from_device_options(&opts).unwrap()).unwrap();

    let queries = {
        let mut v = vec![
            QueryParams::new(PATH),
            range(PATH, T0 + 10_000, T0 + 40_000),
        ];
        let mut q = QueryParams::new(PATH);
        q.min_version = Some(3);
        v.push(q);
        let mut q = QueryParams::new(PATH);
        q.accessors = vec![hmac_sha256(&salt(), "acc-bob")];
        v.push(q);
        v.push(QueryParams::new("secret/data/nothing"));
        let mut q = QueryParams::new(TRANSIT);
        q.operation = "update".into();
        v.push(q.clone());
        q.max_key_version = Some(1);
        v.push(q.clone());
        q.since = nanos(T0 + 7 + 15 * 100);
        v.push(q);
        v
    };
    for q in queries {
        let l = local.query(&q).unwrap();
        let e = es.query(&q).await.unwrap();
        assert_eq!(e.source, "elasticsearch");
        assert_eq!(l.clients, e.clients, "query {q:?}");
        assert_eq!(l.events_scanned, e.events_scanned, "query {q:?}");
    }
    let all = es.query(&QueryParams::new(PATH)).await.unwrap();
    assert_eq!(all.clients.iter().map(|c| c.reads).sum::<u64>(), 1500);
    let mut q = QueryParams::new(TRANSIT);
    q.operation = "update".into();
    q.max_key_version = Some(1);
    q.since = nanos(T0 + 7 + 15 * 100);
    let late = es.query(&q).await.unwrap();
    let names: Vec<&str> = late
        .clients
        .iter()
        .map(|c| c.display_name.as_str())
        .collect();
    assert_eq!(names, vec!["mix"], "only the batch still names v1");
    assert_eq!(late.clients[0].key_versions, vec![1, 2]);
    assert_eq!(late.clients[0].min_key_version, Some(1));
    dev.shutdown().await;
}

/// On a cluster every event carries the node that wrote it: Elasticsearch
/// answers for one node (`node`) or all, and the merged local answers of the
/// nodes equal its answer for all.
#[tokio::test]
async fn elasticsearch_answers_per_node_and_merged_local_answers_match() {
    let Some(url) = es_addr() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let index = format!("custos-audit-n{}", std::process::id());
    let mut locals = Vec::new();
    for (n, node) in ["node1", "node2", "node3"].into_iter().enumerate() {
        let dev = device(&tmp.path().join(node));
        let mut ev = Vec::new();
        for i in 0..40i64 {
            let who = ["alice", "bob", "carol", "dave"][((i + n as i64) % 4) as usize];
            ev.extend(kv_read(
                &format!("{node}-e{i}"),
                &format!("acc-{who}"),
                who,
                PATH,
                (i % 3) as u64 + 1,
                T0 + i * 10 + n as i64,
            ));
        }
        // Only node3 saw erin.
        if node == "node3" {
            ev.extend(kv_read("node3-x", "acc-erin", "erin", PATH, 1, T0 + 999));
        }
        for e in &mut ev {
            e.node_id = node.into();
        }
        dev.log_all(&ev).await.unwrap();
        let dir = dev.audit_log().log_dir().clone();
        bulk_index(&url, &index, &dir).await;
        let local = AuditIndex::open_for(&dir).unwrap();
        local.catch_up(&dir).unwrap();
        locals.push((node.to_owned(), local));
        dev.shutdown().await;
    }
    let mut opts = std::collections::BTreeMap::new();
    opts.insert("url".to_string(), url.clone());
    opts.insert("index".to_string(), index.clone());
    let es = EsQuery::new(EsOptions::from_device_options(&opts).unwrap()).unwrap();
    for limit in [2, 1000] {
        let mut q = QueryParams::new(PATH);
        q.limit = limit;
        let all = es.query(&q).await.unwrap();
        let mut wide = q.clone();
        wide.limit = custos_audit::query::MAX_LIMIT;
        let answers = locals
            .iter()
            .map(|(n, l)| (n.clone(), l.query(&wide).unwrap()))
            .collect();
        let merged = custos_audit::query::merge(answers, limit);
        assert_eq!(merged.clients, all.clients, "limit {limit}");
        assert_eq!(merged.events_scanned, all.events_scanned);
        assert_eq!(merged.truncated, all.truncated);
        for (node, local) in &locals {
            let mut one = q.clone();
            one.node = Some(node.clone());
            let e = es.query(&one).await.unwrap();
            let l = local.query(&q).unwrap();
            assert_eq!(e.clients, l.clients, "{node}, limit {limit}");
            assert_eq!(e.events_scanned, l.events_scanned, "{node}");
        }
    }
    let mut q = QueryParams::new(PATH);
    q.node = Some("node3".into());
    let names: Vec<String> = es
        .query(&q)
        .await
        .unwrap()
        .clients
        .into_iter()
        .map(|c| c.display_name)
        .collect();
    assert!(names.contains(&"erin".to_owned()), "{names:?}");
    q.node = Some("node1".into());
    let names: Vec<String> = es
        .query(&q)
        .await
        .unwrap()
        .clients
        .into_iter()
        .map(|c| c.display_name)
        .collect();
    assert!(!names.contains(&"erin".to_owned()), "{names:?}");
}

// ---------------------------------------------------------------------------
// Access patterns
// ---------------------------------------------------------------------------

const HOUR: i64 = 3_600_000_000_000;
const MINUTE: i64 = 60_000_000_000;

#[test]
fn hourly_reader_turning_minutely_is_anomalous_steady_is_not() {
    let opts = AccessOptions::default();
    let threshold = opts.threshold;
    let mut d = AccessDetector::new(opts);
    let t0 = nanos(T0);
    // Three days of hourly reads by both (the steady one with jitter).
    for h in 0..72 {
        let jitter = ((h * 37) % 9 - 4) * MINUTE;
        d.observe_read(
            "steady",
            "steady-svc",
            "hmac-sha256:5555",
            "secret/",
            t0 + h * HOUR + jitter,
        );
        d.observe_read(
            "noisy",
            "noisy-svc",
            "hmac-sha256:7777",
            "secret/",
            t0 + h * HOUR + 30 * MINUTE,
        );
    }
    let before = d.client("noisy", "secret/").unwrap();
    assert!((0.8..1.25).contains(&before.score), "{before:?}");
    // Then the noisy one reads every minute for half an hour.
    let start = t0 + 72 * HOUR;
    for m in 0..30 {
        d.observe_read(
            "noisy",
            "noisy-svc",
            "hmac-sha256:7777",
            "secret/",
            start + m * MINUTE,
        );
    }
    d.observe_read(
        "steady",
        "steady-svc",
        "hmac-sha256:5555",
        "secret/",
        start + 29 * MINUTE,
    );
    let noisy = d.client("noisy", "secret/").unwrap();
    let steady = d.client("steady", "secret/").unwrap();
    println!(
        "anomaly scores: noisy {:.1}, steady {:.2}",
        noisy.score, steady.score
    );
    assert!(noisy.score > 4.0 * threshold, "{noisy:?}");
    assert!((0.5..2.0).contains(&steady.score), "{steady:?}");
    let snap = d.snapshot();
    assert_eq!(snap.anomalous, 1);
    assert_eq!(snap.rows[0].client, "noisy-svc", "the anomaly ranks first");
}

#[test]
fn cardinality_stays_bounded() {
    let opts = AccessOptions {
        top_k: 20,
        ..AccessOptions::default()
    };
    let mut d = AccessDetector::new(opts);
    let t0 = nanos(T0);
    for c in 0..1000i64 {
        for r in 0..5 {
            // All named "token", as `token create` tokens are.
            d.observe_read(
                &format!("client-{c}"),
                "token",
                &format!("hmac-sha256:{c:064x}"),
                "secret/",
                t0 + r * (c + 1) * MINUTE,
            );
        }
    }
    assert_eq!(d.tracked(), 1000);
    let snap = d.export();
    let labels: BTreeSet<&str> = snap.rows.iter().map(|r| r.client.as_str()).collect();
    assert!(labels.len() <= 21, "{} label values", labels.len());
    assert!(labels.contains("other"));
    for l in &labels {
        assert!(
            !l.contains(&format!("{:064x}", 5)),
            "no whole accessor in a label"
        );
        assert!(l.len() < 40, "{l}");
    }
}
