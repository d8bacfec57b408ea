//! Warming against real PostgreSQL and Redis: refresh, write-through, versioned writes that
//! never leave a stale value, the cache-aside fill race with and without reinvalidate_after,
//! and resumable bulk warming.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, run_bin, TestEnv, WAIT};
use redis::AsyncCommands;

const SCHEMA: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL, title text NOT NULL DEFAULT 't');
ALTER TABLE items REPLICA IDENTITY FULL;
"#;

async fn get(env: &TestEnv, key: &str) -> Option<String> {
    let mut r = env.redis.clone();
    r.get(env.key(key)).await.unwrap()
}

async fn db_val(env: &TestEnv, id: i32) -> Option<String> {
    env.db
        .query_opt("SELECT val::text FROM items WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_refills_after_each_change_and_delete_leaves_it_empty() {
    let env = TestEnv::new("refresh", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='refresh'\nttl=60\n\
         [rule.warm]\nkey='item:{id}'\nquery='SELECT val::text FROM items WHERE id = $1'\nargs=['id']\n",
    );
    let w = env.start_worker().await;
    env.db
        .execute("INSERT INTO items (id, val) VALUES (1, 10)", &[])
        .await
        .unwrap();
    eventually("warmed after insert", WAIT, || async {
        get(&env, "item:1").await.as_deref() == Some("10")
    })
    .await;
    env.db
        .execute("UPDATE items SET val = 11 WHERE id = 1", &[])
        .await
        .unwrap();
    eventually("refreshed after update", WAIT, || async {
        get(&env, "item:1").await.as_deref() == Some("11")
    })
    .await;
    let mut r = env.redis.clone();
    let ttl: i64 = r.ttl(env.key("item:1")).await.unwrap();
    assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    env.db
        .execute("DELETE FROM items WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:1"], WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&env, "item:1").await,
        None,
        "a deleted row is not warmed back"
    );
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_writes_the_new_row() {
    let env = TestEnv::new("write_through", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='write-through'\n[rule.warm]\nkey='item:{id}'\n",
    );
    let w = env.start_worker().await;
    env.db
        .execute(
            "INSERT INTO items (id, val, title) VALUES (3, 7, 'seven')",
            &[],
        )
        .await
        .unwrap();
    eventually("written through", WAIT, || async {
        get(&env, "item:3").await.is_some()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&get(&env, "item:3").await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"id": 3, "val": 7, "title": "seven"}));
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_writes_never_replace_newer_values() {
    let env = TestEnv::new("cas", SCHEMA).await;
    let mut cache = cachewarden::target::RedisTarget::new(
        redis::Client::open(common::REDIS_URL).unwrap(),
        Default::default(),
    )
    .unwrap();
    let key = env.key("k");
    let rule_mark = env.key("cw:v:rule:r");
    let write = |v: &'static str, lsn: u64| cachewarden::target::VersionedWrite {
        key: Box::leak(key.clone().into_boxed_str()),
        value: v.as_bytes(),
        version: cachewarden::fence::Version(lsn),
        ttl: None,
        key_prefix: Box::leak(env.prefix.clone().into_boxed_str()),
        rule_mark: Box::leak(rule_mark.clone().into_boxed_str()),
    };
    // A change at 200 was invalidated (mark 200): a refetch that started for the change at 100
    // read data that may predate 200, and is refused; the refetch for 200 lands.
    cache
        .set_marks(&[(
            cachewarden::fence::mark_key(&env.prefix, &key),
            cachewarden::fence::Version(200),
        )])
        .await
        .unwrap();
    assert_eq!(
        cache.write_versioned(&[write("old", 100)]).await.unwrap(),
        [false]
    );
    assert_eq!(
        cache.write_versioned(&[write("new", 200)]).await.unwrap(),
        [true]
    );
    assert_eq!(get(&env, "k").await.as_deref(), Some("new"));
    // An invalidation at 300 raises the mark before unlinking: a refetch versioned 250 is refused.
    cache
        .set_marks(&[(
            cachewarden::fence::mark_key(&env.prefix, &key),
            cachewarden::fence::Version(300),
        )])
        .await
        .unwrap();
    assert_eq!(
        cache.write_versioned(&[write("stale", 250)]).await.unwrap(),
        [false]
    );
    assert_eq!(
        cache.write_versioned(&[write("fresh", 300)]).await.unwrap(),
        [true]
    );
    // A TRUNCATE fences the whole rule.
    cache
        .set_marks(&[(rule_mark.clone(), cachewarden::fence::Version(400))])
        .await
        .unwrap();
    assert_eq!(
        cache.write_versioned(&[write("older", 350)]).await.unwrap(),
        [false]
    );
    // Bulk writes take the native path while nothing of the rule was invalidated after them,
    // and the per-key check once something was.
    let max = env.key("cw:v:max:r");
    let bulk = vec![
        (env.key("b1"), b"v1".to_vec()),
        (env.key("b2"), b"v2".to_vec()),
    ];
    let lsn = cachewarden::fence::Version;
    let n = cache
        .write_versioned_bulk(
            &bulk,
            lsn(500),
            None,
            &env.prefix,
            &env.key("cw:v:rule:r2"),
            &max,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    cache
        .set_marks(&[
            (
                cachewarden::fence::mark_key(&env.prefix, &env.key("b1")),
                lsn(600),
            ),
            (max.clone(), lsn(600)),
        ])
        .await
        .unwrap();
    let n = cache
        .write_versioned_bulk(
            &bulk,
            lsn(550),
            None,
            &env.prefix,
            &env.key("cw:v:rule:r2"),
            &max,
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "b1 was invalidated after the bulk read; b2 was not");
    let mut r = env.redis.clone();
    let _: () = r
        .del(&[max, env.key("cw:v:b1"), env.key("b1"), env.key("b2")])
        .await
        .unwrap();
    let _: () = r.del(&[env.key("cw:v:rule:r")]).await.unwrap();
    let _: () = r.del(&[env.key("cw:v:k")]).await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_one_row_while_warming_ends_equal_to_the_database() {
    let env = TestEnv::new("hammer", SCHEMA).await;
    // A slow, jittery refetch makes refetches overlap with later changes.
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='refresh'\n[rule.warm]\nkey='item:{id}'\n\
         query='SELECT val::text FROM items, pg_sleep(random() * 0.004) WHERE id = $1'\nargs=['id']\n",
    );
    env.db
        .execute("INSERT INTO items (id, val) VALUES (1, 0), (2, 0)", &[])
        .await
        .unwrap();
    let w = env.start_worker().await;
    // Two writers hammer two rows with 300 single-row transactions each.
    let mut writers = Vec::new();
    for id in [1, 2] {
        let url = format!("{}/{}", common::PG_BASE, env.name);
        writers.push(tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..300 {
                db.execute("UPDATE items SET val = val + 1 WHERE id = $1", &[&id])
                    .await
                    .unwrap();
            }
        }));
    }
    for wr in writers {
        wr.await.unwrap();
    }
    env.wait_caught_up(WAIT).await;
    for id in [1, 2] {
        let key = format!("item:{id}");
        eventually("the warmed value equals the database", WAIT, || async {
            get(&env, &key).await == db_val(&env, id).await
        })
        .await;
    }
    // And it stays equal: no late, older write lands afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [1, 2] {
        assert_eq!(
            get(&env, &format!("item:{id}")).await,
            db_val(&env, id).await
        );
    }
    let s = w.status.snapshot();
    eprintln!(
        "hammer: {} warm writes, {} refused as older than an invalidation",
        s.counters["warm_writes"], s.counters["warm_rejected"]
    );
    w.stop().await;
    env.cleanup().await;
}

/// The cache-aside race: a reader reads the old row, the row changes and is invalidated, and
/// the reader then stores what it read, 0-150 ms after the invalidation. Returns how many of
/// `n` keys end stale.
async fn race(env: &TestEnv, n: i32) -> usize {
    env.db
        .execute(
            "INSERT INTO items (id, val) SELECT g, 0 FROM generate_series(1, $1) g",
            &[&n],
        )
        .await
        .unwrap();
    env.wait_caught_up(WAIT).await;
    let url = format!("{}/{}", common::PG_BASE, env.name);
    let mut tasks = Vec::new();
    for id in 1..=n {
        let url = url.clone();
        let key = env.key(&format!("item:{id}"));
        let mut r = env.redis.clone();
        tasks.push(tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // The reader's view, read before the change commits.
            let old: String = db
                .query_one("SELECT val::text FROM items WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            // What the reader read is cached, so the invalidation shows as that value leaving.
            let _: () = r.set(&key, &old).await.unwrap();
            db.execute("UPDATE items SET val = val + 1 WHERE id = $1", &[&id])
                .await
                .unwrap();
            // The worker has invalidated (or refreshed) the key for this update…
            let start = Instant::now();
            loop {
                let cached: Option<String> = r.get(&key).await.unwrap();
                if cached.as_deref() != Some(old.as_str()) {
                    break;
                }
                assert!(start.elapsed() < WAIT, "the update was never invalidated");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // …and the slow reader stores what it read 0-150 ms later.
            tokio::time::sleep(Duration::from_millis((id as u64 * 37) % 150)).await;
            let _: () = r.set(&key, old).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    env.wait_caught_up(WAIT).await;
    // Past every delayed pass (1 s in these tests) and its refresh.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut stale = 0;
    for id in 1..=n {
        let cached = get(env, &format!("item:{id}")).await;
        if cached.is_some() && cached != db_val(env, id).await {
            stale += 1;
        }
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aside_race_with_and_without_reinvalidate_after() {
    let n = 40;
    let plain = TestEnv::new("race_plain", SCHEMA).await;
    plain.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}']\n",
    );
    let w = plain.start_worker().await;
    let stale_without = race(&plain, n).await;
    w.stop().await;
    plain.cleanup().await;

    let defended = TestEnv::new("race_defended", SCHEMA).await;
    defended.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}']\nreinvalidate_after='1s'\n",
    );
    let w = defended.start_worker().await;
    let stale_with = race(&defended, n).await;
    let reinvalidations = w.status.snapshot().counters["reinvalidations"];
    let journaled: i64 = defended
        .db
        .query_one("SELECT count(*) FROM cache_invalidations WHERE reason LIKE 'reinvalidate_after%' AND status = 'completed'", &[])
        .await
        .unwrap()
        .get(0);
    w.stop().await;
    defended.cleanup().await;

    eprintln!("cache-aside race: {stale_without}/{n} keys stale without a defence, {stale_with}/{n} with reinvalidate_after = 1s");
    assert_eq!(
        stale_without, n as usize,
        "every fill after the invalidation leaves a stale entry"
    );
    assert_eq!(
        stale_with, 0,
        "the delayed second invalidation removes every late fill"
    );
    assert!(
        reinvalidations >= 1 && journaled >= 1,
        "journaled like any invalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_warm_fills_every_key_and_resumes() {
    let env = TestEnv::new("bulk", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='refresh'\n[rule.warm]\nkey='item:{id}'\n\
         query='SELECT val::text FROM items WHERE id = $1'\nargs=['id']\n",
    );
    env.db
        .execute(
            "INSERT INTO items (id, val) SELECT g, g * 2 FROM generate_series(1, 3000) g",
            &[],
        )
        .await
        .unwrap();
    let cfg = env.write_config("127.0.0.1:0", "");
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_bin(
        &[
            "--config",
            cfg,
            "warm",
            "--rule",
            "item",
            "--where",
            "id <= 1000",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("item: 1000 keys written"), "{out}");
    assert!(err.contains("1000/1000 keys"), "progress line: {err}");
    assert_eq!(get(&env, "item:1000").await.as_deref(), Some("2000"));
    assert_eq!(get(&env, "item:1001").await, None);
    // An interrupted run (here: recorded as stopped after id 2000) resumes after its last key.
    env.db
        .execute(
            "INSERT INTO cachewarden_warm_runs (rule_name, last_key) VALUES ('item', ARRAY['2000'])",
            &[],
        )
        .await
        .unwrap();
    let (code, out, err) = run_bin(&["--config", cfg, "warm"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("item: 1000 keys written"),
        "resumed after 2000: {out}"
    );
    assert_eq!(get(&env, "item:3000").await.as_deref(), Some("6000"));
    assert_eq!(get(&env, "item:1500").await, None);
    let (code, out, _) = run_bin(&["--config", cfg, "warm", "--restart"], None);
    assert_eq!(code, 0);
    assert!(out.contains("item: 3000 keys written"), "{out}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_on_start_fills_the_rule() {
    let env = TestEnv::new("warm_start", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='write-through'\nwarm_on_start=true\n[rule.warm]\nkey='item:{id}'\n",
    );
    env.db
        .execute(
            "INSERT INTO items (id, val) SELECT g, g FROM generate_series(1, 500) g",
            &[],
        )
        .await
        .unwrap();
    let start = Instant::now();
    let w = env.start_worker().await;
    eventually("all 500 keys warmed", WAIT, || async {
        get(&env, "item:500").await.is_some()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&get(&env, "item:1").await.unwrap()).unwrap();
    assert_eq!(v["val"], 1);
    assert!(start.elapsed() < WAIT);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_application_fills_ends_fresh() {
    // The application fills the same keys with what it read before each commit; the refresh
    // rule's delayed second pass overwrites those late, old fills with fresh values.
    let env = TestEnv::new("race_refresh", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='refresh'\nreinvalidate_after='1s'\n\
         [rule.warm]\nkey='item:{id}'\nquery='SELECT val::text FROM items WHERE id = $1'\nargs=['id']\n",
    );
    let w = env.start_worker().await;
    let n = 30;
    let stale = race(&env, n).await;
    for id in 1..=n {
        assert_eq!(
            get(&env, &format!("item:{id}")).await,
            db_val(&env, id).await,
            "item:{id} holds the database's value"
        );
    }
    assert_eq!(stale, 0);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_warm_while_the_worker_runs_and_rows_change() {
    let env = TestEnv::new("bulk_live", SCHEMA).await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nstrategy='refresh'\n[rule.warm]\nkey='item:{id}'\n\
         query='SELECT val::text FROM items WHERE id = $1'\nargs=['id']\n",
    );
    env.db
        .execute(
            "INSERT INTO items (id, val) SELECT g, 0 FROM generate_series(1, 5000) g",
            &[],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    let cfg = env.write_config("127.0.0.1:0", "");
    let url = format!("{}/{}", common::PG_BASE, env.name);
    // Rows change while the bulk warm streams an older snapshot.
    let writer = tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for round in 1..=5 {
            db.execute("UPDATE items SET val = $1 WHERE id % 7 = 0", &[&round])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let cfg2 = cfg.clone();
    let warm = tokio::task::spawn_blocking(move || {
        run_bin(
            &["--config", cfg2.to_str().unwrap(), "warm", "--restart"],
            None,
        )
    });
    writer.await.unwrap();
    let (code, out, err) = warm.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    env.wait_caught_up(WAIT).await;
    eventually(
        "every changed row's key ends fresh or empty",
        WAIT,
        || async {
            for id in (7..=5000).step_by(7) {
                let cached = get(&env, &format!("item:{id}")).await;
                if cached.is_some() && cached != db_val(&env, id).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Unchanged rows were filled by the bulk warm.
    assert_eq!(get(&env, "item:1").await.as_deref(), Some("0"));
    w.stop().await;
    env.cleanup().await;
}
