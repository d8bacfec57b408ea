//! End-to-end behaviour of the pipeline against real PostgreSQL and Redis.

mod common;

use std::time::Duration;

use common::{TestEnv, WAIT};

const SCHEMA: &str = r#"
CREATE TABLE courses (
    id bigint PRIMARY KEY,
    slug text NOT NULL,
    title text NOT NULL,
    view_count bigint NOT NULL DEFAULT 0
);
ALTER TABLE courses REPLICA IDENTITY FULL;
CREATE TABLE lessons (
    id bigint PRIMARY KEY,
    course_id bigint NOT NULL,
    title text NOT NULL
);
ALTER TABLE lessons REPLICA IDENTITY FULL;
"#;

const RULES: &str = r#"
[[rule]]
name = "course-detail"
table = "public.courses"
changed = ["title", "slug"]
keys = ["course:{id}", "course-slug:{old.slug}", "course-slug:{new.slug}"]
patterns = ["catalog:page:*"]

[[rule]]
name = "lesson"
table = "lessons"
keys = ["lesson:{id}", "course:{course_id}:lessons"]
"#;

async fn env(name: &str) -> TestEnv {
    let env = TestEnv::new(name, SCHEMA).await;
    env.write_rules("rules.toml", RULES);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_invalidate_and_journal() {
    let env = env("iud").await;
    let w = env.start_worker().await;

    env.set_keys(&[
        "course:1",
        "course-slug:intro",
        "catalog:page:1",
        "catalog:page:2",
    ])
    .await;
    env.db
        .execute(
            "INSERT INTO courses (id, slug, title) VALUES (1, 'intro', 'Intro')",
            &[],
        )
        .await
        .unwrap();
    env.wait_gone(
        &[
            "course:1",
            "course-slug:intro",
            "catalog:page:1",
            "catalog:page:2",
        ],
        WAIT,
    )
    .await;
    // Each step's rows are durable before the next (a journal group folds a key family's
    // changes over its window into one row).
    env.wait_caught_up(WAIT).await;

    env.set_keys(&["course:1", "catalog:page:1"]).await;
    env.db
        .execute("UPDATE courses SET title = 'Intro 2' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["course:1", "catalog:page:1"], WAIT).await;
    env.wait_caught_up(WAIT).await;

    env.set_keys(&["course:1", "course-slug:intro"]).await;
    env.db
        .execute("DELETE FROM courses WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["course:1", "course-slug:intro"], WAIT)
        .await;
    env.wait_caught_up(WAIT).await;

    // The catalog pattern ran in keyspace passes beside the stream, and their time is counted.
    let c = &w.status.counters;
    let passes = c.pattern_passes.load(std::sync::atomic::Ordering::Relaxed);
    let pass_us = c.pattern_pass_us.load(std::sync::atomic::Ordering::Relaxed);
    assert!(passes >= 1, "no keyspace pass counted");
    assert!(pass_us > 0, "{passes} passes took no time");

    // Every row is final, carries the commit time, and says why.
    let rows = env
        .db
        .query(
            "SELECT key_pattern, kind, reason, status, triggered_at <= completed_at, rule_name \
             FROM cache_invalidations ORDER BY created_at, key_pattern",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        let status: String = r.get(3);
        assert_eq!(status, "completed");
        assert!(
            r.get::<_, bool>(4),
            "triggered_at is the commit time, before completion"
        );
    }
    let delete_reason: String = rows
        .iter()
        .find(|r| {
            r.get::<_, String>(0) == env.key("course:1") && r.get::<_, String>(2).contains("delete")
        })
        .expect("a journal row for the delete")
        .get(2);
    assert!(
        delete_reason.starts_with("public.courses delete id=1 lsn=")
            && delete_reason.ends_with("rule=course-detail"),
        "{delete_reason}"
    );
    // cache_configs holds the rules.
    let n: i64 = env
        .db
        .query_one("SELECT count(*) FROM cache_configs WHERE is_active", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slug_change_invalidates_old_and_new_slug_keys() {
    let env = env("slug").await;
    env.db
        .execute(
            "INSERT INTO courses (id, slug, title) VALUES (7, 'rust', 'Rust')",
            &[],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.set_keys(&["course:7", "course-slug:rust", "course-slug:rust-2024"])
        .await;
    env.db
        .execute("UPDATE courses SET slug = 'rust-2024' WHERE id = 7", &[])
        .await
        .unwrap();
    env.wait_gone(
        &["course:7", "course-slug:rust", "course-slug:rust-2024"],
        WAIT,
    )
    .await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_filter_ignores_unwatched_columns() {
    let env = env("changed").await;
    env.db
        .execute(
            "INSERT INTO courses (id, slug, title) VALUES (1, 'a', 'A')",
            &[],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.set_keys(&["course:1", "lesson:9"]).await;
    // view_count is not watched; the lesson insert afterwards is a sentinel: once it is
    // processed, the earlier update has been too.
    env.db
        .execute(
            "UPDATE courses SET view_count = view_count + 1 WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    env.db
        .execute("INSERT INTO lessons VALUES (9, 1, 'L')", &[])
        .await
        .unwrap();
    env.wait_gone(&["lesson:9"], WAIT).await;
    assert!(
        env.exists("course:1").await,
        "an unwatched column change must not invalidate"
    );
    env.db
        .execute("UPDATE courses SET title = 'B' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["course:1"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_invalidates_every_key_family() {
    let env = env("truncate").await;
    let w = env.start_worker().await;
    env.set_keys(&[
        "lesson:1",
        "lesson:2",
        "course:5:lessons",
        "course:5",
        "unrelated:1",
    ])
    .await;
    env.db.execute("TRUNCATE lessons", &[]).await.unwrap();
    env.wait_gone(&["lesson:1", "lesson:2", "course:5:lessons"], WAIT)
        .await;
    env.wait_caught_up(WAIT).await;
    assert!(
        env.exists("course:5").await,
        "course:{{id}} is not a lessons family"
    );
    assert!(env.exists("unrelated:1").await);
    let kinds: Vec<String> = env
        .db
        .query("SELECT DISTINCT kind FROM cache_invalidations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["pattern"]);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_and_multi_statement_transactions_dedupe() {
    let env = env("multi").await;
    let w = env.start_worker().await;
    let keys: Vec<String> = (1..=50).map(|i| format!("lesson:{i}")).collect();
    let mut all: Vec<&str> = keys.iter().map(String::as_str).collect();
    all.extend(["course:1:lessons", "course:2:lessons"]);
    env.set_keys(&all).await;
    env.db
        .batch_execute(
            "BEGIN;
             INSERT INTO lessons SELECT g, 1 + g % 2, 'L' || g FROM generate_series(1, 50) g;
             UPDATE lessons SET title = title || '!' WHERE id <= 25;
             DELETE FROM lessons WHERE id > 45;
             COMMIT;",
        )
        .await
        .unwrap();
    env.wait_gone(&all, WAIT).await;
    env.wait_caught_up(WAIT).await;
    // 50 lesson keys + 2 list keys, each journaled once although touched up to 3 times,
    // grouped by template into few rows.
    let row = env
        .db
        .query_one(
            "SELECT count(*), count(DISTINCT k), (SELECT count(*) FROM cache_invalidations) \
             FROM cache_invalidations, unnest(coalesce(keys, ARRAY[key_pattern])) k",
            &[],
        )
        .await
        .unwrap();
    let (keys, distinct, rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (keys, distinct),
        (52, 52),
        "one journal entry per key per batch"
    );
    assert!(rows <= 4, "keys are grouped per template: {rows} rows");
    let grouped: (String, i32, String) = {
        let r = env
            .db
            .query_one(
                "SELECT key_pattern, key_count, reason FROM cache_invalidations WHERE kind = 'keys' \
                 ORDER BY key_count DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(grouped.0, env.key("lesson:*"));
    assert_eq!(grouped.1, 50);
    assert!(grouped.2.contains("more changes"), "{}", grouped.2);
    w.stop().await;
    env.cleanup().await;
}

/// The stream's journal rows are written once, already final, in grouped commits: the table
/// sees inserts and no update at all (an update to `status` could never be HOT), however many
/// batches and patterns there were. A trigger counts updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_journal_rows_are_inserted_final_and_never_updated() {
    let env = env("write_once").await;
    let w = env.start_worker().await;
    // Every update of a journal row is counted, in the updating transaction itself.
    env.db
        .batch_execute(
            "CREATE TABLE journal_updates (id uuid);
             CREATE FUNCTION count_journal_update() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO journal_updates VALUES (OLD.id); RETURN NEW; END $$;
             CREATE TRIGGER count_updates BEFORE UPDATE ON cache_invalidations
               FOR EACH ROW EXECUTE FUNCTION count_journal_update();",
        )
        .await
        .unwrap();
    for i in 1..=30 {
        env.db
            .execute(
                "INSERT INTO courses (id, slug, title) VALUES ($1::int8, 's' || $1::int8, 't')",
                &[&(i as i64)],
            )
            .await
            .unwrap();
        env.db
            .execute(
                "INSERT INTO lessons (id, course_id, title) VALUES ($1, 1, 'l')",
                &[&(i as i64)],
            )
            .await
            .unwrap();
    }
    env.wait_caught_up(WAIT).await;
    let rows = env.journal_counts().await;
    assert!(
        rows.iter().all(|(s, _)| s == "completed"),
        "every row is final: {rows:?}"
    );
    let written: i64 = rows.iter().map(|(_, n)| n).sum();
    assert!(
        (1..60).contains(&written),
        "60 transactions' rows are grouped: {written} rows"
    );
    let updates: i64 = env
        .db
        .query_one("SELECT count(*) FROM journal_updates", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(updates, 0, "no journal row was updated");
    // Caught up: nothing waits for the journal or a pass any more.
    let s = w.status.snapshot();
    assert_eq!(
        (s.journal_trailing, s.passes_waiting, s.positions_waiting),
        (0, 0, 0),
        "{:?}",
        s.counters
    );
    // And where rows do change (requests, delayed passes), no index reads what changes, so
    // every such update can be HOT: open work is found through cache_invalidation_queue.
    let defs: Vec<String> = env
        .db
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index \
             WHERE indrelid = 'cache_invalidations'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for d in &defs {
        for column in ["status", "completed_at", "error"] {
            assert!(!d.contains(column), "{d} reads {column}");
        }
    }
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_columns_are_not_changes() {
    let env = TestEnv::new(
        "toast",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);",
    )
    .await;
    env.write_rules(
        "docs.toml",
        "[[rule]]\nname='doc-body'\ntable='docs'\nchanged=['body']\nkeys=['doc:{id}:body']\n\
         [[rule]]\nname='doc'\ntable='docs'\nkeys=['doc:{id}']\n",
    );
    // A body large and random enough to be stored out of line (TOAST), uncompressible.
    env.db
        .execute(
            "INSERT INTO docs SELECT 1, 't', string_agg(md5(g::text), '') FROM generate_series(1, 4000) g",
            &[],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.set_keys(&["doc:1:body", "doc:1"]).await;
    env.db
        .execute("UPDATE docs SET title = 't2' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["doc:1"], WAIT).await;
    assert!(
        env.exists("doc:1:body").await,
        "unchanged TOAST body is not a change"
    );
    env.db
        .execute("UPDATE docs SET body = 'short' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["doc:1:body"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_stopped_are_invalidated_after_restart() {
    let env = env("restart").await;
    let w = env.start_worker().await;
    w.stop().await;
    env.set_keys(&["lesson:1", "lesson:2"]).await;
    env.db
        .batch_execute(
            "INSERT INTO lessons VALUES (1, 1, 'a'); INSERT INTO lessons VALUES (2, 1, 'b');",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(env.exists("lesson:1").await);
    let w = env.start_worker().await;
    env.wait_gone(&["lesson:1", "lesson:2"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_names_only_rule_tables() {
    let env = env("publication").await;
    let w = env.start_worker().await;
    let tables: Vec<String> = env
        .db
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&env.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["public.courses", "public.lessons"]);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_transactions_are_invalidated_in_chunks() {
    let env = env("chunks").await;
    let cfg = env.write_config("127.0.0.1:0", "max_batch_changes = 100");
    let config = cachewarden::config::Config::load(&cfg).unwrap();
    assert_eq!(config.worker.max_batch_changes, 100);
    let w = env.start_worker_with(config).await;
    let keys: Vec<String> = (1..=1000).map(|i| format!("lesson:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    env.db
        .batch_execute(
            "BEGIN;
             INSERT INTO lessons SELECT g, 1, 'L' FROM generate_series(1, 1000) g;
             COMMIT;",
        )
        .await
        .unwrap();
    env.wait_gone(&refs, WAIT).await;
    env.wait_caught_up(WAIT).await;
    let batches = w
        .status
        .counters
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        batches >= 10,
        "1000 changes in batches of at most 100: {batches} batches"
    );
    w.stop().await;
    env.cleanup().await;
}

/// Batches are bounded by bytes as well as changes: wide rows (here 10 KB titles, cloned into
/// the old row as well under REPLICA IDENTITY FULL) cut a transaction into more chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_batched_by_bytes() {
    let env = env("bytes").await;
    let cfg = env.write_config("127.0.0.1:0", "max_batch_bytes = 65536");
    let config = cachewarden::config::Config::load(&cfg).unwrap();
    let w = env.start_worker_with(config).await;
    let keys: Vec<String> = (1..=100).map(|i| format!("lesson:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    env.db
        .batch_execute(
            "INSERT INTO lessons SELECT g, 1, repeat('x', 10000) FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    env.wait_gone(&refs, WAIT).await;
    env.wait_caught_up(WAIT).await;
    let batches = w
        .status
        .counters
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        batches >= 10,
        "100 rows of 10 KB in batches of at most 64 KB: {batches} batches"
    );
    w.stop().await;
    env.cleanup().await;
}
