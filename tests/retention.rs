//! Retention against the real PostgreSQL: expired final journal rows and old metric samples
//! go, in batches; open rows and recent rows stay.

mod common;

use common::{eventually, run_bin, TestEnv, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_rows_and_keeps_new_and_open_ones() {
    let env = TestEnv::new(
        "retention",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text);",
    )
    .await;
    env.write_rules(
        "courses.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let cfg = env.write_config(
        "127.0.0.1:0",
        "[journal]\nretention = \"7d\"\n[monitor]\nretention = \"30d\"\n",
    );
    let (code, out, err) = run_bin(&["--config", cfg.to_str().unwrap(), "migrate"], None);
    assert_eq!(code, 0, "{out}{err}");
    // 2,500 expired final rows (more than one delete batch), an old row still open (a delayed
    // pass not yet due: a pending one would be recovered, completed and then expire), recent ones.
    env.db
        .batch_execute(
            "INSERT INTO cache_invalidations (key_pattern, kind, status, completed_at, triggered_at, created_at)
               SELECT 'old:' || g, 'key', 'completed', now() - interval '8 days',
                      now() - interval '8 days', now() - interval '8 days'
               FROM generate_series(1, 2499) g;
             INSERT INTO cache_invalidations (key_pattern, kind, status, error, triggered_at, created_at)
               VALUES ('old:failed', 'key', 'failed', 'boom', now() - interval '9 days', now() - interval '9 days');
             INSERT INTO cache_invalidations (key_pattern, kind, status, due_at, triggered_at, created_at)
               VALUES ('old:open', 'key', 'scheduled', now() + interval '1 hour',
                       now() - interval '9 days', now() - interval '9 days');
             INSERT INTO cache_invalidations (key_pattern, kind, status, completed_at, triggered_at, created_at)
               VALUES ('new', 'key', 'completed', now() - interval '6 days', now() - interval '6 days', now() - interval '6 days');
             INSERT INTO cache_metrics (config_id, \"timestamp\") VALUES
               (NULL, now() - interval '31 days'), (NULL, now() - interval '29 days');",
        )
        .await
        .unwrap();
    let w = env.start_worker_with(env.config_with_file(&cfg)).await;
    let count = |sql: &'static str| {
        let db = &env.db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    eventually("expired rows are deleted", WAIT, || async {
        count("SELECT count(*) FROM cache_invalidations WHERE key_pattern LIKE 'old:%' AND status <> 'scheduled'").await == 0
    })
    .await;
    assert_eq!(
        count("SELECT count(*) FROM cache_invalidations WHERE key_pattern IN ('old:open', 'new')")
            .await,
        2,
        "the open row and the recent one stay"
    );
    eventually("the old metric sample is deleted", WAIT, || async {
        count("SELECT count(*) FROM cache_metrics WHERE \"timestamp\" < now() - interval '30 days'")
            .await
            == 0
    })
    .await;
    assert_eq!(
        count(
            "SELECT count(*) FROM cache_metrics WHERE \"timestamp\" < now() - interval '28 days'"
        )
        .await,
        1,
        "the recent sample stays"
    );
    w.stop().await;
    env.cleanup().await;
}
