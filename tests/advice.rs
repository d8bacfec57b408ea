//! The advisor against a real journal, cache_metrics and Redis: a rule that never fires, a
//! key template the application never caches, a TTL far shorter than the interval between
//! invalidations, a pattern invalidated many times an hour — each a suggestion with its figures
//! and the exact rule-file change, from `cachewarden advise --json` and `GET /api/v1/advice`.

mod common;

use std::time::Duration;

use common::{http, run_bin, TestEnv};
use serde_json::Value;

const SCHEMA: &str =
    "CREATE TABLE courses (id bigint PRIMARY KEY, title text, view_count int DEFAULT 0);
ALTER TABLE courses REPLICA IDENTITY FULL;
CREATE TABLE lessons (id bigint PRIMARY KEY, course_id bigint, title text);
ALTER TABLE lessons REPLICA IDENTITY FULL;
CREATE TABLE enrollments (id bigint PRIMARY KEY);
INSERT INTO courses SELECT g, 'c' FROM generate_series(1, 5) g;
INSERT INTO lessons SELECT g, 1 + g % 5, 'l' FROM generate_series(1, 60) g;";

const RULES: &str = "[[rule]]
name = 'course'
table = 'courses'
keys = ['course:{id}']
ttl = 5

[[rule]]
name = 'lessons'
table = 'lessons'
keys = ['lesson:{id}', 'course-lessons:{course_id}']

[[rule]]
name = 'idle'
table = 'enrollments'
keys = ['enrollment:{id}']

[[rule]]
name = 'catalog'
table = 'courses'
patterns = ['catalog:page:*']
";

fn kinds(v: &Value) -> Vec<(String, String)> {
    v["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["rule"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advisor_names_each_waste_with_its_figures_and_the_change() {
    let env = TestEnv::new("advice", SCHEMA).await;
    env.write_rules("edurise.toml", RULES);
    let config = env.config();
    let w = env.start_worker_with(config.clone()).await;
    // The application caches lesson lists and courses, never single lessons.
    let keys: Vec<String> = (1..=5)
        .flat_map(|c| [format!("course-lessons:{c}"), format!("course:{c}")])
        .collect();
    env.set_keys(&keys.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    env.db
        .execute("UPDATE lessons SET title = 'l2'", &[])
        .await
        .unwrap();
    env.wait_caught_up(Duration::from_secs(15)).await;
    // Page views bump a counter the cached values do not show, 25 times per course.
    for _ in 0..25 {
        env.db
            .execute("UPDATE courses SET view_count = view_count + 1", &[])
            .await
            .unwrap();
    }
    env.wait_caught_up(Duration::from_secs(15)).await;
    // Read again after the change: the application caches the lists anew.
    env.set_keys(&keys.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // History the test cannot wait for: course keys changed once a minute over the last hour
    // (the worker's own rows, as it writes them), and the catalog pattern 300 times a day.
    env.db
        .batch_execute(&format!(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, completed_at, triggered_at) \
             SELECT '{p}course:' || k, 'key', 'history', 'completed', 'course', now(), now() - make_interval(mins => m) \
             FROM generate_series(1, 5) k, generate_series(1, 60) m;
             INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, completed_at, triggered_at) \
             SELECT '{p}catalog:page:*', 'pattern', 'history', 'completed', 'catalog', now(), now() - make_interval(mins => 4 * m) \
             FROM generate_series(1, 300) m;
             INSERT INTO cache_metrics (config_id, miss_count, \"timestamp\") \
             SELECT id, 0, now() - interval '10 minutes' FROM cache_configs WHERE name = 'lessons';",
            p = env.prefix
        ))
        .await
        .unwrap();
    // The CLI asks the running worker (its [status] listen) which columns updates changed.
    let addr = common::serve_api(w.status.clone(), config).await;
    let path = env.write_config(&addr, "");
    let (code, out, err) = run_bin(
        &[
            "--config",
            path.to_str().unwrap(),
            "advise",
            "--json",
            "--window",
            "24h",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let found = kinds(&v);
    for want in [
        ("never-fires", "idle"),
        ("uncached-template", "lessons"),
        ("short-ttl", "course"),
        ("pattern-cost", "catalog"),
        ("every-update", "course"),
        // The keyspace notifications saw no miss of the lessons family.
        ("never-read", "lessons"),
    ] {
        assert!(
            found.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {found:?}\n{out}"
        );
    }
    let by_kind = |k: &str| {
        v["suggestions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == k)
            .unwrap()
            .clone()
    };
    let uncached = by_kind("uncached-template");
    assert!(
        uncached["change"]
            .as_str()
            .unwrap()
            .ends_with("edurise.toml:7: keys = [\"course-lessons:{course_id}\"]"),
        "{uncached}"
    );
    // 60 lessons and the 5 lists they belong to.
    assert_eq!(uncached["figures"]["keys_invalidated"], 65.0, "{uncached}");
    let ttl = by_kind("short-ttl");
    assert!(
        ttl["change"].as_str().unwrap().contains("ttl = 60"),
        "{ttl}"
    );
    assert_eq!(ttl["figures"]["median_interval_seconds"], 60.0, "{ttl}");
    let pattern = by_kind("pattern-cost");
    // 300 from the history, and the course updates' own passes.
    let rate = pattern["figures"]["pattern_invalidations_per_hour"]
        .as_f64()
        .unwrap();
    assert!((12.5..13.6).contains(&rate), "{pattern}");
    let every = by_kind("every-update");
    assert!(
        every["change"]
            .as_str()
            .unwrap()
            .contains("ignore_changed = [\"view_count\"]"),
        "{every}"
    );
    assert_eq!(every["figures"]["updates_compared"], 125.0, "{every}");
    assert_eq!(
        every["figures"]["firing_with_ignore_changed"], 0.0,
        "{every}"
    );
    // The same through the API, and as text.
    let (code, body) = http(&addr, "GET", "/api/v1/advice?window=24h", None, None).await;
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(kinds(&api), found);
    let (code, text, _) = run_bin(&["--config", path.to_str().unwrap(), "advise"], None);
    assert_eq!(code, 0);
    assert!(
        text.contains("[uncached-template]") && text.contains("change: "),
        "{text}"
    );
    w.stop().await;
    env.cleanup().await;
}
