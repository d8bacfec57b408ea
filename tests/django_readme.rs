//! Issue 17: README's django-redis snippet runs as written. A real Django (with django-redis
//! and psycopg, from `scripts/ensure-python.sh`) executes the snippet against a worker running
//! the example rules on the example schema: reads fill the cache, changes invalidate it, tagged
//! pages go with course changes, and an application request is executed and journaled.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestEnv, REDIS_URL};

/// The interpreter of the tests' virtualenv: `CACHEWARDEN_PYTHON` (set by `scripts/test.sh`),
/// or made now.
fn python() -> String {
    if let Ok(p) = std::env::var("CACHEWARDEN_PYTHON") {
        return p;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("scripts/ensure-python.sh"))
        .output()
        .expect("scripts/ensure-python.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_django_snippet_runs_against_the_worker() {
    let env = TestEnv::new(
        "django_readme",
        include_str!("../examples/edurise/schema.sql"),
    )
    .await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(repo.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        env.write_rules(
            path.file_name().unwrap().to_str().unwrap(),
            &std::fs::read_to_string(&path).unwrap(),
        );
    }
    // Django's default key function: "<KEY_PREFIX>:<VERSION>:<key>".
    let django_prefix = env.prefix.trim_end_matches(':').to_string();
    let path = env.dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        env.config_text("127.0.0.1:0", "").replace(
            &format!("key_prefix = \"{}\"", env.prefix),
            &format!("key_prefix = \"{django_prefix}:1:\""),
        ),
    )
    .unwrap();
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    let python = python();
    let out = tokio::task::spawn_blocking({
        let db = env.name.clone();
        move || {
            Command::new(python)
                .arg(repo.join("tests/django/readme_snippet.py"))
                .env("CW_DB", db)
                .env("CW_REDIS_URL", REDIS_URL)
                .env("CW_KEY_PREFIX", django_prefix)
                .env("CW_README", repo.join("README.md"))
                .output()
                .expect("python runs")
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}{stderr}"
    );
    w.stop().await;
    env.cleanup().await;
}
