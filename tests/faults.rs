//! The fault-injection suite: a random workload against a private PostgreSQL and a private
//! Redis while two worker processes (an active one and a standby) are killed at random
//! moments and at the named failpoints, Redis and PostgreSQL are restarted, rule tables go
//! through DDL (columns added, dropped, renamed; a table renamed, dropped and recreated), the
//! rules are reloaded and standbys take over. At the end every key a committed change asked to
//! invalidate is gone and every journal row is final; it prints what it injected and checked.
//!
//! `CW_FAULTS_SECS` sets how long faults are injected (default 40 s, which fits CI; use 600
//! for a long local run), `CW_FAULTS_SEED` replays a run, and `CW_FAULTS_RECREATE=0` leaves
//! out dropping and recreating a rule table. Needs the `failpoints` feature.
#![cfg(feature = "failpoints")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, http_get};
use tokio_postgres::NoTls;

const IDS: i32 = 120;
const VERSIONS: i32 = 25;
const FAILPOINTS: [&str; 3] = [
    "after-cache-before-journal",
    "after-journal-before-confirm",
    "between-chunks",
];

/// A small deterministic generator (xorshift), so a failing run can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn as_postgres() -> bool {
    // initdb and postgres refuse to run as root: run them as the postgres user then.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|rd| rd.flatten().map(|e| e.path()).max())
        .map(|p| p.join("bin"))
        .unwrap_or_default();
    dir.join(name)
}

fn run_pg(args: &[&str]) {
    let mut cmd = if as_postgres() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    let args = if as_postgres() { args } else { &args[1..] };
    let out = cmd.args(args).output().expect("postgres tools run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PostgreSQL server of our own, so restarting it disturbs no other test.
struct PrivatePg {
    dir: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cw-faults-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.join("data");
        run_pg(&[
            pg_bin("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        let pg = PrivatePg { dir, port };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_wal_senders=10 -c max_replication_slots=10 -c fsync=off \
             -c wal_sender_timeout=10s",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let mut args = vec![
            pg_bin("pg_ctl").to_str().unwrap().to_string(),
            "-D".into(),
            data.to_str().unwrap().into(),
            "-l".into(),
            log.to_str().unwrap().into(),
            "-w".into(),
            "-o".into(),
            opts,
        ];
        if action != "start" {
            args.extend(["-m".into(), "fast".into()]);
        }
        args.push(action.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_pg(&refs);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = if as_postgres() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
                .output()
        } else {
            Command::new(pg_bin("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
                .output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of our own that keeps its data across restarts (SHUTDOWN SAVE).
struct PrivateRedis {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cw-faults-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            dir,
            port,
            child: None,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        self.child = Some(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args([
                    "--dir",
                    self.dir.to_str().unwrap(),
                    "--dbfilename",
                    "dump.rdb",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed"),
        );
        let start = Instant::now();
        while self.conn().await.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    }

    /// Saves, stops and starts again: the data survives, connections do not.
    async fn restart(&mut self) {
        if let Some(mut c) = self.conn().await {
            let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("SAVE").query_async(&mut c).await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.spawn().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One worker process slot: its config, status address and current process.
struct Instance {
    config: PathBuf,
    addr: String,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    failpoint: Option<String>,
}

impl Instance {
    fn spawn(&mut self, failpoint: Option<String>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = tokio::process::Command::new(common::bin());
        cmd.args(["--config", self.config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(fp) = &failpoint {
            cmd.env("CACHEWARDEN_FAILPOINT", fp);
        }
        self.child = Some(cmd.spawn().expect("spawn cachewarden run"));
        self.failpoint = failpoint;
    }

    async fn role(&self) -> Option<String> {
        let (_, body) = http_get(&self.addr, "/status").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["role"].as_str().map(String::from)
    }
}

#[derive(Debug, Default)]
struct Counts {
    kills: u32,
    failpoint_aborts: u32,
    takeovers: u32,
    redis_restarts: u32,
    pg_restarts: u32,
    ddl: u32,
    reloads: u32,
    transactions: u64,
}

const SCHEMA: &str = "
CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL, note text NOT NULL DEFAULT '');
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE things (id int PRIMARY KEY, val int NOT NULL);
ALTER TABLE things REPLICA IDENTITY FULL;
CREATE TABLE pings (id int PRIMARY KEY);";

const RULES: &str = r#"
[[rule]]
name = "item"
table = "items"
keys = ["item:{id}:v{new.val}"]

[[rule]]
name = "thing"
table = "things"
keys = ["thing:{id}:v{new.val}"]
"#;

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(c)
}

async fn set_keys(redis: &PrivateRedis, prefix: &str, table: &str) {
    let Some(mut c) = redis.conn().await else {
        return;
    };
    let mut pipe = redis::pipe();
    for id in 1..=IDS {
        for v in 0..=VERSIONS {
            pipe.set(format!("{prefix}{table}:{id}:v{v}"), "cached")
                .ignore();
        }
    }
    let _: Result<(), _> = pipe.query_async(&mut c).await;
}

/// The writer: random inserts and `val + 1` updates in transactions of 1..=5 statements,
/// retrying through restarts and DDL. Every committed change asks for one key of its own.
async fn writer(
    url: String,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
    pause: std::sync::Arc<tokio::sync::RwLock<()>>,
) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut done = 0;
    let mut db: Option<tokio_postgres::Client> = None;
    while !*stop.borrow() {
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect(&url).await;
            if db.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let Some(c) = db.as_ref() else { continue };
        let table = if rng.below(4) == 0 { "things" } else { "items" };
        let mut sql = String::from("BEGIN;");
        for _ in 0..=rng.below(5) {
            let id = rng.below(IDS as u64) + 1;
            sql.push_str(&format!(
                "INSERT INTO {table} (id, val) VALUES ({id}, 0) \
                 ON CONFLICT (id) DO UPDATE SET val = {table}.val + 1 WHERE {table}.val < {VERSIONS};"
            ));
        }
        sql.push_str("COMMIT;");
        let result = {
            let _writing = pause.read().await;
            c.batch_execute(&sql).await
        };
        match result {
            Ok(()) => done += 1,
            Err(_) => {
                let _ = c.batch_execute("ROLLBACK").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_lose_an_invalidation() {
    let recreate = std::env::var("CW_FAULTS_RECREATE").map_or(true, |v| v != "0");
    let secs: u64 = std::env::var("CW_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("CW_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!(
        "fault injection: seed {seed}, {secs} s, table recreation {} (CW_FAULTS_SEED={seed} replays it)",
        if recreate { "on" } else { "off" }
    );
    let mut rng = Rng(seed | 1);
    let pg = PrivatePg::start();
    let mut redis = PrivateRedis::start().await;
    let admin = connect(&pg.url("postgres"))
        .await
        .expect("private postgres");
    admin.batch_execute("CREATE DATABASE faults").await.unwrap();
    let url = pg.url("faults");
    let db = connect(&url).await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cw-faults-{}", pg.port));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/items.toml"), RULES).unwrap();
    let prefix = "cwf:";
    let mut instances: Vec<Instance> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "rules_dir = \"rules\"\n[postgres]\nurl = \"{url}\"\nslot = \"faults\"\npublication = \"faults\"\n\
                     [redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 500\n[status]\nlisten = \"{addr}\"\n\
                     [worker]\nstatus_interval_ms = 200\nmax_backoff_ms = 300\ncontrol_interval_ms = 100\nrecover_after_secs = 2\n",
                    redis.url()
                ),
            )
            .unwrap();
            Instance {
                config,
                addr,
                log: dir.join(format!("{name}.log")),
                child: None,
                failpoint: None,
            }
        })
        .collect();
    set_keys(&redis, prefix, "item").await;
    set_keys(&redis, prefix, "thing").await;
    // The first start creates the slot: changes before it exist for nobody.
    instances[0].spawn(None);
    let start = Instant::now();
    while !matches!(
        http_get(&instances[0].addr, "/readyz").await,
        Some((200, _))
    ) {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    instances[1].spawn(None);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pause = std::sync::Arc::new(tokio::sync::RwLock::new(()));
    let writing = tokio::spawn(writer(url.clone(), rng.next(), stop_rx, pause.clone()));
    let mut counts = Counts::default();
    let mut sentinel = false;
    let until = Instant::now() + Duration::from_secs(secs);
    // Faults until the time is up and at least 20 kills (at random moments and at failpoints).
    while Instant::now() < until || counts.kills + counts.failpoint_aborts < 20 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
        let kill_only = Instant::now() >= until;
        // Processes that ended: a failpoint abort, or a clean exit after a fault.
        for inst in instances.iter_mut() {
            if let Some(child) = inst.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    use std::os::unix::process::ExitStatusExt;
                    if status.signal() == Some(6) {
                        counts.failpoint_aborts += 1;
                    }
                    inst.child = None;
                }
            }
            if inst.child.is_none() {
                let fp = (rng.below(2) == 0)
                    .then(|| format!("{}@{}", FAILPOINTS[rng.below(3) as usize], rng.below(4) + 1));
                inst.spawn(fp);
            }
        }
        match if kill_only { 0 } else { rng.below(12) } {
            0..=4 => {
                // SIGKILL the active instance (a standby takes over), or any at random.
                let mut victim = rng.below(2) as usize;
                for (i, inst) in instances.iter().enumerate() {
                    if inst.role().await.as_deref() == Some("active") {
                        victim = i;
                        counts.takeovers += 1;
                    }
                }
                if let Some(child) = instances[victim].child.as_mut() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    counts.kills += 1;
                }
                instances[victim].child = None;
            }
            5 => {
                redis.restart().await;
                counts.redis_restarts += 1;
            }
            6 => {
                pg.ctl("restart");
                counts.pg_restarts += 1;
            }
            7..=9 => {
                let Some(c) = connect(&url).await else {
                    continue;
                };
                // The schema's state is read, not remembered: a statement may have failed.
                let has = |sql: &'static str| {
                    let c = &c;
                    async move {
                        c.query_one(sql, &[])
                            .await
                            .ok()
                            .and_then(|r| r.get::<_, Option<bool>>(0))
                            .unwrap_or(false)
                    }
                };
                let renamed_now = has("SELECT to_regclass('things_renamed') IS NOT NULL").await;
                // Dropping and recreating a rule table (CW_FAULTS_RECREATE=0 leaves it out).
                let kinds = if recreate { 4 } else { 3 };
                let ddl = match rng.below(kinds) {
                    0 => {
                        if has("SELECT count(*) > 0 FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'extra'").await {
                            "ALTER TABLE items DROP COLUMN extra"
                        } else {
                            "ALTER TABLE items ADD COLUMN extra int"
                        }
                    }
                    1 => {
                        if has("SELECT count(*) > 0 FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'remark'").await {
                            "ALTER TABLE items RENAME COLUMN remark TO note"
                        } else {
                            "ALTER TABLE items RENAME COLUMN note TO remark"
                        }
                    }
                    2 => {
                        if renamed_now {
                            "ALTER TABLE things_renamed RENAME TO things"
                        } else {
                            "ALTER TABLE things RENAME TO things_renamed"
                        }
                    }
                    _ => {
                        let t = if renamed_now { "things_renamed" } else { "things" };
                        // No write runs meanwhile: the new table is empty when its keys are
                        // cached anew, so every change to it has keys to invalidate.
                        let _paused = pause.write().await;
                        if c
                            .batch_execute(&format!(
                                "DROP TABLE {t}; CREATE TABLE things (id int PRIMARY KEY, val int NOT NULL); \
                                 ALTER TABLE things REPLICA IDENTITY FULL;"
                            ))
                            .await
                            .is_ok()
                        {
                            set_keys(&redis, prefix, "thing").await;
                            counts.ddl += 1;
                        }
                        continue;
                    }
                };
                if c.batch_execute(ddl).await.is_ok() {
                    counts.ddl += 1;
                }
            }
            _ => {
                sentinel = !sentinel;
                let extra = if sentinel {
                    "\n[[rule]]\nname = \"ping\"\ntable = \"pings\"\nkeys = [\"ping:{id}\"]\n"
                } else {
                    ""
                };
                std::fs::write(dir.join("rules/items.toml"), format!("{RULES}{extra}")).unwrap();
                counts.reloads += 1;
            }
        }
    }
    let _ = stop_tx.send(true);
    counts.transactions = writing.await.unwrap();
    // Back to a sound schema and healthy processes without failpoints, then converge.
    if let Some(c) = connect(&url).await {
        // A rename left in place is fine for the worker, but the check reads `things`.
        let _ = c
            .batch_execute("ALTER TABLE IF EXISTS things_renamed RENAME TO things")
            .await;
    }
    for inst in instances.iter_mut() {
        if let Some(mut child) = inst.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        inst.spawn(None);
    }
    // The target is read once the new active instance streams: its start may still owe
    // invalidations (journaled before, executed after its publication change), and reading the
    // target earlier could let an old confirmation pass for convergence.
    let start = Instant::now();
    'streaming: loop {
        for inst in &instances {
            if let Some((_, body)) = http_get(&inst.addr, "/status").await {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if v["role"] == "active" && v["source_connected"] == true {
                    break 'streaming;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no instance streams; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = connect(&url).await.unwrap();
    let target: String = c
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
        .await
        .unwrap()
        .get(0);
    let target: u64 = target.parse().unwrap();
    let start = Instant::now();
    loop {
        let confirmed: Option<String> = c
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = 'faults'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let open: i64 = c
            .query_one(
                "SELECT count(*) FROM cache_invalidations WHERE status IN ('pending', 'running', 'scheduled')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let confirmed: u64 = confirmed.and_then(|s| s.parse().ok()).unwrap_or(0);
        if confirmed >= target && open == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no convergence: confirmed {confirmed} < {target} or {open} open rows; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every key a committed change asked for is gone: for each row, every version up to its
    // current one.
    let mut expected = Vec::new();
    for (table, key) in [("items", "item"), ("things", "thing")] {
        for row in c
            .query(&format!("SELECT id, val FROM {table}"), &[])
            .await
            .unwrap()
        {
            let (id, val): (i32, i32) = (row.get(0), row.get(1));
            for v in 0..=val {
                expected.push(format!("{prefix}{key}:{id}:v{v}"));
            }
        }
    }
    let mut r = redis.conn().await.unwrap();
    let mut pipe = redis::pipe();
    for k in &expected {
        pipe.exists(k);
    }
    let exists: Vec<bool> = pipe.query_async(&mut r).await.unwrap();
    let stale: Vec<&String> = expected
        .iter()
        .zip(exists)
        .filter(|(_, e)| *e)
        .map(|(k, _)| k)
        .collect();
    let rows: Vec<(String, i64)> = c
        .query(
            "SELECT status, count(*) FROM cache_invalidations GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!(
        "faults injected: {} SIGKILLs ({} of the active instance), {} failpoint aborts, {} Redis restarts, \
         {} PostgreSQL restarts, {} DDL statements, {} rule reloads; {} transactions written",
        counts.kills,
        counts.takeovers,
        counts.failpoint_aborts,
        counts.redis_restarts,
        counts.pg_restarts,
        counts.ddl,
        counts.reloads,
        counts.transactions
    );
    eprintln!(
        "checks: {} keys that committed changes asked to invalidate, {} still cached; journal {rows:?}; slot confirmed past {target}",
        expected.len(),
        stale.len()
    );
    if !stale.is_empty() {
        let family: Vec<String> = c
            .query(
                "SELECT status || ' ' || key_pattern || ' ' || coalesce(reason, '') || ' @' || created_at::text \
                 FROM cache_invalidations WHERE kind LIKE '%pattern%' ORDER BY created_at",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        eprintln!("pattern rows: {family:#?}");
    }
    assert!(
        stale.is_empty(),
        "stale keys: {stale:?}; logs in {}",
        dir.display()
    );
    for mut inst in instances {
        if let Some(mut child) = inst.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(db);
    drop(admin);
}
