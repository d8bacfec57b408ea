//! The Kafka source against baselines measured in the same run, on one `tansu` broker
//! (in-memory storage, started here on a free port; `scripts/ensure-tansu.sh` builds it).
//!
//! Run with `bench/run.sh kafka` (or `cargo bench --bench kafka`).
//!
//! 1. Backlog throughput: N Debezium change events (the JSON converter's output with schemas,
//!    as Kafka Connect writes it by default; about 1.4 KB each) are produced to a topic of 4
//!    partitions before anything consumes them. Then, each in a consumer group of its own:
//!    - a raw librdkafka consumer that only receives the records (the floor: what reading
//!      the topic costs),
//!    - the same consumer parsing each value with `serde_json` (what any Debezium consumer
//!      must at least do),
//!    - `cachewarden run`, until its group's committed offsets reach the end of every
//!      partition (decode, plan, UNLINK, journal, commit).
//!
//!    cachewarden's events/s is printed with its ratio to each baseline.
//! 2. Latency, idle: a probe sets a key, produces one event for it and polls Redis until the
//!    key is gone; p50/p99 over the probes, beside the raw consumer's produce → receive time.
//!
//! `CW_KAFKA_EVENTS` (200000), `CW_KAFKA_PROBES` (300); `CW_KAFKA_PROPERTIES` adds lines to
//! the worker's `[kafka.properties]` (e.g. `"fetch.wait.max.ms" = "10"`); `CW_BIN` measures
//! another build.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands;

mod common;

use common::{
    clear_prefix, connect, env_usize, fresh_database, pct, set_keys, spawn_worker, wait_connected,
    REDIS,
};

const DB: &str = "cw_bench_kafka";
const PREFIX: &str = "cwbench-kafka:";
const TOPIC: &str = "bench.public.items";
const PARTITIONS: i32 = 4;

/// A Debezium update event with schemas for `items(id bigint, title text, version bigint,
/// price numeric, updated_at timestamptz, body text)`, as the JSON converter writes it
/// (`decimal.handling.mode=string`, REPLICA IDENTITY FULL).
fn event(id: i64, version: i64) -> (String, String) {
    let key = format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}}],"optional":false,"name":"bench.public.items.Key"}},"payload":{{"id":{id}}}}}"#
    );
    let fields = r#"[{"type":"int64","optional":false,"field":"id"},{"type":"string","optional":false,"field":"title"},{"type":"int64","optional":false,"field":"version"},{"type":"string","optional":true,"field":"price"},{"type":"string","optional":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"updated_at"},{"type":"string","optional":true,"field":"body"}]"#;
    let row = |v: i64| {
        let v = v.max(0);
        format!(
            r#"{{"id":{id},"title":"Item {id}","version":{v},"price":"{}.{:02}","updated_at":"2026-12-01T10:{:02}:{:02}.123456Z","body":"A short description of item {id}, stored inline."}}"#,
            v % 1000,
            v % 100,
            (v / 60) % 60,
            v % 60
        )
    };
    let value = format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":{fields},"optional":true,"name":"bench.public.items.Value","field":"before"}},{{"type":"struct","fields":{fields},"optional":true,"name":"bench.public.items.Value","field":"after"}},{{"type":"struct","fields":[{{"type":"string","optional":false,"field":"version"}},{{"type":"string","optional":false,"field":"connector"}},{{"type":"string","optional":false,"field":"name"}},{{"type":"int64","optional":false,"field":"ts_ms"}},{{"type":"string","optional":false,"field":"db"}},{{"type":"string","optional":false,"field":"schema"}},{{"type":"string","optional":false,"field":"table"}},{{"type":"int64","optional":true,"field":"txId"}},{{"type":"int64","optional":true,"field":"lsn"}}],"optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source"}},{{"type":"string","optional":false,"field":"op"}},{{"type":"int64","optional":true,"field":"ts_ms"}}],"optional":false,"name":"bench.public.items.Envelope"}},"payload":{{"before":{before},"after":{after},"source":{{"version":"3.6.3.Final","connector":"postgresql","name":"bench","ts_ms":1796077132358,"db":"app","schema":"public","table":"items","txId":{tx},"lsn":{lsn}}},"op":"u","ts_ms":1796077132481}}}}"#,
        before = row(version - 1),
        after = row(version),
        tx = 1000 + version,
        lsn = 100_000 + version * 64,
    );
    (key, value)
}

fn tansu() -> String {
    std::env::var("CACHEWARDEN_TANSU")
        .unwrap_or_else(|_| "/var/tmp/cachewarden-tools/bin/tansu".into())
}

fn client(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr);
    c
}

fn consumer(addr: &str, group: &str) -> ClientConfig {
    let mut c = client(addr);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Drains `events` records of the topic in a group of its own; `parse` parses each value.
async fn raw_drain(addr: &str, group: &str, events: usize, parse: bool) -> Duration {
    let c: StreamConsumer = consumer(addr, group).create().unwrap();
    c.subscribe(&[TOPIC]).unwrap();
    let mut n = 0usize;
    let mut bytes = 0usize;
    let mut start = None;
    while n < events {
        let m = c.recv().await.expect("record");
        start.get_or_insert_with(Instant::now);
        let payload = m.payload().unwrap_or_default();
        bytes += payload.len();
        if parse {
            let v: serde_json::Value = serde_json::from_slice(payload).expect("json");
            assert!(v["payload"]["op"].is_string());
        }
        n += 1;
    }
    std::hint::black_box(bytes);
    start.map_or(Duration::ZERO, |s| s.elapsed())
}

/// The offsets `group` has committed, summed over the partitions. (Not compared with the
/// high watermarks: tansu's lag behind multi-record batches, so the bench counts against what
/// it produced.)
fn committed(addr: &str, group: &str) -> i64 {
    let c: BaseConsumer = consumer(addr, group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed");
    (0..PARTITIONS)
        .filter_map(|p| match committed.find_partition(TOPIC, p)?.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        })
        .sum()
}

struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_usize("CW_KAFKA_EVENTS", 200_000);
    let probes = env_usize("CW_KAFKA_PROBES", 300);
    let bin = std::env::var("CW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cachewarden").into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("tcp://{addr}");
    let _broker = Broker(
        std::process::Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (scripts/ensure-tansu.sh builds it)"),
    );
    let t = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "tansu did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin: AdminClient<DefaultClientContext> = client(&addr).create().unwrap();
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.expect("topic");
    }

    // The backlog: event v updates row v % 10,000 to version v.
    let producer: FutureProducer = client(&addr)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut pending = Vec::with_capacity(10_000);
    for v in 0..events as i64 {
        let (k, val) = event(v % 10_000, v);
        bytes += val.len();
        pending.push(
            producer
                .send_result(FutureRecord::to(TOPIC).key(&k).payload(&val))
                .unwrap(),
        );
        if pending.len() == 10_000 {
            for f in pending.drain(..) {
                f.await.unwrap().expect("produced");
            }
        }
    }
    for f in pending.drain(..) {
        f.await.unwrap().expect("produced");
    }
    println!(
        "backlog: {events} events of {} bytes on average produced in {:.1} s",
        bytes / events.max(1),
        t.elapsed().as_secs_f64()
    );

    let raw = raw_drain(&addr, "bench-raw", events, false).await;
    let parsed = raw_drain(&addr, "bench-parse", events, true).await;
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "raw librdkafka consumer:          {:>9.0} events/s",
        rate(raw)
    );
    println!(
        "raw consumer + serde_json parse:  {:>9.0} events/s",
        rate(parsed)
    );

    let admin_pg = connect("postgres").await;
    let _db = fresh_database(&admin_pg, DB, &[]).await;
    let mut r = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    clear_prefix(&mut r, PREFIX).await;
    // A key per event (each names version v of row v % 10,000): one left behind is a lost
    // invalidation.
    let keys: Vec<String> = (0..events as i64)
        .map(|v| format!("{PREFIX}item:{}:v{v}", v % 10_000))
        .collect();
    set_keys(&mut r, &keys, "cached").await;
    let dir = std::env::temp_dir().join("cachewarden-bench-kafka");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/items.toml"),
        "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}:v{version}']\n",
    )
    .unwrap();
    let status = format!("127.0.0.1:{}", {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let config = dir.join("cachewarden.toml");
    std::fs::write(
        &config,
        format!(
            "rules_dir = \"rules\"\n[source]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{addr}\"\n\
             group_id = \"bench-cw\"\ntopics = [\"{TOPIC}\"]\n[postgres]\n\
             url = \"{pg}/{DB}\"\n[redis]\nurl = \"{REDIS}\"\nkey_prefix = \"{PREFIX}\"\n\
             [status]\nlisten = \"{status}\"\n[log]\nlevel = \"warn\"\n\
             [kafka.properties]\n{props}\n",
            props = std::env::var("CW_KAFKA_PROPERTIES").unwrap_or_default(),
            pg = common::PG
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut worker = spawn_worker(&bin, &config);
    wait_connected(&status).await;
    loop {
        let a = addr.clone();
        let done = tokio::task::spawn_blocking(move || committed(&a, "bench-cw"))
            .await
            .unwrap();
        if done >= events as i64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "cachewarden did not drain the backlog: {done} of {events} committed; status {}",
            common::http_status(&status).await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cw = t.elapsed();
    let left = common::scan_keys(&mut r, &format!("{PREFIX}*"), 10_000).await;
    println!(
        "cachewarden (start → all committed): {:>6.0} events/s  = {:.2}× raw, {:.2}× raw+parse  ({} keys left of {events})",
        rate(cw),
        rate(cw) / rate(raw),
        rate(cw) / rate(parsed),
        left.len()
    );

    // Latency, idle.
    let probe_consumer: StreamConsumer = consumer(&addr, "bench-probe-raw").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::End).unwrap();
    }
    probe_consumer.assign(&tpl).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut cw_ms = Vec::new();
    let mut raw_ms = Vec::new();
    for i in 0..probes as i64 {
        let v = events as i64 + i;
        let id = 20_000 + i;
        let key = format!("{PREFIX}item:{id}:v{v}");
        let () = r.set(&key, "cached").await.unwrap();
        let (k, val) = event(id, v);
        let sent = Instant::now();
        producer
            .send(
                FutureRecord::to(TOPIC).key(&k).payload(&val),
                Duration::from_secs(5),
            )
            .await
            .expect("produced");
        probe_consumer.recv().await.expect("probe record");
        raw_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        loop {
            let e: bool = r.exists(&key).await.unwrap();
            if !e {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "probe not invalidated"
            );
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        cw_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cw_ms.sort_by(f64::total_cmp);
    raw_ms.sort_by(f64::total_cmp);
    println!(
        "idle latency, produce → received by a raw consumer: p50 {:.2} ms  p99 {:.2} ms",
        pct(&raw_ms, 0.5),
        pct(&raw_ms, 0.99)
    );
    println!(
        "idle latency, produce → key gone (cachewarden):     p50 {:.2} ms  p99 {:.2} ms  ({:.2}× / {:.2}× raw)",
        pct(&cw_ms, 0.5),
        pct(&cw_ms, 0.99),
        pct(&cw_ms, 0.5) / pct(&raw_ms, 0.5),
        pct(&cw_ms, 0.99) / pct(&raw_ms, 0.99)
    );
    let _ = worker.start_kill();
    let _ = worker.wait().await;
    clear_prefix(&mut r, PREFIX).await;
    common::psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
    );
}
