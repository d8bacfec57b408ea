//! The binary's commands: check, explain, run (status endpoint, graceful shutdown).

mod common;

use std::time::{Duration, Instant};

use common::{free_port, http_get, run_bin, sigterm, spawn_run, TestEnv, WAIT};

const SCHEMA: &str = "CREATE TABLE courses (id bigint PRIMARY KEY, slug text NOT NULL, title text);
                      ALTER TABLE courses REPLICA IDENTITY FULL;";
const RULES: &str = r#"[[rule]]
name = "course-detail"
table = "public.courses"
keys = ["course:{id}", "course-slug:{old.slug}", "course-slug:{new.slug}"]
patterns = ["catalog:*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_good_rules_and_explain_prints_keys() {
    let env = TestEnv::new("cli_ok", SCHEMA).await;
    env.write_rules("courses.toml", RULES);
    let cfg = env.write_config("127.0.0.1:0", "");
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 rules on 1 tables"), "{out}");

    let event = r#"{"table": "public.courses", "op": "update",
                    "old": {"id": 42, "slug": "rust-101", "title": "Rust"},
                    "new": {"id": 42, "slug": "rust-102", "title": "Rust"}}"#;
    let (code, out, err) = run_bin(&["--config", cfg, "explain", "--event", "-"], Some(event));
    assert_eq!(code, 0, "{err}");
    let p = &env.prefix;
    for line in [
        "event: update public.courses".to_string(),
        format!("key      {p}course:42"),
        format!("key      {p}course-slug:rust-101"),
        format!("key      {p}course-slug:rust-102"),
        format!("pattern  {p}catalog:*"),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    let file = env.dir.join("insert.json");
    std::fs::write(
        &file,
        r#"{"table": "courses", "op": "insert", "new": {"id": 1, "slug": "a"}}"#,
    )
    .unwrap();
    let (code, out, _) = run_bin(
        &[
            "--config",
            cfg,
            "explain",
            "--event",
            file.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["rules"][0]["targets"][0],
        serde_json::json!(["key", format!("{p}course:1")])
    );
    assert!(v[0]["rules"][0]["skipped"][0]
        .as_str()
        .unwrap()
        .contains("{old.slug} is absent"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_patterns_that_fire_often() {
    let env = TestEnv::new("cli_hot_pattern", SCHEMA).await;
    env.write_rules("courses.toml", RULES);
    let cfg = env.write_config("127.0.0.1:0", "");
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = run_bin(&["--config", cfg, "migrate"], None);
    assert_eq!(code, 0, "{err}");
    // A quiet hour: no warning.
    let (code, out, err) = run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("passes over the whole Redis keyspace"),
        "{err}"
    );
    // The journal shows the rule's pattern firing every minute for the last hour.
    env.db
        .batch_execute(&format!(
            "INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, created_at, completed_at) \
             SELECT '{}catalog:*', 'pattern', 'test', 'completed', 'course-detail', \
                    now() - g * interval '1 minute', now() \
             FROM generate_series(0, 59) g",
            env.prefix
        ))
        .await
        .unwrap();
    let (code, out, err) = run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("courses.toml:5:") && err.contains("warning: rule \"course-detail\": its patterns cost 60 passes over the whole Redis keyspace"),
        "{err}"
    );
    env.cleanup().await;
}

/// The shipped example rules check clean against the shipped example schema: no errors and no
/// warnings (they follow the README's advice, e.g. tags rather than patterns for hot families).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_rules_check_without_warnings() {
    let env = TestEnv::new(
        "cli_examples",
        include_str!("../examples/edurise/schema.sql"),
    )
    .await;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(repo.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        env.write_rules(path.file_name().unwrap().to_str().unwrap(), &text);
    }
    let cfg = env.write_config("127.0.0.1:0", "");
    let (code, out, err) = run_bin(&["--config", cfg.to_str().unwrap(), "check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(out.contains("ok: 5 rules on 4 tables"), "{out}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rule_files_are_refused_with_file_and_line() {
    let env = TestEnv::new("cli_bad", SCHEMA).await;
    env.write_rules(
        "broken.toml",
        "[[rule]]\nname = \"x\"\ntable = \"courses\"\nkeys = [\"course:{id\"]\n",
    );
    let cfg = env.write_config(&format!("127.0.0.1:{}", free_port()), "");
    let cfg = cfg.to_str().unwrap();
    for cmd in ["check", "run"] {
        let (code, _, err) = run_bin(&["--config", cfg, cmd], None);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(
            err.contains("broken.toml:4:17: error: in \"course:{id\": unclosed '{'"),
            "{cmd}: {err}"
        );
    }
    // Syntax is fine, but the table and a column do not exist.
    env.write_rules(
        "broken.toml",
        "[[rule]]\nname = \"x\"\ntable = \"coursez\"\nkeys = [\"c:{id}\"]\n\
         [[rule]]\nname = \"y\"\ntable = \"courses\"\nkeys = [\"c:{titel}\"]\n",
    );
    let (code, _, err) = run_bin(&["--config", cfg, "check"], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("broken.toml:3:9: error: rule \"x\": table public.coursez does not exist"),
        "{err}"
    );
    assert!(
        err.contains("broken.toml:8:9: error: rule \"y\": column \"titel\" does not exist"),
        "{err}"
    );
    let (code, _, err) = run_bin(&["--config", cfg, "run"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // --offline checks syntax only.
    let (code, _, _) = run_bin(&["--config", cfg, "check", "--offline"], None);
    assert_eq!(code, 0);
    env.cleanup().await;
}

/// Issue 17: `check` printed a warning and `ok` with exit 0 when it could not reach the
/// database, so a CI step running it passed without checking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_it_cannot_check_against_the_database() {
    let env = TestEnv::new("cli_check_unreachable", SCHEMA).await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let cfg = env.write_config("127.0.0.1:0", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (what, url) in [
        (
            "no server",
            format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        ),
        (
            "no such database",
            format!("{}/cwt_does_not_exist", common::PG_BASE),
        ),
    ] {
        let path = env.dir.join("unreachable.toml");
        std::fs::write(
            &path,
            text.replace(&format!("{}/{}", common::PG_BASE, env.name), &url),
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let (code, out, err) = run_bin(&["--config", path, "check"], None);
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(!out.contains("ok:"), "{what}: {out}");
        assert!(
            err.contains("cannot connect to PostgreSQL"),
            "{what}: {err}"
        );
        assert!(err.contains("--offline"), "{what}: {err}");
        // Syntax only, on purpose: fine.
        let (code, out, err) = run_bin(&["--config", path, "check", "--offline"], None);
        assert_eq!(code, 0, "{what}: {out}{err}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_status_and_shuts_down_gracefully() {
    let env = TestEnv::new("cli_run", SCHEMA).await;
    env.write_rules("courses.toml", RULES);
    let addr = format!("127.0.0.1:{}", free_port());
    // A password in the URL (trust auth ignores it) that must never reach the log.
    let cfg = env.dir.join("cachewarden.toml");
    std::fs::write(
        &cfg,
        env.config_text(&addr, "[monitor]\ninterval = \"1s\"\n")
            .replace("postgres://postgres@", "postgres://postgres:s3cret-Pw@"),
    )
    .unwrap();
    let log = env.dir.join("worker.log");
    let mut child = spawn_run(&cfg, &log);
    let start = Instant::now();
    loop {
        if let Some((200, _)) = http_get(&addr, "/readyz").await {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "never ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);

    env.set_keys(&["course:1"]).await;
    env.db
        .execute("INSERT INTO courses VALUES (1, 'a', 'A')", &[])
        .await
        .unwrap();
    env.wait_gone(&["course:1"], WAIT).await;
    env.wait_caught_up(WAIT).await;

    let (code, body) = http_get(&addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["slot"], env.name);
    assert_eq!(s["rules_loaded"], 1);
    assert_eq!(s["source_connected"], true);
    assert!(s["counters"]["transactions"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["counters"]["keys"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["lag_ms_p50"].as_f64().is_some(), "{s}");
    assert!(s["confirmed_lsn"].as_str().unwrap().contains('/'), "{s}");
    // Redis INFO is sampled into /status, and into cache_metrics every [monitor] interval.
    assert!(s["redis"]["used_memory"].as_u64().unwrap() > 0, "{s}");
    common::eventually("a whole-instance cache_metrics row", WAIT, || async {
        let n: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM cache_metrics WHERE config_id IS NULL AND memory_usage > 0",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n >= 1
    })
    .await;

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15s of SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit {status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(
        log.contains("postgres://postgres:***@"),
        "the URL is logged, redacted: {log}"
    );
    assert!(!log.contains("s3cret-Pw"), "no secrets in logs");
    env.cleanup().await;
}

/// Real Debezium output (every fixture file: with and without schemas, each decimal mode)
/// explains to the same keys, and a `kcat -J` line reads like a fixture record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_recorded_debezium_topics() {
    let env = TestEnv::new("cli_debezium", "").await;
    env.write_rules(
        "app.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}','course:slug:{slug}']\n\
         [[rule]]\nname='enrollment'\ntable='enrollments'\nkeys=['user:{user_id}:courses']\n",
    );
    let cfg = env.write_config("127.0.0.1:0", "");
    let cfg = cfg.to_str().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/debezium");
    let mut outputs = Vec::new();
    for file in [
        "schemas_precise.jsonl",
        "schemas_string.jsonl",
        "plain_precise.jsonl",
        "plain_double.jsonl",
    ] {
        let path = format!("{fixtures}/{file}");
        let (code, out, err) = run_bin(&["--config", cfg, "explain", "--event", &path], None);
        assert_eq!(code, 0, "{file}: {err}");
        let p = &env.prefix;
        for line in [
            "event: update public.courses".to_string(),
            "event: truncate public.enrollments".to_string(),
            format!("key      {p}course:slug:intro-to-rust"),
            format!("key      {p}course:20"),
            format!("key      {p}user:400:courses"),
            format!("pattern  {p}user:*:courses"),
        ] {
            assert!(out.contains(&line), "{file}: missing {line:?} in:\n{out}");
        }
        // 20 records, 3 of them tombstones.
        assert_eq!(out.matches("event: ").count(), 17, "{file}:\n{out}");
        outputs.push(out);
    }
    // With or without schemas, whatever the decimal mode: the same changes, the same keys (the
    // snapshot's records may come in another table order).
    let sorted = |o: &String| {
        let mut l: Vec<&str> = o.lines().collect();
        l.sort_unstable();
        l.join("\n")
    };
    let first = sorted(&outputs[0]);
    for o in &outputs[1..] {
        assert_eq!(sorted(o), first);
    }

    let kcat = r#"{"topic":"cw.public.courses","partition":0,"offset":7,"tstype":"create","ts":1,"broker":1,"key":"{\"id\":5}","payload":"{\"before\":null,\"after\":{\"id\":5,\"slug\":\"k\"},\"source\":{\"schema\":\"public\",\"table\":\"courses\"},\"op\":\"c\"}"}"#;
    let (code, out, err) = run_bin(&["--config", cfg, "explain", "--event", "-"], Some(kcat));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("key      {}course:slug:k", env.prefix)),
        "{out}"
    );
    env.cleanup().await;
}

/// Parses OpenMetrics text: every sample line is `name[{labels}] value`; returns the samples.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
        {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "duplicate {line:?}"
        );
    }
    out
}

/// `/metrics` is Prometheus (OpenMetrics) text whose counters move with traffic; the lag
/// histogram counts every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let env = TestEnv::new("cli_metrics", SCHEMA).await;
    env.write_rules("courses.toml", RULES);
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = env.write_config(&addr, "");
    let log = env.dir.join("worker.log");
    let mut child = spawn_run(&cfg, &log);
    let start = Instant::now();
    while !matches!(http_get(&addr, "/readyz").await, Some((200, _))) {
        assert!(start.elapsed() < WAIT, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redis's gauges appear with the first INFO sample, which may come after readiness.
    let (body, before) = loop {
        let (code, body) = http_get(&addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let metrics = parse_metrics(&body);
        if metrics.contains_key("cachewarden_redis_used_memory_bytes") {
            break (body, metrics);
        }
        assert!(
            start.elapsed() < WAIT,
            "no Redis sample in /metrics: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before["cachewarden_up"], 1.0);
    assert_eq!(before["cachewarden_source_connected"], 1.0);
    assert!(
        before["cachewarden_redis_used_memory_bytes"] > 0.0,
        "{body}"
    );
    let version = format!(
        "cachewarden_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(before[&version], 1.0);

    // Five single-row transactions and one of three rows: eight changes.
    for id in 1..=5 {
        env.db
            .batch_execute(&format!("INSERT INTO courses VALUES ({id}, 's{id}', 't')"))
            .await
            .unwrap();
    }
    env.db
        .batch_execute(
            "BEGIN; INSERT INTO courses VALUES (6, 's6', 't'), (7, 's7', 't'), (8, 's8', 't'); COMMIT;",
        )
        .await
        .unwrap();
    env.wait_caught_up(WAIT).await;
    let total = |m: &std::collections::BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("cachewarden_changes_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(total(&before), 0.0);
    let after = loop {
        let (_, body) = http_get(&addr, "/metrics").await.unwrap();
        let m = parse_metrics(&body);
        if total(&m) >= 8.0 {
            break m;
        }
        assert!(start.elapsed() < WAIT * 2, "changes never counted: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let changes = total(&after);
    assert_eq!(changes, 8.0);
    assert_eq!(
        after["cachewarden_changes_total{table=\"public.courses\",op=\"insert\"}"], 8.0,
        "{after:?}"
    );
    assert_eq!(after["cachewarden_transactions_total"], 6.0);
    assert_eq!(after["cachewarden_lag_seconds_count"], changes);
    assert_eq!(after["cachewarden_batch_changes_sum"], changes);
    assert_eq!(
        after["cachewarden_lag_seconds_bucket{le=\"+Inf\"}"],
        changes
    );
    assert!(
        after["cachewarden_actions_total{kind=\"unlink\"}"] >= 8.0,
        "{after:?}"
    );
    assert!(
        after["cachewarden_actions_total{kind=\"pattern\"}"] >= 1.0,
        "{after:?}"
    );
    assert_eq!(after["cachewarden_errors_total{kind=\"redis\"}"], 0.0);
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    env.cleanup().await;
}

/// Issue 17's configuration stumbles, each as a new user met it: every one is refused (or
/// accepted) with the file, line, key and accepted values, and the documented exit code.
#[test]
fn configuration_mistakes_get_clear_errors_and_the_documented_exit_codes() {
    let dir = std::env::temp_dir().join("cachewarden-tests/cli_config_mistakes");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/r.toml"),
        "[[rule]]\nname='c'\ntable='courses'\nkeys=['course:{id}']\n",
    )
    .unwrap();
    let base = "rules_dir = \"rules\"\n[postgres]\nurl = \"postgres://postgres@127.0.0.1:5432/postgres\"\n\
                [redis]\nurl = \"redis://127.0.0.1:6379/0\"\n";
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // A host name in [status] listen is fine.
    let ok = write(
        "listen.toml",
        &format!("{base}[status]\nlisten = \"localhost:9187\"\n"),
    );
    let (code, out, err) = run_bin(&["--config", &ok, "check", "--offline"], None);
    assert_eq!(code, 0, "{out}{err}");
    // An address that cannot be one: named with its line.
    let bad = write(
        "listen-bad.toml",
        &format!("{base}[status]\nlisten = \"localhost\"\n"),
    );
    let (code, _, err) = run_bin(&["--config", &bad, "check", "--offline"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("listen-bad.toml:7:"), "{err}");
    assert!(err.contains("[status] listen"), "{err}");
    // `verbose` is not a level: refused, with the accepted values and a suggestion.
    let level = write("level.toml", &format!("{base}[log]\nlevel = \"verbose\"\n"));
    let (code, _, err) = run_bin(&["--config", &level, "check", "--offline"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("level.toml:7:"), "{err}");
    assert!(err.contains("error, warn, info, debug, trace"), "{err}");
    let near = write("near.toml", &format!("{base}[log]\nlevel = \"inf\"\n"));
    let (_, _, err) = run_bin(&["--config", &near, "check", "--offline"], None);
    assert!(err.contains("did you mean \"info\""), "{err}");
    // A misspelt key: its line, the accepted keys and the near miss.
    let typo = write(
        "typo.toml",
        &base.replace("[redis]\n", "[redis]\nkey_prefx = \":1:\"\n"),
    );
    let (code, _, err) = run_bin(&["--config", &typo, "check", "--offline"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("typo.toml:5:1"), "{err}");
    assert!(err.contains("did you mean `key_prefix`?"), "{err}");
    // A duplicate key is named.
    let dup = write(
        "dup.toml",
        &format!("{base}[status]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n"),
    );
    let (code, _, err) = run_bin(&["--config", &dup, "check", "--offline"], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("duplicate key") && err.contains("listen"),
        "{err}"
    );
    // A missing file says how to name one, once, with exit 1, for every command.
    let missing = dir.join("missing.toml").display().to_string();
    for cmd in [
        vec!["check"],
        vec!["migrate"],
        vec!["run"],
        vec!["explain", "--event", "-"],
    ] {
        let mut args = vec!["--config", missing.as_str()];
        args.extend(cmd.iter().copied());
        let (code, _, err) = run_bin(&args, Some("{}"));
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(
            err.contains("--config") && err.contains("CACHEWARDEN_CONFIG"),
            "{cmd:?}: {err}"
        );
        assert_eq!(err.matches("No such file").count(), 1, "{cmd:?}: {err}");
    }
    // explain on an event file that does not exist: invalid input, exit 1.
    let (code, _, err) = run_bin(
        &["--config", &ok, "explain", "--event", "/nonexistent.json"],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent.json"), "{err}");
}

/// Issue 17: every key from the environment, no file needed, and `cachewarden config` shows
/// what is in effect and where each value came from, without secrets.
#[test]
fn the_environment_alone_configures_the_worker_and_config_shows_it() {
    let dir = std::env::temp_dir().join("cachewarden-tests/cli_env_only");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("my-rules")).unwrap();
    std::fs::write(
        dir.join("my-rules/r.toml"),
        "[[rule]]\nname='c'\ntable='courses'\nkeys=['course:{id}']\n",
    )
    .unwrap();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(args)
            .current_dir(&dir)
            .env_remove("CACHEWARDEN_CONFIG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let vars = [
        (
            "CACHEWARDEN_POSTGRES_URL",
            "postgres://cw:s3cret@127.0.0.1:5432/postgres",
        ),
        ("CACHEWARDEN_REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("CACHEWARDEN_RULES_DIR", "my-rules"),
        ("CACHEWARDEN_REDIS_KEY_PREFIX", ":1:"),
        ("CACHEWARDEN_WORKER_MAX_BATCH_CHANGES", "500"),
        ("CACHEWARDEN_MONITOR_MAX_LAG", "10s"),
    ];
    let (code, out, err) = run(&["check", "--offline"], &vars);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 rules"), "{out}");
    let (code, out, err) = run(&["config"], &vars);
    assert_eq!(code, 0, "{err}");
    for line in [
        "url = \"postgres://cw:***@127.0.0.1:5432/postgres\"  # env CACHEWARDEN_POSTGRES_URL",
        "key_prefix = \":1:\"  # env CACHEWARDEN_REDIS_KEY_PREFIX",
        "max_batch_changes = 500  # env CACHEWARDEN_WORKER_MAX_BATCH_CHANGES",
        "max_lag = \"10s\"  # env CACHEWARDEN_MONITOR_MAX_LAG",
        "slot = \"cachewarden\"  # default",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(!out.contains("s3cret"), "{out}");
    // A misspelt key in a variable is refused like one in a file.
    let mut typo = vars.to_vec();
    typo.push(("CACHEWARDEN_REDIS_KEY_PREFX", "x"));
    let (code, _, err) = run(&["check", "--offline"], &typo);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("key_prefx") && err.contains("CACHEWARDEN_REDIS_KEY_PREFX"),
        "{err}"
    );
    // Without a file and without the required keys: what to do.
    let (code, _, err) = run(&["check", "--offline"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("CACHEWARDEN_POSTGRES_URL") && err.contains("--config"),
        "{err}"
    );
}

/// Issue 17: shell completions and a man page, generated from the CLI definition, with no
/// configuration needed.
#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _cachewarden"),
        ("zsh", "#compdef cachewarden"),
        ("fish", "complete -c cachewarden"),
    ] {
        let (code, out, err) = run_bin(
            &["--config", "/nonexistent.toml", "completions", shell],
            None,
        );
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        for sub in ["run", "check", "warm", "explain", "config"] {
            assert!(out.contains(sub), "{shell} completes {sub}");
        }
    }
    let (code, out, err) = run_bin(&["man"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH cachewarden"),
        "{out}"
    );
    assert!(out.contains("CACHEWARDEN_CONFIG"), "{out}");
    let (code, _, err) = run_bin(&["completions", "tcsh"], None);
    assert_eq!(code, 1, "an unknown shell is invalid input: {err}");
    assert!(err.contains("bash"), "{err}");
}
