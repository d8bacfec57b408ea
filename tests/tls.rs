//! TLS to PostgreSQL end to end (issue 17), against a throwaway PostgreSQL cluster the test
//! starts on a free port with `ssl=on`, a certificate authority and a server certificate for
//! `localhost` made by the test (openssl), and `pg_hba.conf` refusing every connection that is
//! not TLS — so a worker that streams and invalidates there did both of its connections (the
//! regular ones and the replication one) over TLS.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachewarden::config::Config;
use cachewarden::runtime::ShutdownSender;
use cachewarden::status::Status;
use cachewarden::worker::Worker;
use common::certs::{self_signed_ca, signed};
use common::tls_servers::{tls_redis, TlsPostgres};
use common::{REDIS_URL, WAIT};

/// Waits until `key` is gone from the Redis `r` talks to.
async fn wait_gone(r: &mut redis::aio::MultiplexedConnection, key: &str) {
    let start = Instant::now();
    loop {
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(r).await.unwrap();
        if !exists {
            return;
        }
        assert!(start.elapsed() < WAIT, "{key} was not invalidated over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(dir: &Path, url: &str, prefix: &str) -> Config {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/items.toml"),
        "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}']\n",
    )
    .unwrap();
    let path = dir.join("cachewarden.toml");
    std::fs::write(
        &path,
        format!(
            "rules_dir = \"rules\"\n[postgres]\nurl = \"{url}\"\nslot = \"cw_tls\"\npublication = \"cw_tls\"\n\
             [redis]\nurl = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
             [worker]\nstatus_interval_ms = 200\nmax_backoff_ms = 500\n"
        ),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_streams_and_invalidates_over_tls_and_verify_full_checks_the_name() {
    let pg = TlsPostgres::start("stream");
    pg.psql("CREATE TABLE items (id bigint PRIMARY KEY, v int)");
    let work = std::env::temp_dir().join("cachewarden-tests/tls_stream");
    let _ = std::fs::remove_dir_all(&work);
    let prefix = "cwt:tls:";

    // verify-full against the name the certificate carries: the worker runs, over TLS only.
    let good = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    );
    let cfg = config(&work, &good, prefix);
    let client = cachewarden::db::connect(&cfg.postgres_config().unwrap())
        .await
        .expect("a verify-full connection to localhost");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let stop = ShutdownSender::new();
    let status = Arc::new(Status::default());
    let rules = cachewarden::rules::load_dir(&cfg.rules_dir).unwrap();
    let worker = Worker::start(cfg.clone(), rules, status.clone(), stop.subscribe())
        .await
        .expect("the worker starts over TLS");
    let handle = tokio::spawn(worker.run());
    common::eventually("the stream is up", WAIT, || async {
        status
            .source_connected
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let mut r = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{prefix}item:7");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("cached")
        .query_async(&mut r)
        .await
        .unwrap();
    pg.psql("INSERT INTO items VALUES (7, 1)");
    wait_gone(&mut r, &key).await;
    // Both of the worker's kinds of connection are TLS (pg_hba refuses anything else).
    let walsender_ssl = pg.psql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'walsender'",
    );
    assert_eq!(walsender_ssl, "t");
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();

    // verify-full against 127.0.0.1, a name the certificate does not carry: refused.
    let wrong = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    );
    let e = cachewarden::db::connect(&config(&work, &wrong, prefix).postgres_config().unwrap())
        .await
        .expect_err("verify-full refuses a host name the certificate does not name");
    let chain = format!("{e:?}");
    assert!(chain.contains("NotValidForName"), "{chain}");
    // verify-ca checks the chain only; require checks nothing: both connect.
    for params in [
        format!("sslmode=verify-ca&sslrootcert={}", pg.ca()),
        "sslmode=require".into(),
    ] {
        let url = pg.url("127.0.0.1", &params);
        cachewarden::db::connect(&config(&work, &url, prefix).postgres_config().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
    }
    // A CA that did not sign the server's certificate: refused.
    self_signed_ca(&work, "other-ca", "other");
    let other = work.join("other-ca.pem");
    let url = pg.url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    );
    assert!(
        cachewarden::db::connect(&config(&work, &url, prefix).postgres_config().unwrap())
            .await
            .is_err()
    );
    // Without TLS the server refuses (the test's pg_hba): what `disable` gets.
    let url = pg.url("localhost", "sslmode=disable");
    assert!(
        cachewarden::db::connect(&config(&work, &url, prefix).postgres_config().unwrap())
            .await
            .is_err()
    );
    pg.psql("SELECT pg_drop_replication_slot('cw_tls')");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_invalidates_a_redis_it_reaches_over_tls_with_a_client_certificate() {
    let env =
        common::TestEnv::new("tls_redis", "CREATE TABLE items (id bigint PRIMARY KEY);").await;
    env.write_rules(
        "items.toml",
        "[[rule]]\nname='item'\ntable='items'\nkeys=['item:{id}']\n",
    );
    let certs = env.dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    self_signed_ca(&certs, "ca", "cachewarden test CA");
    signed(&certs, "ca", "server", "localhost");
    signed(&certs, "ca", "client", "cachewarden");
    let redis = tls_redis(&certs);
    let file = |f: &str| certs.join(f).display().to_string();
    let tls = |host: &str, client: bool| {
        let mut section = format!(
            "[redis]\nurl = \"rediss://{host}:{}/0\"\nkey_prefix = \"{}\"\ntls_ca_file = \"{}\"\n",
            redis.port,
            env.prefix,
            file("ca.pem")
        );
        if client {
            section.push_str(&format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                file("client.pem"),
                file("client.key")
            ));
        }
        let text = env.config_text("127.0.0.1:0", "");
        let start = text.find("[redis]").unwrap();
        let end = text.find("[status]").unwrap();
        let path = env.dir.join(format!("{host}-{client}.toml"));
        std::fs::write(
            &path,
            format!("{}{section}{}", &text[..start], &text[end..]),
        )
        .unwrap();
        path
    };
    // The test's own client, over TLS with the client certificate.
    let mut r = redis.connect(&certs).await;
    let key = env.key("item:3");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("cached")
        .query_async(&mut r)
        .await
        .unwrap();

    let w = env
        .start_worker_with(env.config_with_file(&tls("localhost", true)))
        .await;
    env.db
        .execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    wait_gone(&mut r, &key).await;
    assert!(w
        .status
        .redis_connected
        .load(std::sync::atomic::Ordering::Relaxed));
    w.stop().await;

    use cachewarden::target::CacheTarget;
    // A host name the server's certificate does not carry, or no client certificate: refused.
    for (host, client, what) in [
        ("127.0.0.1", true, "wrong name"),
        ("localhost", false, "no client certificate"),
    ] {
        let cfg = env.config_with_file(&tls(host, client));
        let mut targets = cachewarden::target::Targets::open(&cfg).unwrap();
        assert!(
            targets.ping().await.is_err(),
            "{what}: the connection must fail"
        );
    }
    // Certificate files with a plain redis:// URL are a configuration error.
    let text = std::fs::read_to_string(tls("localhost", true))
        .unwrap()
        .replace("rediss://", "redis://");
    let path = env.dir.join("plain.toml");
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("need a rediss:// url"), "{e}");
    env.cleanup().await;
}
