//! The pipeline: source → plan → cache targets → journal → acknowledge, in a loop.
//!
//! # The acknowledgement contract
//!
//! A source position is confirmed only after **every** cache action planned from changes
//! before it has completed on every cache target **and** its journal rows are durable. This is
//! enforced here, in [`Pipeline::stream`]. A batch is planned and executed by
//! [`Pipeline::process`] (through the one invalidation lifecycle,
//! [`crate::journal::lifecycle`]), which retries until the cache has done it; its rows, already
//! final, then go to the trailing journal ([`crate::journal::trail`]), which numbers them and
//! writes them in groups behind the stream. The batch's `confirmable` position waits in
//! `waiting` with the number of the last journal item handed over before it, and is passed to
//! [`Source::confirm`] only once the trail reports that number durable. So the next batch's
//! cache actions never wait for this batch's commit, yet "every action before it, done and
//! journaled" holds at each confirmation, across batches too: batches are executed one at a
//! time, in order, and the trail is written in order. A crash at any point replays every
//! change after the last confirmed position; since every action is idempotent (unlinking a key
//! that is gone is a no-op) replay is safe, and nothing is lost. A crash while the journal
//! trails costs that replay — the trail is bounded (`journal_trail_batches`) — never a loss.
//!
//! Failures never skip work: cache errors journal the batch's rows `failed`, back off and retry
//! the same batch; journal errors are retried by the trail's writer while the positions wait; a
//! lost source connection reconnects and resumes from the last confirmed position. The
//! pipeline never names a concrete source, cache or journal: it is tested with in-memory ones
//! (see the tests below), including a property test over arbitrary interleavings of batches,
//! failures and crashes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::confirm::Confirmations;
use super::delayed::{self, Delayed, Message};
use crate::action::WarmJob;
use crate::control::Live;
use crate::failpoints;
use crate::journal::{self, InvalidationError, Item, JournalStore};
use crate::plan;
use crate::runtime::{Backoff, Shutdown};
use crate::source::{Batch, Source, SourceError};
use crate::status::{add, Dependency, Status};
use crate::target::{CacheTarget, Targets};

/// Where a finished batch's follow-up work goes (never waited for).
#[derive(Debug, Default)]
pub(crate) struct Followers {
    pub warm: Option<mpsc::Sender<Vec<WarmJob>>>,
    pub delayed: Option<mpsc::Sender<Message>>,
}

/// The worker's main loop over one source, its cache targets and its journal.
pub(crate) struct Pipeline {
    pub live: Arc<Live>,
    pub status: Arc<Status>,
    pub journal: Box<dyn JournalStore>,
    pub targets: Targets,
    pub backoff: Backoff,
    pub shutdown: Shutdown,
    pub followers: Followers,
    /// The first commit of the previous batch: rule epochs before it are pruned.
    pub prev_first_commit: Option<crate::source::Lsn>,
    /// The stream's trailing journal, and the positions waiting for it.
    pub trailing: Confirmations,
}

impl Pipeline {
    /// Streams until shutdown, (re)connecting the source with backoff after each failure.
    pub async fn run(&mut self, source: &mut dyn Source) {
        while !self.shutdown.is_shutdown() {
            let result = match source.connect().await {
                Ok(()) => {
                    self.status.source_connected.store(true, Ordering::Relaxed);
                    self.status.clear_dependency_error(Dependency::Source);
                    self.stream(source).await
                }
                Err(e) => Err(e),
            };
            self.status.source_connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    add(&self.status.counters.source_errors, 1);
                    tracing::warn!(error = %e, "source stream failed; reconnecting");
                    self.status
                        .set_dependency_error(Dependency::Source, e.to_string());
                    source.close().await;
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = self.backoff.wait() => {}
                        _ = shutdown.recv() => {}
                    }
                }
            }
        }
    }

    /// The main loop on one connection. See the module docs for the contract.
    pub async fn stream(&mut self, source: &mut dyn Source) -> Result<(), SourceError> {
        let mut shutdown = self.shutdown.clone();
        let wake = self.trailing.wake.clone();
        loop {
            let batch = source.next_batch(&mut shutdown, &wake).await?;
            // Dead letters are work even without a transaction (a Kafka record whose table
            // cannot be read): they must be kept before the position passes them.
            let has_work = !batch.transactions.is_empty() || !batch.dead_letters.is_empty();
            let finished = if has_work {
                // While the batch runs (a TRUNCATE's SCANs can take long), keep the stream alive.
                let heartbeat = source.heartbeat_interval();
                let work = self.process(&batch);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        done = &mut work => break done,
                        _ = tokio::time::sleep(heartbeat) => source.heartbeat().await?,
                    }
                }
            } else {
                true
            };
            if !finished {
                // Shutdown while the batch could not finish: leave it unconfirmed for replay.
                tracing::warn!("stopping with an unfinished batch; it will be replayed on restart");
                self.trailing
                    .drain(source, self.followers.delayed.as_ref(), &self.status)
                    .await?;
                source.close().await;
                return Ok(());
            }
            self.backoff.reset();
            if let Some(position) = batch.confirmable {
                // Confirmed once every journal item handed over so far is durable.
                self.trailing.wait_for_journal(position, has_work);
            }
            self.trailing
                .confirm_durable(source, self.followers.delayed.as_ref(), &self.status)
                .await?;
            self.status.set_progress(source.progress());
            if batch.ends_mid_transaction {
                failpoints::hit(failpoints::BETWEEN_CHUNKS);
            }
            if batch.shutdown {
                self.trailing
                    .drain(source, self.followers.delayed.as_ref(), &self.status)
                    .await?;
                source.close().await;
                return Ok(());
            }
        }
    }

    /// Plans, executes and journals one batch, retrying until it succeeds. Returns false only
    /// if shutdown was requested while it kept failing.
    pub async fn process(&mut self, batch: &Batch) -> bool {
        // Dead letters are kept before the position can pass them.
        while !batch.dead_letters.is_empty() {
            match self
                .trailing
                .trail
                .push(Item::DeadLetters(batch.dead_letters.clone()))
                .await
            {
                Ok(_) => {
                    add(
                        &self.status.counters.dead_letters,
                        batch.dead_letters.len() as u64,
                    );
                    break;
                }
                Err(e) => {
                    if !self.journal_failed("recording dead letters", &e).await {
                        return false;
                    }
                }
            }
        }
        self.status
            .batch_started(batch.transactions.iter().map(|t| t.commit_time).min());
        self.hint_catalog(batch);
        // Each transaction is planned with the rules in force when it committed (a reload
        // applies from a position; see `control::Live`).
        let runs = Self::plan_runs(&self.live, batch).await;
        // Delayed passes per run (each run's rules say which); then the runs merge into one
        // plan, moved, not copied: a batch's actions are its largest allocation.
        let mut delayed_passes = Vec::new();
        for (rules, p) in &runs {
            delayed_passes.extend(delayed::schedule(p, rules));
        }
        let mut plan = plan::Plan::default();
        for (_, p) in runs {
            plan.absorb(p);
        }
        let (keys, patterns) = (plan.keys().count(), plan.patterns().count());
        let c = &self.status.counters;
        add(&c.batches, 1);
        add(&c.transactions, batch.transactions.len() as u64);
        add(&c.changes, batch.change_count() as u64);
        self.status
            .count_changes(batch.transactions.iter().flat_map(|t| &t.changes));
        self.status
            .histograms()
            .batch_changes
            .observe(batch.change_count() as f64);
        add(&c.skipped_keys, plan.skipped as u64);
        add(&c.widened_keys, plan.widened as u64);
        add(&c.undecodable_changes, plan.undecodable as u64);
        if plan.undecodable > 0 {
            tracing::error!(
                count = plan.undecodable,
                "undecodable changes: invalidating every key family of their tables"
            );
        }
        if !plan.missing_columns.is_empty() {
            tracing::error!(
                drift = ?plan.missing_columns,
                "schema drift: rules read columns their tables no longer have (dropped or renamed?); \
                 their keys were widened to whole families; fix the rule files"
            );
        }
        if plan.widened > 0 {
            tracing::warn!(count = plan.widened, "keys widened to patterns: a value the rule needs was not in the WAL (check REPLICA IDENTITY)");
        }
        // Keyspace passes run beside the stream; exact keys, tags and bumps run here.
        let (passes, exact): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.actions)
            .into_iter()
            .partition(|a| a.target.is_pattern());
        let done_at = if exact.is_empty() && plan.marks.is_empty() {
            Utc::now()
        } else {
            loop {
                match self.execute(&plan.marks, &exact).await {
                    Ok(at) => break at,
                    Err(_) => {
                        if self.shutdown.is_shutdown() {
                            return false;
                        }
                        self.backoff.wait().await;
                    }
                }
            }
        };
        let c = &self.status.counters;
        add(&c.keys, keys as u64);
        add(&c.patterns, patterns as u64);
        if !passes.is_empty() {
            loop {
                match self.trailing.scans.request(passes.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        if !self.journal_failed("requesting a keyspace pass", &e).await {
                            return false;
                        }
                    }
                }
            }
        }
        if !self.schedule_passes(&delayed_passes).await {
            return false;
        }
        self.after_batch(&plan, delayed_passes);
        if let Some(first) = batch.transactions.first() {
            // Epochs older than the previous batch cannot be needed again, even after a
            // reconnect replays from the last confirmed position.
            if let Some(prev) = self.prev_first_commit.replace(first.commit_lsn) {
                self.live.prune(prev);
            }
        }
        let lags = batch
            .transactions
            .iter()
            .filter(|t| !t.changes.is_empty())
            .map(|t| {
                let ms = (done_at - t.commit_time).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                (ms, t.changes.len())
            });
        self.status.record_lags(lags);
        if let Some(last) = batch.transactions.last() {
            tracing::debug!(
                transactions = batch.transactions.len(),
                changes = batch.change_count(),
                keys,
                patterns,
                lsn = %last.commit_lsn,
                "batch done"
            );
        }
        true
    }

    /// Wakes the catalog watch when a change's relation is a rule table under another name
    /// (renamed) or a rule table's name under another identity (recreated): the third trigger
    /// beside reloads and the timer.
    fn hint_catalog(&self, batch: &Batch) {
        let snap = self.live.snapshot();
        let mut seen = std::collections::HashSet::new();
        for c in batch.transactions.iter().flat_map(|t| t.changes.iter()) {
            let r = &c.relation;
            if r.schema.is_empty() || !seen.insert(r.oid) {
                continue;
            }
            let name = r.qualified_name();
            let known = snap.cx.tables_by_oid.get(&r.oid);
            let renamed = known.is_some_and(|n| *n != name);
            let recreated = known.is_none() && snap.rules.for_table(&name).next().is_some();
            if renamed || recreated {
                self.live.catalog_hint.notify_one();
                return;
            }
        }
    }

    /// Plans the batch in runs of consecutive transactions that share their rules' epoch.
    async fn plan_runs(
        live: &Live,
        batch: &Batch,
    ) -> Vec<(Arc<crate::rules::RuleSet>, plan::Plan)> {
        let _gate = live.plan_gate().await;
        let mut runs: Vec<(crate::control::Snapshot, std::ops::Range<usize>)> = Vec::new();
        for (i, tx) in batch.transactions.iter().enumerate() {
            let snap = live.snapshot_at(tx.commit_lsn);
            match runs.last_mut() {
                Some((s, r))
                    if Arc::ptr_eq(&s.rules, &snap.rules) && Arc::ptr_eq(&s.cx, &snap.cx) =>
                {
                    r.end = i + 1
                }
                _ => runs.push((snap, i..i + 1)),
            }
        }
        runs.into_iter()
            .map(|(s, r)| {
                let p = plan::build(&s.rules, &s.cx, &batch.transactions[r]);
                (s.rules, p)
            })
            .collect()
    }

    /// Counts and reports a failed journal write of `what`, then backs off before the retry;
    /// false when shutdown was asked instead (the batch is left unconfirmed, for replay).
    async fn journal_failed(&mut self, what: &str, e: &crate::journal::JournalError) -> bool {
        add(&self.status.counters.journal_errors, 1);
        tracing::warn!(error = %e, "{what} failed; retrying");
        self.status
            .set_dependency_error(Dependency::Journal, e.to_string());
        if self.shutdown.is_shutdown() {
            return false;
        }
        self.backoff.wait().await;
        true
    }

    /// Hands the batch's delayed invalidation passes to the trailing journal as `scheduled`
    /// rows, before the batch can be confirmed: a crash must not lose them. Their runner is
    /// woken once they are durable. False only if shutdown was asked while it kept failing.
    async fn schedule_passes(&mut self, passes: &[Delayed]) -> bool {
        for d in passes.iter().filter(|d| !d.actions.is_empty()) {
            let Ok(delay) = chrono::Duration::from_std(d.delay) else {
                continue;
            };
            let at = tokio::time::Instant::now() + d.delay;
            loop {
                let item = Item::Scheduled {
                    rows: journal::entries(&d.actions),
                    due: Utc::now() + delay,
                };
                match self.trailing.trail.push(item).await {
                    Ok(seq) => {
                        self.trailing.wakes.push_back((seq, at));
                        break;
                    }
                    Err(e) => {
                        if !self.journal_failed("scheduling delayed passes", &e).await {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Hands a completed batch's warm jobs to the warmer and its delayed passes to their
    /// runner. Never waits: a full queue drops warm work (counted), the keys stay invalidated.
    fn after_batch(&self, plan: &plan::Plan, passes: Vec<Delayed>) {
        let c = &self.status.counters;
        if !plan.warms.is_empty() {
            if let Some(tx) = &self.followers.warm {
                if tx.try_send(plan.warms.clone()).is_err() {
                    add(&c.warm_dropped, plan.warms.len() as u64);
                }
            }
        }
        let Some(tx) = &self.followers.delayed else {
            return;
        };
        for d in passes {
            let at = tokio::time::Instant::now() + d.delay;
            if !d.warms.is_empty() && tx.try_send(Message::Warm(at, d.warms)).is_err() {
                add(&c.warm_dropped, 1);
            }
        }
    }

    /// One attempt of one batch's exact actions through the invalidation lifecycle (the
    /// stream's trailing path: the journal is written behind it).
    async fn execute(
        &mut self,
        marks: &[(String, crate::fence::Version)],
        actions: &[crate::action::Action],
    ) -> Result<DateTime<Utc>, InvalidationError> {
        let n = actions.len();
        let r = journal::invalidate_trailing(
            &mut self.trailing.trail,
            &mut self.targets,
            actions,
            marks,
        )
        .await;
        let c = &self.status.counters;
        match r {
            Ok(done) => {
                add(&c.redis_us, done.cache_time.as_micros() as u64);
                self.status.redis_connected.store(true, Ordering::Relaxed);
                add(&c.keys_removed, done.report.removed);
                add(&c.tags, done.report.tags);
                add(&c.bumps, done.report.bumps);
                self.status.clear_dependency_error(Dependency::Redis);
                self.status.clear_dependency_error(Dependency::Journal);
                Ok(done.at)
            }
            Err(InvalidationError::Journal(e)) => {
                add(&c.journal_errors, 1);
                tracing::warn!(error = %e, "journal write failed; retrying the batch");
                self.status
                    .set_dependency_error(Dependency::Journal, e.to_string());
                Err(InvalidationError::Journal(e))
            }
            Err(InvalidationError::Cache(e)) => {
                self.status.redis_connected.store(false, Ordering::Relaxed);
                add(&c.redis_errors, 1);
                tracing::warn!(error = %e, actions = n, "cache failed; batch journaled as failed and retried");
                self.status
                    .set_dependency_error(Dependency::Redis, e.to_string());
                Err(InvalidationError::Cache(e))
            }
        }
    }

    /// Re-executes journal rows left `pending`/`running` (by a crash, or requested by an
    /// application) and completes them. Retries until done or shutdown.
    pub async fn recover(&mut self) {
        loop {
            if self.shutdown.is_shutdown() {
                return;
            }
            match journal::recover(self.journal.as_mut(), &mut self.targets, Duration::ZERO).await {
                Ok(0) => {}
                Ok(n) => {
                    add(&self.status.counters.recovered_rows, n as u64);
                    tracing::info!(rows = n, "re-executed open journal rows");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovering open journal rows failed; retrying");
                    self.status
                        .set_dependency_error(Dependency::Journal, e.to_string());
                    self.backoff.wait().await;
                    continue;
                }
            }
            match self.targets.ping().await {
                Ok(()) => {
                    self.status.redis_connected.store(true, Ordering::Relaxed);
                    self.status.clear_dependency_error(Dependency::Redis);
                }
                Err(e) => {
                    self.status.redis_connected.store(false, Ordering::Relaxed);
                    self.status
                        .set_dependency_error(Dependency::Redis, e.to_string());
                    tracing::warn!(error = %e, "the cache is not reachable yet");
                }
            }
            self.backoff.reset();
            return;
        }
    }
}

/// The longest a retry waits, from the configuration.
pub(crate) fn max_backoff(ms: u64) -> Duration {
    Duration::from_millis(ms.max(50))
}
