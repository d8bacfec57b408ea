//! The operator API against a running worker, real PostgreSQL and Redis: keys inspected, set
//! and deleted; invalidations dry-run, run and paged through the journal; rule switches
//! recorded in cache_configs and taken by the worker; figures; server-sent events; the
//! token; bad input answered with 4xx JSON errors.

mod common;

use std::time::{Duration, Instant};

use common::{http, TestEnv};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

const SCHEMA: &str = "CREATE TABLE courses (id bigint PRIMARY KEY, title text);";
const RULES: &str = "[[rule]]\nname = 'course'\ntable = 'courses'\nkeys = ['course:{id}']\n\
                     tags = ['catalog']\nttl = 3600\n";
const TOKEN: &str = "s3cret-token";

/// Starts the worker and the API with `token`; returns the address.
async fn start(env: &TestEnv, token: Option<&str>) -> (common::RunningWorker, String) {
    env.write_rules("r.toml", RULES);
    let mut config = env.config();
    config.api.token = token.map(str::to_string);
    let w = env.start_worker_with(config.clone()).await;
    let addr = common::serve_api(w.status.clone(), config).await;
    (w, addr)
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn journal_row(env: &TestEnv, id: &str) -> (String, String, String) {
    let r = env
        .db
        .query_one(
            "SELECT key_pattern, status, reason FROM cache_invalidations WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_inspected_set_and_deleted_through_the_journal() {
    let env = TestEnv::new("api_keys", SCHEMA).await;
    let (w, addr) = start(&env, Some(TOKEN)).await;

    // Setting needs the token.
    let put = json!({"value": "hello", "ttl": 60}).to_string();
    let (code, body) = http(&addr, "PUT", "/api/v1/keys/course:1", None, Some(&put)).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(parse(&body)["error"], "unauthorized");
    let (code, body) = http(
        &addr,
        "PUT",
        "/api/v1/keys/course:1",
        Some(TOKEN),
        Some(&put),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut r = env.redis.clone();
    let v: Option<String> = r.get(env.key("course:1")).await.unwrap();
    assert_eq!(v.as_deref(), Some("hello"));

    // Inspecting needs none on loopback, and names the rule and the values behind the key.
    let (code, body) = http(&addr, "GET", "/api/v1/keys/course:1", None, None).await;
    assert_eq!(code, 200, "{body}");
    let k = parse(&body);
    assert_eq!(k["key"], "course:1");
    assert_eq!(k["redis_key"], env.key("course:1"));
    assert_eq!(k["exists"], true);
    assert_eq!(k["type"], "string");
    assert_eq!(k["value"], "hello");
    assert_eq!(k["encoding"], "utf8");
    let ttl = k["ttl"].as_i64().unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
    assert_eq!(k["rules"][0]["rule"], "course");
    assert_eq!(k["rules"][0]["fields"]["id"], "1");
    assert_eq!(k["rules"][0]["line"], 4);

    // A value that is not UTF-8 comes back as base64; a missing key as exists: false.
    let _: () = r
        .set(env.key("course:2"), vec![0xffu8, 0x00, 0x01])
        .await
        .unwrap();
    let (_, body) = http(&addr, "GET", "/api/v1/keys/course:2", None, None).await;
    let k = parse(&body);
    assert_eq!(
        (k["value"].as_str(), k["encoding"].as_str()),
        (Some("/wAB"), Some("base64"))
    );
    assert_eq!(k["ttl"], Value::Null);
    let (code, body) = http(&addr, "GET", "/api/v1/keys/course:404", None, None).await;
    assert_eq!(code, 404);
    let k = parse(&body);
    assert_eq!(k["exists"], false);
    assert_eq!(
        k["rules"][0]["rule"], "course",
        "a missing key still names its rule"
    );
    // Bytes go in as base64, a TTL as whole seconds (also written 30.0).
    let put = json!({"value_base64": "/wAB", "ttl": 30.0}).to_string();
    let (code, body) = http(
        &addr,
        "PUT",
        "/api/v1/keys/course:3",
        Some(TOKEN),
        Some(&put),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: Vec<u8> = r.get(env.key("course:3")).await.unwrap();
    assert_eq!(v, [0xff, 0x00, 0x01]);
    let t: i64 = r.ttl(env.key("course:3")).await.unwrap();
    assert!((1..=30).contains(&t), "{t}");
    for bad in [
        json!({"value": "a", "value_base64": "AA=="}),
        json!({"value": 1}),
        json!({"value": "a", "ttl": -1}),
        json!({"value": "a", "ttl": 1.5}),
    ] {
        let (code, body) = http(
            &addr,
            "PUT",
            "/api/v1/keys/course:3",
            Some(TOKEN),
            Some(&bad.to_string()),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // ?raw=true names the full Redis key.
    let raw = format!("/api/v1/keys/{}?raw=true", env.key("course:1"));
    let (_, body) = http(&addr, "GET", &raw, None, None).await;
    assert_eq!(parse(&body)["value"], "hello");

    // Deleting is a journaled invalidation.
    let (code, body) = http(
        &addr,
        "DELETE",
        "/api/v1/keys/course:1?reason=bad%20value",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let d = parse(&body);
    assert_eq!(d["removed"], 1);
    assert!(!env.exists("course:1").await);
    let id = d["ids"][0].as_str().unwrap();
    assert_eq!(
        journal_row(&env, id).await,
        (env.key("course:1"), "completed".into(), "bad value".into())
    );
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_dry_run_run_and_page_through_the_journal() {
    let env = TestEnv::new("api_invalidations", SCHEMA).await;
    let (w, addr) = start(&env, Some(TOKEN)).await;
    env.set_keys(&["course:1", "course:2", "course:3", "lesson:1"])
        .await;

    let post = |path: &'static str, body: Value| {
        let addr = addr.clone();
        async move { http(&addr, "POST", path, Some(TOKEN), Some(&body.to_string())).await }
    };
    let (code, body) = post(
        "/api/v1/invalidations?dry_run=true",
        json!({"pattern": "course:*", "reason": "preview"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let d = parse(&body);
    assert_eq!(d["dry_run"], true);
    assert_eq!(d["count"], 3);
    let mut sample: Vec<String> = serde_json::from_value(d["sample"].clone()).unwrap();
    sample.sort();
    assert_eq!(sample, ["course:1", "course:2", "course:3"]);
    assert!(env.exists("course:1").await, "a dry run touches nothing");
    let journaled: i64 = env
        .db
        .query_one("SELECT count(*) FROM cache_invalidations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(journaled, 0, "a dry run journals nothing");

    let (code, body) = post(
        "/api/v1/invalidations",
        json!({"pattern": "course:*", "reason": "bad import"}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let d = parse(&body);
    assert_eq!(d["removed"], 3);
    let id = d["ids"][0].as_str().unwrap().to_string();
    assert_eq!(
        journal_row(&env, &id).await,
        (env.key("course:*"), "completed".into(), "bad import".into())
    );
    assert!(env.exists("lesson:1").await);

    // Keys and tags.
    let (code, body) = post(
        "/api/v1/invalidations",
        json!({"keys": ["lesson:1", "x:1"]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(parse(&body)["ids"].as_array().unwrap().len(), 2);
    assert!(!env.exists("lesson:1").await);
    let mut r = env.redis.clone();
    let _: () = r
        .sadd(
            env.key("tag:catalog"),
            &[env.key("page:1"), env.key("page:2")],
        )
        .await
        .unwrap();
    env.set_keys(&["page:1", "page:2"]).await;
    let (_, body) = post(
        "/api/v1/invalidations?dry_run=true",
        json!({"tags": ["catalog"]}),
    )
    .await;
    assert_eq!(parse(&body)["count"], 2);
    let (code, body) = post("/api/v1/invalidations", json!({"tags": ["catalog"]})).await;
    assert_eq!(code, 201, "{body}");
    assert!(!env.exists("page:1").await && !env.exists("page:2").await);

    // Paging: newest first, a cursor to the next page, filters.
    let (code, body) = http(&addr, "GET", "/api/v1/invalidations?limit=2", None, None).await;
    assert_eq!(code, 200, "{body}");
    let p1 = parse(&body);
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/invalidations?limit=2&cursor={cursor}"),
        None,
        None,
    )
    .await;
    let p2 = parse(&body);
    assert_eq!(p2["items"].as_array().unwrap().len(), 2);
    assert_eq!(p2["next_cursor"], Value::Null, "4 rows in all");
    let ids: Vec<&str> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["items"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(*ids.last().unwrap(), id, "the oldest row comes last");
    let (_, body) = http(
        &addr,
        "GET",
        "/api/v1/invalidations?status=failed&since=1h",
        None,
        None,
    )
    .await;
    assert_eq!(parse(&body)["items"].as_array().unwrap().len(), 0);
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_switched_off_through_the_api_stops_invalidating_and_shows_who() {
    let env = TestEnv::new("api_configs", SCHEMA).await;
    let (w, addr) = start(&env, Some(TOKEN)).await;
    let (code, body) = http(&addr, "GET", "/api/v1/configs", None, None).await;
    assert_eq!(code, 200, "{body}");
    let c = parse(&body);
    assert_eq!(c[0]["name"], "course");
    assert_eq!(c[0]["is_active"], true);
    assert_eq!(c[0]["line"], 1);
    assert_eq!(c[0]["drift"].as_array().unwrap().len(), 0);

    let patch = json!({"is_active": false, "ttl": 60}).to_string();
    let (code, body) = http(
        &addr,
        "PATCH",
        "/api/v1/configs/course",
        Some(TOKEN),
        Some(&patch),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v = parse(&body);
    assert_eq!(v["is_active"], false);
    assert_eq!(v["ttl"], 60);
    assert_eq!(v["updated_by"], "api@127.0.0.1");
    assert_eq!(v["drift"].as_array().unwrap().len(), 1, "{v}");
    let row = env
        .db
        .query_one(
            "SELECT is_active, ttl, updated_by, now() - updated_at < interval '1 minute' \
             FROM cache_configs WHERE name = 'course'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<i32>>(1), Some(60));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("api@127.0.0.1")
    );
    assert!(row.get::<_, bool>(3));

    // The worker takes the switch: a change of a switched-off rule leaves its key.
    let start = Instant::now();
    while !w.status.disabled().contains(&"course".to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "switch not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.set_keys(&["course:7"]).await;
    env.db
        .execute("INSERT INTO courses VALUES (7, 'x')", &[])
        .await
        .unwrap();
    env.wait_caught_up(Duration::from_secs(15)).await;
    assert!(env.exists("course:7").await);

    // Unknown rules, bad values.
    let (code, body) = http(
        &addr,
        "PATCH",
        "/api/v1/configs/nope",
        Some(TOKEN),
        Some(&patch),
    )
    .await;
    assert_eq!(
        (code, parse(&body)["error"].as_str()),
        (404, Some("not_found"))
    );
    let (code, body) = http(
        &addr,
        "PATCH",
        "/api/v1/configs/course",
        Some(TOKEN),
        Some(r#"{"strategy":"refresh"}"#),
    )
    .await;
    assert_eq!(code, 409, "refresh needs [rule.warm]: {body}");
    let (code, body) = http(
        &addr,
        "PATCH",
        "/api/v1/configs/course",
        Some(TOKEN),
        Some("{}"),
    )
    .await;
    assert_eq!(
        (code, parse(&body)["ttl"].as_i64()),
        (200, Some(60)),
        "an empty patch changes nothing"
    );
    for bad in [
        json!({"ttl": -5}),
        json!({"strategy": "lazy"}),
        json!({"colour": 1}),
    ] {
        let (code, body) = http(
            &addr,
            "PATCH",
            "/api/v1/configs/course",
            Some(TOKEN),
            Some(&bad.to_string()),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(!parse(&body)["detail"].as_str().unwrap().is_empty());
    }
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_error_and_writes_need_a_configured_token() {
    let env = TestEnv::new("api_errors", SCHEMA).await;
    let (w, addr) = start(&env, None).await;
    // No token configured: writes are refused, saying how to enable them; reads work.
    let (code, body) = http(
        &addr,
        "POST",
        "/api/v1/invalidations",
        Some("anything"),
        Some(r#"{"pattern":"x"}"#),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(parse(&body)["detail"]
        .as_str()
        .unwrap()
        .contains("CACHEWARDEN_API_TOKEN"));
    assert_eq!(
        http(&addr, "GET", "/api/v1/configs", None, None).await.0,
        200
    );
    let long = "k".repeat(5000);
    for (method, path, body, want) in [
        ("GET", format!("/api/v1/keys/{long}"), None, 400),
        (
            "GET",
            "/api/v1/invalidations?limit=0".to_string(),
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/invalidations?status=done".to_string(),
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/invalidations?cursor=zzz".to_string(),
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/invalidations?since=yesterday".to_string(),
            None,
            400,
        ),
        ("GET", "/api/v1/stats?window=soon".to_string(), None, 400),
        ("GET", "/api/v1/stats?window=".to_string(), None, 400),
        ("GET", "/api/v1/invalidations?since=".to_string(), None, 400),
        (
            "GET",
            "/api/v1/invalidations?cursor=0b8f6f1e-5a4c-4a7e-9d1e-2f3a4b5c6d7e".to_string(),
            None,
            404,
        ),
        ("GET", "/api/v1/keys/x?raw=maybe".to_string(), None, 400),
        ("GET", "/api/v1/nothing-here".to_string(), None, 404),
        (
            "POST",
            "/api/v1/invalidations".to_string(),
            Some("{}".to_string()),
            403,
        ),
    ] {
        let (code, text) = http(&addr, method, &path, None, body.as_deref()).await;
        assert_eq!(code, want, "{method} {path}: {text}");
        let e = parse(&text);
        assert!(e["error"].is_string() && e["detail"].is_string(), "{text}");
    }
    w.stop().await;
    env.cleanup().await;

    // With a token: malformed and oversized bodies are 4xx too.
    let env = TestEnv::new("api_errors_token", SCHEMA).await;
    let (w, addr) = start(&env, Some(TOKEN)).await;
    let huge = json!({"keys": vec!["k"; 300_000]}).to_string();
    for (body, want) in [
        ("not json".to_string(), 400),
        (r#"{"pattern":"a","keys":["b"]}"#.to_string(), 400),
        (r#"{"keys":[]}"#.to_string(), 400),
        (r#"{"pattern":""}"#.to_string(), 400),
        (r#"{"pattern":"a","colour":"red"}"#.to_string(), 400),
        (huge, 413),
    ] {
        let (code, text) = http(
            &addr,
            "POST",
            "/api/v1/invalidations",
            Some(TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(code, want, "{}: {text}", &body[..body.len().min(60)]);
        assert!(parse(&text)["detail"].is_string(), "{text}");
    }
    let (code, _) = http(
        &addr,
        "POST",
        "/api/v1/invalidations",
        Some("wrong"),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 401);
    w.stop().await;
    env.cleanup().await;
}

/// Reads server-sent events until one named `want`; returns its data.
async fn next_event<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    want: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {want} event; saw {seen:?}"))
            .unwrap()
            .unwrap();
        if line == format!("event: {want}") {
            let data = lines.next_line().await.unwrap().unwrap();
            return parse(data.strip_prefix("data: ").unwrap());
        }
        seen.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_live_events_follow_the_worker() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new("api_live", SCHEMA).await;
    let (w, addr) = start(&env, Some(TOKEN)).await;
    // Subscribe first: the current health and rules come at once.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    let h = next_event(&mut lines, "health").await;
    assert!(h["ready"].is_boolean());
    let r = next_event(&mut lines, "rules").await;
    assert_eq!(r["rules_loaded"], 1);

    // A change streamed by the worker shows as an invalidation event and in the figures.
    env.db
        .execute("INSERT INTO courses VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let i = next_event(&mut lines, "invalidation").await;
    assert_eq!(i["rule_name"], "course");
    assert_eq!(i["status"], "completed");
    let (code, body) = http(&addr, "GET", "/api/v1/stats?window=5m", None, None).await;
    assert_eq!(code, 200, "{body}");
    let st = parse(&body);
    assert_eq!(st["window_seconds"], 300);
    assert!(st["invalidations"].as_i64().unwrap() >= 1, "{st}");
    assert!(!st["invalidation_series"].as_array().unwrap().is_empty());
    assert!(st["lag_ms_p50"].is_number(), "{st}");
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_console_are_served() {
    let env = TestEnv::new("api_doc", SCHEMA).await;
    let (w, addr) = start(&env, None).await;
    let (code, body) = http(&addr, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(code, 200);
    let doc = parse(&body);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/invalidations"]["post"].is_object());
    let (code, body) = http(&addr, "GET", "/", None, None).await;
    if cachewarden::api::console::is_built() {
        assert_eq!(code, 200);
        assert!(body.contains("<div id=\"app\">"), "{body}");
    } else {
        assert_eq!(code, 503);
        assert!(body.contains("scripts/build-console.sh"));
    }
    // The health routes stay where they were.
    assert_eq!(http(&addr, "GET", "/healthz", None, None).await.0, 200);
    w.stop().await;
    env.cleanup().await;
}
