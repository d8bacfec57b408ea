//! Bulk warming speed against a pipelined `redis-benchmark` SET baseline measured in the same
//! run. Run with `bench/run.sh warm` (or `cargo bench --bench warm`).
//!
//! A table of CW_WARM_ROWS rows (default 1,000,000) is warmed with `cachewarden warm` for a
//! `refresh` rule (value: the row as JSON text, read by the rule's warm query), then the same
//! number of pipelined SETs of similar values is timed with redis-benchmark.

use std::process::Stdio;
use std::time::Instant;

use tokio_postgres::NoTls;

const DB: &str = "cw_bench_warm";
const PG: &str = "postgres://postgres@127.0.0.1:5432";
const PREFIX: &str = "cwbw:";

fn clear_redis() {
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("redis-cli --scan --pattern '{PREFIX}*' | xargs -r -n 10000 redis-cli unlink > /dev/null"),
        ])
        .status();
    let _ = std::process::Command::new("sh")
        .args(["-c", "redis-cli --scan --pattern 'cwbw-rb:*' | xargs -r -n 10000 redis-cli unlink > /dev/null"])
        .status();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("CW_WARM_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let bin = env!("CARGO_BIN_EXE_cachewarden");
    let (admin, conn) = tokio_postgres::connect(&format!("{PG}/postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&format!("{PG}/{DB}"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "CREATE TABLE courses (id bigint PRIMARY KEY, slug text NOT NULL, title text NOT NULL, price numeric(10,2) NOT NULL);
         INSERT INTO courses SELECT g, 'course-' || g, 'Course number ' || g, (g % 100) + 0.99 FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE courses").await.unwrap();
    let dir = std::env::temp_dir().join("cachewarden-bench-warm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/courses.toml"),
        "[[rule]]\nname = \"course\"\ntable = \"courses\"\nstrategy = \"refresh\"\nttl = 3600\n\
         [rule.warm]\nkey = \"course:{id}\"\n\
         query = \"SELECT row_to_json(c)::text FROM courses c WHERE c.id = $1\"\nargs = [\"id\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cachewarden.toml"),
        format!(
            "[postgres]\nurl = \"{PG}/{DB}\"\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\nkey_prefix = \"{PREFIX}\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let config = dir.join("cachewarden.toml");
    clear_redis();
    let value_len: i32 = db
        .query_one(
            "SELECT length(row_to_json(c)::text) FROM courses c WHERE id = $1",
            &[&(rows / 2)],
        )
        .await
        .unwrap()
        .get(0);

    // Baseline: redis-benchmark pipelined SETs of the same count and value size.
    let rb = std::process::Command::new("redis-benchmark")
        .args([
            "-q",
            "-t",
            "set",
            "-n",
            &rows.to_string(),
            "-P",
            "64",
            "-d",
            &value_len.to_string(),
            "-r",
            &rows.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rb.stdout);
    let baseline: f64 = text
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .next()
        .unwrap_or(f64::NAN);
    println!("cachewarden warm benchmark ({rows} rows, values of {value_len} bytes, 2 cores)");
    println!("  baseline redis-benchmark SET -P 64 -d {value_len}: {baseline:>10.0} keys/s");
    let rule = "[[rule]]\nname = \"course\"\ntable = \"courses\"\nstrategy = \"refresh\"\nttl = 3600\n\
                [rule.warm]\nkey = \"course:{id}\"\n\
                query = \"SELECT row_to_json(c)::text FROM courses c WHERE c.id = $1\"\nargs = [\"id\"]\n";
    for (label, extra) in [
        ("warm query per row (correlated)", ""),
        (
            "bulk_query (set-based)",
            "bulk_query = \"SELECT c.id, row_to_json(c)::text FROM courses c\"\n",
        ),
    ] {
        std::fs::write(dir.join("rules/courses.toml"), format!("{rule}{extra}")).unwrap();
        clear_redis();
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args(["--config", config.to_str().unwrap(), "warm", "--restart"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let warm_secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "cachewarden warm failed");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stdout.contains(&format!("{rows} keys written")), "{stdout}");
        // The tool's own figure: rows streamed and written, after connecting and counting.
        let stream_secs: f64 = stdout
            .split(" in ")
            .nth(1)
            .and_then(|t| t.trim().trim_end_matches('s').parse().ok())
            .unwrap_or(warm_secs);
        let rate = rows as f64 / stream_secs;
        let wall = rows as f64 / warm_secs;
        println!(
            "  cachewarden warm, {label}: {rate:>9.0} keys/s ({stream_secs:.2}s) = {:.2}x redis-benchmark; \
             whole command {wall:.0} keys/s ({warm_secs:.2}s) = {:.2}x",
            rate / baseline,
            wall / baseline
        );
    }
    clear_redis();
    let _ = std::process::Command::new("sh")
        .args(["-c", "redis-cli --scan --pattern 'cw:v:cwbw:*' | xargs -r -n 10000 redis-cli unlink > /dev/null"])
        .status();
    drop(db);
    // The dropped connection may still be closing: retry briefly.
    for _ in 0..20 {
        let dropped = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
