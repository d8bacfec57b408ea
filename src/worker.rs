//! The worker: source → plan → cache → journal → acknowledge, in a loop.
//!
//! # The acknowledgement contract
//!
//! A source position (the replication slot's confirmed flush LSN) is confirmed only after
//! **every** cache action planned from changes before it has completed on Redis **and** its
//! journal rows are final (`completed`). This is enforced in [`Worker::stream`]: a batch is
//! planned, executed and journaled by [`Worker::process`], which retries until it succeeds, and
//! only then is `batch.confirmable` passed to [`PostgresSource::confirm`]. A crash at any point
//! therefore replays every change after the last confirmed position; since every action is
//! idempotent (UNLINK of a key that is gone is a no-op) replay is safe, and nothing is lost.
//! Journal rows left `pending` by a crash are re-executed and completed at the next start
//! ([`Worker::recover`]).
//!
//! Failures never skip work: Redis or journal errors mark the batch's rows `failed`, back off
//! and retry the same batch; a lost replication connection reconnects and resumes from the slot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch, Notify};

use crate::cache::Cache;
use crate::config::{redact_url, Config};
use crate::control::{Controller, Live};
use crate::journal::Journal;
use crate::plan;
use crate::rules::{check, RuleErrors, RuleSet};
use crate::source::postgres::{prepare, Batch, PostgresSource, SourceError};
use crate::source::Lsn;
use crate::status::{add, Status};

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid postgres url: {0}")]
    Url(tokio_postgres::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("rules do not match the database:\n{0}")]
    Rules(RuleErrors),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl WorkerError {
    /// Whether retrying later may succeed (the database is unreachable, as opposed to refusing
    /// what we asked).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Postgres(e) | WorkerError::Source(SourceError::Postgres(e)) => {
                e.code().is_none()
            }
            WorkerError::Migrate(crate::migrate::MigrateError::Postgres(e)) => e.code().is_none(),
            _ => false,
        }
    }
}

/// Grows a retry delay up to a bound.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(50),
            max,
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// The running pipeline.
pub struct Worker {
    config: Config,
    live: Arc<Live>,
    reload: Arc<Notify>,
    status: Arc<Status>,
    journal: Journal,
    cache: Cache,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    /// The last position confirmed to the source.
    confirmed: Lsn,
    warm_tx: Option<mpsc::Sender<Vec<plan::WarmJob>>>,
    delayed_tx: Option<mpsc::Sender<Delayed>>,
}

/// Work scheduled by `reinvalidate_after`.
#[derive(Debug)]
pub struct Delayed {
    due: tokio::time::Instant,
    /// Unlinked again (rules with strategy `invalidate`), journaled like any invalidation.
    actions: Vec<plan::Action>,
    /// Refetched or rewritten again (`refresh`, `write-through`), with their original versions.
    warms: Vec<plan::WarmJob>,
}

/// Bulk-warms the rules marked `warm_on_start`, beside the stream.
async fn warm_on_start(config: Config, live: Arc<Live>) {
    let snap = live.snapshot();
    let rules: Vec<_> = snap
        .rules
        .rules
        .iter()
        .filter(|r| r.warm_on_start)
        .collect();
    if rules.is_empty() {
        return;
    }
    let Ok(pg) = config.postgres_config() else {
        return;
    };
    let (client, mut cache) = match (
        crate::journal::connect(&pg).await,
        Cache::new(&config.redis.url, config.cache_options()),
    ) {
        (Ok(c), Ok(r)) => (c, r),
        _ => {
            tracing::warn!("warm_on_start skipped: cannot connect");
            return;
        }
    };
    for rule in rules {
        let mut last = Instant::now();
        let r = crate::warm::resumable_warm(&client, &mut cache, rule, &snap.cx.key_prefix, None, false, |p| {
            if last.elapsed() > Duration::from_secs(5) {
                last = Instant::now();
                tracing::info!(rule = %rule.name, done = p.done, total = p.total, "warming on start");
            }
        })
        .await;
        match r {
            Ok(p) => {
                tracing::info!(rule = %rule.name, written = p.written, seconds = p.elapsed.as_secs_f64(), "warmed on start")
            }
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "warm_on_start failed"),
        }
    }
}

/// Runs delayed second invalidations when they fall due.
async fn reinvalidator(
    config: Config,
    status: Arc<Status>,
    warm_tx: mpsc::Sender<Vec<plan::WarmJob>>,
    mut rx: mpsc::Receiver<Delayed>,
    live: Arc<Live>,
) {
    let Ok(pg) = config.postgres_config() else {
        return;
    };
    let mut journal = Journal::new(pg);
    let Ok(mut cache) = Cache::new(&config.redis.url, config.cache_options()) else {
        return;
    };
    let mut queue: std::collections::BTreeMap<(tokio::time::Instant, u64), Delayed> =
        Default::default();
    let mut seq = 0u64;
    // Once the worker stops, the remaining passes run at once (early beats never).
    let mut closing = false;
    loop {
        if closing && queue.is_empty() {
            return;
        }
        let next = if closing {
            Some(tokio::time::Instant::now())
        } else {
            queue.keys().next().map(|k| k.0)
        };
        tokio::select! {
            d = rx.recv(), if !closing => match d {
                Some(d) => {
                    seq += 1;
                    queue.insert((d.due, seq), d);
                }
                None => closing = true,
            },
            _ = async { tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)).await }, if next.is_some() => {
                let Some((_, d)) = queue.pop_first() else { continue };
                if !d.warms.is_empty() && warm_tx.try_send(d.warms.clone()).is_err() {
                    add(&status.counters.warm_dropped, 1);
                }
                if d.actions.is_empty() {
                    add(&status.counters.reinvalidations, 1);
                    continue;
                }
                let result = async {
                    let ids = journal.record_pending(&d.actions).await.map_err(|e| e.to_string())?;
                    // (a failure below re-queues the pass: see the match)
                    let fences = plan::fences(&live.snapshot().rules, &config.redis.key_prefix,
                        d.actions.iter().map(|a| (&a.target, a.lsn)));
                    match cache.execute(&fences, d.actions.iter().map(|a| &a.target)).await {
                        Ok(_) => journal.mark_completed(&ids, Utc::now()).await.map_err(|e| e.to_string()),
                        Err(e) => {
                            let _ = journal.mark_failed(&ids, &e.to_string()).await;
                            Err(e.to_string())
                        }
                    }
                }
                .await;
                match result {
                    Ok(()) => add(&status.counters.reinvalidations, 1),
                    Err(e) if closing => {
                        tracing::warn!(error = %e, "delayed re-invalidation failed at shutdown");
                    }
                    Err(e) => {
                        // Retried until it succeeds, like any invalidation.
                        tracing::warn!(error = %e, "delayed re-invalidation failed; retrying in 1 s");
                        seq += 1;
                        let retry = Delayed {
                            due: tokio::time::Instant::now() + Duration::from_secs(1),
                            actions: d.actions,
                            warms: Vec::new(),
                        };
                        queue.insert((retry.due, seq), retry);
                    }
                }
            }
        }
    }
}

impl Worker {
    /// Connects, migrates, checks the rules against the schema, syncs `cache_configs` and
    /// prepares the publication and slot. Errors here are configuration errors: the caller
    /// should report them and exit non-zero.
    pub async fn start(
        config: Config,
        rules: RuleSet,
        status: Arc<Status>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Worker, WorkerError> {
        let pg = config.postgres_config().map_err(WorkerError::Url)?;
        tracing::info!(postgres = %redact_url(&config.postgres.url), redis = %redact_url(&config.redis.url),
            rules = rules.len(), "starting");
        let mut client = crate::journal::connect(&pg).await?;
        if config.postgres.auto_migrate {
            for (version, name) in crate::migrate::apply(&mut client).await? {
                tracing::info!(version, name, "applied migration");
            }
        }
        let tables = rules.tables();
        let catalog = crate::control::check_against_database(&client, &rules)
            .await
            .map_err(|e| match e {
                crate::control::CheckError::Rules(e) => WorkerError::Rules(e),
                crate::control::CheckError::Postgres(e) => WorkerError::Postgres(e),
            })?;
        crate::registry::sync(&client, &rules).await?;
        let confirmed = prepare(
            &client,
            &config.postgres.slot,
            &config.postgres.publication,
            &tables,
        )
        .await?;
        status.set_source(
            &config.postgres.slot,
            &config.postgres.publication,
            tables,
            rules.len(),
        );
        status.set_positions(confirmed, confirmed);
        drop(client);
        let cache = Cache::new(&config.redis.url, config.cache_options())?;
        let backoff = Backoff::new(Duration::from_millis(config.worker.max_backoff_ms.max(50)));
        let plan_cx = plan::Context {
            key_prefix: config.redis.key_prefix.clone(),
            primary_keys: check::primary_keys(&catalog),
            disabled: Default::default(),
        };
        Ok(Worker {
            live: Arc::new(Live::new(rules, plan_cx)),
            reload: Arc::new(Notify::new()),
            journal: Journal::new(pg),
            cache,
            status,
            shutdown,
            backoff,
            config,
            confirmed,
            warm_tx: None,
            delayed_tx: None,
        })
    }

    /// Notifying this reloads the rules (what SIGHUP does).
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until shutdown: recovers open journal rows, then streams, reconnecting on errors.
    pub async fn run(mut self) -> Result<(), WorkerError> {
        self.recover().await;
        let control = tokio::spawn(
            Controller {
                config: self.config.clone(),
                live: self.live.clone(),
                status: self.status.clone(),
                reload: self.reload.clone(),
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        let (warm_tx, warmer) = crate::warm::Warmer::spawn(
            self.config.clone(),
            self.live.clone(),
            self.status.clone(),
        )?;
        let (delayed_tx, delayed_rx) = mpsc::channel(1024);
        let delayed = tokio::spawn(reinvalidator(
            self.config.clone(),
            self.status.clone(),
            warm_tx.clone(),
            delayed_rx,
            self.live.clone(),
        ));
        self.warm_tx = Some(warm_tx);
        let on_start = tokio::spawn(warm_on_start(self.config.clone(), self.live.clone()));
        self.delayed_tx = Some(delayed_tx);
        let health = tokio::spawn(watch_redis(
            self.config.clone(),
            self.status.clone(),
            self.shutdown.clone(),
        ));
        let pg = self.config.postgres_config().map_err(WorkerError::Url)?;
        while !self.stopping() {
            let confirmed = self.confirmed;
            let started = PostgresSource::start(
                &pg,
                &self.config.postgres.slot,
                &self.config.postgres.publication,
                confirmed,
                self.config.batch_limits(),
            )
            .await;
            let result = match started {
                Ok(source) => {
                    self.status.source_connected.store(true, Ordering::Relaxed);
                    tracing::info!(slot = %self.config.postgres.slot, "replication started");
                    self.stream(source).await
                }
                Err(e) => Err(e),
            };
            self.status.source_connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    add(&self.status.counters.source_errors, 1);
                    tracing::warn!(error = %e, "replication stream failed; reconnecting");
                    self.status.set_error(Some(format!("source: {e}")));
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = self.backoff.wait() => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                }
            }
        }
        health.abort();
        control.abort();
        // Let queued warm writes finish (they never block the position, but a clean stop
        // should not throw them away), then stop the helpers.
        self.warm_tx = None;
        self.delayed_tx = None;
        on_start.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), delayed).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), warmer).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// The main loop on one replication connection. See the module docs for the contract.
    async fn stream(&mut self, mut source: PostgresSource) -> Result<(), SourceError> {
        let mut shutdown = self.shutdown.clone();
        loop {
            let batch = source.next_batch(&mut shutdown).await?;
            let finished = if batch.transactions.is_empty() {
                true
            } else {
                // While the batch runs (a TRUNCATE's SCANs can take long), keep the stream alive.
                let heartbeat = self.config.batch_limits().status_interval;
                let work = self.process(&batch);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        done = &mut work => break done,
                        _ = tokio::time::sleep(heartbeat) => source.heartbeat().await?,
                    }
                }
            };
            if !finished {
                // Shutdown while the batch could not finish: leave it unconfirmed for replay.
                tracing::warn!("stopping with an unfinished batch; it will be replayed on restart");
                source.close().await;
                return Ok(());
            }
            self.backoff.reset();
            if let Some(lsn) = batch.confirmable {
                // Every action before `lsn` is done on Redis and journaled: confirm it.
                source.confirm(lsn).await?;
                self.confirmed = source.confirmed();
                tracing::debug!(lsn = %lsn, "confirmed");
            }
            self.status
                .set_positions(source.confirmed(), source.server_wal_end());
            if batch.shutdown {
                source.close().await;
                return Ok(());
            }
        }
    }

    /// Plans, executes and journals one batch, retrying until it succeeds. Returns false only
    /// if shutdown was requested while it kept failing.
    async fn process(&mut self, batch: &Batch) -> bool {
        // One snapshot per batch: a reload or switch lands between batches, never inside one.
        let snap = self.live.snapshot();
        let plan = plan::build(&snap.rules, &snap.cx, &batch.transactions);
        let c = &self.status.counters;
        add(&c.batches, 1);
        add(&c.transactions, batch.transactions.len() as u64);
        add(&c.changes, batch.change_count() as u64);
        add(&c.skipped_keys, plan.skipped as u64);
        add(&c.widened_keys, plan.widened as u64);
        add(&c.undecodable_changes, plan.undecodable as u64);
        if plan.undecodable > 0 {
            tracing::error!(
                count = plan.undecodable,
                "undecodable changes: invalidating every key family of their tables"
            );
        }
        if plan.widened > 0 {
            tracing::warn!(count = plan.widened, "keys widened to patterns: a value the rule needs was not in the WAL (check REPLICA IDENTITY)");
        }
        let done_at = if plan.is_empty() {
            Utc::now()
        } else {
            loop {
                match self.execute(&plan).await {
                    Ok(at) => break at,
                    Err(e) => {
                        self.status.set_error(Some(e.clone()));
                        if self.stopping() {
                            return false;
                        }
                        self.backoff.wait().await;
                    }
                }
            }
        };
        self.after_batch(&plan, &snap.rules);
        let lags = batch
            .transactions
            .iter()
            .filter(|t| !t.changes.is_empty())
            .map(|t| (done_at - t.commit_time).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        self.status.record_lags(lags);
        if let Some(last) = batch.transactions.last() {
            tracing::debug!(
                transactions = batch.transactions.len(),
                changes = batch.change_count(),
                keys = plan.keys().count(),
                patterns = plan.patterns().count(),
                lsn = %last.commit_lsn,
                "batch done"
            );
        }
        true
    }

    /// Hands a completed batch's warm jobs to the warmer and schedules its delayed second
    /// invalidations. Never waits: a full queue drops work (counted), the keys stay invalidated.
    fn after_batch(&self, plan: &plan::Plan, rules: &RuleSet) {
        let c = &self.status.counters;
        if !plan.warms.is_empty() {
            if let Some(tx) = &self.warm_tx {
                if tx.try_send(plan.warms.clone()).is_err() {
                    add(&c.warm_dropped, plan.warms.len() as u64);
                }
            }
        }
        let Some(tx) = &self.delayed_tx else {
            return;
        };
        let mut by_delay: std::collections::BTreeMap<Duration, Delayed> = Default::default();
        for rule in rules.rules.iter() {
            let Some(delay) = rule.reinvalidate_after else {
                continue;
            };
            let entry = by_delay.entry(delay).or_insert_with(|| Delayed {
                due: tokio::time::Instant::now() + delay,
                actions: Vec::new(),
                warms: Vec::new(),
            });
            if rule.strategy == crate::rules::Strategy::Invalidate {
                entry
                    .actions
                    .extend(
                        plan.actions
                            .iter()
                            .filter(|a| a.rule == rule.name)
                            .map(|a| {
                                let mut a = a.clone();
                                a.reason = format!("reinvalidate_after {delay:?}: {}", a.reason);
                                a
                            }),
                    );
            } else {
                entry
                    .warms
                    .extend(plan.warms.iter().filter(|w| w.rule == rule.name).cloned());
            }
        }
        for (_, d) in by_delay {
            if (!d.actions.is_empty() || !d.warms.is_empty()) && tx.try_send(d).is_err() {
                add(&c.warm_dropped, 1);
            }
        }
    }

    /// One attempt: journal `pending` and unlink concurrently, then journal the outcome.
    async fn execute(&mut self, plan: &plan::Plan) -> Result<chrono::DateTime<Utc>, String> {
        let targets = plan.actions.iter().map(|a| &a.target);
        let cache = &mut self.cache;
        let exec = async {
            let t = Instant::now();
            let r = cache.execute(&plan.marks, targets).await;
            (r, Utc::now(), t.elapsed())
        };
        let journal = &mut self.journal;
        let pending = async {
            let t = Instant::now();
            (journal.record_pending(&plan.actions).await, t.elapsed())
        };
        let ((ids, journal_time), (exec, done_at, redis_time)) = tokio::join!(pending, exec);
        let c = &self.status.counters;
        add(&c.journal_us, journal_time.as_micros() as u64);
        add(&c.redis_us, redis_time.as_micros() as u64);
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                add(&c.journal_errors, 1);
                tracing::warn!(error = %e, "journal write failed; retrying the batch");
                return Err(e.to_string());
            }
        };
        add(&c.journal_rows, ids.len() as u64);
        match exec {
            Ok(report) => {
                self.status.redis_connected.store(true, Ordering::Relaxed);
                let t = Instant::now();
                let completed = self.journal.mark_completed(&ids, done_at).await;
                add(&c.journal_us, t.elapsed().as_micros() as u64);
                if let Err(e) = completed {
                    add(&c.journal_errors, 1);
                    tracing::warn!(error = %e, "journal completion failed; retrying the batch");
                    return Err(e.to_string());
                }
                add(&c.keys, plan.keys().count() as u64);
                add(&c.patterns, plan.patterns().count() as u64);
                add(&c.keys_removed, report.removed);
                self.status.set_error(None);
                Ok(done_at)
            }
            Err(e) => {
                self.status.redis_connected.store(false, Ordering::Relaxed);
                add(&c.redis_errors, 1);
                tracing::warn!(error = %e, actions = ids.len(), "redis failed; batch journaled as failed and retried");
                if let Err(je) = self.journal.mark_failed(&ids, &e.to_string()).await {
                    tracing::warn!(error = %je, "could not journal the failure");
                }
                Err(e.to_string())
            }
        }
    }

    /// Re-executes journal rows left `pending`/`running` (by a crash, or requested by an
    /// application) and completes them. Retries until done or shutdown.
    async fn recover(&mut self) {
        loop {
            if self.stopping() {
                return;
            }
            match self.recover_once().await {
                Ok(0) => {}
                Ok(n) => {
                    add(&self.status.counters.recovered_rows, n as u64);
                    tracing::info!(rows = n, "re-executed open journal rows");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovering open journal rows failed; retrying");
                    self.status.set_error(Some(e));
                    self.backoff.wait().await;
                    continue;
                }
            }
            match self.cache.ping().await {
                Ok(()) => self.status.redis_connected.store(true, Ordering::Relaxed),
                Err(e) => {
                    self.status.redis_connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "redis is not reachable yet");
                }
            }
            self.backoff.reset();
            return;
        }
    }

    async fn recover_once(&mut self) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let rows = self
                .journal
                .open_rows(5000)
                .await
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                return Ok(total);
            }
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            self.cache
                .execute(&[], rows.iter().flat_map(|r| r.targets.iter()))
                .await
                .map_err(|e| e.to_string())?;
            self.journal
                .mark_completed(&ids, Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            total += rows.len();
        }
    }
}

/// Keeps `redis_connected` (and so `/readyz`) truthful while the worker is idle: PINGs Redis
/// every second on a connection of its own. Every `metrics_interval` it also samples Redis
/// `INFO` into `/status` and a whole-instance `cache_metrics` row (NULL `config_id`: Redis keeps
/// no per-rule figures).
async fn watch_redis(config: Config, status: Arc<Status>, mut shutdown: watch::Receiver<bool>) {
    let Ok(mut cache) = Cache::new(&config.redis.url, config.cache_options()) else {
        return;
    };
    let interval = Duration::from_secs(config.worker.metrics_interval_secs.max(1));
    let mut next_sample = Instant::now();
    let mut db: Option<tokio_postgres::Client> = None;
    loop {
        let ok = cache.ping().await.is_ok();
        status.redis_connected.store(ok, Ordering::Relaxed);
        if ok && config.worker.metrics_interval_secs > 0 && Instant::now() >= next_sample {
            next_sample = Instant::now() + interval;
            if let Ok(stats) = cache.stats().await {
                status.set_redis_stats(stats);
                if let Err(e) = record_metrics(&config, &mut db, &stats).await {
                    tracing::debug!(error = %e, "could not record cache_metrics");
                    db = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn record_metrics(
    config: &Config,
    db: &mut Option<tokio_postgres::Client>,
    stats: &crate::cache::RedisStats,
) -> Result<(), tokio_postgres::Error> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        let pg = config.postgres_config()?;
        *db = Some(crate::journal::connect(&pg).await?);
    }
    let Some(client) = db.as_ref() else {
        return Ok(());
    };
    let v = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO cache_metrics (config_id, hit_count, miss_count, eviction_count, memory_usage) \
             VALUES (NULL, $1, $2, $3, $4)",
            &[&v(stats.keyspace_hits), &v(stats.keyspace_misses), &v(stats.evicted_keys), &v(stats.used_memory)],
        )
        .await?;
    Ok(())
}
