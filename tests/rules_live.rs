//! The rule language and live rule management against real PostgreSQL and Redis: tags, bumps,
//! conditions, ignore_changed, canonical values, hot reload, cache_configs switches,
//! application requests and manual invalidation.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{eventually, run_bin, TestEnv, WAIT};
use redis::AsyncCommands;

const SCHEMA: &str = r#"
CREATE TABLE courses (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    published boolean NOT NULL DEFAULT false,
    view_count bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT '2026-01-02 03:04:05.5+00'
);
ALTER TABLE courses REPLICA IDENTITY FULL;
CREATE TABLE pings (id int PRIMARY KEY);
"#;

// `pings` is a sentinel: once a later ping's key is gone and the slot's confirmed position has
// passed it, every earlier change was processed. The key alone is not enough: a ping planned in
// the same batch as an earlier change is unlinked before that batch's tag sets and bumps run.
const SENTINEL: &str = "[[rule]]\nname = \"ping\"\ntable = \"pings\"\nkeys = [\"ping:{id}\"]\n";

async fn env(name: &str, rules: &str) -> TestEnv {
    let env = TestEnv::new(name, SCHEMA).await;
    env.write_rules("sentinel.toml", SENTINEL);
    env.write_rules("rules.toml", rules);
    env
}

/// Commits a ping and waits until the worker has processed it and everything before it: its
/// key gone, then the position confirmed past it (a confirmed position means every action
/// planned before it has completed — the acknowledgement contract).
async fn sync(env: &TestEnv, id: i32) {
    let key = format!("ping:{id}");
    env.set_keys(&[&key]).await;
    env.db
        .execute("INSERT INTO pings VALUES ($1)", &[&id])
        .await
        .unwrap();
    env.wait_gone(&[&key], WAIT).await;
    env.wait_caught_up(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_unlink_members_and_the_set() {
    let env = env(
        "tags",
        "[[rule]]\nname='course'\ntable='courses'\ntags=['course:{id}']\n",
    )
    .await;
    env.db
        .execute(
            "INSERT INTO courses (id, title) VALUES (1, 'a'), (2, 'b')",
            &[],
        )
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.set_keys(&["page:1", "page:2", "page:3"]).await;
    let mut r = env.redis.clone();
    let tag1 = env.key("tag:course:1");
    let tag2 = env.key("tag:course:2");
    let _: () = r
        .sadd(&tag1, &[env.key("page:1"), env.key("page:2")])
        .await
        .unwrap();
    let _: () = r.sadd(&tag2, env.key("page:3")).await.unwrap();
    env.db
        .execute("UPDATE courses SET title = 'a2' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["page:1", "page:2", "tag:course:1"], WAIT)
        .await;
    assert!(env.exists("page:3").await && env.exists("tag:course:2").await);
    // TRUNCATE invalidates every tag of the family.
    env.db.execute("TRUNCATE courses", &[]).await.unwrap();
    env.wait_gone(&["page:3", "tag:course:2"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_increments_namespace_versions() {
    let env = env(
        "bump",
        "[[rule]]\nname='course'\ntable='courses'\nbump=['ns:course:{id}']\n",
    )
    .await;
    let w = env.start_worker().await;
    let mut r = env.redis.clone();
    let _: () = r.set(env.key("ns:course:1"), 5).await.unwrap();
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'a')", &[])
        .await
        .unwrap();
    sync(&env, 1).await;
    let v: i64 = r.get(env.key("ns:course:1")).await.unwrap();
    assert_eq!(v, 6);
    // Changes planned in one batch share one bump; each batch bumps again.
    env.db
        .execute("UPDATE courses SET title = 'b' WHERE id = 1", &[])
        .await
        .unwrap();
    sync(&env, 2).await;
    let v: i64 = r.get(env.key("ns:course:1")).await.unwrap();
    assert_eq!(v, 7);
    // The journal trails the cache: its rows are durable once the position is confirmed.
    env.wait_caught_up(WAIT).await;
    let journaled: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM cache_invalidations WHERE kind IN ('bump', 'bumps')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(journaled >= 1);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_conditions_and_ignore_changed_filter() {
    let env = env(
        "when",
        "[[rule]]\nname='public-page'\ntable='courses'\nkeys=['public:{id}']\nwhen='new.published or old.published'\n\
         [[rule]]\nname='detail'\ntable='courses'\nkeys=['detail:{id}']\nignore_changed=['view_count']\n",
    )
    .await;
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.set_keys(&["public:1", "detail:1"]).await;
    // Unpublished and staying so: the public page is untouched; a view count is ignored.
    env.db
        .execute("UPDATE courses SET title = 'b' WHERE id = 1", &[])
        .await
        .unwrap();
    env.db
        .execute("UPDATE courses SET view_count = 7 WHERE id = 1", &[])
        .await
        .unwrap();
    sync(&env, 1).await;
    assert!(env.exists("public:1").await, "when was false");
    assert!(
        !env.exists("detail:1").await,
        "the title change fired detail"
    );
    env.set_keys(&["detail:1"]).await;
    env.db
        .execute("UPDATE courses SET view_count = 8 WHERE id = 1", &[])
        .await
        .unwrap();
    sync(&env, 2).await;
    assert!(
        env.exists("detail:1").await,
        "only an ignored column changed"
    );
    env.db
        .execute("UPDATE courses SET published = true WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["public:1", "detail:1"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_render_canonical_values() {
    let env = env(
        "canonical",
        "[[rule]]\nname='c'\ntable='courses'\nkeys=['c:{id}:{published}:{created_at}']\n",
    )
    .await;
    let w = env.start_worker().await;
    let key = "c:1:true:2026-01-02T03:04:05.5Z";
    env.set_keys(&[key]).await;
    env.db
        .execute(
            "INSERT INTO courses (id, title, published) VALUES (1, 'a', true)",
            &[],
        )
        .await
        .unwrap();
    env.wait_gone(&[key], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_broken_file_and_keeps_the_old_rules() {
    let env = env(
        "reload",
        "[[rule]]\nname='a'\ntable='courses'\nkeys=['a:{id}']\n",
    )
    .await;
    let w = env.start_worker().await;
    env.write_rules(
        "rules.toml",
        "[[rule]]\nname='a'\ntable='courses'\nkeys=['a:{id']\n",
    );
    eventually("the broken file is reported", WAIT, || async {
        w.status
            .snapshot()
            .rules_error
            .is_some_and(|e| e.contains("rules.toml:4:"))
    })
    .await;
    // The old rule keeps running.
    env.set_keys(&["a:1"]).await;
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'x')", &[])
        .await
        .unwrap();
    env.wait_gone(&["a:1"], WAIT).await;
    // A fixed file replaces the rule set, and cache_configs follows.
    env.write_rules(
        "rules.toml",
        "[[rule]]\nname='b'\ntable='courses'\nkeys=['b:{id}']\n",
    );
    eventually("the fixed file is loaded", WAIT, || async {
        let s = w.status.snapshot();
        s.rules_error.is_none() && s.counters["rule_reloads"] >= 1
    })
    .await;
    env.set_keys(&["a:1", "b:1"]).await;
    env.db
        .execute("UPDATE courses SET title = 'y' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["b:1"], WAIT).await;
    assert!(env.exists("a:1").await, "rule a is gone after the reload");
    let names: i64 = env
        .db
        .query_one("SELECT count(*) FROM cache_configs WHERE name = 'b'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(names, 1);
    // SIGHUP (the notify it triggers) reloads even without a change.
    let before = w.status.counters.rule_reloads.load(Ordering::Relaxed);
    w.reload.notify_one();
    eventually("a forced reload", WAIT, || async {
        w.status.counters.rule_reloads.load(Ordering::Relaxed) > before
    })
    .await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_new_tables_to_the_publication() {
    let env = env(
        "reload_table",
        "[[rule]]\nname='a'\ntable='courses'\nkeys=['a:{id}']\n",
    )
    .await;
    env.db
        .batch_execute("CREATE TABLE extra (id int PRIMARY KEY)")
        .await
        .unwrap();
    let w = env.start_worker().await;
    env.write_rules(
        "extra.toml",
        "[[rule]]\nname='x'\ntable='extra'\nkeys=['x:{id}']\n",
    );
    eventually("the new rule is loaded", WAIT, || async {
        w.status
            .snapshot()
            .tables
            .contains(&"public.extra".to_string())
    })
    .await;
    env.set_keys(&["x:1"]).await;
    env.db
        .execute("INSERT INTO extra VALUES (1)", &[])
        .await
        .unwrap();
    env.wait_gone(&["x:1"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_active_switches_a_rule_live_and_drift_is_reported() {
    let env = env(
        "switch",
        "[[rule]]\nname='a'\ntable='courses'\nkeys=['a:{id}']\nttl=60\n",
    )
    .await;
    let w = env.start_worker().await;
    env.db
        .execute(
            "UPDATE cache_configs SET is_active = false WHERE name = 'a'",
            &[],
        )
        .await
        .unwrap();
    eventually(
        "the rule is disabled within a second",
        Duration::from_secs(1),
        || async { w.status.snapshot().disabled_rules == ["a"] },
    )
    .await;
    env.set_keys(&["a:1"]).await;
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'x')", &[])
        .await
        .unwrap();
    sync(&env, 1).await;
    assert!(env.exists("a:1").await, "a disabled rule does not fire");
    env.db
        .execute(
            "UPDATE cache_configs SET is_active = true, ttl = 30 WHERE name = 'a'",
            &[],
        )
        .await
        .unwrap();
    eventually("the rule is enabled again", WAIT, || async {
        w.status.snapshot().disabled_rules.is_empty()
    })
    .await;
    env.db
        .execute("UPDATE courses SET title = 'y' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["a:1"], WAIT).await;
    let drift = w.status.snapshot().drift;
    assert!(
        drift
            .iter()
            .any(|d| d.contains("a: ttl is 30 in cache_configs but 60")),
        "{drift:?}"
    );
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_requests_and_manual_invalidation() {
    let env = env(
        "requests",
        "[[rule]]\nname='a'\ntable='courses'\nkeys=['a:{id}']\n",
    )
    .await;
    let w = env.start_worker().await;
    env.set_keys(&["feed:1", "feed:2", "keep:1"]).await;
    // What Django's invalidate_cache(pattern) does: insert a pending row.
    let id: String = env
        .db
        .query_one(
            "INSERT INTO cache_invalidations (key_pattern, reason) VALUES ($1, 'feed changed') RETURNING id::text",
            &[&env.key("feed:*")],
        )
        .await
        .unwrap()
        .get(0);
    env.wait_gone(&["feed:1", "feed:2"], WAIT).await;
    assert!(env.exists("keep:1").await);
    eventually("the request is completed", WAIT, || async {
        let st: String = env
            .db
            .query_one(
                "SELECT status FROM cache_invalidations WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        st == "completed"
    })
    .await;

    // The CLI: logical pattern, key_prefix added.
    env.set_keys(&["promo:1", "promo:2"]).await;
    let cfg = env.write_config("127.0.0.1:0", "");
    let (code, out, err) = run_bin(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "invalidate",
            "promo:*",
            "--reason",
            "new promo",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 keys removed"), "{out}");
    env.wait_gone(&["promo:1", "promo:2"], WAIT).await;
    let row = env
        .db
        .query_one(
            "SELECT status, kind, key_pattern FROM cache_invalidations WHERE reason = 'new promo'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, String>(1), "pattern");
    assert_eq!(row.get::<_, String>(2), env.key("promo:*"));
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_tag_and_bump_keys_do_not_stall_invalidation() {
    let env = env(
        "poison",
        "[[rule]]\nname='course'\ntable='courses'\ntags=['course:{id}']\nbump=['ns:course:{id}']\nkeys=['c:{id}']\n",
    )
    .await;
    let w = env.start_worker().await;
    let mut r = env.redis.clone();
    // An application wrote a string where a tag set and a version number belong.
    let _: () = r.set(env.key("tag:course:1"), "oops").await.unwrap();
    let _: () = r.set(env.key("ns:course:1"), "not-a-number").await.unwrap();
    env.set_keys(&["c:1"]).await;
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'a')", &[])
        .await
        .unwrap();
    env.wait_gone(&["c:1", "tag:course:1"], WAIT).await;
    // Bumps run after the tag sets within a batch: wait for the namespace, do not race it.
    let ns = env.key("ns:course:1");
    eventually("the namespace changed anyway", WAIT, || {
        let (mut r, ns) = (r.clone(), ns.clone());
        async move {
            let v: String = r.get(&ns).await.unwrap();
            v != "not-a-number"
        }
    })
    .await;
    // And the stream goes on.
    sync(&env, 1).await;
    assert_eq!(w.status.counters.redis_errors.load(Ordering::Relaxed), 0);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_partitions_reach_the_partitioned_tables_rules() {
    let env = TestEnv::new(
        "partitions",
        "CREATE TABLE events (id int, day date, title text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
    )
    .await;
    env.write_rules(
        "events.toml",
        "[[rule]]\nname='event'\ntable='events'\nkeys=['event:{id}']\n",
    );
    let w = env.start_worker().await;
    env.set_keys(&["event:1"]).await;
    env.db
        .execute("INSERT INTO events VALUES (1, '2026-05-01', 'x')", &[])
        .await
        .unwrap();
    env.wait_gone(&["event:1"], WAIT).await;
    w.stop().await;
    env.cleanup().await;
}

/// Columns of domain types render (and compare in `when`) as their base types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_resolve_to_their_base_types() {
    let env = TestEnv::new(
        "domains",
        "CREATE DOMAIN flag AS boolean; CREATE DOMAIN stamp AS timestamptz; \
         CREATE DOMAIN code AS char(6); CREATE DOMAIN small AS int; CREATE DOMAIN tiny AS small; \
         CREATE TABLE d (id int PRIMARY KEY, f flag, t stamp, c code, n tiny); \
         ALTER TABLE d REPLICA IDENTITY FULL;",
    )
    .await;
    env.write_rules(
        "d.toml",
        "[[rule]]\nname='d'\ntable='d'\nkeys=['d:{f}:{t}:{c}']\nwhen='new.n > 3'\n",
    );
    let w = env.start_worker().await;
    let key = "d:true:2026-01-02T03:04:05Z:ab";
    env.set_keys(&[key, "d:false:2026-01-02T03:04:05Z:ab"])
        .await;
    env.db
        .batch_execute(
            "INSERT INTO d VALUES (1, true, '2026-01-02 03:04:05+00', 'ab', 5); \
             INSERT INTO d VALUES (2, false, '2026-01-02 03:04:05+00', 'ab', 1);",
        )
        .await
        .unwrap();
    env.wait_gone(&[key], WAIT).await;
    assert!(
        env.exists("d:false:2026-01-02T03:04:05Z:ab").await,
        "n = 1 is not > 3: compared as a number"
    );
    w.stop().await;
    env.cleanup().await;
}

/// A tag set of thousands of members is invalidated in bounded steps (never one SMEMBERS that
/// blocks Redis): every member and the set are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_tag_set_is_invalidated_in_steps() {
    let env = env(
        "bigtag",
        "[[rule]]\nname='course'\ntable='courses'\ntags=['course:{id}']\n",
    )
    .await;
    env.db
        .execute("INSERT INTO courses (id, title) VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let w = env.start_worker().await;
    let pages: Vec<String> = (0..4500).map(|i| format!("page:{i}")).collect();
    let refs: Vec<&str> = pages.iter().map(String::as_str).collect();
    env.set_keys(&refs).await;
    let mut r = env.redis.clone();
    let full: Vec<String> = pages.iter().map(|p| env.key(p)).collect();
    let _: () = r.sadd(env.key("tag:course:1"), &full).await.unwrap();
    env.db
        .execute("UPDATE courses SET title = 'a2' WHERE id = 1", &[])
        .await
        .unwrap();
    env.wait_gone(&["tag:course:1"], WAIT).await;
    env.wait_gone(&refs, WAIT).await;
    w.stop().await;
    env.cleanup().await;
}
