//! Fault injection at the points where a crash matters most (src/failpoints.rs): the worker
//! aborts exactly there, as abruptly as SIGKILL; a restarted worker must then finish the work,
//! so that every key is gone, every journal row is final and the slot is confirmed.
//! Needs the `failpoints` feature (scripts/test.sh enables it).
#![cfg(feature = "failpoints")]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, sigterm, spawn_run, TestEnv};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL);";
const RULES: &str = r#"
[[rule]]
name = "item"
table = "items"
ops = ["insert", "update"]
keys = ["item:{id}:v{val}"]
"#;

fn spawn_with_failpoint(config: &Path, log: &Path, failpoint: &str) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(common::bin())
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .env("CACHEWARDEN_FAILPOINT", failpoint)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cachewarden run")
}

async fn wait_ready(addr: &str) {
    let start = Instant::now();
    while !matches!(common::http_get(addr, "/readyz").await, Some((200, _))) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the journal and the slot looked like right after the crash.
struct AfterCrash {
    journal: Vec<(String, i64)>,
    confirmed_past_changes: bool,
}

/// Runs `rows` inserts in one transaction against a worker armed with `failpoint`, waits for
/// it to abort there, restarts it normally and checks that nothing was lost.
async fn crash_at(name: &str, failpoint: &str, rows: i32, extra: &str) -> AfterCrash {
    let env = TestEnv::new(name, SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let keys: Vec<String> = (1..=rows).map(|id| format!("item:{id}:v1")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.set_keys(&key_refs).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = env.write_config(&addr, extra);
    let log = env.dir.join("worker.log");

    let mut worker = spawn_with_failpoint(&cfg, &log, failpoint);
    wait_ready(&addr).await;
    env.db
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 1 FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let after = env.current_lsn().await;
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker reaches the failpoint")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.signal(), Some(6), "aborted (SIGABRT); log:\n{text}");
    assert!(
        text.contains(&format!("failpoint {failpoint}: aborting")),
        "{text}"
    );
    let crash = AfterCrash {
        journal: env.journal_counts().await,
        confirmed_past_changes: env.confirmed().await >= after,
    };

    // A normal restart finishes the work.
    let worker = spawn_run(&cfg, &log);
    env.wait_caught_up(Duration::from_secs(60)).await;
    env.wait_gone(&key_refs, Duration::from_secs(30)).await;
    let start = Instant::now();
    loop {
        let counts = env.journal_counts().await;
        if counts.iter().all(|(s, _)| s == "completed") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "journal rows left open: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&worker);
    let mut worker = worker;
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;
    env.cleanup().await;
    crash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_cache_before_journal_loses_nothing() {
    let c = crash_at("fp_cache", "after-cache-before-journal", 20, "").await;
    // Stream rows are written once, final, behind the cache: none exists yet, and the replay
    // after the restart is the recovery.
    assert!(
        !c.journal.iter().any(|(s, n)| s == "completed" && *n > 0),
        "nothing was journaled as done: {:?}",
        c.journal
    );
    assert!(!c.confirmed_past_changes, "nothing was confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_journal_before_confirm_loses_nothing() {
    let c = crash_at("fp_confirm", "after-journal-before-confirm", 20, "").await;
    assert!(
        c.journal.iter().all(|(s, _)| s == "completed"),
        "the rows were completed: {:?}",
        c.journal
    );
    assert!(!c.confirmed_past_changes, "nothing was confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_chunks_of_a_large_transaction_loses_nothing() {
    let c = crash_at(
        "fp_chunks",
        "between-chunks",
        600,
        "max_batch_changes = 100",
    )
    .await;
    assert!(
        !c.confirmed_past_changes,
        "a transaction cut in chunks is not confirmed before its last chunk"
    );
}
