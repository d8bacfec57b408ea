//! Issue 17: every key the worker writes lives under `key_prefix`, so a Redis user limited to
//! the application's prefix (`~<prefix>*`) is enough — invalidation, refresh with its
//! never-stale marks, tag sets — and marks earlier versions wrote outside the prefix are moved
//! under it at start, keeping their version and time to live.

mod common;

use std::time::{Duration, Instant};

use common::{OwnRedis, TestEnv, REDIS_URL, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_limited_to_the_prefix_is_enough() {
    let env = TestEnv::new(
        "acl_prefix",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text NOT NULL);",
    )
    .await;
    env.write_rules(
        "r.toml",
        "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}']\ntags=['catalog']\n\
         strategy='refresh'\nfenced_fills=true\n[rule.warm]\nkey='course:{id}'\n\
         query='SELECT title FROM courses WHERE id = $1'\nargs=['id']\n",
    );
    let (redis, mut admin) = OwnRedis::start(&[]).await;
    let p = env.prefix.clone();
    // Marks an earlier version left outside the prefix: one newer than the new-style mark.
    for (k, v) in [
        (format!("cw:v:{p}course:1"), "00000000000000FF"),
        (format!("{p}cw:v:course:1"), "0000000000000010"),
        (format!("cw:v:{p}course:2"), "0000000000000020"),
    ] {
        let () = redis::cmd("SET")
            .arg(&k)
            .arg(v)
            .arg("EX")
            .arg(3600)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("cw")
        .arg("on")
        .arg(">cw-pass")
        .arg(format!("~{p}*"))
        .arg("resetchannels")
        .arg("-@all")
        // README's list (the worker's commands without keyspace_events).
        .arg("+ping")
        .arg("+info")
        .arg("+dbsize")
        .arg("+scan")
        .arg("+unlink")
        .arg("+del")
        .arg("+get")
        .arg("+mget")
        .arg("+set")
        .arg("+incr")
        .arg("+type")
        .arg("+scard")
        .arg("+spop")
        .arg("+srandmember")
        .arg("+pttl")
        .arg("+getdel")
        .arg("+memory|usage")
        .arg("+evalsha")
        .arg("+eval")
        .arg("+script|load")
        .arg("+watch")
        .arg("+unwatch")
        .arg("+multi")
        .arg("+exec")
        .query_async(&mut admin)
        .await
        .unwrap();
    let config = |url: &str| {
        let path = env.dir.join("cachewarden.toml");
        std::fs::write(
            &path,
            env.config_text("127.0.0.1:0", "").replace(REDIS_URL, url),
        )
        .unwrap();
        env.config_with_file(&path)
    };
    // The first start after the upgrade, with a user that sees the legacy marks: they move
    // under the prefix (the newer version wins, the TTL stays).
    let w = env.start_worker_with(config(&redis.url)).await;
    let start = Instant::now();
    loop {
        let legacy: Vec<String> = redis::cmd("KEYS")
            .arg("cw:v:*")
            .query_async(&mut admin)
            .await
            .unwrap();
        if legacy.is_empty() {
            break;
        }
        assert!(start.elapsed() < WAIT, "legacy marks left: {legacy:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reader = admin.clone();
    let get = |k: String| {
        let mut c = reader.clone();
        async move {
            let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
            v
        }
    };
    assert_eq!(
        get(format!("{p}cw:v:course:1")).await.as_deref(),
        Some("00000000000000FF")
    );
    assert_eq!(
        get(format!("{p}cw:v:course:2")).await.as_deref(),
        Some("0000000000000020")
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{p}cw:v:course:2"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(ttl > 3000, "the time to live moved with the mark: {ttl}");

    w.stop().await;
    // From then on a user limited to the prefix is enough: invalidation, tag sets and the
    // refresh's versioned write all work under the ACL.
    let w = env
        .start_worker_with(config(
            &redis.url.replace("redis://", "redis://cw:cw-pass@"),
        ))
        .await;
    let () = redis::cmd("SADD")
        .arg(format!("{p}tag:catalog"))
        .arg(format!("{p}catalog:page:1"))
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(format!("{p}catalog:page:1"))
        .arg("x")
        .query_async(&mut admin)
        .await
        .unwrap();
    env.db
        .execute("INSERT INTO courses VALUES (7, 'first')", &[])
        .await
        .unwrap();
    let start = Instant::now();
    while get(format!("{p}course:7")).await.as_deref() != Some("first") {
        if start.elapsed() > WAIT {
            let mut c = admin.clone();
            let log: redis::Value = redis::cmd("ACL")
                .arg("LOG")
                .query_async(&mut c)
                .await
                .unwrap();
            panic!("the refresh did not land under the ACL; ACL LOG: {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(format!("{p}catalog:page:1")).await,
        None,
        "the tag's members went"
    );
    env.db
        .execute("UPDATE courses SET title = 'second' WHERE id = 7", &[])
        .await
        .unwrap();
    let start = Instant::now();
    while get(format!("{p}course:7")).await.as_deref() != Some("second") {
        assert!(start.elapsed() < WAIT, "the second refresh did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing of the worker's lives outside the prefix.
    let outside: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .unwrap();
    let outside: Vec<&String> = outside.iter().filter(|k| !k.starts_with(&p)).collect();
    assert!(outside.is_empty(), "keys outside the prefix: {outside:?}");
    // The operator API and the advisor work under the same user.
    let cfg = config(&redis.url.replace("redis://", "redis://cw:cw-pass@"));
    let mut api_cfg = cfg.clone();
    api_cfg.api.token = Some("t".into());
    let addr = common::serve_api(w.status.clone(), api_cfg).await;
    for (method, path, body, want) in [
        ("GET", "/api/v1/keys/course:7", None, 200),
        (
            "PUT",
            "/api/v1/keys/page:9",
            Some(r#"{"value":"v","ttl":60}"#),
            200,
        ),
        (
            "POST",
            "/api/v1/invalidations?dry_run=true",
            Some(r#"{"tags":["catalog"]}"#),
            200,
        ),
        (
            "POST",
            "/api/v1/invalidations?dry_run=true",
            Some(r#"{"pattern":"course:*"}"#),
            200,
        ),
        (
            "POST",
            "/api/v1/invalidations",
            Some(r#"{"keys":["page:9"]}"#),
            201,
        ),
        ("GET", "/api/v1/advice", None, 200),
    ] {
        let (code, text) = common::http(&addr, method, path, Some("t"), body).await;
        assert_eq!(code, want, "{method} {path} under the ACL: {text}");
    }
    // Fenced fills raised their marks under the prefix too.
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}cw:v:course:7"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(marks.len(), 1);
    assert!(
        w.status.snapshot().failing.is_empty(),
        "{:?}",
        w.status.snapshot().failing
    );
    w.stop().await;
    drop(redis);
    env.cleanup().await;
}
