//! Shippers against the real services: tansu (a Kafka-protocol broker) at
//! `CUSTOS_TEST_KAFKA` and osmem-server (an in-memory OpenSearch-compatible
//! server, our Elasticsearch API stand-in) at `CUSTOS_TEST_ES`. Unset: the
//! test prints why and skips; unset with `CI=true`: it fails.
//!
//! Each test writes its own local log in a temp dir, ships it to its own
//! topic / index (random names), and checks the sink from the outside with
//! plain HTTP and an rdkafka consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::log::{AuditLog, Checkpoint, LogOptions};
use custos_audit::ship::config::{EsOptions, KafkaOptions};
use custos_audit::ship::elasticsearch::ElasticsearchSink;
use custos_audit::ship::kafka::KafkaSink;
use custos_audit::ship::reconcile::{self, KafkaTarget};
use custos_audit::ship::{ShipOptions, Shipper};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};

/// The service address in `var`, or `None` (skip) when unset outside CI.
fn service(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ => {
            let ci = matches!(
                std::env::var("CI").as_deref(),
                Ok("1" | "true" | "TRUE" | "True" | "yes")
            );
            assert!(!ci, "{var} is not set: in CI the {what} tests must run");
            eprintln!("skipping: {var} is not set ({what}; scripts/test.sh starts it)");
            None
        }
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ship_opts() -> ShipOptions {
    ShipOptions {
        batch_size: 100,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        health_interval: Duration::from_millis(500),
        ..ShipOptions::default()
    }
}

fn event(i: u64, time: &str) -> Vec<u8> {
    json!({
        "time": time,
        "type": if i % 2 == 1 { "request" } else { "response" },
        "auth": {"accessor": "hmac-sha256:abc", "policies": ["default"]},
        "request": {"id": format!("req-{}", i.div_ceil(2)), "operation": "read", "path": "secret/data/app",
                    "mount_point": "secret/", "data": {"n": i}},
    })
    .to_string()
    .into_bytes()
}

fn id(i: u64) -> String {
    format!(
        "req-{}-{}",
        i.div_ceil(2),
        if i % 2 == 1 { "request" } else { "response" }
    )
}

async fn open_log(dir: &std::path::Path, sink: &str) -> Arc<AuditLog> {
    let log = AuditLog::open(
        dir,
        LogOptions {
            min_free_bytes: 0,
            ..LogOptions::default()
        },
    )
    .expect("open log");
    Checkpoint::register(&log.checkpoint_dir(), sink, 0).expect("register");
    Arc::new(log)
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

async fn es_count(http: &reqwest::Client, es: &str, pattern: &str) -> u64 {
    let _ = http.post(format!("{es}/{pattern}/_refresh")).send().await;
    let v: Value = http
        .get(format!("{es}/{pattern}/_count"))
        .send()
        .await
        .expect("_count")
        .json()
        .await
        .expect("_count json");
    v["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_exactly_once_by_id_and_loud_on_mapping_errors() {
    let Some(es) = service("CUSTOS_TEST_ES", "Elasticsearch API (osmem-server)") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = open_log(tmp.path(), "es").await;
    let index = format!("custos-test-{}", suffix());
    let n = 250u64;
    for i in 1..=n {
        log.append(event(i, "2025-03-04T05:06:07.123456789Z"))
            .await
            .expect("append");
    }
    let (opts, _) = EsOptions::from_map(&map(&[("url", &es), ("index", &index)])).expect("opts");
    let start = |log: Arc<AuditLog>, opts: EsOptions| {
        Shipper::start(
            "es",
            "",
            BTreeMap::new(),
            "file/",
            log,
            Box::new(ElasticsearchSink::new("es", opts).expect("sink")),
            ship_opts(),
        )
        .expect("start")
    };
    let sh = start(log.clone(), opts.clone());
    wait_until("everything shipped", 60, || sh.status().checkpoint == n).await;
    assert!(sh.status().up);
    let http = reqwest::Client::new();
    let pattern = format!("{index}-*");
    assert_eq!(es_count(&http, &es, &pattern).await, n);
    // The template mapped the fields dashboards use, in the daily index.
    let m: Value = http
        .get(format!("{es}/{index}-2025.03.04/_mapping"))
        .send()
        .await
        .expect("mapping")
        .json()
        .await
        .expect("mapping json");
    let props = &m[format!("{index}-2025.03.04")]["mappings"]["properties"];
    assert_eq!(props["time"]["type"], "date", "{m}");
    assert_eq!(
        props["request"]["properties"]["path"]["type"], "keyword",
        "{m}"
    );
    assert_eq!(
        props["auth"]["properties"]["policies"]["type"], "keyword",
        "{m}"
    );
    sh.shutdown().await;

    // Ship it all again from scratch: `_id` = event id, nothing duplicates.
    Checkpoint::store(&log.checkpoint_dir(), "es", 0).expect("reset");
    let sh = start(log.clone(), opts.clone());
    wait_until("everything re-shipped", 60, || sh.status().checkpoint == n).await;
    assert_eq!(es_count(&http, &es, &pattern).await, n);
    let found: Value = http
        .post(format!("{es}/{pattern}/_search"))
        .json(&json!({"size": 10, "_source": false, "query": {"ids": {"values": [id(1), id(n)]}}}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("search json");
    assert_eq!(found["hits"]["total"]["value"], 2, "{found}");

    // A record the mapping refuses stops the checkpoint before it, loudly;
    // the records after it in the same batch are indexed (only the failed
    // item is retried), and the backlog stays.
    // The three records are appended in one group commit, so they become
    // durable together and the shipper reads them as one batch.
    let mut broken: Value =
        serde_json::from_slice(&event(n + 2, "2025-03-04T05:06:09Z")).expect("json");
    broken["time"] = json!({"not": "a date"});
    log.append_many(vec![
        event(n + 1, "2025-03-04T05:06:08Z"),
        serde_json::to_vec(&broken).expect("encode"),
        event(n + 3, "2025-03-04T05:06:10Z"),
    ])
    .await
    .expect("append");
    wait_until("the sink reports the rejection", 60, || {
        let s = sh.status();
        !s.up
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("rejected"))
    })
    .await;
    let s = sh.status();
    assert_eq!(s.checkpoint, n + 1, "{s:?}");
    assert_eq!(s.records, 2, "{s:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = es_count(&http, &es, &pattern).await;
    while c != n + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c = es_count(&http, &es, &pattern).await;
    }
    assert_eq!(c, n + 2, "record n+3 is indexed, the broken one is not");
    sh.shutdown().await;
    log.shutdown().await;
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let res = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
    ));
    match res {
        Ok(results) => {
            for r in results {
                if let Err((t, code)) = r {
                    assert!(
                        code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                        "create topic {t}: {code}"
                    );
                }
            }
        }
        Err(e) => panic!("create topic {topic}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_every_event_keyed_by_id_and_backlog_while_down() {
    let Some(brokers) = service("CUSTOS_TEST_KAFKA", "Kafka (tansu)") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = open_log(tmp.path(), "kafka").await;
    let topic = format!("custos-test-{}", suffix());
    {
        let (b, t) = (brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || create_topic(&b, &t, 3))
            .await
            .expect("create topic task");
    }
    let n = 300u64;
    for i in 1..=n {
        log.append(event(i, "2025-03-04T05:06:07Z"))
            .await
            .expect("append");
    }
    let (opts, _) =
        KafkaOptions::from_map(&map(&[("brokers", &brokers), ("topic", &topic)])).expect("opts");
    let sh = Shipper::start(
        "kafka",
        "",
        BTreeMap::new(),
        "file/",
        log.clone(),
        Box::new(KafkaSink::new(opts).expect("sink")),
        ship_opts(),
    )
    .expect("start");
    wait_until("everything delivered", 120, || sh.status().checkpoint == n).await;
    assert!(sh.status().up);
    sh.shutdown().await;
    let target = KafkaTarget {
        brokers: brokers.clone(),
        topic: topic.clone(),
        options: BTreeMap::new(),
        sink: "kafka".into(),
        timeout: Duration::from_secs(60),
    };
    let keys = tokio::task::spawn_blocking({
        let t = target.clone();
        move || reconcile::kafka_keys(&t)
    })
    .await
    .expect("consumer task")
    .expect("read topic");
    for i in 1..=n {
        assert!(keys.contains_key(&id(i)), "{} missing from Kafka", id(i));
    }
    let local = reconcile::local_events(log.log_dir()).expect("local");
    let r = reconcile::reconcile_kafka(&local, log.log_dir(), &target)
        .await
        .expect("reconcile");
    assert_eq!((r.missing, r.pending), (0, 0), "{r:?}");

    // A broker that is not there: health 0, the backlog grows and stays.
    let (dead, _) = KafkaOptions::from_map(&map(&[
        ("brokers", "127.0.0.1:9"),
        ("topic", &topic),
        ("message_timeout", "2s"),
    ]))
    .expect("opts");
    Checkpoint::register(&log.checkpoint_dir(), "dead", 0).expect("register");
    let down = Shipper::start(
        "dead",
        "",
        BTreeMap::new(),
        "file/",
        log.clone(),
        Box::new(KafkaSink::new(dead).expect("sink")),
        ship_opts(),
    )
    .expect("start");
    wait_until("the dead sink is reported down", 60, || {
        let s = down.status();
        !s.up && s.records == n && s.bytes > 0 && s.lag_seconds > 0.0
    })
    .await;
    assert_eq!(down.status().checkpoint, 0);
    down.shutdown().await;
    log.shutdown().await;
}
