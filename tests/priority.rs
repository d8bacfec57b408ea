//! Exact keys before keyspace passes: a Redis target told to defer to the stream holds each
//! SCAN page back while urgent commands are in flight, boundedly, and still finishes its pass.

mod common;

use std::sync::Arc;
use std::time::Instant;

use cachewarden::action::Target;
use cachewarden::target::priority::{Priority, DEFER_AT_MOST};
use cachewarden::target::redis::CacheOptions;
use cachewarden::target::{CacheTarget, RedisTarget};
use common::OwnRedis;
use redis::AsyncCommands;

const KEYS: usize = 1000;

async fn target_with_keys() -> (OwnRedis, redis::aio::MultiplexedConnection, RedisTarget) {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let keys: Vec<(String, u8)> = (0..KEYS).map(|i| (format!("page:{i}"), 1)).collect();
    let () = r.mset(&keys).await.unwrap();
    let target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions {
            scan_count: 10,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    (server, r, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_holds_each_page_back_while_the_stream_is_busy_and_still_finishes() {
    let (_server, mut r, mut target) = target_with_keys().await;
    let priority = Arc::new(Priority::default());
    target.defer_to(priority.clone());
    let pattern = Target::Pattern("page:*".into());

    let urgent = priority.urgent();
    let t = Instant::now();
    let report = target.execute(&[], &[&pattern]).await.unwrap();
    let took = t.elapsed();
    drop(urgent);

    assert_eq!(report.removed, KEYS as u64, "the pass covered every key");
    assert!(report.scans >= 50, "{} pages of COUNT 10", report.scans);
    // Every page waited its bound: the stream never released it.
    assert!(
        took >= DEFER_AT_MOST * report.scans as u32,
        "{} pages in {took:?}",
        report.scans
    );
    let left: u64 = redis::cmd("DBSIZE").query_async(&mut r).await.unwrap();
    assert_eq!(left, 0);
}
