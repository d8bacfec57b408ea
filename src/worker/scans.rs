//! Keyspace passes beside the stream: patterns never hold up exact keys.
//!
//! A pattern (`patterns`, a tag or bump pattern, a whole key family after a TRUNCATE or an
//! undecodable change) costs a pass over the whole keyspace — O(keyspace), hundreds of
//! milliseconds at a million keys — however few keys match. The stream therefore only hands its
//! batches' pattern actions to [`Scans::request`], which numbers the request and returns at once,
//! and goes on with the next batch's exact keys. A task of its own runs passes one after another:
//! each pass takes every request that arrived before it started, runs each distinct target once
//! (several patterns share one keyspace pass: see the Redis target), journals the rows once, in
//! their final state, and then publishes the highest request number it covered
//! ([`Scans::done`]). Requests that arrive while a pass runs wait for the next one, so pending
//! scans of the same pattern coalesce into one pass, and a pass always starts after the commit
//! of every change it covers — which is what invalidation needs. They also join the running
//! pass for its rest ([`crate::target::early`]): it unlinks what they match ahead of the pass
//! that covers them, so a key mostly waits less than one pass instead of up to two.
//!
//! The acknowledgement contract is kept by the pipeline's confirmations
//! ([`super::confirm`]): a position waits until every request made before it is covered by a
//! finished, journaled pass. A crash meanwhile replays those changes; nothing is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, Notify};

use crate::action::{Action, Target};
use crate::journal::{Item, JournalError, JournalStore};
use crate::runtime::{numbered, Backoff, Finished, Numbered};
use crate::status::{add, Dependency, Status};
use crate::target::early::Early;
use crate::target::{CacheError, CacheTarget};

/// Requests that may wait for the scanner before [`Scans::request`] waits.
const QUEUE: usize = 1024;

/// The stream's handle on the keyspace passes.
pub(crate) struct Scans {
    queue: Numbered<Vec<Action>>,
    /// Where requests are offered to the running pass ([`crate::target::early`]).
    early: Arc<Early>,
}

impl Scans {
    /// Starts the scanner over its own cache connection and journal. `wake` is notified after
    /// each finished pass. Patterns requested while a pass runs join it (the rest of it
    /// unlinks what they match) and are covered by the next.
    pub fn spawn(
        mut cache: Box<dyn CacheTarget>,
        journal: Box<dyn JournalStore>,
        status: Arc<Status>,
        wake: Arc<Notify>,
        max_backoff: Duration,
    ) -> Scans {
        let (queue, rx, done) = numbered(QUEUE, wake);
        let early = Arc::new(Early::default());
        cache.join_from(early.clone());
        let scanner = Scanner {
            cache,
            early: early.clone(),
            journal,
            status,
            done,
            backoff: Backoff::new(max_backoff),
        };
        tokio::spawn(scanner.run(rx));
        Scans { queue, early }
    }

    /// Asks for a pass covering `actions`; returns the request's number.
    pub async fn request(&mut self, actions: Vec<Action>) -> Result<u64, JournalError> {
        self.early
            .offer(actions.iter().filter_map(|a| match &a.target {
                Target::Pattern(p) => Some(p.as_str()),
                _ => None,
            }));
        self.queue
            .send(actions)
            .await
            .ok_or(JournalError::Unavailable("the keyspace scanner stopped"))
    }

    /// The number of the last request made.
    pub fn requested(&self) -> u64 {
        self.queue.sent()
    }

    /// Every request numbered up to this is covered by a finished, journaled pass.
    pub fn done(&self) -> u64 {
        self.queue.done()
    }

    /// Waits until every request made is covered, or `limit` passes; true if it is.
    pub async fn flush(&mut self, limit: Duration) -> bool {
        self.queue.wait_done(limit).await
    }
}

/// The scanner task.
struct Scanner {
    cache: Box<dyn CacheTarget>,
    early: Arc<Early>,
    journal: Box<dyn JournalStore>,
    status: Arc<Status>,
    done: Finished,
    backoff: Backoff,
}

impl Scanner {
    async fn run(mut self, mut rx: mpsc::Receiver<(u64, Vec<Action>)>) {
        while let Some((first, actions)) = rx.recv().await {
            // Everything requested before the pass starts is covered by it; what is requested
            // from now on joins it (see `Early::clear`).
            self.early.clear();
            let mut covered = first;
            let mut items = vec![actions];
            while let Ok((n, actions)) = rx.try_recv() {
                covered = n;
                items.push(actions);
            }
            let mut seen: HashSet<&Target> = HashSet::new();
            let targets: Vec<&Target> = items
                .iter()
                .flatten()
                .map(|a| &a.target)
                .filter(|t| seen.insert(*t))
                .collect();
            let at = loop {
                if rx.is_closed() {
                    // The stream is gone: nothing it handed over was confirmed, and whoever
                    // streams next replays it.
                    return;
                }
                let started = std::time::Instant::now();
                match self.cache.execute(&[], &targets).await {
                    Ok(report) => {
                        let c = &self.status.counters;
                        add(&c.pattern_passes, 1);
                        add(&c.pattern_pass_us, started.elapsed().as_micros() as u64);
                        add(&c.pattern_deferred_us, report.deferred_us);
                        add(&c.pattern_joins, report.joined);
                        add(&c.keys_removed, report.removed);
                        self.backoff.reset();
                        break Utc::now();
                    }
                    Err(e) => self.failed_pass(&e).await,
                }
            };
            let items: Vec<Item> = items
                .iter()
                .map(|actions| Item::completed(actions, at))
                .collect();
            loop {
                match self.journal.write_group(&items).await {
                    Ok(rows) => {
                        add(&self.status.counters.journal_rows, rows as u64);
                        self.status.clear_dependency_error(Dependency::Journal);
                        break;
                    }
                    Err(e) => {
                        add(&self.status.counters.journal_errors, 1);
                        if rx.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "journaling a keyspace pass failed; retrying");
                        self.status
                            .set_dependency_error(Dependency::Journal, e.to_string());
                        self.backoff.wait().await;
                    }
                }
            }
            self.done.publish(covered);
        }
    }

    async fn failed_pass(&mut self, e: &CacheError) {
        add(&self.status.counters.redis_errors, 1);
        tracing::warn!(error = %e, "a keyspace pass failed; retrying it (the positions it covers wait)");
        self.status
            .set_dependency_error(Dependency::Redis, format!("pattern pass: {e}"));
        self.backoff.wait().await;
    }
}
