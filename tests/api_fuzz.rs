//! The operator API under schemathesis, a property-based fuzzer driven by the API's own
//! OpenAPI document, against a running worker: no 5xx, every response matches the schema
//! (status codes, content types, bodies), bad input is rejected, and calls that need the token
//! are refused without it (`ignored_auth`). The worker gets a Redis of its own: the fuzzer may
//! invalidate `*` with `raw=true`. Before fuzzing, the document is validated against the OpenAPI
//! 3.1 specification (openapi-spec-validator).

mod common;

use common::{OwnRedis, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = std::env::var("CACHEWARDEN_PYTHON").expect(
        "CACHEWARDEN_PYTHON: run scripts/ensure-python.sh (the README's test command does)",
    );
    let env = TestEnv::new(
        "api_fuzz",
        "CREATE TABLE courses (id bigint PRIMARY KEY, title text);",
    )
    .await;
    env.write_rules(
        "r.toml",
        "[[rule]]\nname = 'course'\ntable = 'courses'\nkeys = ['course:{id}']\ntags = ['catalog']\n",
    );
    let (_redis, _) = OwnRedis::start(&[]).await;
    let mut config = env.config();
    config.redis.url = _redis.url.clone();
    // With no prefix, `?raw=true` and `?raw=false` name the same key: the fuzzer's stateful
    // checks (deleted → 404) treat them as one resource, as they then are.
    config.redis.key_prefix = String::new();
    config.api.token = Some("fuzz-token".into());
    let w = env.start_worker_with(config.clone()).await;
    let addr = common::serve_api(w.status.clone(), config).await;
    // The document validates against the OpenAPI 3.1 specification.
    let (code, doc) = common::http(&addr, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(code, 200);
    let doc_path = env.dir.join("openapi.json");
    std::fs::write(&doc_path, &doc).unwrap();
    let check = tokio::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&doc_path)
        .output()
        .await
        .expect("openapi-spec-validator runs");
    assert!(
        check.status.success(),
        "the OpenAPI document does not validate: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = tokio::process::Command::new(&python)
        // Its own files (.schemathesis/) go to the test's directory, not the repository.
        .current_dir(&env.dir)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .args(["--checks", "all"])
        // A stream that never ends: tested in tests/api.rs.
        .args(["--exclude-path", "/api/v1/events"])
        .args(["--header", "Authorization: Bearer fuzz-token"])
        .args(["--max-examples", "60", "--workers", "1"])
        // A fixed seed keeps CI deterministic; CW_FUZZ_SEED explores others.
        .args([
            "--seed",
            &std::env::var("CW_FUZZ_SEED").unwrap_or_else(|_| "18".into()),
        ])
        .args([
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "20",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // The fuzzer reached the API (not a run that tested nothing).
    let calls: i64 = env
        .db
        .query_one("SELECT count(*) FROM cache_invalidations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(calls > 0, "no invalidation reached the journal:\n{text}");
    w.stop().await;
    env.cleanup().await;
}
