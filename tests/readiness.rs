//! `/readyz` against a Redis of the test's own (a free port, a small `maxmemory`): 503 with
//! the reason in its JSON body once Redis is filled past `[monitor] max_memory_ratio`, 200 again
//! once it is not.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, sigterm, spawn_run, TestEnv, REDIS_URL, WAIT};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn readyz(addr: &str) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http_get(addr, "/readyz").await?;
    Some((code, serde_json::from_str(&body).ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_past_the_memory_ceiling_and_back() {
    let env = TestEnv::new("readiness", "CREATE TABLE courses (id bigint PRIMARY KEY);").await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let port = free_port();
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).unwrap();
    let start = Instant::now();
    let mut r = loop {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            break c;
        }
        assert!(start.elapsed() < WAIT, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = env.dir.join("cachewarden.toml");
    std::fs::write(
        &cfg,
        env.config_text(
            &addr,
            "metrics_interval_secs = 1\n[monitor]\nmax_memory_ratio = 0.7\n",
        )
        .replace(REDIS_URL, &url),
    )
    .unwrap();
    let log = env.dir.join("worker.log");
    let mut child = spawn_run(&cfg, &log);
    let wait_for = |code: u16, what: &'static str| {
        let addr = addr.clone();
        let log = log.clone();
        async move {
            let start = Instant::now();
            loop {
                if let Some((c, body)) = readyz(&addr).await {
                    if c == code {
                        return body;
                    }
                }
                assert!(
                    start.elapsed() < WAIT,
                    "{what}: {:?}; log: {}",
                    readyz(&addr).await,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let body = wait_for(200, "ready with an empty Redis").await;
    assert_eq!(body, serde_json::json!({"ready": true, "reasons": []}));

    // About 3 MB of values in a Redis of 4 MB: past 70%.
    let value = "x".repeat(100_000);
    for i in 0..30 {
        let _: Result<(), _> = redis::AsyncCommands::set(&mut r, format!("fill:{i}"), &value).await;
    }
    let body = wait_for(503, "not ready past the memory ceiling").await;
    assert_eq!(body["ready"], false);
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
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    env.cleanup().await;
}
