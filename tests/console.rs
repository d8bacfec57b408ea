//! The web console end to end: headless Chromium (Debian's, driven by playwright-core from
//! `console/e2e/console.e2e.mjs`) against a running worker on real PostgreSQL and Redis. The
//! script drives the page; at each `STEP` this harness writes to the database or checks
//! cache_configs, Redis and the journal, then answers `ok`. Screenshots land in
//! `target/console-screenshots/`.
//!
//! Needs the console built into the binary (`scripts/build-console.sh`), its npm packages and
//! Chromium (`scripts/ensure-browser.sh`); the README's test command provides all three.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "e2e-token";

fn chromium() -> PathBuf {
    let candidates = [
        std::env::var("CACHEWARDEN_CHROMIUM").unwrap_or_default(),
        "/usr/bin/chromium".into(),
    ];
    candidates
        .iter()
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Chromium is needed for the console's browser tests: run scripts/ensure-browser.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_figures_switches_rules_and_invalidates() {
    assert!(
        cachewarden::api::console::is_built(),
        "the console is not built into this binary: run scripts/build-console.sh, then the tests"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("console/node_modules/playwright-core").exists(),
        "the console's npm packages are missing: run scripts/build-console.sh"
    );
    let env = TestEnv::new(
        "console_e2e",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text);",
    )
    .await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname = 'course'\ntable = 'courses'\nkeys = ['course:{id}']\nttl = 3600\n",
    );
    let mut config = env.config();
    config.api.token = Some(TOKEN.into());
    let w = env.start_worker_with(config.clone()).await;
    let addr = common::serve_api(w.status.clone(), config).await;
    env.set_keys(&["page:1", "page:2", "page:3"]).await;
    let mut r = env.redis.clone();
    let _: () = r.set(env.key("course:9"), "hello").await.unwrap();

    let shots = root.join("target/console-screenshots");
    let mut child = tokio::process::Command::new("node")
        .arg("e2e/console.e2e.mjs")
        .current_dir(root.join("console"))
        .env("CW_URL", format!("http://{addr}"))
        .env("CW_TOKEN", TOKEN)
        .env("CW_CHROMIUM", chromium())
        .env("CW_SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js 20)");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut steps = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("e2e: {line}");
            let Some(step) = line.strip_prefix("STEP ") else {
                continue;
            };
            steps.push(step.to_string());
            match step {
                "write" => {
                    for id in 1..=5 {
                        env.db
                            .execute("INSERT INTO courses VALUES ($1, 'c')", &[&(id as i64)])
                            .await
                            .unwrap();
                    }
                }
                "rule-off" => {
                    let row = env
                        .db
                        .query_one(
                            "SELECT is_active, updated_by FROM cache_configs WHERE name = 'course'",
                            &[],
                        )
                        .await
                        .unwrap();
                    assert!(!row.get::<_, bool>(0), "the switch reached cache_configs");
                    assert_eq!(
                        row.get::<_, Option<String>>(1).as_deref(),
                        Some("api@127.0.0.1")
                    );
                }
                "previewed" => {
                    for k in ["page:1", "page:2", "page:3"] {
                        assert!(env.exists(k).await, "a dry run removed {k}");
                    }
                }
                "invalidated" => {
                    for k in ["page:1", "page:2", "page:3"] {
                        assert!(!env.exists(k).await, "{k} is still in Redis");
                    }
                    let row = env
                        .db
                        .query_one(
                            "SELECT status, reason FROM cache_invalidations WHERE key_pattern = $1",
                            &[&env.key("page:*")],
                        )
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, String>(0), "completed");
                    assert_eq!(row.get::<_, String>(1), "e2e invalidation");
                }
                other => panic!("unknown step {other}"),
            }
            stdin.write_all(b"ok\n").await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test finishes within 3 minutes");
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser test failed: {stderr}");
    assert_eq!(steps, ["write", "rule-off", "previewed", "invalidated"]);
    for shot in [
        "01-dashboard",
        "02-dashboard-live",
        "03-rules-switched-off",
        "04-dry-run",
        "05-invalidated",
        "06-key-inspector",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png");
    }
    w.stop().await;
    env.cleanup().await;
}
