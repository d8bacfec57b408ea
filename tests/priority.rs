//! Exact keys before keyspace passes: a Redis target told to defer to the stream holds each
//! SCAN page back while urgent commands are in flight, within its bounds (a page's, the
//! pass's), and still finishes its pass.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

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
async fn a_pass_holds_pages_back_while_the_stream_is_busy_within_its_budget_and_finishes() {
    let (_server, mut r, mut target) = target_with_keys().await;
    let priority = Arc::new(Priority::default());
    target.defer_to(priority.clone());
    let pattern = Target::Pattern("page:*".into());

    // The stream never lets go while the pass runs.
    let urgent = priority.urgent();
    let t = Instant::now();
    let report = target.execute(&[], &[&pattern]).await.unwrap();
    let took = t.elapsed();
    drop(urgent);

    assert_eq!(report.removed, KEYS as u64, "the pass covered every key");
    assert!(report.scans >= 50, "{} pages of COUNT 10", report.scans);
    let deferred = Duration::from_micros(report.deferred_us);
    assert!(
        deferred >= DEFER_AT_MOST,
        "the first page waited its bound: {deferred:?}"
    );
    // Waiting stays within a quarter of the time worked, plus the one wait that crossed it
    // (generously: a loaded machine wakes timers late). Without the budget every page would
    // wait its bound: at least 2 ms times the pages, far above this.
    let working = took.saturating_sub(deferred);
    assert!(
        deferred <= working / 4 + Duration::from_millis(50),
        "{deferred:?} waiting against {working:?} working over {} pages",
        report.scans
    );
    let left: u64 = redis::cmd("DBSIZE").query_async(&mut r).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_beside_an_idle_stream_never_waits() {
    let (_server, _r, mut target) = target_with_keys().await;
    target.defer_to(Arc::new(Priority::default()));
    let pattern = Target::Pattern("page:*".into());
    let report = target.execute(&[], &[&pattern]).await.unwrap();
    assert_eq!(report.removed, KEYS as u64);
    assert_eq!(report.deferred_us, 0);
}
