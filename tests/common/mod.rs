//! Shared harness for integration tests against the real local PostgreSQL and Redis.
//!
//! Every test gets its own database (`cwt_<name>`), replication slot and publication of the same
//! name, and Redis key prefix (`cwt:<name>:`), so tests run in parallel without touching each
//! other. Leftovers of an interrupted earlier run are dropped when a test starts.
#![allow(dead_code)]

pub mod certs;
pub mod tls_servers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachewarden::config::Config;
use cachewarden::runtime::ShutdownSender;
use cachewarden::status::Status;
use cachewarden::worker::{Worker, WorkerError};
use redis::AsyncCommands;
use tokio_postgres::{Client, NoTls};

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

pub async fn pg(db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&format!("{PG_BASE}/{db}"), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to PostgreSQL database {db}: {e}"));
    tokio::spawn(conn);
    client
}

pub struct TestEnv {
    pub name: String,
    pub db: Client,
    pub dir: PathBuf,
    pub prefix: String,
    pub redis: redis::aio::MultiplexedConnection,
}

async fn drop_everything(admin: &Client, name: &str) {
    for _ in 0..50 {
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&name],
            )
            .await
            .unwrap();
        let dropped = admin
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&name],
            )
            .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

impl TestEnv {
    /// Creates the test's database with `schema` and an empty rules directory.
    pub async fn new(name: &str, schema: &str) -> TestEnv {
        let name = format!("cwt_{name}");
        let admin = pg("postgres").await;
        drop_everything(&admin, &name).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let db = pg(&name).await;
        db.batch_execute(schema).await.unwrap();
        let dir = std::env::temp_dir().join(format!("cachewarden-tests/{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        let prefix = format!("{}:", name.replace('_', "-"));
        let client = redis::Client::open(REDIS_URL).unwrap();
        let redis = client.get_multiplexed_async_connection().await.unwrap();
        let env = TestEnv {
            name,
            db,
            dir,
            prefix,
            redis,
        };
        env.clear_redis().await;
        env
    }

    pub fn write_rules(&self, file: &str, text: &str) {
        std::fs::write(self.dir.join("rules").join(file), text).unwrap();
    }

    pub fn config_text(&self, status_listen: &str, extra: &str) -> String {
        format!(
            r#"rules_dir = "rules"
[postgres]
url = "{PG_BASE}/{name}"
slot = "{name}"
publication = "{name}"
[redis]
url = "{REDIS_URL}"
key_prefix = "{prefix}"
[status]
listen = "{status_listen}"
[worker]
status_interval_ms = 200
max_backoff_ms = 500
control_interval_ms = 100
{extra}
"#,
            name = self.name,
            prefix = self.prefix,
        )
    }

    /// Writes `cachewarden.toml` into the test directory and returns its path.
    pub fn write_config(&self, status_listen: &str, extra: &str) -> PathBuf {
        let path = self.dir.join("cachewarden.toml");
        std::fs::write(&path, self.config_text(status_listen, extra)).unwrap();
        path
    }

    /// The configuration of a file written by [`write_config`](Self::write_config).
    pub fn config_with_file(&self, path: &Path) -> Config {
        Config::load(path).unwrap()
    }

    pub fn config(&self) -> Config {
        Config::load(&self.write_config("127.0.0.1:0", "")).unwrap()
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    pub async fn set_keys(&self, keys: &[&str]) {
        let mut r = self.redis.clone();
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.set(self.key(k), "cached").ignore();
        }
        let () = pipe.query_async(&mut r).await.unwrap();
    }

    pub async fn exists(&self, k: &str) -> bool {
        let mut r = self.redis.clone();
        r.exists(self.key(k)).await.unwrap()
    }

    /// Waits until none of `keys` exists; panics with the survivors after `timeout`.
    pub async fn wait_gone(&self, keys: &[&str], timeout: Duration) {
        let start = Instant::now();
        loop {
            let mut alive = Vec::new();
            for k in keys {
                if self.exists(k).await {
                    alive.push(*k);
                }
            }
            if alive.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "keys still cached after {timeout:?}: {alive:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn clear_redis(&self) {
        let mut r = self.redis.clone();
        let keys: Vec<String> = r.keys(format!("{}*", self.prefix)).await.unwrap();
        if !keys.is_empty() {
            let _: () = r.del(keys).await.unwrap();
        }
    }

    /// The slot's confirmed flush position as a number.
    pub async fn confirmed(&self) -> u64 {
        let row = self
            .db
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub async fn current_lsn(&self) -> u64 {
        let row = self
            .db
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse().unwrap()
    }

    /// Waits until the slot has confirmed everything written so far.
    pub async fn wait_caught_up(&self, timeout: Duration) {
        let target = self.current_lsn().await;
        let start = Instant::now();
        loop {
            let c = self.confirmed().await;
            if c >= target {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "slot confirmed {c} < {target} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// (status, count) of journal rows.
    pub async fn journal_counts(&self) -> Vec<(String, i64)> {
        self.db
            .query(
                "SELECT status, count(*) FROM cache_invalidations GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    pub async fn cleanup(self) {
        let admin = pg("postgres").await;
        self.clear_redis().await;
        drop(self.db);
        drop_everything(&admin, &self.name).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Starts the worker in-process.
    pub async fn start_worker(&self) -> RunningWorker {
        self.start_worker_with(self.config()).await
    }

    pub async fn start_worker_with(&self, config: Config) -> RunningWorker {
        let stop = ShutdownSender::new();
        let rx = stop.subscribe();
        let status = Arc::new(Status::default());
        let rules = cachewarden::rules::load_dir(&config.rules_dir).expect("valid rules");
        let worker = Worker::start(config, rules, status.clone(), rx)
            .await
            .expect("worker starts");
        let reload = worker.reload_handle();
        let handle = tokio::spawn(worker.run());
        // Wait until the replication stream is up, so changes made next are streamed.
        let start = Instant::now();
        while !status
            .source_connected
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "worker did not connect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        RunningWorker {
            stop,
            handle,
            status,
            reload,
        }
    }
}

pub struct RunningWorker {
    pub reload: Arc<tokio::sync::Notify>,
    pub stop: ShutdownSender,
    pub handle: tokio::task::JoinHandle<Result<(), WorkerError>>,
    pub status: Arc<Status>,
}

impl RunningWorker {
    pub async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker stops within 20s")
            .expect("worker task")
            .expect("worker exits cleanly");
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cachewarden"))
}

pub const WAIT: Duration = Duration::from_secs(15);

/// A minimal HTTP/1.0 GET against the status endpoint: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

/// Serves the worker's whole HTTP surface (health, `/api/v1`, the console) for `status` on a
/// free loopback port; returns the address.
pub async fn serve_api(status: Arc<Status>, config: Config) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    tokio::spawn(cachewarden::api::serve(
        listener,
        cachewarden::api::app(status, Arc::new(config)),
        std::future::pending(),
    ));
    addr
}

/// A minimal HTTP/1.0 request: (status code, body). `token` goes as a bearer token; `body` as
/// JSON.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {buf:?}"));
    let body = buf.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (code, body)
}

/// Runs the binary with `args`; returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cachewarden");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawns `cachewarden run` with the given config, logging to `log`.
pub fn spawn_run(config: &Path, log: &Path) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cachewarden run")
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child is running");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A redis-server of the test's own on a free loopback port, stopped when dropped.
pub struct OwnRedis {
    child: std::process::Child,
    pub url: String,
}

impl OwnRedis {
    /// Starts one with `args` added (`--maxmemory 4mb`, …) and returns it with a connection.
    pub async fn start(args: &[&str]) -> (OwnRedis, redis::aio::MultiplexedConnection) {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str()).unwrap();
        let start = Instant::now();
        let conn = loop {
            if let Ok(c) = client.get_multiplexed_async_connection().await {
                break c;
            }
            assert!(start.elapsed() < WAIT, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (OwnRedis { child, url }, conn)
    }

    /// Stops the server now (the test's Redis outage).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
