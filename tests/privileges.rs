//! Issue 17: the least-privilege role docs/operations.md gives is enough. An administrator
//! creates the publication; the worker's role has LOGIN and REPLICATION, SELECT on the rule's
//! tables and CREATE on the schema for cachewarden's own tables — no superuser, no table
//! ownership — and it migrates, streams and invalidates.

mod common;

use common::{TestEnv, PG_BASE, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_least_privilege_role_runs_the_worker() {
    let env = TestEnv::new(
        "least_privilege",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text);",
    )
    .await;
    env.write_rules(
        "r.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\n",
    );
    let role = "cwt_least_privilege_worker";
    let admin = common::pg("postgres").await;
    let _ = admin
        .batch_execute(&format!(
            "DROP OWNED BY {role} CASCADE; DROP ROLE IF EXISTS {role}"
        ))
        .await;
    // What docs/operations.md tells an administrator to run (names adapted).
    let db = &env.name;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} WITH LOGIN REPLICATION PASSWORD 'x'; \
             GRANT CONNECT ON DATABASE {db} TO {role};"
        ))
        .await
        .unwrap();
    env.db
        .batch_execute(&format!(
            "GRANT USAGE, CREATE ON SCHEMA public TO {role}; \
             GRANT SELECT ON public.courses TO {role}; \
             CREATE PUBLICATION {db} FOR TABLE public.courses WITH (publish_via_partition_root = true);"
        ))
        .await
        .unwrap();
    let path = env.dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        env.config_text("127.0.0.1:0", "").replace(
            &format!("{PG_BASE}/"),
            &format!("postgres://{role}:x@127.0.0.1:5432/"),
        ),
    )
    .unwrap();
    let w = env.start_worker_with(env.config_with_file(&path)).await;
    env.set_keys(&["course:1"]).await;
    env.db
        .execute("INSERT INTO courses VALUES (1, 'a')", &[])
        .await
        .unwrap();
    env.wait_gone(&["course:1"], WAIT).await;
    env.wait_caught_up(WAIT).await;
    let rows: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM cache_invalidations WHERE status = 'completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows >= 1, "the journal is written by the worker's role");
    w.stop().await;
    env.cleanup().await;
    admin
        .batch_execute(&format!(
            "DROP OWNED BY {role} CASCADE; DROP ROLE IF EXISTS {role}"
        ))
        .await
        .unwrap();
}
