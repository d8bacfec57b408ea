//! The `cachewarden` binary: parses arguments, sets up logging and signals, and runs a command.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use cachewarden::cli::{Cli, Command};
use cachewarden::config::{Config, LogFormat};
use cachewarden::rules::{self, Severity};
use cachewarden::runtime::ShutdownSender;
use cachewarden::status::Status;
use cachewarden::target::Targets;
use cachewarden::worker::{Worker, WorkerError};
use cachewarden::{db, explain, migrate};

fn init_logging(cfg: Option<&Config>) {
    let level = cfg.map_or("info", |c| c.log.level.as_str());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cfg.is_some_and(|c| c.log.format == LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Large allocations (a batch's vectors) straight from `mmap`, returned to the system when
/// freed (unless `MALLOC_MMAP_THRESHOLD_` says otherwise). glibc's default threshold grows
/// with the blocks freed, after which those big buffers stay in the per-thread arenas of the
/// runtime's threads and the arenas' high-water marks add up: draining a 1,000,000-row
/// backlog peaked at 37 MiB that way and at 28 MiB with this (`bench/backlog_rss.sh`). One
/// arena for all threads (25 MiB) cost tail latency under load: threads waited on its lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bounded_malloc_cache() {
    const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
    extern "C" {
        fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any other
        // thread exists, and M_MMAP_THRESHOLD is a documented glibc parameter.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bounded_malloc_cache() {}

fn main() -> ExitCode {
    bounded_malloc_cache();
    // A bad command line is invalid input (exit 1, as README documents); help and version
    // are answers (exit 0).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // The work runs as a task on the runtime's worker threads, not on this thread: a worker
    // thread woken by a socket then runs the task itself, where `block_on` would need a
    // cross-thread wake-up (a context switch) for every read on the replication stream and
    // every reply from Redis.
    let code = runtime.block_on(async move {
        match tokio::spawn(dispatch(cli)).await {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    });
    // A blocking call still waiting for an unreachable server (librdkafka leaving its group)
    // must not hold the exit: everything that matters was confirmed or will be replayed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // What needs no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "cachewarden", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // Every command needs the configuration: an invalid or missing one is invalid input.
    let config = match Config::load_or_env(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    match cli.command {
        Command::Run => {
            init_logging(Some(&config));
            run(config).await
        }
        Command::Migrate => {
            init_logging(Some(&config));
            let pg = config.postgres_config().context("[postgres] url")?;
            let mut client = db::connect(&pg).await.context("connecting to PostgreSQL")?;
            let applied = migrate::apply(&mut client).await?;
            if applied.is_empty() {
                println!(
                    "schema is up to date ({} migrations)",
                    migrate::MIGRATIONS.len()
                );
            }
            for (v, name) in applied {
                println!("applied {v:04}_{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
        Command::Advise { window, json } => advise(&config, &window, json).await,
        Command::Ready => ready(&config.status.listen).await,
        Command::Check { offline } => check(config, offline).await,
        Command::Config => {
            let file = cli
                .config
                .clone()
                .unwrap_or_else(|| cachewarden::config::DEFAULT_FILE.into());
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let name = if text.is_empty() {
                "(no file)".to_string()
            } else {
                file.display().to_string()
            };
            print!(
                "{}",
                cachewarden::config::show::render(&config, &text, &name)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Warm {
            rule,
            where_sql,
            restart,
        } => {
            init_logging(Some(&config));
            warm(&config, rule.as_deref(), where_sql.as_deref(), restart).await
        }
        Command::Invalidate {
            pattern,
            reason,
            raw,
        } => {
            init_logging(Some(&config));
            invalidate(&config, &pattern, &reason, raw).await
        }
        Command::Explain { event, json } => {
            let read = if event.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map(|_| s)
            } else {
                std::fs::read_to_string(&event)
            };
            let text = match read {
                Ok(t) => t,
                Err(e) => {
                    // The event is input: a file that cannot be read is invalid input.
                    eprintln!("error: cannot read the event {}: {e}", event.display());
                    return Ok(ExitCode::from(1));
                }
            };
            let Some(rules) = load_rules(&config) else {
                return Ok(ExitCode::from(1));
            };
            let events = match explain::parse_events(&text) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{}: {e}", event.display());
                    return Ok(ExitCode::from(1));
                }
            };
            let out: Vec<_> = events
                .iter()
                .map(|e| explain::explain(&rules, &config.redis.key_prefix, e))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", explain::render_text(&out));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The rule files, or `None` after printing why they are invalid (the caller exits 1).
fn load_rules(config: &Config) -> Option<rules::RuleSet> {
    match rules::load_dir(&config.rules_dir) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

async fn check(config: Config, offline: bool) -> anyhow::Result<ExitCode> {
    let Some(rules) = load_rules(&config) else {
        return Ok(ExitCode::from(1));
    };
    let mut errors = 0;
    for d in rules::check_families(&rules, &config.redis.key_prefix) {
        errors += 1;
        eprintln!("{d}");
    }
    if !offline {
        let pg = config.postgres_config().context("[postgres] url")?;
        match db::connect(&pg).await {
            Ok(client) => {
                let catalog = cachewarden::catalog::load_catalog(&client, &rules.tables()).await?;
                let mut diags = rules::check::check_with(&rules, &catalog, config.is_kafka());
                diags.extend(rules::check::check_queries(&client, &rules).await);
                diags.extend(rules::check::check_pattern_costs(&client, &rules).await);
                for d in diags {
                    if d.severity == Severity::Error {
                        errors += 1;
                    }
                    eprintln!("{d}");
                }
            }
            Err(e) => {
                // Not checked is not ok: a CI step running `check` must not pass.
                eprintln!("error: cannot connect to PostgreSQL to check the rules against its schema: {e} (use --offline to check syntax only)");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if let (false, Some(k)) = (offline, config.kafka.as_ref().filter(|_| config.is_kafka())) {
        match cachewarden::source::kafka::probe(k, std::time::Duration::from_secs(5)).await {
            Ok(topics) => {
                for t in k
                    .topics
                    .iter()
                    .filter(|t| !cachewarden::source::kafka::is_pattern(t))
                {
                    if !topics.contains(t) {
                        eprintln!(
                            "warning: [kafka] topic {t:?} does not exist (yet) on {}",
                            k.brokers
                        );
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "error: cannot reach the [kafka] brokers {} to check the topics: {e} (use --offline to check syntax only)",
                    k.brokers
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    if errors > 0 {
        eprintln!("{errors} error(s)");
        return Ok(ExitCode::from(1));
    }
    println!(
        "ok: {} rules on {} tables",
        rules.len(),
        rules.tables().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `cachewarden advise`: figures from the journal, cache_metrics and Redis → suggestions.
async fn advise(config: &Config, window: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(secs) = cachewarden::config::parse_period(window).map(|d| d.as_secs()) else {
        eprintln!("error: --window {window:?}: expected a period such as \"24h\" or \"7d\"");
        return Ok(ExitCode::from(1));
    };
    let Some(rules) = load_rules(config) else {
        return Ok(ExitCode::from(1));
    };
    let pg = config.postgres_config().context("[postgres] url")?;
    let client = db::connect(&pg).await.context("connecting to PostgreSQL")?;
    // Which columns updates change: the running worker knows (since it started).
    let columns = worker_status(&config.status.listen)
        .await
        .map(|s| s.column_changes)
        .unwrap_or_default();
    let figures = cachewarden::advice::gather(config, &client, &rules, secs, columns).await?;
    let suggestions = cachewarden::advice::suggest(&figures);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "figures": figures,
                "suggestions": suggestions,
            }))?
        );
    } else {
        print!(
            "{}",
            cachewarden::advice::render_text(&figures, &suggestions)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The running worker's `/status`, when it answers.
async fn worker_status(listen: &str) -> Option<StatusColumns> {
    let text = http_get(listen, "/status").await.ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

/// The part of `/status` the advisor reads.
#[derive(serde::Deserialize)]
struct StatusColumns {
    #[serde(default)]
    column_changes: std::collections::BTreeMap<String, cachewarden::monitor::columns::TableColumns>,
}

/// A GET on the worker's own status endpoint (a wildcard listen address is asked on loopback);
/// the whole response.
async fn http_get(listen: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// `cachewarden ready`: GET /readyz from the worker's own status endpoint (a wildcard listen
/// address is asked on loopback).
async fn ready(listen: &str) -> anyhow::Result<ExitCode> {
    match http_get(listen, "/readyz").await {
        Ok(text) => {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
                println!("{body}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("not ready: {body}");
                Ok(ExitCode::from(1))
            }
        }
        Err(e) => {
            eprintln!("error: the status endpoint {listen} does not answer: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let Some(rules) = load_rules(&config) else {
        return Ok(ExitCode::from(1));
    };
    let stop = ShutdownSender::new();
    let stop_rx = stop.subscribe();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing in-flight work");
        stop.trigger();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now; unconfirmed changes will be replayed");
        std::process::exit(130);
    });
    let status = Arc::new(Status::default());
    let listener = tokio::net::TcpListener::bind(&config.status.listen)
        .await
        .with_context(|| format!("binding the status endpoint on {}", config.status.listen))?;
    tracing::info!(listen = %config.status.listen, "status endpoint up");
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(cachewarden::api::serve(
        listener,
        cachewarden::api::app(status.clone(), Arc::new(config.clone())),
        async move {
            http_stop.recv().await;
        },
    ));
    // SIGHUP reloads the rules of whichever worker is running.
    let reload = Arc::new(tokio::sync::Notify::new());
    tokio::spawn({
        let reload = reload.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading rules");
                reload.notify_one();
            }
        }
    });
    loop {
        // Wait for PostgreSQL at start-up (containers often start before the database), and
        // for the slot's lease while another instance is active.
        let mut delay = std::time::Duration::from_millis(200);
        let mut worker = loop {
            match Worker::start(
                config.clone(),
                rules.clone(),
                status.clone(),
                stop_rx.clone(),
            )
            .await
            {
                Ok(w) => break w,
                Err(WorkerError::Rules(e)) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(1));
                }
                Err(_) if stop_rx.is_shutdown() => {
                    let _ = http.await;
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL unavailable at start-up");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        worker.set_reload_handle(reload.clone());
        match worker.run().await {
            Ok(()) => break,
            // Another instance may have taken over: wait for the lease again.
            Err(WorkerError::LeaseLost) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = http.await;
    Ok(ExitCode::SUCCESS)
}

/// `cachewarden warm`: bulk-fill rules with a progress line on stderr.
async fn warm(
    config: &Config,
    only: Option<&str>,
    where_sql: Option<&str>,
    restart: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let Some(rules) = load_rules(config) else {
        return Ok(ExitCode::from(1));
    };
    let chosen: Vec<_> = rules
        .rules
        .iter()
        .filter(|r| r.warm.is_some() && only.is_none_or(|n| n == r.name))
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "error: {}",
            match only {
                Some(n) => format!("no rule {n:?} with strategy refresh or write-through"),
                None => "no rule has strategy refresh or write-through".into(),
            }
        );
        return Ok(ExitCode::from(1));
    }
    let pg = config.postgres_config().context("[postgres] url")?;
    let mut client = db::connect(&pg).await.context("connecting to PostgreSQL")?;
    migrate::apply(&mut client).await?;
    let mut cache = Targets::open(config)?;
    let tty = std::io::stderr().is_terminal();
    for rule in chosen {
        let mut last_print = std::time::Instant::now();
        let name = rule.name.clone();
        let print = move |p: cachewarden::warm::Progress, last: bool| {
            let rate = p.done as f64 / p.elapsed.as_secs_f64().max(1e-3);
            let eta = (p.total.saturating_sub(p.done)) as f64 / rate.max(1.0);
            let pct = (p.done * 100).checked_div(p.total).unwrap_or(100).min(100);
            let width = 30usize;
            let filled = (pct as usize * width / 100).min(width);
            let line = format!(
                "{name}: [{}{}] {}/{} keys ({pct}%)  {:.0} keys/s  ETA {:.0}s",
                "#".repeat(filled),
                "-".repeat(width - filled),
                p.done,
                p.total,
                rate,
                eta
            );
            let mut err = std::io::stderr();
            if tty {
                let _ = write!(err, "\r{line}\x1b[K");
                if last {
                    let _ = writeln!(err);
                }
            } else {
                let _ = writeln!(err, "{line}");
            }
        };
        let mut print_progress = |p: cachewarden::warm::Progress| {
            if last_print.elapsed()
                >= std::time::Duration::from_millis(if tty { 200 } else { 2000 })
            {
                last_print = std::time::Instant::now();
                print(p, false);
            }
        };
        match cachewarden::warm::resumable_warm(
            &client,
            &mut cache,
            rule,
            &config.redis.key_prefix,
            where_sql,
            restart,
            &mut print_progress,
        )
        .await
        {
            Ok(p) => {
                print(p, true);
                println!(
                    "{}: {} keys written, {} refused by newer invalidations, in {:.3}s",
                    rule.name,
                    p.written,
                    p.done.saturating_sub(p.written),
                    p.elapsed.as_secs_f64()
                );
            }
            Err(e) => {
                eprintln!(
                    "\nerror: warming {} failed: {e} (run again to resume)",
                    rule.name
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cachewarden invalidate`: one journaled, fenced invalidation through the same path as
/// the API's ([`cachewarden::control::manual`]).
async fn invalidate(
    config: &Config,
    pattern: &str,
    reason: &str,
    raw: bool,
) -> anyhow::Result<ExitCode> {
    use cachewarden::control::manual::{self, ManualError};
    use cachewarden::journal::PgJournal;
    let full = if raw {
        pattern.to_string()
    } else {
        format!("{}{pattern}", config.redis.key_prefix)
    };
    let target = manual::key_or_pattern(full.clone());
    let pg = config.postgres_config().context("[postgres] url")?;
    let client = db::connect(&pg).await.context("connecting to PostgreSQL")?;
    let mut journal = PgJournal::new(pg);
    let mut cache = Targets::open(config)?;
    let rules = rules::load_dir(&config.rules_dir).ok();
    let r = manual::invalidate_now(
        &mut journal,
        &client,
        rules.as_ref(),
        &config.redis.key_prefix,
        &mut cache,
        std::slice::from_ref(&target),
        reason,
    )
    .await;
    match r {
        Ok(done) => {
            println!(
                "invalidated {full}: {} keys removed (journal {})",
                done.report.removed,
                done.ids.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ManualError::Cache { ids, error }) => {
            eprintln!(
                "error: invalidating {full} failed: {error} (journal {})",
                ids.join(", ")
            );
            Ok(ExitCode::from(2))
        }
        Err(ManualError::Journal(e)) => Err(anyhow::Error::new(e)
            .context("journaling the request (has `cachewarden migrate` run?)")),
        Err(e) => Err(e.into()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
