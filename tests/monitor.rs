//! Monitoring against real PostgreSQL and Redis: `cache_metrics` rows per rule whose sampled
//! key counts are within the documented error of the truth (and exact when the scan is
//! complete), exact whole-instance deltas, and the replication slot's figures in `/metrics`
//! and `/readyz`.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, OwnRedis, TestEnv, REDIS_URL, WAIT};

const RULES: &str = "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n\
                     [[rule]]\nname='lesson'\ntable='lessons'\nkeys=['lesson:{id}']\n\
                     [[rule]]\nname='empty'\ntable='lessons'\nkeys=['nothing:{id}']\n";
const SCHEMA: &str = "CREATE TABLE courses (id bigint PRIMARY KEY); \
                      CREATE TABLE lessons (id bigint PRIMARY KEY);";

/// Fills Redis: 20,000 course keys, 5,000 lesson keys, 15,000 keys of no rule.
async fn fill(r: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    for (family, n) in [("course", 20_000), ("lesson", 5_000), ("other", 15_000)] {
        for chunk in (0..n).collect::<Vec<u32>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("SET")
                    .arg(format!("{prefix}{family}:{i}"))
                    .arg("v")
                    .ignore();
            }
            let () = pipe.query_async(r).await.unwrap();
        }
    }
}

/// The newest per-rule row of each rule: (key_count, key_count_error, memory_usage, hits).
async fn rule_rows(env: &TestEnv) -> Vec<(String, i64, f64, i64, Option<i64>)> {
    env.db
        .query(
            "SELECT DISTINCT ON (c.name) c.name, m.key_count, m.key_count_error, m.memory_usage, \
                    m.hit_count \
             FROM cache_metrics m JOIN cache_configs c ON c.id = m.config_id \
             ORDER BY c.name, m.\"timestamp\" DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn wait_rows(env: &TestEnv, rules: usize) -> Vec<(String, i64, f64, i64, Option<i64>)> {
    let start = Instant::now();
    loop {
        let rows = rule_rows(env).await;
        if rows.len() == rules {
            return rows;
        }
        assert!(start.elapsed() < WAIT, "per-rule rows: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sampled(
    name: &str,
    max_keys: usize,
) -> (TestEnv, Vec<(String, i64, f64, i64, Option<i64>)>) {
    let env = TestEnv::new(name, SCHEMA).await;
    env.write_rules("r.toml", RULES);
    let (redis, mut r) = OwnRedis::start(&[]).await;
    fill(&mut r, &env.prefix).await;
    // The application reports 5 hits of the course rule (README's convention).
    let () = redis::cmd("INCRBY")
        .arg(format!("{}cw:hits:course", env.prefix))
        .arg(5)
        .query_async(&mut r)
        .await
        .unwrap();
    let path = env.dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        env.config_text(
            "127.0.0.1:0",
            &format!("[monitor]\ninterval = \"1s\"\nsample_max_keys = {max_keys}\n"),
        )
        .replace(REDIS_URL, &redis.url),
    )
    .unwrap();
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    let rows = wait_rows(&env, 3).await;
    let m = w.status.monitor().expect("a sample in /status");
    assert!(
        m.unmeasured.iter().any(|u| u.contains("per-rule hits")),
        "{m:?}"
    );
    w.stop().await;
    drop(redis);
    (env, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_scan_counts_each_rules_keys_exactly() {
    let (env, rows) = sampled("monitor_exact", 1_000_000).await;
    let by = |n: &str| rows.iter().find(|r| r.0 == n).cloned().unwrap();
    let (_, course, err, memory, hits) = by("course");
    assert_eq!((course, err), (20_000, 0.0));
    assert!(memory > 20_000, "MEMORY USAGE of 20,000 keys: {memory}");
    assert_eq!(hits, Some(5), "the hits the application reported");
    assert_eq!(by("lesson").4, None, "no report: NULL, not 0");
    assert_eq!((by("lesson").1, by("lesson").2), (5_000, 0.0));
    assert_eq!((by("empty").1, by("empty").3), (0, 0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_scan_lands_within_its_documented_error() {
    // 4,000 of 40,000 keys: a tenth of the keyspace.
    let (env, rows) = sampled("monitor_partial", 4_000).await;
    for (name, truth) in [("course", 20_000i64), ("lesson", 5_000), ("empty", 0)] {
        let (_, count, err, _, _) = rows.iter().find(|r| r.0 == name).cloned().unwrap();
        // Documented: within three standard errors 99.7% of the time; four here keeps the
        // test from failing once in 15,000 runs.
        assert!(
            (count - truth).abs() as f64 <= 4.0 * err + 1.0,
            "{name}: {count} ± {err} vs {truth}"
        );
        if truth > 0 {
            assert!(err > 0.0, "{name}: a partial scan is an estimate: {err}");
        }
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_instance_rows_hold_exact_deltas() {
    let env = TestEnv::new("monitor_deltas", SCHEMA).await;
    env.write_rules("r.toml", RULES);
    let (redis, mut r) = OwnRedis::start(&[]).await;
    let path = env.dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        env.config_text("127.0.0.1:0", "[monitor]\ninterval = \"1s\"\n")
            .replace(REDIS_URL, &redis.url),
    )
    .unwrap();
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    let global = |sql: &'static str| {
        let db = &env.db;
        async move { db.query_one(sql, &[]).await.unwrap() }
    };
    // The first row's interval starts at the baseline taken at start: exact deltas (none
    // yet), and the memory level.
    let start = Instant::now();
    loop {
        let row = global(
            "SELECT count(*), count(*) FILTER (WHERE hit_count = 0 AND miss_count = 0 \
                                               AND eviction_count = 0 AND memory_usage > 0) \
             FROM cache_metrics WHERE config_id IS NULL",
        )
        .await;
        let (rows, first): (i64, i64) = (row.get(0), row.get(1));
        if rows >= 1 {
            assert_eq!(
                first, rows,
                "exact deltas of an idle Redis from the first row on"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "no whole-instance row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 7 hits, 3 misses and nothing else reading this Redis.
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut r)
        .await
        .unwrap();
    for key in ["k", "k", "k", "k", "k", "k", "k", "x", "y", "z"] {
        let _: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let start = Instant::now();
    loop {
        let row = global(
            "SELECT coalesce(sum(hit_count), 0)::int8, coalesce(sum(miss_count), 0)::int8 \
             FROM cache_metrics WHERE config_id IS NULL",
        )
        .await;
        let (hits, misses): (i64, i64) = (row.get(0), row.get(1));
        if hits == 7 && misses == 3 {
            break;
        }
        assert!(
            hits <= 7 && misses <= 3,
            "deltas overcount: {hits} hits, {misses} misses"
        );
        assert!(
            start.elapsed() < WAIT,
            "deltas: {hits} hits, {misses} misses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await;
    drop(redis);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_retained_wal_is_measured_and_limits_readiness() {
    let env = TestEnv::new("monitor_slot", SCHEMA).await;
    env.write_rules("r.toml", RULES);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let path = env.write_config(&addr, "[monitor]\nmax_slot_wal = \"1B\"\n");
    let config = env.config_with_file(&path);
    let w = env.start_worker_with(config).await;
    let server = tokio::spawn(cachewarden::api::serve(
        tokio::net::TcpListener::bind(&addr).await.unwrap(),
        cachewarden::api::router(w.status.clone()),
        std::future::pending(),
    ));
    env.db
        .execute("INSERT INTO courses SELECT generate_series(1, 100)", &[])
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
        let (code, body) = http_get(&addr, "/readyz").await.unwrap();
        let retained = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cachewarden_slot_retained_wal_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        if retained.is_some_and(|b| b > 1) && code == 503 {
            assert!(body.contains("max_slot_wal"), "{body}");
            assert!(
                metrics.contains("cachewarden_source_lag_bytes "),
                "{metrics}"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "{code} {body}\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_finds_a_correct_cache_consistent_and_a_planted_value_stale() {
    let env = TestEnv::new(
        "monitor_probe",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text NOT NULL);",
    )
    .await;
    env.write_rules(
        "r.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\nstrategy='refresh'\n\
         [rule.warm]\nkey='course:{id}'\nquery='SELECT title FROM courses WHERE id = $1'\nargs=['id']\n",
    );
    let path = env.write_config("127.0.0.1:0", "[monitor]\nprobe_interval = \"1s\"\n");
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    env.db
        .execute(
            "INSERT INTO courses SELECT i, 'title ' || i FROM generate_series(1, 5) i",
            &[],
        )
        .await
        .unwrap();
    let status = w.status.clone();
    let probed = |what: &'static str,
                  done: fn(&cachewarden::status::ConsistencySnapshot) -> bool| {
        let status = status.clone();
        async move {
            let start = Instant::now();
            loop {
                let c = status.consistency();
                if c.as_ref().is_some_and(done) {
                    return c.unwrap();
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{what}: {c:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The worker refreshed the five keys: all consistent.
    let c = probed("a correct cache", |c| c.consistent >= 5).await;
    assert_eq!(c.ratio, Some(1.0), "{c:?}");
    assert_eq!(c.inconsistent, 0, "{c:?}");

    // A stale value planted behind the worker's back (what a racing cache-aside fill leaves).
    let key = env.key("course:3");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("old title")
        .query_async(&mut env.redis.clone())
        .await
        .unwrap();
    let c = probed("a stale value", |c| c.inconsistent >= 1).await;
    assert!(c.ratio.is_some_and(|r| r < 1.0), "{c:?}");
    let found = &c.inconsistencies[0];
    assert_eq!(
        (
            found.key.as_str(),
            found.rule.as_str(),
            found.cached.as_str(),
            found.database.as_str()
        ),
        (key.as_str(), "course", "old title", "title 3")
    );
    let metrics = cachewarden::metrics::render(&w.status);
    let ratio = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cachewarden_consistency_ratio "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(ratio.is_some_and(|r| r < 1.0), "{metrics}");
    assert!(
        metrics.contains("cachewarden_probe_keys_total{result=\"inconsistent\"}"),
        "{metrics}"
    );
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_count_misses_and_evictions_per_rule() {
    let env = TestEnv::new("monitor_events", SCHEMA).await;
    env.write_rules("r.toml", RULES);
    // Notifications change a server-wide setting: a Redis of the test's own, small enough to
    // evict.
    let (redis, mut r) =
        OwnRedis::start(&["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-random"]).await;
    let path = env.dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        env.config_text(
            "127.0.0.1:0",
            "[monitor]\ninterval = \"1s\"\nkeyspace_events = true\n",
        )
        .replace(REDIS_URL, &redis.url),
    )
    .unwrap();
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(
        flags[1].contains('E') && flags[1].contains('m') && flags[1].contains('e'),
        "{flags:?}"
    );
    // Once a row counts misses, the subscription holds for whole intervals.
    let counted =
        "SELECT count(*) FROM cache_metrics m JOIN cache_configs c ON c.id = m.config_id \
                   WHERE c.name = 'course' AND m.miss_count IS NOT NULL";
    common::eventually("a per-rule row with counted misses", WAIT, || async {
        env.db
            .query_one(counted, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    let p = &env.prefix;
    for key in ["course:1", "course:2", "course:3", "lesson:1", "other:1"] {
        let _: Option<String> = redis::cmd("GET")
            .arg(format!("{p}{key}"))
            .query_async(&mut r)
            .await
            .unwrap();
    }
    // About 6 MB of course pages into 3 MB: Redis evicts.
    let value = "x".repeat(10_000);
    for i in 0..600 {
        let _: Result<(), _> = redis::cmd("SET")
            .arg(format!("{p}course:{i}"))
            .arg(&value)
            .query_async(&mut r)
            .await;
    }
    // Redis may evict a few more keys as later commands (the worker's too) arrive while it is
    // still over maxmemory: compare with its count at each look.
    let evicted = || {
        let mut r = r.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut r)
                .await
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("evicted_keys:"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap()
        }
    };
    assert!(evicted().await > 0, "Redis evicted");
    let sums = "SELECT c.name, coalesce(sum(m.miss_count), 0)::int8, \
                       coalesce(sum(m.eviction_count), 0)::int8 \
                FROM cache_metrics m JOIN cache_configs c ON c.id = m.config_id \
                GROUP BY c.name ORDER BY c.name";
    let start = Instant::now();
    loop {
        let evicted = evicted().await;
        let rows: Vec<(String, i64, i64)> = env
            .db
            .query(sums, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let want = vec![
            ("course".to_string(), 3, evicted),
            ("empty".to_string(), 0, 0),
            ("lesson".to_string(), 1, 0),
        ];
        if rows == want {
            break;
        }
        assert!(start.elapsed() < WAIT, "{rows:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.stop().await;
    drop(redis);
    env.cleanup().await;
}
