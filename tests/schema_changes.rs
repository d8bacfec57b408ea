//! Schema changes under a running worker must not lose invalidations: a rule's table dropped
//! and recreated under the same name, and a rule's table renamed.

mod common;

use std::time::Duration;

use common::{eventually, TestEnv, WAIT};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL);";
const RULES: &str = r#"
[[rule]]
name = "item"
table = "items"
keys = ["item:{id}"]
"#;

/// DROP TABLE removes the table from the publication; a table recreated under the same name
/// is a new relation that no publication names. The worker notices, re-adds it, invalidates
/// the rule's whole family (changes in between were not streamed), and later changes stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_recreated_table_is_repaired_and_nothing_is_lost() {
    let env = TestEnv::new("recreated", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let w = env.start_worker().await;
    env.db
        .batch_execute(
            "DROP TABLE items; CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL)",
        )
        .await
        .unwrap();
    // A change right after the recreate, before anything could repair the publication.
    env.set_keys(&["item:1"]).await;
    env.db
        .execute("INSERT INTO items VALUES (1, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:1"], WAIT).await;
    // Once repaired, changes stream again as usual.
    eventually("the publication names the table again", WAIT, || async {
        env.db
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'items'",
                &[&env.name],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.set_keys(&["item:2"]).await;
    env.db
        .execute("INSERT INTO items VALUES (2, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:2"], WAIT).await;
    let s = w.status.snapshot();
    assert!(
        s.counters["publication_repairs"] >= 1,
        "the repair is counted: {:?}",
        s.counters
    );
    w.stop().await;
    env.cleanup().await;
}

/// A renamed table keeps its identity (OID) and stays in the publication; its changes arrive
/// under the new name. They must keep invalidating the rule's keys, and the operator is told
/// that the rule file is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_keeps_invalidating_and_is_reported() {
    let env = TestEnv::new("renamed", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let w = env.start_worker().await;
    env.db
        .batch_execute("ALTER TABLE items RENAME TO things")
        .await
        .unwrap();
    env.set_keys(&["item:3"]).await;
    env.db
        .execute("INSERT INTO things VALUES (3, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:3"], WAIT).await;
    eventually("the rename is reported", WAIT, || async {
        w.status
            .snapshot()
            .drift
            .iter()
            .any(|d| d.contains("public.items") && d.contains("public.things"))
    })
    .await;
    w.stop().await;
    env.cleanup().await;
}

const WIDGETS: &str = "CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL); \
                       ALTER TABLE widgets REPLICA IDENTITY FULL;";
const WIDGET_RULES: &str = r#"
[[rule]]
name = "widget-name"
table = "widgets"
keys = ["widget-name:{old.name}", "widget-name:{new.name}"]
"#;

/// A rule's column dropped (or renamed) while the worker runs, and the worker restarted: it
/// must start, keep invalidating the affected rule's whole families, and report the drift
/// with the fix in /status, /readyz and the log — never exit and leave nothing invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_never_stops_invalidation() {
    let env = TestEnv::new("drift", WIDGETS).await;
    env.write_rules("widgets.toml", WIDGET_RULES);
    let w = env.start_worker().await;
    env.db
        .batch_execute("ALTER TABLE widgets RENAME COLUMN name TO title")
        .await
        .unwrap();
    // While running: reported within a few seconds, and invalidation goes on.
    eventually("the drift is reported", WAIT, || async {
        w.status
            .snapshot()
            .drift
            .iter()
            .any(|d| d.contains("\"name\" does not exist"))
    })
    .await;
    assert!(!w.status.is_ready(), "/readyz reports the drift");
    env.set_keys(&["widget-name:a"]).await;
    env.db
        .execute("INSERT INTO widgets VALUES (1, 'a')", &[])
        .await
        .unwrap();
    env.wait_gone(&["widget-name:a"], WAIT).await;
    w.stop().await;

    // After a restart the same files still start, conservatively.
    let w = env.start_worker().await;
    let drift = w.status.snapshot().drift;
    assert!(
        drift
            .iter()
            .any(|d| d.contains("does not exist") && d.contains("running conservatively")),
        "{drift:?}"
    );
    env.set_keys(&["widget-name:b"]).await;
    env.db
        .execute("INSERT INTO widgets VALUES (2, 'b')", &[])
        .await
        .unwrap();
    env.wait_gone(&["widget-name:b"], WAIT).await;
    // Fixing the file clears the drift.
    env.write_rules(
        "widgets.toml",
        &WIDGET_RULES
            .replace("old.name", "old.title")
            .replace("new.name", "new.title"),
    );
    let start = std::time::Instant::now();
    while !w.status.snapshot().drift.is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "the drift clears after the fix: {:?} (rules error: {:?}) {:?}",
            w.status.snapshot().drift,
            w.status.snapshot().rules_error,
            w.status.snapshot().counters
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
    env.cleanup().await;
}

/// A rule's table renamed while no worker runs: the backlog's changes arrive under the new
/// name. A restart recognizes the table by the identity recorded for the slot and keeps
/// invalidating (reporting the stale rule file), instead of confirming them with no action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_while_stopped_is_still_recognized() {
    let env = TestEnv::new("renamed_stopped", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let w = env.start_worker().await;
    env.wait_caught_up(WAIT).await;
    w.stop().await;
    env.db
        .batch_execute("ALTER TABLE items RENAME TO things")
        .await
        .unwrap();
    env.set_keys(&["item:4", "item:5"]).await;
    env.db
        .execute("INSERT INTO things VALUES (4, 0)", &[])
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.wait_gone(&["item:4"], WAIT).await;
    env.db
        .execute("INSERT INTO things VALUES (5, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:5"], WAIT).await;
    eventually("the rename is reported", WAIT, || async {
        w.status
            .snapshot()
            .drift
            .iter()
            .any(|d| d.contains("renamed to public.things"))
    })
    .await;
    w.stop().await;
    env.cleanup().await;
}

/// The stream itself wakes the catalog watch: a change under a rule table's new name is
/// reported at once, not at the next timer tick (set to a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_tables_first_change_wakes_the_catalog_watch() {
    let env = TestEnv::new("rename_hint", SCHEMA).await;
    env.write_rules("items.toml", RULES);
    let mut config = env.config();
    config.worker.catalog_interval_ms = 60_000;
    let w = env.start_worker_with(config).await;
    // Let the watch's first run (at start) pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.db
        .batch_execute("ALTER TABLE items RENAME TO things")
        .await
        .unwrap();
    env.set_keys(&["item:6"]).await;
    env.db
        .execute("INSERT INTO things VALUES (6, 0)", &[])
        .await
        .unwrap();
    env.wait_gone(&["item:6"], WAIT).await;
    eventually(
        "the rename is reported without waiting for the timer",
        WAIT,
        || async {
            w.status
                .snapshot()
                .drift
                .iter()
                .any(|d| d.contains("renamed to public.things"))
        },
    )
    .await;
    w.stop().await;
    env.cleanup().await;
}
