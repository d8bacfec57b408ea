//! Patterns requested while a keyspace pass runs join it: the Redis target unlinks, for the rest
//! of the running pass, what they match too, ahead of the pass that covers them — and still
//! covers its own patterns whole.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cachewarden::action::Target;
use cachewarden::target::early::Early;
use cachewarden::target::redis::CacheOptions;
use cachewarden::target::{CacheTarget, RedisTarget};
use common::{OwnRedis, TestEnv, WAIT};
use redis::AsyncCommands;

const EACH: usize = 10_000;

/// How many keys match (`KEYS` is fine on the test's own small server).
async fn count(r: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let keys: Vec<Vec<u8>> = r.keys(pattern).await.unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_offered_mid_pass_is_unlinked_in_the_rest_of_it_and_the_pass_stays_whole() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    for family in ["course", "lesson"] {
        let keys: Vec<(String, u8)> = (0..EACH)
            .map(|i| (format!("app:{family}:{i}"), 1))
            .collect();
        let () = r.mset(&keys).await.unwrap();
    }
    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions {
            scan_count: 10,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    let early = Arc::new(Early::default());
    target.join_from(early.clone());

    let pass = tokio::spawn(async move {
        let courses = Target::Pattern("app:course:*".into());
        target.execute(&[], &[&courses]).await.unwrap()
    });
    // Once a tenth of the pass is behind it (2,000 pages of 10 in all), a change asks for the
    // lessons' pattern.
    let mut watch = r.clone();
    loop {
        let size: usize = redis::cmd("DBSIZE").query_async(&mut watch).await.unwrap();
        if size <= 2 * EACH - EACH / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    early.offer(["app:lesson:*"]);
    let report = pass.await.unwrap();

    assert_eq!(
        count(&mut r, "app:course:*").await,
        0,
        "its own pattern whole"
    );
    assert_eq!(report.joined, 1);
    let lessons_left = count(&mut r, "app:lesson:*").await;
    assert!(
        lessons_left > 0 && lessons_left < EACH,
        "the part of the keyspace still to read lost its lessons, the part read kept them: \
         {lessons_left} of {EACH} left"
    );
    assert_eq!(report.removed as usize, EACH + (EACH - lessons_left));

    // The pass that covers the newcomer takes the rest.
    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions::default(),
    )
    .unwrap();
    let lessons = Target::Pattern("app:lesson:*".into());
    target.execute(&[], &[&lessons]).await.unwrap();
    assert_eq!(count(&mut r, "app:lesson:*").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_pattern_widens_the_server_side_match_to_the_shared_prefix_and_no_further() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let mut keys: Vec<(Vec<u8>, u8)> = Vec::new();
    for i in 0..500 {
        keys.push((format!("app:a:page:{i}").into_bytes(), 1));
        keys.push((format!("app:b:page:{i}").into_bytes(), 1));
        keys.push((format!("app:b:other:{i}").into_bytes(), 1));
        keys.push((format!("zzz:page:{i}").into_bytes(), 1));
    }
    // Keys that are not UTF-8 come back in the widened pages: they must not fail the pass.
    keys.push((b"app:\xff\xfe".to_vec(), 1));
    keys.push((b"app:b:page:\xff".to_vec(), 1));
    let () = r.mset(&keys).await.unwrap();
    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions::default(),
    )
    .unwrap();
    let early = Arc::new(Early::default());
    target.join_from(early.clone());
    // Offered before the first page: they join the whole pass, but not the one that shares
    // nothing with the pass's own pattern (it would have every key sent back), and each
    // pattern once.
    early.offer(["app:b:page:*", "zzz:page:*", "app:b:page:*"]);
    let pattern = Target::Pattern("app:a:page:*".into());
    let report = target.execute(&[], &[&pattern]).await.unwrap();
    assert_eq!(report.joined, 1);
    assert_eq!(report.removed, 1001);
    assert_eq!(count(&mut r, "app:a:*").await, 0);
    assert_eq!(count(&mut r, "app:b:page:*").await, 0);
    assert_eq!(
        count(&mut r, "app:b:other:*").await,
        500,
        "only what a pattern matches"
    );
    assert_eq!(
        count(&mut r, "zzz:*").await,
        500,
        "waits for a pass of its own"
    );
    let odd: bool = r.exists(b"app:\xff\xfe".as_slice()).await.unwrap();
    assert!(odd, "matched by no pattern");
}

const SCHEMA: &str = "CREATE TABLE courses (id bigint PRIMARY KEY, title text NOT NULL);
ALTER TABLE courses REPLICA IDENTITY FULL;
INSERT INTO courses VALUES (1, 'a'), (2, 'b');";

const RULES: &str = r#"
[[rule]]
name = "course-pages"
table = "courses"
patterns = ["catalog:{id}:page:*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_lets_a_change_made_mid_pass_join_it_and_still_gives_it_a_pass_of_its_own() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let env = TestEnv::new("early_join", SCHEMA).await;
    env.write_rules("rules.toml", RULES);
    let mut config = env.config();
    config.redis.url = server.url.clone();
    config.redis.scan_count = 10;
    // 40,000 other keys: a pass is 4,000 pages, long enough to change a course during it.
    let mut keys: Vec<(String, u8)> = (0..40_000).map(|i| (format!("other:{i}"), 1)).collect();
    for course in [1, 2] {
        keys.extend((0..50).map(|p| (env.key(&format!("catalog:{course}:page:{p}")), 1)));
    }
    let () = r.mset(&keys).await.unwrap();
    let w = env.start_worker_with(config).await;

    env.db
        .execute("UPDATE courses SET title = 'a2' WHERE id = 1", &[])
        .await
        .unwrap();
    // Once course 1's pass is under way — its first page gone (the 50 are spread over the
    // 4,000 pages; a startup scan for legacy marks makes SCAN counts useless here) — course 2
    // changes.
    let first = env.key("catalog:1:page:*");
    let start = std::time::Instant::now();
    while count(&mut r, &first).await == 50 {
        assert!(start.elapsed() < WAIT, "course 1's pass did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    env.db
        .execute("UPDATE courses SET title = 'b2' WHERE id = 2", &[])
        .await
        .unwrap();
    let pages = env.key("catalog:*");
    common::eventually("every catalog page is gone", WAIT, || {
        let (mut r, pages) = (r.clone(), pages.clone());
        async move { count(&mut r, &pages).await == 0 }
    })
    .await;
    env.wait_caught_up(WAIT).await;

    let c = &w.status.counters;
    let joins = c.pattern_joins.load(std::sync::atomic::Ordering::Relaxed);
    let passes = c.pattern_passes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(joins >= 1, "course 2's pattern joined the running pass");
    assert!(passes >= 2, "and still had a pass of its own: {passes}");
    // Each change's pattern is journaled, final, by the pass that covers it.
    let rows = env
        .db
        .query(
            "SELECT key_pattern, status FROM cache_invalidations ORDER BY key_pattern",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [
            (env.key("catalog:1:page:*"), "completed".to_string()),
            (env.key("catalog:2:page:*"), "completed".to_string()),
        ]
    );
    w.stop().await;
    env.cleanup().await;
}
