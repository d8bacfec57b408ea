//! End-to-end benchmark of cachewarden against baselines measured in the same run.
//!
//! Run with `bench/run.sh` (or `cargo bench --bench pipeline`). It needs local PostgreSQL
//! (wal_level = logical) and Redis, `pg_recvlogical` and `redis-benchmark`.
//!
//! 1. Backlog throughput: N row changes are committed while nothing consumes them; then
//!    `pg_recvlogical` (raw pgoutput streaming to /dev/null) and cachewarden each drain the same
//!    backlog from their own slot. cachewarden's changes/s is printed as a ratio of
//!    pg_recvlogical's, and its keys/s as a ratio of `redis-benchmark` pipelined UNLINK.
//! 2. Journal cost: WAL bytes cachewarden writes while draining, as a fraction of the WAL bytes
//!    of the changes it records, and the journal's share of batch time.
//! 3. Latency: commit → key gone, measured from outside (a probe sets a key, commits an update,
//!    and polls Redis), idle and while a bulk writer loads the database.
//!
//! `CW_BIN` measures another cachewarden binary (an earlier build, for before/after figures).

use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokio_postgres::Client;

mod common;

use common::{
    clear_prefix, connect, env_usize, fresh_database, http_status, lsn, lsn_text, pct, recvlogical,
    spawn_worker, wait_connected, PG, REDIS,
};

const DB: &str = "cw_bench";
const PREFIX: &str = "cwbench:";

/// Sets the row's key, commits `sql` for it, and returns the milliseconds from the commit's
/// return until the key is gone (polled every 100 µs).
async fn probe_once(
    r: &mut redis::aio::MultiplexedConnection,
    db: &Client,
    id: i32,
    sql: &str,
) -> f64 {
    let key = format!("{PREFIX}item:{id}");
    let () = r.set(&key, "cached").await.unwrap();
    db.execute(sql, &[&id]).await.unwrap();
    let committed = Instant::now();
    loop {
        let e: bool = r.exists(&key).await.unwrap();
        if !e {
            return committed.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(30),
            "probe key not invalidated within 30s"
        );
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

/// Drops the benchmark's slots and database even when the run panics: a slot left behind
/// would retain WAL until the disk is full.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-f", "cachewarden-bench/cachewarden.toml"])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let slots = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name IN ('cw_bench', 'cw_bench_raw') AND NOT active";
        let db = format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)");
        for sql in [slots, db.as_str()] {
            let _ = std::process::Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-qAtc",
                    sql,
                ])
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _cleanup = Cleanup;
    let n = env_usize("CW_BENCH_CHANGES", 200_000);
    let tx_size = env_usize("CW_BENCH_TX_SIZE", 100);
    let probes = env_usize("CW_BENCH_PROBES", 500);
    let bin = std::env::var("CW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cachewarden").into());

    // ---- setup
    let admin = connect("postgres").await;
    let db = fresh_database(&admin, DB, &["cw_bench", "cw_bench_raw"]).await;
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, val int NOT NULL, note text NOT NULL DEFAULT 'x');
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {n}) g;
         CHECKPOINT;"
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join("cachewarden-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/items.toml"),
        "[[rule]]\nname = \"item\"\ntable = \"items\"\nkeys = [\"item:{id}\"]\n",
    )
    .unwrap();
    let status_addr = "127.0.0.1:19187";
    std::fs::write(
        dir.join("cachewarden.toml"),
        format!(
            "rules_dir = \"rules\"\n[postgres]\nurl = \"{PG}/{DB}\"\nslot = \"cw_bench\"\npublication = \"cw_bench\"\n\
             [redis]\nurl = \"{REDIS}\"\nkey_prefix = \"{PREFIX}\"\n[status]\nlisten = \"{status_addr}\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let config = dir.join("cachewarden.toml");
    let run = |cmd: &str| {
        std::process::Command::new(&bin)
            .args(["--config", config.to_str().unwrap(), cmd])
            .stdout(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(run("migrate").success());
    // The worker creates its publication and slot and records the rules it runs, as in
    // production; then it stops, and the backlog is written while nothing consumes it. (A
    // slot made behind its back would have unknown rules, and its backlog would be
    // invalidated in whole key families, as it must be after such a gap.)
    {
        let mut first = spawn_worker(&bin, &config);
        wait_connected(status_addr).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &first.id().unwrap().to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), first.wait()).await;
    }
    db.batch_execute("SELECT pg_create_logical_replication_slot('cw_bench_raw', 'pgoutput')")
        .await
        .unwrap();

    // ---- the backlog: n changes in transactions of tx_size rows
    let mut r = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    clear_prefix(&mut r, PREFIX).await;
    let wal_start = lsn(&db).await;
    let t = Instant::now();
    let mut id = 1;
    while id <= n {
        let end = (id + tx_size - 1).min(n);
        db.execute(
            "UPDATE items SET val = val + 1 WHERE id BETWEEN $1 AND $2",
            &[&(id as i32), &(end as i32)],
        )
        .await
        .unwrap();
        id = end + 1;
    }
    let write_secs = t.elapsed().as_secs_f64();
    let wal_end = lsn(&db).await;
    let change_wal = wal_end - wal_start;
    // Every key the changes will invalidate exists, so UNLINK really deletes.
    for chunk in (1..=n).collect::<Vec<_>>().chunks(10_000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.set(format!("{PREFIX}item:{i}"), "cached").ignore();
        }
        let () = p.query_async(&mut r).await.unwrap();
    }

    // ---- baseline 1: pg_recvlogical drains the backlog
    let t = Instant::now();
    // The last `-f` wins: the output goes nowhere.
    let st = recvlogical(DB, "cw_bench_raw")
        .args([
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=cw_bench",
            "--endpos",
            &lsn_text(wal_end),
            "-f",
            "/dev/null",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "pg_recvlogical failed");
    let raw_secs = t.elapsed().as_secs_f64();
    // Done with it: a slot nobody reads would hold WAL forever.
    admin
        .execute("SELECT pg_drop_replication_slot('cw_bench_raw')", &[])
        .await
        .unwrap();

    // ---- cachewarden drains the same backlog
    let mut child = spawn_worker(&bin, &config);
    let spawned = Instant::now();
    // The clock starts when the process answers on its status port (before it connects to
    // PostgreSQL), so start-up work (connect, migrate, schema check) counts against it.
    // It stops when every key is unlinked (the `keys` counter counts executed ones); the
    // confirmation, which trails by the journal's group window, is timed on its own.
    let mut first_answer = None;
    let mut unlinked_at = None;
    let done;
    loop {
        if let Some(s) = http_status(status_addr).await {
            let changes = s["counters"]["changes"].as_u64().unwrap_or(0);
            if first_answer.is_none() {
                first_answer = Some(Instant::now());
            }
            if unlinked_at.is_none() && s["counters"]["keys"].as_u64().unwrap_or(0) >= n as u64 {
                unlinked_at = Some(Instant::now());
            }
            let confirmed = s["confirmed_lsn"].as_str().unwrap_or("0/0");
            let (hi, lo) = confirmed.split_once('/').unwrap();
            let c =
                (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
            if c >= wal_end && changes >= n as u64 {
                done = Some((Instant::now(), s));
                break;
            }
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(300),
            "cachewarden did not drain the backlog in 300s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (confirmed_at, status) = done.unwrap();
    let begun = first_answer.unwrap_or(spawned);
    let cw_secs = (unlinked_at.unwrap_or(confirmed_at) - begun).as_secs_f64();
    let confirm_secs = (confirmed_at - begun).as_secs_f64();
    let worker_wal = lsn(&db).await - wal_end;
    let remaining: usize = {
        let mut p = redis::pipe();
        for i in (1..=n).step_by((n / 1000).max(1)) {
            p.exists(format!("{PREFIX}item:{i}"));
        }
        let v: Vec<bool> = p.query_async(&mut r).await.unwrap();
        v.into_iter().filter(|x| *x).count()
    };
    assert_eq!(remaining, 0, "sampled keys survived the drain");

    // ---- baseline 2: redis-benchmark pipelined UNLINK
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-q",
            "-n",
            "1000000",
            "-P",
            "500",
            "-r",
            "100000000",
            "UNLINK",
            "cwbench-rb:__rand_int__",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let unlink_rps: f64 = text
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .next()
        .unwrap_or(f64::NAN);

    // ---- latency: commit -> key gone, from outside
    let probe = connect(DB).await;
    let mut lat_idle = Vec::with_capacity(probes);
    for i in 0..probes {
        let id = (i % n + 1) as i32;
        let sql = "UPDATE items SET val = val + 1 WHERE id = $1";
        lat_idle.push(probe_once(&mut r, &probe, id, sql).await);
    }
    // Under load: a bulk writer commits 100-row transactions at a fixed pace meanwhile
    // (bounded in rate and total, so a slow consumer cannot make the run grow without limit).
    let load_rate = env_usize("CW_BENCH_LOAD_ROWS_PER_SEC", 20_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bulk = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = connect(DB).await;
            let mut rows = 0u64;
            let mut id = 1usize;
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(100.0 / load_rate as f64));
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(120)
            {
                tick.tick().await;
                let end = (id + 99).min(n);
                c.execute(
                    "UPDATE items SET val = val + 1 WHERE id BETWEEN $1 AND $2",
                    &[&(id as i32), &(end as i32)],
                )
                .await
                .unwrap();
                rows += (end - id + 1) as u64;
                id = if end >= n { 1 } else { end + 1 };
            }
            rows
        })
    };
    let load_start = Instant::now();
    let mut lat_load = Vec::with_capacity(probes);
    for i in 0..probes {
        let id = (n - (i % n)) as i32;
        let sql = "UPDATE items SET note = note WHERE id = $1";
        lat_load.push(probe_once(&mut r, &probe, id, sql).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bulk_rows = bulk.await.unwrap();
    let load_secs = load_start.elapsed().as_secs_f64();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    lat_idle.sort_by(f64::total_cmp);
    lat_load.sort_by(f64::total_cmp);
    let cw_rate = n as f64 / cw_secs;
    let raw_rate = n as f64 / raw_secs;
    let journal_us = status["counters"]["journal_us"].as_f64().unwrap_or(0.0);
    let redis_us = status["counters"]["redis_us"].as_f64().unwrap_or(0.0);
    let journal_rows = status["counters"]["journal_rows"].as_u64().unwrap_or(0);
    let batches = status["counters"]["batches"].as_u64().unwrap_or(0);

    println!(
        "cachewarden pipeline benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("backlog: {n} row changes in {} transactions of {tx_size} rows (written in {write_secs:.2}s)", n.div_ceil(tx_size));
    println!("  baseline pg_recvlogical (pgoutput -> /dev/null): {raw_rate:>10.0} changes/s ({raw_secs:.2}s)");
    println!("  cachewarden (start-up, decode, plan, UNLINK): {cw_rate:>10.0} changes/s ({cw_secs:.2}s)  = {:.2}x pg_recvlogical", cw_rate / raw_rate);
    println!("  ... and journaled and confirmed: {:>10.0} changes/s ({confirm_secs:.2}s)  = {:.2}x pg_recvlogical", n as f64 / confirm_secs, n as f64 / confirm_secs / raw_rate);
    println!("  baseline redis-benchmark -P 500 UNLINK: {unlink_rps:>10.0} keys/s");
    println!("  cachewarden keys unlinked:              {cw_rate:>10.0} keys/s  = {:.2}x redis-benchmark", cw_rate / unlink_rps);
    println!("  batches: {batches}, journal rows: {journal_rows}");
    println!("journal cost:");
    println!("  WAL written by cachewarden while draining: {worker_wal} bytes = {:.2}x the {change_wal} WAL bytes of the changes", worker_wal as f64 / change_wal as f64);
    println!("  time in journal statements: {:.2}s, in Redis: {:.2}s, of {cw_secs:.2}s wall (journal insert overlaps Redis)", journal_us / 1e6, redis_us / 1e6);
    println!("latency, commit -> key gone (external probe, {probes} samples each):");
    println!(
        "  idle:       p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&lat_idle, 0.5),
        pct(&lat_idle, 0.99),
        pct(&lat_idle, 1.0)
    );
    println!(
        "  under load ({:.0} background row changes/s, paced): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        bulk_rows as f64 / load_secs,
        pct(&lat_load, 0.5),
        pct(&lat_load, 0.99),
        pct(&lat_load, 1.0)
    );
    clear_prefix(&mut r, PREFIX).await;
    drop(db);
    drop(probe);
    for slot in ["cw_bench", "cw_bench_raw"] {
        let _ = admin
            .execute("SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await;
    }
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await;
    let _ = admin.batch_execute("CHECKPOINT").await;
}
