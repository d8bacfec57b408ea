//! The hot path against baselines measured in the same run, with PostgreSQL's default
//! settings (`synchronous_commit = on`, nothing tuned):
//!
//! 1. **Lag** — single-row `UPDATE` transactions are committed at 100, 1,000 and 10,000 tx/s
//!    by 32 application connections. For each change, the time from its commit returning to
//!    the application until cachewarden's `UNLINK` of its key (a Redis keyspace event), against
//!    the time until a raw `pg_recvlogical` (test_decoding, on its own slot, on the same load)
//!    receives the change.
//! 2. **Journal cost** — every WAL record written during each phase is attributed with
//!    `pg_waldump`: to the application (transactions touching its tables) or to the worker
//!    (transactions touching `cache_*`/`cachewarden_*` tables). Printed as the worker's WAL
//!    bytes and commits per application transaction, and as fractions of the application's.
//! 3. **Patterns** — with 1,000,000 other keys in Redis, a rule with a pattern fires 10 times a
//!    second (one course update each) beside 1,000 exact-key tx/s: the pattern's lag as a
//!    multiple of one `SCAN` pass over the same keyspace (measured here), and the exact keys'
//!    lag against their lag at the same rate on the same keyspace with no pass running,
//!    measured before and after the passes (pooled). A raw `SCAN` pass is also timed under the same exact-key load,
//!    with the exact keys' lag beside it: the same-conditions baseline for passes.
//!
//! `CW_HOT_SECS` (10) sets each rate phase's length, `CW_HOT_RATES` ("100,1000,10000") the
//! rates, `CW_HOT_PATTERN_SECS` (30, or `CW_HOT_SECS` if longer) the length of each pattern
//! phase (no pass, raw passes, the worker's passes, no pass again), `CW_HOT_FILLER` (1000000) the other
//! keys, `CW_BIN` another cachewarden binary to measure (an earlier build, for before/after
//! figures). Run with `bench/run.sh hotpath`.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    clear_prefix, connect, env_usize, fresh_database, http_status, lsn, lsn_text, pct, psql,
    recvlogical, scan_keys, set_keys, spawn_worker, unless_zero, wait_connected, PG, REDIS,
};
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;

const DB: &str = "cw_hot";
const PREFIX: &str = "cwhot:";
const SLOT: &str = "cw_hot";
const RAW_SLOT: &str = "cw_hot_raw";
const HOLD_SLOT: &str = "cw_hot_hold";
const CONNS: usize = 32;
const COURSES: usize = 10_000;
const STATUS: &str = "127.0.0.1:19188";

/// When each change happened, in nanoseconds since the run's start (0: not yet), by row id.
struct Times(Vec<AtomicU64>);

impl Times {
    fn new(n: usize) -> Self {
        Times((0..=n).map(|_| AtomicU64::new(0)).collect())
    }
    fn set_once(&self, id: usize, t: u64) {
        if let Some(a) = self.0.get(id) {
            let _ = a.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
    fn get(&self, id: usize) -> Option<u64> {
        self.0
            .get(id)
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|t| *t > 0)
    }
}

struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What the run observes.
struct Seen {
    clock: Clock,
    /// Item commits returned to the application.
    sent: Times,
    /// Item keys unlinked (keyspace events).
    cw: Times,
    /// Item changes received by pg_recvlogical.
    raw: Times,
    /// Course commits returned, and their pattern's key unlinked.
    course_sent: Times,
    course_gone: Times,
}

/// Drops the run's slots and database and restores Redis' notification setting, even when the
/// run panics: a slot left behind would retain WAL until the disk is full.
struct Cleanup {
    notify_events: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-f", "cachewarden-hotpath/cachewarden.toml"])
            .status();
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("slot {RAW_SLOT}")])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name IN ('{SLOT}', '{RAW_SLOT}', '{HOLD_SLOT}') AND NOT active"
            ),
        );
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        );
        let _ = std::process::Command::new("redis-cli")
            .args([
                "CONFIG",
                "SET",
                "notify-keyspace-events",
                &self.notify_events,
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// Commits `rate` single-row updates per second for `secs`, over `conns`; ids come from
/// `next` (each change its own row and key). Returns how many were committed.
async fn load(
    conns: &[Arc<Client>],
    rate: f64,
    secs: f64,
    next: &Arc<AtomicUsize>,
    seen: &Arc<Seen>,
) -> usize {
    let per = rate / conns.len() as f64;
    let mut tasks = Vec::new();
    // Each connection's ticks are offset from the others', so the load is a steady stream, not
    // bursts of one commit per connection.
    let period = Duration::from_secs_f64(1.0 / per);
    let begin = tokio::time::Instant::now();
    for (i, c) in conns.iter().enumerate() {
        let first = begin + period.mul_f64(i as f64 / conns.len() as f64);
        let (c, next, seen) = (c.clone(), next.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            // Prepared once, as an application's driver or pool does: a statement given as text
            // is parsed anew on every call, a second round trip and twice the server's work
            // per transaction, which capped this load below 10,000 tx/s on two cores.
            let update = c
                .prepare("UPDATE items SET val = val + 1 WHERE id = $1")
                .await
                .unwrap();
            let mut tick = tokio::time::interval_at(first, period);
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed().as_secs_f64() < secs {
                tick.tick().await;
                let id = next.fetch_add(1, Ordering::Relaxed);
                assert!(
                    id < seen.sent.0.len(),
                    "more changes than rows: size the table up"
                );
                c.execute(&update, &[&(id as i32)]).await.unwrap();
                seen.sent.set_once(id, seen.clock.ns());
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// 1,000 exact-key tx/s for `secs` with nothing else going on: their lags, sorted, and how
/// many keys were never unlinked.
async fn exact_alone(
    conns: &[Arc<Client>],
    secs: f64,
    next: &Arc<AtomicUsize>,
    seen: &Arc<Seen>,
) -> (Vec<f64>, usize) {
    let first = next.load(Ordering::Relaxed);
    load(conns, 1000.0, secs, next, seen).await;
    let last = next.load(Ordering::Relaxed);
    drain(&seen.sent, &seen.cw, first..last, Duration::from_secs(60)).await;
    lags(&seen.sent, &seen.cw, first..last)
}

/// Lags in milliseconds of ids `range` from `sent` to `done`, sorted; and how many never came.
fn lags(sent: &Times, done: &Times, range: std::ops::Range<usize>) -> (Vec<f64>, usize) {
    let mut out = Vec::with_capacity(range.len());
    let mut missing = 0;
    for id in range {
        let Some(s) = sent.get(id) else { continue };
        match done.get(id) {
            Some(d) => out.push((d as f64 - s as f64) / 1e6),
            None => missing += 1,
        }
    }
    out.sort_by(f64::total_cmp);
    (out, missing)
}

/// WAL bytes and commit records by whose transaction wrote them.
#[derive(Debug, Default)]
struct WalShare {
    app_bytes: u64,
    app_commits: u64,
    worker_bytes: u64,
    worker_commits: u64,
    other_bytes: u64,
}

/// Attributes every WAL record in `from..to` with pg_waldump: a transaction that touched one
/// of `app` relfilenodes is the application's, one of `worker`'s the worker's.
async fn attribute_wal(
    db: &Client,
    db_oid: u32,
    from: u64,
    to: u64,
    app: &HashSet<u32>,
    worker: &HashSet<u32>,
) -> WalShare {
    let dir: String = db
        .query_one("SELECT current_setting('data_directory')", &[])
        .await
        .unwrap()
        .get(0);
    let out = tokio::process::Command::new("/usr/lib/postgresql/15/bin/pg_waldump")
        .args([
            "-p",
            &format!("{dir}/pg_wal"),
            "-s",
            &lsn_text(from),
            "-e",
            &lsn_text(to),
        ])
        .output()
        .await
        .expect("pg_waldump");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut records: Vec<(u32, u64, bool)> = Vec::new();
    let (mut app_x, mut worker_x) = (HashSet::new(), HashSet::new());
    let prefix = format!("/{db_oid}/");
    for line in text.lines() {
        let Some(len) = line
            .split_once("len (rec/tot):")
            .and_then(|(_, r)| r.split_once('/'))
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let xid = line
            .split_once("tx:")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let commit = line.starts_with("rmgr: Transaction") && line.contains("desc: COMMIT");
        for part in line.split("rel 1663").skip(1) {
            let Some(rest) = part.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let node: u32 = rest
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap_or(0);
            if app.contains(&node) {
                app_x.insert(xid);
            } else if worker.contains(&node) {
                worker_x.insert(xid);
            }
        }
        records.push((xid, len, commit));
    }
    let mut share = WalShare::default();
    for (xid, len, commit) in records {
        if xid != 0 && worker_x.contains(&xid) {
            share.worker_bytes += len;
            share.worker_commits += commit as u64;
        } else if xid != 0 && app_x.contains(&xid) {
            share.app_bytes += len;
            share.app_commits += commit as u64;
        } else {
            share.other_bytes += len;
        }
    }
    share
}

/// The relfilenodes of the application's tables and of the worker's, with indexes and TOAST.
async fn relfilenodes(db: &Client) -> (HashSet<u32>, HashSet<u32>) {
    let rows = db
        .query(
            "WITH t AS (SELECT oid, relname, reltoastrelid FROM pg_class \
                        WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace), \
                  r AS (SELECT oid AS x, relname AS n FROM t \
                        UNION ALL SELECT i.indexrelid, t.relname FROM pg_index i JOIN t ON t.oid = i.indrelid \
                        UNION ALL SELECT reltoastrelid, relname FROM t WHERE reltoastrelid <> 0 \
                        UNION ALL SELECT i.indexrelid, t.relname FROM t JOIN pg_index i ON i.indrelid = t.reltoastrelid) \
             SELECT pg_relation_filenode(x)::oid, n::text FROM r WHERE pg_relation_filenode(x) IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let (mut app, mut worker) = (HashSet::new(), HashSet::new());
    for r in rows {
        let node: u32 = r.get(0);
        let name: String = r.get(1);
        if name == "items" || name == "courses" {
            app.insert(node);
        } else if name.starts_with("cache_") || name.starts_with("cachewarden_") {
            worker.insert(node);
        }
    }
    (app, worker)
}

/// Waits until every id in `range` that was sent is also in `done`, or `limit` passes.
async fn drain(sent: &Times, done: &Times, range: std::ops::Range<usize>, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if range
            .clone()
            .all(|id| sent.get(id).is_none() || done.get(id).is_some())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The worker's `SCAN` page size: `[redis] scan_count`, from the environment when set there
/// (`CACHEWARDEN_REDIS_SCAN_COUNT`, which the worker inherits), else its default.
fn scan_count() -> usize {
    env_usize(
        "CACHEWARDEN_REDIS_SCAN_COUNT",
        cachewarden::config::default_scan_count(),
    )
}

/// One `SCAN` pass over the whole keyspace at the worker's page size, in ms.
async fn scan_pass(r: &mut redis::aio::MultiplexedConnection) -> f64 {
    let t = Instant::now();
    scan_keys(r, &format!("{PREFIX}catalog:*"), scan_count()).await;
    t.elapsed().as_secs_f64() * 1000.0
}

/// How much a `/status` counter grew between two readings.
fn counter_delta(before: &serde_json::Value, after: &serde_json::Value, counter: &str) -> f64 {
    let read = |v: &serde_json::Value| v["counters"][counter].as_f64().unwrap_or(0.0);
    read(after) - read(before)
}

/// One line of sorted lags: p50, p99, max, and a note.
fn print_lags(who: &str, sorted: &[f64], note: &str) {
    println!(
        "  lag {who} p50 {}  p99 {}  max {}{note}",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99)),
        ms(pct(sorted, 1.0)),
    );
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_usize("CW_HOT_SECS", 10) as f64;
    let rates: Vec<f64> = std::env::var("CW_HOT_RATES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let filler = env_usize("CW_HOT_FILLER", 1_000_000);
    // The pattern phases are longer by default: a p99 needs a few hundred firings at 10/s.
    let pattern_secs = env_usize("CW_HOT_PATTERN_SECS", (secs as usize).max(30)) as f64;
    let bin = std::env::var("CW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cachewarden").into());
    // Enough rows that every change in the run has its own row and key.
    // The four pattern phases each run 1,000 tx/s.
    let rows = ((rates.iter().sum::<f64>() * secs + 4000.0 * pattern_secs) * 1.2) as usize + 1000;

    let mut r = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let old: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut r)
        .await
        .unwrap();
    let _cleanup = Cleanup {
        notify_events: old.get(1).cloned().unwrap_or_default(),
    };

    // ---- set-up: a database, its tables, the worker's schema, publication and slots
    let admin = connect("postgres").await;
    let db = fresh_database(&admin, DB, &[SLOT, RAW_SLOT, HOLD_SLOT]).await;
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {rows}) g;
         CREATE TABLE courses (id int PRIMARY KEY, title text NOT NULL);
         INSERT INTO courses SELECT g, 'c' FROM generate_series(1, {COURSES}) g;
"
    ))
    .await
    .unwrap();
    for sql in [
        "VACUUM ANALYZE items",
        "VACUUM ANALYZE courses",
        "CHECKPOINT",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    let db_oid: u32 = db
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dir = std::env::temp_dir().join("cachewarden-hotpath");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/bench.toml"),
        "[[rule]]\nname = \"item\"\ntable = \"items\"\nkeys = [\"item:{id}\"]\n\n\
         [[rule]]\nname = \"course-pages\"\ntable = \"courses\"\npatterns = [\"catalog:{id}:page:*\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cachewarden.toml"),
        format!(
            "rules_dir = \"rules\"\n[postgres]\nurl = \"{PG}/{DB}\"\nslot = \"{SLOT}\"\npublication = \"{SLOT}\"\n\
             [redis]\nurl = \"{REDIS}\"\nkey_prefix = \"{PREFIX}\"\n[status]\nlisten = \"{STATUS}\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let config = dir.join("cachewarden.toml");
    let migrated = std::process::Command::new(&bin)
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(migrated.success(), "cachewarden migrate");
    db.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{RAW_SLOT}', 'test_decoding')"
    ))
    .await
    .unwrap();
    let (app_nodes, worker_nodes) = relfilenodes(&db).await;

    // ---- Redis: every item key and the filler keyspace
    clear_prefix(&mut r, PREFIX).await;
    let keys: Vec<String> = (1..=rows).map(|i| format!("{PREFIX}item:{i}")).collect();
    set_keys(&mut r, &keys, "cached").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Eg")
        .query_async(&mut r)
        .await
        .unwrap();

    let seen = Arc::new(Seen {
        clock: Clock(Instant::now()),
        sent: Times::new(rows),
        cw: Times::new(rows),
        raw: Times::new(rows),
        course_sent: Times::new(COURSES),
        course_gone: Times::new(COURSES),
    });

    // ---- observers: keyspace events for the worker, pg_recvlogical's output for the baseline.
    // Tasks on the bench's runtime, not threads of their own: a thread woken per message took
    // so much of the two cores at 10,000 tx/s that both consumers' tails grew 10-40x (paired
    // 10,000 tx/s runs: raw p99 66-129 ms against 4.7-9.0 ms).
    let mut pubsub = redis::Client::open(REDIS)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.psubscribe("__keyevent@*__:del").await.unwrap();
    tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut stream = pubsub.on_message();
            while let Some(m) = stream.next().await {
                let Ok(key) = m.get_payload::<String>() else {
                    continue;
                };
                let Some(rest) = key.strip_prefix(PREFIX) else {
                    continue;
                };
                let t = seen.clock.ns();
                if let Some(id) = rest.strip_prefix("item:") {
                    if let Ok(id) = id.parse() {
                        seen.cw.set_once(id, t);
                    }
                } else if let Some(rest) = rest.strip_prefix("catalog:") {
                    if let Some(id) = rest.split(':').next().and_then(|i| i.parse().ok()) {
                        seen.course_gone.set_once(id, t);
                    }
                }
            }
        }
    });
    let mut raw = tokio::process::Command::from(recvlogical(DB, RAW_SLOT))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("pg_recvlogical");
    let raw_out = raw.stdout.take().unwrap();
    tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut lines = tokio::io::BufReader::new(raw_out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, rest)) = line.split_once("public.items: UPDATE: id[integer]:") {
                    let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    if let Ok(id) = id.parse() {
                        seen.raw.set_once(id, seen.clock.ns());
                    }
                }
            }
        }
    });

    let mut worker = spawn_worker(&bin, &config);
    wait_connected(STATUS).await;

    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(Arc::new(connect(DB).await));
    }
    let next = Arc::new(AtomicUsize::new(1));
    // Keep the phases' WAL until pg_waldump has read it.
    db.batch_execute(&format!(
        "SELECT pg_create_physical_replication_slot('{HOLD_SLOT}', true)"
    ))
    .await
    .unwrap();

    println!(
        "cachewarden hot-path benchmark ({} cores, synchronous_commit = {}, {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        db.query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        bin
    );
    println!("lag: application commit returned -> key unlinked (cachewarden) / change received (raw pg_recvlogical, same load)");
    println!("journal: WAL and commits of the worker's transactions per application transaction (pg_waldump)");
    let mut lag_at: HashMap<u64, (f64, f64)> = HashMap::new();
    for &rate in &rates {
        let first = next.load(Ordering::Relaxed);
        let from = lsn(&db).await;
        let t = Instant::now();
        let before = http_status(STATUS).await.unwrap_or_default();
        let committed = load(&conns, rate, secs, &next, &seen).await;
        let achieved = committed as f64 / t.elapsed().as_secs_f64();
        let after = http_status(STATUS).await.unwrap_or_default();
        let last = next.load(Ordering::Relaxed);
        drain(&seen.sent, &seen.cw, first..last, Duration::from_secs(60)).await;
        drain(&seen.sent, &seen.raw, first..last, Duration::from_secs(10)).await;
        // The trailing journal writes within its window: give it time to land.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let to = lsn(&db).await;
        let (cw, cw_missing) = lags(&seen.sent, &seen.cw, first..last);
        let (rw, rw_missing) = lags(&seen.sent, &seen.raw, first..last);
        let wal = attribute_wal(&db, db_oid, from, to, &app_nodes, &worker_nodes).await;
        let app_tx = wal.app_commits.max(1) as f64;
        println!("{rate:.0} tx/s (achieved {achieved:.0}, {committed} transactions):");
        print_lags(
            "cachewarden:   ",
            &cw,
            &unless_zero(cw_missing, "keys NOT unlinked"),
        );
        print_lags(
            "pg_recvlogical:",
            &rw,
            &unless_zero(rw_missing, "not received"),
        );
        println!(
            "  => p50 {:+.2} ms over raw; p99 {:.2}x raw",
            pct(&cw, 0.5) - pct(&rw, 0.5),
            pct(&cw, 0.99) / pct(&rw, 0.99)
        );
        println!(
            "  WAL: application {} B ({:.0} B/tx, {} commits); worker {} B ({:.1} B/app tx, {} commits); other {} B",
            wal.app_bytes,
            wal.app_bytes as f64 / app_tx,
            wal.app_commits,
            wal.worker_bytes,
            wal.worker_bytes as f64 / app_tx,
            wal.worker_commits,
            wal.other_bytes
        );
        println!(
            "  => worker WAL {:.3}x the application's; {:.4} worker commits per application transaction",
            wal.worker_bytes as f64 / wal.app_bytes.max(1) as f64,
            wal.worker_commits as f64 / app_tx
        );
        let delta = |k: &str| counter_delta(&before, &after, k);
        println!(
            "  worker's own view: {:.0} batches, {:.1} changes/batch, {:.3} ms in Redis/batch; lag (WAL commit time -> done) p50 {} p99 {}",
            delta("batches"),
            delta("changes") / delta("batches").max(1.0),
            delta("redis_us") / 1000.0 / delta("batches").max(1.0),
            ms(after["lag_ms_p50"].as_f64().unwrap_or(f64::NAN)),
            ms(after["lag_ms_p99"].as_f64().unwrap_or(f64::NAN)),
        );
        lag_at.insert(rate as u64, (pct(&cw, 0.5), pct(&cw, 0.99)));
    }

    // ---- patterns: a big keyspace, a pattern rule firing 10/s beside 1,000 exact-key tx/s
    let fill: Vec<String> = (0..filler).map(|i| format!("{PREFIX}filler:{i}")).collect();
    set_keys(&mut r, &fill, "x").await;
    drop(fill);
    let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut r).await.unwrap();
    // The exact keys' lag with this keyspace and no pass running: the baseline for "unchanged"
    // beside passes, under the same conditions (phase 1 ran before the other keys were there).
    // Measured before the passes and again after them, and pooled, so what drifts over the run
    // (Redis finishing its rehash after the fill, the table's growth) falls on both sides.
    let (alone_before, alone_before_missing) =
        exact_alone(&conns, pattern_secs, &next, &seen).await;
    // Idle passes are timed only now: right after the fill, Redis is still rehashing its
    // grown table, and a SCAN then walks both tables (passes measured there were up to 45%
    // longer than later ones under load).
    let mut passes: Vec<f64> = Vec::new();
    for _ in 0..3 {
        passes.push(scan_pass(&mut r).await);
    }
    passes.sort_by(f64::total_cmp);
    let pass = passes[1];
    // The same keyspace under the same exact-key load, with raw SCAN passes back to back from
    // this process instead of the worker's: what a pass takes on a busy machine, and what any
    // continuous pass costs the exact keys (Redis is single-threaded), before the worker's.
    let first = next.load(Ordering::Relaxed);
    let scanning = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let raw_passes = tokio::spawn({
        let (mut r, scanning) = (
            redis::Client::open(REDIS)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
            scanning.clone(),
        );
        async move {
            let mut passes = Vec::new();
            while scanning.load(Ordering::Relaxed) {
                passes.push(scan_pass(&mut r).await);
            }
            passes
        }
    });
    load(&conns, 1000.0, pattern_secs, &next, &seen).await;
    scanning.store(false, Ordering::Relaxed);
    let mut loaded = raw_passes.await.unwrap();
    loaded.sort_by(f64::total_cmp);
    let loaded_pass = pct(&loaded, 0.5);
    let last = next.load(Ordering::Relaxed);
    drain(&seen.sent, &seen.cw, first..last, Duration::from_secs(60)).await;
    let (beside_raw, _) = lags(&seen.sent, &seen.cw, first..last);

    let first = next.load(Ordering::Relaxed);
    let before = http_status(STATUS).await.unwrap_or_default();
    let courses = tokio::spawn({
        let (seen, c, mut r) = (seen.clone(), connect(DB).await, r.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let start = Instant::now();
            let mut id = 0usize;
            while start.elapsed().as_secs_f64() < pattern_secs && id < COURSES {
                tick.tick().await;
                id += 1;
                let () = r
                    .set(format!("{PREFIX}catalog:{id}:page:1"), "cached")
                    .await
                    .unwrap();
                c.execute(
                    "UPDATE courses SET title = title || 'x' WHERE id = $1",
                    &[&(id as i32)],
                )
                .await
                .unwrap();
                seen.course_sent.set_once(id, seen.clock.ns());
            }
            id
        }
    });
    let committed = load(&conns, 1000.0, pattern_secs, &next, &seen).await;
    let fired = courses.await.unwrap();
    // The worker's passes while the rule fires: how many, and their mean length.
    let after = http_status(STATUS).await.unwrap_or_default();
    let delta = |k: &str| counter_delta(&before, &after, k);
    let worker_passes = delta("pattern_passes");
    let worker_pass = delta("pattern_pass_us") / 1000.0 / worker_passes.max(1.0);
    let deferred = delta("pattern_deferred_us") / 1000.0 / worker_passes.max(1.0);
    let joins = delta("pattern_joins");
    let last = next.load(Ordering::Relaxed);
    drain(
        &seen.course_sent,
        &seen.course_gone,
        1..fired + 1,
        Duration::from_secs(120),
    )
    .await;
    drain(&seen.sent, &seen.cw, first..last, Duration::from_secs(60)).await;
    let (exact, exact_missing) = lags(&seen.sent, &seen.cw, first..last);
    let (pat, pat_missing) = lags(&seen.course_sent, &seen.course_gone, 1..fired + 1);
    // The second baseline, once the worker's last pass is done.
    let start = Instant::now();
    while http_status(STATUS).await.unwrap_or_default()["passes_waiting"].as_u64() != Some(0)
        && start.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (alone_after, alone_after_missing) = exact_alone(&conns, pattern_secs, &next, &seen).await;
    let mut no_pass = [alone_before.as_slice(), alone_after.as_slice()].concat();
    no_pass.sort_by(f64::total_cmp);
    println!(
        "patterns: {dbsize} keys in Redis; one SCAN pass (COUNT {}, the worker's) takes {} (median of 3)",
        scan_count(),
        ms(pass)
    );
    println!(
        "  under the same 1,000 exact-key tx/s, a raw SCAN pass takes {} (median of {}), and the exact keys' lag beside those passes is p50 {}  p99 {}",
        ms(loaded_pass),
        loaded.len(),
        ms(pct(&beside_raw, 0.5)),
        ms(pct(&beside_raw, 0.99)),
    );
    println!(
        "  the worker ran {worker_passes:.0} passes meanwhile, {} each ({} of it deferring to the stream) = {:.2} loaded raw passes; {joins:.0} patterns joined a running pass",
        ms(worker_pass),
        ms(deferred),
        worker_pass / loaded_pass
    );
    println!(
        "  pattern rule fired {fired} times (10/s): lag p50 {} = {:.2} idle passes = {:.2} loaded passes, p99 {} = {:.2} idle = {:.2} loaded = {:.2} of the worker's passes, max {}{}",
        ms(pct(&pat, 0.5)),
        pct(&pat, 0.5) / pass,
        pct(&pat, 0.5) / loaded_pass,
        ms(pct(&pat, 0.99)),
        pct(&pat, 0.99) / pass,
        pct(&pat, 0.99) / loaded_pass,
        pct(&pat, 0.99) / worker_pass,
        ms(pct(&pat, 1.0)),
        unless_zero(pat_missing, "NOT invalidated")
    );
    let (p50, p99) = (pct(&no_pass, 0.5), pct(&no_pass, 0.99));
    let (p50_first, p99_first) = lag_at.get(&1000).copied().unwrap_or((f64::NAN, f64::NAN));
    println!(
        "  exact keys beside it ({committed} tx at 1000/s): lag p50 {}  p99 {}{}  (same keyspace, no pass, before and after the passes pooled: p50 {}  p99 {}{}, apart p50 {} / {}; phase 1: p50 {}  p99 {}) => p50 {:+.3} ms = {:.2}x, p99 {:.2}x",
        ms(pct(&exact, 0.5)),
        ms(pct(&exact, 0.99)),
        unless_zero(exact_missing, "keys NOT unlinked"),
        ms(p50),
        ms(p99),
        unless_zero(alone_before_missing + alone_after_missing, "keys NOT unlinked"),
        ms(pct(&alone_before, 0.5)),
        ms(pct(&alone_after, 0.5)),
        ms(p50_first),
        ms(p99_first),
        pct(&exact, 0.5) - p50,
        pct(&exact, 0.5) / p50,
        pct(&exact, 0.99) / p99
    );
    println!(
        "  => beside the worker's passes vs beside raw passes: p50 {:.2}x, p99 {:.2}x",
        pct(&exact, 0.5) / pct(&beside_raw, 0.5),
        pct(&exact, 0.99) / pct(&beside_raw, 0.99)
    );

    let _ = worker.start_kill();
    let _ = worker.wait().await;
    let _ = raw.start_kill();
    let _ = raw.wait().await;
    clear_prefix(&mut r, PREFIX).await;
}
