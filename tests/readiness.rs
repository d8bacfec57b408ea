//! `/readyz` against a Redis of the test's own (a free port, a small `maxmemory`): 503 with
//! the reason in its JSON body once Redis is filled past `[monitor] max_memory_ratio`, 200 again
//! once it is not; 503 again, with the error in `/status`, once that Redis is gone.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, http_get, sigterm, spawn_run, OwnRedis, TestEnv, REDIS_URL, WAIT};

async fn readyz(addr: &str) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http_get(addr, "/readyz").await?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// Waits until `/readyz` answers `code`; returns its body. `log` is shown on failure.
async fn wait_readyz(addr: &str, code: u16, what: &str, log: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some((c, body)) = readyz(addr).await {
            if c == code {
                return body;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: {:?}; log: {}",
            readyz(addr).await,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_past_the_memory_ceiling_and_back() {
    let env = TestEnv::new("readiness", "CREATE TABLE courses (id bigint PRIMARY KEY);").await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let (mut redis, mut r) =
        OwnRedis::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]).await;
    let url = redis.url.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = env.dir.join("cachewarden.toml");
    std::fs::write(
        &cfg,
        env.config_text(&addr, "[monitor]\nmax_memory_ratio = 0.7\n")
            .replace(REDIS_URL, &url),
    )
    .unwrap();
    let log = env.dir.join("worker.log");
    let mut child = spawn_run(&cfg, &log);
    let log_path = log.display().to_string();
    let wait_for = |code: u16, what: &'static str| wait_readyz(&addr, code, what, &log_path);
    let body = wait_for(200, "ready with an empty Redis").await;
    assert_eq!(body, serde_json::json!({"ready": true, "reasons": []}));
    // The container health check's command agrees.
    let cfg_path = cfg.to_str().unwrap().to_string();
    let (code, _, err) = common::run_bin(&["--config", &cfg_path, "ready"], None);
    assert_eq!(code, 0, "{err}");

    // About 3 MB of values in a Redis of 4 MB: past 70%.
    let value = "x".repeat(100_000);
    for i in 0..30 {
        let _: Result<(), _> = redis::AsyncCommands::set(&mut r, format!("fill:{i}"), &value).await;
    }
    let body = wait_for(503, "not ready past the memory ceiling").await;
    assert_eq!(body["ready"], false);
    let (code, _, err) = common::run_bin(&["--config", &cfg_path, "ready"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Redis memory at"), "{err}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("Redis memory at"), "{body}");
    assert!(reasons.contains("max_memory_ratio"), "{body}");
    let (_, status) = http_get(&addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        status["not_ready"].to_string().contains("Redis memory at"),
        "{status}"
    );

    let () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
    wait_for(200, "ready again once memory is back under the ceiling").await;

    // Redis gone: not ready, and /status names the failing dependency with its error.
    redis.stop();
    let body = wait_for(503, "not ready without Redis").await;
    assert!(
        body["reasons"]
            .to_string()
            .contains("the cache is not reachable: "),
        "{body}"
    );
    let (_, status) = http_get(&addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["redis_connected"], false, "{status}");
    assert!(status["failing"]["redis"].is_string(), "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("redis: ")),
        "{status}"
    );
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let (code, _, err) = common::run_bin(&["--config", &cfg_path, "ready"], None);
    assert_eq!(code, 2, "no worker, no answer: {err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_journal_writes_fail() {
    let env = TestEnv::new(
        "readiness_journal",
        "CREATE TABLE courses (id bigint PRIMARY KEY);",
    )
    .await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let w = env.start_worker().await;
    let server = tokio::spawn(cachewarden::api::serve(
        tokio::net::TcpListener::bind(&addr).await.unwrap(),
        cachewarden::api::router(w.status.clone()),
        std::future::pending(),
    ));
    let wait_for = |code: u16, what: &'static str| wait_readyz(&addr, code, what, "");
    wait_for(200, "ready").await;
    // The journal's table gone from under the worker: its writes fail.
    env.db
        .batch_execute("ALTER TABLE cache_invalidations RENAME TO cache_invalidations_away")
        .await
        .unwrap();
    env.set_keys(&["course:1"]).await;
    env.db
        .execute("INSERT INTO courses VALUES (1)", &[])
        .await
        .unwrap();
    let body = wait_for(503, "not ready while the journal cannot be written").await;
    assert!(
        body["reasons"]
            .to_string()
            .contains("journal writes are failing"),
        "{body}"
    );
    let s = w.status.snapshot();
    assert!(
        s.failing
            .contains_key(&cachewarden::status::Dependency::Journal),
        "{s:?}"
    );
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("journal: ")),
        "{s:?}"
    );
    env.db
        .batch_execute("ALTER TABLE cache_invalidations_away RENAME TO cache_invalidations")
        .await
        .unwrap();
    wait_for(200, "ready again once the journal is written").await;
    env.wait_gone(&["course:1"], WAIT).await;
    env.wait_caught_up(WAIT).await;
    assert!(w.status.snapshot().failing.is_empty());
    server.abort();
    w.stop().await;
    env.cleanup().await;
}
