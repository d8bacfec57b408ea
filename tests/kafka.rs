//! The Kafka source against a real broker: `tansu`, one per test, on a free loopback port with
//! in-memory storage (built by `scripts/ensure-tansu.sh`; `CACHEWARDEN_TANSU` names another
//! binary). Records are real Debezium output (`tests/fixtures/debezium`) or events of the same
//! shape; the journal and the cache are the real local PostgreSQL and Redis, per test as in
//! every other suite.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use cachewarden::config::Config;
use common::{eventually, free_port, spawn_run, TestEnv, WAIT};

/// A `tansu` broker of the test's own, killed when dropped.
struct Broker {
    child: Child,
    addr: String,
    producer: FutureProducer,
}

fn tansu() -> PathBuf {
    let path = std::env::var_os("CACHEWARDEN_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cachewarden-tools/bin/tansu"));
    assert!(
        path.exists(),
        "the Kafka tests need the tansu broker at {}: run scripts/ensure-tansu.sh \
         (scripts/test.sh does)",
        path.display()
    );
    path
}

impl Broker {
    async fn start(env: &TestEnv) -> Broker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let log = std::fs::File::create(env.dir.join("tansu.log")).unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        let start = Instant::now();
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                start.elapsed() < WAIT,
                "tansu did not listen on {addr}: see {}",
                env.dir.join("tansu.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            // tansu 0.6 returns nothing for a fetch that starts inside a record batch: one
            // record per batch (real Kafka does not need this).
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer");
        Broker {
            child,
            addr,
            producer,
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let out = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topic");
        for r in out {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Produces one record and waits for the broker's acknowledgement.
    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        value: Option<&str>,
    ) {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }

    /// Replays a fixture file of real Debezium records (`{"topic","key","value"}` per line).
    async fn replay(&self, fixture: &str) {
        let path = format!(
            "{}/tests/fixtures/debezium/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        );
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            self.send(
                r["topic"].as_str().unwrap(),
                None,
                r["key"].as_str(),
                r["value"].as_str(),
            )
            .await;
        }
    }

    fn consumer(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap()
    }

    /// (committed offset, end offset) of every partition of `topic` for `group`.
    async fn offsets(&self, group: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
        let c = self.consumer(group);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let committed = c
                .committed_offsets(tpl, Duration::from_secs(5))
                .expect("committed offsets");
            (0..partitions)
                .map(|p| {
                    let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(n)) => n,
                        _ => -1,
                    };
                    let (_, high) = c
                        .fetch_watermarks(&topic, p, Duration::from_secs(5))
                        .expect("watermarks");
                    (done, high)
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// Waits until `group` has committed every record of `topic`.
    async fn wait_committed(&self, group: &str, topic: &str, partitions: i32) {
        let start = Instant::now();
        loop {
            let offsets = self.offsets(group, topic, partitions).await;
            // An empty partition has nothing to commit.
            if offsets
                .iter()
                .all(|(done, high)| done == high || *high == 0)
            {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{group} did not commit all of {topic}: (committed, end) per partition {offsets:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record of `topic` as (key, value, headers), read from the beginning.
    async fn read_all(
        &self,
        topic: &str,
        expect: usize,
    ) -> Vec<(Option<String>, Option<String>, Vec<(String, String)>)> {
        let c = self.consumer(&format!("reader-{}", free_port()));
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            c.subscribe(&[&topic]).unwrap();
            let mut out = Vec::new();
            let start = Instant::now();
            while out.len() < expect && start.elapsed() < WAIT {
                let Some(m) = c.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Ok(m) = m else { continue };
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), text(h.value).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((text(m.key()), text(m.payload()), headers));
            }
            out
        })
        .await
        .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[source]` and `[kafka]` sections for a worker of `group` reading `topics`.
fn kafka_config(broker: &Broker, group: &str, topics: &str, more: &str) -> String {
    format!(
        r#"[source]
kind = "kafka"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = {topics}
{more}
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#,
        brokers = broker.addr
    )
}

fn config(env: &TestEnv, listen: &str, kafka: &str) -> Config {
    Config::load(&env.write_config(listen, kafka)).unwrap()
}

/// A Debezium update event without schemas, as the JSON converter writes it with
/// `value.converter.schemas.enable=false` (`before` is null under REPLICA IDENTITY DEFAULT).
fn update_event(table: &str, id: i64, val: i64, lsn: u64) -> (String, String) {
    let key = format!(r#"{{"id":{id}}}"#);
    let value = format!(
        r#"{{"before":null,"after":{{"id":{id},"val":{val}}},"source":{{"version":"3.6.3.Final","connector":"postgresql","name":"app","ts_ms":1796077132358,"snapshot":"false","db":"app","schema":"public","table":"{table}","txId":{lsn},"lsn":{lsn}}},"op":"u","ts_ms":1796077132481}}"#
    );
    (key, value)
}

/// The topic of the `items` tests and their rule: each event names version `val` of its row,
/// so a lost event leaves its own key behind.
const ITEMS: &str = "app.public.items";
const ITEM_RULES: &str = "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}:v{val}']\n";

/// An `items` test: its database and rules, its broker with the topic in `partitions`
/// partitions, its group, and the `[source]`/`[kafka]` sections (`more` goes into `[kafka]`).
struct Items {
    env: TestEnv,
    broker: Broker,
    group: String,
    kafka: String,
}

async fn items(name: &str, partitions: i32, more: &str) -> Items {
    let env = TestEnv::new(name, "").await;
    env.write_rules("items.toml", ITEM_RULES);
    let broker = Broker::start(&env).await;
    broker.create_topic(ITEMS, partitions).await;
    let group = format!("{}-group", env.name);
    let kafka = kafka_config(&broker, &group, &format!("[\"{ITEMS}\"]"), more);
    Items {
        env,
        broker,
        group,
        kafka,
    }
}

const FIXTURE_RULES: &str = r#"
[[rule]]
name = "course"
table = "courses"
keys = ["course:{id}", "course:slug:{slug}"]

[[rule]]
name = "enrollment"
table = "enrollments"
keys = ["enrollment:{id}", "user:{user_id}:courses", "course:{course_id}:students"]
"#;

/// Every key the fixtures' changes touch (snapshot, inserts, updates, a primary-key change,
/// deletes and a truncate), and one they never do.
const FIXTURE_KEYS: &[&str] = &[
    "course:1",
    "course:2",
    "course:3",
    "course:20",
    "course:slug:intro-rust",
    "course:slug:intro-to-rust",
    "course:slug:free-sample",
    "course:slug:big-course",
    "enrollment:1",
    "enrollment:2",
    "enrollment:3",
    "enrollment:4",
    "user:100:courses",
    "user:200:courses",
    "user:300:courses",
    "user:400:courses",
    "course:1:students",
    "course:2:students",
    "course:3:students",
    "course:20:students",
];

async fn fixture_run(name: &str, fixture: &str) {
    let env = TestEnv::new(name, "").await;
    env.write_rules("app.toml", FIXTURE_RULES);
    let broker = Broker::start(&env).await;
    for t in ["cw.public.courses", "cw.public.enrollments"] {
        broker.create_topic(t, 3).await;
    }
    let group = format!("{}-group", env.name);
    let kafka = kafka_config(&broker, &group, r#"["^cw\\.public\\..*"]"#, "");
    let w = env
        .start_worker_with(config(&env, "127.0.0.1:0", &kafka))
        .await;
    let mut keys = FIXTURE_KEYS.to_vec();
    keys.push("course:99");
    env.set_keys(&keys).await;
    broker.replay(fixture).await;
    env.wait_gone(FIXTURE_KEYS, WAIT).await;
    assert!(
        env.exists("course:99").await,
        "a key no change names survives"
    );
    for t in ["cw.public.courses", "cw.public.enrollments"] {
        broker.wait_committed(&group, t, 3).await;
    }
    // The journal recorded the invalidations, and nothing was undecodable.
    let rows: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM cache_invalidations WHERE source_table IN ('public.courses', 'public.enrollments')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows > 0, "journal rows for the changes");
    let dead: i64 = env
        .db
        .query_one("SELECT count(*) FROM cache_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "no dead letters from real Debezium output");
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_with_schemas_invalidate_and_commit() {
    fixture_run("kafka_schemas", "schemas_precise.jsonl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_without_schemas_invalidate_and_commit() {
    fixture_run("kafka_plain", "plain_double.jsonl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_dead_lettered_and_the_partition_moves_on() {
    let Items {
        env,
        broker,
        group,
        kafka,
    } = items("kafka_dead", 1, r#"dead_letter_topic = "cw-dead-letters""#).await;
    broker.create_topic("cw-dead-letters", 1).await;
    let w = env
        .start_worker_with(config(&env, "127.0.0.1:0", &kafka))
        .await;
    env.set_keys(&["item:1:v1", "item:2:v2", "item:7:v7", "item:3:v3"])
        .await;
    let topic = "app.public.items";
    let (k, v) = update_event("items", 1, 1, 100);
    broker.send(topic, None, Some(&k), Some(&v)).await;
    env.wait_gone(&["item:1:v1"], WAIT).await;
    broker.wait_committed(&group, topic, 1).await;
    // Not JSON at all: nothing says which table, so it is only kept. Alone in its batch (the
    // only record there is): a batch of nothing but dead letters must still keep them before
    // its position is committed.
    broker
        .send(topic, None, Some(r#"{"id":5}"#), Some("\u{1}garbage"))
        .await;
    broker.wait_committed(&group, topic, 1).await;
    // An envelope of a known table whose op is unknown: kept, and the table's keys go.
    let (_, bad) = update_event("items", 7, 7, 101);
    let bad = bad.replace(r#""op":"u""#, r#""op":"x""#);
    broker
        .send(topic, None, Some(r#"{"id":7}"#), Some(&bad))
        .await;
    let (k, v) = update_event("items", 2, 2, 102);
    broker.send(topic, None, Some(&k), Some(&v)).await;
    env.wait_gone(&["item:1:v1", "item:2:v2", "item:7:v7"], WAIT)
        .await;
    broker.wait_committed(&group, topic, 1).await;

    let rows = env
        .db
        .query(
            "SELECT source, position, kafka_topic, kafka_partition, kafka_offset, error \
             FROM cache_dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("kafka".into(), format!("{topic}/0@1"), topic.into(), 0, 1),
            ("kafka".into(), format!("{topic}/0@2"), topic.into(), 0, 2),
        ]
    );
    for r in &rows {
        assert!(!r.get::<_, String>(5).is_empty(), "the error is recorded");
    }
    // The dead-letter topic holds copies, each saying where it came from.
    let copies = broker.read_all("cw-dead-letters", 2).await;
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert_eq!(copies[0].1.as_deref(), Some("\u{1}garbage"));
    assert_eq!(
        copies[0].2,
        vec![("cachewarden.source".to_string(), format!("{topic}/0@1"))]
    );
    assert_eq!(copies[1].0.as_deref(), Some(r#"{"id":7}"#));
    assert_eq!(
        w.status
            .counters
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    w.stop().await;
    env.cleanup().await;
}

/// The worker is SIGKILLed twice while 3,000 events stream in; after the restarts every key an
/// event named is gone (what was read but not committed is read again) and every offset is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing() {
    const EVENTS: i64 = 3000;
    let Items {
        env,
        broker,
        group,
        kafka,
    } = items("kafka_kill", 3, "").await;
    let topic = ITEMS;
    let keys: Vec<String> = (0..EVENTS)
        .map(|i| format!("item:{}:v{i}", i % 97))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = env.write_config(&listen, &kafka);
    let log = env.dir.join("worker.log");
    let mut worker = spawn_run(&cfg, &log);
    for i in 0..EVENTS {
        let (k, v) = update_event("items", i % 97, i, 1000 + i as u64);
        broker.send(topic, None, Some(&k), Some(&v)).await;
        if i == EVENTS / 3 || i == 2 * EVENTS / 3 {
            // Once this worker streams (the second joins after the first's session ends),
            // kill it mid-stream and start another at once.
            eventually("the worker streams", Duration::from_secs(30), || async {
                let Some((200, body)) = common::http_get(&listen, "/status").await else {
                    return false;
                };
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                v["counters"]["changes"].as_u64().unwrap_or(0) > 0
            })
            .await;
            worker.start_kill().unwrap();
            worker.wait().await.unwrap();
            worker = spawn_run(&cfg, &log);
        }
    }
    // The new member gets the partitions once the killed one's session times out.
    let start = Instant::now();
    loop {
        let mut r = env.redis.clone();
        let left: Vec<String> = redis::AsyncCommands::keys(&mut r, env.key("item:*"))
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} keys still cached, e.g. {:?}; see {}",
            left.len(),
            &left[..left.len().min(5)],
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.wait_committed(&group, topic, 3).await;
    common::sigterm(&worker);
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit; see {}", log.display());
    env.cleanup().await;
}

/// Two workers in one group share the partitions; when one stops, the other takes its
/// partitions over from their last commit and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_group_and_take_over() {
    let Items {
        env,
        broker,
        group,
        kafka,
    } = items("kafka_group", 4, "").await;
    let topic = ITEMS;
    let a = env
        .start_worker_with(config(&env, "127.0.0.1:0", &kafka))
        .await;
    let b = env
        .start_worker_with(config(&env, "127.0.0.1:0", &kafka))
        .await;
    let produce = |from: i64, to: i64| {
        let broker = &broker;
        async move {
            for i in from..to {
                let (k, v) = update_event("items", i, i, i as u64);
                broker
                    .send(topic, Some((i % 4) as i32), Some(&k), Some(&v))
                    .await;
            }
        }
    };
    let keys = |from: i64, to: i64| -> Vec<String> {
        (from..to).map(|i| format!("item:{i}:v{i}")).collect()
    };
    let first = keys(0, 200);
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    // Both members join and split the four partitions between them.
    let changes = |w: &common::RunningWorker| {
        w.status
            .counters
            .changes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let start = Instant::now();
    loop {
        produce(0, 200).await;
        env.wait_gone(&refs, Duration::from_secs(30)).await;
        if changes(&a) > 0 && changes(&b) > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the two members never shared the partitions: {} and {} changes",
            changes(&a),
            changes(&b)
        );
        env.set_keys(&refs).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    broker.wait_committed(&group, topic, 4).await;
    // One leaves; the other takes every partition over.
    a.stop().await;
    let second = keys(200, 400);
    let refs: Vec<&str> = second.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    produce(200, 400).await;
    env.wait_gone(&refs, Duration::from_secs(30)).await;
    broker.wait_committed(&group, topic, 4).await;
    b.stop().await;
    env.cleanup().await;
}

/// A worker whose brokers are gone still stops promptly on a signal (what it read but did not
/// commit is read again by the group's next member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_promptly_when_the_brokers_are_gone() {
    let Items {
        env, broker, kafka, ..
    } = items("kafka_gone", 1, "").await;
    let topic = ITEMS;
    let w = env
        .start_worker_with(config(&env, "127.0.0.1:0", &kafka))
        .await;
    env.set_keys(&["item:1:v1"]).await;
    let (k, v) = update_event("items", 1, 1, 1);
    broker.send(topic, None, Some(&k), Some(&v)).await;
    env.wait_gone(&["item:1:v1"], WAIT).await;
    drop(broker);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    w.stop().await;
    eprintln!("stopped after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped after {:?}",
        t.elapsed()
    );
    env.cleanup().await;
}

/// `check` with a Kafka config asks the brokers: a missing topic is a warning, unreachable
/// brokers an error; the rules' tables may live in another database (a warning). `explain`
/// reads a Debezium record under the same config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_explain_with_a_kafka_config() {
    let Items {
        env, broker, kafka, ..
    } = items("kafka_check", 1, "").await;
    let kafka = kafka.replace(
        &format!("topics = [\"{ITEMS}\"]"),
        &format!("topics = [\"{ITEMS}\", \"app.public.missing\"]"),
    );
    let cfg = env.write_config("127.0.0.1:0", &kafka);
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = common::run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 rules on 1 tables"), "{out}");
    assert!(
        err.contains("warning: [kafka] topic \"app.public.missing\" does not exist (yet)"),
        "{err}"
    );
    assert!(
        !err.contains(&format!("\"{ITEMS}\" does not exist")),
        "{err}"
    );

    let (_, event) = update_event("items", 9, 3, 1);
    let (code, out, err) =
        common::run_bin(&["--config", cfg, "explain", "--event", "-"], Some(&event));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("key      {}item:9:v3", env.prefix)),
        "{out}"
    );

    drop(broker);
    let (code, _, err) = common::run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: cannot reach the [kafka] brokers 127.0.0.1:"),
        "{err}"
    );
    env.cleanup().await;
}

/// The consumer group's lag per partition: what is in the topic before the worker reads it,
/// then nothing once it has committed; `/status` names the source `kafka`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_measured_per_partition() {
    let Items {
        env,
        broker,
        group,
        kafka,
    } = items("kafka_lag", 2, "").await;
    for i in 0..10 {
        let (k, v) = update_event("items", i, i, 2000 + i as u64);
        broker
            .send(ITEMS, Some((i % 2) as i32), Some(&k), Some(&v))
            .await;
    }
    let config = config(&env, "127.0.0.1:0", &kafka);
    let k = config.kafka.clone().unwrap();
    let before = cachewarden::source::kafka::consumer_lag(&k, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        before,
        [(format!("{ITEMS}/0"), 5), (format!("{ITEMS}/1"), 5)].into(),
        "nothing committed yet: every record is lag"
    );
    let w = env.start_worker_with(config).await;
    broker.wait_committed(&group, ITEMS, 2).await;
    let start = Instant::now();
    loop {
        let lag = w.status.source_figures().consumer_lag;
        if lag
            .as_ref()
            .is_some_and(|l| l.len() == 2 && l.values().all(|n| *n == 0))
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "consumer lag in /status: {lag:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.status.snapshot().source, "kafka");
    let metrics = cachewarden::metrics::render(&w.status);
    assert!(
        metrics.contains(&format!(
            "cachewarden_kafka_consumer_lag_messages{{topic=\"{ITEMS}\",partition=\"0\"}} 0"
        )),
        "{metrics}"
    );
    w.stop().await;
    env.cleanup().await;
}
