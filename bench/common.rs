//! Helpers the benchmarks share: connections, WAL positions, percentiles, the worker's status.

#![allow(dead_code)]

use tokio_postgres::{Client, NoTls};

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379/0";

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn connect(db: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(&format!("{PG}/{db}"), NoTls)
        .await
        .expect("postgres");
    tokio::spawn(conn);
    c
}

/// The current WAL insert position, in bytes.
pub async fn lsn(c: &Client) -> u64 {
    let s: String = c
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

pub fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The `q` quantile of sorted values (NaN when there are none).
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub async fn http_status(addr: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /status HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    serde_json::from_str(buf.split_once("\r\n\r\n")?.1).ok()
}

/// Every key matching `pattern`, by a full `SCAN` pass (`COUNT count`).
pub async fn scan_keys(
    r: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    count: usize,
) -> Vec<String> {
    let mut cursor = 0u64;
    let mut all = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(r)
            .await
            .unwrap();
        all.extend(keys);
        if next == 0 {
            return all;
        }
        cursor = next;
    }
}

/// Unlinks every key under `prefix`.
pub async fn clear_prefix(r: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys = scan_keys(r, &format!("{prefix}*"), 10_000).await;
    for chunk in keys.chunks(10_000) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(r)
            .await
            .unwrap();
    }
}

/// `pg_recvlogical` streaming from `slot` of database `db` to stdout.
pub fn recvlogical(db: &str, slot: &str) -> std::process::Command {
    let mut c = std::process::Command::new("pg_recvlogical");
    c.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        db,
        "--slot",
        slot,
        "--start",
        "-f",
        "-",
    ]);
    c
}

/// Runs SQL through `psql` as the superuser (for clean-up from a `Drop`, outside the runtime).
pub fn psql(db: &str, sql: &str) {
    let _ = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qAtc", sql])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Drops `slots` and recreates database `db` empty; returns a connection to it.
pub async fn fresh_database(admin: &Client, db: &str, slots: &[&str]) -> Client {
    for slot in slots {
        let _ = admin
            .execute(
                "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await;
    }
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    connect(db).await
}

/// Starts `cachewarden run` with `config`.
pub fn spawn_worker(bin: &str, config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .args(["--config", config.to_str().unwrap(), "run"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until the worker answering at `addr` streams from its source.
pub async fn wait_connected(addr: &str) {
    let t = std::time::Instant::now();
    while http_status(addr)
        .await
        .is_none_or(|s| s["source_connected"].as_bool() != Some(true))
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the worker never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sets every key to `value`, pipelined in chunks.
pub async fn set_keys(r: &mut redis::aio::MultiplexedConnection, keys: &[String], value: &str) {
    for chunk in keys.chunks(20_000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("SET").arg(k).arg(value).ignore();
        }
        let () = p.query_async(r).await.unwrap();
    }
}

/// " (n what)" when n > 0: a count the reader must not miss.
pub fn unless_zero(n: usize, what: &str) -> String {
    if n > 0 {
        format!("  ({n} {what})")
    } else {
        String::new()
    }
}
