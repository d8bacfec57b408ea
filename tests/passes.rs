//! Keyspace passes and samples take every key Redis can hold: a key that is not UTF-8 is
//! unlinked, its tag set invalidated, its version bumped, and it is no reason for a families
//! sample to fail — never an error that would fail a pass on every retry and hold the
//! stream's confirmations back for good.

mod common;

use cachewarden::action::Target;
use cachewarden::target::redis::CacheOptions;
use cachewarden::target::{CacheTarget, RedisTarget};
use common::OwnRedis;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_take_keys_that_are_not_utf8() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let odd: &[u8] = b"\xff\xfe";
    let key = |prefix: &str| [prefix.as_bytes(), odd].concat();
    let () = r.set(key("k:"), 1).await.unwrap();
    let () = r.set(key("member:"), 1).await.unwrap();
    let () = r.set("member:plain", 1).await.unwrap();
    let _: u64 = r
        .sadd(key("tag:"), &[key("member:"), b"member:plain".to_vec()])
        .await
        .unwrap();
    let () = r.set(key("ns:"), 5).await.unwrap();

    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions::default(),
    )
    .unwrap();
    let (keys, tags, bumps) = (
        Target::Pattern("k:*".into()),
        Target::TagPattern("tag:*".into()),
        Target::BumpPattern("ns:*".into()),
    );
    let report = target
        .execute(&[], &[&keys, &tags, &bumps])
        .await
        .expect("no key fails a pass");

    let exists = |k: Vec<u8>| {
        let mut r = r.clone();
        async move { r.exists::<_, bool>(k).await.unwrap() }
    };
    assert!(!exists(key("k:")).await, "unlinked by its pattern");
    assert!(!exists(key("tag:")).await, "the tag set is gone");
    assert!(!exists(key("member:")).await, "and its members");
    assert!(!exists(b"member:plain".to_vec()).await);
    let version: u64 = r.get(key("ns:")).await.unwrap();
    assert_eq!(version, 6, "bumped");
    assert_eq!(report.bumps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_utf8_does_not_fail_the_families_sample() {
    let (server, mut r) = OwnRedis::start(&[]).await;
    let () = r.set("course:1", "x").await.unwrap();
    let () = r.set("course:2", "x").await.unwrap();
    let () = r.set(b"\xff\xfe".as_slice(), 1).await.unwrap();
    let rules = cachewarden::rules::parse_file(
        std::path::Path::new("rules.toml"),
        "[[rule]]\nname = \"course\"\ntable = \"courses\"\nkeys = [\"course:{id}\"]\n",
    )
    .unwrap();
    let families = cachewarden::monitor::families::Families::of(&rules, "");
    let mut target = RedisTarget::new(
        redis::Client::open(server.url.as_str()).unwrap(),
        CacheOptions::default(),
    )
    .unwrap();
    let estimates = target
        .sample_families(
            &families,
            cachewarden::config::SampleLimits {
                budget: std::time::Duration::from_secs(5),
                max_keys: 1000,
            },
        )
        .await
        .expect("the sample is taken");
    assert_eq!(estimates[0].key_count, 2);
    assert!(estimates[0].exact);
}
