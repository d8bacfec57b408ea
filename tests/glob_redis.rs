//! The worker's glob matching against Redis' own: for any pattern, the keys `glob_match_bytes`
//! accepts are exactly those `KEYS` returns — the quirks of classes, ranges over bytes above
//! 0x7f, escapes and unclosed brackets included. A keyspace pass that matches client-side
//! (several patterns in one pass, or a pattern that joined it) relies on this to unlink every
//! key of its own patterns and nothing else.

mod common;

use std::collections::BTreeSet;

use cachewarden::glob::glob_match_bytes;
use common::OwnRedis;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The bytes keys and patterns are made of: every glob metacharacter, letters inside and
/// outside the ranges patterns draw, and a byte above 0x7f (a signed `char` in Redis).
const ALPHABET: &[u8] = b"ab-^[]\\*?z\xc3";

/// Every key of up to three bytes over the alphabet (and the empty key).
fn keys() -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut last = vec![Vec::new()];
    for _ in 0..3 {
        let next: Vec<Vec<u8>> = last
            .iter()
            .flat_map(|k: &Vec<u8>| {
                ALPHABET.iter().map(move |&b| {
                    let mut k = k.clone();
                    k.push(b);
                    k
                })
            })
            .collect();
        out.extend(next.iter().cloned());
        last = next;
    }
    out
}

#[test]
fn glob_match_bytes_accepts_exactly_what_redis_keys_returns() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, _async_conn) = runtime.block_on(OwnRedis::start(&[]));
    let mut r = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = keys();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    let () = pipe.query(&mut r).unwrap();
    let r = std::cell::RefCell::new(r);

    let pattern = proptest::collection::vec(proptest::sample::select(ALPHABET), 0..8);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&pattern, |pattern| {
            let redis: BTreeSet<Vec<u8>> = redis::cmd("KEYS")
                .arg(&pattern)
                .query::<Vec<Vec<u8>>>(&mut *r.borrow_mut())
                .unwrap()
                .into_iter()
                .collect();
            let ours: BTreeSet<Vec<u8>> = keys
                .iter()
                .filter(|k| glob_match_bytes(&pattern, k))
                .cloned()
                .collect();
            prop_assert_eq!(
                &ours,
                &redis,
                "pattern {:?}",
                String::from_utf8_lossy(&pattern)
            );
            Ok(())
        })
        .unwrap();
}
