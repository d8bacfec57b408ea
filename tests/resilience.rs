//! Failure handling: Redis stalls, open journal rows left by a crash.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, TestEnv, WAIT};
use redis::AsyncCommands;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL);";
const RULES: &str = "[[rule]]\nname = \"item\"\ntable = \"items\"\nkeys = [\"item:{id}\"]\n";

/// A private Redis server, so stalling it cannot disturb other tests.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let url = format!("redis://127.0.0.1:{port}/0");
        let start = Instant::now();
        loop {
            if let Ok(c) = redis::Client::open(url.as_str()) {
                if c.get_multiplexed_async_connection().await.is_ok() {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "private redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateRedis { child, url }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stall_is_retried_and_the_position_waits() {
    let env = TestEnv::new("redis_stall", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let redis = PrivateRedis::start().await;
    let mut cfg = env.config();
    cfg.redis.url = redis.url.clone();
    cfg.redis.timeout_ms = 300;
    let mut r = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = env.key("item:1");
    let () = r.set(&key, "cached").await.unwrap();
    let w = env.start_worker_with(cfg).await;
    env.wait_caught_up(WAIT).await;
    let before = env.confirmed().await;

    // Redis stops answering for 4 s while the change arrives.
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query_async(&mut r)
        .await
        .unwrap();
    let paused_at = Instant::now();
    // Where the WAL ends right after the commit: the commit record ends at or before it. A
    // position that covers the change is at or past the commit record's end. (The position
    // may legitimately pass the insert's own record before the commit: WAL the other tests
    // write meanwhile, while this transaction is still open, needs no work from this worker,
    // and logical decoding still sends every transaction committing after a confirmed position.)
    let writer = common::pg(&env.name).await;
    writer
        .execute("INSERT INTO items VALUES (1, 0)", &[])
        .await
        .unwrap();
    let after_commit: String = writer
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::text", &[])
        .await
        .unwrap()
        .get(0);
    let after_commit: u64 = after_commit.parse().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The health watch pings every second with a 300 ms timeout: on a loaded machine the
    // stall shows within about 1.3 s of the pause, not always by 1.2 s.
    while w.status.is_ready() && paused_at.elapsed() < Duration::from_millis(3000) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!w.status.is_ready(), "readyz reports Redis as down");
    assert!(
        env.confirmed().await < after_commit,
        "the position must not pass a change whose keys are not yet deleted"
    );
    assert!(
        paused_at.elapsed() < Duration::from_millis(3800),
        "test machine too slow to observe the stall"
    );

    // After the stall the same batch is retried to completion.
    let start = Instant::now();
    loop {
        // Our own reads time out while Redis is still paused.
        let exists: bool = r.exists(&key).await.unwrap_or(true);
        if !exists {
            break;
        }
        assert!(start.elapsed() < WAIT, "key never deleted after the stall");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.wait_caught_up(WAIT).await;
    assert!(env.confirmed().await > before);
    let statuses: Vec<(String, i64)> = env.journal_counts().await;
    assert!(
        statuses.iter().any(|(s, n)| s == "failed" && *n >= 1),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|(s, n)| s == "completed" && *n >= 1),
        "{statuses:?}"
    );
    let error: String = env
        .db
        .query_one(
            "SELECT error FROM cache_invalidations WHERE status = 'failed' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!error.is_empty());
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_journal_rows_are_executed_at_start() {
    let env = TestEnv::new("recover", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    // A first start creates the schema; stop, then leave rows as a crash would.
    env.start_worker().await.stop().await;
    env.set_keys(&["item:5", "feed:1", "feed:2", "other:1"])
        .await;
    env.db
        .execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status) VALUES \
             ($1, 'key', 'left by a crash', 'pending'), ($2, 'pattern', 'requested by the app', 'pending')",
            &[&env.key("item:5"), &env.key("feed:*")],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.wait_gone(&["item:5", "feed:1", "feed:2"], WAIT).await;
    assert!(env.exists("other:1").await);
    let counts = env.journal_counts().await;
    assert_eq!(counts, [("completed".to_string(), 2)]);
    w.stop().await;
    env.cleanup().await;
}

/// Rows applications write are input from outside: a `keys` array with a NULL element or two
/// dimensions must fail that row with the reason, never panic the worker (at start, that was a
/// crash loop on every restart), and never hold up the good rows beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_rows_fail_with_a_reason_and_stop_nothing() {
    let env = TestEnv::new("bad_rows", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    env.start_worker().await.stop().await;
    env.set_keys(&["item:7", "item:8", "item:9"]).await;
    let insert_bad = |status: &'static str, rule: Option<&'static str>| {
        let env = &env;
        async move {
            env.db
                .execute(
                    "INSERT INTO cache_invalidations (key_pattern, kind, keys, key_count, reason, status, rule_name) VALUES \
                     ($1, 'keys', ARRAY[$2, NULL]::text[], 2, 'null element', $3, $4), \
                     ($1, 'keys', '{{a,b},{c,d}}'::text[], 4, 'two dimensions', $3, $4)",
                    &[&env.key("item:*"), &env.key("item:7"), &status, &rule],
                )
                .await
                .unwrap();
        }
    };
    // Left open by a "crash" (worker rows) and requested by an application, before start.
    insert_bad("pending", Some("items")).await;
    insert_bad("running", None).await;
    env.db
        .execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status) VALUES ($1, 'key', 'good', 'pending')",
            &[&env.key("item:8")],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.wait_gone(&["item:8"], WAIT).await;
    // And while it runs.
    insert_bad("pending", None).await;
    env.db
        .execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status) VALUES ($1, 'key', 'good', 'pending')",
            &[&env.key("item:9")],
        )
        .await
        .unwrap();
    env.wait_gone(&["item:9"], WAIT).await;
    common::eventually("bad rows are failed", WAIT, || async {
        let rows = env
            .db
            .query(
                "SELECT status, coalesce(error, '') FROM cache_invalidations WHERE reason IN ('null element', 'two dimensions')",
                &[],
            )
            .await
            .unwrap();
        rows.len() == 6
            && rows.iter().all(|r| {
                let (status, error): (String, String) = (r.get(0), r.get(1));
                status == "failed" && error.contains("keys")
            })
    })
    .await;
    assert!(w.status.is_ready(), "the worker is still running");
    w.stop().await;
    env.cleanup().await;
}

/// Recovery runs continuously, not only at start: a request left `running` (its executor
/// failed after claiming it) and worker rows left `pending` (a batch cancelled mid-way) are
/// picked up again while the worker runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranded_rows_are_recovered_while_running() {
    let env = TestEnv::new("stranded", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let mut cfg = env.config();
    cfg.worker.recover_after_secs = 1;
    let w = env.start_worker_with(cfg).await;
    env.set_keys(&["item:21", "item:22"]).await;
    env.db
        .execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, created_at) VALUES \
             ($1, 'key', 'claimed, then its executor failed', 'running', NULL, now() - interval '1 minute'), \
             ($2, 'key', 'a cancelled batch', 'pending', 'items', now() - interval '1 minute')",
            &[&env.key("item:21"), &env.key("item:22")],
        )
        .await
        .unwrap();
    env.wait_gone(&["item:21", "item:22"], WAIT).await;
    common::eventually("the rows are completed", WAIT, || async {
        env.journal_counts().await == [("completed".to_string(), 2)]
    })
    .await;
    w.stop().await;
    env.cleanup().await;
}

/// Two workers started at once on a fresh database: setting up the publication and the slot
/// races, and neither may fail with a raw "already exists" error. One becomes active; the
/// other waits as a standby (touching nothing) and starts as soon as the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_starts_on_a_fresh_slot_both_succeed() {
    use cachewarden::runtime::ShutdownSender;
    use cachewarden::status::{Role, Status};
    use cachewarden::worker::Worker;
    use std::sync::Arc;
    for round in 0..3 {
        let env = TestEnv::new(&format!("race_{round}"), SCHEMA).await;
        env.write_rules("items.toml", RULES);
        let stop = ShutdownSender::new();
        let start = |status: Arc<Status>| {
            let config = env.config();
            let rules = cachewarden::rules::load_dir(&config.rules_dir).unwrap();
            Worker::start(config, rules, status, stop.subscribe())
        };
        let (sa, sb) = (Arc::new(Status::default()), Arc::new(Status::default()));
        let a = start(sa.clone());
        let b = start(sb.clone());
        tokio::pin!(a, b);
        let (first, second, second_status) = tokio::select! {
            r = &mut a => (r, b, sb),
            r = &mut b => (r, a, sa),
        };
        let first = first.expect("the first start succeeds");
        common::eventually("the other waits as a standby", WAIT, || async {
            second_status.role() == Role::Standby
        })
        .await;
        drop(first);
        let second = tokio::time::timeout(WAIT, second)
            .await
            .expect("the standby starts once the first is gone");
        assert!(second.is_ok(), "second: {:?}", second.err());
        env.cleanup().await;
    }
}

/// A reload takes effect at a position, not at wall-clock time: changes committed under the
/// old rules but still in the backlog when the new rules arrive are planned with the old
/// rules, so removing a rule never confirms its pending changes with no action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_from_its_position_and_the_backlog_keeps_the_old_rules() {
    let env = TestEnv::new(
        "reload_at",
        "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL); CREATE TABLE pings (id int PRIMARY KEY);",
    )
    .await;
    env.write_rules("items.toml", RULES);
    env.write_rules(
        "pings.toml",
        "[[rule]]\nname = \"ping\"\ntable = \"pings\"\nkeys = [\"ping:{id}\"]\n",
    );
    let redis = PrivateRedis::start().await;
    let mut cfg = env.config();
    cfg.redis.url = redis.url.clone();
    cfg.redis.timeout_ms = 300;
    let mut r = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for k in ["item:1", "item:2"] {
        let () = r.set(env.key(k), "cached").await.unwrap();
    }
    let w = env.start_worker_with(cfg).await;
    env.wait_caught_up(WAIT).await;
    // Redis stalls: the batch with item 1 waits; item 2 queues up behind it.
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut r)
        .await
        .unwrap();
    env.db
        .execute("INSERT INTO items VALUES (1, 0)", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.db
        .execute("INSERT INTO items VALUES (2, 0)", &[])
        .await
        .unwrap();
    // Meanwhile the items rule is removed.
    std::fs::remove_file(env.dir.join("rules").join("items.toml")).unwrap();
    let before = w
        .status
        .counters
        .rule_reloads
        .load(std::sync::atomic::Ordering::Relaxed);
    w.reload.notify_one();
    common::eventually("the reload lands", WAIT, || async {
        w.status
            .counters
            .rule_reloads
            .load(std::sync::atomic::Ordering::Relaxed)
            > before
    })
    .await;
    // Both changes were committed under the old rules: both keys go.
    let start = Instant::now();
    loop {
        let left: Vec<bool> = vec![
            r.exists(env.key("item:1")).await.unwrap_or(true),
            r.exists(env.key("item:2")).await.unwrap_or(true),
        ];
        if left == [false, false] {
            break;
        }
        assert!(start.elapsed() < WAIT, "keys still cached: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
    env.cleanup().await;
}

/// A new instance with other rules (a rolling deploy) inherits a backlog committed under the
/// old rules: it is planned with the rules the previous instance recorded for the slot, so a
/// rule the new files dropped still invalidates the changes committed while it was live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_inherited_across_a_rules_change_uses_the_rules_it_was_committed_under() {
    let env = TestEnv::new("inherit", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let w = env.start_worker().await;
    env.wait_caught_up(WAIT).await;
    w.stop().await;
    // Committed while nobody streams, under the old rules.
    env.set_keys(&["item:1", "thing:1"]).await;
    env.db
        .execute("INSERT INTO items VALUES (1, 0)", &[])
        .await
        .unwrap();
    // The new deployment renders other keys for the same table.
    env.write_rules(
        "items.toml",
        "[[rule]]\nname = \"thing\"\ntable = \"items\"\nkeys = [\"thing:{id}\"]\n",
    );
    let w = env.start_worker().await;
    // item:1 by the old rule; thing:1 because the new rule's keys may be stale (no rule
    // watched them), so its family is invalidated once.
    env.wait_gone(&["item:1", "thing:1"], WAIT).await;
    // Changes committed from the new start use the new rules.
    env.set_keys(&["item:2", "thing:2"]).await;
    env.db
        .execute("INSERT INTO items VALUES (2, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["thing:2"], WAIT).await;
    assert!(env.exists("item:2").await, "the old rule no longer applies");
    w.stop().await;
    env.cleanup().await;
}
