//! High availability: several instances on one slot, exactly one active. The others wait as
//! standbys without touching anything and take over within 5 s when the active one is killed.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, http_get, sigterm, spawn_run, TestEnv, WAIT};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL);";
const RULES: &str = "[[rule]]\nname = \"item\"\ntable = \"items\"\nkeys = [\"item:{id}\"]\n";

async fn role(addr: &str) -> Option<String> {
    let (_, body) = http_get(addr, "/status").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["role"].as_str().map(String::from)
}

async fn wait_role(addr: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if role(addr).await.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} never became {want} (is {:?})",
            role(addr).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_five_seconds_of_a_kill() {
    let env = TestEnv::new("ha", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let (a_addr, b_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let a_cfg = env.dir.join("a.toml");
    std::fs::write(&a_cfg, env.config_text(&a_addr, "")).unwrap();
    let b_cfg = env.dir.join("b.toml");
    std::fs::write(&b_cfg, env.config_text(&b_addr, "")).unwrap();
    let mut a = spawn_run(&a_cfg, &env.dir.join("a.log"));
    wait_role(&a_addr, "active", WAIT).await;
    // Active means it holds the lease; ready means its slot exists and it streams.
    let start = Instant::now();
    while http_get(&a_addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < WAIT,
            "the active instance never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = spawn_run(&b_cfg, &env.dir.join("b.log"));
    wait_role(&b_addr, "standby", WAIT).await;
    // The standby is not ready and the active one works.
    assert_eq!(http_get(&b_addr, "/readyz").await.map(|r| r.0), Some(503));
    env.set_keys(&["item:1"]).await;
    env.db
        .execute("INSERT INTO items VALUES (1, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:1"], WAIT).await;
    assert_eq!(role(&b_addr).await.as_deref(), Some("standby"));

    // SIGKILL the active instance; a change committed meanwhile is not lost.
    a.start_kill().unwrap();
    let killed = Instant::now();
    a.wait().await.unwrap();
    env.set_keys(&["item:2"]).await;
    env.db
        .execute("INSERT INTO items VALUES (2, 0)", &[])
        .await
        .unwrap();
    wait_role(&b_addr, "active", Duration::from_secs(5)).await;
    let active_after = killed.elapsed();
    env.wait_gone(&["item:2"], WAIT).await;
    let invalidating_after = killed.elapsed();
    eprintln!(
        "takeover: standby active {:.0} ms after SIGKILL, the pending change invalidated after {:.0} ms",
        active_after.as_secs_f64() * 1000.0,
        invalidating_after.as_secs_f64() * 1000.0
    );
    assert!(
        invalidating_after < Duration::from_secs(5),
        "took over and caught up within 5 s: {invalidating_after:?}"
    );
    sigterm(&b);
    let _ = tokio::time::timeout(Duration::from_secs(20), b.wait()).await;
    env.cleanup().await;
}

/// An active instance whose lease session fails can no longer prove it is the only one: it
/// stops streaming at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_stops_the_worker() {
    let env = TestEnv::new("lease_lost", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let w = env.start_worker().await;
    let killed: bool = env
        .db
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'cachewarden lease' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed, "the lease session was found");
    let r = tokio::time::timeout(Duration::from_secs(10), w.handle)
        .await
        .expect("the worker stops within 10 s")
        .unwrap();
    assert!(
        matches!(r, Err(cachewarden::worker::WorkerError::LeaseLost)),
        "{r:?}"
    );
    assert!(!w.status.is_ready());
    env.cleanup().await;
}
