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
use common::OwnRedis;
use redis::AsyncCommands;

const EACH: usize = 10_000;

/// How many keys match (`KEYS` is fine on the test's own small server).
async fn count(r: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let keys: Vec<String> = r.keys(pattern).await.unwrap();
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
async fn a_joined_pattern_with_another_prefix_widens_the_server_side_match_only() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let mut keys: Vec<(String, u8)> = Vec::new();
    for i in 0..500 {
        keys.push((format!("a:page:{i}"), 1));
        keys.push((format!("b:page:{i}"), 1));
        keys.push((format!("b:other:{i}"), 1));
    }
    let () = r.mset(&keys).await.unwrap();
    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions::default(),
    )
    .unwrap();
    let early = Arc::new(Early::default());
    target.join_from(early.clone());
    // Offered before the first page: it joins the whole pass.
    early.offer(["b:page:*"]);
    let pattern = Target::Pattern("a:page:*".into());
    let report = target.execute(&[], &[&pattern]).await.unwrap();
    assert_eq!(report.joined, 1);
    assert_eq!(report.removed, 1000);
    assert_eq!(count(&mut r, "a:*").await, 0);
    assert_eq!(count(&mut r, "b:page:*").await, 0);
    assert_eq!(
        count(&mut r, "b:other:*").await,
        500,
        "only what a pattern matches"
    );
}
